"""16-bit streamed inference with the output at chosen places in a 4 KB page relative
to x, two builds loaded in one process (interleaved, medians of samples): the A/B
behind FBN_STREAM_ALIAS_BYTES (src_c/tuning.h). Streamed runs go straight from
registers (fbn_stream_regs, kern_elemwise.h) except where the output lies up
to that many bytes past x in a page: there the loads that run ahead of the pending
streamed stores waited on them (4K aliasing).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE \
        python bench/stream_alias.py OLD_TREE,NEW_TREE [THREADS] [SHAPE]   # built in place

SHAPE like 128x128x28x28 (NCHW, the default); x starts 16 bytes past a page (as
NumPy's large arrays do). Prints, per dtype and the output's distance past x in the
page (bytes, modulo 4096), each tree's median microseconds per call and new / old.
"""
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from ab import load  # noqa: E402  (a tree's built _kernels as a module of its own)

DISTANCES = [0, -16, 16, 32, 64, 128, 256, 512, 1024, 2048]


def at_page_offset(n, off):
    """n uint16 values (16-bit data's bits) starting off bytes into a 4 KB page, its
    pages touched (outputs in untouched pages take plain stores: fbn_resident)."""
    buf = np.ones(n * 2 + 8192, np.uint8)
    start = (off - buf.ctypes.data) % 4096
    return buf[start:start + n * 2].view(np.uint16)


def main():
    ks = [load(t, f"tree{i}") for i, t in enumerate(sys.argv[1].split(","))]
    nt = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    spec = sys.argv[3] if len(sys.argv) > 3 else "128x128x28x28"
    shape = tuple(int(v) for v in spec.split("x"))
    N, C, inner = shape[0], shape[1], int(np.prod(shape[2:]))
    n = N * C * inner
    rng = np.random.default_rng(0)
    mean, var = rng.standard_normal(C), rng.uniform(0.5, 2, C)
    g, b, inv = rng.uniform(0.5, 1.5, C), rng.standard_normal(C), np.empty(C)
    x = at_page_offset(n, 16)
    x[:] = (rng.standard_normal(n) * 2 + 1).astype(np.float16).view(np.uint16)  # finite
    print(f"{shape} {nt} thread(s); x 16 bytes into a page; us per call, medians of 15: "
          "old / new (new / old)")
    for code, name in ((2, "float16"), (3, "bfloat16")):
        row = []
        for d in DISTANCES:
            y = at_page_offset(n, (16 + d) % 4096)
            x3, y3 = x.reshape(N, C, inner), y.reshape(N, C, inner)
            times = [[] for _ in ks]
            for s in range(15):
                order = range(len(ks)) if s % 2 == 0 else reversed(range(len(ks)))
                for j in order:
                    t0 = time.perf_counter_ns()
                    ks[j].forward_infer(x3, y3, mean, var, g, b, 1e-5, False, inv, nt, dt=code)
                    times[j].append(time.perf_counter_ns() - t0)
            med = [statistics.median(t) / 1000 for t in times]
            row.append(f"{d:+d}: {med[0]:.0f} / {med[-1]:.0f} ({med[-1] / med[0]:.2f})")
        print(name, "  ".join(row))


if __name__ == "__main__":
    main()
