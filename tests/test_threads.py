"""The thread count follows set_num_threads and FASTBN_NUM_THREADS; an OpenMP limit set
from outside (threadpoolctl) caps it only in a build whose pool is OpenMP."""
import os
import subprocess
import sys

import pytest

import fastbn

needs_c = pytest.mark.skipif(fastbn.backend != "c", reason="threads are the C backend's")


def run_python(code, **env):
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, **env},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@needs_c
def test_environment_variable_sets_the_default():
    assert run_python("import fastbn; print(fastbn.get_num_threads())",
                      FASTBN_NUM_THREADS="1") == "1"


def test_bad_environment_variable_is_a_clear_error():
    out = subprocess.run([sys.executable, "-c", "import fastbn"], capture_output=True, text=True,
                         env={**os.environ, "FASTBN_NUM_THREADS": "many"}, timeout=120)
    assert out.returncode != 0 and "FASTBN_NUM_THREADS" in out.stderr


@needs_c
def test_threadpoolctl_openmp_limit_caps_only_an_openmp_pool(restore_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from fastbn._threads import build_info
    fastbn.set_num_threads(2)
    if fastbn.get_num_threads() < 2:
        pytest.skip("fewer than 2 threads available here")
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        # fastbn's POSIX-threads pool is not OpenMP: the limit is not its to obey
        assert fastbn.get_num_threads() == (1 if build_info()["pool"] == "openmp" else 2)
    assert fastbn.get_num_threads() == 2


@needs_c
def test_show_config_names_the_thread_pool():
    import io
    out = io.StringIO()
    fastbn.show_config(file=out)
    assert "thread pool:" in out.getvalue() and "openmp:" in out.getvalue()


@needs_c
def test_show_config_reports_the_run_time_facts():
    # the facts the kernels tune by, as the kernels read them: an override shows
    import io
    from fastbn import _kernels
    before = _kernels.cache_sizes()
    try:
        _kernels._set_cache_sizes(48 * 1024, 1280 * 1024, 96 * 2**20)
        out = io.StringIO()
        fastbn.show_config(file=out)
    finally:
        _kernels._set_cache_sizes(*before)
    text = out.getvalue()
    assert "caches:        L1d 48 KB, L2 1.25 MB, L3 96 MB" in text
    half = _kernels.half_conversions()
    assert half in ("AVX-512F + AVX512_BF16", "AVX-512F", "F16C + AVX2", "portable")
    assert f"half data:     float16 / bfloat16 conversions by {half}" in text


@pytest.fixture
def no_backoff():
    # a busy machine makes the pool run loops on the caller alone for a while: not here
    from fastbn import _kernels
    previous = _kernels.pool_set_backoff(False)
    yield
    _kernels.pool_set_backoff(previous)


@needs_c
@pytest.mark.parametrize("shape, axis", [((500, 800), 1), ((32, 16, 16, 32), 1),
                                         ((40, 3000), 1), ((4, 8, 64, 64), -1)])
def test_any_thread_count_gives_the_same_bits(restore_threads, no_backoff, shape, axis):
    # tiles are claimed by whichever thread is free, so the tile -> thread mapping differs
    # from run to run; results are merged by tile index and must not
    import numpy as np
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape) * 3 + 1e3
    dy = rng.standard_normal(shape)
    C = shape[axis]
    gamma, beta = rng.standard_normal(C), rng.standard_normal(C)

    def run():
        y, cache = fastbn.forward(x, gamma, beta, axis=axis, activation="relu")
        dx, dg, db = fastbn.backward(dy, cache)
        stats = fastbn.batch_stats(x.astype(np.float32), axis=axis)
        return [np.asarray(a).tobytes() for a in (y, dx, dg, db, *stats)]

    fastbn.set_num_threads(1)
    expected = run()
    for n in (2, 3, 5, 8, 2, 3):
        fastbn.set_num_threads(n)
        for _ in range(3):
            assert run() == expected, f"threads={n}"
