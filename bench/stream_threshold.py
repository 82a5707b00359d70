"""Where streamed (non-temporal) stores start to pay: float64 inference on NCHW
arrays of (n, 256, 196) whose input and output together take the given sizes, with
the planner's rule (streamed once they exceed three quarters of the L3 read at run
time, src_c/plan.c) against never streaming (the L3 given to the planner as 1 GB),
the two alternating call by call in one process (medians of 41 calls each), each
mode with its own output array (a streamed store to a line another mode's plain
store left in cache costs that line's write-back first).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/stream_threshold.py
        [--threads 1,2] [--mb 16,20,26,32,40,64,128,256] [--no-backoff]

"never/rule" below 1: the plain stores were faster. --no-backoff keeps the pool's
threads whatever its stall checks say (the back-off, README "busy machines").
"""
import argparse
import os
import sys
import time

import numpy as np

if __name__ == "__main__":  # from a source checkout
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fastbn  # noqa: E402
from fastbn import _kernels  # noqa: E402


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--mb", default="16,20,26,32,40,64,128,256")
    ap.add_argument("--no-backoff", action="store_true")
    a = ap.parse_args()
    l1, l2, l3 = _kernels.cache_sizes()
    print(f"caches read at run time: L1d {l1 >> 10} KB, L2 {l2 >> 10} KB, L3 {l3 >> 20} MB; "
          f"load average {os.getloadavg()[0]:.2f}")
    if a.no_backoff:
        _kernels.pool_set_backoff(False)
    for nt in (int(t) for t in a.threads.split(",")):
        fastbn.set_num_threads(nt)
        for mb in (int(m) for m in a.mb.split(",")):
            outer = max(1, mb * 2**20 // 16 // (256 * 196))
            x = np.random.default_rng(0).standard_normal((outer, 256, 196))
            g, b = np.ones(256), np.zeros(256)
            ys = {"rule": np.empty_like(x), "never": np.empty_like(x)}
            times = {"rule": [], "never": []}
            for _ in range(41):
                for mode, l3_given in (("rule", l3), ("never", 1 << 30)):
                    _kernels._set_cache_sizes(l1, l2, l3_given)
                    t = time.perf_counter()
                    fastbn.forward(x, g, b, training=False, running_mean=b, running_var=g,
                                   out=ys[mode])
                    times[mode].append(time.perf_counter() - t)
            _kernels._set_cache_sizes(l1, l2, l3)
            rule, never = (np.median(times[k]) for k in ("rule", "never"))
            print(f"{nt} thread(s)  x + y {2 * x.nbytes / 2**20:6.1f} MB  rule {rule * 1e3:7.3f} ms"
                  f"  never-streamed {never * 1e3:7.3f} ms  never/rule {never / rule:.2f}",
                  flush=True)


if __name__ == "__main__":
    main()
