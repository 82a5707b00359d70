"""Cache sizes read at run time (src_c/plan.c): sane values, their fallbacks and
overrides, and that they change no result's bits (only elementwise tiles, the
streaming threshold of every pass, walk bounds and whether a channel of
several reduction tiles is fused follow them)."""
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbn

_k = pytest.importorskip("fastbn._kernels")


@pytest.fixture
def restore_caches():
    yield
    _k._set_cache_sizes(0, 0, 0)


def test_detected_sizes_are_sane():
    l1, l2, l3 = _k.cache_sizes()
    assert 4096 <= l1 <= 4 << 20
    assert 64 << 10 <= l2 <= 64 << 20
    assert 0 <= l3 <= 1 << 34


def _sysfs_size(level):
    """The kernel's size of the data or unified cache of `level` (cpu0), else None."""
    base = "/sys/devices/system/cpu/cpu0/cache"
    for i in range(8):
        d = f"{base}/index{i}"
        try:
            with open(f"{d}/level") as f:
                lv = int(f.read())
            with open(f"{d}/type") as f:
                kind = f.read().strip()
            with open(f"{d}/size") as f:
                txt = f.read().strip()
        except (OSError, ValueError):
            return None
        if lv == level and kind != "Instruction":
            mult = {"K": 1 << 10, "M": 1 << 20}.get(txt[-1], 1)
            return int(txt.rstrip("KM")) * mult
    return None


@pytest.mark.skipif(_sysfs_size(3) is None, reason="no L3 in sysfs")
def test_detected_sizes_are_the_kernels(restore_caches):
    # sysfs before sysconf: glibc's sysconf gave a 256 MB L3 on an AMD EPYC guest
    # whose L3 (sysfs, lscpu) is 32 MB, and the L3 sets the streaming threshold
    _k._set_cache_sizes(0, 0, 0)
    assert _k.cache_sizes() == (_sysfs_size(1), _sysfs_size(2), _sysfs_size(3))


def test_setter_overrides_and_rejects_nonsense(restore_caches):
    assert _k._set_cache_sizes(32 << 10, 512 << 10, 8 << 20) == (32 << 10, 512 << 10, 8 << 20)
    # out of range: the fallbacks (32 KB, 512 KB, 8 MB)
    assert _k._set_cache_sizes(1, 2, -1) == (32 << 10, 512 << 10, 8 << 20)


def test_environment_override():
    code = "import fastbn._kernels as k; print(k.cache_sizes())"
    env = dict(os.environ, FASTBN_CACHE_SIZES="48K,512K,16M")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == str((48 << 10, 512 << 10, 16 << 20))


# (2, 2, 300, 300): channels of several reduction tiles, fused or not by the
# cache sizes (plan.c's fuse_segs: the L2, a quarter of L3)
SHAPES = [((64, 32, 9, 9), 1), ((4100, 300), 1), ((300, 7, 5, 64), -1), ((32, 256, 14, 14), 1),
          ((2, 2, 300, 300), 1)]


def _all_outputs(x, dy, g, b, axis):
    y, cache = fastbn.forward(x, g, b, axis=axis)
    dx, dg, db = fastbn.backward(dy, cache)
    rm, rv = np.full(g.shape, 0.3, x.dtype), np.full(g.shape, 2.0, x.dtype)
    ye, _ = fastbn.forward(x, g, b, axis=axis, training=False, running_mean=rm,
                           running_var=rv)
    return [a.tobytes() for a in (y, dx, dg, db, ye)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape,axis", SHAPES)
def test_results_do_not_depend_on_cache_sizes(shape, axis, dtype, restore_caches):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    g, b = rng.uniform(0.5, 1.5, C).astype(dtype), rng.normal(0, 1, C).astype(dtype)
    outs = []
    # a 512 KB-L2 machine, this one's sizes, and a tiny cache (tiny tiles, every
    # pass of 256 KB of data or more streamed, the fused ones too)
    for sizes in [(32 << 10, 512 << 10, 8 << 20), (0, 0, 0), (4096, 64 << 10, 0)]:
        _k._set_cache_sizes(*sizes)
        outs.append(_all_outputs(x, dy, g, b, axis))
    assert outs[0] == outs[1] == outs[2]
