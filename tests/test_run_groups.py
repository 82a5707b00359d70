"""Rows-shape reductions read several adjacent channels together, row by row
(src_c/kern_runs.h's fbn_sum_runs_group_<sfx>, plan.c's fbn_run_group): batch_stats,
backward_reduce, and the reductions of the training forward and the backward
(fused per channel, fused over a channel's segments, or unfused), where a
channel's runs are 2 KB or longer (FBN_GROUP_RUN). Each channel keeps its own
sums, so a channel's statistics, sums and outputs must be bitwise those it gets
alone, whatever its neighbours hold (NaN, values far from the first one, which
take a second pass), however many channels a group has (the fused passes' follow
the L3 size: overridden here), on 1 and 2 threads, and for every dtype (16-bit
data: the grouped statistics widen in blocks, a channel alone in registers)."""
import numpy as np
import pytest

import fastbn
from fastbn import reference
from conftest import assert_close, data_dtypes, RTOL

_k = pytest.importorskip("fastbn._kernels")

# (outer, C, h, w): runs of 2-16 KB, channel counts that leave a short last group,
# one-tile channels (fused forward) and channels of two segments (inner 65536
# float32 over 5 rows: 1.3 MB); 37 channels: more than the largest group of the
# reductions that read their data once (FBN_ONCE_GROUP, 32), a short one after it
SHAPES = [(3, 13, 32, 64), (6, 11, 40, 40), (2, 9, 64, 64), (5, 5, 256, 256), (2, 37, 16, 32)]
# L3 sizes: the fused forward's groups of 1 (64 KB), a few (2 MB), and 8 (1 GB)
L3S = [0, 64 << 10, 2 << 20, 1 << 30]

DTYPES = data_dtypes()


@pytest.fixture
def restore_caches():
    yield
    _k._set_cache_sizes(0, 0, 0)


def _data(shape, dtype, seed):
    rng = np.random.default_rng(seed)
    C = shape[1]
    scale = rng.uniform(0.5, 3, (1, C, 1, 1))
    offset = rng.uniform(-50, 50, (1, C, 1, 1))
    x = rng.standard_normal(shape) * scale + offset
    # channels 1 and C - 2 start far from their mean: a second, centred pass
    x[0, 1, 0, 0] += 1e3 * scale[0, 1, 0, 0]
    x[0, C - 2, 0, 0] -= 1e3 * scale[0, C - 2, 0, 0]
    return x.astype(dtype)


def _alone(fn, x, c):
    """fn on channel c alone (a contiguous copy), at 1 thread."""
    fastbn.set_num_threads(1)
    return fn(np.ascontiguousarray(x[:, c:c + 1]), c)


def _stats(x, c=None):
    count, mean, m2 = fastbn.batch_stats(x, axis=1)
    return mean, m2


def _passes(gamma, beta, dy, activation):
    """forward then backward (and backward_reduce on the forward's statistics) of x,
    or of channel c alone."""
    def run(x, c=None):
        pick = slice(None) if c is None else slice(c, c + 1)
        g, b = gamma[pick], beta[pick]
        # outputs filled with NaN: a value left unwritten cannot pass for one written
        # (fresh outputs may be memory that held the same result a call before)
        y = np.full(x.shape, np.nan, x.dtype)
        _, cache = fastbn.forward(x, g, b, axis=1, activation=activation, out=y)
        dx = np.full(x.shape, np.nan, x.dtype)
        _, dg, db = fastbn.backward(np.ascontiguousarray(dy[:, pick]), cache,
                                    out=(dx, None, None))
        sums = fastbn.backward_reduce(np.ascontiguousarray(dy[:, pick]), x, cache.mean,
                                      cache.invstd, axis=1, gamma=g, beta=b,
                                      activation=activation)
        return (y, cache.mean, cache.var, dx, dg, db) + tuple(sums)
    return run


def _same_bits(got, want, what):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == want.dtype and got.shape == want.shape, what
    assert got.tobytes() == want.tobytes(), what


