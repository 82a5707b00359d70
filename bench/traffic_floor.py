"""How close fastbn and PyTorch come to the least time any batch norm could take
here: every op (training forward, backward, inference) against passes that only
move its bytes, with no arithmetic (bench/traffic_floor.c, built with the system C
compiler), each floor pass the fastest of streamed and plain stores, with and
without software prefetches, in the widest vectors the CPU has (AVX-512F or AVX2),
into an output already in memory:

- inference reads x and writes y: one copy;
- training forward: that copy when a channel stays in cache between its
  statistics and its output (NCHW-like, inner > 1), else a read of x then the copy
  (NHWC, (N, C));
- backward: one pass reading x and dy and writing dx when a channel stays in
  cache, else a read of x and dy then that pass.
The cache-sized shapes (32x256x14x14, 512x4096) take the two-pass floors (a re-read
of cache-resident data costs as much as a read).

Prints, per shape, dtype and thread count, fastbn / floor and PyTorch / floor side
by side (and torch / fastbn, above 1 where fastbn is ahead), fastbn with its outputs
given (out=), PyTorch the faster of its out= and allocating forms; then the cells
that miss issue 17's goal (fastbn within 1.10x of the floor on the large shapes,
1.25x on the cache-sized ones, and ahead of PyTorch). Usage (x86-64 with AVX2, a C
compiler with OpenMP, PyTorch installed):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/traffic_floor.py
    python bench/traffic_floor.py --threads 1 --dtype float32 --shapes nchw-small --repeat 21

Another machine's tuning on this one: a fastbn built for AVX2 only
(CFLAGS="-DFBN_NO_DISPATCH -mavx2 -mfma -mf16c", first on PYTHONPATH), its streamed
stores and the floor passes of AVX2 vectors, and a 512 KB L2:

    FASTBN_CACHE_SIZES=32K,512K,32M FASTBN_STREAM_WIDTH=32 \
        python bench/traffic_floor.py --floor-width 32
"""
import argparse
import ctypes
import os
import statistics
import subprocess
import tempfile

import numpy as np

import fastbn
from fastbn import _bench

# name: (shape, axis, two-pass floor for the forward and backward)
SHAPES = {"nc": ("8192x4096", (8192, 4096), 1, True),
          "nchw": ("NCHW 64x64x56x56", (64, 64, 56, 56), 1, False),
          "nhwc": ("NHWC 64x56x56x64", (64, 56, 56, 64), -1, True),
          "nchw-small": ("NCHW 32x256x14x14", (32, 256, 14, 14), 1, True),
          "nc-small": ("512x4096", (512, 4096), 1, True)}
OPS = ("forward", "backward", "inference")
GOAL = {True: 1.25, False: 1.10}  # fastbn / floor, by cache-sized (two-pass shapes but 8192x4096)
CACHE_SIZED = ("nchw-small", "nc-small")
FLOOR_NT, FLOOR_PF = 1, 2  # traffic_floor.c's store modes
MODES = {"nt": FLOOR_NT, "nt pf": FLOOR_NT | FLOOR_PF, "plain": 0, "plain pf": FLOOR_PF}


def build_floor(tmp):
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "traffic_floor.c")
    lib = os.path.join(tmp, "traffic_floor.so")
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-fopenmp", src, "-o", lib], check=True)
    return ctypes.CDLL(lib)


def floor_passes(floor, d, threads):
    """{name: fn} of the floor passes on d's arrays (an output of their own, in
    memory before the first call, as fastbn's given outputs are)."""
    x, dy = d["x"], d["dy"]
    y = d["floor_out"] = np.ones_like(x)  # kept alive with d
    p = [ctypes.c_void_p(a.ctypes.data) for a in (y, x, dy)]
    n = ctypes.c_size_t(x.nbytes)
    passes = {"read": lambda: floor.floor_read(p[1], n, threads),
              "read2": lambda: floor.floor_read2(p[1], p[2], n, threads)}
    for name, mode in MODES.items():
        passes["copy " + name] = lambda m=mode: floor.floor_copy(p[0], p[1], n, threads, m)
        passes["pass3 " + name] = lambda m=mode: floor.floor_pass3(p[0], p[1], p[2], n,
                                                                   threads, m)
    return passes


