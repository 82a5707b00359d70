"""Half-precision data (issue 19): float16 and ml_dtypes.bfloat16.

The guarantee (docs/numerics.md): every output element of y and dx within one unit
in the last place (of the half dtype) of the exact value, plus 1e-6 of its channel's
output scale for values near zero (y: the largest |exact y| of the channel; dx: the
size of its terms, |gamma| * invstd * max |dy| over the channel, which a dx made
small by cancellation, as with two values per channel, does not reduce), for data offset from zero by up to 1e3 times their spread (float16) and
1e5 (bfloat16); NaN and Inf as for float32 (confined to their channel). The exact
values come from an extended-precision oracle (np.longdouble around a correctly
rounded first mean: tests/test_accuracy.py, itself checked against 60-digit decimal
arithmetic). Parameters and statistics are float32 by default; the reductions
(dgamma, dbeta, running statistics) are float64 sums rounded once to the
parameters' dtype.

Also: random shapes, axes and memory layouts against the reference (hypothesis),
the gradients through a float64 computation on the same values, the building
blocks, the layer's dtype=None rule, and errors naming the argument.
"""
import os
import subprocess
import sys
import zlib

import numpy as np
import pytest
from hypothesis import given, strategies as st

if __name__ == "__main__":  # `python tests/test_half.py` from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import fastbn  # noqa: E402
from fastbn import reference  # noqa: E402

from conftest import lay_out, shapes_and_axes  # noqa: E402
from test_accuracy import EXTENDED, LD, channels_last, offset_data, oracle  # noqa: E402

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
HALVES = [F16, BF16]
IDS = ["float16", "bfloat16"]
SIGNIFICAND = {F16: 11, BF16: 8}  # bits, the implicit one included
MIN_EXP = {F16: -14, BF16: -126}  # of the smallest normal value
MAX_RATIO = {F16: 1e3, BF16: 1e5}  # offsets / spread the guarantee covers
needs_extended = pytest.mark.skipif(not EXTENDED, reason="the oracle needs np.longdouble")
EPS = 1e-5


def ulp(values, dtype):
    """The unit in the last place of `dtype` at each exact value (float64 array)."""
    v = np.abs(np.asarray(values, dtype=np.float64))
    with np.errstate(divide="ignore"):
        e = np.floor(np.log2(np.where(v > 0, v, 1.0)))
    e = np.maximum(e, MIN_EXP[dtype])
    return np.ldexp(1.0, (e - (SIGNIFICAND[dtype] - 1)).astype(int))


def ulp_errors(got, exact, axis, dtype, scale=None):
    """|got - exact| in units of (1 ulp of exact + 1e-6 of the channel's output scale):
    at most 1 is within the guarantee. `scale`: per channel (default: max |exact|)."""
    exact = np.asarray(exact, dtype=np.float64)
    got = np.asarray(got).astype(np.float64)
    e2 = channels_last(exact, axis)
    if scale is None:
        scale = np.max(np.abs(e2), axis=0) if e2.size else np.zeros(e2.shape[1])
    allowed = ulp(e2, dtype) + 1e-6 * scale
    err = np.abs(channels_last(got, axis) - e2)
    return err / allowed


def dx_scale(dy, gamma, invstd, axis):
    """dx's output scale per channel: the size of its terms, |gamma| * invstd * max |dy|."""
    d2 = np.abs(channels_last(np.asarray(dy).astype(np.float64), axis))
    g = 1.0 if gamma is None else np.abs(np.asarray(gamma, dtype=np.float64))
    return g * np.asarray(invstd, dtype=np.float64) * (d2.max(axis=0) if d2.size else 0.0)


def max_ulps(got, exact, axis, dtype, scale=None):
    r = ulp_errors(got, exact, axis, dtype, scale)
    return float(np.max(r)) if r.size else 0.0


def case(shape, axis, dtype, ratio, seed):
    x = offset_data(shape, axis, np.float64, ratio, 1.0, seed).astype(dtype)
    rng = np.random.default_rng([seed, 1])
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    gamma = (rng.uniform(0.5, 2.0, C) * rng.choice([-1.0, 1.0], C)).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    return x, dy, gamma, beta


def exact_training(x, dy, gamma, beta, axis):
    return oracle(x.astype(np.float64), dy.astype(np.float64),
                  None if gamma is None else gamma.astype(np.float64),
                  None if beta is None else beta.astype(np.float64), axis, eps=EPS)


