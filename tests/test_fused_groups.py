"""Fused passes over whole channels (plan nsegs == 1, inner > 1: one tile per channel)
run their tiles in groups of consecutive channels per task on several threads
(src_c/plan.c's fbn_fuse_group: the group follows the detected L2 and the thread
count). The groups must cover every channel exactly once, the last one short, and
change no result's bits: the same bytes at 1 and 2 threads and under any cache
sizes, and agreement with the reference."""
import numpy as np
import pytest

import fastbn
from fastbn import reference
from conftest import RTOL, assert_close

_k = pytest.importorskip("fastbn._kernels")

# (outer, C, h, w): whole channels per tile, at least 65536 values (threads used),
# channel counts that leave a short last group (100: groups of 12 at 2 threads on a
# 2 MB L2), and the 14x14 maps of the issue
SHAPES = [(16, 100, 8, 8), (8, 300, 5, 7), (32, 256, 14, 14), (4, 97, 16, 16)]
# L2 sizes: groups of 1 (64 KB: the float64 backward of 32x256x14x14), a few, and as many
# as the cap of FBN_FUSE_TASKS tasks per thread allows (64 MB)
CACHES = [(0, 0, 0), (32 << 10, 64 << 10, 8 << 20), (48 << 10, 64 << 20, 1 << 30)]


@pytest.fixture
def restore_caches():
    yield
    _k._set_cache_sizes(0, 0, 0)


@pytest.fixture
def no_backoff():
    previous = _k.pool_set_backoff(False)
    yield
    _k.pool_set_backoff(previous)


def _inputs(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    C = shape[1]
    x = (rng.standard_normal(shape) * 3 + 1e2).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    g = rng.uniform(0.5, 1.5, C).astype(dtype)
    b = rng.normal(0, 1, C).astype(dtype)
    return x, dy, g, b


def _outputs(x, dy, g, b, activation):
    y, cache = fastbn.forward(x, g, b, activation=activation)
    dx, dg, db = fastbn.backward(dy, cache)
    return y, dx, dg, db, cache


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_groups_give_the_same_bits_at_any_thread_count_and_cache_size(
        shape, dtype, activation, restore_threads, restore_caches, no_backoff):
    x, dy, g, b = _inputs(shape, dtype)
    runs = {}
    for sizes in CACHES:
        _k._set_cache_sizes(*sizes)
        for threads in (1, 2):
            fastbn.set_num_threads(threads)
            y, dx, dg, db, cache = _outputs(x, dy, g, b, activation)
            runs[sizes, threads] = [np.asarray(a).tobytes()
                                    for a in (y, dx, dg, db, cache.mean, cache.invstd)]
    first = next(iter(runs.values()))
    for key, got in runs.items():
        assert got == first, f"caches, threads {key} differ from {next(iter(runs))}"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_groups_agree_with_the_reference(shape, dtype, restore_threads, no_backoff):
    x, dy, g, b = _inputs(shape, dtype)
    fastbn.set_num_threads(2)
    y = np.full_like(x, np.nan)  # a channel no group wrote stays NaN
    got, cache = fastbn.forward(x, g, b, activation="relu", out=y)
    dx = np.full_like(x, np.nan)
    dx, dg, db = fastbn.backward(dy, cache, out=(dx, None, None))
    ref_y, ref_cache = reference.forward(x, g, b, activation="relu")
    ref_dx, ref_dg, ref_db = reference.backward(dy, ref_cache)
    assert_close(y, ref_y, what="y")
    assert_close(dx, ref_dx, what="dx")
    assert_close(dg, ref_dg, RTOL[g.dtype], "dgamma")
    assert_close(db, ref_db, RTOL[b.dtype], "dbeta")
