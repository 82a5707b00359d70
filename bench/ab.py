"""A/B timing of two fastbn builds in one process, sample by sample.

    python bench/ab.py OLD_TREE NEW_TREE [--quick] [--samples 15] [--json PATH]
    python bench/ab.py OLD_TREE OLD_TREE ...      # A/A: the noise band of the ratios
    python bench/ab.py OLD_TREE NEW_TREE --both-orders ...  # each build loaded first once
    bench/ab_revs.sh REV_A REV_B [ab.py options]  # builds two git revisions first

Each tree is a source tree with its extension built in place (`python setup.py
build_ext --inplace`). Both compiled modules (fastbn._kernels of each tree) are
loaded into this process under two names, and every case (op, shape, dtype, threads)
is timed by alternating samples of A and B (A B B A A B ...), each sample repeating
the call until it lasts 1 ms (on threads, after a pause that lets the other build's
pool workers go to sleep, and three untimed calls). The report gives each build's
fastest sample and their ratio B/A (on a busy machine other processes only add time,
so the minimum of many samples is the steadiest estimate of a CPU-bound call), then
the median of the pairwise ratios B/A with their quartiles (pairs taken back to back
see the same load). Judge noise by an A/A run (the same tree twice): its ratios show
how far from 1.0 nothing at all moves them. Which module is loaded first can move
them too (by up to 15% in 2026-12-05's runs): --both-orders runs the script twice,
each build loaded first once, and prints both medians and their geometric mean.

Ops: the kernels as fastbn._core calls them, on canonical arrays with preallocated
outputs (forward-train, inference, backward: the fused kernels; stats,
affine, reduce, elemt: the building blocks); for the small-* shapes also the
compiled front end (front-forward, front-backward: fastbn.forward/backward as
users call them, with the checked paths of the current fastbn). Run it with
OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE unset (they slow NumPy).
"""
import argparse
import glob
import importlib.machinery
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

SHAPES = {  # name: shape, channel axis
    "nc": ((8192, 4096), 1),
    "nchw": ((64, 64, 56, 56), 1),
    "nchw-28": ((128, 128, 28, 28), 1),
    "nhwc": ((64, 56, 56, 64), -1),
    "nchw-small": ((32, 256, 14, 14), 1),
    "nc-small": ((512, 4096), 1),
    "nc-300": ((4096, 300), 1),
    "nhwc-mid": ((16, 28, 28, 32), -1),
    "small-nc": ((32, 64), 1),
    "small-nchw": ((16, 32, 8, 8), 1),
}
QUICK = ["nchw-small", "nc-small", "nc-300", "nhwc-mid", "small-nc", "small-nchw"]
OPS = ["forward-train", "inference", "backward", "stats", "affine", "reduce", "elemt"]
FRONT_OPS = ["front-forward", "front-backward"]


def load(tree, tag):
    """fastbn._kernels of tree, as module `tag._kernels`."""
    (path,) = glob.glob(os.path.join(tree, "fastbn", "_kernels*.so")) or [None]
    if path is None:
        raise SystemExit(f"no built fastbn/_kernels*.so in {tree}")
    name = tag + "._kernels"
    loader = importlib.machinery.ExtensionFileLoader(name, path)
    spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


def canonical_shape(shape, axis):
    axis %= len(shape)
    outer = int(np.prod(shape[:axis]))
    inner = int(np.prod(shape[axis + 1:]))
    return (outer, shape[axis], inner)


