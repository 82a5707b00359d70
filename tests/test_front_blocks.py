"""The building blocks' compiled front end (fastbn/_front_blocks.pxi) against their
checked paths (fastbn._core.checked_blocks).

Plain calls of batch_stats, normalize, backward_reduce and backward_elemt are checked and
run in compiled code; every other call, and every call that would raise, goes to the
checked path. Both run the same kernels on the same doubles: results must be bitwise
equal, plain calls must not reach the checked path, and errors must be the checked
path's own.
"""
import contextlib

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastbn
from fastbn import _core, _kernels

from conftest import assert_bitwise_equal, data_dtypes
from test_front import VECTORS, _laid_out

pytestmark = pytest.mark.skipif(fastbn.backend != "c", reason="the compiled backend's front end")

NAMES = ("batch_stats", "normalize", "backward_reduce", "backward_elemt")


@contextlib.contextmanager
def spy():
    """Names of the calls that reached the checked paths."""
    calls = []

    def spying(name):
        def f(*args, **kwargs):
            calls.append(name)
            return _core.checked_blocks[name](*args, **kwargs)
        return f

    _kernels.set_checked_blocks(**{name: spying(name) for name in NAMES})
    try:
        yield calls
    finally:
        _kernels.set_checked_blocks(**_core.checked_blocks)


def _vector(rng, C, dtype, low=0.5, signed=True):
    if dtype is None:
        return None
    v = rng.uniform(low, 2.0, C).astype(dtype)
    return v * rng.choice([-1, 1], C).astype(dtype) if signed else v


blocks_case = st.fixed_dictionaries(dict(
    shape=st.lists(st.integers(1, 7), min_size=2, max_size=4).map(tuple),
    axis_pick=st.integers(0, 3), negative_axis=st.booleans(),
    dtype=st.sampled_from(data_dtypes()),
    stats=st.sampled_from(VECTORS), gamma=st.sampled_from([None, *VECTORS]),
    beta=st.sampled_from([None, *VECTORS]),
    activation=st.sampled_from([None, "relu", "identity"]),
    x_layout=st.sampled_from(["contiguous", "channels", "rows"]),
    dy_layout=st.sampled_from(["contiguous", "channels", "rows"]), pad=st.integers(1, 3),
    out=st.sampled_from([None, "fresh", "x"]),
    count=st.sampled_from(["int", "numpy", "array"]), seed=st.integers(0, 2**16)))


@given(case=blocks_case)
def test_front_blocks_match_checked_paths(case):
    rng = np.random.default_rng(case["seed"])
    shape = case["shape"]
    axis = case["axis_pick"] % len(shape)
    C = shape[axis]
    dt = case["dtype"]
    x = _laid_out((3.0 + rng.standard_normal(shape)).astype(dt), case["x_layout"], axis,
                  case["pad"])
    dy = _laid_out(rng.standard_normal(shape).astype(dt), case["dy_layout"], axis, case["pad"])
    ax = axis - len(shape) if case["negative_axis"] else axis
    mean = rng.standard_normal(C).astype(case["stats"])
    invstd = _vector(rng, C, case["stats"], signed=False)
    gamma, beta = _vector(rng, C, case["gamma"]), _vector(rng, C, case["beta"])
    sum_dy, sum_dy_xhat = rng.standard_normal(C), rng.standard_normal(C)
    n = x.size // C
    count = {"int": n, "numpy": np.int64(n), "array": np.full(C, n)}[case["count"]]
    act = case["activation"]

    def x_and_out():
        """x (a copy laid out alike for out="x": the call writes it) and out."""
        if case["out"] == "x":
            xx = _laid_out(np.array(x), case["x_layout"], axis, case["pad"])
            return xx, xx
        return x, None if case["out"] is None else np.empty(shape, dt)

    calls = {
        "batch_stats": lambda f, x, o: f(x, axis=ax),
        "normalize": lambda f, x, o: f(x, mean, invstd, gamma, beta, axis=ax, out=o,
                                       activation=act),
        "backward_reduce": lambda f, x, o: f(dy, x, mean, invstd, axis=ax, gamma=gamma,
                                             beta=beta, activation=act),
        "backward_elemt": lambda f, x, o: f(dy, x, mean, invstd, gamma, sum_dy, sum_dy_xhat,
                                            count, axis=ax, out=o, beta=beta, activation=act),
    }
    for name, call in calls.items():
        (x1, o1), (x2, o2) = x_and_out(), x_and_out()
        with spy() as handed:
            got = call(getattr(fastbn, name), x1, o1)
        want = call(_core.checked_blocks[name], x2, o2)
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        assert len(got) == len(want)
        for i, (a, b) in enumerate(zip(got, want)):
            if isinstance(b, np.ndarray):
                assert type(a) is np.ndarray and a.shape == b.shape
                assert_bitwise_equal(a, b, f"{name}[{i}]")
            else:
                assert a == b and type(a) is type(b), (name, i, a, b)
        if o1 is not None and name in ("normalize", "backward_elemt"):
            assert got[0] is o1
        reads_dy = name.startswith("backward")
        plain = (case["x_layout"] != "channels" or C * np.prod(shape[axis + 1:]) > 1) and \
            np.shares_memory(_core.canonical(x, axis), x)
        plain = (plain and (not reads_dy or (
            case["dy_layout"] == case["x_layout"] and np.shares_memory(_core.canonical(dy, axis), dy)))
                 and (name != "backward_elemt" or case["count"] != "array")
                 and (case["out"] != "x" or name in ("batch_stats", "backward_reduce")))
        if plain:
            assert handed == [], f"{name}: a plain call reached the checked path ({case})"


