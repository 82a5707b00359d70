"""Run under mpiexec by tests/test_distributed_features.py: SyncBatchNorm's
frozen-statistics mode on a batch split unevenly over the ranks (one rank empty with
3 ranks or more), each rank's results pickled by rank 0."""
import pickle
import sys

import numpy as np
from mpi4py import MPI

import fastbn
from fastbn.distributed import SyncBatchNorm

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()


def main():
    outfile = sys.argv[1]
    rng = np.random.default_rng(7)  # the same draws on every rank
    rows = [5 + 3 * r for r in range(SIZE)]
    if SIZE >= 3:
        rows[1] = 0
    x = rng.normal(2.0, 3.0, (sum(rows), 4, 6)).astype(np.float32)
    dy = rng.standard_normal(x.shape).astype(np.float32)
    start = sum(rows[:RANK])
    part = slice(start, start + rows[RANK])
    base = fastbn.BatchNorm(4, activation="relu")
    base.load_state_dict({"gamma": rng.uniform(0.5, 2, 4).astype(np.float32),
                          "beta": rng.normal(0, 1, 4).astype(np.float32),
                          "running_mean": rng.normal(0, 1, 4).astype(np.float32),
                          "running_var": rng.uniform(0.5, 2, 4).astype(np.float32),
                          "num_batches_tracked": 3})
    bn = SyncBatchNorm.from_batchnorm(base, comm=COMM).freeze_stats()
    mine = {"mode": bn.mode}
    y = bn(x[part])
    mine.update(y=y, dx=bn.backward(dy[part]), dgamma=bn.grads["gamma"].copy(),
                dbeta=bn.grads["beta"].copy(), state=bn.state_dict())
    errors = {}
    for name, call in [("mask", lambda: bn(x[part], mask=np.ones((rows[RANK], 1, 6), bool))),
                       ("residual", lambda: bn(x[part], residual=x[part])),
                       ("virtual_batch_size",
                        lambda: SyncBatchNorm(4, comm=COMM, virtual_batch_size=2)),
                       ("renorm", lambda: SyncBatchNorm(4, comm=COMM, renorm=(2.0, 1.0)))]:
        try:
            call()
            errors[name] = None
        except (TypeError, ValueError) as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"
    mine["errors"] = errors
    gathered = COMM.gather(mine, root=0)
    if RANK == 0:
        with open(outfile, "wb") as f:
            pickle.dump(dict(size=SIZE, backend=fastbn.backend, x=x, dy=dy, base=base,
                             results=[dict(case="frozen", ranks=gathered)]), f)


if __name__ == "__main__":
    main()
