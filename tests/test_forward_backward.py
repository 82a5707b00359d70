"""fastbn.forward / fastbn.backward against the NumPy reference over random
shapes, axes, dtypes, affine modes, train/eval, ReLU, memory layouts and `out=`
buffers; plus in-place calls, known answers and thread-count determinism."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import fastbn
from fastbn import reference
from conftest import (DTYPES, RTOL, Case, assert_bitwise_equal, assert_close, cases,
                      channel_values, lay_out, padding_intact, pre_activation, relu_scale,
                      snapshot)


def run_forward(module, case, x, gamma, beta, running_mean, running_var, out=None):
    return module.forward(x, gamma, beta, axis=case.axis, eps=case.eps, training=case.training,
                          running_mean=running_mean, running_var=running_var,
                          momentum=case.momentum, out=out, activation=case.activation)


def copies(*arrays):
    return [None if a is None else a.copy() for a in arrays]


def near_relu_kink(case, x, gamma, beta, running_mean, running_var):
    """A pre-activation so close to 0 that the two backends may round to different masks."""
    if case.activation != "relu":
        return False
    z = pre_activation(case, x, gamma, beta, running_mean, running_var)
    return z.size > 0 and np.min(np.abs(z)) < 1e-7 * max(np.max(np.abs(z)), 1.0)


def check_cache(cache, ref_cache, x, gamma=None, beta=None):
    """The contract's attributes, and nothing of size x.size but x itself."""
    assert cache.x is x
    for kept, given in ((cache.gamma, gamma), (cache.beta, beta)):
        # the values forward used, as copies of the parameter's dtype (issue 13)
        if given is None:
            assert kept is None
        else:
            assert kept.dtype == np.asarray(given).dtype and not np.shares_memory(kept, given)
            np.testing.assert_array_equal(kept, given)
    assert cache.count == ref_cache.count == x.size // max(x.shape[ref_cache.axis], 1)
    C = x.shape[ref_cache.axis]
    for name in getattr(type(cache), "__slots__", None) or list(vars(cache)):
        value = getattr(cache, name)
        if isinstance(value, np.ndarray) and value is not x and value is not gamma \
                and value is not beta:
            assert value.shape == (C,), f"cache.{name} has shape {value.shape}"
    assert cache.axis == ref_cache.axis and cache.training == ref_cache.training
    assert cache.eps == ref_cache.eps and cache.activation == ref_cache.activation
    assert cache.mean.shape == cache.invstd.shape == ref_cache.mean.shape
    # The mean may be carried as mean + mean_lo; compare on the scale of the data.
    mean = cache.mean + cache.mean_lo
    scale = max(float(np.max(np.abs(x.astype(np.float64)))), 1.0) if x.size else 1.0
    if mean.size:
        assert np.max(np.abs(mean - ref_cache.mean)) <= 1e-12 * scale
    assert_close(np.asarray(cache.invstd, dtype=np.float64), ref_cache.invstd, 1e-12, "invstd")


@given(case=cases(), tuple_out=st.booleans())
def test_forward_backward_match_reference(case, tuple_out):
    x, dy = case.x(), case.dy()
    gamma, beta = case.params()
    rm, rv = case.running_stats()
    ref_rm, ref_rv = copies(rm, rv)
    assume(not near_relu_kink(case, x, gamma, beta, rm, rv))
    inputs = snapshot(x, gamma, beta, dy)
    scale = relu_scale(case, pre_activation(case, x, gamma, beta, rm, rv))

    out = case.out()
    y, cache = run_forward(fastbn, case, x, gamma, beta, rm, rv, out)
    ref_y, ref_cache = run_forward(reference, case, x, gamma, beta, ref_rm, ref_rv)
    if out is not None:
        assert y is out and padding_intact(out)
    assert_close(y, ref_y, what="y", scale=scale)
    if rm is not None:
        assert_close(rm, ref_rm, RTOL[rm.dtype], "running_mean")
        assert_close(rv, ref_rv, RTOL[rv.dtype], "running_var")
        assert padding_intact(rm) and padding_intact(rv)
    check_cache(cache, ref_cache, x, gamma, beta)

    dx_out = case.out(salt=6)
    dg_out = None if gamma is None or not tuple_out else np.full_like(gamma, np.nan)
    db_out = None if beta is None or not tuple_out else np.full_like(beta, np.nan)
    back_out = (dx_out, dg_out, db_out) if tuple_out else dx_out
    dx, dgamma, dbeta = fastbn.backward(dy, cache, out=back_out)
    ref_dx, ref_dgamma, ref_dbeta = reference.backward(dy, ref_cache)
    for got, given_out in ((dx, dx_out), (dgamma, dg_out), (dbeta, db_out)):
        if given_out is not None:
            assert got is given_out and padding_intact(got)
    assert_close(dx, ref_dx, what="dx")
    assert (dgamma is None) == (gamma is None) and (dbeta is None) == (beta is None)
    if gamma is not None:
        assert_close(dgamma, ref_dgamma, RTOL[gamma.dtype], "dgamma")
    if beta is not None:
        assert_close(dbeta, ref_dbeta, RTOL[beta.dtype], "dbeta")
    assert snapshot(x, gamma, beta, dy) == inputs, "an input was modified"


