"""What synchronising batch norm over MPI costs, against the local kernel.

    python bench/sync_bn_cost.py                 # one run: measures, then launches mpiexec -n 2
    python bench/sync_bn_cost.py --shape 64 64 56 56 --ranks 2 --rounds 5 --repeats 10

Part 1 (this process): fastbn.forward / fastbn.backward on the whole batch, with 1
thread and with 2 threads.
Part 2 (``mpiexec -n R`` on this script, 1 thread per rank): each rank holds 1/R of
the batch and runs
  * sync_forward / sync_backward (one Allgather each),
  * the same local work without communication (batch_stats + normalize,
    backward_reduce + backward_elemt), to show the price of the collective itself,
  * the local fused kernels fastbn.forward / fastbn.backward on its part (not the
    same maths: local statistics), for scale,
  * the bare Allgather of the rows they send (a header, then 2C float64, padded to
    the communicator's row length).
Outputs go to preallocated out= buffers (--alloc: fresh arrays each call, which adds
page-fault time). A step's time is the slowest rank's (max over ranks, per repetition). The two parts
run in interleaved rounds (a new mpiexec each round), so that a machine shared with
other work slows both alike; medians over all rounds' repetitions. Prints a table
and one JSON line.
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def times_ms(fn, repeats, comm=None):
    """Milliseconds of `repeats` calls (after a warm-up); under MPI, the slowest rank's."""
    times = []
    fn()  # warm-up
    for _ in range(repeats):
        if comm is not None:
            comm.Barrier()
        t0 = time.perf_counter()
        fn()
        dt = time.perf_counter() - t0
        if comm is not None:
            dt = comm.allreduce(dt, op=_max_op())
        times.append(1e3 * dt)
    return times


def _max_op():
    from mpi4py import MPI
    return MPI.MAX


def data(shape, seed):
    rng = np.random.default_rng(seed)
    x = (1.0 + rng.standard_normal(shape, dtype=np.float32))
    dy = rng.standard_normal(shape, dtype=np.float32)
    return x, dy


