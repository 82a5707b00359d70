"""Run under mpiexec by tests/test_distributed_half.py: sync_forward/sync_backward and
SyncBatchNorm with float16 and bfloat16 data (float32 parameters and running statistics)
on a batch split unevenly over the ranks (one rank empty with 3 ranks or more), plain
and with issue 20's keywords; the dtypes of the payloads fastbn exchanges are recorded.
Each rank's results pickled by rank 0."""
import pickle
import sys
import traceback

import ml_dtypes
import numpy as np
from mpi4py import MPI

import fastbn
from fastbn import _sync_features, _sync_ops
from fastbn.distributed import SyncBatchNorm, sync_backward, sync_forward

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()
BF16 = np.dtype(ml_dtypes.bfloat16)
CASES = [(name, kw, dt) for dt in (np.dtype(np.float16), BF16) for name, kw in [
    ("plain", {}), ("relu", dict(activation="relu")),
    ("mask_leaky", dict(mask=True, activation="leaky_relu", negative_slope=0.2)),
    ("axes_renorm", dict(axis=(1, 3), renorm=(1.3, 0.4))),
    ("residual_relu", dict(residual=True, activation="relu"))]]
PAYLOADS = set()  # (dtype name of every payload exchanged)


def _spy(module):
    inner = module._exchange

    def exchange(comm, state, header, payload, *args):
        PAYLOADS.add(None if payload is None else payload.dtype.name)
        return inner(comm, state, header, payload, *args)
    module._exchange = exchange


def rows():
    n = [5 + 4 * r for r in range(SIZE)]
    if SIZE >= 3:
        n[1] = 0
    return n


def part(a):
    start = sum(rows()[:RANK])
    return a[start:start + rows()[RANK]]


def run_case(name, kw, dtype, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(2.0, 3.0, (sum(rows()), 3, 4, 5)).astype(dtype)
    axis = kw.get("axis", 1)
    axes = (axis,) if isinstance(axis, int) else axis
    C = int(np.prod([x.shape[a] for a in axes]))
    d = dict(x=x, dy=rng.standard_normal(x.shape).astype(dtype),
             gamma=rng.uniform(0.5, 2.0, C).astype(np.float32),
             beta=rng.normal(0, 1, C).astype(np.float32),
             running_mean=rng.normal(1.0, 1.0, C).astype(np.float32),
             running_var=rng.uniform(2.0, 6.0, C).astype(np.float32))
    kw = dict(kw)
    if kw.get("mask") is True:
        kw["mask"] = rng.random(tuple(1 if a in axes else s for a, s in enumerate(x.shape))) > 0.35
    if kw.get("residual") is True:
        kw["residual"] = rng.standard_normal(x.shape).astype(dtype)
    local = {k: part(v) if k in ("mask", "residual") else v for k, v in kw.items()}
    rm, rv = d["running_mean"].copy(), d["running_var"].copy()
    y, cache = sync_forward(part(x), d["gamma"], d["beta"], comm=COMM, running_mean=rm,
                            running_var=rv, **local)
    grads = sync_backward(part(d["dy"]), cache, comm=COMM)
    no_dx = sync_backward(part(d["dy"]), cache, comm=COMM, need_dx=False)
    mine = dict(y=y, grads=grads, no_dx=no_dx, running_mean=rm, running_var=rv)
    layer_kw = {k: v for k, v in kw.items() if k in ("axis", "activation", "negative_slope")}
    bn = SyncBatchNorm(C, comm=COMM, dtype=None, **layer_kw)
    ins = {k: local[k] for k in ("mask", "residual") if k in local}
    ly = bn(part(x), **ins)
    back = bn.backward(part(d["dy"]))
    mine["layer"] = dict(y=ly, back=back, state=bn.state_dict(),
                         grads={k: v.copy() for k, v in bn.grads.items()},
                         params={k: v.dtype.name for k, v in bn.params.items()})
    return dict(case=dict(name=name, kw=kw, dtype=dtype, split=rows()), inputs=d,
                ranks=COMM.gather(mine, root=0))


def main():
    outfile = sys.argv[1]
    _spy(_sync_ops)
    _spy(_sync_features)
    results = []
    try:
        for i, (name, kw, dtype) in enumerate(CASES):
            results.append(run_case(name, kw, dtype, 300 + i))
        payloads = COMM.gather(sorted(PAYLOADS, key=str), root=0)
    except Exception:  # noqa: BLE001 - reported by the test, not a hang
        sys.stderr.write(f"rank {RANK}:\n{traceback.format_exc()}")
        sys.stderr.flush()
        COMM.Abort(1)
    if RANK == 0:
        with open(outfile, "wb") as f:
            pickle.dump(dict(size=SIZE, backend=fastbn.backend, results=results,
                             payloads=payloads), f)


if __name__ == "__main__":
    main()
