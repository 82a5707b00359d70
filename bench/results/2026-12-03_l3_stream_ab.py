"""A/B in one process: fastbn with L3 as detected (A) vs L3 from sysfs (B)."""
import sys, statistics, time
import numpy as np
import fastbn
from fastbn import _bench, _kernels
shapes = {"nc": ((8192, 4096), 1), "nchw": ((64, 64, 56, 56), 1), "nhwc": ((64, 56, 56, 64), -1),
          "nc-small": ((512, 4096), 1), "nchw-small": ((32, 256, 14, 14), 1)}
A = tuple(int(v) for v in sys.argv[1].split(","))
B = tuple(int(v) for v in sys.argv[2].split(","))
keys = sys.argv[3].split(",")
THREADS = (1, 2) if len(sys.argv) <= 6 else tuple(int(t) for t in sys.argv[6].split(","))
reps = int(sys.argv[4]) if len(sys.argv) > 4 else 9
dt = np.dtype(sys.argv[5]) if len(sys.argv) > 5 else np.float32
for key in keys:
    shape, axis = shapes[key]
    d = _bench.make_data(shape, axis, dt)
    ops = _bench.numpy_ops(fastbn, d)
    for th in THREADS:
        fastbn.set_num_threads(th)
        for op in ("forward-train", "backward", "inference"):
            fn = ops[op]
            n = _bench.calls_per_sample(fn)[0]
            ta, tb = [], []
            for r in range(reps):
                for lab, cs, acc in (("A", A, ta), ("B", B, tb)) if r % 2 == 0 else (("B", B, tb), ("A", A, ta)):
                    _kernels._set_cache_sizes(*cs)
                    fn()
                    t0 = time.perf_counter()
                    for _ in range(n): fn()
                    acc.append((time.perf_counter() - t0) / n)
            ratios = [b / a for a, b in zip(ta, tb)]
            print(f"{key:10s} {op:14s} {th}t  A {statistics.median(ta)*1e3:7.3f} ms  B {statistics.median(tb)*1e3:7.3f} ms  B/A med {statistics.median(ratios):.3f}", flush=True)