def single(x, dy, repeats, alloc):
    import fastbn
    shape = x.shape
    y_out = None if alloc else np.empty_like(x)
    dx_out = None if alloc else np.empty_like(x)
    C = shape[1]
    gamma, beta = np.ones(C, np.float32), np.zeros(C, np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    res = {}
    previous = fastbn.get_num_threads()
    for threads in (1, 2):
        fastbn.set_num_threads(threads)
        _, cache = fastbn.forward(x, gamma, beta, running_mean=rm, running_var=rv)
        res[f"forward_{threads}t"] = times_ms(lambda: fastbn.forward(
            x, gamma, beta, running_mean=rm, running_var=rv, out=y_out), repeats)
        res[f"backward_{threads}t"] = times_ms(
            lambda: fastbn.backward(dy, cache, out=dx_out), repeats)
    fastbn.set_num_threads(previous)
    return res


def merge(into, part):
    for key, value in part.items():
        if isinstance(value, list):
            into.setdefault(key, []).extend(value)
        else:
            into[key] = value
    return into


def medians(d):
    return {k: statistics.median(v) if isinstance(v, list) else v for k, v in d.items()}


def worker(shape, repeats, alloc):
    from mpi4py import MPI

    import fastbn
    from fastbn.distributed import _state, sync_backward, sync_forward
    comm = MPI.COMM_WORLD
    R, rank = comm.Get_size(), comm.Get_rank()
    N = shape[0]
    n_local = N // R + (1 if rank < N % R else 0)
    x, dy = data((n_local,) + tuple(shape[1:]), 1 + rank)
    yo = None if alloc else np.empty_like(x)
    dxo = None if alloc else np.empty_like(x)
    C = shape[1]
    gamma, beta = np.ones(C, np.float32), np.zeros(C, np.float32)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    res = {"ranks": R, "threads_per_rank": fastbn.get_num_threads()}

    _, scache = sync_forward(x, gamma, beta, comm=comm, running_mean=rm, running_var=rv)
    res["sync_forward"] = times_ms(lambda: sync_forward(
        x, gamma, beta, comm=comm, running_mean=rm, running_var=rv, out=yo), repeats, comm)
    res["sync_backward"] = times_ms(
        lambda: sync_backward(dy, scache, comm=comm, out=dxo), repeats, comm)

    count, mean, m2 = fastbn.batch_stats(x)
    invstd = 1.0 / np.sqrt(m2 / count + 1e-5)

    def local_forward_parts():
        fastbn.batch_stats(x)
        fastbn.normalize(x, mean, invstd, gamma, beta, out=yo)

    def local_backward_parts():
        s, sx = fastbn.backward_reduce(dy, x, mean, invstd)
        fastbn.backward_elemt(dy, x, mean, invstd, gamma, s, sx, count, out=dxo)

    res["parts_forward_nocomm"] = times_ms(local_forward_parts, repeats, comm)
    res["parts_backward_nocomm"] = times_ms(local_backward_parts, repeats, comm)
    _, lcache = fastbn.forward(x, gamma, beta)
    res["local_forward"] = times_ms(lambda: fastbn.forward(x, gamma, beta, out=yo), repeats, comm)
    res["local_backward"] = times_ms(lambda: fastbn.backward(dy, lcache, out=dxo), repeats, comm)
    length = _state(comm).row  # what sync_forward and sync_backward sent: one row length
    for name in ("allgather_fwd_row", "allgather_bwd_row"):
        row, table = np.zeros(length), np.empty((R, length))
        res[name] = times_ms(lambda: comm.Allgather(row, table), 10 * repeats, comm)
    res["row_float64"] = length
    res["bytes_sent_per_rank"] = {"forward": 8 * length, "backward": 8 * length}
    if rank == 0:
        print("RESULT " + json.dumps(res), flush=True)


def launch(args):
    here = Path(__file__).resolve()
    mpiexec = next((str(c) for c in (Path(sys.executable).parent / "mpiexec",
                                     shutil.which("mpiexec")) if c and os.access(c, os.X_OK)), None)
    if mpiexec is None:
        sys.exit("mpiexec not found: pip install 'fastbn[mpi]'")
    env = dict(os.environ, FASTBN_NUM_THREADS="1", OMP_NUM_THREADS="1")
    cmd = [mpiexec, "-n", str(args.ranks), sys.executable, str(here), "--worker",
           "--repeats", str(args.repeats), *(["--alloc"] if args.alloc else []),
           "--shape", *map(str, args.shape)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", type=int, nargs="+", default=[64, 64, 56, 56])
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--repeats", type=int, default=10, help="timed calls per round")
    p.add_argument("--rounds", type=int, default=5,
                   help="rounds of (one-process part, mpiexec part), interleaved")
    p.add_argument("--alloc", action="store_true",
                   help="allocate every output afresh (default: reuse out= buffers)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.shape, args.repeats, args.alloc)

    import fastbn
    x, dy = data(tuple(args.shape), 0)
    s_all, m_all = {}, {}
    for _ in range(args.rounds):  # interleaved, so that load from elsewhere hits both alike
        merge(s_all, single(x, dy, args.repeats, args.alloc))
        merge(m_all, launch(args))
    s, m = medians(s_all), medians(m_all)
    shape, R = "x".join(map(str, args.shape)), args.ranks
    print(f"fastbn {fastbn.__version__} backend={fastbn.backend}  shape {shape} float32 NCHW, "
          f"C={args.shape[1]}, medians of {args.rounds} x {args.repeats}, "
          f"{'fresh outputs' if args.alloc else 'out= buffers reused'}")
    rows = [
        ("forward, 1 process, whole batch, 1 thread", s["forward_1t"]),
        ("forward, 1 process, whole batch, 2 threads", s["forward_2t"]),
        (f"sync_forward, {R} ranks x 1 thread, batch split", m["sync_forward"]),
        ("  same local work, no communication", m["parts_forward_nocomm"]),
        ("  fastbn.forward on each rank's part (local stats)", m["local_forward"]),
        (f"  Allgather of {m['row_float64']} float64 alone", m["allgather_fwd_row"]),
        ("backward, 1 process, whole batch, 1 thread", s["backward_1t"]),
        ("backward, 1 process, whole batch, 2 threads", s["backward_2t"]),
        (f"sync_backward, {R} ranks x 1 thread, batch split", m["sync_backward"]),
        ("  same local work, no communication", m["parts_backward_nocomm"]),
        ("  fastbn.backward on each rank's part (local stats)", m["local_backward"]),
        (f"  Allgather of {m['row_float64']} float64 alone", m["allgather_bwd_row"]),
    ]
    for name, ms in rows:
        print(f"{name:<55s} {ms:9.3f} ms")
    ratios = {
        "sync_forward / forward 1 process 2 threads": m["sync_forward"] / s["forward_2t"],
        "sync_forward / forward 1 process 1 thread": m["sync_forward"] / s["forward_1t"],
        "sync_forward / local fused forward on the part": m["sync_forward"] / m["local_forward"],
        "sync_backward / backward 1 process 2 threads": m["sync_backward"] / s["backward_2t"],
        "sync_backward / backward 1 process 1 thread": m["sync_backward"] / s["backward_1t"],
        "sync_backward / local fused backward on the part":
            m["sync_backward"] / m["local_backward"],
    }
    for name, r in ratios.items():
        print(f"{name:<55s} {r:9.2f}x")
    print("JSON " + json.dumps({"shape": args.shape, "rounds": args.rounds,
                                "repeats": args.repeats, "single": s, "mpi": m, "ratios": ratios}))


if __name__ == "__main__":
    main()