NAMES = ["forward y", "forward mean", "forward var", "backward dx", "backward dgamma",
         "backward dbeta", "backward_reduce sum_dy", "backward_reduce sum_dy_xhat"]


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", SHAPES)
def test_a_channel_in_a_group_gets_the_bits_it_gets_alone(shape, dtype, activation,
                                                          restore_threads, restore_caches):
    x = _data(shape, dtype, sum(shape))
    C = shape[1]
    rng = np.random.default_rng(7)
    gamma, beta = rng.uniform(0.5, 1.5, C), rng.normal(0, 1, C)
    dy = (rng.standard_normal(shape) * rng.uniform(0.2, 2, (1, C, 1, 1))).astype(dtype)
    passes = _passes(gamma, beta, dy, activation)
    alone_stats = [_alone(_stats, x, c) for c in range(C)]
    alone = [_alone(passes, x, c) for c in range(C)]
    for l3 in L3S:
        _k._set_cache_sizes(0, 0, l3)
        for threads in (1, 2):
            fastbn.set_num_threads(threads)
            mean, m2 = _stats(x)
            got = passes(x)
            for c in range(C):
                tag = f", channel {c}, L3 {l3}, {threads} threads"
                _same_bits(mean[c:c + 1], alone_stats[c][0], "batch_stats mean" + tag)
                _same_bits(m2[c:c + 1], alone_stats[c][1], "batch_stats m2" + tag)
                for name, a, want in zip(NAMES, got, alone[c]):
                    part = a[:, c:c + 1] if a.ndim == x.ndim else a[c:c + 1]
                    _same_bits(part, want, name + tag)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES[:3])
def test_grouped_statistics_agree_with_the_reference(shape, dtype, restore_threads,
                                                     restore_caches):
    x = _data(shape, dtype, 3)
    C = shape[1]
    gamma, beta = np.linspace(0.5, 1.5, C), np.linspace(-1, 1, C)
    _k._set_cache_sizes(0, 0, 1 << 30)
    for threads in (1, 2):
        fastbn.set_num_threads(threads)
        count, mean, m2 = fastbn.batch_stats(x, axis=1)
        rcount, rmean, rm2 = reference.batch_stats(x, axis=1)
        assert count == rcount
        assert_close(mean, rmean, RTOL[np.dtype(dtype)])
        assert_close(m2, rm2, RTOL[np.dtype(dtype)])
        y, cache = fastbn.forward(x, gamma, beta, axis=1)
        ry, rcache = reference.forward(x, gamma, beta, axis=1)
        assert_close(y, ry, RTOL[np.dtype(dtype)])
        assert_close(cache.var, rcache.var, RTOL[np.dtype(dtype)])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_nan_stays_in_its_channel(dtype, restore_threads, restore_caches):
    shape = (4, 10, 32, 64)
    x = _data(shape, dtype, 11)
    clean = _stats(x)
    x[2, 4, 5, 6] = np.nan
    _k._set_cache_sizes(0, 0, 1 << 30)
    for threads in (1, 2):
        fastbn.set_num_threads(threads)
        mean, m2 = _stats(x)
        assert np.isnan(mean[4]) and np.isnan(m2[4])
        keep = np.arange(10) != 4
        _same_bits(mean[keep], clean[0][keep], "mean beside the NaN channel")
        _same_bits(m2[keep], clean[1][keep], "m2 beside the NaN channel")
        y, cache = fastbn.forward(x, None, None, axis=1)
        assert np.isnan(y[:, 4]).all()
        assert np.isfinite(y[:, keep]).all()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_row_strided_groups_read_the_rows_they_are_given(dtype, restore_threads):
    """x[::2] and x[:, a:b]: rows further apart than their channels (a row gap)."""
    base = _data((8, 12, 32, 64), dtype, 5)
    for view in (base[::2], base[:, 1:10]):
        copy = np.ascontiguousarray(view)
        for threads in (1, 2):
            fastbn.set_num_threads(threads)
            for got, want in zip(_stats(view), _stats(copy)):
                _same_bits(got, want, "row-strided statistics")
            y, cache = fastbn.forward(view, None, None, axis=1)
            y2, cache2 = fastbn.forward(copy, None, None, axis=1)
            _same_bits(y, y2, "row-strided forward")
            _same_bits(cache.var, cache2.var, "row-strided var")
