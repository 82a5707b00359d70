"""A row-strided slice against its contiguous copy (issue 17), interleaved in one run.

    python bench/slices.py [--samples 15] [--threads 2]

For each case, forward (training), inference and backward on the slice x (no copy
since fbn_shape.row_stride) and on np.ascontiguousarray(x), samples alternating
(A B B A ...), each sample the process CPU time of calls repeated for >= 20 ms;
prints the fastest sample of each and their ratio slice / copy (1.0: the slice
costs what contiguous data costs; before, the slice paid a copy on top).
"""
import argparse
import time

import numpy as np

import fastbn

CASES = [  # name, base shape, slice, axis
    ("(8192,4096)[:, 1024:3072]", (8192, 4096), (slice(None), slice(1024, 3072)), 1),
    ("(4096,4096)[::2]", (4096, 4096), (slice(None, None, 2),), 1),
    ("NCHW (64,64,56,56)[:, 16:48]", (64, 64, 56, 56), (slice(None), slice(16, 48)), 1),
    ("NCHW (32,256,14,14)[::2]", (32, 256, 14, 14), (slice(None, None, 2),), 1),
    ("(512,1024)[:, 256:768]", (512, 1024), (slice(None), slice(256, 768)), 1),
    # small calls: the compiled front end's cost (~2.5 us) against the checked path's
    ("(64,256)[:, 64:192]", (64, 256), (slice(None), slice(64, 192)), 1),
    ("NCHW (16,32,8,8)[:, 8:24]", (16, 32, 8, 8), (slice(None), slice(8, 24)), 1),
]


def sample(fn, least=0.02):
    n, t0 = 0, time.process_time()
    while True:
        fn()
        n += 1
        t = time.process_time() - t0
        if t >= least:
            return t / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--samples", type=int, default=15)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    fastbn.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    print(f"{'case':32} {'op':10} {'slice ms':>9} {'copy ms':>9} {'slice/copy':>10}")
    for name, full, sl, axis in CASES:
        x = rng.standard_normal(full, dtype=np.float32)[sl]
        dy = rng.standard_normal(full, dtype=np.float32)[sl]
        xc, dyc = np.ascontiguousarray(x), np.ascontiguousarray(dy)
        C = x.shape[axis]
        rm, rv = np.zeros(C), np.ones(C)
        _, cache = fastbn.forward(x, axis=axis)
        _, cachec = fastbn.forward(xc, axis=axis)
        ops = {
            "forward": (lambda: fastbn.forward(x, axis=axis),
                        lambda: fastbn.forward(xc, axis=axis)),
            "inference": (lambda: fastbn.forward(x, axis=axis, training=False, running_mean=rm,
                                                 running_var=rv),
                          lambda: fastbn.forward(xc, axis=axis, training=False,
                                                 running_mean=rm, running_var=rv)),
            "backward": (lambda: fastbn.backward(dy, cache), lambda: fastbn.backward(dyc, cachec)),
        }
        for op, (fa, fb) in ops.items():
            ta, tb = [], []
            for i in range(a.samples):
                first, second = (fa, fb) if i % 2 == 0 else (fb, fa)
                t1, t2 = sample(first), sample(second)
                (ta, tb)[i % 2].append(t1)
                (tb, ta)[i % 2].append(t2)
            print(f"{name:32} {op:10} {min(ta) * 1e3:9.3f} {min(tb) * 1e3:9.3f} "
                  f"{min(ta) / min(tb):10.3f}", flush=True)


if __name__ == "__main__":
    main()
