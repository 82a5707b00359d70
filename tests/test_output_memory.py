"""The outputs' allocator (src_c/outmem.c, fastbn/_outputs.py): large outputs that
NumPy frees are kept up to a limit and handed out again to an output of exactly
their size; results are those of fresh memory; threads, forks and resizes are safe."""
import gc
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import fastbn
from fastbn import _outputs

pytestmark = pytest.mark.skipif(fastbn.backend != "c", reason="the compiled backend's allocator")

MiB = 1 << 20


@pytest.fixture
def cache():
    """An empty cache with a limit of 64 MiB for the test; the previous limit after."""
    previous = fastbn.set_output_cache(0)
    fastbn.set_output_cache(64 * MiB)
    if _outputs.output_cache_info()[0] == 0:
        pytest.skip("this build keeps no outputs (AddressSanitizer must see every free)")
    yield
    fastbn.set_output_cache(0)
    fastbn.set_output_cache(previous)


def held():
    gc.collect()
    return _outputs.output_cache_info()[1]


def data(mib, dtype=np.float32, seed=0):
    """NCHW data of `mib` MiB (float32), 8 channels."""
    n = mib * MiB // (8 * 32 * 32 * np.dtype(dtype).itemsize)
    return np.random.default_rng(seed).standard_normal((n, 8, 32, 32)).astype(dtype)


def fresh_forward(x, **kw):
    y = np.empty_like(x)
    out, _ = fastbn.forward(x, None, None, out=y, **kw)
    return out


def test_freed_output_is_kept_then_reused_with_exact_results(cache):
    x = data(2)
    y, _ = fastbn.forward(x, None, None)
    assert held() == 0
    first = y.copy()
    del y
    assert held() == x.nbytes  # kept
    y, _ = fastbn.forward(x, None, None)
    assert held() == 0  # handed out again
    np.testing.assert_array_equal(y, first)
    np.testing.assert_array_equal(y, fresh_forward(x))


def test_only_a_block_of_the_same_size_is_handed_out(cache):
    small, large = data(2), data(4)
    y, _ = fastbn.forward(small, None, None)
    del y
    assert held() == small.nbytes
    y_large, _ = fastbn.forward(large, None, None)  # larger: not the kept block
    assert held() == small.nbytes
    del y_large
    assert held() == small.nbytes + large.nbytes
    y_small, _ = fastbn.forward(small, None, None)  # smaller than the 4 MiB one: its own
    assert held() == large.nbytes
    np.testing.assert_array_equal(y_small, fresh_forward(small))


def address(a):
    return a.__array_interface__["data"][0]


def test_the_limit_drops_the_oldest_and_skips_what_never_fits(cache):
    fastbn.set_output_cache(5 * MiB)
    a, b, c = (fastbn.forward(data(2, seed=k), None, None)[0] for k in range(3))
    at_b, at_c = address(b), address(c)
    del a
    del b
    del c
    assert held() == 4 * MiB  # b and c: the limit is 5 MiB, a (the oldest) went
    big, _ = fastbn.forward(data(8), None, None)
    del big  # larger than the limit: freed, and the kept ones stay
    assert held() == 4 * MiB
    y1, _ = fastbn.forward(data(2), None, None)
    y2, _ = fastbn.forward(data(2), None, None)
    assert (address(y1), address(y2)) == (at_c, at_b)  # the newest first
    assert held() == 0


def test_a_zero_limit_frees_everything_and_keeps_nothing(cache):
    y, _ = fastbn.forward(data(2), None, None)
    del y
    assert held() == 2 * MiB
    assert fastbn.set_output_cache(0) == 64 * MiB
    assert held() == 0
    y, _ = fastbn.forward(data(2), None, None)
    del y
    assert held() == 0


def test_small_outputs_are_not_kept(cache):
    x = np.random.default_rng(1).standard_normal((4, 8, 16, 16)).astype(np.float32)
    y, _ = fastbn.forward(x, None, None)
    del y
    assert held() == 0


