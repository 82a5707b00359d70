"""Half-precision data (issue 19): the four building blocks (batch_stats, normalize,
backward_reduce, backward_elemt) of float16 / bfloat16 data against float32, wall and
CPU time, min of interleaved samples. CPU time (process_time) separates "the half
path runs as many cycles as float32" (compute-bound: the conversions' instructions)
from "it waits for memory" on a machine too loaded for wall-clock ratios.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/half_parts.py \
        [--threads 1] [--shape nc|nchw|nhwc|small] [--repeat 7]

Instruction counts of the same blocks: valgrind --tool=callgrind on a script calling
them once (valgrind runs the AVX2 clones).
"""
import argparse
import os
import sys
import time

import ml_dtypes
import numpy as np

if __name__ == "__main__":  # from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastbn  # noqa: E402

SHAPES = {"nc": ((8192, 4096), 1), "nchw": ((64, 64, 56, 56), 1),
          "nhwc": ((64, 56, 56, 64), -1), "small": ((128, 1024), 1)}  # small: in cache
DTYPES = [("f32", np.float32), ("f16", np.float16), ("bf16", ml_dtypes.bfloat16)]
PARTS = ["stats", "normalize", "bwd_reduce", "bwd_elemt"]


def parts(shape, axis, dt, x32, dy32):
    x, dy = x32.astype(dt), dy32.astype(dt)
    out = np.empty_like(x)
    C = shape[axis]
    g, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    cnt, mean, m2 = fastbn.batch_stats(x, axis=axis)
    inv = 1 / np.sqrt(m2 / cnt + 1e-5)
    s1, s2 = fastbn.backward_reduce(dy, x, mean, inv, axis=axis)
    return {
        "stats": lambda: fastbn.batch_stats(x, axis=axis),
        "normalize": lambda: fastbn.normalize(x, mean, inv, g, b, axis=axis, out=out),
        "bwd_reduce": lambda: fastbn.backward_reduce(dy, x, mean, inv, axis=axis),
        "bwd_elemt": lambda: fastbn.backward_elemt(dy, x, mean, inv, g, s1, s2, cnt,
                                                   axis=axis, out=out),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--shape", default="nc", choices=sorted(SHAPES))
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args(argv)
    fastbn.set_num_threads(a.threads)
    shape, axis = SHAPES[a.shape]
    calls = 200 if a.shape == "small" else 1  # per sample: small calls add up
    rng = np.random.default_rng(0)
    x32 = rng.standard_normal(shape, np.float32)
    dy32 = rng.standard_normal(shape, np.float32)
    fns = {(d, p): f for d, dt in DTYPES for p, f in parts(shape, axis, dt, x32, dy32).items()}
    wall = {k: [] for k in fns}
    cpu = {k: [] for k in fns}
    for _ in range(a.repeat):
        for k, f in fns.items():
            t0, c0 = time.perf_counter(), time.process_time()
            for _ in range(calls):
                f()
            wall[k].append(time.perf_counter() - t0)
            cpu[k].append(time.process_time() - c0)
    print(f"shape {shape} axis {axis}, {a.threads} thread(s), min of {a.repeat}; "
          f"load average {os.getloadavg()[0]:.1f}")
    for p in PARTS:
        w32, c32 = min(wall[("f32", p)]), min(cpu[("f32", p)])
        print(f"{p:11s} f32 {w32 * 1e3:8.2f} ms (cpu {c32 * 1e3:8.2f}) | " + " | ".join(
            f"{d} {min(wall[(d, p)]) / w32:.2f}x wall {min(cpu[(d, p)]) / c32:.2f}x cpu"
            for d, _ in DTYPES[1:]))


if __name__ == "__main__":
    main()
