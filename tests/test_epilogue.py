"""The C epilogue of issue 20 (src_c/fastbn.h fbn_epilogue): the leaky ReLU and the
residual add fused into the forward's output pass, inference and the backward (mask
recomputed from the saved statistics; dresidual written by the reduction pass), and
backward(need_dx=False) as the reduction alone. Compiled vs reference at sizes that
reach every kernel path (fused channel blocks, several segments, row tiles, threads,
streamed output), bitwise equal for 1 and 2 threads, and the training forward's
memory at (2, C) with large C (issue 13).

The formulas and finite differences of these keywords are in test_features.py.
"""
import numpy as np
import pytest

import fastbn
import fastbn.reference as R
from conftest import BLOCK_WORK_C, assert_close, peak_memory_test, run_peak_probe

pytestmark = pytest.mark.skipif(fastbn.backend != "c", reason="the compiled kernels")

K = fastbn._impl

# (shape, axis): columns shape with few and many rows (channel blocks, whole-row
# segments), rows shape (one segment, several), a threaded size and a streamed one
SHAPES = [((6, 5), 1), ((300, 7), 1), ((2, 3000), 1), ((8, 3, 17), 1), ((4, 6, 9000), 1),
          ((64, 64, 32), 1), ((16, 12, 12, 8), -1), ((40, 8, 7000), 1)]
EPILOGUES = [dict(activation="leaky_relu", negative_slope=0.1),
             dict(activation="leaky_relu", negative_slope=-0.5, residual="z"),
             dict(activation="relu", residual="z"), dict(residual="z")]