LAYOUTS = {"NCHW": ((6, 5, 7, 9), 1), "NC": ((400, 6), 1), "NHWC": ((6, 7, 9, 5), -1),
           "NCL-long": ((4, 3, 4099), 1), "NC-wide": ((64, 300), 1)}
MODULES = [fastbn, reference]


def ratios(dtype):
    return [0.0, 10.0, MAX_RATIO[dtype]]


ACCURACY = [(d, r) for d in HALVES for r in ratios(d)]


@needs_extended
@pytest.mark.parametrize("impl", MODULES, ids=lambda m: m.__name__)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("dtype, ratio", ACCURACY,
                         ids=[f"{d.name}-off{r:g}" for d, r in ACCURACY])
def test_training_within_one_ulp_of_exact(impl, layout, dtype, ratio):
    shape, axis = LAYOUTS[layout]
    seed = zlib.crc32(repr((layout, dtype.name, ratio)).encode())
    x, dy, gamma, beta = case(shape, axis, dtype, ratio, seed)
    for g, b in [(gamma, beta), (None, None)]:
        exp = exact_training(x, dy, g, b, axis)
        y, cache = impl.forward(x, g, b, axis=axis, eps=EPS)
        dx, dgamma, dbeta = impl.backward(dy, cache)
        assert y.dtype == dx.dtype == dtype
        assert max_ulps(y, exp["y"], axis, dtype) <= 1, "y"
        invstd = 1 / np.sqrt(exp["var"].astype(np.float64) + EPS)
        assert max_ulps(dx, exp["dx"], axis, dtype, dx_scale(dy, g, invstd, axis)) <= 1, "dx"
        if g is not None:
            assert dgamma.dtype == dbeta.dtype == np.float32
            # float64 sums rounded once to float32: 1e-6 of the sum of |terms|
            assert np.all(np.abs(dgamma - exp["dgamma"].astype(np.float64))
                          <= 1e-6 * exp["dgamma_scale"].astype(np.float64) + 1e-30)
            assert np.all(np.abs(dbeta - exp["dbeta"].astype(np.float64))
                          <= 1e-6 * exp["dbeta_scale"].astype(np.float64) + 1e-30)
        var = exp["var"].astype(np.float64)
        np.testing.assert_allclose(cache.invstd, 1 / np.sqrt(var + EPS), rtol=1e-9)


@needs_extended
@pytest.mark.parametrize("impl", MODULES, ids=lambda m: m.__name__)
@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
def test_relu_and_eval_within_one_ulp(impl, dtype):
    shape, axis = (8, 6, 5, 7), 1
    x, dy, gamma, beta = case(shape, axis, dtype, 10.0, 3)
    exp = exact_training(x, dy, gamma, beta, axis)
    y, _ = impl.forward(x, gamma, beta, activation="relu", eps=EPS)
    assert max_ulps(y, np.maximum(exp["y"].astype(np.float64), 0), axis, dtype) <= 1
    # eval mode: y = (x - rm) / sqrt(rv + eps) * gamma + beta, float32 statistics
    C = shape[axis]
    rm = np.linspace(5, 15, C).astype(np.float32)
    rv = np.linspace(0.5, 3, C).astype(np.float32)
    col = (1, C, 1, 1)
    x64 = x.astype(LD)
    invstd = 1 / np.sqrt(rv.astype(LD) + LD(EPS))
    ey = ((x64 - rm.astype(LD).reshape(col)) * (invstd * gamma.astype(LD)).reshape(col)
          + beta.astype(LD).reshape(col))
    y, cache = impl.forward(x, gamma, beta, training=False, running_mean=rm, running_var=rv,
                            eps=EPS)
    assert max_ulps(y, ey.astype(np.float64), axis, dtype) <= 1
    dx, dgamma, dbeta = impl.backward(dy, cache)
    edx = dy.astype(LD) * (invstd * gamma.astype(LD)).reshape(col)
    assert max_ulps(dx, edx.astype(np.float64), axis, dtype) <= 1


