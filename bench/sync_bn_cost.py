"""What synchronising batch norm over MPI costs: time, and bytes counted per rank.

    python bench/sync_bn_cost.py                 # one run: measures, then launches mpiexec -n 2
    python bench/sync_bn_cost.py --shape 64 64 56 56 --ranks 2 --rounds 5 --repeats 10
    python bench/sync_bn_cost.py --scaling 2 4 8 16 --channels 512   # the cost-model table

Part 1 (this process): fastbn.forward / fastbn.backward on the whole batch, with 1
thread and with 2 threads.
Part 2 (``mpiexec -n R`` on this script, 1 thread per rank): each rank holds 1/R of
the batch and runs
  * sync_forward / sync_backward (one reduction each: recursive doubling),
  * the same local work without communication (batch_stats + normalize,
    backward_reduce + backward_elemt), to show the price of the exchange itself,
  * the local fused kernels fastbn.forward / fastbn.backward on its part (not the
    same maths: local statistics), for scale,
  * the bare reduction of the forward's message, and the one-Allgather design it
    replaced (an Allgather of every rank's message, then the same merges in rank
    order), for the crossover;
and reports the bytes and messages each rank sent and received, as fastbn counts
them (fastbn.distributed._traffic), beside the cost model.
Outputs go to preallocated out= buffers (--alloc: fresh arrays each call, which adds
page-fault time). A step's time is the slowest rank's (max over ranks, per repetition). The two parts
run in interleaved rounds (a new mpiexec each round), so that a machine shared with
other work slows both alike; medians over all rounds' repetitions. Prints a table
and one JSON line.

--scaling P1 P2 ...: no part 1; for each P, ``mpiexec -n P`` with a small batch per
rank (2 x C x 4 x 4 float32, so that the exchange dominates) measures the counted
bytes and messages per rank, sync_forward/sync_backward times and the bare
reduction against the Allgather design; one table row per P (oversubscribed ranks:
counts are exact, times are only indicative beyond the core count).
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
    from fastbn.distributed import sync_backward, sync_forward
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
    res.update(exchange_costs(comm, C, repeats))
    res.update(counted_traffic(comm, lambda: sync_forward(x, gamma, beta, comm=comm, out=yo),
                               lambda c: sync_backward(dy, c, comm=comm, out=dxo)))
    if rank == 0:
        print("RESULT " + json.dumps(res), flush=True)


def model_messages(rank, P):
    """Messages a rank sends (and receives) per synchronised call (docs/mpi.md)."""
    p2 = 1 << (P.bit_length() - 1)
    if rank >= p2:
        return 1
    return p2.bit_length() - 1 + (1 if rank < P - p2 else 0)


def counted_traffic(comm, forward, backward):
    """Bytes and messages one forward and one backward sent/received on each rank, as
    fastbn counts them: max and mean over ranks, and the cost model's max."""
    from fastbn.distributed import _traffic
    t0 = _traffic(comm)
    _, cache = forward()
    t1 = _traffic(comm)
    backward(cache)
    t2 = _traffic(comm)
    mine = {op: {k: b[k] - a[k] for k in a} for op, (a, b) in
            {"forward": (t0, t1), "backward": (t1, t2)}.items()}
    every = comm.allgather(mine)
    out = {}
    for op in ("forward", "backward"):
        for key in ("bytes_sent", "bytes_received", "messages_sent", "collectives"):
            values = [m[op][key] for m in every]
            out[f"{op}_{key}_max"] = max(values)
            out[f"{op}_{key}_mean"] = sum(values) / len(values)
    return out


def exchange_costs(comm, C, repeats):
    """The bare reduction of a forward's message (header + 3C float64) against the
    one-Allgather design: Allgather of every rank's message, then the same merges."""
    from mpi4py import MPI  # noqa: F401
    from fastbn.distributed import (HEADER, _FORWARD, _header, _merge, _merge_moments,
                                    _reduce, _state)
    P, rank = comm.Get_size(), comm.Get_rank()
    rng = np.random.default_rng(rank)
    header = _header(_FORWARD, 0, forward_call=0, channels=C, ndim=4, axis=1, eps=1e-5,
                     count=32)
    message = np.concatenate([header, 1 + rng.standard_normal(C), np.zeros(C),
                              32 + rng.random(C)])
    state = _state(comm)

    def reduction():
        _reduce(comm, state, message, _merge_moments)

    table = np.empty((P, message.size))

    def allgather_design():
        comm.Allgather(message, table)
        acc = table[0]
        for r in range(1, P):
            acc = _merge(acc, table[r], _merge_moments)

    return {"reduce_forward_message": times_ms(reduction, 10 * repeats, comm),
            "allgather_forward_message": times_ms(allgather_design, 10 * repeats, comm),
            "message_float64": len(HEADER) + 3 * C}


