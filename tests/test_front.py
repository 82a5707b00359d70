"""The compiled front end of forward/backward (fastbn/_front.pxi) against the checked path.

Plain calls (plain float arrays, no out=, Python scalars) are checked and dispatched in
compiled code; every other call goes to fastbn._core's checked path. Both run the same
kernels on the same values: their results must be bitwise equal, and the front end
must hand over to the checked path everything it does not handle itself.
"""
import contextlib
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastbn
from fastbn import _checks, _core, _kernels
from fastbn._threads import get_num_threads

from conftest import assert_bitwise_equal

pytestmark = pytest.mark.skipif(fastbn.backend != "c", reason="the compiled backend's front end")


@contextlib.contextmanager
def spy():
    """Names of the calls that reached the checked path ('forward', 'backward')."""
    calls = []

    def forward(*args, **kwargs):
        calls.append("forward")
        return _core._checked_forward(*args, **kwargs)

    def backward(*args, **kwargs):
        calls.append("backward")
        return _core._checked_backward(*args, **kwargs)

    _kernels.set_checked_paths(forward, backward, _checks.Cache, get_num_threads)
    try:
        yield calls
    finally:
        _kernels.set_checked_paths(_core._checked_forward, _core._checked_backward,
                                   _checks.Cache, get_num_threads)


@pytest.fixture
def checked_calls():
    with spy() as calls:
        yield calls


def _vector(rng, C, dtype):
    return None if dtype is None else rng.uniform(0.5, 2.0, C).astype(dtype) * rng.choice([-1, 1], C)


def _assert_same_cache(a, b):
    for name in ("mean", "invstd", "gamma", "beta"):
        va, vb = getattr(a, name), getattr(b, name)
        assert (va is None) == (vb is None), name
        if va is not None:
            assert_bitwise_equal(va, vb, name)
    assert (a._mean_lo is None) == (b._mean_lo is None)
    if a._mean_lo is not None:
        assert_bitwise_equal(a._mean_lo, b._mean_lo, "mean_lo")
    for name in ("count", "axis", "eps", "training", "activation", "x_overwritten", "x_written"):
        assert getattr(a, name) == getattr(b, name), name
        assert type(getattr(a, name)) is type(getattr(b, name)), name
    assert a.x is b.x


calls_case = st.fixed_dictionaries(dict(
    shape=st.lists(st.integers(1, 7), min_size=2, max_size=4).map(tuple),
    axis_pick=st.integers(0, 3), negative_axis=st.booleans(),
    dtype=st.sampled_from([np.float32, np.float64]),
    gamma=st.sampled_from([None, np.float32, np.float64]),
    beta=st.sampled_from([None, np.float32, np.float64]),
    training=st.booleans(), running=st.sampled_from([None, np.float32, np.float64]),
    activation=st.sampled_from([None, "relu", "identity"]),
    momentum=st.sampled_from([0.0, 0.1, 1.0]), eps=st.sampled_from([1e-5, 0.5]),
    offset=st.sampled_from([0.0, 1e4]), seed=st.integers(0, 2**16)))


@given(case=calls_case)
def test_front_matches_checked_path(case):
    with warnings.catch_warnings():  # the once-per-process momentum warning, if not yet
        warnings.simplefilter("ignore")  # shown, hands a momentum of 1 to the checked path
        _checks.warn_momentum(1.0)
    with spy() as checked_calls:
        _front_matches_checked_path(case, checked_calls)


def _front_matches_checked_path(case, checked_calls):
    rng = np.random.default_rng(case["seed"])
    shape, dtype = case["shape"], case["dtype"]
    axis = case["axis_pick"] % len(shape)
    C = shape[axis]
    training = case["training"] and np.prod(shape) // C > 1
    if not training and case["running"] is None:
        training = np.prod(shape) // C > 1
        if not training:
            return
    x = (rng.standard_normal(shape) + case["offset"]).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = _vector(rng, C, case["gamma"]), _vector(rng, C, case["beta"])
    running = case["running"] if training else case["running"] or np.float64
    rm = None if running is None else rng.standard_normal(C).astype(running)
    rv = None if running is None else rng.uniform(0.5, 2, C).astype(running)
    rm2, rv2 = (None, None) if rm is None else (rm.copy(), rv.copy())
    kw = dict(axis=axis - len(shape) if case["negative_axis"] else axis, eps=case["eps"],
              training=bool(training), momentum=case["momentum"], activation=case["activation"])

    y1, c1 = fastbn.forward(x, gamma, beta, running_mean=rm, running_var=rv, **kw)
    assert checked_calls == [], "a plain call left the compiled front end"
    y2, c2 = _core._checked_forward(x, gamma, beta, running_mean=rm2, running_var=rv2, **kw)
    assert_bitwise_equal(y1, y2, "y")
    _assert_same_cache(c1, c2)
    if rm is not None:
        assert_bitwise_equal(rm, rm2, "running_mean")
        assert_bitwise_equal(rv, rv2, "running_var")

    dx1, dg1, db1 = fastbn.backward(dy, c1)
    assert checked_calls == [], "a plain backward left the compiled front end"
    dx2, dg2, db2 = _core._checked_backward(dy, c2)
    assert_bitwise_equal(dx1, dx2, "dx")
    for a, b, name in ((dg1, dg2, "dgamma"), (db1, db2, "dbeta")):
        assert (a is None) == (b is None), name
        if a is not None:
            assert_bitwise_equal(a, b, name)


