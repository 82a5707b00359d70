"""Run under mpiexec by tests/test_distributed_half.py: sync_forward/sync_backward and
SyncBatchNorm with float16 and bfloat16 data (float32 parameters and running statistics)
on a batch split unevenly over the ranks (one rank empty with 3 ranks or more), plain
and with issue 20's keywords; the dtypes of the payloads fastbn exchanges are recorded.
Each rank's results pickled by rank 0."""
import sys

import ml_dtypes
import numpy as np

from fastbn import _sync_features, _sync_ops
from fastbn.distributed import SyncBatchNorm, sync_backward, sync_forward

import mpi_features  # noqa: E402 - the shared harness (this directory is sys.path[0])
from mpi_features import COMM, inputs, part, rows, run_ranks  # noqa: E402

mpi_features.ROWS = (5, 4)
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


def run_case(name, kw, dtype, seed):
    d, kw = inputs(np.random.default_rng(seed), kw, dtype, loc=2.0, scale=3.0,
                   param_dtype=np.float32)
    x, C = d["x"], d["gamma"].size
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


def cases():
    _spy(_sync_ops)
    _spy(_sync_features)
    results = [run_case(name, kw, dtype, 300 + i) for i, (name, kw, dtype) in enumerate(CASES)]
    return dict(results=results, payloads=COMM.gather(sorted(PAYLOADS, key=str), root=0))


def main():
    run_ranks(sys.argv[1], cases)


if __name__ == "__main__":
    main()
