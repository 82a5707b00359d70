"""When a call wakes the pool's sleeping workers (fbn_pool_threads, parallel.c).

A call smaller than FASTBN_WAKE_VALUES values runs on the caller alone when every worker
sleeps (after a pause, as between a trainer's layers: a wake-up costs more than such a
call), on threads when a worker is still awake or such calls come back to back (each
beginning within a worker's spin of the last loop's end); a larger
call always wakes them. The results are the 1-thread bits either way. The pool's count
of loops published to workers (fbn_pool_loops, through ctypes) says which ran on
threads. Each case runs in a fresh Python process with the rule's default on (the other
tests turn it off: tests/conftest.py).
"""
import os
import subprocess
import sys
import textwrap

import pytest

import fastbn

pytestmark = pytest.mark.skipif(fastbn.backend != "c", reason="the C backend's pool")

CHILD = textwrap.dedent("""
    import ctypes, time
    import numpy as np
    import fastbn
    from fastbn import _kernels

    lib = ctypes.CDLL(_kernels.__file__)
    if _kernels.pool_kind() != "pthreads" or not hasattr(lib, "fbn_pool_loops"):
        print("SKIP no pthreads pool")
        raise SystemExit(0)
    lib.fbn_pool_loops.restype = ctypes.c_int64
    _kernels.pool_set_backoff(False)  # the rule alone decides: no stall runs loops alone
    rng = np.random.default_rng(3)
    small = rng.standard_normal((256, 512)).astype(np.float32)  # 131072 values
    large = rng.standard_normal((1024, 1024)).astype(np.float32)  # 1048576 values

    def call(x, dy):
        C = x.shape[1]
        y, cache = fastbn.forward(x, GAMMA[C], BETA[C])
        return [y] + list(fastbn.backward(dy, cache))

    def same(a, b):
        return all(u.tobytes() == v.tobytes() for u, v in zip(a, b))

    GAMMA = {C: np.linspace(0.5, 2, C) for C in (512, 1024)}
    BETA = {C: np.linspace(-1, 1, C) for C in (512, 1024)}
    dys = {"small": (np.cos(small) * np.linspace(1, 3, 512)).astype(np.float32),
           "large": (np.cos(large) * np.linspace(1, 3, 1024)).astype(np.float32)}

    tiny = small[:128]  # 65536 values: the least that runs on threads at all
    fastbn.set_num_threads(1)
    want = fastbn.forward(tiny, GAMMA[512], BETA[512])[0].tobytes()
    expected = {"small": call(small, dys["small"]), "large": call(large, dys["large"])}
    fastbn.set_num_threads(2)

    n0 = lib.fbn_pool_loops()
    assert same(call(large, dys["large"]), expected["large"])
    big = lib.fbn_pool_loops() - n0

    n0 = lib.fbn_pool_loops()
    for i in range(5):
        time.sleep(0.02)  # the workers spin 100 us after a loop, then sleep
        assert same(call(small, dys["small"]), expected["small"]), i
    cold = lib.fbn_pool_loops() - n0

    # back to back: forwards of the tiny array
    dense, per_call = 0, float("inf")
    for _ in range(5):  # rounds: another process may hold the CPU for one
        n0 = lib.fbn_pool_loops()
        t0 = time.perf_counter()
        for i in range(200):
            y = fastbn.forward(tiny, GAMMA[512], BETA[512])[0]
        per_call = min(per_call, (time.perf_counter() - t0) / 200)
        assert y.tobytes() == want
        dense = lib.fbn_pool_loops() - n0
        if dense:
            break
    import io
    shown = io.StringIO()
    fastbn.show_config(file=shown)
    line = [ln for ln in shown.getvalue().splitlines() if "wake-up:" in ln][0]
    print(big, cold, dense, per_call, _kernels.pool_wake_values())
    print(line)
""")


def run_child(wake_values):
    env = {k: v for k, v in os.environ.items() if k != "FASTBN_WAKE_VALUES"}
    env["FASTBN_WAKE_VALUES"] = wake_values
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True,
                         timeout=240, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    if out.stdout.startswith("SKIP"):
        pytest.skip(out.stdout.strip())
    numbers, shown = out.stdout.splitlines()[:2]
    big, cold, dense, per_call, limit = numbers.split()
    # the limit the pool read from the environment, and show_config's words for it
    assert int(limit) == int(wake_values)
    assert (f"under {wake_values} values" if int(wake_values) else "FASTBN_WAKE_VALUES=0") \
        in shown, shown
    return int(big), int(cold), int(dense), float(per_call)


def test_small_calls_wake_no_sleeping_worker_unless_they_come_back_to_back():
    big, cold, dense, per_call = run_child("1000000")  # between the sizes, whatever the default
    assert big > 0, "a call over FASTBN_WAKE_VALUES ran on the caller alone"
    assert cold == 0, "a small call after a pause woke the sleeping workers"
    if per_call > 1e-3:  # a very slow build: its calls' Python alone over 100 us
        pytest.skip(f"calls of {per_call * 1e6:.0f} us do not come back to back here")
    assert dense > 0, "small calls back to back never ran on threads"


def test_wake_values_zero_wakes_the_workers_for_every_call():
    big, cold, dense, per_call = run_child("0")
    assert big > 0 and dense > 0
    assert cold > 0, "FASTBN_WAKE_VALUES=0: a small call after a pause ran alone"
