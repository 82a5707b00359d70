"""16-bit data's channel sums are bitwise those of the same values as float32 (issue 19).

float16 and bfloat16 widen exactly to float, and the kernels then add each value to
the same accumulator lane in the same order as for float32 data, whichever way they
widen it (a block at a time into a buffer, or 16 values at a time in registers for runs
of 32 values or more: src_c/kern_runs.h). So batch_stats and backward_reduce, whose
float64 results show every bit of those sums, must agree bitwise with float32 on the
widened data: a change of lane or order in one form alone fails here. Run lengths
(inner) cover whole lane sets of 32, groups of 8 and 16 after them, and the tails.
Data of a wide range of magnitudes make the float64 sums inexact, so that their
order shows in the bits (sums of a few hundred normal 16-bit values are exact).
"""
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastbn

from conftest import assert_bitwise_equal, data_dtypes

pytestmark = pytest.mark.skipif(fastbn.backend != "c", reason="the compiled kernels' sums")

HALF = [d for d in data_dtypes() if np.dtype(d).itemsize == 2]
INNER = [1, 4, 16, 17, 24, 31, 32, 40, 48, 57, 64, 100, 200]


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(HALF), n=st.integers(1, 6), c=st.integers(1, 4),
       inner=st.sampled_from(INNER), offset=st.sampled_from([0.0, 3.0, 200.0]),
       wide=st.booleans(), relu=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_sums_bitwise_those_of_float32(dtype, n, c, inner, offset, wide, relu, seed):
    rng = np.random.default_rng(seed)
    shape = (n, c) if inner == 1 else (n, c, inner)
    spread = 10.0 ** rng.uniform(-4, 4, shape) if wide else 1.0  # float16: 6e-5 to 65504
    x = (offset + spread * rng.standard_normal(shape)).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    x32, dy32 = x.astype(np.float32), dy.astype(np.float32)

    count, mean, m2 = fastbn.batch_stats(x, axis=1)
    count32, mean32, m2_32 = fastbn.batch_stats(x32, axis=1)
    assert count == count32
    assert_bitwise_equal(mean, mean32, "mean")
    assert_bitwise_equal(m2, m2_32, "m2")

    invstd = 1.0 / np.sqrt(m2 / count + 1e-5)
    kw = {}
    if relu:
        kw = dict(gamma=rng.uniform(0.5, 2, c).astype(np.float32),
                  beta=rng.standard_normal(c).astype(np.float32), activation="relu")
    s1, s2 = fastbn.backward_reduce(dy, x, mean, invstd, axis=1, **kw)
    t1, t2 = fastbn.backward_reduce(dy32, x32, mean, invstd, axis=1, **kw)
    assert_bitwise_equal(s1, t1, "sum_dy")
    assert_bitwise_equal(s2, t2, "sum_dy_xmu")


@pytest.mark.parametrize("inner", INNER)
@pytest.mark.parametrize("dtype", HALF)
def test_inexact_sums_bitwise_those_of_float32(dtype, inner):
    """Every run length on data whose float64 sums are inexact, several draws each
    (the lanes' order shows in about half of them)."""
    for seed in range(8):
        rng = np.random.default_rng(seed)
        # (N, C): 40 channels, two steps of 16 in registers and 8 in a block; 11 rows,
        # groups of 8 and 4 rows and single ones
        shape = (11, 40) if inner == 1 else (6, 2, inner)
        x = (10.0 ** rng.uniform(-4, 4, shape) * rng.standard_normal(shape)).astype(dtype)
        _, mean, m2 = fastbn.batch_stats(x, axis=1)
        _, mean32, m2_32 = fastbn.batch_stats(x.astype(np.float32), axis=1)
        assert_bitwise_equal(mean, mean32, f"mean, seed {seed}")
        assert_bitwise_equal(m2, m2_32, f"m2, seed {seed}")
