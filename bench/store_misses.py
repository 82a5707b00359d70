"""Whether a fused pass waits for its output's cache lines: the training forward
out of place against the same forward in place (out=x, whose lines the statistics
just read into cache), with the statistics and inference beside them, in rounds
(medians and minima, us). For machines without hardware counters (VMs): the in-place
forward removes the output's read-for-ownership misses and nothing else.

    python bench/store_misses.py 32x256x14x14 [threads]
    PYTHONPATH=OLD_TREE python bench/store_misses.py 32x256x14x14   # another build
"""
import sys
import time

import numpy as np

import fastbn


def main(shape="32x256x14x14", threads="1", rounds=200):
    fastbn.set_num_threads(int(threads))
    shape = tuple(int(a) for a in shape.split("x"))
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype("float32")
    y, x2 = np.empty_like(x), x.copy()
    C = shape[1]
    g, b = np.ones(C, "float32"), np.zeros(C, "float32")
    rm, rv = np.zeros(C, "float32"), np.ones(C, "float32")
    fs = {"forward": lambda: fastbn.forward(x, g, b, out=y),
          "forward in place": lambda: fastbn.forward(x2, g, b, out=x2),
          "stats": lambda: fastbn.batch_stats(x),
          "inference": lambda: fastbn.forward(x, g, b, training=False, running_mean=rm,
                                              running_var=rv, out=y)}
    ts = {k: [] for k in fs}
    for _ in range(rounds):
        for k, f in fs.items():
            t = time.perf_counter()
            f()
            ts[k].append(time.perf_counter() - t)
    print(shape, f"{threads} threads:", ", ".join(
        f"{k} min {min(v) * 1e6:.0f} med {np.median(v) * 1e6:.0f}" for k, v in ts.items()))


if __name__ == "__main__":
    main(*sys.argv[1:])
