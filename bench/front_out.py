"""A/B of the compiled front end with and without out=, two builds in one process.

    PYTHONPATH=NEW_TREE python bench/front_out.py OLD_TREE NEW_TREE [--calls 301]
        [--dtype float32|float64|float16|bfloat16] [--shapes 1x1x14x14,16x32x8x8]

Both trees' fastbn._kernels are loaded under two names (as bench/ab.py does), their
front ends falling back to the checked paths of the fastbn on PYTHONPATH. Every case
times single calls, old and new alternating in blocks of BLOCK calls (both see the
same load; a block's first call, after the other build's, is not counted: it would
time the other build's cache footprint too), and prints the median of each, in
microseconds, and new / old. Half-precision data take float32 parameters and running
statistics (fastbn._checks.param_dtype), as the layer makes them.
"""
import argparse
import statistics
import time

import numpy as np

import fastbn
from fastbn import _checks, _core
from fastbn._cache import Cache
from fastbn._threads import get_num_threads

from ab import load  # bench/ab.py: a tree's compiled module under another name

SHAPES = [(1, 1, 14, 14), (16, 32, 8, 8)]
BLOCK = 10


def cases(k, shape, dtype):
    """(name, call) pairs of module k on fresh arrays of `shape`."""
    rng = np.random.default_rng(0)
    C = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    pdt = _checks.param_dtype(dtype)
    g, b = np.ones(C, pdt), np.zeros(C, pdt)
    rm, rv = np.zeros(C, pdt), np.ones(C, pdt)
    y, dx, dg, db = np.empty_like(x), np.empty_like(x), np.empty_like(g), np.empty_like(b)
    _, cache = k.forward(x, g, b, running_mean=rm.copy(), running_var=rv.copy())
    infer = dict(training=False, running_mean=rm, running_var=rv)
    return [
        ("inference", lambda: k.forward(x, g, b, **infer)),
        ("inference out=", lambda: k.forward(x, g, b, out=y, **infer)),
        ("training", lambda: k.forward(x, g, b, running_mean=rm, running_var=rv)),
        ("training out=", lambda: k.forward(x, g, b, running_mean=rm, running_var=rv, out=y)),
        ("backward", lambda: k.backward(dy, cache)),
        ("backward out=", lambda: k.backward(dy, cache, out=(dx, dg, db))),
    ]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--calls", type=int, default=301)
    parser.add_argument("--dtype", default="float32",
                        choices=["float32", "float64", "float16", "bfloat16"])
    parser.add_argument("--shapes", default=",".join("x".join(map(str, s)) for s in SHAPES))
    args = parser.parse_args()
    dtype = _checks.bfloat16(load=True) if args.dtype == "bfloat16" else np.dtype(args.dtype)
    if dtype is None:
        parser.error("--dtype bfloat16 needs ml_dtypes")
    shapes = [tuple(int(v) for v in s.split("x")) for s in args.shapes.split(",")]
    mods = [load(args.old, "fastbn_old"), load(args.new, "fastbn_new")]
    for k in mods:
        k.set_checked_paths(_core._checked_forward, _core._checked_backward, Cache,
                            get_num_threads)
    print(f"fastbn {fastbn.__file__}; median of {args.calls} single calls, us")
    print(f"{'shape':>16} {'case':>15} {'old':>8} {'new':>8} {'new/old':>8}")
    clock = time.perf_counter_ns
    print(f"dtype {dtype}")
    for shape in shapes:
        pairs = zip(*(cases(k, shape, dtype) for k in mods))
        for (name, old), (_, new) in pairs:
            times = ([], [])
            for _ in range(20):  # warm up
                old(), new()
            while len(times[1]) < args.calls:
                for f, t in ((old, times[0]), (new, times[1])):
                    f()
                    for _ in range(min(BLOCK, args.calls - len(t))):
                        t0 = clock()
                        f()
                        t.append(clock() - t0)
            mo, mn = (statistics.median(t) / 1e3 for t in times)
            print(f"{str(shape):>16} {name:>15} {mo:8.2f} {mn:8.2f} {mn / mo:8.2f}")


if __name__ == "__main__":
    main()