@pytest.mark.parametrize("impl", MODULES, ids=lambda m: m.__name__)
@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
def test_running_statistics_float32(impl, dtype):
    shape, axis = (50, 4, 6), 1
    x, _, gamma, beta = case(shape, axis, dtype, 10.0, 4)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    impl.forward(x, gamma, beta, running_mean=rm, running_var=rv, momentum=0.25)
    x64 = x.astype(np.float64)
    m = x64.mean(axis=(0, 2))
    v = x64.var(axis=(0, 2)) * 300 / 299
    np.testing.assert_allclose(rm, 0.75 * 0 + 0.25 * m, rtol=1e-6)
    np.testing.assert_allclose(rv, 0.75 * 1 + 0.25 * v, rtol=1e-6)
    assert rm.dtype == rv.dtype == np.float32
    # running statistics of the half dtype itself: updated in float64, rounded once
    hm, hv = np.zeros(4, dtype), np.ones(4, dtype)
    impl.forward(x, gamma, beta, running_mean=hm, running_var=hv, momentum=0.25)
    assert hm.dtype == hv.dtype == dtype
    np.testing.assert_array_equal(hm.astype(np.float64), (0.25 * m).astype(dtype).astype(np.float64))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
@pytest.mark.parametrize("impl", MODULES, ids=lambda m: m.__name__)
@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_stays_in_its_channel(impl, dtype, bad):
    shape, axis = (16, 4, 9), 1
    x, dy, gamma, beta = case(shape, axis, dtype, 0.0, 5)
    y0, c0 = impl.forward(x, gamma, beta)
    dx0 = impl.backward(dy, c0)[0]
    x[3, 2, 4] = bad
    y, c = impl.forward(x, gamma, beta)
    dx = impl.backward(dy, c)[0]
    keep = [0, 1, 3]
    np.testing.assert_array_equal(y[:, keep].view(np.uint16), y0[:, keep].view(np.uint16))
    np.testing.assert_array_equal(dx[:, keep].view(np.uint16), dx0[:, keep].view(np.uint16))
    assert not np.isfinite(y[:, 2].astype(np.float32)).all()


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_half_overflow_is_infinite():
    """An output beyond float16's range rounds to infinity, as a float32 one would."""
    x = np.zeros((4, 2), np.float16)
    x[0] = 1.0
    for impl in MODULES:
        y, _ = impl.forward(x, np.float32([1e5, 1.0]), np.float32([0, 0]))
        assert np.isinf(y[0, 0]) and np.isfinite(y[:, 1]).all()


# ------------------------------------------------------------- against the reference

def tolerance_ok(got, expected64, axis, dtype, ulps=1, scale=None):
    """Within `ulps` of `expected64` (an accurate float64 result) in the guarantee's units."""
    r = ulp_errors(got, expected64, axis, dtype, scale)
    return r.size == 0 or float(np.max(r)) <= ulps


