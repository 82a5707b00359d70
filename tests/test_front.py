"""The compiled front end of forward/backward (fastbn/_front.pxi) against the checked path.

Plain calls (plain float arrays, no out= or a plain one (test_front_out.py), Python
scalars) are checked and dispatched in
compiled code; every other call goes to fastbn._core's checked path. Both run the same
kernels on the same values: their results must be bitwise equal, and the front end
must hand over to the checked path everything it does not handle itself.
"""
import contextlib
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastbn
from fastbn import _checks, _core, _kernels
from fastbn._threads import get_num_threads

from conftest import assert_bitwise_equal, data_dtypes

pytestmark = pytest.mark.skipif(fastbn.backend != "c", reason="the compiled backend's front end")


@contextlib.contextmanager
def spy():
    """Names of the calls that reached the checked paths ('forward', 'backward', and
    'forward_then': the layer's forward)."""
    calls = []

    def forward(*args, **kwargs):
        calls.append("forward")
        return _core._checked_forward(*args, **kwargs)

    def backward(*args, **kwargs):
        calls.append("backward")
        return _core._checked_backward(*args, **kwargs)

    def forward_then(*args, **kwargs):
        calls.append("forward_then")
        return _core._forward_then(*args, **kwargs)

    _kernels.set_checked_paths(forward, backward, _checks.Cache, get_num_threads, forward_then)
    try:
        yield calls
    finally:
        _kernels.set_checked_paths(_core._checked_forward, _core._checked_backward,
                                   _checks.Cache, get_num_threads, _core._forward_then)


@pytest.fixture
def checked_calls():
    with spy() as calls:
        yield calls


def _vector(rng, C, dtype):
    """Values of either sign, of `dtype` (the sign multiplied before the cast: an
    int64 factor would promote a float16 vector to float64)."""
    if dtype is None:
        return None
    return (rng.uniform(0.5, 2.0, C) * rng.choice([-1, 1], C)).astype(dtype)


def _assert_same_cache(a, b, same_x=True):
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
    assert a.x is b.x or not same_x


# vectors of every float dtype the front end takes: float32, float64 and, as naive
# half-precision code makes them, the half dtypes
VECTORS = [np.float32, np.float64] + [d for d in data_dtypes() if np.dtype(d).itemsize == 2]

calls_case = st.fixed_dictionaries(dict(
    shape=st.lists(st.integers(1, 7), min_size=2, max_size=4).map(tuple),
    axis_pick=st.integers(0, 3), negative_axis=st.booleans(),
    dtype=st.sampled_from(data_dtypes()),
    gamma=st.sampled_from([None, *VECTORS]), beta=st.sampled_from([None, *VECTORS]),
    training=st.booleans(), running=st.sampled_from([None, *VECTORS]),
    activation=st.sampled_from([None, "relu", "identity"]),
    momentum=st.sampled_from([0.0, 0.1, 1.0]), eps=st.sampled_from([1e-5, 0.5]),
    offset=st.sampled_from([0.0, 1e4]), seed=st.integers(0, 2**16),
    layout=st.sampled_from(["contiguous", "channels", "rows"]), pad=st.integers(1, 3)))


def _laid_out(a, layout, axis, pad):
    """a itself, or its values in a slice of a larger array padded with NaN (a kernel
    reading outside the view shows it): along the channel axis (rows further apart than
    a block: row-strided unless one row or one channel), or every (pad + 1)-th row
    (row-strided when the channel axis is 1)."""
    if layout == "contiguous":
        return a
    big = list(a.shape)
    if layout == "channels":
        big[axis] += pad
        view = (slice(None),) * axis + (slice(1, 1 + a.shape[axis]),)
    else:
        big[0] *= pad + 1
        view = (slice(None, None, pad + 1),)
    out = np.full(big, np.nan, a.dtype)[view]
    out[...] = a
    return out


@given(case=calls_case)
def test_front_matches_checked_path(case):
    with warnings.catch_warnings():  # the once-per-process momentum warning, if not yet
        warnings.simplefilter("ignore")  # shown, hands a momentum of 1 to the checked path
        _checks.warn_momentum(1.0)
    with spy() as checked_calls:
        _front_matches_checked_path(case, checked_calls)


