"""Run under mpiexec by tests/test_distributed_features.py: sync_forward/sync_backward
and SyncBatchNorm with issue 20's keywords (mask, renorm, several channel axes, leaky
ReLU, residual, need_dx=False) on a batch split unevenly over the ranks (one rank
empty with 3 ranks or more), then calls whose keywords differ across ranks; each
rank's results pickled by rank 0."""
import pickle
import sys
import traceback

import numpy as np
from mpi4py import MPI

import fastbn
from fastbn.distributed import SyncBatchNorm, sync_backward, sync_forward

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()

# (name, keywords, dtype): the keywords of sync_forward (mask and residual as True:
# made here, of the batch's shape, and split along with it)
CASES = [
    ("mask", dict(mask=True), np.float64),
    ("mask_f32", dict(mask=True), np.float32),
    ("renorm", dict(renorm=(1.3, 0.4)), np.float64),
    ("axes", dict(axis=(1, 3)), np.float64),
    ("axes_mask", dict(axis=(1, 2), mask=True), np.float32),
    ("leaky", dict(activation="leaky_relu", negative_slope=0.2), np.float64),
    ("residual_relu", dict(residual=True, activation="relu"), np.float64),
    ("all", dict(mask=True, renorm=(1.2, 0.2), residual=True, activation="leaky_relu",
                 negative_slope=0.1), np.float64),
    ("all_f32", dict(mask=True, renorm=(1.5, 0.5), residual=True, activation="relu"),
     np.float32),
]
# keywords that differ on rank 0 from the others' (all must raise on every rank)
MISMATCHES = [
    ("mask_on_rank0", lambda r: dict(mask=True) if r == 0 else {}),
    ("renorm_bounds", lambda r: dict(renorm=(1.5 if r == 0 else 2.0, 0.5))),
    ("renorm_on_rank0", lambda r: dict(renorm=(1.5, 0.5)) if r == 0 else {}),
    ("slope", lambda r: dict(activation="leaky_relu", negative_slope=0.1 if r == 0 else 0.3)),
    ("activation", lambda r: dict(activation="leaky_relu" if r == 0 else "relu")),
    ("residual_on_rank0", lambda r: dict(residual=True) if r == 0 else {}),
    ("channel_axes", lambda r: dict(axis=(1, 2) if r == 0 else (1, 3))),
]


ROWS = (4, 3)  # rank r's batch: ROWS[0] + ROWS[1] * r rows (tests/mpi_half.py sets its own)


def rows():
    n = [ROWS[0] + ROWS[1] * r for r in range(SIZE)]
    if SIZE >= 3:
        n[1] = 0
    return n


def inputs(rng, kw, dtype, loc=1.5, scale=2.0, param_dtype=np.float64):
    """The whole batch and parameters, the same on every rank."""
    n = rows()
    x = rng.normal(loc, scale, (sum(n), 3, 4, 5)).astype(dtype)
    axis = kw.get("axis", 1)
    axes = (axis,) if isinstance(axis, int) else axis
    C = int(np.prod([x.shape[a] for a in axes]))
    d = dict(x=x, dy=rng.standard_normal(x.shape).astype(dtype),
             gamma=rng.uniform(0.5, 2.0, C), beta=rng.normal(0, 1, C),
             running_mean=rng.normal(1.0, 1.0, C), running_var=rng.uniform(2.0, 6.0, C))
    for k in ("gamma", "beta", "running_mean", "running_var"):
        d[k] = d[k].astype(param_dtype)
    kw = dict(kw)
    if kw.get("mask") is True:
        shape = tuple(1 if a in axes else s for a, s in enumerate(x.shape))
        kw["mask"] = rng.random(shape) > 0.35
    if kw.get("residual") is True:
        kw["residual"] = rng.standard_normal(x.shape).astype(dtype)
    return d, kw


def part(a):
    n = rows()
    start = sum(n[:RANK])
    return a[start:start + n[RANK]]