def floors(t, two_pass):
    """{op: floor time} from the medians t of the floor passes."""
    copy = min(t["copy " + m] for m in MODES)
    pass3 = min(t["pass3 " + m] for m in MODES)
    return {"inference": copy,
            "forward": copy + (t["read"] if two_pass else 0.0),
            "backward": pass3 + (t["read2"] if two_pass else 0.0)}


def run(floor, torch, key, dtype, threads, repeat):
    name, shape, axis, two_pass = SHAPES[key]
    fastbn.set_num_threads(threads)
    torch.set_num_threads(threads)
    d = _bench.make_data(shape, axis, np.dtype(dtype))
    ours, theirs = _bench.numpy_ops(fastbn, d), _bench.torch_ops(torch, d)
    names = {"forward": "forward-train", "backward": "backward", "inference": "inference"}
    cands = {}
    for op in OPS:
        cands["fastbn " + op] = ours[names[op]]
        cands["torch " + op] = _bench.fastest(theirs[names[op]])[1]
    cands.update(floor_passes(floor, d, threads))
    samples = _bench.interleaved({k: (fn, repeat) for k, fn in cands.items()}, repeat)
    t = {k: statistics.median(v) * 1e6 for k, v in samples.items()}
    fl = floors(t, two_pass)
    cells, misses = [], []
    goal = GOAL[key in CACHE_SIZED]
    for op in OPS:
        f, th = t["fastbn " + op] / fl[op], t["torch " + op] / fl[op]
        cells.append(f"{f:5.2f} {th:5.2f} {th / f:5.2f}x")
        if f > goal or th < f:
            misses.append(f"{name} {dtype} {threads}t {op}: fastbn/floor {f:.2f}"
                          f" (goal {goal:.2f}), torch/fastbn {th / f:.2f}x")
    print(f"| {name:17s} | {dtype} | {threads} | " + " | ".join(cells) + " |", flush=True)
    return misses


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--dtype", default="float32,float64")
    ap.add_argument("--shapes", default=",".join(SHAPES),
                    help="comma-separated, of " + ", ".join(f"{k} ({v[0]})" for k, v in SHAPES.items()))
    ap.add_argument("--repeat", type=int, default=11)
    ap.add_argument("--floor-width", type=int, choices=(32, 64), default=64,
                    help="the floor passes' widest vectors in bytes (32: AVX2, as on a "
                         "machine without AVX-512; with a fastbn built for AVX2, e.g. "
                         "CFLAGS='-DFBN_NO_DISPATCH -mavx2 -mfma -mf16c')")
    a = ap.parse_args(argv)
    unknown = [k for k in a.shapes.split(",") if k not in SHAPES]
    if unknown:
        ap.error(f"--shapes: unknown {', '.join(unknown)}; choose from {', '.join(SHAPES)}")
    import torch
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    misses = []
    with tempfile.TemporaryDirectory() as tmp:
        floor = build_floor(tmp)
        floor.floor_set_width(a.floor_width)
        from fastbn import _kernels
        width = getattr(_kernels, "stream_width", lambda: "?")()
        print(f"medians of {a.repeat} interleaved samples; load average {' '.join(load)}")
        print(f"floor passes: {floor.floor_width() * 8}-bit vectors; fastbn: "
              f"{_kernels.simd_paths()}, streamed stores of {width} bytes, "
              f"caches (L1d, L2, L3) {_kernels.cache_sizes()}")
        print("cells: fastbn/floor torch/floor torch/fastbn (floors: best of streamed and plain"
              " stores, with and without prefetches; cache-sized shapes: two passes)")
        print("| shape | dtype | threads | forward | backward | inference |")
        print("|---|---|---|---|---|---|")
        for key in a.shapes.split(","):
            for dtype in a.dtype.split(","):
                for threads in (int(v) for v in a.threads.split(",")):
                    misses += run(floor, torch, key, dtype, threads, a.repeat)
    print(f"\ncells missing the goal: {len(misses)}")
    for m in misses:
        print("- " + m)


if __name__ == "__main__":
    main()