def case_arguments(case):
    """A calls_case's arguments: (x, dy, axis, gamma, beta, running statistics, their
    copies for a second call, forward's keywords), or None when the case has no valid
    call (one value per channel and no running statistics)."""
    rng = np.random.default_rng(case["seed"])
    shape, dtype = case["shape"], case["dtype"]
    axis = case["axis_pick"] % len(shape)
    C = shape[axis]
    training = case["training"] and np.prod(shape) // C > 1
    if not training and case["running"] is None:
        training = np.prod(shape) // C > 1
        if not training:
            return None
    x = (rng.standard_normal(shape) + case["offset"]).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    x, dy = (_laid_out(a, case["layout"], axis, case["pad"]) for a in (x, dy))
    gamma, beta = _vector(rng, C, case["gamma"]), _vector(rng, C, case["beta"])
    running = case["running"] if training else case["running"] or np.float64
    rm = None if running is None else rng.standard_normal(C).astype(running)
    rv = None if running is None else rng.uniform(0.5, 2, C).astype(running)
    rm2, rv2 = (None, None) if rm is None else (rm.copy(), rv.copy())
    kw = dict(axis=axis - len(shape) if case["negative_axis"] else axis, eps=case["eps"],
              training=bool(training), momentum=case["momentum"], activation=case["activation"])
    return x, dy, axis, gamma, beta, (rm, rv), (rm2, rv2), kw


def _front_matches_checked_path(case, checked_calls):
    args = case_arguments(case)
    if args is None:
        return
    x, dy, axis, gamma, beta, (rm, rv), (rm2, rv2), kw = args
    # the front end takes exactly the layouts fastbn._checks.canonical does not copy
    strided = not x.flags.c_contiguous
    handed = ["forward"] if strided and not np.shares_memory(_checks.canonical(x, axis), x) \
        else []

    y1, c1 = fastbn.forward(x, gamma, beta, running_mean=rm, running_var=rv, **kw)
    assert checked_calls == handed, "a plain call left the compiled front end"
    y2, c2 = _core._checked_forward(x, gamma, beta, running_mean=rm2, running_var=rv2, **kw)
    assert_bitwise_equal(y1, y2, "y")
    _assert_same_cache(c1, c2)
    if rm is not None:
        assert_bitwise_equal(rm, rm2, "running_mean")
        assert_bitwise_equal(rv, rv2, "running_var")

    dx1, dg1, db1 = fastbn.backward(dy, c1)
    assert checked_calls == (handed and ["forward", "backward"]), \
        "a plain backward left the compiled front end"
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
    ("out over x", lambda x, g, b: ((x, g, b), dict(out=x))),  # plain out=: test_front_out.py
    ("Fortran-order out", lambda x, g, b: ((x, g, b), dict(out=np.asfortranarray(x * 0)))),
    ("Fortran-order x", lambda x, g, b: ((np.asfortranarray(x), g, b), {})),
    ("x of strided inner values", lambda x, g, b: ((np.repeat(x, 2, axis=2)[:, :, ::2], g, b),
                                                   {})),
    ("x of a negative row stride", lambda x, g, b: ((x[::-1], g, b), {})),
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


@pytest.mark.parametrize("training,running", [(True, None), (True, np.float32),
                                              (False, np.float32)])
@pytest.mark.parametrize("gamma_dt,beta_dt", [(np.float64, np.float32), (np.float32, np.float64)])
def test_front_mixed_parameter_dtypes(gamma_dt, beta_dt, training, running, checked_calls):
    # gamma and beta of different float dtypes: the compiled front reads both as double
    # into its work block; training without running statistics once wrote beta C - 1
    # values past that block (a heap overflow, a crash at exit). The results must be
    # the checked path's, and the front must take the call.
    rng = np.random.default_rng(3)
    C = 64
    x = rng.standard_normal((9, C, 5)).astype(np.float32)
    gamma = rng.uniform(0.5, 2, C).astype(gamma_dt)
    beta = rng.standard_normal(C).astype(beta_dt)
    stats = {} if running is None else dict(running_mean=np.zeros(C, running),
                                            running_var=np.ones(C, running))
    stats2 = {k: v.copy() for k, v in stats.items()}
    y, cache = fastbn.forward(x, gamma, beta, training=training, **stats)
    assert checked_calls == []
    y2, cache2 = _core._checked_forward(x, gamma, beta, training=training, **stats2)
    assert_bitwise_equal(y, y2, "y")
    _assert_same_cache(cache, cache2)
    for k in stats:
        assert_bitwise_equal(stats[k], stats2[k], k)


