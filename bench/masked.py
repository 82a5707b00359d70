"""mask= against unmasked data, same run, interleaved (issue 20): min-of-repeats times
of forward and backward (training) on padded sequences (N, C, L) with an (N, 1, L)
mask, and their ratios masked / unmasked. Run it from a tree (PYTHONPATH) to compare
trees by their ratios: `python bench/masked.py [repeats] [--cpu] [--large]` (--cpu:
process CPU time, all threads', for a loaded machine; --large adds (64, 64, 4096)
float32, 64 MB: beyond the caches, streamed outputs)."""
import sys
import time

import numpy as np

import fastbn

SHAPES = [(32, 64, 256), (16, 256, 128), (8, 32, 4096)]
LARGE = (64, 64, 4096)  # float32 only
CLOCK = time.perf_counter


def best(fn, repeats):
    t = []
    for _ in range(repeats):
        t0 = CLOCK()
        fn()
        t.append(CLOCK() - t0)
    return min(t)


def main(repeats=30, large=False):
    rng = np.random.default_rng(0)
    print(f"fastbn {fastbn.__file__}, threads {fastbn.get_num_threads()}, clock "
          f"{CLOCK.__name__}")
    print("shape dtype | fwd unmasked ms, masked ms, ratio | bwd unmasked ms, masked ms, ratio")
    cases = [(sh, dt) for sh in SHAPES for dt in (np.float32, np.float64)]
    for shape, dt in cases + ([(LARGE, np.float32)] if large else []):
        n, c, length = shape
        x = rng.standard_normal(shape).astype(dt)
        dy = rng.standard_normal(shape).astype(dt)
        g, b = np.ones(c, np.float32), np.zeros(c, np.float32)
        lengths = rng.integers(length // 2, length + 1, n)
        mask = (np.arange(length)[None, :] < lengths[:, None])[:, None, :]
        _, cu = fastbn.forward(x, g, b)
        _, cm = fastbn.forward(x, g, b, mask=mask)
        f_u, f_m, b_u, b_m = [], [], [], []
        for _ in range(5):  # interleaved rounds
            f_u.append(best(lambda: fastbn.forward(x, g, b), repeats))
            f_m.append(best(lambda: fastbn.forward(x, g, b, mask=mask), repeats))
            b_u.append(best(lambda: fastbn.backward(dy, cu), repeats))
            b_m.append(best(lambda: fastbn.backward(dy, cm), repeats))
        fu, fm, bu, bm = (min(v) * 1e3 for v in (f_u, f_m, b_u, b_m))
        print(f"{shape} {np.dtype(dt).name:7s} | {fu:7.3f} {fm:7.3f} {fm / fu:5.2f} | "
              f"{bu:7.3f} {bm:7.3f} {bm / bu:5.2f}")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    if "--cpu" in sys.argv:
        CLOCK = time.process_time
    main(int(args[0]) if args else 30, "--large" in sys.argv)