def scaling_worker(C, repeats):
    """One row of the --scaling table: this P, a small batch per rank."""
    from mpi4py import MPI

    import fastbn
    from fastbn.distributed import sync_backward, sync_forward
    comm = MPI.COMM_WORLD
    rank, P = comm.Get_rank(), comm.Get_size()
    rng = np.random.default_rng(rank)
    x = rng.standard_normal((2, C, 4, 4), dtype=np.float32)
    dy = rng.standard_normal(x.shape, dtype=np.float32)
    res = {"ranks": P, "channels": C, "backend": fastbn.backend}
    _, cache = sync_forward(x, comm=comm)
    res["sync_forward"] = times_ms(lambda: sync_forward(x, comm=comm), repeats, comm)
    res["sync_backward"] = times_ms(lambda: sync_backward(dy, cache, comm=comm), repeats, comm)
    res.update(exchange_costs(comm, C, repeats))
    res.update(counted_traffic(comm, lambda: sync_forward(x, comm=comm),
                               lambda c: sync_backward(dy, c, comm=comm)))
    res["model_messages_max"] = max(model_messages(r, P) for r in range(P))
    if rank == 0:
        print("RESULT " + json.dumps(res), flush=True)


def scaling(args):
    here = Path(__file__).resolve()
    mpiexec = _find_mpiexec()
    env = dict(os.environ, FASTBN_NUM_THREADS="1", OMP_NUM_THREADS="1")
    C, H = args.channels, 13
    print(f"counted per rank per call (max over ranks), C={C}; times: medians of "
          f"{args.repeats} (reductions: x10), slowest rank, 2-core machine, oversubscribed")
    print(f"{'P':>3} {'fwd msgs':>8} {'fwd bytes':>10} {'model':>10} {'bwd bytes':>10} "
          f"{'model':>10} {'Allgather rows':>14} {'sync_fwd ms':>11} {'sync_bwd ms':>11} "
          f"{'reduce ms':>9} {'allgather ms':>12}")
    rows = []
    for P in args.scaling:
        cmd = [mpiexec, "-n", str(P), sys.executable, str(here), "--scaling-worker",
               "--channels", str(C), "--repeats", str(args.repeats)]
        out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
        m = medians(json.loads(next(line for line in out.splitlines()
                                    if line.startswith("RESULT "))[7:]))
        k = m["model_messages_max"]
        row = dict(m, model_forward_bytes=k * 8 * (H + 3 * C),
                   model_backward_bytes=k * 8 * (H + 2 * C),
                   allgather_received_bytes=P * 8 * (H + 3 * C))
        rows.append(row)
        print(f"{P:>3} {m['forward_messages_sent_max']:>8} {m['forward_bytes_received_max']:>10} "
              f"{row['model_forward_bytes']:>10} {m['backward_bytes_received_max']:>10} "
              f"{row['model_backward_bytes']:>10} {row['allgather_received_bytes']:>14} "
              f"{m['sync_forward']:>11.3f} {m['sync_backward']:>11.3f} "
              f"{m['reduce_forward_message']:>9.3f} {m['allgather_forward_message']:>12.3f}")
    print("JSON " + json.dumps({"channels": C, "rows": rows}))


def _find_mpiexec():
    found = next((str(c) for c in (Path(sys.executable).parent / "mpiexec",
                                   shutil.which("mpiexec")) if c and os.access(c, os.X_OK)), None)
    if found is None:
        sys.exit("mpiexec not found: pip install 'fastbn[mpi]'")
    return found


def launch(args):
    here = Path(__file__).resolve()
    mpiexec = _find_mpiexec()
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
    p.add_argument("--scaling", type=int, nargs="+", metavar="P",
                   help="the cost-model table for these rank counts (no part 1)")
    p.add_argument("--channels", type=int, default=512, help="C of --scaling (default 512)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--scaling-worker", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.worker:
        return worker(args.shape, args.repeats, args.alloc)
    if args.scaling_worker:
        return scaling_worker(args.channels, args.repeats)
    if args.scaling:
        return scaling(args)

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
        (f"  reduction of the {m['message_float64']}-float64 message alone",
         m["reduce_forward_message"]),
        ("  the one-Allgather design instead (Allgather + merges)",
         m["allgather_forward_message"]),
        ("backward, 1 process, whole batch, 1 thread", s["backward_1t"]),
        ("backward, 1 process, whole batch, 2 threads", s["backward_2t"]),
        (f"sync_backward, {R} ranks x 1 thread, batch split", m["sync_backward"]),
        ("  same local work, no communication", m["parts_backward_nocomm"]),
        ("  fastbn.backward on each rank's part (local stats)", m["local_backward"]),
    ]
    for name, ms in rows:
        print(f"{name:<55s} {ms:9.3f} ms")
    for op in ("forward", "backward"):
        print(f"sync_{op}: counted per rank (max over ranks) "
              f"{m[op + '_bytes_sent_max']:.0f} bytes sent and "
              f"{m[op + '_bytes_received_max']:.0f} received in "
              f"{m[op + '_messages_sent_max']:.0f} messages")
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
