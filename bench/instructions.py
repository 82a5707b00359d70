"""Instruction counts of the kernels, old build against new: a timing A/B that no
other process can disturb (valgrind's callgrind counts the instructions each kernel
entry point executes, its callees included, on one thread).

    python bench/instructions.py OLD_TREE NEW_TREE     # both built in place

Counts are not times: memory traffic and prefetching are not in them. They answer
"did the generated code change?", which a busy machine's timings cannot. Needs
valgrind (with callgrind_annotate); takes a few minutes.
"""
import glob
import importlib.machinery
import importlib.util
import os
import re
import subprocess
import sys
import tempfile

import numpy as np

# (outer, C, inner): columns shapes (small and wide C), rows shapes, and float32
# outputs of 16 MB or more (streamed)
SHAPES = [(256, 300, 1), (64, 64, 196), (4096, 64, 1), (512, 1024, 1), (8, 32, 1000),
          (5000, 840, 1), (4, 8, 133200)]
KERNELS = ["forward_train", "forward_infer", "backward", "batch_stats", "backward_reduce",
           "backward_elemt"]


def workload(tree):
    """Every kernel, with and without ReLU, on every shape, one thread."""
    (path,) = glob.glob(os.path.join(tree, "fastbn", "_kernels*.so"))
    loader = importlib.machinery.ExtensionFileLoader("fastbn._kernels", path)
    spec = importlib.util.spec_from_file_location("fastbn._kernels", path, loader=loader)
    k = importlib.util.module_from_spec(spec)
    loader.exec_module(k)
    rng = np.random.default_rng(0)
    for dt in (np.float32, np.float64):
        for sh in SHAPES:
            if dt == np.float64 and np.prod(sh) > 3_000_000:
                continue
            x = (rng.standard_normal(sh) * 2 + 1).astype(dt)
            dy = rng.standard_normal(sh).astype(dt)
            C = sh[1]
            out, v = np.empty_like(x), [np.zeros(C) for _ in range(8)]
            g, b, inv = np.full(C, 1.5), np.full(C, 0.25), np.full(C, 0.9)
            mean = x.mean(axis=(0, 2)).astype(np.float64)
            for relu in (False, True):
                k.forward_train(x, out, g, b, 1e-5, relu, *v[:4], 1)
                k.forward_infer(x, out, mean, v[2] + 1, g, b, 1e-5, relu, v[5], 1)
                k.backward_fused(dy, x, out, mean, v[1], inv, g, b, relu, True, v[6], v[7], 1)
                k.batch_stats(x, *v[:3], 1)
                k.backward_reduce(dy, x, mean, None, None, relu, v[0], v[1], 1)
                k.backward_elemt(dy, x, out, mean, inv, g * inv, v[3], v[4], None, None,
                                 relu, 1)


def counts(tree, tmp):
    out = os.path.join(tmp, "cg." + str(abs(hash(tree))))
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                    sys.executable, os.path.abspath(__file__), "--workload", tree],
                   check=True, capture_output=True)
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", out], check=True,
                          capture_output=True, text=True).stdout
    found = {}
    pattern = re.compile(r"^\s*([\d,]+) \([ \d.]+%\)\s+=> \S*:fbn_(\w+?)_(f32|f64) \(")
    for line in text.splitlines():
        m = pattern.match(line)
        if m and m.group(2) in KERNELS:
            found[f"fbn_{m.group(2)}_{m.group(3)}"] = int(m.group(1).replace(",", ""))
    return found


def main(argv):
    if argv and argv[0] == "--workload":
        return workload(argv[1])
    old_tree, new_tree = argv
    with tempfile.TemporaryDirectory() as tmp:
        old, new = counts(old_tree, tmp), counts(new_tree, tmp)
    print(f"{'kernel (inclusive instructions)':32s} {'old':>14s} {'new':>14s} {'new/old':>8s}")
    for name in sorted(set(old) & set(new)):
        print(f"{name:32s} {old[name]:14d} {new[name]:14d} {new[name] / old[name]:8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
