"""dx's worst error in ulps for a leaky ReLU over a residual on half data (the fused
backward), against the float64 reference, with tests/test_half.py's measure.

    python bench/leaky_residual_ulps.py [TREE]   # TREE: a build tree (default: this one)

40 draws per layout and dtype: x 3 * N(0, 1), dy and z N(0, 1), gamma U(0.5, 2), beta
N(0, 1), slope 0.01. Prints the worst over the draws per layout and dtype.
"""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, sys.argv[1] if len(sys.argv) > 1 else os.path.dirname(HERE))
sys.path.insert(1, os.path.join(os.path.dirname(HERE), "tests"))

import numpy as np  # noqa: E402

import fastbn  # noqa: E402
from fastbn import reference  # noqa: E402
import test_half as th  # noqa: E402

CASES = {"(8, 5, 6), axis 1": ((8, 5, 6), 1), "NHWC (8, 6, 6, 16), axis -1": ((8, 6, 6, 16), -1),
         "(64, 20), axis 1": ((64, 20), 1)}


def f64(a):
    return a.astype(np.float64)


def main():
    print("fastbn from", fastbn.__file__)
    for name, (shape, axis) in CASES.items():
        worst = {}
        for dtype in th.HALVES:
            for seed in range(40):
                rng = np.random.default_rng([seed, 3])
                C = shape[axis]
                x = (3 * rng.standard_normal(shape)).astype(dtype)
                dy = rng.standard_normal(shape).astype(dtype)
                z = rng.standard_normal(shape).astype(dtype)
                g = rng.uniform(0.5, 2, C).astype(np.float32)
                b = rng.standard_normal(C).astype(np.float32)
                kw = dict(axis=axis, activation="leaky_relu")
                _, c = fastbn.forward(x, g, b, residual=z, **kw)
                dx = fastbn.backward(dy, c)[0]
                _, e = reference.forward(f64(x), f64(g), f64(b), residual=f64(z), **kw)
                edx = reference.backward(f64(dy), e)[0]
                scale = th.dx_scale(dy, g, e.flat("invstd")[0].ravel(), axis)
                u = th.max_ulps(dx, edx, axis, dtype, scale=scale)
                key = np.dtype(dtype).name
                worst[key] = max(worst.get(key, 0.0), u)
        print(f"{name}: " + ", ".join(f"{k} {v:.2f} ulps" for k, v in worst.items()))


if __name__ == "__main__":
    main()
