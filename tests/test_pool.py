"""The thread pool on a machine with no free CPU for its workers (issue 13, part 2).

A process confined to one CPU is the extreme of a busy machine: a worker the pool wakes
can only run when the caller is off that CPU. Every result must still equal the
1-thread result bitwise (whichever thread ran which tile, and however the scheduler
interleaved them), and the pool must notice that its worker ran on the caller's CPU and
back off to the caller alone. Both are logic, not timing: the pool's own counters
(fbn_pool_counters, read through ctypes) say what it did. Each case runs in a separate
Python process, pinned to one CPU before fastbn starts its workers (threads inherit the
affinity), with a timeout.
"""
import os
import subprocess
import sys
import textwrap

import pytest

import fastbn

pytestmark = pytest.mark.skipif(fastbn.backend != "c" or not hasattr(os, "sched_setaffinity"),
                                reason="Linux CPU affinity and the C backend")

PRELUDE = textwrap.dedent("""
    import ctypes, os, time
    import numpy as np
    os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # before any worker exists
    import fastbn
    from fastbn import _kernels

    lib = ctypes.CDLL(_kernels.__file__)
    if not hasattr(lib, "fbn_pool_counters") or _kernels.pool_kind() != "pthreads":
        print("SKIP no pthreads pool")
        raise SystemExit(0)

    def counters():
        alone, shared = ctypes.c_int64(), ctypes.c_int64()
        lib.fbn_pool_counters(ctypes.byref(alone), ctypes.byref(shared))
        return alone.value, shared.value

    def late_counters():
        wakes, loops = ctypes.c_int64(), ctypes.c_int64()
        lib.fbn_pool_late_counters(ctypes.byref(wakes), ctypes.byref(loops))
        return wakes.value, loops.value

    rng = np.random.default_rng(5)
    if os.environ.get("POOL_TEST_DATA") == "small":
        # loops of tens of microseconds: the caller is off its CPU only briefly
        DATA = [(rng.standard_normal((256, 256)), 1)]
    else:
        # loops of milliseconds each, so that the scheduler switches between the caller
        # and its worker inside loops; a rows shape and a (N, C, H, W) shape
        DATA = [(rng.standard_normal((2000, 600)) * 3 + 100, 1),
                (rng.standard_normal((16, 32, 40, 40)).astype(np.float32), 1)]

    def run():
        out = []
        for x, axis in DATA:
            C = x.shape[axis]
            gamma, beta = np.linspace(0.5, 2, C), np.linspace(-1, 1, C)
            y, cache = fastbn.forward(x, gamma, beta, axis=axis, activation="relu")
            dx, dg, db = fastbn.backward(np.cos(x), cache)
            out += [a.tobytes() for a in (y, dx, dg, db)]
        return out

    def run_until(read, tries, pause=0.0):
        # run() (each result checked against the 1-thread bits) until both counters
        # read() returns are positive, or `tries` calls; prints and returns them
        for i in range(tries):
            assert run() == expected, f"call {i}"
            if pause:
                time.sleep(pause)  # the caller leaves the CPU: a woken worker runs
            a, b = read()
            if a > 0 and b > 0:
                break
        print(a, b)
        return a, b

    fastbn.set_num_threads(1)
    expected = run()
    fastbn.set_num_threads(2)
""")


def run_case(body, data="large", timeout=240):
    code = PRELUDE + textwrap.dedent(body)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=timeout, env={**os.environ, "POOL_TEST_DATA": data})
    assert out.returncode == 0, out.stdout + out.stderr
    if out.stdout.startswith("SKIP"):
        pytest.skip(out.stdout.strip())
    return out.stdout


def test_worker_on_the_callers_cpu_makes_the_pool_back_off_with_the_same_bits():
    # until its worker first runs a tile (on the one CPU there is), the pool runs loops
    # on two threads; from then on it backs off (loops on the caller alone); results
    # are the 1-thread results bitwise throughout
    out = run_case("""
        alone, shared = run_until(counters, 300)
        assert shared > 0, "the worker never ran a tile on the caller's CPU"
        assert alone > 0, "the pool did not back off after sharing a CPU"
        for i in range(5):
            assert run() == expected
    """)
    alone, shared = map(int, out.split())
    assert alone > 0 and shared > 0


