"""Row-strided inputs (issue 17): slices such as x[:, a:b], x[::2] or NCHW
x[:, c0:c1] run without a copy (src_c/fastbn.h, fbn_shape.row_stride). Every op on
a slice is bitwise equal to the same op on its contiguous copy (the kernels' walks
are the same but for the inputs' addresses), and close to fastbn.reference; sizes
reach the threaded, tiled and streamed paths; a tracemalloc peak proves that no
copy of x is made."""
import tracemalloc

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fastbn
from fastbn import reference
from fastbn._checks import canonical
from conftest import assert_close, data_dtypes

pytestmark = pytest.mark.skipif(fastbn.backend != "c", reason="the compiled kernels' strides")


DTYPES = data_dtypes()


@st.composite
def sliced(draw, max_values=3000):
    """(base shape, slice, axis): a slice of a larger array whose canonical view is
    row-strided (not contiguous)."""
    ndim = draw(st.integers(2, 4))
    axis = draw(st.integers(1, ndim - 1))
    shape = [draw(st.integers(1, 6)) for _ in range(ndim)]
    shape[0] = draw(st.integers(2, 40))
    shape[axis] = draw(st.integers(2, 24))
    kind = draw(st.sampled_from(["channels", "rows", "leading"]))
    if kind == "channels" and axis == 1:  # x[:, a:b]: C of a wider C
        a = draw(st.integers(0, 3))
        b = draw(st.integers(1, 3))
        full = list(shape)
        full[1] = shape[1] + a + b
        sl = (slice(None), slice(a, a + shape[1]))
    elif kind == "leading" and axis > 1:  # x[:, a:b] of a dimension before the channels
        full = list(shape)
        full[1] = shape[1] + 2
        sl = (slice(None), slice(1, 1 + shape[1]))
    else:  # x[::k]
        k = draw(st.integers(2, 3))
        full = list(shape)
        full[0] = shape[0] * k
        sl = (slice(None, None, k),)
    return tuple(full), sl, axis


def _data(rng, full, sl, dtype):
    base = (rng.standard_normal(full) * 2 + 1).astype(dtype)
    return base[sl]


def _assert_strided(x, axis):
    v = canonical(x, axis)
    assert np.shares_memory(v, x), "canonical() copied a row-strided slice"


def _same(a, b):
    a, b = np.asarray(a), np.asarray(b)
    assert a.dtype == b.dtype and a.shape == b.shape
    assert a.tobytes() == b.tobytes()  # bitwise


SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


