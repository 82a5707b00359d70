"""What fusing buys: each fused pass against the two unfused passes it replaces.

The training forward is batch_stats then the affine pass, fused so that a
channel's data are rewritten from cache; the backward is backward_reduce then
backward_elemt. This times the fused op and its two halves (fastbn's kernels
directly, as bench/ab.py calls them: outputs preallocated) in one process, the
calls interleaved round by round, and prints medians and the ratio fused /
(first half + second half). A ratio near 1 means the fused pass's re-read from
cache costs as much as a pass from memory.

    python bench/fused_gain.py [--shapes 64x64x56x56,128x128x28x28] [--dtypes float32]
        [--threads 1,2] [--rounds 15]
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ab  # noqa: E402  (bench/ab.py: its kernel calls)

OPS = ["stats", "affine", "forward-train", "reduce", "elemt", "backward"]


def run(k, shape, dtype, threads, rounds):
    x = np.random.default_rng(0).standard_normal(shape).astype(dtype)
    dy, out = np.cos(x), np.empty_like(x)
    v = [np.empty(shape[1]) for _ in range(4)]
    calls = {op: ab.make_call(k, op, x, dy, out, v, 1, threads) for op in OPS}
    times = {op: [] for op in OPS}
    for _ in range(rounds + 2):
        for op in OPS:
            t = time.perf_counter()
            calls[op]()
            times[op].append(time.perf_counter() - t)
    m = {op: statistics.median(ts[2:]) * 1e6 for op, ts in times.items()}
    fwd = m["forward-train"] / (m["stats"] + m["affine"])
    bwd = m["backward"] / (m["reduce"] + m["elemt"])
    name = "x".join(map(str, shape))
    print(f"| {name} | {np.dtype(dtype).name} | {threads} | "
          + " | ".join(f"{m[op]:.0f}" for op in OPS) + f" | {fwd:.2f} | {bwd:.2f} |", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="64x64x56x56,128x128x28x28")
    ap.add_argument("--dtypes", default="float32,float64")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--rounds", type=int, default=15)
    a = ap.parse_args(argv)
    from fastbn import _kernels as k
    with open("/proc/loadavg") as f:
        load = " ".join(f.read().split()[:3])
    print(f"medians of {a.rounds} interleaved rounds (us); load average {load}")
    print("| shape | dtype | threads | " + " | ".join(OPS)
          + " | forward / (stats + affine) | backward / (reduce + elemt) |")
    print("|---|---|---|" + "---|" * (len(OPS) + 2))
    for s in a.shapes.split(","):
        shape = ab.parse_shape(s)[0]
        for dt in a.dtypes.split(","):
            for t in a.threads.split(","):
                run(k, shape, ab.data_dtype(dt), int(t), a.rounds)


if __name__ == "__main__":
    main()
