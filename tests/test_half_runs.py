"""16-bit data's outputs are the float32 path's, rounded once (issue 19), at every run
length of the rows shape.

The kernels compute y and dx of 16-bit data in float, with the coefficients float32
data holding the same values would get (their statistics and sums are bitwise the
same: tests/test_half_sums.py), and round each value once. So forward, inference and
backward of 16-bit data must equal the float32 results on the widened data rounded to
the 16-bit dtype, bit for bit, whichever form computes them: one value at a time (runs
shorter than FBN_HALF_SCALAR_RUN, src_c/tuning.h), blocks, or registers. Run lengths
(inner) cover each side of those limits; the ops cover the plain y, ReLU, leaky ReLU
with a residual, and dx. The leaky ReLU's dx over a residual reads dy and the residual
itself (dy * slope is not a half value: from dresidual it was rounded twice), on every
walk: rows, channel blocks and row groups, fused or not, streamed or not.
"""
import numpy as np
import pytest

import fastbn

from conftest import assert_bitwise_equal, data_dtypes

pytestmark = pytest.mark.skipif(fastbn.backend != "c", reason="the compiled kernels' forms")

HALF = [d for d in data_dtypes() if np.dtype(d).itemsize == 2]
INNER = [1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 33]


def rounded(a, dtype):
    return None if a is None else a.astype(dtype)


@pytest.mark.parametrize("inner", INNER)
@pytest.mark.parametrize("dtype", HALF)
def test_outputs_are_float32_rounded(dtype, inner):
    rng = np.random.default_rng(inner)
    shape = (37, 5, inner)
    x = (3.0 + rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    z = rng.standard_normal(shape).astype(dtype)
    gamma = rng.uniform(0.5, 2, 5).astype(np.float32) * np.float32(-1) ** np.arange(5)
    beta = rng.standard_normal(5).astype(np.float32)
    x32, dy32, z32 = (a.astype(np.float32) for a in (x, dy, z))
    cases = [dict(), dict(activation="relu"),
             dict(activation="leaky_relu", negative_slope=0.1, residual=z)]
    for kw in cases:
        kw32 = {**kw, "residual": z32} if "residual" in kw else kw
        y, cache = fastbn.forward(x, gamma, beta, **kw)
        y32, cache32 = fastbn.forward(x32, gamma, beta, **kw32)
        assert_bitwise_equal(y, rounded(y32, dtype), f"y {kw.get('activation')}")
        grads = fastbn.backward(dy, cache)
        grads32 = fastbn.backward(dy32, cache32)
        if "residual" in kw:  # dresidual: dy through the activation, rounded once
            assert_bitwise_equal(grads[3], rounded(grads32[3], dtype), "dresidual")
        assert_bitwise_equal(grads[0], rounded(grads32[0], dtype), f"dx {kw.get('activation')}")
        rm, rv = cache32.mean.astype(np.float32), (1 / cache32.invstd ** 2).astype(np.float32)
        yi, _ = fastbn.forward(x, gamma, beta, training=False, running_mean=rm,
                               running_var=rv, **kw)
        yi32, _ = fastbn.forward(x32, gamma, beta, training=False, running_mean=rm,
                                 running_var=rv, **kw32)
        assert_bitwise_equal(yi, rounded(yi32, dtype), f"inference {kw.get('activation')}")


# layouts whose dx takes each walk: runs of channel blocks (NCHW), row groups of the
# columns shape (NHWC, (N, C)), and with small caches the unfused tiling and streamed
# stores (conftest.streaming_l3's mechanism)
LAYOUTS = {"nchw": ((4, 3, 64, 64), 1), "nhwc": ((8, 12, 12, 24), -1), "nc": ((700, 40), 1)}


@pytest.mark.parametrize("caches", ["detected", "small"])
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("dtype", HALF)
def test_leaky_residual_dx_is_float32_rounded(dtype, layout, threads, caches,
                                              restore_threads):
    import fastbn._kernels as kernels
    shape, axis = LAYOUTS[layout]
    rng = np.random.default_rng(len(shape) + threads)
    C = shape[axis]
    x = (1.0 + 2 * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    z = rng.standard_normal(shape).astype(dtype)
    gamma = rng.uniform(0.5, 2, C).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    fastbn.set_num_threads(threads)
    if caches == "small":  # L2 64 KB, L3 64 KB: tiles of part channels, outputs streamed
        kernels._set_cache_sizes(0, 64 << 10, 64 << 10)
    try:
        for training in (True, False):
            kw = dict(axis=axis, activation="leaky_relu", negative_slope=0.07,
                      training=training)
            if not training:
                kw.update(running_mean=np.zeros(C, np.float32),
                          running_var=np.full(C, 2.0, np.float32))
            _, cache = fastbn.forward(x, gamma, beta, residual=z, **kw)
            _, cache32 = fastbn.forward(x.astype(np.float32), gamma, beta,
                                        residual=z.astype(np.float32), **kw)
            dx, _, _, dz = fastbn.backward(dy, cache)
            dx32, _, _, dz32 = fastbn.backward(dy.astype(np.float32), cache32)
            assert_bitwise_equal(dz, rounded(dz32, dtype), f"dresidual training={training}")
            assert_bitwise_equal(dx, rounded(dx32, dtype), f"dx training={training}")
    finally:
        kernels._set_cache_sizes(0, 0, 0)


# the columns shape's y over channel counts whose coefficients repeat within up to 4
# register steps (held in registers: src_c/kern_half_y.h, fbn_y_held_<sfx>) and past
# them; rows leaving a partial cycle, and outputs starting at several offsets in a
# cache line (the streamed part starts at a 16-byte boundary)
HELD_C = [1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 40, 48, 64, 80]


@pytest.mark.parametrize("caches", ["detected", "small"])
@pytest.mark.parametrize("C", HELD_C)
@pytest.mark.parametrize("dtype", HALF)
def test_columns_y_is_float32_rounded(dtype, C, caches):
    import fastbn._kernels as kernels
    rng = np.random.default_rng(C)
    rows = 70001 // C + 3  # not whole cycles; small caches: x and y of 256 KB and more
    x = (2.0 + rng.standard_normal((rows, C))).astype(dtype)
    gamma = rng.uniform(0.5, 2, C).astype(np.float32) * np.float32(-1) ** np.arange(C)
    beta = rng.standard_normal(C).astype(np.float32)
    rm = rng.standard_normal(C).astype(np.float32)
    rv = rng.uniform(0.5, 2, C).astype(np.float32)
    x32 = x.astype(np.float32)
    if caches == "small":  # L2 64 KB, L3 64 KB: outputs streamed
        kernels._set_cache_sizes(0, 64 << 10, 64 << 10)
    try:
        for act in (None, "relu"):
            for offset in (0, 1, 8, 13):
                buf = np.ones(x.size + offset, dtype)  # in memory: streamed (plan.h)
                out = buf[offset:].reshape(x.shape)
                y, _ = fastbn.forward(x, gamma, beta, activation=act, out=out)
                y32, _ = fastbn.forward(x32, gamma, beta, activation=act)
                assert_bitwise_equal(y, rounded(y32, dtype), f"y {act} offset {offset}")
                yi, _ = fastbn.forward(x, gamma, beta, training=False, running_mean=rm,
                                       running_var=rv, activation=act, out=out)
                yi32, _ = fastbn.forward(x32, gamma, beta, training=False, running_mean=rm,
                                         running_var=rv, activation=act)
                assert_bitwise_equal(yi, rounded(yi32, dtype),
                                     f"inference {act} offset {offset}")
    finally:
        kernels._set_cache_sizes(0, 0, 0)
