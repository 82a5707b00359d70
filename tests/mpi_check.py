"""Run under ``mpiexec -n R python -m mpi4py tests/mpi_check.py OUTFILE``: exercises
fastbn.distributed on uneven (and empty) per-rank batches and gathers every
rank's inputs and outputs to rank 0, which pickles them to OUTFILE.

tests/test_distributed.py launches it and does the asserting (against
single-process fastbn.forward/backward and fastbn.BatchNorm on the union of the
batches), so that failures are reported by pytest with their context.
Nothing here asserts, except that the launch really gave R ranks.
"""
import pickle
import sys
import threading
import time
import traceback

import numpy as np
from mpi4py import MPI

import fastbn
from fastbn.distributed import (MismatchError, PeerError, SyncBatchNorm, _state, sync_backward,
                                sync_forward)

COMM = MPI.COMM_WORLD
RANK, SIZE = COMM.Get_rank(), COMM.Get_size()

# layout name -> (shape of one sample without the batch axis, channel axis); "NCwide" comes
# first: 200 channels, then narrower cases (messages of every length on one communicator)
LAYOUTS = {"NCwide": ((200,), 1), "NC": ((5,), 1), "NCL": ((4, 3), 1), "NCHW": ((3, 4, 4), 1),
           "NHWC": ((4, 4, 3), -1)}

# per-rank batch sizes: uneven, with a rank holding an empty batch, and (for "NC") a rank
# holding one sample, whose local count of 1 is fine since the global count is larger
SPLITS = {2: [[3, 0], [1, 4]], 3: [[2, 0, 5], [1, 3, 1]], 4: [[2, 0, 3, 1], [0, 2, 2, 1]],
          5: [[2, 0, 3, 1, 0], [0, 1, 2, 2, 1]],  # rank 4 folds into rank 0 first
          8: [[1, 0, 2, 0, 3, 1, 0, 2], [0, 2, 1, 1, 0, 3, 1, 0]]}


def split_of(n_per_rank):
    offsets = np.concatenate([[0], np.cumsum(n_per_rank)])
    return slice(int(offsets[RANK]), int(offsets[RANK + 1]))


def channel_data(rng, shape, axis, dtype):
    bshape = [1] * len(shape)
    bshape[axis] = shape[axis]
    loc, scale = rng.normal(0.0, 2.0, bshape), rng.uniform(0.5, 2.0, bshape)
    return (loc + scale * rng.standard_normal(shape)).astype(dtype)


