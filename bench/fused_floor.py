"""How near the copy floor a fused training forward over NCHW data can come on one
thread: fastbn's forward (out= given) beside idealised loops that do only the
forward's work (bench/fused_floor.c, built with the system C compiler), each as a
multiple of the copy (read x, write y with streamed stores), the floor that
bench/traffic_floor.py gives the NCHW forward. Medians of interleaved samples (wall
time), one thread. Usage:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/fused_floor.py
    python bench/fused_floor.py --shape 64x64x56x56 --dtype float32 --repeat 21
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

I64, INT, VP = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p


def build(tmp):
    src = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fused_floor.c")
    lib = os.path.join(tmp, "fused_floor.so")
    subprocess.run([os.environ.get("CC", "cc"), "-O3", "-march=native", "-ffp-contract=off",
                    "-shared", "-fPIC", src, "-o", lib], check=True)
    ff = ctypes.CDLL(lib)
    ff.ff_read.restype, ff.ff_stats.restype = I64, ctypes.c_double
    return ff


def aligned_like(a):
    """A copy of a whose data start on a 64-byte line (streamed stores need it)."""
    buf = np.empty(a.nbytes + 64, np.uint8)
    skip = -buf.ctypes.data % 64
    out = buf[skip:skip + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def candidates(ff, x, y, g, b):
    """{name: fn} on the same arrays."""
    N, C, H, W = x.shape
    HW, n, f64 = H * W, x.size, int(x.dtype == np.float64)
    px, py = VP(x.ctypes.data), VP(y.ctypes.data)
    dims = (I64(N), I64(C), I64(HW), INT(f64))
    cands = {"copy": lambda: ff.ff_copy(py, px, I64(n), INT(f64)),
             "copy by runs": lambda: ff.ff_copy_runs(py, px, *dims),
             "copy by 4 rows": lambda: ff.ff_copy_group(py, px, *dims, I64(4)),
             "copy by 8 rows": lambda: ff.ff_copy_group(py, px, *dims, I64(8)),
             "read": lambda: ff.ff_read(px, I64(n), INT(f64)),
             "stats": lambda: ff.ff_stats(px, I64(n), INT(f64)),
             "fused": lambda: ff.ff_fused(py, px, I64(N), I64(C), I64(HW), INT(f64))}
    for chunk in (256, 1024):
        if HW % 16 == 0 and chunk % 16 == 0:
            cands[f"overlap {chunk}"] = lambda k=chunk: ff.ff_overlap(
                py, px, I64(N), I64(C), I64(HW), INT(f64), I64(k))
    for grp in (2, 4, 8):
        for rows in (0, 1):
            cands[f"group {grp} {'rows' if rows else 'channels'}"] = \
                lambda k=grp, r=rows: ff.ff_group(py, px, *dims, I64(k), INT(r))
    cands["fastbn forward"] = lambda: fastbn.forward(x, g, b, out=y)
    return cands


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", default="64x64x56x56", help="NCHW, H*W a multiple of 16")
    ap.add_argument("--dtype", default="float32,float64")
    ap.add_argument("--repeat", type=int, default=15)
    a = ap.parse_args(argv)
    shape = tuple(int(v) for v in a.shape.split("x"))
    if len(shape) != 4 or shape[2] * shape[3] % 16:
        ap.error("--shape must be NxCxHxW with H*W a multiple of 16")
    fastbn.set_num_threads(1)
    with open("/proc/loadavg") as f:
        print("load average", " ".join(f.read().split()[:3]), f"; medians of {a.repeat} "
              "interleaved samples, 1 thread; time / copy")
    with tempfile.TemporaryDirectory() as tmp:
        ff = build(tmp)
        for dtype in a.dtype.split(","):
            d = _bench.make_data(shape, 1, np.dtype(dtype))
            x, g, b = aligned_like(d["x"]), d["gamma"], d["beta"]
            y = aligned_like(np.ones_like(x))
            cands = candidates(ff, x, y, g, b)
            samples = _bench.interleaved({k: (fn, a.repeat) for k, fn in cands.items()},
                                         a.repeat)
            t = {k: statistics.median(v) for k, v in samples.items()}
            print(f"NCHW {a.shape} {dtype}: " + ", ".join(
                f"{k} {t[k] / t['copy']:.2f}" for k in cands))


if __name__ == "__main__":
    main()
