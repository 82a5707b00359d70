"""Small maps (runs under 64 bytes: 2x2, 3x3 float32) walk their elementwise passes as
the columns shape: rows of C * inner values, each channel's coefficients repeated over
its inner positions (src_c/kern_coefs.h's fbn_spread_typed_<sfx>), where such an
array takes at most FBN_SPREAD_BYTES; above it, run by run. Both walks compute the
same values alike: channels [0, C0) of an array too wide to spread must get the bits
they get in the narrow array of those channels alone, for every op that rewrites the
data (inference, the training forward with its epilogues, the backward and
backward_elemt), every dtype, 1 and 2 threads. And they must be right: against the
reference."""
import numpy as np
import pytest

import fastbn
from fastbn import reference
from conftest import (BLOCK_WORK_C, assert_bitwise_equal, assert_close, data_dtypes,
                      peak_memory_test, run_peak_probe, RTOL)

SPREAD_BYTES = 65536  # src_c/tuning.h FBN_SPREAD_BYTES
COLS_WIDTH = 32768  # src_c/tuning.h FBN_COLS_WIDTH

# (rows, map): 6 rows (a group of 4 and a rest), maps of 2, 4 and 9 values; narrow
# channel counts: repeated over a period (5), spans (300), long rows (1500);
# and 4x4: float32's 64-byte runs are not spread, 16-bit data's are for dx only
CASES = [(6, (2, 2), 5), (6, (2, 2), 1500), (5, (3, 3), 300), (7, (1, 2), 300), (5, (4, 4), 40)]
EPILOGUES = [dict(), dict(activation="relu"), dict(activation="leaky_relu", negative_slope=0.2),
             dict(activation="relu", residual=True)]


def _data(rows, hw, C, dtype, seed):
    rng = np.random.default_rng(seed)
    shape = (rows, C) + hw
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3, (1, C, 1, 1)) + \
        rng.uniform(-20, 20, (1, C, 1, 1))
    dy = rng.standard_normal(shape) * rng.uniform(0.2, 2, (1, C, 1, 1))
    z = rng.standard_normal(shape)
    gamma, beta = rng.uniform(0.5, 1.5, C), rng.normal(0, 1, C)
    return x.astype(dtype), dy.astype(dtype), z.astype(dtype), gamma, beta


def _ops(x, dy, z, gamma, beta, epi):
    """Every output of the ops that rewrite x, per channel along axis 1."""
    kw = dict(epi)
    if kw.pop("residual", False):
        kw["residual"] = z
    y, cache = fastbn.forward(x, gamma, beta, **kw)
    grads = fastbn.backward(dy, cache)
    rv = cache.var.astype(np.float64)
    y_inf, eval_cache = fastbn.forward(x, gamma, beta, training=False, running_mean=cache.mean,
                                       running_var=rv, **kw)
    eval_grads = fastbn.backward(dy, eval_cache)
    act = kw.get("activation")
    y_norm = fastbn.normalize(x, cache.mean, cache.invstd, gamma, beta,
                              activation=act if act != "leaky_relu" else None)
    sum_dy, sum_dy_xhat = fastbn.backward_reduce(dy, x, cache.mean, cache.invstd)
    count = x.size // x.shape[1]
    dx_e = fastbn.backward_elemt(dy, x, cache.mean, cache.invstd, gamma, sum_dy, sum_dy_xhat,
                                 count)
    return [y, cache.mean, cache.var, *grads, y_inf, *eval_grads, y_norm, dx_e]


@pytest.mark.parametrize("epi", EPILOGUES, ids=lambda e: "-".join(f"{k}={v}" for k, v in
                                                                   e.items()) or "plain")
