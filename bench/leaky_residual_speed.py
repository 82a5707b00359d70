"""The fused backward of a leaky ReLU over a residual on half data, per layout.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=TREE python bench/leaky_residual_speed.py [THREADS]

Times fastbn.backward after forward(x, g, b, activation="leaky_relu", residual=z) of
the fastbn on PYTHONPATH (run it for two build trees in alternation to compare them):
the median of 11 calls, in ms, per layout and half dtype (ml_dtypes for bfloat16).
"""
import statistics
import sys
import time

import ml_dtypes
import numpy as np

import fastbn

LAYOUTS = (("nchw (32,64,56,56)", (32, 64, 56, 56), 1), ("nhwc (32,56,56,64)", (32, 56, 56, 64), -1),
           ("nc (4096,1024)", (4096, 1024), 1))


def main():
    fastbn.set_num_threads(int(sys.argv[1]) if len(sys.argv) > 1 else 1)
    out = []
    for name, shape, axis in LAYOUTS:
        for dt in (np.float16, ml_dtypes.bfloat16):
            rng = np.random.default_rng(0)
            C = shape[axis]
            x, dy, z = (rng.standard_normal(shape).astype(dt) for _ in range(3))
            g, b = np.ones(C, np.float32), np.zeros(C, np.float32)
            _, cache = fastbn.forward(x, g, b, axis=axis, activation="leaky_relu", residual=z)
            times = []
            for _ in range(11):
                t0 = time.perf_counter()
                fastbn.backward(dy, cache)
                times.append(time.perf_counter() - t0)
            out.append(f"{name} {np.dtype(dt).name} {statistics.median(times) * 1e3:.2f}")
    print(fastbn.__file__, "; ".join(out))


if __name__ == "__main__":
    main()
