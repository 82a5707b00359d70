"""The built-in benchmark behind ``python -m fastbn bench``.

For every shape and op it prints the median time of fastbn (kernels writing
into preallocated ``out=`` buffers), the bandwidth it reaches, that bandwidth
as a fraction of the machine's copy bandwidth measured in the same run, and
the speed-up over PyTorch (when installed) and over ``fastbn.reference``.

Bytes counted per op (the minimum traffic, the "bound"):
  forward-train  2 * x.nbytes  (read x, write y)
  backward       3 * x.nbytes  (read x and dy, write dx)
  inference      2 * x.nbytes  (read x, write y)
A copy moves 2 * nbytes (read + write), so ``fraction = (bytes / time) / copy
GB/s`` is 1.0 for an op running at copy speed. A two-pass kernel that reads x
again after the statistics pass can reach at most 2/3 (forward-train) or 3/5
(backward) of this bound once x no longer fits in the caches; shapes that fit
in the last-level cache can exceed 1.0.

Runs of the implementations are interleaved (fastbn, torch, reference, in a
rotating order, one sample each per round) so that noise from other processes
hits them alike; the medians of those samples are reported.
"""
import argparse
import json
import math
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

import fastbn
from fastbn import reference
from fastbn._checks import param_dtype

OPS = ("forward-train", "backward", "inference")
BYTES_PER_ELEMENT_PASS = {"forward-train": 2, "backward": 3, "inference": 2}

# name: (shape, channel axis)
DEFAULT_SHAPES = {
    "nc": ((8192, 4096), 1),
    "nchw": ((64, 64, 56, 56), 1),
    "nhwc": ((64, 56, 56, 64), -1),
    "nchw-small": ((32, 256, 14, 14), 1),
    "nc-small": ((512, 4096), 1),
}
QUICK_SHAPES = {
    "nc": ((1024, 512), 1),
    "nchw": ((8, 32, 28, 28), 1),
    "nhwc": ((8, 28, 28, 32), -1),
    "nchw-small": ((8, 64, 7, 7), 1),
    "nc-small": ((64, 512), 1),
}
COPY_BYTES = 256 * 2**20          # source buffer of the copy-bandwidth measurement
MIN_SAMPLE_SECONDS = 0.005        # a sample repeats a fast call until it lasts this long
MAX_CALLS_PER_SAMPLE = 1000
SETTLE_SECONDS = 0.02          # pause before each interleaved sample
WAKE_CALLS = 3                 # untimed calls after it (see interleaved)
ENV_SLOWING_NUMPY = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# ---------------------------------------------------------------- arguments

def add_arguments(parser):
    parser.add_argument("--dtype", choices=["float32", "float64", "both", "float16", "bfloat16",
                                            "half"], default="float32",
                        help="data type (default float32; both: float32 and float64; "
                             "float16, bfloat16 and half (both of them) with --small only: "
                             "bench/half.py times the large shapes)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="threads for fastbn, PyTorch and the copy bound "
                             "(default: fastbn.get_num_threads())")
    parser.add_argument("--repeat", type=int, default=None, metavar="N",
                        help="samples per implementation (default 15; 5 with --quick)")
    parser.add_argument("--ref-repeat", type=int, default=None, metavar="N",
                        help="samples of the slow NumPy reference (default 3; 1 with --quick)")
    parser.add_argument("--shapes", default=None, metavar="LIST",
                        help="comma-separated subset of " + ", ".join(DEFAULT_SHAPES)
                             + ", or explicit shapes such as 256x64 or 8x14x14x32:-1 "
                               "(':axis' gives the channel axis, default 1)")
    parser.add_argument("--ops", default=",".join(OPS), metavar="LIST",
                        help="comma-separated subset of " + ", ".join(OPS))
    parser.add_argument("--quick", action="store_true",
                        help="small shapes and few repeats: a smoke run of a few seconds")
    parser.add_argument("--no-reference", action="store_true",
                        help="skip the (slow) NumPy reference")
    parser.add_argument("--stat", choices=["median", "min"], default="median",
                        help="statistic of the samples (default median; min = the best "
                             "sample, steadier on a busy machine), also for the copy bound")
    parser.add_argument("--no-torch", action="store_true", help="skip PyTorch even if installed")
    parser.add_argument("--small", action="store_true",
                        help="time small shapes as users call them (the fixed cost per call), "
                             "at 1 and 2 threads (or --threads), instead of the large shapes")
    parser.add_argument("--plot", default=None, metavar="PATH",
                        help="also sweep input sizes (NCHW and (N, C)) and save a PNG of GB/s "
                             "against size: fastbn, PyTorch, copy (needs matplotlib)")
    parser.add_argument("--json", default=None, metavar="PATH",
                        help="also save every result (and raw samples) as JSON")
    return parser