@pytest.mark.parametrize("dtype", data_dtypes(), ids=lambda d: d.name)
@pytest.mark.parametrize("rows,hw,C0", CASES)
def test_a_spread_walk_gets_the_bits_of_the_run_walk(rows, hw, C0, dtype, epi, restore_threads):
    inner = hw[0] * hw[1]
    wide = SPREAD_BYTES // 4 // inner + 3  # too wide to spread (float32 coefficients)
    x, dy, z, gamma, beta = _data(rows, hw, wide, dtype, seed=inner + C0)

    def narrow(a):
        return np.ascontiguousarray(a[:, :C0])
    for threads in (1, 2):
        fastbn.set_num_threads(threads)
        got = _ops(narrow(x), narrow(dy), narrow(z), gamma[:C0], beta[:C0], epi)
        want = _ops(x, dy, z, gamma, beta, epi)
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want)):
            part = narrow(w) if w.ndim == x.ndim else w[:C0]
            assert_bitwise_equal(g, part, f"output {i}, {threads} threads")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("rows,hw,C0", CASES)
def test_small_maps_agree_with_the_reference(rows, hw, C0, dtype):
    x, dy, z, gamma, beta = _data(rows, hw, C0, dtype, seed=3)
    rtol = RTOL[np.dtype(dtype)]
    y, cache = fastbn.forward(x, gamma, beta, activation="relu", residual=z)
    ry, rcache = reference.forward(x, gamma, beta, activation="relu", residual=z)
    assert_close(y, ry, rtol)
    for got, want in zip(fastbn.backward(dy, cache), reference.backward(dy, rcache)):
        assert_close(got, want, rtol)
    y_inf = fastbn.normalize(x, cache.mean, cache.invstd, gamma, beta, activation="relu")
    r_inf = reference.normalize(x, cache.mean, cache.invstd, gamma, beta, activation="relu")
    assert_close(y_inf, r_inf, rtol)


# Small maps' reductions go as the columns of (outer, C * inner), a column per position
# of a channel, folded per channel (src_c/kern_stats.h's fbn_stats_columns_<sfx>, maps of
# at most 32 values; the backward's sums, kern_backward.h's fbn_reduce_columns_<sfx>, of
# at most 16). 33 values: runs, beside them. 70 rows: a flush of 64 rows and a rest.
COLUMN_MAPS = [(1, 2), (2, 2), (3, 3), (4, 4), (4, 6), (4, 8), (1, 33)]


def _far_map(hw, dtype, C=5, rows=70, offset=1e6):
    """Data far from the origin whose positions each have their own offset (so a
    channel's columns have different means: the fold's between-columns term)."""
    rng = np.random.default_rng(sum(hw) + np.dtype(dtype).itemsize)
    shape = (rows, C) + hw
    x = (offset + rng.uniform(-4, 4, (1, C) + hw) +
         rng.standard_normal(shape) * rng.uniform(0.5, 2, (1, C, 1, 1)))
    dy = rng.standard_normal(shape) + rng.uniform(-1, 1, (1, C) + hw)
    return x.astype(dtype), dy.astype(dtype)


def _exact(values):
    """The exact mean and m2 of float64 values (fractions)."""
    from fractions import Fraction
    f = [Fraction(v) for v in values]
    mu = sum(f) / len(f)
    return mu, sum((v - mu) ** 2 for v in f)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("hw", COLUMN_MAPS, ids=lambda hw: "x".join(map(str, hw)))