def function_cases():
    cases, k = [], 0
    for layout in LAYOUTS:
        for dtype in ("float32", "float64"):
            for split in SPLITS[SIZE]:
                cases.append(dict(
                    kind="functions", layout=layout, dtype=dtype, split=split, seed=1000 + k,
                    affine=("both", "none", "gamma", "both")[k % 4],
                    param_dtype=("float32", "float64")[(k // 2) % 2],
                    running_dtype=("float64", "float32")[(k // 3) % 2],
                    momentum=(0.1, 0.37)[k % 2],
                    activation=(None, None, "relu")[k % 3],
                    use_out=k % 4 == 1))
                k += 1
    return cases


def run_functions(case):
    """sync_forward then sync_backward on this rank's part; the full inputs as made on rank 0."""
    rng = np.random.default_rng(case["seed"])
    sample, axis = LAYOUTS[case["layout"]]
    n = sum(case["split"])
    dtype = np.dtype(case["dtype"])
    x_full = channel_data(rng, (n,) + sample, axis, dtype)
    dy_full = rng.standard_normal(x_full.shape).astype(dtype)
    C = x_full.shape[axis]
    pdt = np.dtype(case["param_dtype"])
    gamma = rng.uniform(0.5, 2.0, C).astype(pdt) * rng.choice([-1, 1], C).astype(pdt)
    beta = rng.normal(0.0, 1.0, C).astype(pdt)
    gamma = gamma if case["affine"] in ("both", "gamma") else None
    beta = beta if case["affine"] in ("both", "beta") else None
    rdt = np.dtype(case["running_dtype"])
    rm0, rv0 = rng.normal(0, 1, C).astype(rdt), rng.uniform(0.5, 2, C).astype(rdt)

    part = split_of(case["split"])
    x, dy = x_full[part], dy_full[part]
    rm, rv = rm0.copy(), rv0.copy()
    out = np.full(x.shape, np.nan, dtype) if case["use_out"] else None
    y, cache = sync_forward(x, gamma, beta, comm=COMM, axis=axis, running_mean=rm,
                            running_var=rv, momentum=case["momentum"], out=out,
                            activation=case["activation"])
    dx_out = np.full(x.shape, np.nan, dtype) if case["use_out"] else None
    dx, dgamma, dbeta = sync_backward(dy, cache, comm=COMM, out=dx_out)
    mine = dict(y=y, dx=dx, dgamma=dgamma, dbeta=dbeta, running_mean=rm, running_var=rv,
                mean=cache.mean, invstd=cache.invstd, global_count=cache.global_count,
                y_is_out=y is out if out is not None else None,
                dx_is_out=dx is dx_out if dx_out is not None else None)
    inputs = dict(x=x_full, dy=dy_full, gamma=gamma, beta=beta, running_mean=rm0,
                  running_var=rv0, axis=axis)
    return mine, inputs


def layer_case():
    return dict(kind="layer", steps=3, C=4, seed=77)


def run_layer(case):
    """A few SGD steps of a SyncBatchNorm (NCHW, float32) on batches split unevenly,
    a different split each step (an empty rank included), then eval and a state_dict."""
    rng = np.random.default_rng(case["seed"])
    C = case["C"]
    layer = SyncBatchNorm(C, comm=COMM, momentum=None if SIZE == 3 else 0.2)
    layer.params["gamma"][...] = rng.uniform(0.5, 1.5, C)
    layer.params["beta"][...] = rng.normal(0, 1, C)
    init = {k: v.copy() for k, v in layer.params.items()}
    splits = SPLITS[SIZE] + [list(reversed(SPLITS[SIZE][0]))]
    record, batches = [], []
    for step in range(case["steps"]):
        split = splits[step % len(splits)]
        x_full = channel_data(rng, (sum(split), C, 3, 2), 1, np.float32)
        dy_full = rng.standard_normal(x_full.shape).astype(np.float32)
        part = split_of(split)
        y = layer(x_full[part])
        dx = layer.backward(dy_full[part])
        record.append(dict(y=y, dx=dx, dgamma=layer.grads["gamma"].copy(),
                           dbeta=layer.grads["beta"].copy()))
        for key in layer.params:  # plain SGD, identical on every rank
            layer.params[key] -= np.float32(0.1) * layer.grads[key]
        batches.append(dict(x=x_full, dy=dy_full, split=split))
    layer.eval()
    x_eval = channel_data(rng, (2, C, 3, 2), 1, np.float32)
    y_eval = layer(x_eval)  # no communication: every rank does it on the same data
    mine = dict(steps=record, y_eval=y_eval, state=layer.state_dict(),
                momentum=layer.momentum)
    return mine, dict(init=init, batches=batches, x_eval=x_eval)


ERRORS = ("bad_gamma_on_last_rank", "global_count_one", "eps_mismatch", "bad_dy_on_rank_0",
          "layer_bad_input_on_last_rank", "local_cache_in_training", "x_not_array_on_last_rank",
          "cross_forward_backward", "momentum_mismatch", "axis_mismatch", "ndim_mismatch",
          "activation_mismatch", "running_stats_use_mismatch", "training_mismatch",
          "layer_momentum_mismatch", "backward_of_other_forward", "channels_mismatch_wide",
          "thread_inside_call")


def error_cases():
    return [dict(kind="error", name=name) for name in ERRORS]


def in_two_threads(x):
    """Rank 0 starts a call in a thread, then makes a second one while the first waits
    for the other ranks, which join only once it returned: the second must raise."""
    if RANK != 0:
        COMM.recv(source=0, tag=77)
        sync_forward(x, comm=COMM)
        return None
    box = {}

    def first():
        try:
            box["y"] = sync_forward(x, comm=COMM)[0]
        except Exception as exc:  # reported through first_ok
            box["error"] = repr(exc)
    thread = threading.Thread(target=first)
    thread.start()
    lock, deadline = _state(COMM).lock, time.monotonic() + 60
    while not lock.locked() and time.monotonic() < deadline:
        time.sleep(0.001)
    try:
        sync_forward(x, comm=COMM)
    finally:
        for r in range(1, SIZE):
            COMM.send("go", dest=r, tag=77)
        thread.join()
        in_two_threads.first_ok = "y" in box


def run_error(case):
    """Each must raise on every rank (except where the case says), not hang; the
    communicator must stay usable, and running statistics and layer state untouched."""
    name = case["name"]
    x = np.random.default_rng(RANK).standard_normal((3, 4, 2))
    rm, rv = np.zeros(4), np.ones(4)
    state_ok, layer = None, None
    try:
        if name == "bad_gamma_on_last_rank":
            gamma = np.ones(5 if RANK == SIZE - 1 else 4)
            sync_forward(x, gamma, comm=COMM)
        elif name == "global_count_one":
            sync_forward(np.ones((1 if RANK == 0 else 0, 4)), comm=COMM)
        elif name == "eps_mismatch":
            sync_forward(x, comm=COMM, eps=1e-5 if RANK == 0 else 1e-3)
        elif name == "bad_dy_on_rank_0":
            _, cache = sync_forward(x, comm=COMM)
            dy = np.ones(x.shape, np.float32 if RANK == 0 else np.float64)
            sync_backward(dy, cache, comm=COMM)
        elif name == "layer_bad_input_on_last_rank":
            layer = SyncBatchNorm(4, comm=COMM)
            layer(np.ones((3, 5, 2), np.float32) if RANK == SIZE - 1 else x.astype(np.float32))
        elif name == "local_cache_in_training":
            _, cache = fastbn.forward(x)
            sync_backward(np.ones_like(x), cache, comm=COMM)
        elif name == "x_not_array_on_last_rank":
            sync_forward(x.tolist() if RANK == SIZE - 1 else x, comm=COMM)
        elif name == "cross_forward_backward":  # issue 13: a 4-channel forward's row was
            x5 = np.random.default_rng(RANK).standard_normal((2, 5, 3))  # as long as a
            _, cache = sync_forward(x5, np.ones(5), np.zeros(5), comm=COMM)  # 5-channel backward's
            if RANK == 0:
                sync_forward(x5[:, :4], np.ones(4), np.zeros(4), comm=COMM)
            else:
                sync_backward(np.ones_like(x5), cache, comm=COMM)
        elif name == "momentum_mismatch":
            state_ok = False
            sync_forward(x, comm=COMM, running_mean=rm, running_var=rv,
                         momentum=0.1 if RANK == 0 else 0.3)
        elif name == "axis_mismatch":  # 4 channels either way
            state_ok = False
            sync_forward(np.ones((3, 4, 4)) * RANK + np.arange(4), comm=COMM,
                         axis=1 if RANK == 0 else -1, running_mean=rm, running_var=rv)
        elif name == "ndim_mismatch":
            sync_forward(x if RANK == 0 else x[..., 0], comm=COMM)
        elif name == "activation_mismatch":
            sync_forward(x, comm=COMM, activation="relu" if RANK == 0 else None)
        elif name == "running_stats_use_mismatch":
            state_ok = False
            running = dict(running_mean=rm, running_var=rv) if RANK == 0 else {}
            sync_forward(x, comm=COMM, **running)
        elif name == "training_mismatch":  # batch statistics in both modes, synchronised
            layer = SyncBatchNorm(4, comm=COMM, track_running_stats=False)
            layer.train(RANK == 0)
            before, state_ok = layer.state_dict(), False
            layer(x.astype(np.float32))
        elif name == "layer_momentum_mismatch":  # momentum None: 1 / (batches tracked + 1)
            layer = SyncBatchNorm(4, comm=COMM, momentum=None)
            layer.num_batches_tracked = 1 if RANK == 0 else 2
            before, state_ok = {k: np.copy(v) for k, v in layer.state_dict().items()}, False
            layer(x.astype(np.float32))
        elif name == "backward_of_other_forward":
            _, first = sync_forward(x, comm=COMM)
            _, second = sync_forward(x + 1, comm=COMM)
            sync_backward(np.ones_like(x), first if RANK == 0 else second, comm=COMM)
        elif name == "channels_mismatch_wide":  # messages of different lengths
            state_ok = False
            C = 4 if RANK == 0 else 1000
            rm, rv = np.zeros(C), np.ones(C)
            sync_forward(np.ones((3, C)) * RANK, comm=COMM, running_mean=rm, running_var=rv)
        elif name == "thread_inside_call":
            in_two_threads(x)
        result = dict(error=None)
    except (TypeError, ValueError, RuntimeError) as exc:  # PeerError is a RuntimeError
        result = dict(error=type(exc).__name__, message=str(exc))
    if state_ok is False:  # the call that raised must have changed nothing
        if layer is not None:
            state_ok = layer._cache is None and all(
                np.array_equal(v, before[k]) for k, v in layer.state_dict().items())
        else:
            state_ok = bool((rm == 0).all() and (rv == 1).all())
    result["state_ok"] = state_ok
    if name == "thread_inside_call" and RANK == 0:
        result["first_ok"] = in_two_threads.first_ok
    result["comm_ok"] = COMM.allreduce(1) == SIZE
    try:  # fastbn's own state on the communicator is still in step on every rank
        sync_forward(np.arange(6.0).reshape(3, 2) + RANK, comm=COMM)
        result["sync_ok"] = True
    except Exception as exc:
        result["sync_ok"] = repr(exc)
    return result, None


def main():
    outfile = sys.argv[1]
    expected = int(sys.argv[2]) if len(sys.argv) > 2 else None
    if expected is not None and SIZE != expected:
        sys.exit(f"mpi_check: expected {expected} ranks, got {SIZE}: is mpiexec from the "
                 f"MPI library that mpi4py uses ({MPI.Get_library_version().splitlines()[0]})?")
    runners = {"functions": run_functions, "layer": run_layer, "error": run_error}
    run_cases(function_cases() + [layer_case()] + error_cases(), runners, outfile)


def run_cases(cases, runners, outfile):
    """Run each case on every rank (runners[case["kind"]](case) -> (mine, inputs)), in
    step even when one crashes, and pickle everything gathered on rank 0 to outfile."""
    results = []
    for case in cases:
        try:
            mine, inputs = runners[case["kind"]](case)
        except Exception:  # report, and stay in step with the other ranks
            mine, inputs = dict(crash=traceback.format_exc()), None
        gathered = COMM.gather(mine, root=0)
        if RANK == 0:
            results.append(dict(case=case, inputs=inputs, ranks=gathered))
    if RANK == 0:
        with open(outfile, "wb") as f:
            pickle.dump(dict(size=SIZE, backend=fastbn.backend, results=results), f)

if __name__ == "__main__":
    main()