def make_call(k, op, x, dy, out, v, axis, threads):
    """A no-argument call of op on module k (outputs out and v: the same arrays for
    both builds, so that neither gains from its addresses)."""
    C = x.shape[axis]
    front_x, front_dy = x, dy
    dt = {}  # half data: the kernels take their bits and a dtype code (fastbn._core._k/_dt)
    if x.dtype.itemsize == 2:
        from fastbn import _core
        dt = {"dt": _core._dt(x)}
        x, dy, out = (_core._k(a) for a in (x, dy, out))
    x3 = x.reshape(canonical_shape(x.shape, axis))
    dy3 = dy.reshape(x3.shape)
    out = out.reshape(x3.shape)
    gamma, beta = np.full(C, 1.5), np.full(C, 0.25)
    mean, var = np.asarray(x3.mean(axis=(0, 2)), np.float64), np.full(C, 1.2)
    invstd = 1 / np.sqrt(var + 1e-5)
    k_dy, k_x, mean_dy = gamma * invstd, np.full(C, -0.01), np.full(C, 0.02)
    if op == "forward-train":
        return lambda: k.forward_train(x3, out, gamma, beta, 1e-5, False, *v[:4], threads, **dt)
    if op == "inference":
        return lambda: k.forward_infer(x3, out, mean, var, gamma, beta, 1e-5, False, v[0],
                                       threads, **dt)
    if op == "backward":
        return lambda: k.backward_fused(dy3, x3, out, mean, v[1], invstd, gamma, beta, False,
                                        True, v[2], v[3], threads, **dt)
    if op == "stats":
        return lambda: k.batch_stats(x3, *v[:3], threads, **dt)
    if op == "affine":
        return lambda: k.affine(x3, out, mean, invstd, beta, False, threads, **dt)
    if op == "reduce":
        return lambda: k.backward_reduce(dy3, x3, mean, None, None, False, v[0], v[1], threads, **dt)
    if op == "elemt":
        return lambda: k.backward_elemt(dy3, x3, out, mean, invstd, k_dy, k_x, mean_dy, None,
                                        None, False, threads, **dt)
    g, b = gamma.astype(np.float32 if dt else x.dtype), beta.astype(np.float32 if dt else x.dtype)
    if op == "front-forward":
        return lambda: k.forward(front_x, g, b, axis=axis)
    if op == "front-backward":
        _, cache = k.forward(front_x, g, b, axis=axis)
        return lambda: k.backward(front_dy, cache)
    raise ValueError(op)


def data_dtype(name):
    """np.dtype of a --dtypes name: float32, float64, float16 or bfloat16 (ml_dtypes)."""
    if name == "bfloat16":
        import ml_dtypes
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def parse_shape(text):
    """'8x14x14x32:-1' -> ((8, 14, 14, 32), -1); the axis defaults to 1."""
    dims, _, axis = text.partition(":")
    return tuple(int(d) for d in dims.split("x")), int(axis) if axis else 1


CLOCK = [time.perf_counter]  # --cpu-time: time.thread_time
# Pause before each sample on threads: each build has its own thread pool, whose
# workers spin 100 us after a loop (parallel.c), then sleep. Without it, an A/A
# run (a build against a copy of itself) of small 2-thread cases gave median
# ratios of 0.11 to 15 beside a build; 0.85-1.18 with it
# (bench/results/2026-12-05_ab_settle_aa.txt).
SETTLE_SECONDS = 0.002
# Untimed calls after that pause: a call of fewer than FASTBN_WAKE_VALUES values wakes
# sleeping workers only as the third back to back (README, "small calls after a
# pause"); builds before it woke them at the first. Samples then time calls on
# awake workers in both (bench/results/2026-12-06_wake_hot_ab.txt: with one such
# call, the new rule's first calls ran alone).
WAKE_CALLS = 3


def sample(call):
    clock = CLOCK[0]
    n, t0 = 0, clock()
    while True:
        call()
        n += 1
        t = clock() - t0
        if t >= 0.001:
            return t / n


