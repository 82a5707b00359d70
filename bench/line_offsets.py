"""Inference of a columns-shape array with x and the output at chosen offsets within a
64-byte line, old build against new, both loaded in one process (interleaved,
min of samples): the A/B behind spans that follow the output's lines (kern_walk.h).

    python bench/line_offsets.py OLD_TREE,NEW_TREE [THREADS] [C] [ROWS]   # built in place

Prints microseconds per call for each (x offset, output offset) pair, one figure per
tree. NumPy's heap arrays start anywhere 16 bytes apart, its large ones 16 bytes
past a line: x and a fresh output rarely share their offset in a line.
"""
import glob
import importlib.machinery
import importlib.util
import os
import sys
import time

import numpy as np


def load(tree):
    (path,) = glob.glob(os.path.join(tree, "fastbn", "_kernels*.so"))
    loader = importlib.machinery.ExtensionFileLoader("fastbn._kernels", path)
    spec = importlib.util.spec_from_file_location("fastbn._kernels", path, loader=loader)
    k = importlib.util.module_from_spec(spec)
    loader.exec_module(k)
    return k


def aligned(n, dt, off):
    """n values of dt starting off bytes past a page (and so a line) boundary."""
    itemsize = np.dtype(dt).itemsize
    buf = np.empty(n * itemsize + 8192 + off, np.uint8)
    start = (-buf.ctypes.data) % 4096 + off
    return buf[start:start + n * itemsize].view(dt)


def main():
    ks = [load(t) for t in sys.argv[1].split(",")]
    nt = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    C = int(sys.argv[3]) if len(sys.argv) > 3 else 512
    R = int(sys.argv[4]) if len(sys.argv) > 4 else 256
    for dt in (np.float32, np.float64):
        n = R * C
        mean, var, g, b, inv = np.zeros(C), np.ones(C), np.ones(C), np.zeros(C), np.empty(C)
        cases = [(xo, yo) for xo in (16, 0, 32) for yo in (1024, 1040, 1056, 1072)]
        arr = {}
        for xo, yo in cases:
            x = aligned(n, dt, xo); x[:] = np.random.default_rng(0).standard_normal(n)
            arr[xo, yo] = (x.reshape(R, C, 1), aligned(n, dt, yo).reshape(R, C, 1))
        best = {c: [1e9] * len(ks) for c in cases}
        for r in range(9):
            for c in cases:
                x3, y3 = arr[c]
                for j, k in enumerate(ks):
                    t0 = time.perf_counter_ns()
                    for i in range(20): k.forward_infer(x3, y3, mean, var, g, b, 1e-5, False, inv, nt)
                    best[c][j] = min(best[c][j], (time.perf_counter_ns() - t0) / 20)
        print(np.dtype(dt).name, f"({R},{C}) thr {nt} x%64,y%64: us per tree:", " ".join(f"({xo%64},{yo%64}):" + "/".join(f"{v/1000:.0f}" for v in best[xo,yo]) for xo, yo in cases))


if __name__ == "__main__":
    main()
