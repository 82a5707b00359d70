"""Single calls after a pause, 1 against 2 threads, in one build: what waking the pool's
sleeping workers costs a small call (fbn_pool_threads, parallel.c).

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/wake_cost.py TREE PAUSE_MS SHAPES DTYPES
    e.g. bench/wake_cost.py . 2 256x512,64x64x8x8 float32

TREE: a source tree with its extension built in place. Each sample: one untimed call, a
pause of PAUSE_MS, one timed call (medians of 31, 1 and 2 threads alternating).
"""
import sys, time, statistics, numpy as np
sys.path.insert(0, sys.argv[1])
import fastbn
pause = float(sys.argv[2]) / 1000
shapes = [tuple(int(d) for d in s.split("x")) for s in sys.argv[3].split(",")]
dtypes = sys.argv[4].split(",")
print(fastbn.__file__)
rng = np.random.default_rng(0)
for dt in dtypes:
    for sh in shapes:
        x = rng.standard_normal(sh).astype(dt); dy = rng.standard_normal(sh).astype(dt)
        C = sh[1]; g = np.ones(C, np.float32); b = np.zeros(C, np.float32)
        y, cache = fastbn.forward(x, g, b, axis=1)
        rm = np.zeros(C); rv = np.ones(C)
        out = np.empty_like(x)
        ops = {
          "inf": lambda: fastbn.forward(x, g, b, axis=1, training=False, running_mean=rm, running_var=rv, out=out),
          "fwd": lambda: fastbn.forward(x, g, b, axis=1, out=out),
          "bwd": lambda: fastbn.backward(dy, cache),
        }
        for name, f in ops.items():
            t = {1: [], 2: []}
            for r in range(31):
                for nt in (1, 2) if r % 2 else (2, 1):
                    fastbn.set_num_threads(nt)
                    f()
                    time.sleep(pause)
                    t0 = time.perf_counter(); f(); t[nt].append(time.perf_counter() - t0)
            m1, m2 = statistics.median(t[1]), statistics.median(t[2])
            print(f"{name} {'x'.join(map(str,sh))} {dt} 1t {m1*1e6:8.1f} us 2t {m2*1e6:8.1f} us  2t/1t {m2/m1:.2f}", flush=True)