def run_case(name, kw, dtype, seed):
    d, kw = inputs(np.random.default_rng(seed), kw, dtype)
    mine = {}
    local = {k: part(v) if isinstance(v, np.ndarray) and k in ("mask", "residual") else v
             for k, v in kw.items()}
    rm, rv = d["running_mean"].copy(), d["running_var"].copy()
    y, cache = sync_forward(part(d["x"]), d["gamma"], d["beta"], comm=COMM, running_mean=rm,
                            running_var=rv, **local)
    grads = sync_backward(part(d["dy"]), cache, comm=COMM)
    mine.update(y=y, grads=grads, running_mean=rm, running_var=rv,
                global_count=cache.global_count)
    mine["no_dx"] = sync_backward(part(d["dy"]), cache, comm=COMM, need_dx=False)
    # the layer: two steps (the second with the first's running statistics)
    C = d["gamma"].size
    layer_kw = {k: v for k, v in kw.items() if k in ("axis", "activation", "negative_slope",
                                                     "renorm")}
    bn = SyncBatchNorm(C, comm=COMM, dtype=np.float64, **layer_kw)
    steps = []
    for step in range(2):
        ins = {k: local[k] for k in ("mask", "residual") if k in local}
        out = bn(part(d["x"]) * (1 + step), **ins)
        back = bn.backward(part(d["dy"]))
        steps.append(dict(y=out, back=back, dgamma=bn.grads["gamma"].copy(),
                          dbeta=bn.grads["beta"].copy(), state=bn.state_dict()))
    mine["layer"] = steps
    return dict(case=dict(name=name, kw=kw, dtype=dtype, split=rows()), inputs=d,
                ranks=COMM.gather(mine, root=0))


def run_mismatch(name, make, seed):
    d, kw = inputs(np.random.default_rng(seed), make(RANK), np.float64)
    local = {k: part(v) if isinstance(v, np.ndarray) and k in ("mask", "residual") else v
             for k, v in kw.items()}
    rm, rv = d["running_mean"].copy(), d["running_var"].copy()
    axis = kw.get("axis", 1)
    C = d["gamma"].size
    gamma = np.ones(C) if isinstance(axis, int) else None
    try:
        sync_forward(part(d["x"]), gamma, None, comm=COMM, running_mean=rm, running_var=rv,
                     **local)
        mine = dict(error=None)
    except Exception as exc:  # noqa: BLE001 - the test checks which
        mine = dict(error=type(exc).__name__, message=str(exc),
                    untouched=bool(np.array_equal(rm, d["running_mean"])
                                   and np.array_equal(rv, d["running_var"])))
    return dict(case=dict(name=name), ranks=COMM.gather(mine, root=0))


def run_ranks(outfile, body):
    """body() on every rank -> dict; rank 0 pickles it with the run's facts. An
    exception aborts the job (reported by the test, not a hang)."""
    try:
        found = body()
    except Exception:  # noqa: BLE001 - reported by the test, not a hang
        sys.stderr.write(f"rank {RANK}:\n{traceback.format_exc()}")
        sys.stderr.flush()
        COMM.Abort(1)
    if RANK == 0:
        with open(outfile, "wb") as f:
            pickle.dump(dict(size=SIZE, backend=fastbn.backend, **found), f)


def cases_and_mismatches():
    results = [run_case(name, kw, dtype, 100 + i) for i, (name, kw, dtype) in enumerate(CASES)]
    results += [run_mismatch(name, make, 200 + i) for i, (name, make) in enumerate(MISMATCHES)]
    # the communicator still works after the mismatches (the ranks stayed in step)
    y, _ = sync_forward(np.full((2, 3), float(RANK)), comm=COMM)
    return dict(results=results, after=COMM.gather(y, root=0))


def main():
    run_ranks(sys.argv[1], cases_and_mismatches)


if __name__ == "__main__":
    main()
