"""Small shapes for ``python -m fastbn bench --small``: the fixed cost of a call.

NumPy trainers call batch norm on small batches, where a call's fixed cost counts
more than bandwidth. For each shape, dtype and thread count this times, as a user
calls them (allocating outputs, parameters and running statistics given):

  forward   fastbn.forward in training mode, running statistics updated
  backward  fastbn.backward on that forward's cache
  train     forward + backward, against PyTorch's F.batch_norm on tensors that
            require grad plus the autograd backward
  eval      fastbn.forward(training=False) against F.batch_norm(training=False)

and a hand-written NumPy batch norm (the usual course code: mean, var, xhat;
backward by the closed formula). The (4, 5) row at 1 thread is the fixed cost.
Half-precision data (float16, bfloat16) take float32 parameters and running statistics,
as the layer makes them (PyTorch likewise: its weight and running statistics float32).
Implementations are interleaved sample by sample; medians are reported.
"""
import numpy as np

import fastbn

from ._bench import interleaved, load_torch, median
from ._checks import bfloat16, param_dtype

SMALL_SHAPES = ((4, 5), (32, 64), (50, 100), (64, 128), (256, 512), (32, 64, 8, 8))
EPS = 1e-5


def numpy_batchnorm(x, gamma, beta, eps=EPS):
    """Course-style batch norm over axis 1 in plain NumPy: (y, cache)."""
    axes = (0,) + tuple(range(2, x.ndim))
    shape = [1, -1] + [1] * (x.ndim - 2)
    mean = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    return gamma.reshape(shape) * xhat + beta.reshape(shape), (xhat, var, gamma.reshape(shape))


def numpy_batchnorm_backward(dy, cache, eps=EPS):
    xhat, var, gamma = cache
    axes = (0,) + tuple(range(2, dy.ndim))
    m = dy.size // dy.shape[1]
    dxhat = dy * gamma
    dx = (m * dxhat - dxhat.sum(axis=axes, keepdims=True)
          - xhat * (dxhat * xhat).sum(axis=axes, keepdims=True)) / (m * np.sqrt(var + eps))
    return dx, (dy * xhat).sum(axis=axes), dy.sum(axis=axes)


def _candidates(shape, dtype, torch):
    rng = np.random.default_rng(0)
    C = shape[1]
    pdt = param_dtype(np.dtype(dtype))  # float32 for half-precision data
    x = rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma, beta = rng.uniform(0.5, 1.5, C).astype(pdt), rng.normal(0, 0.5, C).astype(pdt)
    rm, rv = np.zeros(C, pdt), np.ones(C, pdt)
    _, cache = fastbn.forward(x, gamma, beta, running_mean=rm, running_var=rv)

    def train():
        _, c = fastbn.forward(x, gamma, beta, running_mean=rm, running_var=rv)
        return fastbn.backward(dy, c)

    def numpy_train():
        _, c = numpy_batchnorm(x, gamma, beta)
        return numpy_batchnorm_backward(dy, c)

    ops = {
        "forward": {"fastbn": lambda: fastbn.forward(x, gamma, beta, running_mean=rm,
                                                      running_var=rv),
                    "numpy": lambda: numpy_batchnorm(x, gamma, beta)},
        "backward": {"fastbn": lambda: fastbn.backward(dy, cache)},
        "train": {"fastbn": train, "numpy": numpy_train},
        "eval": {"fastbn": lambda: fastbn.forward(x, gamma, beta, training=False,
                                                   running_mean=rm, running_var=rv)},
    }
    if torch is not None:
        F = torch.nn.functional
        xe, dyt = _tensor(torch, x), _tensor(torch, dy)
        xt = xe.clone().requires_grad_()
        gt, bt = torch.from_numpy(gamma).requires_grad_(), torch.from_numpy(beta).requires_grad_()
        rmt, rvt = torch.zeros(C, dtype=gt.dtype), torch.ones(C, dtype=gt.dtype)
        ge, be = torch.from_numpy(gamma), torch.from_numpy(beta)

        def torch_train():
            xt.grad = gt.grad = bt.grad = None
            F.batch_norm(xt, rmt, rvt, gt, bt, True, 0.1, EPS).backward(dyt)

        ops["forward"]["torch"] = lambda: F.batch_norm(xe, rmt, rvt, ge, be, True, 0.1, EPS)
        ops["train"]["torch"] = torch_train
        ops["eval"]["torch"] = lambda: F.batch_norm(xe, rmt, rvt, ge, be, False, 0.1, EPS)
    return ops