def test_front_blocks_take_plain_calls():
    """The cheap path is the one taken: no plain call reaches the checked path."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((4, 5)).astype(np.float32)
    dy = rng.standard_normal((4, 5)).astype(np.float32)
    mean, invstd = np.zeros(5), np.ones(5)
    with spy() as handed:
        fastbn.batch_stats(x)
        fastbn.normalize(x, mean, invstd, activation="relu", out=np.empty_like(x))
        s, t = fastbn.backward_reduce(dy, x, mean, invstd)
        fastbn.backward_elemt(dy, x, mean, invstd, None, s, t, 4, out=np.empty_like(x))
    assert handed == []


def _bad_calls():
    x = np.ones((4, 5), np.float32)
    x[::2] += 1
    dy = np.ones((4, 5), np.float32)
    m, inv = np.zeros(5), np.ones(5)
    ro = np.empty((4, 5), np.float32)
    ro.flags.writeable = False
    return [
        ("batch_stats", (x,), dict(axis=2)),
        ("batch_stats", (x,), dict(axis=True)),
        ("batch_stats", (x[0],), {}),
        ("normalize", (x, m, -inv), {}),
        ("normalize", (x, m, np.full(5, np.inf)), {}),
        ("normalize", (x, m[:4], inv), {}),
        ("normalize", (x, m, inv), dict(activation="leaky_relu")),
        ("normalize", (x, m, inv), dict(out=ro)),
        ("normalize", (x, m, inv), dict(out=np.empty((4, 5)))),
        ("backward_reduce", (dy.astype(np.float64), x, m, inv), {}),
        ("backward_reduce", (dy[:2], x, m, inv), {}),
        ("backward_reduce", (dy, x, m, -inv), {}),
        ("backward_elemt", (dy, x, m, inv, None, m, m, 0), {}),
        ("backward_elemt", (dy, x, m, inv, None, m, m, True), {}),
        ("backward_elemt", (dy, x, m, inv, None, m, m, 2 ** 63), {}),
        ("backward_elemt", (dy, x, m, inv, None, m, m, 4.0), {}),
        ("backward_elemt", (dy, x, m, inv, None, m[:3], m, 4), {}),
        ("backward_elemt", (dy, x, m, np.full(5, -1.0), None, m, m, 4), {}),
    ]


@pytest.mark.parametrize("case", range(len(_bad_calls())))
def test_front_blocks_raise_the_checked_errors(case):
    name, args, kwargs = _bad_calls()[case]
    with pytest.raises((TypeError, ValueError)) as want:
        _core.checked_blocks[name](*args, **kwargs)
    with spy() as handed, pytest.raises(want.type) as got:
        getattr(fastbn, name)(*args, **kwargs)
    assert str(got.value) == str(want.value)
    assert handed == [name]


def test_front_blocks_show_their_public_names():
    for name in NAMES:
        f = getattr(fastbn, name)
        assert f.__name__ == name and f.__doc__ and "front" not in f.__doc__.split("\n")[0]