def test_small_map_statistics_are_exact_far_from_the_origin(hw, dtype, restore_threads):
    x, _ = _far_map(hw, dtype)
    C = x.shape[1]
    exact = [_exact(x[:, c].astype(np.float64).ravel()) for c in range(C)]
    for threads in (1, 2):
        fastbn.set_num_threads(threads)
        count, mean, m2 = fastbn.batch_stats(x)
        y, cache = fastbn.forward(x, eps=1e-300)
        for c, (mu, m2_exact) in enumerate(exact):
            want = float(mu)
            assert abs(mean[c] - want) <= np.spacing(want), (c, threads)
            assert abs(m2[c] - float(m2_exact)) <= 1e-13 * float(m2_exact), (c, threads)
            assert cache.mean[c] == mean[c]  # the forward's statistics are batch_stats'
            assert abs(cache.var[c] - m2[c] / count) <= 1e-15 * cache.var[c]
            if dtype == np.float64:  # y reads the mean's low part too: 1e6 * 1e-16 matters
                from fractions import Fraction
                std = np.sqrt(float(m2_exact) / count)
                yc = [float((Fraction(v) - mu) / Fraction(std)) for v in x[:, c].ravel()]
                np.testing.assert_allclose(y[:, c].ravel(), yc, rtol=0, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("hw", COLUMN_MAPS, ids=lambda hw: "x".join(map(str, hw)))
def test_small_map_backward_sums_are_exact(hw, dtype, restore_threads):
    from fractions import Fraction
    x, dy = _far_map(hw, dtype)
    C = x.shape[1]
    mean = np.array([float(_exact(x[:, c].astype(np.float64).ravel())[0]) for c in range(C)])
    mean += np.linspace(-0.5, 0.5, C)  # a shift that is not the mean
    invstd = np.linspace(0.5, 2.0, C)
    for threads in (1, 2):
        fastbn.set_num_threads(threads)
        sum_dy, sum_dy_xhat = fastbn.backward_reduce(dy, x, mean, invstd)
        for c in range(C):
            d, v = dy[:, c].astype(np.float64).ravel(), x[:, c].astype(np.float64).ravel()
            terms = [Fraction(a) * (Fraction(b) - Fraction(mean[c])) for a, b in zip(d, v)]
            want = float(sum(terms) * Fraction(invstd[c]))
            size = float(sum(abs(t) for t in terms)) * invstd[c]
            assert abs(sum_dy[c] - float(sum(Fraction(a) for a in d))) <= 1e-14 * np.abs(d).sum()
            assert abs(sum_dy_xhat[c] - want) <= 1e-14 * size, (c, threads)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("hw", [(2, 2), (4, 4), (1, 33)], ids=lambda hw: "x".join(map(str, hw)))
def test_small_map_backward_with_relu_agrees_with_the_reference(hw, dtype, restore_threads):
    x, dy = _far_map(hw, dtype, offset=3.0)  # ReLU masks off part of each channel
    C = x.shape[1]
    rng = np.random.default_rng(7)
    gamma, beta = rng.uniform(0.5, 1.5, C), rng.normal(0, 0.5, C)
    for threads in (1, 2):
        fastbn.set_num_threads(threads)
        y, cache = fastbn.forward(x, gamma, beta, activation="relu")
        ry, rcache = reference.forward(x, gamma, beta, activation="relu")
        assert_close(y, ry, RTOL[np.dtype(dtype)])
        for got, want in zip(fastbn.backward(dy, cache), reference.backward(dy, rcache)):
            assert_close(got, want, RTOL[np.dtype(dtype)])
        sums = fastbn.backward_reduce(dy, x, cache.mean, cache.invstd, gamma=gamma, beta=beta,
                                      activation="relu")
        rsums = reference.backward_reduce(dy, x, cache.mean, cache.invstd, gamma=gamma,
                                          beta=beta, activation="relu")
        for got, want in zip(sums, rsums):
            assert_close(got, want, 1e-12)


@pytest.mark.parametrize("value", [np.inf, -np.inf, np.nan], ids=str)
@pytest.mark.parametrize("hw", [(2, 2), (4, 8)], ids=lambda hw: "x".join(map(str, hw)))
def test_a_small_maps_special_value_stays_in_its_channel(hw, value, restore_threads):
    x, _ = _far_map(hw, np.float64, offset=0.0)
    bad = x.copy()
    bad[3, 1, 0, -1] = value
    for threads in (1, 2):
        fastbn.set_num_threads(threads)
        count, mean, m2 = fastbn.batch_stats(x)
        _, bmean, bm2 = fastbn.batch_stats(bad)
        with np.errstate(invalid="ignore"):
            _, rmean, rm2 = reference.batch_stats(bad)
        keep = np.arange(x.shape[1]) != 1
        assert_bitwise_equal(bmean[keep], mean[keep])
        assert_bitwise_equal(bm2[keep], m2[keep])
        # as every layout's: m2 NaN, and the mean NaN (not the reference's +-inf: the
        # sums' second, centred pass subtracts the infinite first mean; docs/numerics.md)
        assert np.isnan(bm2[1]) and np.isnan(rm2[1]) and np.isnan(bmean[1])


@pytest.mark.parametrize("dtype", data_dtypes(), ids=lambda d: d.name)
@pytest.mark.parametrize("shape", [(300, 64, 2, 2), (40, 256, 4, 4), (9, 1024, 3, 3),
                                   (4, 4096, 2, 2), (130, 32, 1, 33)],
                         ids=lambda s: "x".join(map(str, s)))
def test_threaded_small_maps_give_the_one_thread_bits(shape, dtype, restore_threads):
    """Arrays large enough for threads (65536 values and more) and for several column
    tiles: the same bits on 1 and 2 threads, the forward's statistics batch_stats' (also
    with 4096 channels of 2x2 maps, whose statistics go as columns: 16384 values wide,
    at most FBN_COLS_WIDTH; the block-work forward of small maps is tested below), and
    the reference's values."""
    rng = np.random.default_rng(shape[0])
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, shape[1]), rng.normal(0, 1, shape[1])
    outs = []
    for threads in (1, 2):
        fastbn.set_num_threads(threads)
        y, cache = fastbn.forward(x, gamma, beta, activation="relu")
        outs.append([*fastbn.batch_stats(x)[1:], y, cache.mean, cache.var,
                     *fastbn.backward(dy, cache),
                     *fastbn.backward_reduce(dy, x, cache.mean, cache.invstd)])
    for i, (a, b) in enumerate(zip(*outs)):
        assert_bitwise_equal(a, b, f"output {i}")
    assert_bitwise_equal(outs[0][3], outs[0][0], "the forward's mean")
    ry, rcache = reference.forward(x, gamma, beta, activation="relu")
    rtol = RTOL.get(np.dtype(dtype), 1e-2)
    if np.dtype(dtype).itemsize == 2:
        return  # 16-bit data: tests/test_half*.py hold their accuracy; bits above
    assert_close(outs[0][2], ry, rtol)
    for got, want in zip(outs[0][5:8], reference.backward(dy, rcache)):
        assert_close(got, want, rtol)