@pytest.mark.parametrize("kw", [dict(activation="leaky_relu"), dict(residual=True)])
def test_checked_path_outputs_go_through_it(cache, kw):
    x = data(2)
    if kw.get("residual"):
        kw = dict(residual=data(2, seed=3))
    y, c = fastbn.forward(x, np.ones(8), np.zeros(8), **kw)
    grads = fastbn.backward(data(2, seed=4), c)  # dx (and dresidual)
    outputs = 1 + sum(g.shape == x.shape for g in grads)
    del y, grads
    assert held() == outputs * x.nbytes


def test_backward_output_reuses_and_matches(cache):
    x, dy = data(2), data(2, seed=1)
    _, c = fastbn.forward(x, np.ones(8), np.zeros(8), out=np.empty_like(x))
    dx, _, _ = fastbn.backward(dy, c)
    expect = dx.copy()
    del dx
    assert held() == x.nbytes
    dx, _, _ = fastbn.backward(dy, c)
    assert held() == 0
    np.testing.assert_array_equal(dx, expect)


def test_an_output_outlives_a_limit_change_and_a_resize(cache):
    x = data(2)
    y, _ = fastbn.forward(x, None, None)
    expect = y.copy()
    fastbn.set_output_cache(0)
    np.testing.assert_array_equal(y, expect)  # still its own memory
    fastbn.set_output_cache(64 * MiB)
    flat = y.reshape(-1)
    del flat
    y.resize((y.size + 1000,), refcheck=False)  # NumPy reallocates through the allocator
    np.testing.assert_array_equal(y[:expect.size], expect.reshape(-1))
    nbytes = y.nbytes
    del y
    assert held() == nbytes


def test_threads_share_it_safely(cache):
    xs = [data(2, seed=k) for k in range(2)] + [data(3, seed=5)]
    expect = [fresh_forward(x) for x in xs]
    errors = []

    def work(k):
        try:
            for i in range(12):
                j = (k + i) % len(xs)
                y, _ = fastbn.forward(xs[j], None, None)
                if not np.array_equal(y, expect[j]):
                    errors.append((k, i))
                del y
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert held() <= 64 * MiB


@pytest.mark.skipif(not hasattr(os, "fork"), reason="POSIX fork")
def test_a_forked_child_allocates_and_frees(cache):
    x = data(2)
    y, _ = fastbn.forward(x, None, None)
    expect = y.copy()
    del y  # kept: the child inherits it
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        ok = held() == 0  # the parent's kept blocks are not the child's
        for _ in range(3):
            y, _ = fastbn.forward(x, None, None)
            ok = ok and np.array_equal(y, expect)
            del y
        os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert held() == x.nbytes  # still the parent's
    y, _ = fastbn.forward(x, None, None)
    np.testing.assert_array_equal(y, expect)


@pytest.mark.parametrize("bad, error", [(1.5, TypeError), (True, TypeError), ("1", TypeError),
                                        (None, TypeError), (-1, ValueError)])
def test_set_output_cache_rejects_bad_limits(cache, bad, error):
    with pytest.raises(error, match="max_bytes"):
        fastbn.set_output_cache(bad)
    assert fastbn.set_output_cache(64 * MiB) == 64 * MiB  # unchanged


def keeps_outputs():
    """Whether this build has the cache (not the AddressSanitizer build's)."""
    previous = fastbn.set_output_cache(MiB)
    return fastbn.set_output_cache(previous) == MiB


@pytest.mark.skipif(fastbn.backend == "c" and not keeps_outputs(), reason="no cache in this build")
@pytest.mark.parametrize("value, expect", [("12345", "12345"), ("0", "0")])
def test_environment_sets_the_default(value, expect):
    code = "import fastbn; print(fastbn.set_output_cache(0))"
    env = dict(os.environ, FASTBN_OUTPUT_CACHE=value)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == expect


def test_environment_rejects_a_bad_value():
    env = dict(os.environ, FASTBN_OUTPUT_CACHE="lots")
    out = subprocess.run([sys.executable, "-c", "import fastbn"], env=env, capture_output=True,
                         text=True)
    assert out.returncode != 0 and "FASTBN_OUTPUT_CACHE" in out.stderr
