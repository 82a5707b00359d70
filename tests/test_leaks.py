"""No memory leaks: tens of thousands of calls, successful and failing, must not grow
the process's resident memory; arrays handed to fastbn are freed once the caller drops
them; a Cache holds nothing of the input's size beyond the reference to x itself."""
import gc
import os
import sys
import weakref

import numpy as np
import pytest

import fastbn
from fastbn import reference

SANITIZED = bool(os.environ.get("FASTBN_SANITIZED")) or "asan" in os.environ.get("LD_PRELOAD", "")
needs_statm = pytest.mark.skipif(not os.path.exists("/proc/self/statm") or SANITIZED,
                                 reason="needs Linux /proc/self/statm, and no ASan (its "
                                 "quarantine holds freed memory)")
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
MB = 1 << 20


def rss():
    gc.collect()
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


def _expect_error(fn, *args, **kwargs):
    try:
        fn(*args, **kwargs)
    except (TypeError, ValueError):
        return
    raise AssertionError(f"{fn.__name__} accepted bad input")


class Workload:
    """A fixed mix of calls; one `round` is ~40 calls, about half of them failing."""

    def __init__(self, module, seed=0):
        self.m = module
        rng = np.random.default_rng(seed)
        self.x = rng.standard_normal((6, 16, 5, 5)).astype(np.float32)      # NCHW
        self.dy = rng.standard_normal(self.x.shape).astype(np.float32)
        self.xl = rng.standard_normal((4, 4096)).astype(np.float64)       # many channels:
        self.dyl = rng.standard_normal(self.xl.shape)                     # O(C) C buffers
        self.xt = np.asfortranarray(rng.standard_normal((7, 5, 3, 16)))   # NHWC, a copy
        self.g, self.b = np.ones(16, np.float32), np.zeros(16, np.float32)
        self.rm, self.rv = np.zeros(16, np.float32), np.ones(16, np.float32)
        self.rml, self.rvl = np.zeros(4096), np.ones(4096)
        self.out = np.empty_like(self.x)
        self.one = rng.standard_normal((1, 16, 1, 1)).astype(np.float32)  # m == 1

    def round(self):
        m, x, dy = self.m, self.x, self.dy
        # successful calls
        y, cache = m.forward(x, self.g, self.b, running_mean=self.rm, running_var=self.rv)
        m.backward(dy, cache)
        y, cache = m.forward(x, self.g, self.b, out=self.out, activation="relu")
        m.backward(dy, cache, out=(np.empty_like(x), np.empty(16, np.float32), None))
        y, cache = m.forward(self.xl, running_mean=self.rml, running_var=self.rvl)
        m.backward(self.dyl, cache)
        y, cache = m.forward(self.xl, training=False, running_mean=self.rml,
                             running_var=self.rvl)
        m.backward(self.dyl, cache)
        y, cache = m.forward(self.xt, axis=-1)
        m.backward(np.ones_like(self.xt), cache)
        count, mean, m2 = m.batch_stats(x)
        invstd = 1 / np.sqrt(m2 / count + 1e-5)
        m.normalize(x, mean, invstd, self.g, self.b)
        s1, s2 = m.backward_reduce(dy, x, mean, invstd)
        m.backward_elemt(dy, x, mean, invstd, self.g, s1, s2, count)
        m.merge_stats(np.array([count, count]), np.stack([mean, mean]), np.stack([m2, m2]))
        m.update_running_stats(self.rm, self.rv, mean, m2 / count, count)
        m.forward(x[:0], self.g, self.b, training=False, running_mean=self.rm,
                  running_var=self.rv)
        m.forward(self.one, self.g, self.b, training=False, running_mean=self.rm,
                  running_var=self.rv)
        # failing calls (each validated before anything is allocated or updated)
        _expect_error(m.forward, x.astype(np.int32))
        _expect_error(m.forward, x.astype(np.longdouble))
        _expect_error(m.forward, self.one, running_mean=self.rm, running_var=self.rv)  # m == 1
        _expect_error(m.forward, x, self.g[:3])
        _expect_error(m.forward, x, axis=7)
        _expect_error(m.forward, x, eps=-1.0)
        _expect_error(m.forward, x, out=np.empty((2, 2), np.float32))
        _expect_error(m.forward, self.xl, running_mean=self.rml, running_var=self.rvl,
                      momentum=float("nan"))
        _expect_error(m.forward, [[1.0, 2.0]])
        _expect_error(m.backward, dy, None)
        _expect_error(m.backward, dy.astype(np.float64), cache)
        _expect_error(m.backward, dy[:1], cache)
        _expect_error(m.batch_stats, x, axis=1.5)
        _expect_error(m.normalize, x, mean[:3], invstd)
        _expect_error(m.backward_reduce, dy, x.astype(np.float64), mean, invstd)
        _expect_error(m.backward_elemt, dy, x, mean, invstd, self.g, s1, s2, 0)
        _expect_error(m.merge_stats, np.array([-1, 2]), np.stack([mean, mean]),
                      np.stack([m2, m2]))
        _expect_error(m.update_running_stats, self.rm, self.rv, mean, m2, 1)
        _expect_error(fastbn.set_num_threads, 0)