def bench_dtypes(name, small):
    """The data dtypes of --dtype `name`; half precision (bfloat16 needs the optional
    ml_dtypes) with --small only."""
    if name in ("float32", "float64", "both"):
        return [np.float32, np.float64] if name == "both" else [np.dtype(name).type]
    if not small:
        raise ValueError(f"--dtype {name}: half-precision data with --small only "
                         "(bench/half.py times the large shapes)")
    wanted = ["float16", "bfloat16"] if name == "half" else [name]
    dtypes = []
    for w in wanted:
        if w == "float16":
            dtypes.append(np.float16)
            continue
        from ._checks import bfloat16
        bf16 = bfloat16(load=True)
        if bf16 is None:
            raise ValueError("--dtype bfloat16 needs ml_dtypes (pip install fastbn[bf16])")
        dtypes.append(bf16.type)
    return dtypes


def parse_shapes(text, quick):
    table = QUICK_SHAPES if quick else DEFAULT_SHAPES
    if not text:
        return [(name, shape, axis) for name, (shape, axis) in table.items()]
    specs = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if item in table:
            specs.append((item, *table[item]))
            continue
        body, _, axis_text = item.partition(":")
        try:
            shape = tuple(int(d) for d in body.lower().split("x"))
            axis = int(axis_text) if axis_text else 1
        except ValueError:
            raise ValueError(f"--shapes: {item!r} is neither one of {', '.join(table)} "
                             "nor a shape such as 64x32x7x7 or 8x7x7x32:-1") from None
        if len(shape) < 2 or min(shape) < 1 or not -len(shape) <= axis < len(shape):
            raise ValueError(f"--shapes: {item!r} needs >= 2 positive dimensions and a valid axis")
        if shape[axis % len(shape)] == math.prod(shape):
            raise ValueError(f"--shapes: {item!r} has one value per channel: nothing to train")
        specs.append((item, shape, axis))
    if not specs:
        raise ValueError("--shapes: no shape given")
    return specs


def parse_ops(text):
    ops = [s.strip() for s in text.split(",") if s.strip()]
    bad = [o for o in ops if o not in OPS]
    if bad or not ops:
        raise ValueError(f"--ops: unknown {', '.join(bad) or '(empty)'}; "
                         f"choose from {', '.join(OPS)}")
    return ops


# ---------------------------------------------------------------- timing

def _once(fn, number):
    t0 = time.perf_counter()
    for _ in range(number):
        fn()
    return (time.perf_counter() - t0) / number


def calls_per_sample(fn):
    """Warm fn up; then (calls making a sample of >= MIN_SAMPLE_SECONDS, seconds per call)."""
    t = _once(fn, 1)
    if t >= MIN_SAMPLE_SECONDS:
        return 1, t
    t = max(_once(fn, 1), 1e-7)
    return int(min(MAX_CALLS_PER_SAMPLE, math.ceil(MIN_SAMPLE_SECONDS / t))), t