MIXED_CHILD = """
import gc
import numpy as np
import fastbn
rng = np.random.default_rng(0)
for C in (2, 3, 5, 7, 16, 64):
    for gd, bd in ((np.float64, np.float32), (np.float32, np.float64)):
        x = rng.standard_normal((37, C, 3)).astype(np.float32)
        fastbn.forward(x, rng.uniform(0.5, 2, C).astype(gd), rng.standard_normal(C).astype(bd))
gc.collect()
"""


def test_front_mixed_parameter_dtypes_leave_the_heap_intact():
    # the overflow above, where glibc's malloc sees it: the child aborted ("free():
    # invalid next size") in each of 5 runs before the fix
    out = subprocess.run([sys.executable, "-c", MIXED_CHILD], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]


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


@pytest.mark.parametrize("mean", ["zeros", "shifted", "float32"])
def test_assigned_mean_drops_its_residual(mean):
    """cache.mean assigned: its residual goes with the old value, so backward uses the
    new mean exactly and the backends agree (a stale residual beside a mean of 0 was
    refused as edited: a hypothesis find)."""
    x, g, b = _plain()
    x = x.astype(np.float64) + 1e4
    dy = np.random.default_rng(7).standard_normal(x.shape)
    results = []
    for module in (fastbn, fastbn.reference):
        _, cache = module.forward(x, g, b)
        new = {"zeros": np.zeros(3), "shifted": cache.mean + 0.25,
               "float32": cache.mean.astype(np.float32)}[mean]
        cache.mean = new
        assert cache.mean is new and cache._mean_lo is None and not cache.mean_lo.any()
        results.append(module.backward(dy, cache))
    for got, want, name in zip(*results, ("dx", "dgamma", "dbeta")):
        np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-9, err_msg=name)


def test_front_cache_is_a_plain_cache():
    """The front end fills a Cache's slots directly: it must be the Cache the checked path
    makes, usable as one (its properties, repr, pickling, edits), and hold its arrays."""
    import pickle
    import sys
    x, g, b = _plain()
    x = x.astype(np.float64)
    refs = sys.getrefcount(x), sys.getrefcount(g)
    y, cache = fastbn.forward(x, g, b, eps=0.5)
    assert type(cache) is fastbn.Cache
    assert sys.getrefcount(x) == refs[0] + 1 and sys.getrefcount(g) == refs[1]
    _, checked = _core._checked_forward(x, g, b, eps=0.5)
    _assert_same_cache(cache, checked)
    assert cache._var is None and cache.gamma is not g and cache.gamma.flags.owndata
    assert_bitwise_equal(cache.var, checked.var, "var")
    assert_bitwise_equal(cache.mean_lo, checked.mean_lo, "mean_lo")
    assert repr(cache) == repr(checked)
    restored = pickle.loads(pickle.dumps(cache))
    for name in fastbn._kernels.CACHE_SLOTS:
        a, b = getattr(restored, name), getattr(cache, name)
        assert type(a) is type(b) and (a is None or np.array_equal(a, b)), name
    cache.eps = 0.25  # slots stay writable
    assert cache.eps == 0.25
    del cache, checked
    assert sys.getrefcount(x) == refs[0] and sys.getrefcount(g) == refs[1]