def data(shape, axis, dtype, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[axis]
    vshape = [1] * len(shape)
    vshape[axis] = C
    x = (rng.standard_normal(shape) * 2 + rng.normal(0, 3, C).reshape(vshape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    z = rng.standard_normal(shape).astype(dtype)
    gamma = rng.uniform(0.5, 2.0, C).astype(dtype) * rng.choice([-1, 1], C).astype(dtype)
    beta = rng.normal(0, 1, C).astype(dtype)
    return x, dy, z, gamma, beta


def kwargs(epi, z):
    kw = dict(epi)
    if kw.get("residual") == "z":
        kw["residual"] = z
    return kw


def run(impl, x, dy, z, gamma, beta, epi, training=True, need_dx=True):
    rm, rv = np.zeros(x.shape[1 if x.ndim else 0]), np.ones(x.shape[1])
    C = gamma.shape[0]
    rm, rv = np.linspace(-1, 1, C), np.linspace(0.5, 2, C)
    y, cache = impl.forward(x, gamma, beta, axis=AXIS[0], training=training, running_mean=rm,
                            running_var=rv, **kwargs(epi, z))
    return (y, rm, rv) + tuple(impl.backward(dy, cache, need_dx=need_dx))


AXIS = [1]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", SHAPES)
@pytest.mark.usefixtures("streaming_l3")
@pytest.mark.parametrize("epi", EPILOGUES, ids=lambda e: "-".join(f"{k}={v}" for k, v in
                                                                   e.items()))
@pytest.mark.parametrize("training", [True, False])
def test_compiled_matches_reference(shape, axis, dtype, epi, training):
    AXIS[0] = axis
    args = data(shape, axis, dtype)
    got = run(K, *args, epi, training)
    want = run(R, *args, epi, training)
    rtol = 1e-4 if dtype == np.float32 else 1e-10
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, rtol, f"output {i}")
    # need_dx=False: the same dgamma, dbeta (and dresidual), no dx
    part = run(K, *args, epi, training, need_dx=False)
    assert part[3] is None
    for g, w in zip(part[4:], got[4:]):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("shape,axis", [((300, 7), 1), ((4, 6, 9000), 1), ((64, 64, 32), 1),
                                        ((2, 300000), 1)])
@pytest.mark.parametrize("epi", EPILOGUES[:2], ids=["leaky", "leaky-residual"])
def test_bitwise_independent_of_threads(shape, axis, epi):
    AXIS[0] = axis
    args = data(shape, axis, np.float32, seed=1)
    before = fastbn.get_num_threads()
    try:
        fastbn.set_num_threads(1)
        one = run(K, *args, epi)
        fastbn.set_num_threads(2)
        two = run(K, *args, epi)
    finally:
        fastbn.set_num_threads(before)
    for a, b in zip(one, two):
        np.testing.assert_array_equal(a, b)


def test_forward_bitwise_matches_bn_then_epilogue():
    """y is the plain forward's value then + z then the activation, in the data's type."""
    x, dy, z, gamma, beta = data((32, 16, 50), 1, np.float64, seed=2)
    plain, _ = K.forward(x, gamma, beta)
    y, _ = K.forward(x, gamma, beta, residual=z)
    np.testing.assert_array_equal(y, plain + z)
    y, _ = K.forward(x, gamma, beta, activation="leaky_relu", negative_slope=0.2)
    np.testing.assert_array_equal(y, np.where(plain > 0, plain, plain * 0.2))


def test_general_path_masks_dy_in_c():
    """Several axes, mask, ghost batches with a residual and leaky ReLU: the masked dy of
    the C reduction per group is the reference's."""
    rng = np.random.default_rng(5)
    x, dy, z = (rng.standard_normal((6, 3, 4, 5)) for _ in range(3))
    mask = rng.random((6, 1, 1, 5)) < 0.8
    mask[:, :, :, 0] = True
    kw = dict(axis=(1, 2), activation="leaky_relu", negative_slope=0.3, residual=z, mask=mask,
              virtual_batch_size=4)
    g, b = rng.uniform(0.5, 2, (3, 4)), rng.normal(0, 1, (3, 4))
    outs = []
    for impl in (K, R):
        y, cache = impl.forward(x, g, b, **kw)
        outs.append((y,) + tuple(impl.backward(dy, cache)))
    for a, w in zip(*outs):
        assert_close(a, w, 1e-10)


# ---------------------------------------------------------------- memory (issue 13)

MEMORY_PROBE = """
    C, running = int(sys.argv[1]), sys.argv[2] == "1"
    x, rng = np.empty((2, C), np.float32), np.random.default_rng(0)
    for i in range(0, C, 1 << 18):  # no temporaries of x's size: the peak stays put
        x[:, i:i + (1 << 18)] = rng.standard_normal((2, min(1 << 18, C - i)), dtype=np.float32)
    g, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    rm, rv = (np.full(C, 0.0, np.float32), np.ones(C, np.float32)) if running else (None, None)
    small = np.ones((2, 8), np.float32)
    fastbn.forward(small, g[:8], b[:8])  # import-time and first-call allocations
    growth, _ = peak_growth(lambda: fastbn.forward(x, g, b, running_mean=rm, running_var=rv))
    print(json.dumps({"growth": growth, "x_nbytes": x.nbytes}))
"""


def peak_growth(C, running):
    """Peak RSS growth of one training forward of (2, C) float32, in a fresh process."""
    return run_peak_probe(MEMORY_PROBE, C, "1" if running else "0",
                          env=dict(FASTBN_NUM_THREADS="2"))


@peak_memory_test
@pytest.mark.parametrize("running", [False, True])
def test_training_forward_memory_with_few_rows_many_channels(running):
    """Issue 13: at (2, 50M) float32 a training forward grew the peak by 4.8 GB; it must
    grow by at most y (x.nbytes) plus a small multiple of C float32 values. At (2, 4M)
    (the same ratio of rows to channels, 32 MB of x): y, the cache's mean, mean_lo and
    invstd (6 float32 values a channel), var for the running statistics (2 more), and
    not the ~120 bytes a channel of work buffers the kernel and front end took before."""
    C = 4_000_000
    r = peak_growth(C, running)
    bound = r["x_nbytes"] + 8 * C * 4 + (4 << 20)  # 8 float32 values a channel, 4 MB slack
    assert r["growth"] <= bound, (r, bound)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act,slope,res,want_var", [(0, 0.0, False, True), (1, 0.0, False, False),
                                                    (2, 0.1, True, True)])
