"""fastbn on a busy machine: forward + backward with the default threads vs 1 thread.

Starts its own busy processes (plain Python loops, `--loads` of them per core; each
also ends by itself after `--max-seconds`, and all are killed at the end), then times
forward + backward (training, gamma/beta, float64, `out=` buffers) on each shape,
alternating one call with the default thread count, one with 1 thread and one more with
1 thread (the control), in a rotating order, and prints the medians of `--calls` calls
of each and their ratios, for `--runs` runs per load. Load 0 is the quiet machine.

Three figures per run:
  ratio    default threads / 1 thread, medians of wall-clock times (issue 13's figure);
  control  1 thread / 1 thread, the same: what the scheduler alone does to that figure.
           On a busy machine the scheduler takes the CPU from this process for whole
           ticks (4 ms at HZ=250) in about half the calls, so a median of 15 calls falls
           on either side at random: a control far from 1 says the run cannot tell;
  own-cpu  default threads / 1 thread, medians of each call's time less the time its
           calling thread waited for a CPU while runnable (Linux schedstat): the waits
           the scheduler imposes on any process. Time the caller slept waiting for a
           worker stays in, and so does, for each such sleep, the mean wait per
           switch of that call (its wait for a CPU after the sleep, estimated: waits
           are split over the call's voluntary and involuntary switches by count).
           Its control beside it.
A stalled thread pool shows as a large ratio with a control near 1, and as a large
own-cpu ratio.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/contention.py       # ~3-6 min
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


class ThreadClock:
    """The calling thread's run-queue wait (ns, runnable but not running) and its
    voluntary (sleeps) and involuntary context switches, from Linux's /proc; zeros
    elsewhere."""

    def __init__(self):
        try:
            self.schedstat = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
            self.status = os.open("/proc/thread-self/status", os.O_RDONLY)
            self.wait(), self.switches()
        except (OSError, ValueError, IndexError):
            self.schedstat = None

    def wait(self):
        return int(os.pread(self.schedstat, 256, 0).split()[1]) if self.schedstat else 0

    def switches(self):
        if not self.schedstat:
            return 0, 0
        text = os.pread(self.status, 8192, 0)
        return tuple(int(text.split(b"\n" + name + b":")[1].split()[0])
                     for name in (b"voluntary_ctxt_switches", b"nonvoluntary_ctxt_switches"))


def one_call(x, dy, gamma, beta, y, dx, clock):
    """(wall seconds, wall less the run-queue wait not attributed to sleeps)."""
    s0 = clock.switches()
    t0 = time.perf_counter()
    w0 = clock.wait()  # read inside: every wait counted lies within t0..t1
    _, cache = fastbn.forward(x, gamma, beta, out=y)
    fastbn.backward(dy, cache, out=dx)
    w1 = clock.wait()
    t1 = time.perf_counter()
    wall = t1 - t0
    sleeps, preempted = (b - a for a, b in zip(s0, clock.switches()))
    wait = (w1 - w0) * 1e-9
    if sleeps > 0:  # keep a share of the waits per sleep (the wait to run again after it)
        wait *= preempted / (sleeps + preempted) if preempted > 0 else 0.0
    return wall, max(wall - wait, 0.0)


# the order of the three settings in call group i: every setting in every position
ORDERS = [(0, 1, 2), (1, 2, 0), (2, 0, 1), (0, 2, 1), (2, 1, 0), (1, 0, 2)]


def time_shape(shape, calls, threads, rng, clock):
    """Samples {setting: [(wall, own-cpu), ...]} of `calls` calls each, settings 0
    (`threads` threads), 1 and 2 (1 thread each) in rotating order."""
    x = rng.standard_normal(shape)
    dy = rng.standard_normal(shape)
    gamma = rng.standard_normal(shape[1]) + 1.0
    beta = rng.standard_normal(shape[1])
    y, dx = np.empty_like(x), np.empty_like(x)
    counts = (threads, 1, 1)
    samples = {0: [], 1: [], 2: []}
    previous = fastbn.set_num_threads(threads)
    try:
        for n in (threads, 1):  # untimed: first-touch of the buffers, pool start-up
            fastbn.set_num_threads(n)
            one_call(x, dy, gamma, beta, y, dx, clock)
        for i in range(calls):
            for k in ORDERS[i % len(ORDERS)]:
                fastbn.set_num_threads(counts[k])
                samples[k].append(one_call(x, dy, gamma, beta, y, dx, clock))
    finally:
        fastbn.set_num_threads(previous)
    return samples


def median_of(samples, k, figure):
    return statistics.median(s[figure] for s in samples[k])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--loads", default="0,1,2",
                    help="busy loops per core, comma-separated (0: quiet; 0.5: one on every "
                         "other core); default 0,1,2")
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
    loads = [float(n) if "." in n else int(n) for n in args.loads.split(",")]
    rng = np.random.default_rng(0)
    print(f"fastbn {fastbn.__version__} ({fastbn.backend}), {cores} cores; forward + backward "
          f"float64, medians of {args.calls} calls; {args.threads} threads vs 1")
    fastbn.show_config()
    clock = ThreadClock()
    if not clock.schedstat:
        print("(no /proc/thread-self/schedstat here: own-cpu figures equal wall-clock ones)")
    # figures: (label, samples' figure, settings compared)
    figures = [("ratio", 0, 0), ("control", 0, 2), ("own-cpu", 1, 0), ("own-cpu ctl", 1, 2)]
    worst, pooled = {}, {}
    for load in loads:
        for run in range(args.runs):
            busy = start_busy(round(load * cores), args.max_seconds)
            try:
                time.sleep(0.2)  # let the busy loops start
                for shape in shapes:
                    samples = time_shape(shape, args.calls, args.threads, rng, clock)
                    t_n, t_1 = median_of(samples, 0, 0), median_of(samples, 1, 0)
                    line = []
                    for label, figure, k in figures:
                        ratio = median_of(samples, k, figure) / median_of(samples, 1, figure)
                        key = (label, load, shape)
                        worst[key] = max(worst.get(key, 0.0), ratio)
                        line.append(f"{label} {ratio:5.2f}")
                    for k in (0, 1, 2):
                        pooled.setdefault((load, shape, k), []).extend(s[0] for s in samples[k])
                    print(f"load {load}/core  run {run + 1}  {str(shape):18s} "
                          f"{args.threads} threads {t_n * 1e3:8.3f} ms  1 thread {t_1 * 1e3:8.3f} ms  "
                          + "  ".join(line), flush=True)
            finally:
                stop_busy(busy)
    head = f"{'shape':18s} " + " ".join(f"{f'load {n}/core':>12s}" for n in loads)
    for label, title in [("ratio", f"{args.threads} threads / 1 thread, medians of wall-clock "
                          "times (issue 13's figure)"),
                         ("control", "control: 1 thread / 1 thread, the same figure"),
                         ("own-cpu", f"{args.threads} threads / 1 thread, medians of times less "
                          "the caller's run-queue wait (not its waits after sleeps)"),
                         ("own-cpu ctl", "control: 1 thread / 1 thread, the same figure")]:
        print(f"\nworst over {args.runs} runs: {title}")
        print(head)
        for shape in shapes:
            print(f"{str(shape):18s} " + " ".join(f"{worst[(label, n, shape)]:12.2f}"
                                                   for n in loads))
    print(f"\nmean of all {args.runs * args.calls} calls: {args.threads} threads / 1 thread "
          "(control: 1 thread / 1 thread)")
    print(head)
    for shape in shapes:
        cells = []
        for n in loads:
            m = [statistics.mean(pooled[(n, shape, k)]) for k in (0, 1, 2)]
            cells.append(f"{m[0] / m[1]:5.2f} ({m[2] / m[1]:4.2f})")
        print(f"{str(shape):18s} " + " ".join(f"{c:>12s}" for c in cells))

if __name__ == "__main__":
    main()