@given(case=cases())
def test_forward_in_place(case):
    """out=x: the result equals the out-of-place one; strided padding is untouched."""
    x = case.x()
    x_copy = x.copy()
    gamma, beta = case.params()
    rm, rv = case.running_stats()
    ref_rm, ref_rv = copies(rm, rv)
    y, cache = run_forward(fastbn, case, x, gamma, beta, rm, rv, out=x)
    ref_y, _ = run_forward(reference, case, x_copy, gamma, beta, ref_rm, ref_rv)
    assert y is x and padding_intact(x)
    assert_close(y, ref_y, what="y")
    if rm is not None:
        assert_close(rm, ref_rm, RTOL[rm.dtype], "running_mean")
        assert_close(rv, ref_rv, RTOL[rv.dtype], "running_var")
    with pytest.raises(ValueError, match="in place"):
        fastbn.backward(case.dy(), cache)


@given(case=cases(), tuple_out=st.booleans())
def test_backward_in_place(case, tuple_out):
    """out=dy: dx overwrites the upstream gradient it is computed from."""
    x, dy = case.x(), case.dy()
    gamma, beta = case.params()
    rm, rv = case.running_stats()
    assume(not near_relu_kink(case, x, gamma, beta, rm, rv))
    _, cache = run_forward(fastbn, case, x, gamma, beta, *copies(rm, rv))
    _, ref_cache = run_forward(reference, case, x, gamma, beta, *copies(rm, rv))
    ref_dx, ref_dgamma, ref_dbeta = reference.backward(dy.copy(), ref_cache)
    dx, dgamma, dbeta = fastbn.backward(dy, cache, out=(dy, None, None) if tuple_out else dy)
    assert dx is dy and padding_intact(dy)
    assert_close(dx, ref_dx, what="dx")
    if gamma is not None:
        assert_close(dgamma, ref_dgamma, RTOL[gamma.dtype], "dgamma")
    if beta is not None:
        assert_close(dbeta, ref_dbeta, RTOL[beta.dtype], "dbeta")


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_out_overlapping_input_without_being_it(impl, dtype, training):
    """`out` shares memory with x, shifted by one element: NumPy semantics (as if x
    were read in full before anything is written)."""
    rng = np.random.default_rng(7)
    buf = rng.standard_normal((6, 5)).astype(dtype)
    x, out = buf[:, 1:], buf[:, :-1]
    x_copy = x.copy()
    rm, rv = rng.standard_normal(4), rng.uniform(0.5, 2, 4)
    kw = dict(training=training, running_mean=rm.copy(), running_var=rv.copy())
    expected, _ = reference.forward(x_copy, **kw)
    kw = dict(training=training, running_mean=rm.copy(), running_var=rv.copy())
    y, _ = impl.forward(x, **kw, out=out)
    assert y is out
    assert_close(y, expected, what="y")