def both_orders(a):
    """Runs this script twice, A's module loaded first, then B's (the load order
    alone moved ratios by up to 15%: docs/performance.md, the cached columns y
    row), and prints each case's median ratio B/A from both and their geometric
    mean."""
    opts = ["--samples", str(a.samples), "--dtypes", a.dtypes, "--threads", a.threads]
    opts += (["--shapes", a.shapes] if a.shapes else []) + (["--ops", a.ops] if a.ops else [])
    opts += (["--quick"] if a.quick else []) + (["--cpu-time"] if a.cpu_time else [])
    runs = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (first, second) in enumerate(((a.old, a.new), (a.new, a.old))):
            path = os.path.join(tmp, f"order{i}.json")
            subprocess.run([sys.executable, os.path.abspath(__file__), first, second, *opts,
                            "--json", path], check=True)
            with open(path) as f:
                runs.append(json.load(f))
    combined = {}
    print(f"\nboth orders: B = {a.new} against A = {a.old}, medians of B/A")
    print(f"{'case':34s} {'A first':>8s} {'B first':>8s} {'geomean':>8s}")
    for key, times in runs[0].items():
        swapped = runs[1][key]  # its "old" is B, its "new" is A
        r1 = statistics.median(n / o for n, o in zip(times["new"], times["old"]))
        r2 = statistics.median(o / n for n, o in zip(swapped["new"], swapped["old"]))
        combined[key] = {"A first": times, "B first": swapped}
        print(f"{key:34s} {r1:8.3f} {r2:8.3f} {math.sqrt(r1 * r2):8.3f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(combined, f)
    return 0


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old")
    ap.add_argument("new")
    ap.add_argument("--samples", type=int, default=21, help="pairs per case (default 21)")
    ap.add_argument("--quick", action="store_true", help="the smaller shapes only")
    ap.add_argument("--shapes", help="comma-separated names of " + ", ".join(SHAPES) +
                    ", or explicit shapes such as 256x64 or 8x14x14x32:-1 (':axis')")
    ap.add_argument("--ops", help="comma-separated, of " + ", ".join(OPS + FRONT_OPS))
    ap.add_argument("--dtypes", default="float32,float64",
                    help="comma-separated, of float32, float64, float16, bfloat16")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--json", help="save every sample here")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time on the CPU of this thread (time.thread_time), not wall time: "
                         "on a machine too busy for wall times, with --threads 1 only")
    ap.add_argument("--both-orders", action="store_true",
                    help="two processes, A loaded first then B first, and a table of both")
    a = ap.parse_args(argv)
    if a.both_orders:
        return both_orders(a)
    if a.cpu_time:
        if a.threads != "1":
            ap.error("--cpu-time counts the calling thread only: use it with --threads 1")
        CLOCK[0] = time.thread_time
    mods = {"old": load(os.path.abspath(a.old), "ab_old"),
            "new": load(os.path.abspath(a.new), "ab_new")}
    threads_now = [1]
    try:  # the compiled front ends fall back to the current fastbn's checked paths
        import fastbn._core as core
        from fastbn._checks import Cache
        for k in mods.values():
            k.set_checked_paths(core._checked_forward, core._checked_backward, Cache,
                                lambda: threads_now[0])
        front = True
    except Exception as exc:  # noqa: BLE001 (report and time the kernels alone)
        print(f"(front end not timed: {exc})", file=sys.stderr)
        front = False
    shapes = a.shapes.split(",") if a.shapes else (QUICK if a.quick else list(SHAPES))
    rng = np.random.default_rng(0)
    results = {}
    print(f"A/B in one process: A (old) = {a.old}, B (new) = {a.new}; {a.samples} pairs "
          f"per case; load average at start {os.getloadavg()[0]:.1f}"
          + ("; on-CPU time of the calling thread" if a.cpu_time else ""))
    print(f"{'case':34s} {'A min us':>10s} {'B min us':>10s} {'B/A min':>7s} "
          f"{'B/A med':>7s} {'q25':>6s} {'q75':>6s}", flush=True)
    for name in shapes:
        shape, axis = SHAPES[name] if name in SHAPES else parse_shape(name)
        ops = a.ops.split(",") if a.ops else OPS + (FRONT_OPS if name.startswith("small") else [])
        for dtype in a.dtypes.split(","):
            x = (rng.standard_normal(shape) * 2 + 1).astype(data_dtype(dtype))
            dy = rng.standard_normal(shape).astype(data_dtype(dtype))
            out = np.empty_like(x)
            v = [np.zeros(shape[axis]) for _ in range(8)]
            for op in ops:
                if op in FRONT_OPS and not front:
                    continue
                for threads in map(int, a.threads.split(",")):
                    threads_now[0] = threads
                    calls = {w: make_call(mods[w], op, x, dy, out, v, axis, threads)
                             for w in mods}
                    for w in mods:  # warm up (caches, work block, thread pool)
                        sample(calls[w])
                    times = {"old": [], "new": []}
                    for s in range(a.samples):
                        for w in (("old", "new") if s % 2 == 0 else ("new", "old")):
                            if threads > 1:
                                # the other build's pool: its workers asleep, not
                                # spinning on the core this build's worker needs
                                time.sleep(SETTLE_SECONDS)
                                for _ in range(WAKE_CALLS):  # wake this build's workers
                                    calls[w]()
                            times[w].append(sample(calls[w]))
                    ratios = [n / o for n, o in zip(times["new"], times["old"])]
                    q = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else ratios * 3
                    key = f"{op}/{name}/{dtype}/{threads}"
                    results[key] = times
                    best = {w: min(times[w]) for w in times}
                    print(f"{key:34s} {best['old'] * 1e6:10.1f} {best['new'] * 1e6:10.1f} "
                          f"{best['new'] / best['old']:7.3f} {statistics.median(ratios):7.3f} "
                          f"{q[0]:6.3f} {q[2]:6.3f}", flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(results, f)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
