"""Run under ``mpiexec -n P python -m mpi4py tests/mpi_scaling.py OUTFILE P``: the
exactness and cost cases of fastbn.distributed (issue 21).

Each case makes one batch (float64 data offset from zero by up to 1e8 times its
spread, float32 by up to 1e6), splits it unevenly over the ranks (empty ranks and a
rank with one sample included), runs sync_forward / sync_backward (and a few
SyncBatchNorm steps), and records what each rank got and what fastbn counted it
sent and received. Rank 0 pickles everything to OUTFILE;
tests/test_distributed_scaling.py does the asserting (against an extended-precision
oracle and single-process fastbn). Nothing here asserts, except the rank count.
"""
import sys

import numpy as np
from mpi4py import MPI

from fastbn.distributed import SyncBatchNorm, _traffic, sync_backward, sync_forward
from mpi_check import run_cases  # the same directory: on sys.path when run as a script

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()


def split(n_total, seed):
    """Uneven sizes summing to n_total: rank 0 empty, rank 1 one sample (P >= 3)."""
    rng = np.random.default_rng(seed)
    sizes = np.zeros(SIZE, int)
    if SIZE >= 3:
        sizes[1] = 1
        rest = n_total - 1
        cuts = np.sort(rng.integers(0, rest + 1, SIZE - 3))
        sizes[2:] = np.diff(np.concatenate([[0], cuts, [rest]]))
    else:
        sizes[:] = [n_total // 3, n_total - n_total // 3]
    return [int(s) for s in sizes]


def part(a, sizes):
    at = np.concatenate([[0], np.cumsum(sizes)])
    return a[at[RANK]:at[RANK + 1]]


def cases():
    out, k = [], 0
    for dtype, offsets in (("float64", (0.0, 1e4, 1e8)), ("float32", (0.0, 1e6))):
        for offset in offsets:
            for layout, sample, axis in (("NCHW", (24, 3, 5), 1), ("NHWC", (3, 5, 24), -1),
                                         ("NC", (24,), 1)):
                out.append(dict(kind="functions", dtype=dtype, offset=offset, layout=layout,
                                sample=sample, axis=axis, seed=100 + k,
                                n=4 * SIZE + 3 if layout != "NC" else 40 * SIZE + 3,
                                activation=(None, "relu")[k % 2],
                                affine=k % 3 != 2, dy_offset=(0.0, 100.0)[k % 2]))
                k += 1
    out.append(dict(kind="wide", C=512, seed=7))  # counted bytes at a realistic width
    out.append(dict(kind="layer", C=6, seed=8, steps=3))
    return out


def data(case, rng):
    shape = (case["n"],) + case["sample"]
    axis = case["axis"] % len(shape)
    C = shape[axis]
    b = [1] * len(shape)
    b[axis] = C
    x = (case["offset"] * rng.uniform(0.5, 1.0, C).reshape(b) * rng.choice([-1, 1], C).reshape(b)
         + rng.uniform(0.5, 2.0, C).reshape(b) * rng.standard_normal(shape))
    dy = case["dy_offset"] + rng.standard_normal(shape)
    return x.astype(case["dtype"]), dy.astype(case["dtype"])


def run_functions(case):
    rng = np.random.default_rng(case["seed"])
    x_full, dy_full = data(case, rng)
    C = x_full.shape[case["axis"]]
    gamma = rng.uniform(0.5, 2.0, C) * rng.choice([-1.0, 1.0], C) if case["affine"] else None
    beta = rng.standard_normal(C) if case["affine"] else None
    rm0 = case["offset"] * np.ones(C) * 0.9
    rv0 = np.full(C, 2.0)
    sizes = split(case["n"], case["seed"])
    x, dy = part(x_full, sizes), part(dy_full, sizes)
    rm, rv = rm0.copy(), rv0.copy()
    t0 = _traffic(COMM)
    y, cache = sync_forward(x, gamma, beta, comm=COMM, axis=case["axis"], running_mean=rm,
                            running_var=rv, momentum=0.25, activation=case["activation"])
    t1 = _traffic(COMM)
    dx, dgamma, dbeta = sync_backward(dy, cache, comm=COMM)
    t2 = _traffic(COMM)
    mine = dict(y=y, dx=dx, dgamma=dgamma, dbeta=dbeta, running_mean=rm, running_var=rv,
                mean=cache.mean, mean_lo=cache.mean_lo, invstd=cache.invstd,
                global_count=cache.global_count,
                forward_traffic={k: t1[k] - t0[k] for k in t1},
                backward_traffic={k: t2[k] - t1[k] for k in t1})
    inputs = dict(x=x_full, dy=dy_full, gamma=gamma, beta=beta, running_mean=rm0,
                  running_var=rv0, sizes=sizes)
    return mine, inputs


def run_wide(case):
    rng = np.random.default_rng(case["seed"] + RANK)
    C = case["C"]
    x = rng.standard_normal((2, C, 4))
    t0 = _traffic(COMM)
    _, cache = sync_forward(x, comm=COMM)
    t1 = _traffic(COMM)
    sync_backward(np.ones_like(x), cache, comm=COMM)
    t2 = _traffic(COMM)
    return dict(forward_traffic={k: t1[k] - t0[k] for k in t1},
                backward_traffic={k: t2[k] - t1[k] for k in t1}), None


def run_layer(case):
    """SGD steps of a float64 SyncBatchNorm at offset 1e8, uneven batches."""
    rng = np.random.default_rng(case["seed"])
    C = case["C"]
    layer = SyncBatchNorm(C, comm=COMM, dtype=np.float64, momentum=0.3)
    layer.params["gamma"][...] = rng.uniform(0.5, 1.5, C)
    layer.params["beta"][...] = rng.normal(0, 1, C)
    init = {k: v.copy() for k, v in layer.params.items()}
    steps, batches = [], []
    for step in range(case["steps"]):
        n = 3 * SIZE + step
        x_full = 1e8 + rng.standard_normal((n, C, 2, 3))
        dy_full = rng.standard_normal(x_full.shape)
        sizes = split(n, case["seed"] + step)
        y = layer(part(x_full, sizes))
        dx = layer.backward(part(dy_full, sizes))
        steps.append(dict(y=y, dx=dx, dgamma=layer.grads["gamma"].copy(),
                          dbeta=layer.grads["beta"].copy()))
        for key in layer.params:
            layer.params[key] -= 0.1 * layer.grads[key]
        batches.append(dict(x=x_full, dy=dy_full, sizes=sizes))
    return dict(steps=steps, state=layer.state_dict()), dict(init=init, batches=batches)


def main():
    outfile, expected = sys.argv[1], int(sys.argv[2])
    if SIZE != expected:
        sys.exit(f"mpi_scaling: expected {expected} ranks, got {SIZE}")
    run_cases(cases(), {"functions": run_functions, "wide": run_wide, "layer": run_layer},
              outfile)

if __name__ == "__main__":
    main()
