"""Inputs of more than 2**31 elements (float32: 8.6 GB each): no 32-bit index overflow
anywhere in the kernels. Forward statistics are checked against a chunked float64
NumPy computation, and y at a few positions, including around flat index 2**31 and the
very last element. The forward runs in place (out=x) so that one array is enough.

Marked slow; skipped when /proc/meminfo's MemAvailable is short of what a case needs
(and, with the CI environment variable set, below 20 GB).
"""
import math
import os

import numpy as np
import pytest

import fastbn

# one at a time under pytest-xdist: two of them at once would need twice the memory
pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("big_memory")]

BIG = 2**31 + 64          # elements: just past the int32 range
CHUNK = 1 << 25           # elements per chunk of the NumPy check (256 MB as float64)
GB = 1 << 30


def mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def require_memory(nbytes):
    need = int(nbytes * 1.15) + 2 * GB  # the array, the chunked check, the interpreter
    avail = mem_available()
    if avail is None:
        pytest.skip("cannot read MemAvailable from /proc/meminfo")
    if avail < need:
        pytest.skip(f"needs ~{need / GB:.1f} GB of available memory, {avail / GB:.1f} GB free")
    if os.environ.get("CI") and avail < 20 * GB:
        pytest.skip(f"CI with {avail / GB:.1f} GB available (< 20 GB)")


def fill(x, seed, offsets, axis):
    """x = offset[c] + N(0, 1), generated chunk by chunk (x is C-contiguous)."""
    rng = np.random.default_rng(seed)
    flat = x.reshape(-1)
    for i in range(0, flat.size, CHUNK):
        rng.standard_normal(out=flat[i:i + CHUNK], dtype=np.float32)
    # add the channel offsets, chunk by chunk along the leading axis
    C = x.shape[axis]
    bshape = [1] * x.ndim
    bshape[axis] = C
    off = np.asarray(offsets, np.float32).reshape(bshape)
    if x.ndim == 2 and axis == 1:
        for i in range(0, x.shape[0], CHUNK // C):
            x[i:i + CHUNK // C] += off
    else:
        for o in range(x.shape[0]):
            for c in range(C):
                sub = x[o, c].reshape(-1)
                for i in range(0, sub.size, CHUNK):
                    sub[i:i + CHUNK] += off.reshape(-1)[c]


def channel_blocks(x, axis):
    """Yield (channel, float64 block) covering every value once, in chunks."""
    if x.ndim == 2 and axis == 1:
        C = x.shape[1]
        step = max(1, CHUNK // C)
        for i in range(0, x.shape[0], step):
            block = x[i:i + step].astype(np.float64)
            for c in range(C):
                yield c, block[:, c]
    else:  # (outer, C, inner)
        for o in range(x.shape[0]):
            for c in range(x.shape[1]):
                sub = x[o, c].reshape(-1)
                for i in range(0, sub.size, CHUNK):
                    yield c, sub[i:i + CHUNK].astype(np.float64)


def chunked_stats(x, axis):
    """Per-channel count, mean and m2 in float64: fsum of chunk sums, two passes."""
    C = x.shape[axis]
    sums = [[] for _ in range(C)]
    counts = [0] * C
    for c, b in channel_blocks(x, axis):
        sums[c].append(float(b.sum()))
        counts[c] += b.size
    mean = np.array([math.fsum(s) / n for s, n in zip(sums, counts)])
    sq = [[] for _ in range(C)]
    for c, b in channel_blocks(x, axis):
        sq[c].append(float(((b - mean[c]) ** 2).sum()))
    m2 = np.array([math.fsum(s) for s in sq])
    return counts[0], mean, m2


def sample_positions(shape, seed):
    size = math.prod(shape)
    flat = [0, 1, 2**31 - 1, 2**31, 2**31 + 1, size - 2, size - 1]
    flat += list(np.random.default_rng(seed).integers(0, size, 20))
    return [np.unravel_index(int(i), shape) for i in flat if i < size]


CASES = {
    # name: (shape, axis)
    "NCHW 8 channels": ((2, 8, (BIG + 15) // 16, 1), 1),   # rows kernel, 2**28 per channel
    "one channel, (N, 1)": ((BIG, 1), 1),                  # columns kernel, C == 1
    "one channel, (1, 1, L)": ((1, 1, BIG), 1),            # rows kernel, one long run
}


@pytest.mark.parametrize("name", list(CASES))
def test_forward_statistics_and_values_beyond_int32(name):
    shape, axis = CASES[name]
    assert math.prod(shape) > 2**31
    require_memory(math.prod(shape) * 4)
    C = shape[axis]
    offsets = 3.0 + np.arange(C)  # away from 0, so cancellation would show
    x = np.empty(shape, np.float32)
    fill(x, 1, offsets, axis)

    count, mean, m2 = fastbn.batch_stats(x, axis=axis)
    ref_count, ref_mean, ref_m2 = chunked_stats(x, axis)
    assert count == ref_count == math.prod(shape) // C
    std = np.sqrt(ref_m2 / ref_count)
    assert np.all(np.abs(mean - ref_mean) <= 1e-9 * std), (mean, ref_mean)
    assert np.allclose(m2, ref_m2, rtol=1e-9, atol=0), (m2, ref_m2)
    assert np.allclose(std, 1.0, rtol=1e-2)  # the data are what was generated

    positions = sample_positions(shape, 2)
    before = np.array([x[p] for p in positions], np.float64)
    channels = [p[axis] for p in positions]
    gamma = np.linspace(0.5, 2.0, C).astype(np.float32)
    beta = np.linspace(-1.0, 1.0, C).astype(np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    y, cache = fastbn.forward(x, gamma, beta, axis=axis, running_mean=rm, running_var=rv,
                              out=x)
    assert y is x
    invstd = 1 / np.sqrt(ref_m2 / ref_count + 1e-5)
    expected = [(v - ref_mean[c]) * invstd[c] * gamma[c] + beta[c]
                for v, c in zip(before, channels)]
    got = np.array([y[p] for p in positions], np.float64)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6 * max(np.abs(expected)))
    np.testing.assert_allclose(cache.mean + cache.mean_lo, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(rm, 0.1 * ref_mean, rtol=1e-6)
    np.testing.assert_allclose(rv, 0.9 + 0.1 * ref_m2 / (ref_count - 1), rtol=1e-6)

    # y itself: normalised per channel (mean ~beta, std ~|gamma|), checked by a reduction
    # that reads every element once more, beyond 2**31 included
    count2, mean2, m2_2 = fastbn.batch_stats(y, axis=axis)
    np.testing.assert_allclose(mean2, beta, atol=1e-5)
    var = ref_m2 / ref_count
    np.testing.assert_allclose(np.sqrt(m2_2 / count2), np.abs(gamma) * np.sqrt(var / (var + 1e-5)),
                               rtol=1e-5)

    # backward reductions over the whole array (dy = y: sum(dy) and sum(dy * xhat))
    sum_dy, sum_dy_xhat = fastbn.backward_reduce(y, y, mean2, 1 / np.sqrt(m2_2 / count2))
    np.testing.assert_allclose(sum_dy, mean2 * count2, rtol=1e-9)
    np.testing.assert_allclose(sum_dy_xhat, np.sqrt(m2_2 * count2), rtol=1e-9)
