"""Data-parallel training of a small NumPy network with synchronised batch norm.

    mpiexec -n 2 python -m mpi4py examples/sync_bn_mpi.py   # or -n 3, or plain python (1 rank)

(``python -m mpi4py``: an exception on one rank aborts the whole job instead of leaving
the other ranks waiting forever.)

Every rank holds its own, deliberately uneven, share of each mini-batch (one rank's
share is sometimes empty). The model is Linear -> SyncBatchNorm+ReLU -> Linear ->
softmax cross-entropy. SyncBatchNorm normalises with the statistics of the whole
mini-batch, so the result is the same as training on one process with the whole
batch: the two linear layers' weight gradients are summed over the ranks with one
Allreduce, and the batch norm's dgamma/dbeta already are global sums. At the end
the script checks that every rank holds bit-identical parameters and running
statistics, and that the synchronised statistics equal those of the whole batch.
"""
import argparse

import numpy as np
from mpi4py import MPI

import fastbn
from fastbn.distributed import SyncBatchNorm

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def log(*args):
    if rank == 0:
        print(*args, flush=True)


def make_data(n, d, k, seed=0):
    """k Gaussian blobs in d dimensions, far from the origin (batch norm's job)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (k, d))
    labels = rng.integers(0, k, n)
    x = 50.0 + centres[labels] + rng.normal(0, 1.5, (n, d))
    return x.astype(np.float32), labels


def shares(batch, step):
    """Uneven per-rank batch sizes summing to `batch`; rank (step % size) gets none
    every fourth step (when there are several ranks)."""
    weights = np.arange(1, size + 1, dtype=float)
    if size > 1 and step % 4 == 3:
        weights[step % size] = 0
    n = np.floor(batch * weights / weights.sum()).astype(int)
    n[np.argmax(weights)] += batch - n.sum()
    return n


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch", type=int, default=96, help="global mini-batch size")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--lr", type=float, default=0.2)
    args = parser.parse_args()

    d, k, n = 10, 4, 1536
    x_all, y_all = make_data(n, d, k)  # every rank makes the same data; each uses its share
    rng = np.random.default_rng(1)  # the same initial weights on every rank
    w1 = (rng.standard_normal((d, args.hidden)) / np.sqrt(d)).astype(np.float32)
    w2 = (rng.standard_normal((args.hidden, k)) / np.sqrt(args.hidden)).astype(np.float32)
    bn = SyncBatchNorm(args.hidden, comm=comm, activation="relu")
    log(f"{size} rank(s), fastbn backend {fastbn.backend!r}, global batch {args.batch}")

    step = 0
    for epoch in range(args.epochs):
        order = np.random.default_rng(100 + epoch).permutation(n)
        loss_sum, correct = 0.0, 0
        for start in range(0, n - args.batch + 1, args.batch):
            counts = shares(args.batch, step)
            lo = start + int(counts[:rank].sum())
            idx = order[lo:lo + int(counts[rank])]
            x, labels = x_all[idx], y_all[idx]

            h = x @ w1                                   # (n_local, hidden)
            a = bn(h)                                    # batch norm + ReLU, global statistics
            logits = a @ w2
            p = np.exp(logits - logits.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            # the gradient of the *global* mean loss: divide by the global batch size
            dlogits = p.copy()
            dlogits[np.arange(len(labels)), labels] -= 1
            dlogits /= args.batch
            grads = np.concatenate([(x.T @ (bn.backward(dlogits @ w2.T))).ravel(),
                                    (a.T @ dlogits).ravel()])
            comm.Allreduce(MPI.IN_PLACE, grads, op=MPI.SUM)  # data-parallel weight gradients
            w1 -= args.lr * grads[:w1.size].reshape(w1.shape)
            w2 -= args.lr * grads[w1.size:].reshape(w2.shape)
            for key in bn.params:  # dgamma, dbeta: already global sums, identical everywhere
                bn.params[key] -= args.lr * bn.grads[key]

            loss_sum += -np.log(p[np.arange(len(labels)), labels] + 1e-12).sum()
            correct += int((p.argmax(axis=1) == labels).sum())
            step += 1
        loss_sum, correct = comm.allreduce(loss_sum), comm.allreduce(correct)
        seen = (n // args.batch) * args.batch
        log(f"epoch {epoch + 1}: loss {loss_sum / seen:.4f}  train accuracy {correct / seen:.3f}")

    # every rank must hold the same model: compare the bytes against rank 0's
    state = np.concatenate([w1.ravel(), w2.ravel()] + [np.ravel(v).astype(np.float32)
                           for v in bn.state_dict().values()])
    same = comm.allreduce(int(np.array_equal(state, comm.bcast(state, root=0))), op=MPI.MIN)
    log("parameters and running statistics bit-identical on all ranks:", bool(same))

    # the statistics of one synchronised forward = those of the whole batch on one process
    counts = shares(args.batch, 3)
    lo = int(counts[:rank].sum())
    h_all = x_all[:args.batch] @ w1
    _, cache = fastbn.distributed.sync_forward(h_all[lo:lo + int(counts[rank])], comm=comm)
    _, whole = fastbn.forward(h_all)
    err = float(np.abs(cache.mean - (whole.mean + whole.mean_lo)).max())
    log(f"per-rank batch sizes {counts.tolist()}: synchronised mean vs whole-batch mean, "
        f"max difference {err:.1e}")

    bn.eval()  # inference: running statistics, no communication
    acc = float((np.argmax(bn(x_all @ w1) @ w2, axis=1) == y_all).mean())
    log(f"eval accuracy (running statistics) {acc:.3f}")
    if not same:
        raise SystemExit("ranks diverged")


if __name__ == "__main__":
    main()