# ---------------------------------------------------------------- block work (issue 13)
# A training forward over FBN_BLOCK_WORK_C channels or more whose tiles hold whole
# channels keeps its work in per-thread block arrays (fbn_fwd_block_tile_<sfx>,
# src_c/kern_fused.h), with no C-sized work; it stays fused even where runs are
# shorter than FBN_FUSE_RUN (small maps), since there are no C-sized arrays for an
# unfused pass to use. Small maps reach it only when too wide for their statistics
# to go as columns (C * inner > FBN_COLS_WIDTH): below that width the forward takes
# the C-sized arrays whatever C is.


@pytest.mark.parametrize("dtype", data_dtypes(), ids=lambda d: d.name)
@pytest.mark.parametrize("inner", [9, 20])
@pytest.mark.parametrize("epi", [dict(), dict(activation="relu"),
                                 dict(activation="leaky_relu", negative_slope=0.2, residual=True)],
                         ids=["plain", "relu", "leaky-residual"])
def test_block_work_forward_of_small_maps_gets_the_bits_of_the_unfused_one(dtype, inner, epi,
                                                                          restore_threads):
    """Channels [0, C0) of a forward of short runs over more than FBN_BLOCK_WORK_C
    channels (block work, fused) get the bits of the forward of those channels alone,
    C0 below it (C-sized work, unfused): both wider than FBN_COLS_WIDTH, so that
    neither takes its statistics as columns (which give other bits)."""
    wide, C0 = BLOCK_WORK_C + 4, BLOCK_WORK_C - 96
    assert C0 * inner > COLS_WIDTH and inner * np.dtype(dtype).itemsize < 1024  # FBN_FUSE_RUN
    rng = np.random.default_rng(inner)
    x = (rng.standard_normal((16, wide, inner)) * 2 +
         rng.normal(0, 3, (1, wide, 1))).astype(dtype)
    z = rng.standard_normal(x.shape).astype(dtype)
    g, b = rng.uniform(0.5, 2, wide), rng.normal(0, 1, wide)
    kw = dict(epi)
    res = kw.pop("residual", False)

    def forward(n):
        narrow = (lambda a: np.ascontiguousarray(a[:, :n])) if n < wide else (lambda a: a)
        y, cache = fastbn.forward(narrow(x), g[:n], b[:n], residual=narrow(z) if res else None,
                                  **kw)
        return [y[:, :C0]] + [getattr(cache, f)[:C0] for f in ("mean", "mean_lo", "var",
                                                                 "invstd")]

    for threads in (1, 2):
        fastbn.set_num_threads(threads)
        for i, (a, w) in enumerate(zip(forward(wide), forward(C0))):
            assert_bitwise_equal(np.ascontiguousarray(a), w, f"output {i}, {threads} threads")


