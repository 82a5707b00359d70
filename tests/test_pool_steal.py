"""Time the pool's threads lose without another task taking their CPU (issue 17).

A hypervisor that takes a virtual CPU (steal) makes loops slow by the pool's time
checks, yet running alone would not avoid it: the pool keeps its threads unless a
thread of the loop waited in a run queue (src_c/parallel.c, FBN_QUEUED_NS). Stopping
the process (SIGSTOP, SIGCONT) 2 ms in every 20 ms is the model of steal here; busy
processes on every CPU are the model of a busy machine. Both are logic, not timing:
the pool's counters (fbn_pool_slow_counters, read through ctypes) say how it judged
its slow loops. The back-off is off in both, so that every loop is published and
judged; each child checks every result against its 1-thread bits.
"""
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import fastbn

pytestmark = pytest.mark.skipif(fastbn.backend != "c" or not sys.platform.startswith("linux"),
                                reason="Linux run queues (schedstat) and the C backend")

CHILD = textwrap.dedent("""
    import ctypes, sys, time
    import numpy as np
    import fastbn
    from fastbn import _kernels

    lib = ctypes.CDLL(_kernels.__file__)
    if not hasattr(lib, "fbn_pool_slow_counters") or _kernels.pool_kind() != "pthreads":
        print("SKIP no pthreads pool", flush=True)
        raise SystemExit(0)

    def slow_counters():
        slow, stolen = ctypes.c_int64(), ctypes.c_int64()
        lib.fbn_pool_slow_counters(ctypes.byref(slow), ctypes.byref(stolen))
        return slow.value, stolen.value

    # loops of milliseconds, so that a stop or a preemption lands inside them
    x = (np.random.default_rng(5).standard_normal((16, 32, 40, 40)) * 3 + 100).astype(np.float32)
    gamma, beta = np.linspace(0.5, 2, 32, dtype=np.float32), np.zeros(32, np.float32)

    def run():
        y, cache = fastbn.forward(x, gamma, beta)
        return [a.tobytes() for a in (y, *fastbn.backward(np.cos(x), cache))]

    fastbn.set_num_threads(1)
    expected = run()
    fastbn.set_num_threads(2)
    _kernels.pool_set_backoff(False)
    assert run() == expected
    print("ready", flush=True)
    end = time.monotonic() + float(sys.argv[1])
    calls = 0
    while time.monotonic() < end:
        assert run() == expected, f"call {calls}"
        calls += 1
    print(*slow_counters(), calls, flush=True)
""")


def run_child(seconds, during):
    """Runs CHILD for `seconds` of 2-thread calls, calling during(proc) meanwhile;
    returns (slow loops, stolen loops, calls)."""
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(seconds)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        first = proc.stdout.readline()
        if first.startswith("SKIP"):
            proc.wait(timeout=60)
            pytest.skip(first.strip())
        assert first.strip() == "ready", first + proc.stderr.read()
        during(proc)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, out + err
    slow, stolen, calls = map(int, out.split())
    return slow, stolen, calls


def test_a_stopped_process_keeps_its_threads():
    # every stop lands in a loop or between two; the loops it lands in are slow, and
    # none of their threads waited in a run queue for it: at least one such loop must
    # be judged stolen (all were stalls before this check existed)
    def pulse(proc):
        while proc.poll() is None:
            time.sleep(0.018)
            try:
                os.kill(proc.pid, signal.SIGSTOP)
                time.sleep(0.002)
                os.kill(proc.pid, signal.SIGCONT)
            except ProcessLookupError:
                break

    slow, stolen, calls = run_child(1.5, pulse)
    assert calls > 0
    assert slow > 0, "no loop was slow under the stops"
    assert stolen > 0, (slow, stolen)


def test_a_busy_machine_is_not_taken_for_steal():
    # a busy process on every CPU: threads of slow loops wait in run queues, and the pool
    # must see it in at least one of them (judging all of them stolen would leave a
    # busy machine without its back-off)
    busy = [subprocess.Popen([sys.executable, "-c", "import time\nend = time.monotonic() + 30\n"
                              "while time.monotonic() < end: pass"])
            for _ in range(len(os.sched_getaffinity(0)))]
    try:
        slow, stolen, calls = run_child(1.5, lambda proc: None)
    finally:
        for p in busy:
            p.kill()
            p.wait()
    assert calls > 0
    assert slow > 0, "no loop was slow on a busy machine"
    assert stolen < slow, (slow, stolen)