def _tensor(torch, a):
    """a as a torch tensor of its dtype (bfloat16, which torch.from_numpy does not take,
    through float32: exact)."""
    bf16 = bfloat16()  # None without ml_dtypes (and np.dtype(None) is float64)
    if bf16 is not None and a.dtype == bf16:
        return torch.from_numpy(a.astype(np.float32)).to(torch.bfloat16)
    return torch.from_numpy(a)


def run_small(dtypes, thread_counts, repeat, use_torch, out):
    """Print the small-shape table; return its rows (dicts, times in seconds)."""
    rows = []
    print("\nsmall shapes: median microseconds per call as users call it (allocating outputs); "
          "'torch' = F.batch_norm (+ autograd backward for 'train'), 'numpy' = course-style "
          "NumPy code; ratios = their time / fastbn's", file=out)
    print(f"{'shape':>16} {'dtype':>7} {'thr':>3} {'op':>8} {'fastbn':>8} {'torch':>8} "
          f"{'numpy':>8} {'vs torch':>8} {'vs numpy':>8}", file=out)
    for threads in thread_counts:
        previous = fastbn.set_num_threads(threads)
        torch = load_torch(threads) if use_torch else None
        try:
            for dtype in dtypes:
                for shape in SMALL_SHAPES:
                    for op, impls in _candidates(shape, dtype, torch).items():
                        samples = interleaved({n: (f, repeat) for n, f in impls.items()}, repeat)
                        t = {n: median(s) for n, s in samples.items()}
                        row = dict(shape=shape, dtype=np.dtype(dtype).name, threads=threads,
                                   op=op, **t)
                        rows.append(row)
                        us = {n: f"{t[n] * 1e6:8.2f}" if n in t else f"{'-':>8}"
                              for n in ("fastbn", "torch", "numpy")}
                        ratio = {n: f"{t[n] / t['fastbn']:7.2f}x" if n in t else f"{'-':>8}"
                                 for n in ("torch", "numpy")}
                        print(f"{str(shape):>16} {row['dtype']:>7} {threads:>3} {op:>8} "
                              f"{us['fastbn']} {us['torch']} {us['numpy']} {ratio['torch']} "
                              f"{ratio['numpy']}", file=out)
        finally:
            fastbn.set_num_threads(previous)
    summarize(rows, out)
    return rows


FIXED_COST_US = 3.0  # issue 15's bound on a (4, 5) call at 1 thread


def summarize(rows, out):
    """The table's conclusions: the fixed cost (the (4, 5) rows at 1 thread, against
    FIXED_COST_US) and, per op, the lowest ratio to PyTorch and to NumPy."""
    print("\nfixed cost: microseconds per (4, 5) call at 1 thread (median; bound "
          f"{FIXED_COST_US:g} us)", file=out)
    for dtype in dict.fromkeys(r["dtype"] for r in rows):
        fixed = {r["op"]: r["fastbn"] * 1e6 for r in rows
                 if r["shape"] == (4, 5) and r["threads"] == 1 and r["dtype"] == dtype}
        if fixed:
            worst = max(fixed[op] for op in ("forward", "backward", "eval") if op in fixed)
            print(f"  {dtype}: " + ", ".join(f"{op} {t:.2f}" for op, t in fixed.items())
                  + f"  ({'within' if worst <= FIXED_COST_US else 'OVER'} the bound)", file=out)
    for other in ("torch", "numpy"):
        compared = [r for r in rows if other in r]
        if not compared:
            continue
        print(f"lowest ratio {other} / fastbn per op (all shapes, dtypes, threads):", file=out)
        for op in dict.fromkeys(r["op"] for r in compared):
            low = min((r for r in compared if r["op"] == op), key=lambda r: r[other] / r["fastbn"])
            ratio = low[other] / low["fastbn"]
            print(f"  {op:>8}: {ratio:5.2f}x at {low['shape']} {low['dtype']} "
                  f"{low['threads']} thread(s){'' if ratio > 1 else '  (fastbn NOT ahead)'}",
                  file=out)