BLOCK_WORK_PROBE = """
    dtype, threads, C = np.dtype(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
    fastbn.set_num_threads(threads)
    x, y = np.empty((2, C, 2), dtype), np.empty((2, C, 2), dtype)
    g, b = np.empty(C, np.float32), np.empty(C, np.float32)
    rng, step = np.random.default_rng(0), 1 << 16
    for i in range(0, C, step):  # no large temporaries: neither the peak nor freed memory
        n = min(step, C - i)     # that the call's allocations could reuse
        x[:, i:i + n] = rng.standard_normal((2, n, 2), dtype=np.float32)
        g[i:i + n], b[i:i + n] = rng.uniform(0.5, 2, n), rng.normal(0, 1, n)
    y.fill(0)  # touched: y's pages are resident before the call
    fastbn.forward(x[:, :8].copy(), g[:8], b[:8])  # import-time and first-call allocations
    growth, (out, cache) = peak_growth(lambda: fastbn.forward(x, g, b, out=y))
    assert out is y
    print(json.dumps({"growth": growth, "cache_nbytes": sum(
        getattr(cache, f).nbytes for f in ("mean", "mean_lo", "var", "invstd"))}))
"""


@peak_memory_test
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_block_work_forward_of_small_maps_takes_no_channel_sized_work(dtype, threads):
    """Issue 13's memory, for short runs: a training forward of (2, C, 2) (runs of 2
    values, far under FBN_FUSE_RUN; C * 2 wider than FBN_COLS_WIDTH) over 2^20
    channels, y preallocated (out=) and touched, may grow the process's peak RSS by
    the cache's four float64 arrays (32 bytes a channel, 32 MiB) and 16 MiB of slack,
    not by work arrays of C doubles: the unfused pass's C-sized work (pivot, shift,
    scale, bias, m2, var, gamma and beta as double, parts: 8 doubles a channel and
    more, 64 MiB or more) is what the per-thread block arrays replace (kern_fused.h,
    fbn_block_doubles_<sfx>). The results' bits are the same either way (the test
    above): only the peak memory shows which ran. Work memory comes from malloc
    (src_c/work.c), which tracemalloc does not see: hence VmHWM, in a fresh process.
    The 16-bit rule that sends forwards unfused (runs of 2 KB and more) does not apply
    to short runs, nor to block work."""
    C = 1 << 20
    r = run_peak_probe(BLOCK_WORK_PROBE, dtype, threads, C)
    assert r["cache_nbytes"] == 32 * C, r
    # the probe sees the call's allocations (the cache's arrays: written, so resident)
    assert r["growth"] >= r["cache_nbytes"] - (4 << 20), r
    bound = r["cache_nbytes"] + (16 << 20)
    assert r["growth"] <= bound, (r, bound)
