"""Issue 20 item 6: the fused residual add + activation against its composition.

    python bench/residual.py [--repeat 15] [--threads N] [--json PATH]

Per shape (float32), medians of interleaved samples (each round times every candidate
once, in a rotating order) of:
  fused     y, cache = forward(x, g, b, residual=z, activation="relu")
            dx, dg, db, dz = backward(dy, cache)
  composed  y, cache = forward(x, g, b); y += z; np.maximum(y, 0, out=y)   (BN, NumPy add, ReLU)
            dz = dy * (y > 0); dx, dg, db = backward(dz, cache)
Both allocate their outputs (the composition adds in place, its least-traffic form).
Printed: ms per forward, per forward + backward, and composed / fused.
"""
import argparse
import json
import os
import time

import numpy as np

import fastbn

SHAPES = {"nchw (32,64,56,56)": ((32, 64, 56, 56), 1), "nhwc (32,56,56,64)": ((32, 56, 56, 64), -1),
          "nchw-small (64,256,14,14)": ((64, 256, 14, 14), 1), "nc (4096,1024)": ((4096, 1024), 1)}


def fused_fwd(x, g, b, z, axis, dy):
    return fastbn.forward(x, g, b, axis=axis, residual=z, activation="relu")


def composed_fwd(x, g, b, z, axis, dy):
    y, cache = fastbn.forward(x, g, b, axis=axis)
    y += z
    np.maximum(y, 0, out=y)
    return y, cache


def fused_both(x, g, b, z, axis, dy):
    y, cache = fused_fwd(x, g, b, z, axis, dy)
    return fastbn.backward(dy, cache)


def composed_both(x, g, b, z, axis, dy):
    y, cache = composed_fwd(x, g, b, z, axis, dy)
    dz = dy * (y > 0)
    return fastbn.backward(dz, cache) + (dz,)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        fastbn.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    print(f"fastbn {fastbn.__version__}, {fastbn.get_num_threads()} threads, float32, "
          f"load average {os.getloadavg()[0]:.1f}, medians of {args.repeat} interleaved samples")
    print(f"{'shape':28s} {'fwd fused':>10s} {'fwd comp':>10s} {'ratio':>6s} "
          f"{'f+b fused':>10s} {'f+b comp':>10s} {'ratio':>6s}")
    results = {}
    for name, (shape, axis) in SHAPES.items():
        x, z, dy = (rng.standard_normal(shape, dtype=np.float32) for _ in range(3))
        C = shape[axis]
        g, b = rng.uniform(0.5, 2, C).astype(np.float32), rng.normal(0, 1, C).astype(np.float32)
        cands = {"fwd fused": fused_fwd, "fwd comp": composed_fwd, "f+b fused": fused_both,
                 "f+b comp": composed_both}
        samples = {k: [] for k in cands}
        for f in cands.values():
            f(x, g, b, z, axis, dy)
        for r in range(args.repeat):
            names = list(cands)
            names = names[r % len(names):] + names[:r % len(names)]
            for k in names:
                t = time.perf_counter()
                cands[k](x, g, b, z, axis, dy)
                samples[k].append(time.perf_counter() - t)
        med = {k: 1e3 * float(np.median(v)) for k, v in samples.items()}
        results[name] = med
        print(f"{name:28s} {med['fwd fused']:10.2f} {med['fwd comp']:10.2f} "
              f"{med['fwd comp'] / med['fwd fused']:6.2f} {med['f+b fused']:10.2f} "
              f"{med['f+b comp']:10.2f} {med['f+b comp'] / med['f+b fused']:6.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
