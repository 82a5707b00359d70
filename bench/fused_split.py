"""A fused training op against the same work split into fastbn's building blocks, on
the same arrays in one process: the forward (`fastbn.forward`) against
`batch_stats` then `normalize`, the backward (`fastbn.backward`) against
`backward_reduce` then `backward_elemt`. Prints the medians (ms) of interleaved
samples and the median of the pairwise ratios split / fused (< 1: the split is
faster). Warm: fastbn._bench.interleaved's samples (calls back to back, so
arrays that fit in the caches stay there). --cold: each sample is one call after a
96 MB write has evicted the caches (the arrays come from memory, as in a network
whose other layers ran in between). Used to choose where the 16-bit backward on threads goes unfused
(`fbn_run_pass_<sfx>`, kern_fused.h; docs/performance.md). Usage:

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/fused_split.py
    python bench/fused_split.py --shapes 64x64x32x32 --dtypes float16,bfloat16 --cold
"""
import argparse
import statistics
import time

import numpy as np

import fastbn
from fastbn import _bench

try:
    import ml_dtypes
except ImportError:  # bfloat16 is optional
    ml_dtypes = None


def ops(x, g, b, dy):
    """name: (fused call, split call) on these arrays, preallocated outputs."""
    out = np.empty_like(x)
    _, cache = fastbn.forward(x, g, b)
    count, mean, m2 = fastbn.batch_stats(x)
    invstd = 1 / np.sqrt(m2 / count + 1e-5)

    def forward_split():
        n, mu, sq = fastbn.batch_stats(x)
        fastbn.normalize(x, mu, 1 / np.sqrt(sq / n + 1e-5), g, b, out=out)

    def backward_split():
        sum_dy, sum_dy_xhat = fastbn.backward_reduce(dy, x, mean, invstd)[:2]
        fastbn.backward_elemt(dy, x, mean, invstd, g, sum_dy, sum_dy_xhat, count, out=out)

    return {"forward": (lambda: fastbn.forward(x, g, b, out=out), forward_split),
            "backward": (lambda: fastbn.backward(dy, cache, out=out), backward_split)}


def cold_samples(fused, split, repeat):
    """Alternating samples of one call each, the caches evicted before each."""
    junk = np.ones(12 << 20)
    samples = {fused: [], split: []}
    for i in range(repeat):
        for f in (fused, split) if i % 2 else (split, fused):
            junk[::8] += 1.0  # every 64-byte line of 96 MB
            t0 = time.perf_counter()
            f()
            samples[f].append(time.perf_counter() - t0)
    return samples[fused], samples[split]


def warm_samples(fused, split, repeat):
    s = _bench.interleaved({"fused": (fused, repeat), "split": (split, repeat)}, repeat)
    return s["fused"], s["split"]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", default="32x64x32x32,64x64x32x32,64x64x56x56")
    ap.add_argument("--dtypes", default="float32,float16,bfloat16")
    ap.add_argument("--ops", default="forward,backward")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeat", type=int, default=0, help="samples (default 11, cold 31)")
    ap.add_argument("--cold", action="store_true")
    a = ap.parse_args()
    sample = cold_samples if a.cold else warm_samples
    repeat = a.repeat or (31 if a.cold else 11)
    rng = np.random.default_rng(0)
    print(f"{'cold' if a.cold else 'warm'}, medians of {repeat} interleaved samples (ms)")
    print("| shape | dtype | threads | op | fused | split | split / fused |")
    print("|---|---|---|---|---|---|---|")
    for shape_text in a.shapes.split(","):
        shape = tuple(int(v) for v in shape_text.split("x"))
        for name in a.dtypes.split(","):
            if name == "bfloat16" and ml_dtypes is None:
                continue
            dt = ml_dtypes.bfloat16 if name == "bfloat16" else np.dtype(name)
            x = rng.standard_normal(shape).astype(dt)
            dy = rng.standard_normal(shape).astype(dt)
            g, b = np.ones(shape[1], np.float32), np.zeros(shape[1], np.float32)
            calls = ops(x, g, b, dy)
            for threads in a.threads.split(","):
                fastbn.set_num_threads(int(threads))
                for op in a.ops.split(","):
                    fused, split = calls[op]
                    tf, ts = sample(fused, split, repeat)
                    ratio = [s / f for f, s in zip(tf, ts)]
                    ms = [f"{statistics.median(v) * 1e3:.2f}" for v in (tf, ts)]
                    print(f"| {shape_text} | {name} | {threads} | {op} | {ms[0]} | {ms[1]} | "
                          f"{statistics.median(ratio):.3f} |", flush=True)


if __name__ == "__main__":
    main()
