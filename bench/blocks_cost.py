"""The building blocks' cost per call on small arrays, as users call them.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=TREE python bench/blocks_cost.py \
        [--shapes 4x5,32x64,16x32x8x8] [--dtype float32] [--calls 2000] [--threads 1]

Times batch_stats, merge_stats (two ranks' statistics), normalize, backward_reduce and
backward_elemt of the fastbn on PYTHONPATH (a build tree: run it for two trees in
alternation to compare builds) and prints, per shape, the median over 7 rounds of the
mean time of `--calls` calls, in microseconds. Arrays are plain and made once; outputs
are allocated by each call (no out=). Half-precision data take float32 vectors.
"""
import argparse
import statistics
import time

import numpy as np

import fastbn


def calls(shape, dtype):
    rng = np.random.default_rng(0)
    C = shape[1]
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    n, mean, m2 = fastbn.batch_stats(x)
    invstd = 1.0 / np.sqrt(m2 / n + 1e-5)
    g, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    s, t = fastbn.backward_reduce(dy, x, mean, invstd)
    ns, ms, m2s = np.array([n, n]), np.stack([mean, mean]), np.stack([m2, m2])
    return {
        "batch_stats": lambda: fastbn.batch_stats(x),
        "merge_stats": lambda: fastbn.merge_stats(ns, ms, m2s),
        "normalize": lambda: fastbn.normalize(x, mean, invstd, g, b),
        "backward_reduce": lambda: fastbn.backward_reduce(dy, x, mean, invstd),
        "backward_elemt": lambda: fastbn.backward_elemt(dy, x, mean, invstd, g, s, t, n),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", default="4x5,32x64,16x32x8x8")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    if a.dtype == "bfloat16":
        import ml_dtypes
        dtype = ml_dtypes.bfloat16
    else:
        dtype = np.dtype(a.dtype)
    fastbn.set_num_threads(a.threads)
    print(f"fastbn from {fastbn.__file__}, {a.dtype}, {a.threads} thread(s); us per call")
    for spec in a.shapes.split(","):
        shape = tuple(int(v) for v in spec.split("x"))
        row = []
        for name, f in calls(shape, dtype).items():
            times = []
            for _ in range(7):
                t0 = time.perf_counter()
                for _ in range(a.calls):
                    f()
                times.append((time.perf_counter() - t0) / a.calls * 1e6)
            row.append(f"{name} {statistics.median(times):.2f}")
        print(f"{spec:>12}: " + ", ".join(row))


if __name__ == "__main__":
    main()
