"""The thread count follows set_num_threads, FASTBN_NUM_THREADS and an OpenMP limit
set from outside (threadpoolctl)."""
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
def test_threadpoolctl_limit_caps_fastbn(restore_threads):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    fastbn.set_num_threads(2)
    if fastbn.get_num_threads() < 2:
        pytest.skip("fewer than 2 OpenMP threads available here")
    with threadpoolctl.threadpool_limits(1, user_api="openmp"):
        assert fastbn.get_num_threads() == 1
    assert fastbn.get_num_threads() == 2