def test_short_loops_back_off_soon_after_a_loop_shares_the_cpu():
    # loops of tens of microseconds can keep the caller off its CPU too briefly for the
    # pool's time-based stall checks; a worker that ran a tile on the caller's CPU is a
    # stall, and a second stall soon after the first (another such loop, or a loop slow
    # by the time checks) makes the next loops run on the caller alone (without that
    # check, 28 to 189 loops shared the CPU before the first back-off in some runs here,
    # 1 in others: the time-based checks fire or not depending on the machine's load).
    # At most 4 allows for the strike and a back-off that expired while the process
    # waited for a CPU.
    out = run_case("""
        run_until(counters, 3000)
        assert run() == expected
    """, data="small")
    alone, shared = map(int, out.split())
    assert alone > 0 and 1 <= shared <= 4, (alone, shared)


def test_a_worker_woken_after_its_loop_ended_flags_the_next_loop():
    # the caller finishes a short loop before its worker, woken onto the same (only) CPU,
    # first runs; the worker then runs while the caller sleeps, finds nothing left to
    # claim and goes back to sleep at once (no spin on the caller's CPU) after flagging
    # the caller's next loop, which starts a back-off. Back-off off: every loop is still
    # published, so the count of late wake-ups keeps growing; the bits never change.
    out = run_case("""
        _kernels.pool_set_backoff(False)
        run_until(late_counters, 300, pause=0.001)
        assert run() == expected
    """, data="small")
    wakes, loops = map(int, out.split())
    assert wakes > 0 and loops > 0, (wakes, loops)


def test_one_cpu_without_back_off_interleaves_threads_with_the_same_bits():
    # back-off off: every loop is published to the worker, which runs tiles whenever the
    # scheduler switches to it (mid-loop, on the caller's CPU); the bits never change
    out = run_case("""
        _kernels.pool_set_backoff(False)
        for i in range(40):
            assert run() == expected, f"call {i}"
        alone, shared = counters()
        print(alone, shared)
        assert alone == 0
    """)
    alone, shared = map(int, out.split())
    assert alone == 0


def test_contention_benchmark_runs_and_reports_its_control():
    # bench/contention.py (the busy-machine table in the README): a short run with a busy
    # loop on every other core prints the per-run figures and the summary tables
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                          "contention.py")
    if not os.path.exists(script):
        pytest.skip("bench/contention.py is not in this tree")
    out = subprocess.run([sys.executable, script, "--loads", "0,0.5", "--runs", "1", "--calls",
                          "3", "--shapes", "16x8,64x1024", "--max-seconds", "60"],
                         capture_output=True, text=True, timeout=240)
    assert out.returncode == 0, out.stderr
    for text in ("control", "own-cpu", "load 0.5/core  run 1  (64, 1024)",
                 "worst over 1 runs: control: 1 thread / 1 thread", "mean of all 3 calls"):
        assert text in out.stdout, text


def test_an_isolated_stall_is_a_strike_and_a_second_soon_after_backs_off():
    # the back-off's rule (src_c/parallel.c, FBN_STRIKE_NS / FBN_STRIKE_LOOPS) through its
    # test entry fbn_pool_stall_at(now, loops since the last call): a system task that
    # takes a CPU for 2 ms every 512 ms (seen on an AMD EPYC guest) must not start
    # back-offs; stalls close in time or in loops must, and doubling goes on as before
    code = textwrap.dedent("""
        import ctypes, time
        from fastbn import _kernels
        lib = ctypes.CDLL(_kernels.__file__)
        if _kernels.pool_kind() != "pthreads":
            print("SKIP no pthreads pool")
            raise SystemExit(0)
        f = lib.fbn_pool_stall_at
        f.restype, f.argtypes = ctypes.c_int64, [ctypes.c_int64, ctypes.c_int64]
        ms = 1000000
        t = time.monotonic_ns()
        got = [f(t, 1)]                       # a strike
        for k in range(1, 6):                 # every 512 ms, 500 loops apart: strikes
            got.append(f(t + 512 * ms * k, 500))
        t += 3000 * ms
        got.append(f(t, 500))                 # a strike
        got.append(f(t + 20 * ms, 30))        # 20 ms later: a back-off
        got.append(f(t + 90 * ms, 30))        # within 4 back-offs of it: doubled
        got.append(f(t + 200 * ms, 30))       # and again
        t += 10000 * ms
        got.append(f(t, 500))                 # quiet since: a strike
        got.append(f(t + 900 * ms, 16))       # 900 ms but 16 loops later: a back-off
        print(" ".join(str(v // ms) for v in got))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    if out.stdout.startswith("SKIP"):
        pytest.skip(out.stdout.strip())
    assert out.stdout.split() == "0 0 0 0 0 0 0 50 100 200 0 50".split()
