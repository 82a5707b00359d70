"""fastbn on a busy machine: forward + backward with the default threads vs 1 thread.

Starts its own busy processes (plain Python loops, `--loads` of them per core; each
also ends by itself after `--max-seconds`, and all are killed at the end), then times
forward + backward (training, gamma/beta, float64, `out=` buffers) on each shape,
alternating one call with the default thread count and one with 1 thread, and prints
the medians of `--calls` calls of each and their ratio, for `--runs` runs per load.
Load 0 is the quiet machine. A ratio near 1 under load means the default threads cost
nothing there; a stalled thread pool shows as a large ratio.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/contention.py       # ~2-4 min
    python bench/contention.py --loads 2 --runs 1 --shapes 256x256                 # one case
"""
import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np

import fastbn

SHAPES = ["256x256", "500x800", "32x16x16x32", "64x64x56x56"]
BUSY = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end: pass\n"


def parse_shape(text):
    return tuple(int(n) for n in text.split("x"))


def start_busy(count, seconds):
    code = BUSY.format(seconds=seconds)
    return [subprocess.Popen([sys.executable, "-c", code]) for _ in range(count)]


def stop_busy(procs):
    for p in procs:
        p.kill()
    for p in procs:
        p.wait()


def one_call(x, dy, gamma, beta, y, dx):
    t0 = time.perf_counter()
    _, cache = fastbn.forward(x, gamma, beta, out=y)
    fastbn.backward(dy, cache, out=dx)
    return time.perf_counter() - t0


def time_shape(shape, calls, threads, rng):
    """Medians (seconds) of calls with `threads` threads and with 1, alternated."""
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    gamma = rng.standard_normal(shape[1]) + 1.0
    beta = rng.standard_normal(shape[1])
    y, dx = np.empty_like(x), np.empty_like(x)
    samples = {threads: [], 1: []}
    previous = fastbn.set_num_threads(threads)
    try:
        for n in (threads, 1):  # untimed: first-touch of the buffers, pool start-up
            fastbn.set_num_threads(n)
            one_call(x, dy, gamma, beta, y, dx)
        for i in range(calls):
            for n in ((threads, 1) if i % 2 == 0 else (1, threads)):
                fastbn.set_num_threads(n)
                samples[n].append(one_call(x, dy, gamma, beta, y, dx))
    finally:
        fastbn.set_num_threads(previous)
    return statistics.median(samples[threads]), statistics.median(samples[1])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loads", default="0,1,2",
                    help="busy loops per core, comma-separated (0: quiet); default 0,1,2")
    ap.add_argument("--runs", type=int, default=3, help="runs per load (default 3)")
    ap.add_argument("--calls", type=int, default=15, help="calls per median (default 15)")
    ap.add_argument("--shapes", default=",".join(SHAPES), help="comma-separated, e.g. 256x256")
    ap.add_argument("--threads", type=int, default=fastbn.get_num_threads(),
                    help="the default thread count to compare with 1 (default: fastbn's)")
    ap.add_argument("--max-seconds", type=float, default=900.0,
                    help="busy processes end by themselves after this long (default 900)")
    args = ap.parse_args(argv)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    shapes = [parse_shape(s) for s in args.shapes.split(",")]
    loads = [int(n) for n in args.loads.split(",")]
    rng = np.random.default_rng(0)
    print(f"fastbn {fastbn.__version__} ({fastbn.backend}), {cores} cores; forward + backward "
          f"float64, medians of {args.calls} calls; {args.threads} threads vs 1")
    fastbn.show_config()
    worst = {}
    for load in loads:
        for run in range(args.runs):
            busy = start_busy(load * cores, args.max_seconds)
            try:
                time.sleep(0.2)  # let the busy loops start
                for shape in shapes:
                    t_n, t_1 = time_shape(shape, args.calls, args.threads, rng)
                    ratio = t_n / t_1
                    key = (load, shape)
                    worst[key] = max(worst.get(key, 0.0), ratio)
                    print(f"load {load}/core  run {run + 1}  {str(shape):18s} "
                          f"{args.threads} threads {t_n * 1e3:9.3f} ms   1 thread "
                          f"{t_1 * 1e3:9.3f} ms   ratio {ratio:6.2f}", flush=True)
            finally:
                stop_busy(busy)
    print(f"\nworst ratio over {args.runs} runs ({args.threads} threads / 1 thread; "
          "below 1 = faster with threads)")
    print(f"{'shape':18s} " + " ".join(f"{f'load {n}/core':>12s}" for n in loads))
    for shape in shapes:
        print(f"{str(shape):18s} " + " ".join(f"{worst[(n, shape)]:12.2f}" for n in loads))


if __name__ == "__main__":
    main()
