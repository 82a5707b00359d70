"""Small calls with half-precision data and parameters of a given dtype, as naive
half-precision code makes them (np.ones(C, x.dtype)): forward with running
statistics, backward, eval, in microseconds per call (best of 5 rounds of --calls).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE PYTHONPATH=TREE python bench/half_params_cost.py \
        [--shape 32x64] [--calls 500]

Run it for two build trees in alternation to compare them.
"""
import argparse
import timeit

import numpy as np

import fastbn


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="32x64")
    ap.add_argument("--calls", type=int, default=500)
    a = ap.parse_args()
    shape = tuple(int(v) for v in a.shape.split("x"))
    C = shape[1]
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float16)
    fastbn.set_num_threads(1)
    print(f"fastbn from {fastbn.__file__}, float16 data {shape}, 1 thread; us per call")
    for pd in (np.float32, np.float16):
        g, b = np.ones(C, pd), np.zeros(C, pd)
        rm, rv = np.zeros(C, pd), np.ones(C, pd)
        _, cache = fastbn.forward(x, g, b)
        calls = {"forward": lambda: fastbn.forward(x, g, b, running_mean=rm, running_var=rv),
                 "backward": lambda: fastbn.backward(x, cache),
                 "eval": lambda: fastbn.forward(x, g, b, training=False, running_mean=rm,
                                                running_var=rv)}
        row = [f"{k} {min(timeit.repeat(f, number=a.calls, repeat=5)) / a.calls * 1e6:.2f}"
               for k, f in calls.items()]
        print(f"{np.dtype(pd).name:>8} parameters: " + ", ".join(row))


if __name__ == "__main__":
    main()
