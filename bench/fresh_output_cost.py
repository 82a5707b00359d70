"""What an allocated output costs on large arrays: each op called without out= (a new
output, as most users call it) against the same call with out=, calls interleaved,
medians. A new output's pages are zeroed by the kernel at first touch, unless its
memory comes from fastbn's output cache (fastbn.set_output_cache: the previous
call's freed output). With --no-cache the cache is off (set_output_cache(0)), as
before it existed.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/fresh_output_cost.py
    python bench/fresh_output_cost.py --dtype float64 --threads 1 --repeat 21 --no-cache
"""
import argparse
import time

import numpy as np

import fastbn

SHAPES = {"NCHW 64x64x56x56": ((64, 64, 56, 56), 1), "NHWC 64x56x56x64": ((64, 56, 56, 64), -1),
          "8192x4096": ((8192, 4096), 1)}


def calls(shape, axis, dtype):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    g, b = np.ones(C, np.float32), np.zeros(C, np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    y, dx = np.empty_like(x), np.empty_like(x)
    _, cache = fastbn.forward(x, g, b, axis=axis, out=y)
    infer = dict(axis=axis, training=False, running_mean=rm, running_var=rv)
    return {"forward": (lambda: fastbn.forward(x, g, b, axis=axis),
                        lambda: fastbn.forward(x, g, b, axis=axis, out=y)),
            "backward": (lambda: fastbn.backward(dy, cache),
                         lambda: fastbn.backward(dy, cache, out=(dx, None, None))),
            "inference": (lambda: fastbn.forward(x, g, b, **infer),
                          lambda: fastbn.forward(x, g, b, out=y, **infer))}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--no-cache", action="store_true", help="set_output_cache(0) first")
    args = ap.parse_args()
    if args.threads:
        fastbn.set_num_threads(args.threads)
    if args.no_cache and hasattr(fastbn, "set_output_cache"):
        fastbn.set_output_cache(0)
    dtype = np.dtype(args.dtype) if args.dtype != "bfloat16" else __import__("ml_dtypes").bfloat16
    cache_note = ("no output cache" if args.no_cache or not hasattr(fastbn, "set_output_cache")
                  else "output cache on")
    print(f"{args.dtype}, {fastbn.get_num_threads()} threads, {cache_note}; medians of "
          f"{args.repeat} interleaved calls, ms: new output / out= (ratio)")
    for name, (shape, axis) in SHAPES.items():
        cells = []
        for op, (new_call, out_call) in calls(shape, axis, dtype).items():
            times = {0: [], 1: []}
            for _ in range(args.repeat):
                for k, call in ((0, new_call), (1, out_call)):
                    t = time.perf_counter()
                    call()
                    times[k].append(time.perf_counter() - t)
            new, out = (float(np.median(times[k])) * 1e3 for k in (0, 1))
            cells.append(f"{op} {new:.2f} / {out:.2f} ({new / out:.2f})")
        print(f"{name:18s} " + "; ".join(cells))


if __name__ == "__main__":
    main()
