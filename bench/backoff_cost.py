"""What the thread pool's back-off costs on this machine: 2-thread calls with the
back-off on (the default) and off, in alternating fresh processes.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/backoff_cost.py [--rounds 2]
        [--shapes 512x4096,64x64x56x56] [--pause 20]

Each process times inference, the training forward and the backward (float32, out=,
median of 15 samples of 20 calls) and reports the pool's counters over them (loops run
on the caller alone, loops whose worker shared the caller's CPU, late wake-ups) and the
machine's steal time (/proc/stat, in 10 ms ticks: time the hypervisor took from this
VM's CPUs). On a virtual machine whose CPUs lose milliseconds now and then, the pool's
time-based stall checks fire without any other process competing, and the back-off then
ran loops on one thread (src_c/parallel.c, README "busy machines"); since issue 17's
steal check, a slow loop backs off only if one of its threads waited in a run queue
(slow: loops slow by the time checks; stolen: those that kept their threads; moves:
workers that found themselves on the caller's CPU while another CPU was free, and left
it).
With --pause MS each sample follows a pause of MS milliseconds and one untimed call,
as a trainer's steps follow the loading of their batch: on a virtual machine the first
loop after a pause often stalls (its sleeping worker is woken onto the caller's CPU,
or waits for its virtual CPU), which the back-off must not take for a busy machine.
With --each, every call is a sample of its own after its pause, with no untimed call
first, as a trainer calls each layer once per step between other work (medians of 40).

    python bench/backoff_cost.py --build OLD_TREE   # also runs an older build's pool
"""
import argparse
import os
import subprocess
import sys

CHILD = r"""
import ctypes, sys, time
import numpy as np
import fastbn
from fastbn import _kernels
fastbn.set_num_threads(2)
if sys.argv[1] == "off":
    _kernels.pool_set_backoff(False)
lib = ctypes.CDLL(_kernels.__file__)
def counters():
    v = [ctypes.c_int64() for _ in range(6)]
    lib.fbn_pool_counters(ctypes.byref(v[0]), ctypes.byref(v[1]))
    lib.fbn_pool_late_counters(ctypes.byref(v[2]), ctypes.byref(v[3]))
    if hasattr(lib, "fbn_pool_slow_counters"):  # builds before issue 17's steal check: 0 0
        lib.fbn_pool_slow_counters(ctypes.byref(v[4]), ctypes.byref(v[5]))
    with open("/proc/stat") as f:
        steal = int(f.readline().split()[8])
    moves = 0
    if hasattr(lib, "fbn_pool_moves"):  # workers moved off the caller's CPU (a free CPU)
        lib.fbn_pool_moves.restype = ctypes.c_int64
        moves = lib.fbn_pool_moves()
    return [a.value for a in v] + [steal, moves]
shape = tuple(int(n) for n in sys.argv[2].split("x"))
pause = float(sys.argv[3]) / 1e3
each = sys.argv[4] == "each"
samples, calls = (40, 1) if each else (15, 20)  # --each: one call a sample
x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
C = shape[1]
g, b = np.ones(C, np.float32), np.zeros(C, np.float32)
rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
y, dx, dg, db = np.empty_like(x), np.empty_like(x), np.empty_like(g), np.empty_like(b)
dy = np.cos(x)
_, cache = fastbn.forward(x, g, b, out=y)
ops = [("inference", lambda: fastbn.forward(x, g, b, running_mean=rm, running_var=rv,
                                            training=False, out=y)),
       ("forward", lambda: fastbn.forward(x, g, b, running_mean=rm, running_var=rv, out=y)),
       ("backward", lambda: fastbn.backward(dy, cache, out=(dx, dg, db)))]
c0 = counters()
for name, f in ops:
    f()
    v = []
    for _ in range(samples):
        if pause:
            time.sleep(pause)
            if not each:
                f()
        t = time.perf_counter()
        for _ in range(calls):
            f()
        v.append((time.perf_counter() - t) / calls)
    print(f"{name} {np.median(v) * 1e3:.3f}", end=" ")
c1 = counters()
print("| alone %d shared %d late %d/%d slow %d stolen %d steal_ticks %d moves %d"
      % tuple(b - a for a, b in zip(c0, c1)))
"""


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--shapes", default="512x4096,64x64x56x56")
    ap.add_argument("--pause", type=float, default=0.0,
                    help="milliseconds of pause before each sample (and one untimed call)")
    ap.add_argument("--each", action="store_true",
                    help="time each call alone after its pause, without the untimed call")
    ap.add_argument("--build", help="a tree with an older in-place build: its pool, back-off on, "
                    "runs third in each round")
    a = ap.parse_args()
    print(f"load average {os.getloadavg()[0]:.2f}; ms per call, float32, 2 threads"
          + (f"; a pause of {a.pause:g} ms before each sample" if a.pause else "")
          + ("; each call a sample alone" if a.each else ""))
    runs = [("on", "on", None), ("off", "off", None)]
    if a.build:
        runs.append(("on", "old on", {**os.environ, "PYTHONPATH": os.path.abspath(a.build)}))
    for shape in a.shapes.split(","):
        for r in range(a.rounds):
            for mode, label, env in runs:
                out = subprocess.run([sys.executable, "-c", CHILD, mode, shape, str(a.pause),
                                      "each" if a.each else "batch"],
                                     env=env,
                                     cwd=env and env["PYTHONPATH"],  # not this tree's fastbn
                                     capture_output=True, text=True, check=True).stdout
                print(f"{shape:>14} back-off {label:6s}  {out.strip()}", flush=True)


if __name__ == "__main__":
    main()