@given(data=st.data())
@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
def test_random_shapes_axes_layouts(dtype, data):
    """forward/backward of half data against the reference on the same values in float64
    (its float64 results are accurate to far below a half ulp), for random shapes, axes,
    memory layouts, affine or not, ReLU or not, training or eval."""
    shape, axis = data.draw(shapes_and_axes(min_count=2))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    layout = data.draw(st.sampled_from(["C", "F", "strided", "reversed", "transposed",
                                        "unaligned"]))
    offset = data.draw(st.sampled_from([0.0, 3.0, 100.0]))
    C = shape[axis]
    x = lay_out((offset + rng.standard_normal(shape)).astype(dtype), layout, rng)
    dy = lay_out(rng.standard_normal(shape).astype(dtype), layout, rng)
    affine = data.draw(st.booleans())
    gamma = rng.uniform(0.5, 2, C).astype(np.float32) if affine else None
    beta = rng.standard_normal(C).astype(np.float32) if affine else None
    training = data.draw(st.booleans())
    rm = rng.standard_normal(C).astype(np.float32) + offset
    rv = rng.uniform(0.5, 2, C).astype(np.float32)
    kw = dict(axis=axis, training=training, running_mean=rm.copy(), running_var=rv.copy())
    y, cache = fastbn.forward(x, gamma, beta, **kw)
    dx, dg, db = fastbn.backward(dy, cache)
    f64 = lambda a: None if a is None else a.astype(np.float64)  # noqa: E731
    kw64 = dict(axis=axis, training=training, running_mean=rm.astype(np.float64),
                running_var=rv.astype(np.float64))
    ey, ecache = reference.forward(f64(x), f64(gamma), f64(beta), **kw64)
    edx, edg, edb = reference.backward(f64(dy), ecache)
    assert y.dtype == dx.dtype == dtype and y.shape == x.shape
    assert tolerance_ok(y, ey, axis, dtype), "y"
    # the gradients: through the float64 computation on the same values
    assert tolerance_ok(dx, edx, axis, dtype, scale=dx_scale(dy, gamma, ecache.invstd, axis)), "dx"
    if affine:
        np.testing.assert_allclose(dg, edg, rtol=1e-5, atol=1e-5 * np.abs(edg).max())
        np.testing.assert_allclose(db, edb, rtol=1e-5, atol=1e-5 * np.abs(edb).max())
    if training:
        np.testing.assert_allclose(kw["running_mean"], kw64["running_mean"], rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(kw["running_var"], kw64["running_var"], rtol=1e-6, atol=1e-6)


@given(data=st.data())
@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
def test_building_blocks(dtype, data):
    shape, axis = data.draw(shapes_and_axes(min_count=2))
    rng = np.random.default_rng(data.draw(st.integers(0, 2 ** 32 - 1)))
    C = shape[axis]
    x = (2 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    x64, dy64 = x.astype(np.float64), dy.astype(np.float64)
    count, mean, m2 = fastbn.batch_stats(x, axis=axis)
    ecount, emean, em2 = reference.batch_stats(x64, axis=axis)
    assert count == ecount and mean.dtype == m2.dtype == np.float64
    np.testing.assert_allclose(mean, emean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(m2, em2, rtol=1e-10, atol=1e-10)
    invstd = 1 / np.sqrt(m2 / count + EPS)
    gamma = rng.uniform(0.5, 2, C).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    relu = data.draw(st.sampled_from([None, "relu"]))
    y = fastbn.normalize(x, mean, invstd, gamma, beta, axis=axis, activation=relu)
    ey = reference.normalize(x64, mean, invstd, gamma, beta, axis=axis, activation=relu)
    assert y.dtype == dtype and tolerance_ok(y, ey, axis, dtype)
    s1, s2 = fastbn.backward_reduce(dy, x, mean, invstd, axis=axis)
    e1, e2 = reference.backward_reduce(dy64, x64, mean, invstd, axis=axis)
    np.testing.assert_allclose(s1, e1, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(s2, e2, rtol=1e-10, atol=1e-10)
    dx = fastbn.backward_elemt(dy, x, mean, invstd, gamma, s1, s2, count, axis=axis)
    edx = reference.backward_elemt(dy64, x64, mean, invstd, gamma, e1, e2, count, axis=axis)
    assert dx.dtype == dtype and tolerance_ok(dx, edx, axis, dtype,
                                              scale=dx_scale(dy, gamma, invstd, axis))
    out = np.full(shape, np.nan, dtype)
    assert fastbn.normalize(x, mean, invstd, gamma, beta, axis=axis, out=out) is out
    np.testing.assert_array_equal(out.view(np.uint16), fastbn.normalize(
        x, mean, invstd, gamma, beta, axis=axis).view(np.uint16))


@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
def test_compiled_and_reference_agree(dtype):
    """Both backends are within 1 ulp of exact, so within 1 ulp of each other (almost
    always bitwise: the compiled kernels round float32 results, the reference float64)."""
    shape, axis = (32, 8, 33), 1
    x, dy, gamma, beta = case(shape, axis, dtype, 10.0, 9)
    y1, c1 = fastbn.forward(x, gamma, beta)
    y2, c2 = reference.forward(x, gamma, beta)
    a, b = y1.astype(np.float64), y2.astype(np.float64)
    assert np.all(np.abs(a - b) <= ulp(np.maximum(np.abs(a), np.abs(b)), dtype))
    assert np.mean(a == b) > 0.97


# Outputs of 16 MB or more (streamed under an L3 of 16 MB) are written by other loops
# (16-bit data: a cache line at a time, stored non-temporally; columns through an L1
# buffer): the same bits as the cached loops give a slice of them. NCHW runs of
# 129 * 131 values (not whole lines) and (N, C) rows of 4096 channels, at two offsets
# from a 16-byte boundary.
STREAMED = [((8, 64, 129, 131), 1, F16, 1), ((8, 275, 4096), -1, BF16, 0)]  # default run
STREAMED += [pytest.param(*c, marks=pytest.mark.slow) for c in [
    ((8, 64, 129, 131), 1, BF16, 0), ((8, 275, 4096), -1, F16, 1)]]


@pytest.mark.parametrize("shape, axis, dtype, offset", STREAMED)
@pytest.mark.usefixtures("streaming_l3")
def test_streamed_outputs_are_those_of_small_arrays(shape, axis, dtype, offset):
    rng = np.random.default_rng(29)
    C = shape[axis]

    def at_offset(a):
        raw = np.empty(a.size + 8, dtype)
        view = raw[offset:offset + a.size].reshape(a.shape)
        view[...] = a
        return view
    x = at_offset(rng.standard_normal(shape).astype(dtype))
    dy = at_offset(rng.standard_normal(shape).astype(dtype))
    x.reshape(-1)[5::100003] = np.nan
    mean, invstd = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    gamma, beta = rng.uniform(0.5, 2, C).astype(np.float32), rng.standard_normal(C)
    sums = rng.standard_normal(C), rng.standard_normal(C)

    def outputs(x, dy):
        return [fastbn.normalize(x, mean, invstd, gamma, beta, axis=axis),
                fastbn.normalize(x, mean, invstd, gamma, beta, axis=axis, activation="relu"),
                fastbn.backward_elemt(dy, x, mean, invstd, gamma, *sums, 1000, axis=axis)]

    with np.errstate(invalid="ignore"):
        whole = outputs(x, dy)
        pieces = [outputs(x[i:i + 1], dy[i:i + 1]) for i in range(shape[0])]  # 2-4 MB each
    for k in range(len(whole)):
        np.testing.assert_array_equal(whole[k].view(np.uint16),
                                      np.concatenate([p[k] for p in pieces]).view(np.uint16))


# ------------------------------------------------------------- parameters, layer, errors

@pytest.mark.parametrize("impl", MODULES, ids=lambda m: m.__name__)
@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
def test_parameter_dtypes(impl, dtype):
    x, dy, _, _ = case((10, 3), 1, dtype, 0.0, 6)
    _, cache = impl.forward(x, 2.0, 1.0)  # Python numbers: float32 with half data
    assert cache.gamma.dtype == cache.beta.dtype == np.float32
    _, cache = impl.forward(x, np.array([1, 2, 3]), None)  # int64: float64, as NumPy
    assert cache.gamma.dtype == np.float64
    for pd in (np.float16, BF16, np.float32, np.float64):
        g = np.ones(3, pd)
        y, cache = impl.forward(x, g, np.zeros(3, pd))
        assert y.dtype == dtype
        dx, dg, db = impl.backward(dy, cache)
        assert dx.dtype == dtype and dg.dtype == db.dtype == np.dtype(pd)


@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
def test_layer_dtype_none_takes_float32(layer_backend, dtype):
    bn = fastbn.BatchNorm(3, dtype=None)
    x, dy, _, _ = case((10, 3, 4), 1, dtype, 5.0, 7)
    y = bn(x)
    assert y.dtype == dtype and bn.dtype == np.float32
    assert bn.params["gamma"].dtype == bn.running_mean.dtype == np.float32
    dx = bn.backward(dy)
    assert dx.dtype == dtype and bn.grads["gamma"].dtype == np.float32
    bn.eval()
    assert bn(x).dtype == dtype
    half_bn = fastbn.BatchNorm(3, dtype=dtype)  # parameters of the half dtype: allowed
    assert half_bn(x).dtype == dtype and half_bn.running_var.dtype == dtype
    assert fastbn.BatchNorm(3, dtype="bfloat16").dtype == BF16


@pytest.mark.parametrize("impl", MODULES, ids=lambda m: m.__name__)
def test_errors_name_the_argument(impl):
    x = np.ones((4, 3), F16)
    x[0] = 0
    b = x.astype(BF16)
    _, cache = impl.forward(x)
    with pytest.raises(TypeError, match=r"\bdy\b.*float16"):
        impl.backward(b, cache)  # bfloat16 dy for float16 x
    with pytest.raises(TypeError, match=r"\bout\b.*float16"):
        impl.forward(x, out=np.empty((4, 3), np.float32))
    with pytest.raises(TypeError, match=r"\bout\b.*bfloat16"):
        impl.forward(b, out=np.empty((4, 3), F16))
    with pytest.raises(TypeError, match=r"\bx\b"):
        impl.forward(x.astype(np.int16))
    with pytest.raises(TypeError, match=r"\bgamma\b"):
        impl.forward(x, np.ones(3, np.complex64))
    with pytest.raises(TypeError, match=r"\brunning_mean\b"):
        impl.forward(x, running_mean=np.zeros(3, np.int32), running_var=np.ones(3, np.float32))
    with pytest.raises(TypeError, match=r"\bdy\b"):
        impl.backward_reduce(b, x, np.zeros(3), np.ones(3))
    with pytest.raises(TypeError, match=r"\bout\b"):
        impl.normalize(b, np.zeros(3), np.ones(3), out=np.empty((4, 3), np.float32))


@pytest.mark.parametrize("impl", MODULES, ids=lambda m: m.__name__)
@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
def test_out_and_in_place(impl, dtype):
    x, dy, gamma, beta = case((12, 5, 3), 1, dtype, 1.0, 8)
    y, cache = impl.forward(x, gamma, beta)
    out = np.empty_like(x)
    y2, _ = impl.forward(x, gamma, beta, out=out)
    assert y2 is out
    np.testing.assert_array_equal(out.view(np.uint16), y.view(np.uint16))
    dx = impl.backward(dy, cache)[0]
    d = dy.copy()
    dx2 = impl.backward(d, cache, out=d)[0]  # dx over dy: elementwise in place
    assert dx2 is d
    np.testing.assert_array_equal(d.view(np.uint16), dx.view(np.uint16))
    xc = x.copy()
    impl.forward(xc, gamma, beta, out=xc)
    np.testing.assert_array_equal(xc.view(np.uint16), y.view(np.uint16))


# ------------------------------------------------------------- the comparison table

def _torch_run(x, dy, gamma, beta, axis, dtype):
    import torch
    tdtype = torch.float16 if dtype == F16 else torch.bfloat16
    xt = torch.from_numpy(np.moveaxis(x.astype(np.float32), axis, 1).copy()).to(tdtype)
    xt.requires_grad_(True)
    g = torch.tensor(gamma, requires_grad=True)
    b = torch.tensor(beta, requires_grad=True)
    yt = torch.nn.functional.batch_norm(xt, None, None, g, b, training=True, eps=EPS)
    dyt = torch.from_numpy(np.moveaxis(dy.astype(np.float32), axis, 1).copy()).to(tdtype)
    yt.backward(dyt)
    back = lambda t: np.moveaxis(t.detach().float().numpy(), 1, axis)  # noqa: E731
    return back(yt), back(xt.grad)


def error_table(shape=(16, 8, 32, 32), axis=1):
    """Rows (dtype, offset/spread, {method: (y, dx) max error in units of the
    guarantee: 1 ulp of the exact value + 1e-6 of the channel's output scale})."""
    rows = []
    for dtype in HALVES:
        for ratio in [0.0, 10.0, 1e2, MAX_RATIO[dtype]]:
            x, dy, gamma, beta = case(shape, axis, dtype, ratio, seed=41)
            exp = exact_training(x, dy, gamma, beta, axis)
            invstd = 1 / np.sqrt(exp["var"].astype(np.float64) + EPS)
            sdx = dx_scale(dy, gamma, invstd, axis)
            res = {}
            for name, impl in [("fastbn", fastbn), ("reference", reference)]:
                y, cache = impl.forward(x, gamma, beta, axis=axis, eps=EPS)
                dx = impl.backward(dy, cache)[0]
                res[name] = (max_ulps(y, exp["y"], axis, dtype),
                             max_ulps(dx, exp["dx"], axis, dtype, sdx))
            try:
                y, dx = _torch_run(x, dy, gamma, beta, axis, dtype)
                res["PyTorch"] = (max_ulps(y, exp["y"], axis, dtype),
                                  max_ulps(dx, exp["dx"], axis, dtype, sdx))
            except ImportError:
                pass
            rows.append((dtype.name, ratio, res))
    return rows


def main():
    print(f"fastbn backend: {fastbn.backend}; oracle: np.longdouble (eps {np.finfo(LD).eps:.1e})")
    print("max error of y / dx in units of (1 ulp of the exact value + 1e-6 of the channel's "
          "output scale), 16x8x32x32 NCHW, float32 gamma/beta, spread 1, offset as given; "
          "<= 1 meets the guarantee\n")
    rows = error_table()
    methods = []
    for _, _, res in rows:
        methods += [m for m in res if m not in methods]
    print("| dtype | offset/spread | " + " | ".join(methods) + " |")
    print("|---|---|" + "---|" * len(methods))
    for dtype, ratio, res in rows:
        cells = [f"{res[m][0]:.2f} / {res[m][1]:.2f}" if m in res else "-" for m in methods]
        print(f"| {dtype} | {ratio:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    with np.errstate(all="ignore"):
        main()


def test_integer_parameters_without_bfloat16_promotion(monkeypatch):
    """ml_dtypes < 0.5 on NumPy 1 (the sdist's Python 3.9 check) registers no promotion
    of integers with bfloat16: integer gamma still converts, as newer versions do."""
    pytest.importorskip("ml_dtypes")
    from fastbn import _checks
    real = np.result_type

    def old_result_type(*args):
        if any(np.dtype(a) == BF16 for a in args) and any(np.dtype(a).kind in "biu" for a in args):
            raise TypeError("no common DType")
        return real(*args)

    monkeypatch.setattr(_checks.np, "result_type", old_result_type)
    x = np.ones((4, 3), BF16)
    for ints, want in ((np.array([1, 2, 3]), np.float64), (np.array([1, 2, 3], np.int8), BF16)):
        assert _checks.channel_vector(ints, 3, "gamma", like=x.dtype).dtype == want


def _feature_grads(impl, x, dy, g, b, act, feat, rm, rv):
    _, cache = impl.forward(x, g, b, activation=act, running_mean=rm.copy(),
                            running_var=rv.copy(), **feat)
    return impl.backward(dy, cache)[1:3]


FEATURE_CASES = [  # found by a random search; the reference's dbeta was off by up to 180%
    ("relu", {"renorm": (3.0, 5.0)}, (2, 4, 4, 5), 1e3, 0.01),
    ("relu", {"virtual_batch_size": 2}, (6, 5, 4), 0.0, 0.01),
    ("relu", {"residual": True}, (3, 2, 3, 2), 1e3, 1.0),
    ("leaky_relu", {"mask": True}, (5, 5, 2), 0.0, 100.0),  # the compiled backend's: 5e-3
    ("leaky_relu", {"renorm": (3.0, 5.0)}, (6, 5), 100.0, 100.0),
    ("leaky_relu", {"residual": True, "renorm": (3.0, 5.0)}, (6, 5, 3), 3.0, 1.0),
]


@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
@pytest.mark.parametrize("act, feat, shape, offset, spread", FEATURE_CASES)
def test_feature_dgamma_dbeta_sum_in_float64(dtype, act, feat, shape, offset, spread):
    """dgamma and dbeta of half data with the keywords beyond the plain forward: float64
    sums, so within a few float32 ulps of the float64 computation on the same values.
    (The reference once multiplied half dy by ReLU's boolean mask, which kept dy's
    dtype, and summed in float16 / bfloat16: dbeta off by up to 180%; the compiled
    backend's composition rounded a leaky ReLU's dy * slope to the half dtype: 6e-3.)"""
    rng = np.random.default_rng(7)
    C = shape[1]
    x = (offset + spread * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    g = rng.uniform(0.5, 2, C).astype(np.float32)
    b = rng.standard_normal(C).astype(np.float32)
    rm = (offset + rng.standard_normal(C)).astype(np.float32)
    rv = rng.uniform(0.5, 2, C).astype(np.float32)
    feat = dict(feat)
    if feat.get("residual") is True:
        feat["residual"] = rng.standard_normal(shape).astype(dtype)
    if feat.get("mask") is True:
        mask = rng.random((shape[0], 1) + shape[2:]) < 0.7
        mask.flat[0] = mask.flat[-1] = True
        feat["mask"] = mask
    f64 = {k: (v.astype(np.float64) if k == "residual" else v) for k, v in feat.items()}
    edg, edb = _feature_grads(reference, x.astype(np.float64), dy.astype(np.float64),
                              g.astype(np.float64), b.astype(np.float64), act, f64, rm, rv)
    for impl in MODULES:
        dg, db = _feature_grads(impl, x, dy, g, b, act, feat, rm, rv)
        for got, exact in ((dg, edg), (db, edb)):
            np.testing.assert_allclose(got, exact, rtol=1e-6, atol=1e-6 * np.abs(exact).max())


@needs_extended
@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
@pytest.mark.parametrize("feat", ["mask", "renorm"])
def test_leaky_relu_features_dx_of_half_data(dtype, feat):
    """dx of the features path with a leaky ReLU within the 1-ulp guarantee (dy * slope
    rounded to the half dtype before the composition gave up to 8.75 ulps)."""
    for seed in range(10):
        rng = np.random.default_rng([seed, 3])
        shape, C = (8, 5, 6), 5
        x = (3 * rng.standard_normal(shape)).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        g = rng.uniform(0.5, 2, C).astype(np.float32)
        b = rng.standard_normal(C).astype(np.float32)
        kw = {"mask": rng.random((8, 1, 6)) < 0.7} if feat == "mask" else \
            {"renorm": (3.0, 5.0), "running_mean": np.zeros(C, np.float32),
             "running_var": np.ones(C, np.float32)}
        if feat == "mask":
            kw["mask"].flat[0] = True
        f64 = lambda a: a.astype(np.float64)  # noqa: E731
        k2 = {k: (v.copy() if k.startswith("running") else v) for k, v in kw.items()}
        _, c = fastbn.forward(x, g, b, activation="leaky_relu", **kw)
        dx = fastbn.backward(dy, c)[0]
        _, e = reference.forward(f64(x), f64(g), f64(b), activation="leaky_relu", **k2)
        edx = reference.backward(f64(dy), e)[0]
        invstd = e.flat("invstd")[0].ravel()
        assert max_ulps(dx, edx, 1, dtype, scale=dx_scale(dy, g, invstd, 1)) <= 1, seed


@needs_extended
@pytest.mark.parametrize("dtype", HALVES, ids=IDS)
def test_leaky_relu_residual_dx_of_half_data(dtype):
    """dx of a leaky ReLU with a residual within the 1-ulp guarantee: its dx reads dy
    and the residual (from dresidual, dy * slope rounded to the half dtype first gave
    up to 1.7 ulps (float16) and 9.3 ulps (bfloat16) on these draws)."""
    for seed in range(10):
        rng = np.random.default_rng([seed, 3])
        shape, C = (8, 5, 6), 5
        x = (3 * rng.standard_normal(shape)).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        z = rng.standard_normal(shape).astype(dtype)
        g = rng.uniform(0.5, 2, C).astype(np.float32)
        b = rng.standard_normal(C).astype(np.float32)
        f64 = lambda a: a.astype(np.float64)  # noqa: E731
        _, c = fastbn.forward(x, g, b, activation="leaky_relu", residual=z)
        dx = fastbn.backward(dy, c)[0]
        _, e = reference.forward(f64(x), f64(g), f64(b), activation="leaky_relu",
                                 residual=f64(z))
        edx = reference.backward(f64(dy), e)[0]
        invstd = e.flat("invstd")[0].ravel()
        assert max_ulps(dx, edx, 1, dtype, scale=dx_scale(dy, g, invstd, 1)) <= 1, seed


def test_import_leaves_ml_dtypes_to_the_user():
    """`import fastbn` does not import ml_dtypes (about a second on NumPy 2.4), yet
    bfloat16 data work once the user's code has imported it, after fastbn, and the
    layer's dtype="bfloat16" imports it when asked."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastbn.__file__)))  # this fastbn
    code = """if True:
        import sys
        import numpy as np
        import fastbn
        assert "ml_dtypes" not in sys.modules, "import fastbn imported ml_dtypes"
        bn = fastbn.BatchNorm(3, dtype="bfloat16")
        assert "ml_dtypes" in sys.modules and bn.running_mean.dtype.name == "bfloat16"
        import ml_dtypes
        x = (np.arange(24.0).reshape(8, 3) % 5).astype(ml_dtypes.bfloat16)
        y, cache = fastbn.forward(x)
        dx, _, _ = fastbn.backward(y, cache)
        assert y.dtype == dx.dtype == x.dtype
        assert fastbn._checks.is_half(x.dtype) and not fastbn._checks.is_half(np.dtype("V2"))
        print("ok")
    """
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