@needs_statm
@pytest.mark.parametrize("module", [fastbn, reference], ids=["fastbn", "reference"])
def test_rss_does_not_grow_over_many_calls(module):
    work = Workload(module)
    rounds = 700 if module is fastbn else 150  # ~28000 / ~6000 calls
    for _ in range(100):  # warm up: caches, allocator arenas, first-use imports
        work.round()
    before = rss()
    for _ in range(rounds):
        work.round()
    growth = rss() - before
    assert growth < 20 * MB, f"RSS grew by {growth / MB:.1f} MB over {rounds} rounds"


@needs_statm
def test_rss_does_not_grow_with_large_threaded_calls():
    """Inputs above the threading threshold: per-call work buffers and OpenMP teams."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 64, 32, 32)).astype(np.float32)  # 131k elements, 64 channels
    dy = rng.standard_normal(x.shape).astype(np.float32)
    # 65536 channels: each call allocates O(C) work buffers of ~0.5-3 MB in C, so a
    # leaked one would grow RSS by hundreds of MB over this loop
    wide = rng.standard_normal((3, 65536))
    out = np.empty_like(x)

    def step():
        y, cache = fastbn.forward(x, out=out)
        fastbn.backward(dy, cache, out=out)
        y, cache = fastbn.forward(wide)
        fastbn.backward(wide, cache)
        fastbn.batch_stats(wide)

    for _ in range(5):
        step()
    before = rss()
    for _ in range(60):
        step()
    growth = rss() - before
    assert growth < 20 * MB, f"RSS grew by {growth / MB:.1f} MB"


@pytest.mark.parametrize("module", [fastbn, reference], ids=["fastbn", "reference"])
@pytest.mark.parametrize("layout", ["C", "F", "strided"])
def test_inputs_are_freed_when_dropped(module, layout):
    """No hidden references to the caller's arrays survive the calls (Cython buffers,
    caches, copies): once the caller drops x, dy, out and the cache, x is freed."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 4, 5, 5)).astype(np.float32)
    if layout == "F":
        x = np.asfortranarray(x)
    elif layout == "strided":
        x = np.repeat(x, 2, axis=3)[..., ::2]
    dy = np.ones_like(x)
    g = np.ones(4, np.float32)
    rm, rv = np.zeros(4, np.float32), np.ones(4, np.float32)
    refs = [weakref.ref(a) for a in (x, dy, g)]
    base = x.base
    y, cache = module.forward(x, g, g, running_mean=rm, running_var=rv, activation="relu")
    dx, dg, db = module.backward(dy, cache)
    module.batch_stats(x)
    module.normalize(x, cache.mean, cache.invstd, g)
    del x, dy, g, y, cache, dx, dg, db, base
    gc.collect()
    assert all(r() is None for r in refs), "an input array is still referenced"


@pytest.mark.parametrize("module", [fastbn, reference], ids=["fastbn", "reference"])
@pytest.mark.parametrize("shape, axis", [((8, 3, 16, 16), 1), ((8, 16, 16, 3), -1),
                                         ((4096, 3), 1)])
def test_cache_holds_nothing_of_the_input_size(module, shape, axis):
    """API.md: the cache holds O(C) statistics and references; nothing of size x.size."""
    x = np.random.default_rng(3).standard_normal(shape)
    if axis == -1:
        x = np.asfortranarray(x)  # a layout the kernels copy to canonical form
    C = shape[axis]
    y, cache = module.forward(x, np.ones(C), np.zeros(C), axis=axis)
    for name in type(cache).__slots__:
        if name in ("x", "gamma", "beta"):
            continue
        value = getattr(cache, name, None)
        if isinstance(value, np.ndarray):
            owner = value
            while isinstance(owner.base, np.ndarray):
                owner = owner.base
            assert owner.size <= 4 * C, f"cache.{name} keeps {owner.size} values alive"
    assert sys.getrefcount(x) >= 2 and cache.x is x