@pytest.mark.parametrize("inner", [1, 9])
def test_training_forward_block_work_gives_the_same_bits(dtype, act, slope, res, want_var, inner):
    """A training forward whose tiles hold whole channels keeps its work per thread, a
    channel block's, from FBN_BLOCK_WORK_C channels (issue 13's memory), and in
    C-sized arrays below (cheaper per tile). Either gives the same bits: channels
    [0, C0) of a forward over more than FBN_BLOCK_WORK_C channels are those of the
    forward of channels [0, C0) alone, C0 below it (16 rows: threaded, one segment).
    With runs of 9 values (shorter than FBN_FUSE_RUN; both forwards wider than
    FBN_COLS_WIDTH values, so neither takes its statistics as columns), the wide forward
    is still fused (its block work has no C-sized arrays to go unfused with) and the
    narrow one is not: fused and unfused give the same bits."""
    rng = np.random.default_rng(7)
    wide, C0 = BLOCK_WORK_C + 4, BLOCK_WORK_C - 96
    x = (rng.standard_normal((16, wide, inner)) * 2 +
         rng.normal(0, 3, (1, wide, 1))).astype(dtype)
    z = rng.standard_normal(x.shape).astype(dtype) if res else None
    g, b = rng.uniform(0.5, 2, wide), rng.normal(0, 1, wide)

    def forward(n, threads):
        xs = np.ascontiguousarray(x[:, :n])
        zs = None if z is None else np.ascontiguousarray(z[:, :n])
        y, outs = np.empty_like(xs), [np.full(n, np.nan) for _ in range(4)]
        var = outs[2] if want_var else None
        fastbn._kernels.forward_train_ex(xs, y, g[:n].copy(), b[:n].copy(), 1e-5, act, slope, zs,
                                         outs[0], outs[1], var, outs[3], threads)
        return [y[:, :C0]] + [o[:C0] for o in (outs if want_var else outs[:2] + outs[3:])]

    for threads in (1, 2):
        for a, w in zip(forward(wide, threads), forward(C0, threads)):
            np.testing.assert_array_equal(a, w)


# ---------------------------------------------------------------- half precision (issue 19)

@pytest.mark.parametrize("half", ["float16", "bfloat16"])
@pytest.mark.parametrize("shape,axis", [((300, 7), 1), ((2, 3000), 1), ((4, 6, 9000), 1),
                                        ((64, 64, 32), 1), ((16, 12, 12, 8), -1)])
@pytest.mark.parametrize("epi", EPILOGUES, ids=lambda e: "-".join(f"{k}={v}" for k, v in
                                                                   e.items()))
@pytest.mark.parametrize("training", [True, False])
def test_half_precision_is_float32_rounded_once(half, shape, axis, epi, training):
    """float16 and bfloat16 data take the same fused epilogue, computed in float: y,
    dresidual and dx are the float32 kernels' results on the same values, rounded once
    to the half type (bitwise; dx of a leaky ReLU with a residual reads the stored,
    rounded dresidual: within one half ulp of it), and the statistics and sums match."""
    ml_dtypes = pytest.importorskip("ml_dtypes")
    dtype = np.dtype(np.float16 if half == "float16" else ml_dtypes.bfloat16)
    AXIS[0] = axis
    x, dy, z, gamma, beta = (a.astype(dtype) for a in data(shape, axis, np.float32, seed=3))
    gamma, beta = gamma.astype(np.float32), beta.astype(np.float32)
    got = run(K, x, dy, z, gamma, beta, epi, training)
    f32 = run(K, *(a.astype(np.float32) for a in (x, dy, z)), gamma, beta, epi, training)
    names = ["y", "running_mean", "running_var", "dx", "dgamma", "dbeta", "dresidual"]
    for name, g, w in zip(names, got, f32):
        if name in ("y", "dx", "dresidual"):
            assert g.dtype == dtype, name
            want = w.astype(dtype)
            if name == "dx" and epi.get("activation") == "leaky_relu" and "residual" in epi:
                # dres's rounding (half an ulp of dy * slope) times k_dy = gamma * invstd,
                # and dx's own rounding
                bits = 10 if dtype == np.float16 else 7
                k_dy = np.abs(gamma).max() * 4  # invstd < 1 here (x: std 2)
                err = np.abs(g.astype(np.float64) - want.astype(np.float64))
                bound = (np.abs(want.astype(np.float64)) + k_dy * np.abs(dy.astype(np.float64))
                         ) * 2.0 ** -bits
                assert np.all(err <= bound), name
            else:
                np.testing.assert_array_equal(g.view(np.uint16), want.view(np.uint16), name)
        else:
            np.testing.assert_allclose(g, w, rtol=1e-6, atol=1e-7, err_msg=name)
    # and the reference's elementwise outputs agree within the half type's precision (its
    # half-precision sums, dgamma and dbeta, are less accurate than the kernels')
    want = run(R, x, dy, z, gamma, beta, epi, training)
    for name, g, w in zip(names, got, want):
        if name not in ("y", "dresidual"):
            continue
        scale = np.abs(w.astype(np.float64)).max() + 1
        tol = (4e-3 if dtype == np.float16 else 3e-2) * scale
        np.testing.assert_allclose(g.astype(np.float64), w.astype(np.float64), atol=tol,
                                   err_msg=name)
