"""What a fresh output costs on a large array: fastbn.forward(x) against
fastbn.forward(x, out=y) on 64x64x56x56 float32 (51 MB), calls interleaved,
medians of 15. A new output's pages are zeroed by the kernel at first touch.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/fresh_output_cost.py
"""
import time

import numpy as np

import fastbn


def main():
    x = np.random.default_rng(0).standard_normal((64, 64, 56, 56)).astype(np.float32)
    y = np.empty_like(x)
    calls = {"new output": lambda: fastbn.forward(x), "out=": lambda: fastbn.forward(x, out=y)}
    times = {name: [] for name in calls}
    for _ in range(15):
        for name, call in calls.items():
            t = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - t)
    new, out = (float(np.median(times[name])) for name in calls)
    print(f"64x64x56x56 float32 forward, {fastbn.get_num_threads()} threads: new output "
          f"{new * 1e3:.1f} ms, out= {out * 1e3:.1f} ms, ratio {new / out:.2f}")


if __name__ == "__main__":
    main()
