"""Forked children work, with the parent's thread count, and never hang (issue 13, part 1).

Before fastbn had its own thread pool, a child forked after the parent had run a
multi-threaded (OpenMP) call hung in its first multi-threaded call: os.fork,
multiprocessing with the fork start method, ProcessPoolExecutor, nested forks, and a
fork while another thread was inside fastbn. Each case runs in a separate Python process
(its own session, killed whole on timeout) and its children's results must equal the
parent's bitwise.
"""
import os
import signal
import subprocess
import sys
import textwrap

import pytest

import fastbn

pytestmark = pytest.mark.skipif(not hasattr(os, "fork") or fastbn.backend != "c",
                                reason="fork and the C backend's threads")

TIMEOUT = float(os.environ.get("FASTBN_FORK_TEST_TIMEOUT", "90"))

# Shared by every case: work on 2 threads large enough to take several tiles (float32
# rows shape, float64 columns shape), forward and backward, as bytes to compare.
PRELUDE = textwrap.dedent("""
    import os, sys
    import numpy as np
    import fastbn

    fastbn.set_num_threads(2)
    rng = np.random.default_rng(0)
    DATA = [(rng.standard_normal((256, 64, 32)).astype(np.float32), 1),
            (rng.standard_normal((500, 800)), 1)]

    def work(_=None):
        out = []
        for x, axis in DATA:
            y, cache = fastbn.forward(x, np.full(x.shape[axis], 1.5), np.ones(x.shape[axis]),
                                      axis=axis)
            dx, dgamma, dbeta = fastbn.backward(y, cache)
            out += [a.tobytes() for a in (y, dx, dgamma, dbeta)]
        return out

    def child_exit(expected):
        # in a forked child: 0 if work() equals the parent's bitwise on 2 threads
        ok = work() == expected and fastbn.get_num_threads() == 2
        os._exit(0 if ok else 3)

    EXPECTED = work()
""")


def run_isolated(body):
    """Run PRELUDE + body in a fresh Python; fail on a non-zero exit or a hang."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(fastbn.__file__)))
    env = {**os.environ, "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-c", PRELUDE + textwrap.dedent(body)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the hung children too
        proc.communicate()
        pytest.fail(f"hung: no answer within {TIMEOUT:.0f} s")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{out}\n{err}"
    assert out.strip().endswith("ok"), out


def test_os_fork_after_a_threaded_call():
    run_isolated("""
        pid = os.fork()
        if pid == 0:
            child_exit(EXPECTED)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        assert work() == EXPECTED  # the parent's pool still works
        print("ok")
    """)


def test_multiprocessing_pool_with_fork():
    run_isolated("""
        import multiprocessing
        with multiprocessing.get_context("fork").Pool(2) as pool:
            results = pool.map(work, range(4))
        assert all(r == EXPECTED for r in results)
        print("ok")
    """)


def test_process_pool_executor_with_fork():
    run_isolated("""
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        with ProcessPoolExecutor(2, mp_context=multiprocessing.get_context("fork")) as ex:
            results = list(ex.map(work, range(4)))
        assert all(r == EXPECTED for r in results)
        print("ok")
    """)


def test_nested_fork():
    run_isolated("""
        pid = os.fork()
        if pid == 0:
            if work() != EXPECTED:
                os._exit(3)
            grandchild = os.fork()
            if grandchild == 0:
                child_exit(EXPECTED)
            _, status = os.waitpid(grandchild, 0)
            os._exit(os.waitstatus_to_exitcode(status))
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, status
        print("ok")
    """)


def test_fork_while_another_thread_is_inside_fastbn():
    run_isolated("""
        import threading, time
        big = np.random.default_rng(1).standard_normal((64, 64, 56, 56))
        stop = threading.Event()
        inside = threading.Event()

        def busy():
            while not stop.is_set():
                inside.set()
                fastbn.forward(big)  # ~0.1 s each, mostly inside the kernels

        t = threading.Thread(target=busy)
        t.start()
        inside.wait()
        try:
            for delay in (0.0, 0.01, 0.03, 0.05, 0.08):
                time.sleep(delay)
                pid = os.fork()
                if pid == 0:
                    child_exit(EXPECTED)
                _, status = os.waitpid(pid, 0)
                assert os.waitstatus_to_exitcode(status) == 0, (delay, status)
        finally:
            stop.set()
            t.join()
        assert work() == EXPECTED
        print("ok")
    """)
