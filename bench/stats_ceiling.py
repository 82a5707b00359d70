"""The arithmetic floor beside the traffic floor: how fast the reductions' own
arithmetic can go on this CPU, and what that bounds for issues 17 and 19.

fastbn's statistics widen each value to double, subtract the channel's pivot and
add e and e * e; the backward's sums add dy and dy * (x - shift), in double. With
no FMA (every instruction set gives the same bits) that is 4-6 vector operations a
value, whatever the dtype: 16-bit data move half of float32's bytes but cost as
much arithmetic (more: one more widening). bench/stats_ceiling.c times that
arithmetic alone (data in L1, sums in registers, one core), which no kernel can
beat. Printed:

1. the ceiling per core, in values per second, for float32, float64 and float16;
2. fastbn's batch_stats and backward_reduce on arrays in L2 (1 thread), against it;
3. per large shape, dtype and thread count, the floors of bench/traffic_floor.py
   (measured in this run) beside the least time the arithmetic allows: the
   reduction at the ceiling on every thread, and where a channel does not stay in
   cache ((N, C), NHWC) it must end before the output pass starts, so the op takes
   at least max(read floor, arithmetic) + the output pass's floor. "bound / floor"
   above the goal (1.10; the cache-sized shapes nc-small and nchw-small, whose floor
   is two passes over data in cache: 1.25) means the goal is beyond this arithmetic.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/stats_ceiling.py \
        [--threads 1,2] [--shapes nc,nchw,nhwc] [--repeat 7]

x86-64 with AVX2 and F16C (AVX-512F used where the compiler's -march=native has it),
a C compiler with OpenMP (for the floor passes).
"""
import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

if __name__ == "__main__":  # from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastbn  # noqa: E402
from fastbn import _bench  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from traffic_floor import (CACHE_SIZED, GOAL, SHAPES, build_floor, floor_passes,  # noqa: E402
                           floors)

DTYPES = {"float32": 0, "float64": 1, "float16": 2}


def build_ceiling(tmp):
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "stats_ceiling.c")
    lib = os.path.join(tmp, "stats_ceiling.so")
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-march=native", "-ffp-contract=off", "-shared", "-fPIC", src,
                    "-o", lib], check=True)
    c = ctypes.CDLL(lib)
    c.ceiling_rate.restype = ctypes.c_double
    c.ceiling_rate.argtypes = [ctypes.c_int] * 4
    return c


def median_rate(fn, values, repeat):
    """Values per second of fn by its median of repeat timings (after one warm call)."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return values / statistics.median(times)


def fastbn_rates(dtype, repeat):
    """fastbn's batch_stats and backward_reduce, 1 thread, values per second, on the
    columns shape (128, 1024) and the rows shape (2, 64, 32, 32), both in L2."""
    fastbn.set_num_threads(1)
    rng = np.random.default_rng(0)
    out = {}
    for shape in ((128, 1024), (2, 64, 32, 32)):
        x = rng.standard_normal(shape).astype(dtype)
        dy = rng.standard_normal(shape).astype(dtype)
        C = shape[1]
        mean, inv = np.zeros(C), np.ones(C)
        out[shape] = (median_rate(lambda: fastbn.batch_stats(x), x.size, repeat),
                      median_rate(lambda: fastbn.backward_reduce(dy, x, mean, inv), x.size,
                                  repeat))
    return out


def bounds(key, dtype, threads, rate_stats, rate_sums, floor, repeat):
    """(floors, arithmetic bounds) in ms of the forward and backward of shape key."""
    _, shape, axis, two_pass = SHAPES[key]
    d = _bench.make_data(shape, axis, np.dtype(dtype))
    passes = floor_passes(floor, d, threads)
    samples = _bench.interleaved({k: (fn, repeat) for k, fn in passes.items()}, repeat)
    t = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    fl = floors(t, two_pass)
    n = d["x"].size
    stats_ms, sums_ms = n / (threads * rate_stats) * 1e3, n / (threads * rate_sums) * 1e3
    if two_pass:  # the reduction ends before the output pass starts
        fwd = max(t["read"], stats_ms) + fl["inference"]
        bwd = max(t["read2"], sums_ms) + (fl["backward"] - t["read2"])
    else:  # at best the reduction of one channel overlaps the output of another
        fwd, bwd = max(fl["forward"], stats_ms), max(fl["backward"], sums_ms)
    return fl, {"forward": fwd, "backward": bwd}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--dtype", default="float32,float64,float16")
    ap.add_argument("--shapes", default="nc,nchw,nhwc")
    ap.add_argument("--repeat", type=int, default=7)
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        ceil, floor = build_ceiling(tmp), build_floor(tmp)
        width = ceil.ceiling_width() * 64
        print(f"arithmetic ceiling per core ({width}-bit vectors, no FMA, data in L1), and "
              "fastbn at 1 thread on arrays in L2, Gvalues/s (fraction of the ceiling):")
        rates = {}
        for name in a.dtype.split(","):
            k = DTYPES[name]
            rs, rb = ceil.ceiling_rate(0, k, 2000, 7), ceil.ceiling_rate(1, k, 2000, 7)
            rates[name] = (rs, rb)
            ours = fastbn_rates(np.dtype(name), a.repeat * 3)
            cells = "; ".join(f"{'x'.join(map(str, s))} stats {v[0] / 1e9:.2f} ({v[0] / rs:.2f}),"
                              f" sums {v[1] / 1e9:.2f} ({v[1] / rb:.2f})"
                              for s, v in ours.items())
            print(f"  {name}: statistics {rs / 1e9:.2f}, backward sums {rb / 1e9:.2f} | fastbn "
                  + cells)
        print("\nms: floor (bench/traffic_floor.py's passes, this run), the least time the "
              "reduction's arithmetic allows, bound / floor, and issue 17's goal for the shape "
              "(fastbn / floor)")
        print("| shape | dtype | threads | forward floor | forward bound | bound / floor "
              "| backward floor | backward bound | bound / floor | goal |")
        print("|---|---|---|---|---|---|---|---|---|---|")
        for key in a.shapes.split(","):
            for name in a.dtype.split(","):
                for threads in map(int, a.threads.split(",")):
                    fl, b = bounds(key, name, threads, *rates[name], floor, a.repeat)
                    print(f"| {SHAPES[key][0]} | {name} | {threads} | {fl['forward']:.2f} | "
                          f"{b['forward']:.2f} | {b['forward'] / fl['forward']:.2f} | "
                          f"{fl['backward']:.2f} | {b['backward']:.2f} | "
                          f"{b['backward'] / fl['backward']:.2f} | "
                          f"{GOAL[key in CACHE_SIZED]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