def test_front_refuses_a_cache_class_it_cannot_fill():
    class WithDict:
        pass

    with pytest.raises(TypeError, match="slots only"):
        _kernels.set_checked_paths(_core._checked_forward, _core._checked_backward, WithDict,
                                   get_num_threads)
    fastbn.forward(*_plain())  # the front end's setting is unchanged


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 5), (2, 5), (4, 5), (3, 7), (5, 1), (4, 100), (2, 129)])
def test_small_batches_equal_their_rows_of_a_large_one(shape, dtype):
    """Short rows repeat their coefficients over at most the batch's rows (not a fixed
    period): each row's values must be those it gets inside a batch of many rows, in
    inference, in training with fixed statistics (normalize) and in dx."""
    rng = np.random.default_rng(7)
    C = shape[1]
    big = rng.standard_normal((300, C)).astype(dtype)
    dy = rng.standard_normal((300, C)).astype(dtype)
    g, b = rng.uniform(0.5, 2, C).astype(dtype), rng.normal(0, 1, C).astype(dtype)
    rm, rv = rng.normal(0, 1, C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    kw = dict(training=False, running_mean=rm, running_var=rv)
    for act in (None, "relu"):
        y_big, c_big = fastbn.forward(big, g, b, activation=act, **kw)
        y, c = fastbn.forward(big[:shape[0]].copy(), g, b, activation=act, **kw)
        assert_bitwise_equal(y, y_big[:shape[0]], "y")
        dx, _, _ = fastbn.backward(dy[:shape[0]].copy(), c)
        dx_big, _, _ = fastbn.backward(dy, c_big)
        assert_bitwise_equal(dx, dx_big[:shape[0]], "dx")
        n_big = fastbn.normalize(big, c_big.mean, c_big.invstd, g, b, activation=act)
        n = fastbn.normalize(big[:shape[0]].copy(), c.mean, c.invstd, g, b, activation=act)
        assert_bitwise_equal(n, n_big[:shape[0]], "normalize")


def _at_line_offset(shape, dtype, offset):
    """A C-contiguous array of `shape` starting `offset` bytes past a 64-byte line."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    buf = np.empty(n + 128, np.uint8)
    start = (-buf.ctypes.data) % 64 + offset
    return buf[start:start + n].view(dtype).reshape(shape)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(256, 512), (9, 300), (5, 1030), (40, 64)])
def test_outputs_at_any_line_offset_are_bitwise_equal(shape, dtype):
    """Columns-shape spans follow the output's cache lines (split stores cost most), so
    x and the output at different offsets in a line split the rows differently: the
    values must not change (inference, normalize and dx, into out= and allocated)."""
    rng = np.random.default_rng(3)
    C = shape[1]
    x0 = (rng.standard_normal(shape) + 3).astype(dtype)
    dy0 = rng.standard_normal(shape).astype(dtype)
    g, b = rng.uniform(0.5, 2, C).astype(dtype), rng.normal(0, 1, C).astype(dtype)
    rm, rv = rng.normal(0, 1, C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    kw = dict(training=False, running_mean=rm, running_var=rv)
    y_ref, c_ref = fastbn.forward(x0, g, b, **kw)
    dx_ref, _, _ = fastbn.backward(dy0, c_ref)
    n_ref = fastbn.normalize(x0, c_ref.mean, c_ref.invstd, g, b, activation="relu")
    for xo, oo in [(0, 16), (16, 0), (32, 48), (48, 48), (16, 32)]:
        x, dy = _at_line_offset(shape, dtype, xo), _at_line_offset(shape, dtype, xo)
        x[...], dy[...] = x0, dy0
        out = _at_line_offset(shape, dtype, oo)
        y, c = fastbn.forward(x, g, b, out=out, **kw)
        assert y is out
        assert_bitwise_equal(y, y_ref, f"y at {xo}, {oo}")
        assert_bitwise_equal(fastbn.forward(x, g, b, **kw)[0], y_ref, "y allocated")
        dx, _, _ = fastbn.backward(dy, c, out=(_at_line_offset(shape, dtype, oo), None, None))
        assert_bitwise_equal(dx, dx_ref, f"dx at {xo}, {oo}")
        n = fastbn.normalize(x, c.mean, c.invstd, g, b, activation="relu",
                             out=_at_line_offset(shape, dtype, oo))
        assert_bitwise_equal(n, n_ref, f"normalize at {xo}, {oo}")


# ---------------------------------------------------------------- row-strided inputs (issue 17)
# The front end reads a slice whose (C, inner) blocks are contiguous and whose rows are
# one stride apart where it is (fbn_shape.row_stride), as the checked path does
# (fastbn._checks.canonical; the front end's canonical_view): the same kernel call on
# the same values, so bitwise the checked path's result and the contiguous copy's.

ROW_STRIDED = [  # id, base shape, the slice, channel axis
    ("nc-channels", (40, 24), np.s_[:, 5:17], 1),
    ("nc-rows", (60, 12), np.s_[::3], 1),
    ("nchw-channels", (6, 10, 5, 4), np.s_[:, 2:7], 1),
    ("nchw-rows", (12, 5, 3, 4), np.s_[::2], 1),
    ("nchw-rows-channels", (8, 10, 3, 4), np.s_[::2, 1:9], 1),
    ("nhwc-channels", (4, 5, 3, 10), np.s_[..., 2:8], -1),
    ("two-row-dims", (5, 4, 6, 3), np.s_[:, :, 1:5], 2),  # rows over (N, L), one stride
    ("threaded", (512, 1024), np.s_[:, 256:768], 1),  # >= FBN_MIN_PARALLEL values
]


def _base(rng, full, dtype):
    return (rng.standard_normal(full) * 2 + 1).astype(dtype)


def _running(mode, C):
    if mode == "training":
        return {}
    return dict(running_mean=np.linspace(-0.5, 0.5, C), running_var=np.linspace(0.5, 2, C))


def _forward_of(fn, x, gamma, beta, axis, mode):
    """(y, cache, running statistics after the call) of fn on fresh running statistics."""
    kw = _running(mode, x.shape[axis])
    y, cache = fn(x, gamma, beta, axis=axis, training=mode != "inference", activation="relu",
                  **kw)
    return y, cache, list(kw.values())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["training", "running", "inference"])
@pytest.mark.parametrize("full, sl, axis", [c[1:] for c in ROW_STRIDED],
                         ids=[c[0] for c in ROW_STRIDED])
def test_front_takes_row_strided_views(full, sl, axis, mode, dtype, checked_calls):
    rng = np.random.default_rng(11)
    x, dy = _base(rng, full, dtype)[sl], _base(rng, full, dtype)[sl]
    assert not x.flags.c_contiguous and dy.strides == x.strides
    assert np.shares_memory(_checks.canonical(x, axis % x.ndim), x)  # no copy there either
    xc, dyc = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    C = x.shape[axis]
    gamma, beta = _vector(rng, C, dtype), _vector(rng, C, np.float64)

    y, cache, stats = _forward_of(fastbn.forward, x, gamma, beta, axis, mode)
    assert checked_calls == [], "a row-strided view left the compiled front end"
    grads = fastbn.backward(dy, cache)
    assert checked_calls == [], "a row-strided backward left the compiled front end"
    assert y.flags.c_contiguous and grads[0].flags.c_contiguous

    y2, cache2, stats2 = _forward_of(_core._checked_forward, x, gamma, beta, axis, mode)
    y3, cache3, stats3 = _forward_of(fastbn.forward, xc, gamma, beta, axis, mode)
    _assert_same_cache(cache, cache2)
    _assert_same_cache(cache, cache3, same_x=False)
    grads2 = _core._checked_backward(dy, cache2)
    grads3 = fastbn.backward(dyc, cache3)
    for other, how in ((y2, "checked path"), (y3, "contiguous copy")):
        assert_bitwise_equal(y, other, f"y, {how}")
    for a, b, c, name in zip(stats, stats2, stats3, ("running_mean", "running_var")):
        assert_bitwise_equal(a, b, name + ", checked path")
        assert_bitwise_equal(a, c, name + ", contiguous copy")
    for a, b, c, name in zip(grads, grads2, grads3, ("dx", "dgamma", "dbeta")):
        assert_bitwise_equal(a, b, name + ", checked path")
        assert_bitwise_equal(a, c, name + ", contiguous copy")


def _misaligned(a):
    """a's values in an array one byte off its dtype's alignment."""
    buf = np.empty(a.nbytes + 1, np.uint8)[1:]
    out = buf.view(a.dtype).reshape(a.shape)
    out[...] = a
    assert not out.flags.aligned
    return out


HANDED_OVER_STRIDES = [  # id, x from a base array, channel axis: the checked path's
    ("negative-rows", lambda b: b[::-1], 1),
    ("negative-rows-channels", lambda b: b[::-2, 1:7], 1),
    ("channels-apart", lambda b: b[:, ::2], 1),
    ("nchw-rows-cut", lambda b: b.reshape(6, 4, 2, 4)[:, :, :, 1:3], 1),  # inner not contiguous
    ("leading-dim-sliced", lambda b: b.reshape(6, 4, 2, 4)[:, 1:3], 2),  # rows: two strides
    ("one-channel", lambda b: b[:, 2:3], 1),
    ("broadcast-rows", lambda b: np.broadcast_to(b[0], b.shape), 1),  # row stride 0
    ("misaligned", lambda b: _misaligned(b)[:, 1:7], 1),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("make, axis", [c[1:] for c in HANDED_OVER_STRIDES],
                         ids=[c[0] for c in HANDED_OVER_STRIDES])
def test_front_hands_over_other_strides(make, axis, dtype, checked_calls):
    """Strides the kernels cannot read where they are go to the checked path (a copy
    there), with bitwise the contiguous copy's results."""
    rng = np.random.default_rng(12)
    x, dy = make(_base(rng, (6, 32), dtype)), make(_base(rng, (6, 32), dtype))
    assert not np.shares_memory(_checks.canonical(x, axis), x)
    xc, dyc = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    for mode in ("training", "running", "inference"):
        del checked_calls[:]
        y, cache, stats = _forward_of(fastbn.forward, x, None, None, axis, mode)
        grads = fastbn.backward(dy, cache)
        assert checked_calls == ["forward", "backward"]
        y3, cache3, stats3 = _forward_of(fastbn.forward, xc, None, None, axis, mode)
        assert_bitwise_equal(y, y3, "y")
        for a, b, name in zip(stats, stats3, ("running_mean", "running_var")):
            assert_bitwise_equal(a, b, name)
        assert_bitwise_equal(grads[0], fastbn.backward(dyc, cache3)[0], "dx")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_front_backward_hands_over_other_row_strides(dtype, checked_calls):
    """x and dy are read where they are only at one row stride (fbn_shape has one)."""
    rng = np.random.default_rng(13)
    wide, wider = _base(rng, (20, 16), dtype), _base(rng, (20, 24), dtype)
    x = wide[:, 2:10]
    g, b = _vector(rng, 8, dtype), _vector(rng, 8, dtype)
    dys = {"contiguous": np.ascontiguousarray(wider[:, 2:10]), "other-stride": wider[:, 2:10],
           "negative-rows": wider[::-1, 2:10], "misaligned": _misaligned(wider[:, 2:10])}
    for training in (True, False):
        for name, dy in dys.items():
            del checked_calls[:]
            _, cache = fastbn.forward(x, g, b, training=training, **_running("running", 8))
            assert checked_calls == []
            grads = fastbn.backward(dy, cache)
            assert checked_calls == ["backward"], name
            _, cache_c = fastbn.forward(np.ascontiguousarray(x), g, b, training=training,
                                        **_running("running", 8))
            for a, c, what in zip(grads, fastbn.backward(np.ascontiguousarray(dy), cache_c),
                                  ("dx", "dgamma", "dbeta")):
                assert_bitwise_equal(a, c, f"{what}, dy {name}")
    # a strided dy beside a contiguous x
    del checked_calls[:]
    _, cache = fastbn.forward(np.ascontiguousarray(x), g, b)
    fastbn.backward(wider[:, 2:10], cache)
    assert checked_calls == ["backward"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_front_row_strided_with_overlapping_outputs(dtype, checked_calls):
    """out= overlapping a row-strided x (the checked path: NumPy's rule, as if x were
    read first), and running statistics inside x's rows (the front end's span check:
    the checked path updates them after the kernel and marks x overwritten)."""
    rng = np.random.default_rng(14)
    base = _base(rng, (16, 20), dtype)
    x = base[:, 0:10]
    xc = x.copy()
    y_ref, cache_ref = fastbn.forward(xc)
    dy_base = _base(rng, (16, 20), dtype)
    dyc = dy_base[:, 0:10].copy()
    dx_ref = fastbn.backward(dyc, cache_ref)[0]
    del checked_calls[:]
    _, cache = fastbn.forward(x)
    out = dy_base[:, 5:15]  # over dy's columns 5..9
    dx = fastbn.backward(dy_base[:, 0:10], cache, out=out)[0]
    assert dx is out and checked_calls == ["backward"]
    assert_bitwise_equal(dx, dx_ref, "dx over dy")
    out = base[:, 5:15]  # over x's columns 5..9
    y = fastbn.forward(x, out=out)[0]
    assert y is out and checked_calls == ["backward", "forward"]
    assert_bitwise_equal(y, y_ref, "y over x")

    # running_mean is row 5 of x: x changes when the running statistics are written
    base = _base(rng, (8, 12), np.float64)
    x = base[:, 0:4]
    xc = x.copy()
    rm, rv = base[5, 0:4], np.ones(4)
    rm_c, rv_c = rm.copy(), rv.copy()
    del checked_calls[:]
    y, cache = fastbn.forward(x, running_mean=rm, running_var=rv)
    assert checked_calls == ["forward"]
    assert cache.x_overwritten
    y_c, _ = fastbn.forward(xc, running_mean=rm_c, running_var=rv_c)
    assert_bitwise_equal(y, y_c, "y")
    assert_bitwise_equal(rm, rm_c, "running_mean")
    assert_bitwise_equal(rv, rv_c, "running_var")


@pytest.mark.parametrize("C", [1, 7, 8, 9, 17, 40])
def test_saved_statistics_check_at_its_boundaries(C, checked_calls):
    """The fast backward checks cache.invstd and cache.mean_lo in C (branch-free loops
    over the channels): it accepts exactly what fastbn._checks accepts. A value it let
    through would reach the kernels (no error); one it wrongly refused would go to the
    checked path (slower, so counted here). Each case sits on every channel in turn, so
    vector loops' bodies and tails both meet it."""
    rng = np.random.default_rng(C)
    x = (rng.standard_normal((5, C)) + 1e4).astype(np.float64)
    dy = rng.standard_normal(x.shape)
    tiny = np.nextafter(0.0, 1.0)
    big = np.finfo(np.float64).max
    means = {"ulp": 1e4, "zero": 0.0, "large": 1e300, "max": big, "inf": np.inf, "nan": np.nan,
             "neg": -3.0}
    for c in range(C):
        cases = []  # (mean, lo, invstd, refused)
        for key, m in means.items():
            with np.errstate(over="ignore"):  # the unit above the largest double is inf
                up = np.spacing(abs(m)) if np.isfinite(m) else 0.0
            cases += [(m, up, 1.0, False), (m, -up, 1.0, False)]
            if np.isfinite(m) and np.isfinite(up):
                cases.append((m, np.nextafter(up, np.inf), 1.0, True))
            else:
                cases.append((m, 1e300, 1.0, False))  # no residual check beside inf / NaN
        cases += [(1.0, 0.0, -tiny, True), (1.0, 0.0, -0.0, False), (1.0, 0.0, np.inf, True),
                  (1.0, 0.0, big, False), (1.0, 0.0, np.nan, False), (1.0, tiny, 0.0, False)]
        for m, lo, inv, refused in cases:
            _, cache = fastbn.forward(x)
            mean, mean_lo, invstd = cache.mean.copy(), cache.mean_lo.copy(), cache.invstd.copy()
            mean[c], mean_lo[c], invstd[c] = m, lo, inv
            cache.mean = mean  # drops the residual: set again below
            cache.mean_lo, cache.invstd = mean_lo, invstd
            checked_calls.clear()
            with np.errstate(all="ignore"):
                if refused:
                    with pytest.raises(ValueError, match="cache.(invstd|mean_lo) must be"):
                        fastbn.backward(dy, cache)
                else:
                    fastbn.backward(dy, cache)
            assert checked_calls == (["backward"] if refused else []), (m, lo, inv)
