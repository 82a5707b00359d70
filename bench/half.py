"""Half-precision data (issue 19): fastbn's float16 and bfloat16 ops against its
float32 ones, their traffic floors and PyTorch's float16/bfloat16 CPU batch norm,
all in one run (medians of interleaved samples, so that the machine's load falls
on every candidate alike).

Parameters and running statistics are float32 for every dtype (PyTorch's mixed
precision: half data, float32 weight, bias and statistics). Floors
(bench/traffic_floor.c: passes that only move the bytes) for the half data's bytes:
  inference  copy x -> y                            (read x, write y)
  forward    read x, then copy x -> y               (statistics, then y)
  backward   read x and dy, read dy, copy x -> dx   (sums, then dx)
Usage (x86-64 with AVX2, a C compiler with OpenMP, PyTorch and ml_dtypes installed):

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/half.py [threads] [repeat]
"""
import ctypes
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
from traffic_floor import SHAPES, build_floor  # noqa: E402

DTYPES = [("float32", np.float32), ("float16", np.float16), ("bfloat16", ml_dtypes.bfloat16)]
OPS = ["forward-train", "backward", "inference"]


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


def floors(floor, d, threads):
    x, dy = d["x"], d["dy"]
    out = np.ones_like(x)
    n = ctypes.c_size_t(x.nbytes // 4)  # the floor passes count float32 values: same bytes
    px, pdy, po = (ctypes.c_void_p(a.ctypes.data) for a in (x, dy, out))

    def copy(keep=(x, dy, out)):  # the arrays stay alive as long as the passes
        floor.floor_copy(po, px, n, threads)

    def read_copy():
        floor.floor_read(px, n, threads)
        copy()

    def backward():
        floor.floor_read(px, n, threads)
        floor.floor_read(pdy, n, threads)
        floor.floor_read(pdy, n, threads)
        copy()

    return {"forward-train": read_copy, "backward": backward, "inference": copy}


def main(threads=2, repeat=9):
    import torch
    fastbn.set_num_threads(threads)
    torch.set_num_threads(threads)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        floor = build_floor(tmp)
        for name, shape, axis in SHAPES:
            cands = {}
            for dname, dtype in DTYPES:
                d = data(shape, axis, dtype)
                ours = _bench.numpy_ops(fastbn, d)
                for op in OPS:
                    cands[("fastbn", dname, op)] = ours[op]
                if dname != "float32":
                    tdtype = torch.float16 if dname == "float16" else torch.bfloat16
                    theirs = torch_ops(torch, d, tdtype)
                    fl = floors(floor, d, threads)
                    for op in OPS:
                        cands[("torch", dname, op)] = theirs[op]
                        cands[("floor", dname, op)] = fl[op]
            samples = _bench.interleaved({k: (fn, repeat) for k, fn in cands.items()}, repeat)
            t = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
            for op in OPS:
                f32 = t[("fastbn", "float32", op)]
                for dname in ("float16", "bfloat16"):
                    ours, fl, th = (t[(w, dname, op)] for w in ("fastbn", "floor", "torch"))
                    rows.append((name, op, dname, f32, ours, fl, th))
    print(f"half-precision data, {threads} threads, medians of {repeat} interleaved samples "
          f"(ms); parameters and statistics float32\n")
    print("| shape | op | dtype | fastbn float32 | fastbn half | half / float32 | "
          "half / floor | PyTorch half | PyTorch / fastbn |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, op, dname, f32, ours, fl, th in rows:
        print(f"| {name} | {op} | {dname} | {f32:.2f} | {ours:.2f} | {ours / f32:.2f} | "
              f"{ours / fl:.2f} | {th:.2f} | {th / ours:.2f} |")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:]))
