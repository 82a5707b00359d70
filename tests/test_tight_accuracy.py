"""Accuracy at the level the kernels achieve, so that small formula bugs fail.

The guarantees of docs/numerics.md (float32 within 1e-6, float64 within 1e-12) are
loose enough to let through bugs that cost a few 1e-6 in float32 (eps outside the
square root: 3-5e-6 of max|y|; a running variance without m / (m - 1) at
m = 70,001: 1.4e-6) or an uncompensated sum in float64. These tests hold:

* float32 results against a float64 oracle (the reference on the same float32
  values converted to float64) to the ~1e-7 that the kernels measure (max 1.3e-7
  over the cases below: 3e-7 tested for y and dx, 1.5e-7 for the reductions and
  running statistics, which are rounded once to float32);
* the variance of long channels (many 4,096-value pieces added to compensated
  totals) against an extended-precision oracle (math.fsum mean, np.longdouble
  deviations) to a few times the error measured with the compensation, well
  below what it is without (the Neumaier step subtracting its correction: 6e-14
  against <= 1e-14 measured with it, float64 data with the pivot 15 standard
  deviations from the mean).
"""
import math

import numpy as np
import pytest

import fastbn
from fastbn import reference

LD = np.longdouble
EXTENDED = np.finfo(LD).eps < 1e-18
needs_kernels = pytest.mark.skipif(fastbn.backend != "c",
                                   reason="measures the compiled kernels' accuracy")

F32_ELEMWISE = 3e-7   # y, dx: relative to max|expected| (measured <= 1.3e-7)
F32_REDUCED = 1.5e-7  # dgamma, dbeta, running statistics (float32 rounding: 6e-8)


def float32_case(shape, axis, x_offset, dy_offset, seed):
    rng = np.random.default_rng(seed)
    ax = axis % len(shape)
    C = shape[ax]
    b = [1] * len(shape)
    b[ax] = C
    x = (x_offset * rng.uniform(0.5, 1.0, C).reshape(b)
         + rng.uniform(0.5, 2.0, C).reshape(b) * rng.standard_normal(shape)).astype(np.float32)
    dy = (dy_offset + rng.standard_normal(shape)).astype(np.float32)
    gamma = (rng.uniform(0.5, 2.0, C) * rng.choice([-1.0, 1.0], C)).astype(np.float32)
    beta = rng.standard_normal(C).astype(np.float32)
    return x, dy, gamma, beta


def rel(actual, expected):
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.max(np.abs(actual.astype(np.float64) - expected)) / np.max(np.abs(expected)))


def elementwise_rel(actual, expected):
    expected = np.asarray(expected, dtype=np.float64)
    return float(np.max(np.abs(actual.astype(np.float64) - expected) / np.abs(expected)))


F32_SHAPES = [((64, 16, 8, 8), 1), ((4096, 24), 1), ((70001, 3), 1), ((4, 9, 9, 1024), -1),
              ((2, 5, 14001), 1)]
OFFSETS = [(0.0, 0.0), (100.0, 0.0), (0.0, 1000.0), (1e4, 100.0)]  # (x, dy) offsets


@needs_kernels
@pytest.mark.parametrize("x_offset, dy_offset", OFFSETS)
@pytest.mark.parametrize("shape, axis", F32_SHAPES)
def test_float32_training_at_kernel_precision(shape, axis, x_offset, dy_offset):
    x, dy, gamma, beta = float32_case(shape, axis, x_offset, dy_offset, seed=len(shape))
    C = gamma.size
    rm, rv = np.full(C, 0.5, np.float32), np.full(C, 2.0, np.float32)
    y, cache = fastbn.forward(x, gamma, beta, axis=axis, running_mean=rm, running_var=rv,
                              momentum=0.1)
    dx, dgamma, dbeta = fastbn.backward(dy, cache)
    erm, erv = np.full(C, 0.5), np.full(C, 2.0)
    ey, ecache = reference.forward(x.astype(np.float64), gamma.astype(np.float64),
                                   beta.astype(np.float64), axis=axis, running_mean=erm,
                                   running_var=erv, momentum=0.1)
    edx, edgamma, edbeta = reference.backward(dy.astype(np.float64), ecache)
    errors = {"y": rel(y, ey), "dx": rel(dx, edx)}
    bad = {k: v for k, v in errors.items() if not v <= F32_ELEMWISE}
    reduced = {"dgamma": rel(dgamma, edgamma), "dbeta": rel(dbeta, edbeta),
               "running_mean": elementwise_rel(rm, erm), "running_var": elementwise_rel(rv, erv)}
    bad.update({k: v for k, v in reduced.items() if not v <= F32_REDUCED})
    assert not bad, f"float32 errors above the kernels' precision: {bad} (all: {errors}, {reduced})"


@needs_kernels
@pytest.mark.parametrize("shape, axis", F32_SHAPES)
def test_float32_eval_at_kernel_precision(shape, axis):
    """Inference with running statistics: invstd and the affine map at ~1e-7."""
    x, dy, gamma, beta = float32_case(shape, axis, 10.0, 0.0, seed=3)
    C = gamma.size
    rng = np.random.default_rng(4)
    rm = (10.0 * rng.uniform(0.5, 1.0, C)).astype(np.float32)
    rv = rng.uniform(0.5, 4.0, C).astype(np.float32)
    y, cache = fastbn.forward(x, gamma, beta, axis=axis, training=False, running_mean=rm,
                              running_var=rv)
    dx, dgamma, dbeta = fastbn.backward(dy, cache)
    f64 = [a.astype(np.float64) for a in (x, gamma, beta, rm, rv)]
    ey, ecache = reference.forward(f64[0], f64[1], f64[2], axis=axis, training=False,
                                   running_mean=f64[3], running_var=f64[4])
    edx, edgamma, edbeta = reference.backward(dy.astype(np.float64), ecache)
    errors = {"y": rel(y, ey), "dx": rel(dx, edx), "dgamma": rel(dgamma, edgamma),
              "dbeta": rel(dbeta, edbeta)}
    assert max(errors.values()) <= F32_ELEMWISE, errors


