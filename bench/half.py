"""Half-precision data (issue 19): fastbn's float16 and bfloat16 ops against its
float32 ones, their traffic floors and PyTorch's float16/bfloat16 CPU batch norm,
all in one run (medians of interleaved samples, so that the machine's load falls
on every candidate alike).

Parameters and running statistics are float32 for every dtype (PyTorch's mixed
precision: half data, float32 weight, bias and statistics). Floors are
bench/traffic_floor.py's (passes that only move the half data's bytes, the best of
streamed and plain stores): inference one copy x -> y; forward a read of x then that
copy where a channel does not stay in cache between its statistics and its output
((N, C), NHWC), else the copy; backward a read of x and dy then a pass reading x and
dy and writing dx (one pass for NCHW).

The table: per shape, op and half dtype, fastbn's float32 and half times (ms), half /
float32 (issue 19's target: <= 0.6 on the large shapes), half / floor (<= 1.10),
PyTorch's half time and PyTorch / fastbn (> 1: fastbn ahead).
Usage (x86-64 with AVX2, a C compiler with OpenMP, PyTorch and ml_dtypes installed):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/half.py [--threads 2]
        [--repeat 9] [--shapes nc,nchw,nhwc]   (bench/traffic_floor.py's shape keys)
"""
import argparse
import os
import statistics
import sys
import tempfile

import ml_dtypes
import numpy as np

if __name__ == "__main__":  # from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastbn  # noqa: E402
from fastbn import _bench  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from traffic_floor import SHAPES, build_floor, floor_passes, floors  # noqa: E402

DTYPES = [("float32", np.float32), ("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16)]
OPS = ["forward-train", "backward", "inference"]
FLOOR_OP = {"forward-train": "forward", "backward": "backward", "inference": "inference"}


def data(shape, axis, dtype):
    d = _bench.make_data(shape, axis, np.float32)
    d["x"], d["dy"] = d["x"].astype(dtype), d["dy"].astype(dtype)
    return d  # gamma, beta float32


def torch_ops(torch, d, tdtype):
    """PyTorch's ops on the same data as torch tensors of `tdtype`, float32 parameters."""
    aten = torch.ops.aten
    x = torch.from_numpy(d["x"].astype(np.float32)).to(tdtype).movedim(d["axis"], 1)
    dy = torch.from_numpy(d["dy"].astype(np.float32)).to(tdtype).movedim(d["axis"], 1)
    if d["axis"] != 1:  # channels-last memory, as the NumPy array
        x = x.contiguous(memory_format=torch.channels_last)
        dy = dy.contiguous(memory_format=torch.channels_last)
    w, b = torch.from_numpy(d["gamma"]), torch.from_numpy(d["beta"])
    C, eps = d["C"], 1e-5
    rm, rv = torch.zeros(C), torch.ones(C)
    _, save_mean, save_invstd = aten.native_batch_norm(x, w, b, rm, rv, True, 0.1, eps)
    mask = [True, True, True]
    return {
        "forward-train": lambda: aten.native_batch_norm(x, w, b, rm, rv, True, 0.1, eps),
        "backward": lambda: aten.native_batch_norm_backward(
            dy, x, w, rm, rv, save_mean, save_invstd, True, eps, mask),
        "inference": lambda: aten.native_batch_norm(x, w, b, rm, rv, False, 0.1, eps),
    }


def fastbn_ops(d):
    """fastbn's ops on d's data, float32 parameters and running statistics."""
    x, dy, gamma, beta, axis, C = d["x"], d["dy"], d["gamma"], d["beta"], d["axis"], d["C"]
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    y, dx = np.ones_like(x), np.ones_like(x)
    dg, db = np.ones_like(gamma), np.ones_like(beta)
    _, cache = fastbn.forward(x, gamma, beta, axis=axis, running_mean=rm, running_var=rv, out=y)
    return {
        "forward-train": lambda: fastbn.forward(x, gamma, beta, axis=axis, running_mean=rm,
                                                running_var=rv, out=y),
        "backward": lambda: fastbn.backward(dy, cache, out=(dx, dg, db)),
        "inference": lambda: fastbn.forward(x, gamma, beta, axis=axis, training=False,
                                            running_mean=rm, running_var=rv, out=y),
    }


def loadavg():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--shapes", default="nc,nchw,nhwc")
    a = ap.parse_args(argv)
    import torch
    threads, repeat = a.threads, a.repeat
    fastbn.set_num_threads(threads)
    torch.set_num_threads(threads)
    rows, load0 = [], loadavg()
    with tempfile.TemporaryDirectory() as tmp:
        floor = build_floor(tmp)
        for key in a.shapes.split(","):
            name, shape, axis, two_pass = SHAPES[key]
            cands, keep = {}, []
            for dname, dtype in DTYPES:
                d = data(shape, axis, dtype)
                keep.append(d)
                for op, fn in fastbn_ops(d).items():
                    cands[("fastbn", dname, op)] = fn
                if dname != "float32":
                    tdtype = torch.float16 if dname == "float16" else torch.bfloat16
                    for op, fn in torch_ops(torch, d, tdtype).items():
                        cands[("torch", dname, op)] = fn
                    for pname, fn in floor_passes(floor, d, threads).items():
                        cands[("pass", dname, pname)] = fn
            samples = _bench.interleaved({k: (fn, repeat) for k, fn in cands.items()}, repeat)
            t = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
            for op in OPS:
                f32 = t[("fastbn", "float32", op)]
                for dname in ("float16", "bfloat16"):
                    passes = {p: v for (w, dn, p), v in t.items() if w == "pass" and dn == dname}
                    fl = floors(passes, two_pass)[FLOOR_OP[op]]
                    ours, th = t[("fastbn", dname, op)], t[("torch", dname, op)]
                    rows.append((name, op, dname, f32, ours, fl, th))
    print(f"half-precision data, {threads} threads, medians of {repeat} interleaved samples "
          f"(ms); parameters and statistics float32; load average {load0} before, "
          f"{loadavg()} after\n")
    print("| shape | op | dtype | fastbn float32 | fastbn half | half / float32 | "
          "half / floor | PyTorch half | PyTorch / fastbn |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, op, dname, f32, ours, fl, th in rows:
        print(f"| {name} | {op} | {dname} | {f32:.2f} | {ours:.2f} | {ours / f32:.2f} | "
              f"{ours / fl:.2f} | {th:.2f} | {th / ours:.2f} |")


if __name__ == "__main__":
    main()
