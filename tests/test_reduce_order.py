"""The columns shape's reductions over whole rows of 512 bytes to 256 channels
(src_c/kern_cols.h: fbn_stats_rows_<sfx>, fbn_bwd_rows_<sfx>) take a row group's
rows one after another, not a line of each row in turn, and must give the bits
the line order gives. Oracles that still take the line order: the masked
statistics (kern_masked.h) with every position kept, and the backward's sums with
a residual (the epilogue path, fbn_bwd_group_xv_<sfx>). Shapes: rows not a
multiple of the row group, several flush blocks, groups of 4 and of 8 rows
(float64 rows of 2 KB), a pivot far from the mean (the second, centred pass),
gapped rows (x[:, :C] of a wider array), 1 and 2 threads.
"""
import numpy as np
import pytest

import fastbn
from conftest import assert_bitwise_equal

pytestmark = pytest.mark.skipif(fastbn.backend != "c", reason="the compiled kernels")

# (rows, channels): float32 from 128 channels, float64 from 64 (512-byte rows)
SHAPES = [(1003, 128), (1003, 64), (517, 256), (300, 200), (2001, 96), (70, 130)]


def make(shape, dtype, far_pivot, seed, threads):
    """x, dy, gamma, beta and the generator, on `threads` threads."""
    fastbn.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    C = shape[1]
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3.0, C) + rng.normal(0.0, 50.0, C)
    if far_pivot:  # first row (each channel's pivot) far off: a second, centred pass
        x[0] += 1e4
    dy = rng.standard_normal(shape) * rng.uniform(0.5, 2.0, C)
    gamma, beta = rng.uniform(0.5, 2.0, C), rng.normal(0.0, 1.0, C)
    return x.astype(dtype), dy.astype(dtype), gamma, beta, rng


def gapped(a, rng):
    """a as x[:, :C] of an array with longer rows (rows a gap apart)."""
    wide = rng.standard_normal((a.shape[0], a.shape[1] + 24)).astype(a.dtype)
    wide[:, :a.shape[1]] = a
    return wide[:, :a.shape[1]]


def dtypes_for(C):
    return [dt for dt in (np.float32, np.float64) if C * np.dtype(dt).itemsize >= 512]


CASES = [(s, dt) for s in SHAPES for dt in dtypes_for(s[1])]


@pytest.mark.parametrize("shape,dtype", CASES)
@pytest.mark.parametrize("far_pivot", [False, True])
@pytest.mark.parametrize("threads", [1, 2])
def test_statistics_are_the_line_orders_bits(shape, dtype, far_pivot, threads,
                                             restore_threads):
    x, _, gamma, beta, rng = make(shape, dtype, far_pivot, 1, threads)
    _, lines = fastbn.forward(x, gamma, beta, mask=np.ones((shape[0], 1), bool))
    for xs in (x, gapped(x, rng)):
        _, rows = fastbn.forward(xs, gamma, beta)
        assert_bitwise_equal(rows.mean, lines.mean, "mean")
        assert_bitwise_equal(rows.invstd, lines.invstd, "invstd")
        count, mean, m2 = fastbn.batch_stats(xs)
        assert count == shape[0]
        assert_bitwise_equal(mean, lines.mean, "batch_stats mean")


@pytest.mark.parametrize("shape,dtype", CASES)
@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("threads", [1, 2])
def test_backward_sums_are_the_line_orders_bits(shape, dtype, activation, threads,
                                               restore_threads):
    x, dy, gamma, beta, rng = make(shape, dtype, False, 2, threads)
    z = np.zeros_like(x)  # y = act(gamma * xhat + beta + 0): the same y, dy' and sums
    _, with_z = fastbn.forward(x, gamma, beta, residual=z, activation=activation)
    dx0, dg0, db0, _ = fastbn.backward(dy, with_z)
    for xs, dys in ((x, dy), (gapped(x, rng), gapped(dy, rng))):
        _, plain = fastbn.forward(xs, gamma, beta, activation=activation)
        dx, dg, db = fastbn.backward(dys, plain)
        assert_bitwise_equal(dg, dg0, "dgamma")
        assert_bitwise_equal(db, db0, "dbeta")
        assert_bitwise_equal(dx, dx0, "dx")
        mean, invstd = plain.mean, plain.invstd
        kw = dict(gamma=gamma, beta=beta, activation=activation) if activation else {}
        # (its sum_dy_xhat and dgamma differ in the last bits: other arithmetic after the sums)
        sum_dy, _ = fastbn.backward_reduce(dys, xs, mean, invstd, **kw)
        assert_bitwise_equal(sum_dy, db0, "backward_reduce sum_dy")