@SETTINGS
@given(case=sliced(), dtype=st.sampled_from(DTYPES), relu=st.booleans(), seed=st.integers(0, 99))
def test_slices_match_contiguous_copy(case, dtype, relu, seed):
    full, sl, axis = case
    rng = np.random.default_rng(seed)
    x, dy = _data(rng, full, sl, dtype), _data(rng, full, sl, dtype)
    if x.flags.c_contiguous or canonical(x, axis).shape[0] == 1:
        return  # (a leading dimension sliced under others is copied: not one row stride)
    xc, dyc = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    C = x.shape[axis]
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)
    act = "relu" if relu else None
    for training in (True, False):
        rm, rv = np.zeros(C), np.ones(C)
        kw = dict(axis=axis, training=training, activation=act)
        if not training:
            kw.update(running_mean=rm + 0.1, running_var=rv * 1.5)
        y, cache = fastbn.forward(x, gamma, beta, **kw)
        yc, cachec = fastbn.forward(xc, gamma, beta, **kw)
        _same(y, yc)
        assert y.flags.c_contiguous
        g = fastbn.backward(dy, cache)
        gc = fastbn.backward(dyc, cachec)
        for a, b in zip(g, gc):
            _same(a, b)
        if dtype == np.float64:
            yr, cr = reference.forward(x, gamma, beta, **kw)
            np.testing.assert_allclose(y, yr, rtol=1e-9, atol=1e-9)
            for a, b in zip(g, reference.backward(dy, cr)):
                np.testing.assert_allclose(a, b, rtol=1e-8, atol=1e-9)
    # the building blocks
    for a, b in zip(fastbn.batch_stats(x, axis=axis), fastbn.batch_stats(xc, axis=axis)):
        _same(np.asarray(a), np.asarray(b))
    _, mean, m2 = fastbn.batch_stats(xc, axis=axis)
    invstd = 1.0 / np.sqrt(m2 / max(1, xc.size // C) + 1e-5)
    _same(fastbn.normalize(x, mean, invstd, gamma, beta, axis=axis, activation=act),
          fastbn.normalize(xc, mean, invstd, gamma, beta, axis=axis, activation=act))
    r = fastbn.backward_reduce(dy, x, mean, invstd, axis=axis, gamma=gamma, beta=beta,
                               activation=act)
    rc = fastbn.backward_reduce(dyc, xc, mean, invstd, axis=axis, gamma=gamma, beta=beta,
                                activation=act)
    for a, b in zip(r, rc):
        _same(a, b)
    count = xc.size // C
    _same(fastbn.backward_elemt(dy, x, mean, invstd, gamma, *rc, count, axis=axis, beta=beta,
                                activation=act),
          fastbn.backward_elemt(dyc, xc, mean, invstd, gamma, *rc, count, axis=axis, beta=beta,
                                activation=act))
    # dy strided, x contiguous (different row strides): still right
    _same(fastbn.backward(dy, cachec)[0], gc[0])


@SETTINGS
@given(case=sliced(), dtype=st.sampled_from(DTYPES[:2]), leaky=st.booleans(),
       seed=st.integers(0, 99))
def test_residual_and_layer(case, dtype, leaky, seed):
    full, sl, axis = case
    rng = np.random.default_rng(seed)
    x, z, dy = (_data(rng, full, sl, dtype) for _ in range(3))
    xc, zc, dyc = (np.ascontiguousarray(a) for a in (x, z, dy))
    act = "leaky_relu" if leaky else "relu"
    y, cache = fastbn.forward(x, axis=axis, activation=act, residual=z)
    yc, cachec = fastbn.forward(xc, axis=axis, activation=act, residual=zc)
    _same(y, yc)
    for a, b in zip(fastbn.backward(dy, cache), fastbn.backward(dyc, cachec)):
        if a is not None:
            _same(a, b)
    if axis == 1:
        layer, layerc = fastbn.BatchNorm(x.shape[1]), fastbn.BatchNorm(x.shape[1])
        _same(layer(x), layerc(xc))
        _same(layer.backward(dy), layerc.backward(dyc))


LARGE = [  # (base shape, slice, axis): threaded, tiled, streamed (outputs >= 16 MB)
    ((600, 300), (slice(None), slice(20, 270)), 1),
    ((2048, 2304), (slice(None), slice(128, 2176)), 1),  # 16 MB float32 output: streamed
    ((64, 40, 28, 28), (slice(None, None, 2),), 1),
    ((16, 64, 56, 56), (slice(None), slice(8, 40)), 1),
    ((8, 66, 64, 64), (slice(None), slice(1, 65)), 1),  # 16 MB float32: streamed rows
    ((2000, 7, 8), (slice(None, None, 2),), 1),
]


@pytest.mark.parametrize("full,sl,axis", LARGE)
@pytest.mark.usefixtures("streaming_l3")
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_large_slices(full, sl, axis, dtype):
    rng = np.random.default_rng(1)
    x, dy = _data(rng, full, sl, dtype), _data(rng, full, sl, dtype)
    _assert_strided(x, axis)
    xc, dyc = np.ascontiguousarray(x), np.ascontiguousarray(dy)
    for training in (True, False):
        kw = dict(axis=axis, training=training, activation="relu")
        if not training:
            C = x.shape[axis]
            kw.update(running_mean=np.full(C, 0.5), running_var=np.full(C, 2.0))
        y, cache = fastbn.forward(x, **kw)
        yc, cachec = fastbn.forward(xc, **kw)
        _same(y, yc)
        for a, b in zip(fastbn.backward(dy, cache), fastbn.backward(dyc, cachec)):
            _same(a, b)
        yr, cr = reference.forward(x.astype(np.float64), **kw)
        np.testing.assert_allclose(y, yr, rtol=1e-4, atol=1e-4)


def test_no_copy_is_made():
    rng = np.random.default_rng(2)
    base = rng.standard_normal((4096, 1024)).astype(np.float32)
    dbase = rng.standard_normal((4096, 1024)).astype(np.float32)
    x, dy = base[:, 128:896], dbase[:, 128:896]
    fastbn.forward(x)  # warm up (plans, pools)
    tracemalloc.start()
    try:
        y, cache = fastbn.forward(x)
        _, peak_f = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        dx, _, _ = fastbn.backward(dy, cache)
        _, peak_b = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    # y (or dx) itself, x.nbytes, is the only array of the data's size
    assert peak_f < 1.2 * x.nbytes, peak_f
    assert peak_b < 1.2 * x.nbytes + y.nbytes, peak_b


def test_bad_strides_refused():
    from fastbn import _kernels
    x = np.zeros((4, 6, 5), np.float32)
    y = np.empty((4, 6, 5), np.float32)
    v = np.zeros(6)
    with pytest.raises(ValueError, match="x: each"):  # channels not contiguous
        _kernels.affine(np.zeros((4, 12, 5), np.float32)[:, ::2], y, v, v, v, False, 1)
    with pytest.raises(ValueError, match="dy"):
        _kernels.backward_reduce(np.zeros((8, 6, 5), np.float32)[::2], x, v, None, None, False,
                                 v.copy(), v.copy(), 1)