# ------------------------------------------------------------------ compensated sums

def exact_stats(x, axis):
    """(mean as mean0 + shift, m2) per channel, in extended precision."""
    x2 = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis]).astype(np.float64)
    m = x2.shape[0]
    mean0 = np.array([math.fsum(col) / m for col in x2.T])  # correctly rounded
    d = x2.astype(LD) - mean0  # exact
    shift = d.sum(axis=0) / m
    dev = d - shift
    return mean0, shift, (dev * dev).sum(axis=0)


# Long channels: rows shape (inner > 1: lanes flushed to a Neumaier total every
# 4,096 values, then segments merged) and columns shape ((N, C): plain sums over
# 64 rows, compensated across). Each channel's first value (its pivot) sits k
# standard deviations from its mean, k = 15 (one pass of shifted sums still: the
# second pass starts above 16), so the sums are large and their roundings count.
LONG_CHANNELS = [((2, 2, 1 << 19), 1), ((1, 2, 1 << 21), 1), ((16, 2, 65536), 1),
                 ((1 << 20, 2), 1)]
# measured relative errors of m2 (correct kernels): <= 9.4e-15 (rows), see the
# module docstring; without compensation (the sign mutant) >= 5.9e-14
M2_TOL = 2.5e-14
MEAN_TOL = 5e-15  # |mean - exact| / std; measured <= 2.1e-15


@needs_kernels
@pytest.mark.skipif(not EXTENDED, reason="the oracle needs an extended-precision np.longdouble")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape, axis", LONG_CHANNELS)
def test_compensated_sums_of_long_channels(shape, axis, dtype):
    rng = np.random.default_rng(len(shape) + shape[-1])
    x = 1000.0 + rng.standard_normal(shape)
    first = [0] * len(shape)
    x[tuple(first)] = 1000.0 + 15.0  # channel 0's pivot: 15 sd above its mean
    first[axis] = 1
    x[tuple(first)] = 1000.0 - 15.0  # channel 1's: below
    x = x.astype(dtype)
    mean0, shift, m2 = exact_stats(x, axis)
    count, _, bs_m2 = fastbn.batch_stats(x, axis=axis)
    y, cache = fastbn.forward(x, axis=axis, eps=1e-300)
    sd = np.sqrt(m2 / count)
    errors = {
        "batch_stats m2": float(np.max(np.abs(bs_m2 - m2) / m2)),
        "forward var (from invstd)": float(np.max(np.abs(
            np.asarray(cache.invstd, LD) ** -2 - m2 / count) / (m2 / count))),
        "mean/sd": float(np.max(np.abs((np.asarray(cache.mean, LD) - mean0)
                                       + np.asarray(cache.mean_lo, LD) - shift) / sd)),
    }
    bad = [k for k, v in errors.items() if not v <= (MEAN_TOL if k == "mean/sd" else M2_TOL)]
    assert not bad, f"errors {errors}; tolerances m2 {M2_TOL:.1e}, mean {MEAN_TOL:.1e}"


# A pivot (each channel's first value) far out in its channel's distribution: one
# pass of sums shifted by it cancels ~k^2 digits (k standard deviations away), so
# the kernels take a second pass centred on the first one's mean (above k = 16).
# Where a tile still takes one pass (its sums' s1^2 / n <= 256 m2, e.g. the 64 rows
# holding the outlier in (300, 2048)), the variance is good to ~256 float64 ulps by
# design (measured 4.2e-14 there): PIVOT_TOL is that bound; without the second pass,
# the error is ~k^2 ulps (1e-10 and more here).
PIVOT_SHAPES = [((5000, 7), 1), ((40, 7, 11, 13), 1), ((50, 9, 11, 7), -1), ((300, 2048), 1)]
PIVOT_TOL = 4 * 256 * 1.1e-16


@needs_kernels
@pytest.mark.skipif(not EXTENDED, reason="the oracle needs an extended-precision np.longdouble")
@pytest.mark.parametrize("k", [1e3, 1e6])
@pytest.mark.parametrize("shape, axis", PIVOT_SHAPES)
def test_pivot_far_out_in_its_channel(shape, axis, k):
    rng = np.random.default_rng(int(k) % 1000 + len(shape))
    x = 5.0 + rng.standard_normal(shape)
    first = [0] * len(shape)
    first[axis] = slice(None)
    x[tuple(first)] = 5.0 + k * rng.choice([-1.0, 1.0], shape[axis])  # every channel's pivot
    mean0, shift, m2 = exact_stats(x, axis % len(shape))
    count, _, bs_m2 = fastbn.batch_stats(x, axis=axis)
    _, cache = fastbn.forward(x, axis=axis, eps=1e-300)
    errors = {
        "batch_stats m2": float(np.max(np.abs(bs_m2 - m2) / m2)),
        "forward var": float(np.max(np.abs(np.asarray(cache.invstd, LD) ** -2 - m2 / count)
                                    / (m2 / count))),
    }
    assert max(errors.values()) <= PIVOT_TOL, errors