def _plain():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 3, 4)).astype(np.float32)
    return x, np.ones(3, np.float32), np.zeros(3, np.float32)


def _overlapping(x, b):
    buf = np.ones(4)
    return (x, buf[:3], b), dict(running_mean=buf[1:], running_var=np.ones(3))


# (description, function of (x, gamma, beta) returning forward's args and kwargs)
HANDED_OVER = [
    ("out given", lambda x, g, b: ((x, g, b), dict(out=np.empty_like(x)))),
    ("Fortran-order x", lambda x, g, b: ((np.asfortranarray(x), g, b), {})),
    ("strided x", lambda x, g, b: ((np.repeat(x, 2, axis=0)[::2], g, b), {})),
    ("NumPy integer axis", lambda x, g, b: ((x, g, b), dict(axis=np.int64(1)))),
    ("integer eps", lambda x, g, b: ((x, g, b), dict(eps=1))),
    ("integer momentum", lambda x, g, b: ((x, g, b), dict(momentum=1,
                                                          running_mean=np.zeros(3, np.float32),
                                                          running_var=np.ones(3, np.float32)))),
    ("NumPy bool training", lambda x, g, b: ((x, g, b), dict(training=np.True_))),
    ("list gamma", lambda x, g, b: ((x, [1.0, 2.0, 3.0], b), {})),
    ("strided gamma", lambda x, g, b: ((x, np.ones(6, np.float32)[::2], b), {})),
    ("running stats overlapping gamma", lambda x, g, b: _overlapping(x, b)),
    ("a subclass", lambda x, g, b: ((x.view(np.memmap), g, b), {})),
]


@pytest.mark.parametrize("case", HANDED_OVER, ids=[c[0] for c in HANDED_OVER])
def test_front_hands_over_what_it_does_not_handle(case, checked_calls):
    args, kwargs = case[1](*_plain())
    y, cache = fastbn.forward(*args, **kwargs)
    assert checked_calls == ["forward"]
    args, kwargs = case[1](*_plain())  # afresh: the call may update its arguments
    ref, _ = fastbn.reference.forward(*args, **kwargs)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)


def test_front_hands_over_edited_caches(checked_calls):
    x, g, b = _plain()
    dy = np.ones_like(x)
    _, cache = fastbn.forward(x, g, b)
    cache.invstd = cache.invstd.astype(np.float32)  # not the float64 the kernels read
    fastbn.backward(dy, cache)
    assert checked_calls == ["backward"]
    cache.invstd = -cache.invstd.astype(np.float64)
    with pytest.raises(ValueError, match="cache.invstd must be >= 0"):
        fastbn.backward(dy, cache)
    _, cache = fastbn.forward(x, g, b)
    cache.axis = 2 ** 70
    with pytest.raises(ValueError, match="cache.axis must be an integer in"):
        fastbn.backward(dy, cache)
    _, cache = fastbn.forward(x, g, b)
    cache.count = 5
    with pytest.raises(ValueError, match="cache.count must be"):
        fastbn.backward(dy, cache)


@pytest.mark.parametrize("bad, error, match", [
    (dict(axis=3), ValueError, "axis=3 is out of bounds"),
    (dict(axis=2 ** 70), ValueError, "is out of bounds"),
    (dict(axis=-2 ** 70), ValueError, "is out of bounds"),
    (dict(eps=0.0), ValueError, "eps must be > 0"),
    (dict(eps=float("nan")), ValueError, "eps must be finite"),
    (dict(momentum=1.5, running_mean=np.zeros(3), running_var=np.ones(3)), ValueError,
     "momentum must be <= 1"),
    (dict(gamma=np.ones(4, np.float32)), ValueError, "gamma must have shape"),
    (dict(running_mean=np.zeros(3)), ValueError, "given together"),
    (dict(training=False), ValueError, "required when training=False"),
    (dict(activation="tanh"), ValueError, "activation must be"),
    (dict(activation=np.array(["relu"])), TypeError, "activation must be"),
])
def test_front_errors_are_the_checked_paths(bad, error, match):
    x, g, b = _plain()
    kwargs = dict(gamma=g, beta=b, **bad) if "gamma" not in bad else dict(beta=b, **bad)
    with pytest.raises(error, match=match):
        fastbn.forward(x, **kwargs)


def test_front_hands_over_byte_swapped_data(checked_calls):
    x, g, b = _plain()
    with pytest.raises(TypeError, match="x must have dtype float32, float64"):
        fastbn.forward(x.astype(x.dtype.newbyteorder()), g, b)
    assert checked_calls == ["forward"]


def test_front_training_with_one_value_per_channel_raises():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        fastbn.forward(np.ones((1, 3), np.float32))


@pytest.mark.parametrize("module", [fastbn, fastbn.reference], ids=["c", "reference"])
def test_edited_mean_lo_is_refused(module):
    """A residual larger than an ulp of the mean cannot come from a forward: the C
    kernels would add it to the mean, the reference would not (a hypothesis find)."""
    x, g, b = _plain()
    x = x.astype(np.float64) + 1e4
    _, cache = module.forward(x, g, b)
    module.backward(np.ones_like(x), cache)  # the residual the forward left is accepted
    cache.mean_lo = np.full(3, 1e30)
    with pytest.raises(ValueError, match="cache.mean_lo must be the rounding residual"):
        module.backward(np.ones_like(x), cache)
    cache.mean_lo = np.spacing(cache.mean) * 2
    with pytest.raises(ValueError, match="cache.mean_lo must be the rounding residual"):
        module.backward(np.ones_like(x), cache)