@pytest.mark.parametrize("shape, axis", [((5, 3), 1), ((4, 3, 6), 1), ((2, 4, 3, 3), -1),
                                         ((3, 2, 2, 3, 2), 2), ((7, 2), 0)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_forward_known_answer(impl, shape, axis, dtype):
    """y = gamma * (x - mean) / sqrt(var + eps) + beta, written out by hand."""
    rng = np.random.default_rng(1)
    x = (3.0 + rng.standard_normal(shape)).astype(dtype)
    C = shape[axis]
    gamma, beta = rng.uniform(0.5, 2, C), rng.standard_normal(C)
    others = tuple(d for d in range(x.ndim) if d != axis % x.ndim)
    bshape = [1] * x.ndim
    bshape[axis] = C
    xd = x.astype(np.float64)
    mean = xd.sum(axis=others, keepdims=True) / (x.size // C)
    var = ((xd - mean) ** 2).sum(axis=others, keepdims=True) / (x.size // C)
    eps = 1e-3
    expected = gamma.reshape(bshape) * (xd - mean) / np.sqrt(var + eps) + beta.reshape(bshape)
    y, cache = impl.forward(x, gamma, beta, axis=axis, eps=eps)
    assert_close(y, expected.astype(dtype), what="train y")
    assert_close(cache.mean + cache.mean_lo, mean.reshape(-1), 1e-13, "mean")
    assert_close(np.asarray(cache.invstd), 1 / np.sqrt(var.reshape(-1) + eps), 1e-12, "invstd")

    rm, rv = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    y, _ = impl.forward(x, gamma, beta, axis=axis, eps=eps, training=False,
                        running_mean=rm, running_var=rv)
    expected = (gamma.reshape(bshape) * (xd - rm.reshape(bshape))
                / np.sqrt(rv.reshape(bshape) + eps) + beta.reshape(bshape))
    assert_close(y, expected.astype(dtype), what="eval y")
    y, _ = impl.forward(x, gamma, beta, axis=axis, eps=eps, training=False,
                        running_mean=rm, running_var=rv, activation="relu")
    assert_close(y, np.maximum(expected, 0).astype(dtype), what="eval relu y")


@pytest.mark.parametrize("dtype", DTYPES)
def test_eval_works_with_one_sample(impl, dtype):
    x = np.array([[1.0, -2.0, 3.0]], dtype=dtype)
    rm, rv = np.array([0.5, 0.0, -1.0]), np.array([1.0, 4.0, 0.25])
    y, _ = impl.forward(x, training=False, running_mean=rm, running_var=rv, eps=1e-5)
    assert_close(y, ((x - rm) / np.sqrt(rv + 1e-5)).astype(dtype))
    y4, _ = impl.forward(x.reshape(1, 3, 1, 1), training=False, running_mean=rm, running_var=rv)
    assert_close(y4, y.reshape(1, 3, 1, 1))


@pytest.mark.parametrize("dtype", DTYPES)
def test_training_with_two_samples_has_zero_dx(impl, dtype):
    """With m == 2 and a negligible eps, xhat = +-1 and the projection removes
    everything: dx == 0 (with a real eps it is O(eps / var), not 0)."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 4)).astype(dtype)
    gamma = rng.uniform(0.5, 2, 4)
    dy = rng.standard_normal((2, 4)).astype(dtype)
    _, cache = impl.forward(x, gamma, None, eps=1e-30)
    dx, _, _ = impl.backward(dy, cache)
    natural = np.max(np.abs(gamma * np.asarray(cache.invstd) * dy))
    assert np.max(np.abs(dx)) <= RTOL[np.dtype(dtype)] * natural


@pytest.mark.parametrize("training", [True, False])
def test_empty_channel_and_batch(impl, training):
    """Zero channels (any mode) and an empty batch (eval) give empty results."""
    x = np.zeros((4, 0, 3))
    y, cache = impl.forward(x, training=training, running_mean=np.zeros(0),
                            running_var=np.ones(0))
    assert y.shape == x.shape
    dx, _, _ = impl.backward(np.zeros_like(x), cache)
    assert dx.shape == x.shape
    if not training:
        x = np.zeros((0, 3), dtype=np.float32)
        y, _ = impl.forward(x, training=False, running_mean=np.zeros(3), running_var=np.ones(3))
        assert y.shape == (0, 3) and y.dtype == np.float32


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_broadcast_inputs(impl, dtype, training):
    """Zero-stride (read-only, broadcast) x and dy are valid inputs."""
    rng = np.random.default_rng(5)
    x = np.broadcast_to(rng.standard_normal((5, 6, 1)).astype(dtype), (5, 6, 4))
    dy = np.broadcast_to(rng.standard_normal((1, 6, 4)).astype(dtype), (5, 6, 4))
    rm, rv = rng.standard_normal(6), rng.uniform(0.5, 2, 6)
    gamma = rng.uniform(0.5, 2, 6)
    kw = dict(training=training, running_mean=rm, running_var=rv, activation="relu")
    y, cache = impl.forward(x, gamma, **kw)
    expected, ref_cache = reference.forward(np.ascontiguousarray(x), gamma, **kw)
    assert_close(y, expected, what="y")
    dx, dgamma, _ = impl.backward(dy, cache)
    ref_dx, ref_dgamma, _ = reference.backward(np.ascontiguousarray(dy), ref_cache)
    assert_close(dx, ref_dx, what="dx")
    assert_close(dgamma, ref_dgamma, what="dgamma")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", [((6, 3), 1), ((4, 3, 5), 1), ((2, 3, 4, 5), -1)])
def test_gradient_of_sum_of_outputs(impl, shape, axis, dtype):
    """loss = sum(y) (dy a broadcast 1) does not depend on x in training:
    dx == 0, dgamma == sum(xhat) == 0, dbeta == m."""
    rng = np.random.default_rng(9)
    x = channel_values(rng, shape, axis, dtype)
    C = shape[axis]
    gamma, beta = rng.uniform(0.5, 2, C), rng.standard_normal(C)
    _, cache = impl.forward(x, gamma, beta, axis=axis)
    dx, dgamma, dbeta = impl.backward(np.broadcast_to(np.ones((), dtype), shape), cache)
    tol = RTOL[np.dtype(dtype)]
    natural = float(np.max(np.abs(gamma * np.asarray(cache.invstd))))
    assert np.max(np.abs(dx)) <= tol * natural
    m = x.size // C
    assert np.max(np.abs(dgamma)) <= 1e-12 * m
    assert_close(dbeta, np.full(C, float(m)), 1e-15, "dbeta")


# ---------------------------------------------------------------- larger arrays

# The hypothesis draws above are small; these reach the kernels' other paths:
# many threads' worth of work, long accumulations, wide channel blocks, rows
# longer than a cache tile, and outputs large enough for streaming stores;
# (1030, 2050) and (500, 1000) take whole-row tiles, (101, 1000) and (37, 700)
# channel blocks (fewer than 128 rows; 37: one flush of plain sums), all with
# partial row groups and channel spans; (8, 128, 128, 33) dx row groups of a few
# channels, rows not a whole number of cache lines, and outputs large enough
# (float32: 17 MB) to be streamed; (4, 64, 129, 131) streamed NCHW outputs, each
# channel reduced and rewritten in one tile.
LARGE_CASES = [((70001, 3), 1, "C"), ((257, 600), 1, "F"), ((3, 20, 40, 300), -1, "C"),
               ((1030, 2050), 1, "C"), ((500, 1000), 1, "C"), ((101, 1000), 1, "C"),
               ((37, 700), 1, "C"), ((8, 128, 128, 33), -1, "C"),
               ((2, 5, 140001), 1, "strided"), ((7, 13, 1031), 1, "reversed"),
               ((3, 1031, 13), 1, "transposed"), ((9, 4, 3001), -2, "unaligned"),
               ((4, 64, 129, 131), 1, "C"),
               pytest.param((1, 2, 2_100_000), 1, "C", marks=pytest.mark.slow)]


@pytest.mark.parametrize("training, activation", [(True, None), (True, "relu"), (False, "relu")])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.usefixtures("streaming_l3")
@pytest.mark.parametrize("shape, axis, layout", LARGE_CASES)
def test_larger_arrays_match_reference(shape, axis, layout, dtype, training, activation):
    case = Case(shape=shape, axis=axis, dtype=dtype, affine="both", param_dtype=np.float64,
                training=training, running=True, running_dtype=np.float32, momentum=0.1,
                activation=activation, x_layout=layout, dy_layout="C", out_layout=None,
                seed=sum(shape))
    x, dy = case.x(), case.dy()
    gamma, beta = case.params()
    rm, rv = case.running_stats()
    ref_rm, ref_rv = copies(rm, rv)
    y, cache = run_forward(fastbn, case, x, gamma, beta, rm, rv)
    ref_y, ref_cache = run_forward(reference, case, x, gamma, beta, ref_rm, ref_rv)
    assert_close(y, ref_y, what="y")
    assert_close(rm, ref_rm, what="running_mean")
    assert_close(rv, ref_rv, what="running_var")
    check_cache(cache, ref_cache, x, gamma, beta)
    dx, dgamma, dbeta = fastbn.backward(dy, cache, out=dy)
    ref_dx, ref_dgamma, ref_dbeta = reference.backward(case.dy(), ref_cache)
    assert dx is dy
    assert_close(dx, ref_dx, what="dx")
    assert_close(dgamma, ref_dgamma, what="dgamma")
    assert_close(dbeta, ref_dbeta, what="dbeta")
    if not training:
        y_in_place, _ = run_forward(fastbn, case, x, gamma, beta, rm, rv, out=x)
        assert y_in_place is x and padding_intact(x)
        assert_close(x, ref_y, what="y in place")


# ---------------------------------------------------------------- determinism

DETERMINISM_CASES = [((16, 8, 48, 48), 1, "C"), ((8, 24, 24, 64), -1, "C"),
                     ((200000, 3), 1, "F"), ((300000, 1), 1, "C"), ((6, 4, 32, 32, 8), 2, "C"),
                     ((64, 8, 256), 1, "strided"), ((1030, 2050), 1, "C"),
                     ((500, 1000), 1, "C"), ((101, 1000), 1, "C")]


def run_everything(x, dy, gamma, beta, axis, training):
    rm, rv = np.zeros(x.shape[axis]), np.ones(x.shape[axis])
    kw = dict(axis=axis, training=training, running_mean=rm, running_var=rv)
    y, cache = fastbn.forward(x, gamma, beta, **kw)
    y_relu, cache_relu = fastbn.forward(x, gamma, beta, activation="relu", **kw)
    dx, dg, db = fastbn.backward(dy, cache)
    dx_relu, _, _ = fastbn.backward(dy, cache_relu)
    count, mean, m2 = fastbn.batch_stats(x, axis=axis)
    sums = fastbn.backward_reduce(dy, x, mean, cache.invstd, axis=axis)
    return [y, np.asarray(cache.mean), np.asarray(cache.invstd), rm, rv, y_relu, dx, dg, db,
            dx_relu, mean, m2, *sums]


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis, layout", DETERMINISM_CASES)
def test_results_do_not_depend_on_thread_count(restore_threads, shape, axis, layout, dtype,
                                               training):
    rng = np.random.default_rng(11)
    x = lay_out((1.5 + rng.standard_normal(shape)).astype(dtype), layout, rng)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    gamma, beta = rng.uniform(0.5, 2, C), rng.standard_normal(C)
    fastbn.set_num_threads(1)
    one = run_everything(x, dy, gamma, beta, axis, training)
    fastbn.set_num_threads(2)
    two = run_everything(x, dy, gamma, beta, axis, training)
    again = run_everything(x, dy, gamma, beta, axis, training)
    import threadpoolctl  # a test dependency: raises OpenMP's own limit (cores) to 3
    from fastbn._threads import build_info
    fastbn.set_num_threads(3)  # more threads than this machine's cores
    with threadpoolctl.threadpool_limits(limits=3, user_api="openmp"):
        if build_info()["openmp"]:  # (a build without OpenMP runs one thread, always)
            assert fastbn.get_num_threads() == 3, "3 threads were asked for, not capped"
        three = run_everything(x, dy, gamma, beta, axis, training)
    names = "y mean invstd rm rv y_relu dx dgamma dbeta dx_relu bs_mean bs_m2 sum_dy sum_dy_xhat"
    for name, a, b, c, d in zip(names.split(), one, two, again, three):
        assert_bitwise_equal(a, b, f"{name}: 1 thread vs 2 threads")
        assert_bitwise_equal(b, c, f"{name}: two runs on 2 threads")
        assert_bitwise_equal(a, d, f"{name}: 1 thread vs 3 threads")


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_values_propagate_like_the_reference(bad, training, activation):
    rng = np.random.default_rng(10)
    x = rng.standard_normal((6, 3, 2))
    x[2, 1, 0] = bad
    kw = dict(training=training, running_mean=np.zeros(3), running_var=np.ones(3),
              activation=activation)
    with np.errstate(invalid="ignore"):
        y, _ = fastbn.forward(x, **kw)
        expected, _ = reference.forward(x, **kw)
    assert np.array_equal(np.isnan(y), np.isnan(expected))
    assert np.array_equal(np.isposinf(y), np.isposinf(expected))
    assert np.array_equal(np.isneginf(y), np.isneginf(expected))


@given(case=cases())
def test_backward_into_x(case):
    """out=cache.x: dx may overwrite the saved input (the cache is spent afterwards)."""
    x, dy = case.x(), case.dy()
    gamma, beta = case.params()
    rm, rv = case.running_stats()
    assume(not near_relu_kink(case, x, gamma, beta, rm, rv))
    _, ref_cache = run_forward(reference, case, x.copy(), gamma, beta, *copies(rm, rv))
    ref_dx, _, _ = reference.backward(dy, ref_cache)
    _, cache = run_forward(fastbn, case, x, gamma, beta, *copies(rm, rv))
    dx, _, _ = fastbn.backward(dy, cache, out=x)
    assert dx is x and padding_intact(x)
    assert_close(dx, ref_dx, what="dx")


def at_offset(a, values):
    """A C-contiguous copy of `a` starting `values` elements past a 64-byte boundary."""
    buf = np.empty(a.size + 64, dtype=a.dtype)
    start = (-buf.ctypes.data % 64) // a.itemsize + values
    b = buf[start:start + a.size].reshape(a.shape)
    b[...] = a
    return b


# channel rows of a whole number of cache lines, and not (their alignment varies)
@pytest.mark.parametrize("shape, axis", [((40, 4096), 1), ((64, 1000), 1), ((300, 30), 1),
                                         ((4, 20, 20, 24), -1), ((8, 20, 7, 7), 1)])
@pytest.mark.parametrize("dtype", DTYPES)
def test_results_do_not_depend_on_the_data_address(shape, axis, dtype):
    """Kernels split their loops at cache-line boundaries of the data: that must
    never change a result's bits (NumPy's large arrays start 16 bytes past one)."""
    rng = np.random.default_rng(5)
    x = (0.5 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    gamma, beta = rng.uniform(0.5, 2, C), rng.standard_normal(C)
    names = "y mean invstd rm rv y_relu dx dgamma dbeta dx_relu bs_mean bs_m2 sum_dy sum_dy_xhat"
    base = None
    for offset in range(64 // x.itemsize):
        got = run_everything(at_offset(x, offset), at_offset(dy, offset), gamma, beta, axis,
                             True)
        if base is None:
            base = got
            continue
        for name, a, b in zip(names.split(), base, got):
            assert_bitwise_equal(a, b, f"{name}: data {offset} values past a cache line")


def assert_same_bits_nan_aside(a, b, what):
    """Bitwise equal, except that a NaN may differ in sign and payload (which C
    leaves to the order of commutative operations)."""
    assert a.shape == b.shape and a.dtype == b.dtype, what
    nan = np.isnan(a)
    assert np.array_equal(nan, np.isnan(b)), what
    assert a[~nan].tobytes() == b[~nan].tobytes(), what


# Outputs of 16 MB or more (streamed under an L3 of 16 MB) are written by other loops than
# smaller ones (vectors stored non-temporally, scalars before the first 16-byte
# boundary and after the last whole vector; columns through an L1 buffer, a row
# or a group of rows at a time): the results must be the same bits. NCHW runs of
# 129 * 131 values, which are not whole vectors; (N, C) rows of 300 channels
# (a row at a time; dx of float64: groups), 4096 (groups) and NHWC's 64
# (coefficients repeated over a period); data starting at several offsets from a
# cache line, with -0.0, NaN and infinities among the values.
STREAMED_CASES = [((4, 64, 129, 131), 1), ((4, 3620, 300), -1), ((4, 275, 4096), -1),
                  ((4, 129, 131, 64), -1)]  # float32: 17-18 MB (float64: half the rows)


@pytest.mark.parametrize("offset", [0, 1, 3])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", STREAMED_CASES)
@pytest.mark.usefixtures("streaming_l3")
def test_streamed_outputs_are_those_of_small_arrays(shape, axis, dtype, offset):
    n = 4 if dtype == np.float32 else 2
    shape, C = (n, *shape[1:]), shape[axis]
    rng = np.random.default_rng(23)
    x = at_offset(rng.standard_normal(shape).astype(dtype), offset)
    dy = at_offset(rng.standard_normal(shape).astype(dtype), offset)
    flat_x, flat_dy = x.reshape(-1), dy.reshape(-1)
    flat_x[::1009], flat_x[5::100003], flat_x[7::100019] = -0.0, np.nan, np.inf
    flat_dy[3::100043], flat_dy[9::99991] = -np.inf, np.nan
    mean, invstd = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    gamma, beta = rng.uniform(0.5, 2, C), rng.standard_normal(C)
    gamma[::5], beta[::3] = -0.0, -0.0
    sums = rng.standard_normal(C), rng.standard_normal(C)
    rv = invstd ** -2 - 1e-5

    def outputs(x, dy):
        kw = dict(axis=axis)
        infer, cache = fastbn.forward(x, gamma, beta, training=False, running_mean=mean,
                                      running_var=rv, activation="relu", **kw)
        return [fastbn.normalize(x, mean, invstd, gamma, beta, **kw),
                fastbn.normalize(x, mean, invstd, gamma, beta, activation="relu", **kw), infer,
                fastbn.backward(dy, cache)[0],
                fastbn.backward_elemt(dy, x, mean, invstd, gamma, *sums, 1000, **kw),
                fastbn.backward_elemt(dy, x, mean, invstd, gamma, *sums, 1000, beta=beta,
                                      activation="relu", **kw)]

    with np.errstate(invalid="ignore", over="ignore"):
        whole = outputs(x, dy)
        pieces = [outputs(x[i:i + 1], dy[i:i + 1]) for i in range(n)]  # 4.3 MB each
        in_place = x.copy()
        whole.append(fastbn.normalize(in_place, mean, invstd, gamma, beta, axis=axis,
                                      out=in_place))
        for p in pieces:
            p.append(p[0])
    names = "normalize normalize_relu inference eval_dx dx dx_relu in_place".split()
    for k, name in enumerate(names):
        assert_same_bits_nan_aside(whole[k], np.concatenate([p[k] for p in pieces]), name)


@pytest.mark.parametrize("module", [fastbn, reference])
def test_cache_pickles(module):
    """A Cache pickles and unpickles, also one pickled when Cache lived in fastbn._checks
    (such a pickle names fastbn._checks.Cache): backward gives the same gradients."""
    import pickle
    rng = np.random.default_rng(0)
    x, dy = rng.normal(size=(5, 3, 2)), rng.normal(size=(5, 3, 2))
    _, cache = module.forward(x, np.ones(3), np.zeros(3), activation="relu")
    expected = module.backward(dy, cache)
    new = pickle.dumps(cache, protocol=2)  # protocol 2: the class as text, "module\nname"
    assert b"fastbn._cache\nCache" in new
    old = new.replace(b"fastbn._cache\nCache", b"fastbn._checks\nCache")
    for data in (new, old, pickle.dumps(cache)):
        loaded = pickle.loads(data)
        assert type(loaded) is fastbn.Cache
        for got, want in zip(module.backward(dy, loaded), expected):
            assert_bitwise_equal(got, want)
