"""How much faster than PyTorch any batch norm could be here: fastbn and PyTorch
(float32, same threads) against passes that only move the bytes, with no
arithmetic (bench/traffic_floor.c, built with the system C compiler):

- inference must read x and write y: at best a prefetched non-temporal copy;
- a training forward on data larger than the caches must also read x once before
  (statistics first): at best a read pass plus that copy.

PyTorch's time over these floors is the most any implementation can beat it by.
Usage (x86-64 with AVX2, a C compiler with OpenMP, PyTorch installed):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/traffic_floor.py
"""
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

import fastbn
from fastbn import _bench

SHAPES = [("8192x4096", (8192, 4096), 1), ("NCHW 64x64x56x56", (64, 64, 56, 56), 1),
          ("NHWC 64x56x56x64", (64, 56, 56, 64), -1)]


def build_floor(tmp):
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "traffic_floor.c")
    lib = os.path.join(tmp, "traffic_floor.so")
    cc = os.environ.get("CC", "cc")
    subprocess.run([cc, "-O2", "-shared", "-fPIC", "-fopenmp", src, "-o", lib], check=True)
    floor = ctypes.CDLL(lib)
    floor.floor_read.restype = ctypes.c_float
    return floor


def main(threads=2, repeat=15):
    import torch
    fastbn.set_num_threads(threads)
    torch.set_num_threads(threads)
    with tempfile.TemporaryDirectory() as tmp:
        floor = build_floor(tmp)
        print(f"float32, {threads} threads, medians of {repeat} interleaved samples (ms)")
        for name, shape, axis in SHAPES:
            d = _bench.make_data(shape, axis, np.float32)
            ours, theirs = _bench.numpy_ops(fastbn, d), _bench.torch_ops(torch, d)
            x, y = d["x"], np.ones_like(d["x"])
            args = (ctypes.c_void_p(y.ctypes.data), ctypes.c_void_p(x.ctypes.data),
                    ctypes.c_size_t(x.size), threads)

            def copy():
                floor.floor_copy(*args)

            def read_copy():
                floor.floor_read(args[1], args[2], threads)
                floor.floor_copy(*args)

            cands = {"fastbn inference": ours["inference"],
                     "torch inference": _bench.fastest(theirs["inference"])[1],
                     "floor copy": copy,
                     "fastbn forward": ours["forward-train"],
                     "torch forward": _bench.fastest(theirs["forward-train"])[1],
                     "floor read+copy": read_copy}
            samples = _bench.interleaved({k: (fn, repeat) for k, fn in cands.items()}, repeat)
            t = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
            print(f"\n{name}: " + ", ".join(f"{k} {v:.2f}" for k, v in t.items()))
            for op, fl in (("inference", "floor copy"), ("forward", "floor read+copy")):
                print(f"  {op:9s}: torch / fastbn {t['torch ' + op] / t['fastbn ' + op]:.2f}x,"
                      f" torch / floor {t['torch ' + op] / t[fl]:.2f}x (the most possible),"
                      f" fastbn / floor {t['fastbn ' + op] / t[fl]:.2f}")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