def interleaved(candidates, rounds):
    """candidates: {name: (fn, samples)}. One sample of each per round, in a
    rotating order; an implementation with fewer samples is spread evenly over
    the rounds. Before each sample: a pause of SETTLE_SECONDS (so that the
    spinning OpenMP workers of the previous implementation, another runtime in
    torch's case, go to sleep instead of competing for the cores) and, for calls
    shorter than 20 ms, untimed calls that wake our own workers: three, as a call
    of fewer than FASTBN_WAKE_VALUES values wakes them only as the third of a run
    of calls back to back (README, "small calls after a pause").
    Returns {name: [seconds per call, ...]}."""
    names = list(candidates)
    number, per_call = {}, {}
    for n in names:
        number[n], per_call[n] = calls_per_sample(candidates[n][0])
    samples = {n: [] for n in names}
    for r in range(rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            fn, want = candidates[n]
            # sample in round r iff the even spread of `want` over `rounds` steps here
            if (r + 1) * want // rounds > r * want // rounds:
                if len(names) > 1:
                    time.sleep(SETTLE_SECONDS)
                    if per_call[n] < 0.02:
                        for _ in range(WAKE_CALLS):
                            fn()
                samples[n].append(_once(fn, number[n]))
    return samples


def median(values):
    return float(np.median(values)) if values else float("nan")


# ---------------------------------------------------------------- copy bound

class CopyBandwidth:
    """Copy bandwidth with `threads` threads: np.copyto of equal contiguous
    slices, one per Python thread (np.copyto releases the GIL)."""

    def __init__(self, threads, stat="median"):
        self.threads, self.stat = threads, stat
        self.src = self.dst = None
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def close(self):
        if self.pool is not None:
            self.pool.shutdown()

    def copier(self, dst, src, threads=None):
        threads = self.threads if threads is None else threads
        if threads == 1 or self.pool is None:
            return lambda: np.copyto(dst, src)
        bounds = np.linspace(0, src.size, threads + 1).astype(int)
        pairs = [(dst[a:b], src[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
        pool = self.pool

        def run():
            for f in [pool.submit(np.copyto, d, s) for d, s in pairs]:
                f.result()
        return run

    def big(self):
        """(fn, bytes moved) of the COPY_BYTES copy with all threads; buffers made once."""
        if self.src is None:
            self.src = np.ones(COPY_BYTES // 4, dtype=np.float32)
            self.dst = np.zeros(COPY_BYTES // 4, dtype=np.float32)
        return self.copier(self.dst, self.src), 2 * self.src.nbytes

    def measure(self, nbytes, repeat, threads=None):
        """Median GB/s (read + write bytes) copying a float32 buffer of nbytes."""
        n = max(1, nbytes // 4)
        src = np.ones(n, dtype=np.float32)
        dst = np.zeros(n, dtype=np.float32)  # touched: no page faults in the timing
        fn = self.copier(dst, src, threads)
        samples = interleaved({"copy": (fn, repeat)}, repeat)["copy"]
        return 2 * src.nbytes / (min(samples) if self.stat == "min" else median(samples)) / 1e9


# ---------------------------------------------------------------- the ops

def make_data(shape, axis, dtype, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[axis]
    x = rng.standard_normal(shape, dtype=np.float64).astype(dtype)
    x += rng.uniform(-1, 1, C).reshape([C if d == axis % len(shape) else 1
                                        for d in range(len(shape))]).astype(dtype)
    return dict(x=x, dy=rng.standard_normal(shape, dtype=np.float64).astype(dtype),
                gamma=rng.uniform(0.5, 1.5, C).astype(dtype),
                beta=rng.normal(0, 0.5, C).astype(dtype), axis=axis, C=C)


def numpy_ops(module, d):
    """{op: fn} of fastbn or fastbn.reference, every output preallocated. The running
    statistics are float32 for half-precision data, as the layer keeps them."""
    x, dy, gamma, beta, axis = d["x"], d["dy"], d["gamma"], d["beta"], d["axis"]
    C = d["C"]
    rm, rv = np.zeros(C, param_dtype(x.dtype)), np.ones(C, param_dtype(x.dtype))
    y, dx = np.ones_like(x), np.ones_like(x)
    dg, db = np.ones_like(gamma), np.ones_like(beta)
    _, cache = module.forward(x, gamma, beta, axis=axis, running_mean=rm, running_var=rv, out=y)
    return {
        "forward-train": lambda: module.forward(x, gamma, beta, axis=axis, running_mean=rm,
                                                running_var=rv, out=y),
        "backward": lambda: module.backward(dy, cache, out=(dx, dg, db)),
        "inference": lambda: module.forward(x, gamma, beta, axis=axis, training=False,
                                            running_mean=rm, running_var=rv, out=y),
    }


def torch_ops(torch, d):
    """{op: [(label, fn), ...]}: aten's native batch norm, both its out= form and
    its allocating form (the faster one is used; for some ops the out= wrapper
    computes into a temporary and copies)."""
    aten = torch.ops.aten
    x = torch.from_numpy(d["x"]).movedim(d["axis"], 1)     # NHWC becomes channels_last
    dy = torch.from_numpy(d["dy"]).movedim(d["axis"], 1)
    w, b = torch.from_numpy(d["gamma"]), torch.from_numpy(d["beta"])
    C, eps = d["C"], 1e-5
    rm, rv = torch.zeros(C, dtype=w.dtype), torch.ones(C, dtype=w.dtype)  # float32 for half data
    y, save_mean, save_invstd = aten.native_batch_norm(x, w, b, rm, rv, True, 0.1, eps)
    y_out = torch.ones_like(y)
    sm_out, si_out = torch.empty_like(save_mean), torch.empty_like(save_invstd)
    dx_out, dg_out, db_out = torch.ones_like(x), torch.empty_like(w), torch.empty_like(b)
    _, em, ei = aten.native_batch_norm(x, w, b, rm, rv, False, 0.1, eps)
    em_out, ei_out = torch.empty_like(em), torch.empty_like(ei)
    mask = [True, True, True]
    return {
        "forward-train": [
            ("native_batch_norm.out", lambda: aten.native_batch_norm.out(
                x, w, b, rm, rv, True, 0.1, eps, out=y_out, save_mean=sm_out,
                save_invstd=si_out)),
            ("native_batch_norm", lambda: aten.native_batch_norm(x, w, b, rm, rv, True, 0.1, eps))],
        "backward": [
            ("native_batch_norm_backward.out", lambda: aten.native_batch_norm_backward.out(
                dy, x, w, rm, rv, save_mean, save_invstd, True, eps, mask, out0=dx_out,
                out1=dg_out, out2=db_out)),
            ("native_batch_norm_backward", lambda: aten.native_batch_norm_backward(
                dy, x, w, rm, rv, save_mean, save_invstd, True, eps, mask))],
        "inference": [
            ("native_batch_norm.out", lambda: aten.native_batch_norm.out(
                x, w, b, rm, rv, False, 0.1, eps, out=y_out, save_mean=em_out,
                save_invstd=ei_out)),
            ("native_batch_norm",
             lambda: aten.native_batch_norm(x, w, b, rm, rv, False, 0.1, eps))],
    }


def fastest(variants, trials=3):
    """The (label, fn) of the faster variant, by median of a few interleaved samples."""
    if len(variants) == 1:
        return variants[0]
    samples = interleaved({label: (fn, trials) for label, fn in variants}, trials)
    best = min(samples, key=lambda label: median(samples[label]))
    return next(v for v in variants if v[0] == best)


def load_torch(threads):
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


# ---------------------------------------------------------------- the table

def fmt_ms(seconds):
    if not math.isfinite(seconds):
        return "-"
    ms = seconds * 1e3
    return f"{ms:.3f}" if ms < 1 else f"{ms:.2f}" if ms < 100 else f"{ms:.0f}"


def fmt_ratio(r):
    return "-" if r is None or not math.isfinite(r) else f"{r:.2f}x" if r < 100 else f"{r:.0f}x"


HEADER = (f"{'op':<14}{'fastbn ms':>10}{'GB/s':>8}{'copy':>6}{'bound':>7}"
          f"{'torch ms':>10}{'vs torch':>9}{'ref ms':>9}{'vs ref':>8}")


def row(res):
    t = res["fastbn_s"]
    gbps = res["fastbn_GBps"]
    return (f"{res['op']:<14}{fmt_ms(t):>10}{gbps:>8.{1 if gbps >= 1 else 3}f}"
            f"{res['copy_GBps']:>6.1f}{res['fraction']:>7.2f}"
            f"{fmt_ms(res.get('torch_s', float('nan'))):>10}{fmt_ratio(res.get('vs_torch')):>9}"
            f"{fmt_ms(res.get('reference_s', float('nan'))):>9}"
            f"{fmt_ratio(res.get('vs_reference')):>8}")


def describe_machine():
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return cpu


def load_note():
    """The 1-minute load average, flagged when other processes compete for the cores."""
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):
        return "load average unknown"
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    busy = " (busy machine: expect noisy, multi-modal samples)" if load > 0.5 * (cpus or 1) else ""
    return f"load average {load:.2f}{busy}"


def bench_shape(name, shape, axis, dtype, ops, args, torch, copier, out):
    d = make_data(shape, axis, dtype)
    nbytes = d["x"].nbytes
    fb = numpy_ops(fastbn, d)
    ref = numpy_ops(reference, d) if not args.no_reference else None
    th = torch_ops(torch, d) if torch is not None else None
    label = "x".join(map(str, shape))
    print(f"\n{label} axis={axis} {np.dtype(dtype).name} ({nbytes / 1e6:.1f} MB)"
          + (f"  [{name}]" if name != label else ""), file=out)
    print(HEADER, file=out)
    results = []
    for op in ops:
        copy_fn, copy_bytes = copier.big()
        cands = {"fastbn": (fb[op], args.repeat), "copy": (copy_fn, args.repeat)}
        torch_label = None
        if th is not None:
            torch_label, tfn = fastest(th[op])
            cands["torch"] = (tfn, args.repeat)
        if ref is not None:
            cands["reference"] = (ref[op], min(args.ref_repeat, args.repeat))
        samples = interleaved(cands, args.repeat)
        moved = BYTES_PER_ELEMENT_PASS[op] * nbytes
        stat = min if args.stat == "min" else median
        t = stat(samples["fastbn"])
        copy_GBps = copy_bytes / stat(samples["copy"]) / 1e9
        res = dict(shape=list(shape), axis=axis, dtype=np.dtype(dtype).name, op=op,
                   bytes=moved, fastbn_s=t, fastbn_GBps=moved / t / 1e9, copy_GBps=copy_GBps,
                   fraction=moved / t / 1e9 / copy_GBps,
                   min_s={k: min(v) for k, v in samples.items()}, samples=samples)
        if "torch" in samples:
            tt = stat(samples["torch"])
            res.update(torch_s=tt, torch_GBps=moved / tt / 1e9, vs_torch=tt / t,
                       torch_op=torch_label)
        if "reference" in samples:
            tr = stat(samples["reference"])
            res.update(reference_s=tr, vs_reference=tr / t)
        print(row(res), file=out, flush=True)
        results.append(res)
    return results


def findings(results):
    """Lines naming the op/shapes slower than torch or below 0.6 of the bound."""
    lines = []
    for r in results:
        where = f"{'x'.join(map(str, r['shape']))} axis={r['axis']} {r['dtype']} {r['op']}"
        if r.get("vs_torch") is not None and r["vs_torch"] < 1:
            lines.append(f"  slower than torch: {where}: {fmt_ms(r['fastbn_s'])} ms vs "
                         f"{fmt_ms(r['torch_s'])} ms ({r['vs_torch']:.2f}x)")
        if r["fraction"] < 0.6:
            lines.append(f"  below 0.6 of the bound: {where}: {r['fastbn_GBps']:.3g} GB/s "
                         f"= {r['fraction']:.2f} of copy")
    return lines


# ---------------------------------------------------------------- entry point

def run(args, out=None):
    out = sys.stdout if out is None else out
    try:
        specs = parse_shapes(args.shapes, args.quick)
        ops = parse_ops(args.ops)
        if args.threads is not None and args.threads < 1:
            raise ValueError("--threads must be >= 1")
        for opt in ("repeat", "ref_repeat"):
            if getattr(args, opt) is not None and getattr(args, opt) < 1:
                raise ValueError(f"--{opt.replace('_', '-')} must be >= 1")
    except ValueError as exc:
        print(f"fastbn bench: {exc}", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print("fastbn bench: --plot needs matplotlib, which is not installed "
                  "(pip install matplotlib, or the 'bench' extra)", file=sys.stderr)
            return 2
    if args.repeat is None:
        args.repeat = 5 if args.quick else 15
    if args.ref_repeat is None:
        args.ref_repeat = 1 if args.quick else 3
    try:
        dtypes = bench_dtypes(args.dtype, args.small)
    except ValueError as exc:
        print(f"fastbn bench: {exc}", file=sys.stderr)
        return 2
    if args.small:
        from ._bench_small import run_small
        print(f"fastbn {fastbn.__version__} bench --small: backend {fastbn.backend}, numpy "
              f"{np.__version__}; cpu: {describe_machine()}, {os.cpu_count()} cpu(s); "
              f"{load_note()}", file=out)
        run_small(dtypes, [args.threads] if args.threads else [1, 2], args.repeat,
                  not args.no_torch, out)
        print(f"end: {load_note()}", file=out)
        return 0

    previous_threads = None
    if args.threads is not None:
        previous_threads = fastbn.set_num_threads(args.threads)
    threads = fastbn.get_num_threads()
    torch = None if args.no_torch else load_torch(threads)
    copier = CopyBandwidth(threads, args.stat)
    try:
        copy_GBps = copier.measure(COPY_BYTES, 3 if args.quick else 9)
        copy1_GBps = copier.measure(COPY_BYTES, 3 if args.quick else 9, threads=1) \
            if threads > 1 else copy_GBps

        print(f"fastbn {fastbn.__version__} bench: backend {fastbn.backend}, {threads} thread(s), "
              f"numpy {np.__version__}"
              + (f", torch {torch.__version__} ({torch.get_num_threads()} thread(s))"
                 if torch is not None else ", torch not installed" if not args.no_torch
                 else ", torch skipped"), file=out)
        print(f"cpu: {describe_machine()}, {os.cpu_count()} cpu(s); {load_note()}", file=out)
        print(f"copy: np.copyto of a {COPY_BYTES >> 20} MB float32 buffer split over {threads} "
              "Python thread(s) (it releases the GIL), read + write bytes, sampled in every round "
              f"next to the ops (column 'copy', GB/s); at start {copy_GBps:.1f} GB/s "
              f"(1 thread: {copy1_GBps:.1f} GB/s)", file=out)
        print(f"{args.stat} of {args.repeat} interleaved samples (reference: "
              f"{'skipped' if args.no_reference else min(args.ref_repeat, args.repeat)}); "
              "fastbn writes into preallocated out= buffers; torch = aten.native_batch_norm"
              "[_backward], the faster of its out= and allocating forms", file=out)
        print("bytes per op: forward-train 2*x.nbytes, backward 3*x.nbytes, inference "
              "2*x.nbytes; bound = fastbn GB/s / copy GB/s; 'vs' = their time / fastbn's",
              file=out)
        noisy = [v for v in ENV_SLOWING_NUMPY if v in os.environ]
        if noisy:
            print(f"note: {', '.join(noisy)} set; they can slow NumPy (run under "
                  f"'env -u {' -u '.join(noisy)}')", file=out)
        if fastbn.backend != "c":
            print("note: the compiled kernels are not in use: fastbn is the NumPy reference here",
                  file=out)

        results = []
        for dtype in dtypes:
            for name, shape, axis in specs:
                results += bench_shape(name, shape, axis, dtype, ops, args, torch, copier, out)

        print(f"\nend: {load_note()}", file=out)
        notes = findings(results)
        print("\nslower than torch or below 0.6 of the bound:" if notes
              else "\nnothing slower than torch or below 0.6 of the bound", file=out)
        for line in notes:
            print(line, file=out)

        sweep = None
        if args.plot:
            from ._bench_sweep import run_sweep, save_plot
            sweep = run_sweep(dtypes[0], ops, args, torch, copier, out)
            save_plot(args.plot, sweep, ops, copy_GBps,
                      f"fastbn {fastbn.__version__} vs PyTorch, {np.dtype(dtypes[0]).name}, "
                      f"{threads} thread(s), {describe_machine()}")
            print(f"plot saved to {args.plot}", file=out)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(dict(version=fastbn.__version__, backend=fastbn.backend, threads=threads,
                               numpy=np.__version__,
                               torch=None if torch is None else torch.__version__,
                               cpu=describe_machine(), copy_GBps=copy_GBps,
                               copy_1thread_GBps=copy1_GBps, repeat=args.repeat,
                               ref_repeat=args.ref_repeat, results=results, sweep=sweep),
                          f, indent=1)
            print(f"results saved to {args.json}", file=out)
    finally:
        copier.close()
        if previous_threads is not None:
            fastbn.set_num_threads(previous_threads)
    return 0


def main(argv=None):
    parser = add_arguments(argparse.ArgumentParser(prog="python -m fastbn bench",
                                                   description=__doc__.split("\n\n")[0]))
    return run(parser.parse_args(argv))
