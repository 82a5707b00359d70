"""Compiled path of the forward keywords beyond PyTorch's (issue 20): several
channel axes, mask=, renorm=, virtual_batch_size=, residual=, leaky ReLU, and
backward(need_dx=False) on such a cache.

Fused in C (the kernels' epilogue, src_c/fastbn.h fbn_epilogue): the leaky ReLU and
the residual add. A call with one channel axis and no mask, renorm or virtual batches
runs the fused forward and backward kernels themselves (fbn_forward_train_ex,
fbn_forward_infer_ex, fbn_backward_ex: one skeleton with the plain calls; backward
writes dresidual in its reduction pass, which dx then reads as its dy, and with
need_dx=False runs that reduction alone). Any other call's y comes from one
fbn_affine_ex pass per group (residual and activation fused into it).

What remains a composition, marked [interim] below:

Each call is a composition of the existing kernels, through fastbn._core's building
blocks, on the (outer, W, inner) view of x in which the span of the channel axes is
one axis of W values (a view of a C-contiguous x: no copy):

  statistics   batch_stats per group of rows (virtual batches: slices of axis 0, views),
               merged over the axes inside the span that are not channel axes (Chan);
               with a mask, the masked kernels (src_c/kern_masked.h: one pass, y fused
               for one group without renorm when the activation is none or a ReLU
               without residual); gathered [a copy] only when the mask varies along an
               axis inside the channel axes' span
  forward      (but with the masked kernel's y) one affine_ex pass per group (renorm:
               gamma * r, gamma * d + beta), with the residual and activation fused
  backward     (but the fused case above) the activation's mask first: fbn_backward_ex's
               reduction (which writes it as dresidual; without a residual it reads a
               zero one [interim]); then with a mask (training, no interior axis) the
               masked backward kernel (sums over every position, dx per kept/dropped
               position; a ReLU without residual inside it); otherwise backward_reduce,
               backward_elemt with gamma * r, and with a mask dx where the mask is
               False from normalize  [interim]
"""
import math

import numpy as np

from . import _core, _kernels
from ._checks import aligned_contiguous, canonical_inputs, commit, mark_written, overwrites_x, store
from ._threads import get_num_threads
from ._features import FeatureCache, renorm_constants
from . import reference

__all__ = ["feature_forward", "feature_backward"]


class _Wide:
    """x's (outer, W, inner) view, and (C,) <-> (W,) per-channel vectors."""

    def __init__(self, shape, f):
        lo, hi = f.axes[0], f.axes[-1]
        self.span = tuple(shape[lo:hi + 1])
        self.interior = tuple(d - lo for d in range(lo, hi + 1) if d not in f.axes)
        self.vspan = f.vshape[lo:hi + 1]
        self.outer, self.inner = math.prod(shape[:lo]), math.prod(shape[hi + 1:])
        self.shape3 = (self.outer, math.prod(self.span), self.inner)
        n = shape[0]
        self.per_row = self.outer // n if lo >= 1 and n else None  # outer entries per row

    def view(self, a):
        return a.reshape(self.shape3)  # a view when a is C-contiguous

    def rows(self, rows):
        """The outer slice of x's rows `rows` (all of them when axis 0 is a channel axis)."""
        if self.per_row is None:
            return slice(None)
        return slice(rows.start * self.per_row, rows.stop * self.per_row)

    def expand(self, v):
        """A (C,) vector (or None) over the W positions of the span."""
        if v is None or not self.interior:
            return v
        return np.broadcast_to(np.reshape(v, self.vspan), self.span).ravel()

    def collapse(self, w):
        """(W,) sums to (C,) sums over the interior axes."""
        if not self.interior:
            return w
        return w.reshape(self.span).sum(axis=self.interior).ravel()

    def stats(self, x3):
        """(mean, var) per channel of x3 (a group's rows), merged over the interior axes."""
        count, mean, m2 = _core.batch_stats(x3, axis=1)
        if self.interior:
            mean, m2 = mean.reshape(self.span), m2.reshape(self.span)
            merged = mean.mean(axis=self.interior, keepdims=True)  # equal counts
            m2 = (m2 + count * (mean - merged) ** 2).sum(axis=self.interior)
            mean, count = merged, count * math.prod(self.span[d] for d in self.interior)
        return mean.ravel(), m2.ravel() / count


def _mask2d(f, shape, w):
    """The mask as (outer, inner) bytes of x's (outer, W, inner) view (O(x.size / C)),
    or None when it may vary along an axis inside the channel axes' span."""
    if w.interior:
        return None
    if f.mask2d is not None:  # the forward's (backward reuses it)
        return f.mask2d
    one = tuple(1 if d in f.axes else n for d, n in enumerate(shape))
    m = f.mask
    if m.shape != one or not m.flags.c_contiguous:  # broadcast: one copy of O(x.size / C)
        m = np.ascontiguousarray(np.broadcast_to(m, one))
    f.mask2d = m.reshape(w.outer, w.inner).view(np.uint8)
    return f.mask2d


def _masked_pass(x3, m2d, eps, gamma=None, beta=None, relu=False, y3=None):
    """The masked kernel on one group: (mean_hi, mean_lo, var); y3 written unless None."""
    C = x3.shape[1]
    hi, lo, var, invstd = np.empty(C), np.empty(C), np.empty(C), np.empty(C)
    _kernels.forward_masked(_core._k(x3), None if y3 is None else _core._k(y3), m2d,
                            _core._f64(gamma), _core._f64(beta), eps, relu, hi, lo, var, invstd,
                            get_num_threads(), dt=_core._dt(x3))
    return hi, lo, var


def _masked_stats(x, f, rows):
    """(mean, var) per channel of the positions the mask keeps in the rows `rows`:
    [interim] those positions gathered (a copy of them: (m, C)), then batch_stats."""
    channels_last = np.moveaxis(x[rows], f.axes, range(x.ndim - len(f.axes), x.ndim))
    keep = np.broadcast_to(f.mask, tuple(1 if d in f.axes else n for d, n in
                                         enumerate(x.shape)))[rows].squeeze(axis=f.axes)
    kept = channels_last[keep].reshape(-1, f.channels)
    count, mean, m2 = _core.batch_stats(kept, axis=1)
    return mean, m2 / count


def _coefficients(cache, i):
    """gamma * r and gamma * d + beta of group i (None where the plain value is)."""
    gamma, beta = cache.gamma, cache.beta
    gamma = None if gamma is None else gamma.astype(np.float64).ravel()
    beta = None if beta is None else beta.astype(np.float64).ravel()
    if cache.r is None:
        return gamma, beta
    r, d = cache.flat("r")[i], cache.flat("d")[i]
    g = np.ones_like(r) if gamma is None else gamma
    return g * r, g * d + (0.0 if beta is None else beta)


_ACT = {None: 0, "relu": 1, "leaky_relu": 2}


def _k(a):
    """Data as the kernels take it (half precision: its bits; None stays None)."""
    return None if a is None else _core._k(a)


_dt = _core._dt  # the kernels' dtype code of half-precision data


def _epilogue(cache):
    """(act, slope, z): the kernels' epilogue of a cache (z: the residual, C-contiguous)."""
    z = cache.residual
    if z is not None:
        z = aligned_contiguous(z)
    return _ACT[cache.activation], float(cache.negative_slope), z


def _fused(f):
    """Whether a call with features f runs the fused kernels themselves (one channel
    axis, one group, no mask, no renorm: the epilogue alone)."""
    return (len(f.axes) == 1 and f.mask is None and f.renorm is None
            and f.virtual_batch_size is None)


def _normalized(cache, w, epilogue=(0, 0.0, None)):
    """act(gamma * (xhat * r + d) + beta + z) of every group, in x's dtype, C-contiguous:
    one fbn_affine_ex pass per group."""
    x = cache.x
    act, slope, z = epilogue
    y = _kernels.empty_output(x.shape, x.dtype)
    x3, y3 = w.view(aligned_contiguous(x)), w.view(y)  # (a copy of a strided x)
    z3 = None if z is None else w.view(z)
    mean, invstd = cache.flat("mean"), cache.flat("invstd")
    for i, rows in enumerate(cache.groups):
        o = w.rows(rows)
        if y3[o].size == 0:
            continue
        gamma, beta = _coefficients(cache, i)
        shift, scale, bias = _core._coefficients(
            w.expand(mean[i]), w.expand(invstd[i]), *(None if v is None else
                                                      np.ascontiguousarray(w.expand(v))
                                                      for v in (gamma, beta)))
        _kernels.affine_ex(_k(x3[o]), _k(y3[o]), shift, scale, bias, act, slope,
                           None if z3 is None else _k(z3[o]), get_num_threads(), dt=_dt(x))
    return y


def _fused_forward(x, a, f):
    """The fused kernels' forward: (mean, lo, var, invstd) as (1, C) arrays, and y."""
    x3, z3 = canonical_inputs(f.axes[0], x, f.residual)
    y3 = _kernels.empty_output(x3.shape, x.dtype)
    act, slope = _ACT[f.activation], float(f.negative_slope)
    C = f.channels
    gamma = None if a.gamma is None else _core._f64(a.gamma.ravel())
    beta = None if a.beta is None else _core._f64(a.beta.ravel())
    invstd = np.empty(C)
    if a.training:
        mean, lo, var = np.empty(C), np.empty(C), np.empty(C)
        _kernels.forward_train_ex(_k(x3), _k(y3), gamma, beta, a.eps, act, slope, _k(z3), mean,
                                  lo, var, invstd, get_num_threads(), dt=_dt(x))
    else:
        mean = np.array(a.running_mean, dtype=np.float64).ravel()
        var = np.array(a.running_var, dtype=np.float64).ravel()
        lo = None
        _kernels.forward_infer_ex(_k(x3), _k(y3), mean, var, gamma, beta, a.eps, act, slope,
                                  _k(z3), invstd, get_num_threads(), dt=_dt(x))
    return mean[None], lo, var[None], invstd[None], y3.reshape(x.shape)


def feature_forward(x, a, f, then):
    """fastbn._core's forward for a call with features `f` (see the module)."""
    w = _Wide(x.shape, f)
    x3 = w.view(x)
    gamma = None if a.gamma is None else a.gamma.copy()
    beta = None if a.beta is None else a.beta.copy()
    y = lo = lows = stats = None
    if x.size and f.channels and _fused(f):  # the fused kernels, epilogue and all
        mean, lo, var, invstd, y = _fused_forward(x, a, f)
    elif not a.training:
        stats = [(a.running_mean.astype(np.float64).ravel(),
                  a.running_var.astype(np.float64).ravel())]
    elif f.mask is not None:
        m2d = _mask2d(f, x.shape, w)
        if m2d is None:
            stats = [_masked_stats(x, f, rows) for rows in f.groups]
        else:
            x3 = aligned_contiguous(x3)  # the kernel's loads: C-contiguous and aligned
            # y in the same kernel (one read of x while in cache) when its epilogue is
            # the kernel's: none or a ReLU without residual; else affine_ex's, below
            plain = f.residual is None and f.activation in (None, "relu")
            direct = len(f.groups) == 1 and f.renorm is None and plain
            if direct:
                y = _kernels.empty_output(x.shape, x.dtype)
                fused = f.activation == "relu"
                flat = [None if v is None else v.ravel() for v in (gamma, beta)]
                stats = [_masked_pass(x3, m2d, a.eps, *flat, fused, w.view(y))]
            else:
                stats = [_masked_pass(x3[w.rows(g)], m2d[w.rows(g)], a.eps) for g in f.groups]
            lows = np.array([s[1] for s in stats])
            stats = [(s[0], s[2]) for s in stats]
    else:
        stats = [w.stats(x3[w.rows(rows)]) for rows in f.groups]
    if stats is not None:  # (not the fused kernels': they give their own)
        mean, var = np.array([s[0] for s in stats]), np.array([s[1] for s in stats])
        invstd = 1.0 / np.sqrt(var + a.eps)
    r = d = None
    if f.renorm is not None:
        r, d = renorm_constants(mean, var, a.running_mean.ravel(), a.running_var.ravel(), a.eps,
                                *f.renorm)
    cache = FeatureCache(x, gamma, beta, mean, invstd, f=f, eps=a.eps, training=a.training,
                         r=r, d=d, x_overwritten=overwrites_x(a, x))
    if lows is not None:
        cache._mean_lo = lows  # (groups, C): the masked backward's mean is hi + lo
    else:
        cache._mean_lo = lo  # the fused kernels' double-double mean (None: zeros)
    if y is None:
        y = _normalized(cache, w, _epilogue(cache))
    y = y if a.out is None else store(y, a.out, x.dtype)
    copies = []
    if a.training and a.running_mean is not None and f.channels:
        factors = [_core.running_var_factor(n, a.unbiased_running_var) for n in f.counts]
        shape = a.running_mean.shape
        copies = reference._running_copies(
            a.running_mean, a.running_var, mean.mean(0).reshape(shape),
            (var * np.array(factors)[:, None]).mean(0).reshape(shape), 2, a.momentum,
            unbiased=False)
    if copies or then is not None:
        commit(copies, None if then is None else (lambda: then(cache)))
    return y, cache


def _fused_backward(dy, cache, need_dx):
    """The fused backward kernel: dx (None without need_dx), dgamma, dbeta as float64
    sums, dresidual (None without a residual)."""
    x, f = cache.x, cache._features
    act, slope, z = _epilogue(cache)
    ax = f.axes[0]
    # with a residual, contiguous inputs (its gradient, written contiguous, is then
    # read as the dx pass's dy: fbn_shape.row_stride); z is (_epilogue)
    x3, dy3, z3 = canonical_inputs(ax, x, dy, z)
    dx = _kernels.empty_output(x.shape, x.dtype) if need_dx else None
    dz = None if z is None else _kernels.empty_output(x.shape, x.dtype)
    C = f.channels
    sum_dy, sum_dy_xhat = np.zeros(C), np.zeros(C)
    if x.size and C:
        gamma = None if cache.gamma is None else _core._f64(cache.gamma.ravel())
        beta = None if cache.beta is None else _core._f64(cache.beta.ravel())
        lo = cache._mean_lo
        lo = np.zeros(C) if lo is None else _core._f64(np.ravel(lo))
        _kernels.backward_ex(_k(dy3), _k(x3), None if dx is None else _k(dx.reshape(x3.shape)),
                             _core._f64(cache.flat("mean")[0]), lo,
                             _core._f64(cache.flat("invstd")[0]), gamma, beta, act, slope,
                             _k(z3), None if dz is None else _k(dz.reshape(x3.shape)),
                             bool(cache.training), sum_dy, sum_dy_xhat, get_num_threads(),
                             dt=_dt(x))
    return dx, sum_dy_xhat, sum_dy, dz


def _wide_slope(cache):
    """Whether the composition runs on float32 copies of half data: a leaky ReLU's
    dy * slope is not a half value, and rounded to one it moved dgamma / dbeta by up
    to 6e-3 and dx by up to 9 ulps (docs/numerics.md); float32 arithmetic rounded once
    at the end is the half kernels' own. [interim: copies of x's size]"""
    return cache.activation == "leaky_relu" and _core._dt(cache.x) >= 0


def _masked_dy(dy, cache, w, x=None):
    """dy through the activation's mask (d loss / d residual), from fbn_backward_ex's
    reduction per group (the sums it also gives are not those of several channel axes,
    a mask or renorm: the composition below takes its own). Without a residual the
    reduction reads a zero one [interim: one more read]. x: cache.x, or its float32
    copy (then dy, the residual and the result are float32: see _wide_slope)."""
    x = cache.x if x is None else x
    act, slope, z = _epilogue(cache)
    if z is not None and z.dtype != x.dtype:
        z = z.astype(x.dtype)
    if dy.dtype != x.dtype:
        dy = dy.astype(x.dtype)
    if z is None:
        z = np.zeros(x.shape, x.dtype)
    dz = np.empty(x.shape, x.dtype)
    x3, dy3 = w.view(aligned_contiguous(x)), w.view(aligned_contiguous(dy))
    z3, dz3 = w.view(z), w.view(dz)
    mean, invstd = cache.flat("mean"), cache.flat("invstd")
    W = x3.shape[1]
    for i, rows in enumerate(cache.groups):
        o = w.rows(rows)
        if x3[o].size == 0:
            continue
        gamma, beta = (None if v is None else _core._f64(np.ascontiguousarray(w.expand(v)))
                       for v in _coefficients(cache, i))
        _kernels.backward_ex(_k(dy3[o]), _k(x3[o]), None, _core._f64(w.expand(mean[i])),
                             np.zeros(W), _core._f64(w.expand(invstd[i])), gamma, beta, act,
                             slope, _k(z3[o]), _k(dz3[o]), bool(cache.training), np.empty(W),
                             np.empty(W), get_num_threads(), dt=_dt(x))
    return dz


def feature_backward(dy, cache, need_dx, dx_out, dg_out, db_out, dr_out=None):
    """fastbn._core's backward for a FeatureCache (see the module)."""
    x, f, given = cache.x, cache._features, dy
    if _wide_slope(cache) and not _fused(f):
        x = x.astype(np.float32)
    if _fused(f) and (cache.activation is not None or cache.residual is not None):
        dx, dgamma, dbeta, dz = _fused_backward(dy, cache, need_dx)
        return _grads(cache, dx, dgamma, dbeta, dz, given, dx_out, dg_out, db_out, dr_out)
    w = _Wide(x.shape, f)
    if need_dx and cache.training and cache.mask is not None and not w.interior:
        return _masked_backward(dy, cache, w, dx_out, dg_out, db_out, dr_out)
    if cache.activation is not None or cache.residual is not None:
        dy = _masked_dy(dy, cache, w, x)
    x3, dy3 = w.view(x), w.view(np.ascontiguousarray(dy))
    dx = np.empty(x.shape, x.dtype) if need_dx else None
    mean, invstd, r, d = (cache.flat(k) for k in ("mean", "invstd", "r", "d"))
    dgamma, dbeta = np.zeros(f.channels), np.zeros(f.channels)
    keep = None if cache.mask is None or not cache.training else \
        w.view(np.ascontiguousarray(np.broadcast_to(cache.mask, x.shape)))  # [interim]
    for i, (rows, n) in enumerate(zip(cache.groups, cache.group_counts)):
        o = w.rows(rows)
        m, s = w.expand(mean[i]), w.expand(invstd[i])
        sum_dy, sum_dy_xhat = (w.collapse(v) for v in _core.backward_reduce(dy3[o], x3[o], m, s,
                                                                            axis=1))
        ri, di = (1.0, 0.0) if r is None else (r[i], d[i])
        dgamma += ri * sum_dy_xhat + di * sum_dy
        dbeta += sum_dy
        if not need_dx:
            continue
        gamma = (1.0 if cache.gamma is None else cache.gamma.astype(np.float64).ravel()) * ri
        gamma = w.expand(np.broadcast_to(gamma, (f.channels,)))
        dx3 = w.view(dx)[o]
        if cache.training:
            _core.backward_elemt(dy3[o], x3[o], m, s, gamma, w.expand(sum_dy),
                                 w.expand(sum_dy_xhat), n, axis=1, out=dx3)
        if not cache.training or keep is not None:  # constant statistics: gamma * invstd * dy
            plain = _core.normalize(dy3[o], np.zeros_like(m), s, gamma, axis=1)
            np.copyto(dx3, plain, where=True if keep is None else ~keep[o])
    return _grads(cache, dx, dgamma, dbeta, dy, given, dx_out, dg_out, db_out, dr_out)


def _grads(cache, dx, dgamma, dbeta, dy, given, dx_out, dg_out, db_out, dr_out):
    x = cache.x
    grads = [None if dx is None else (dx if dx_out is None and dx.dtype == x.dtype
                                      else store(dx, dx_out, x.dtype)),
             None if cache.gamma is None else
             store(dgamma.reshape(cache.gamma.shape), dg_out, cache.gamma.dtype),
             None if cache.beta is None else
             store(dbeta.reshape(cache.beta.shape), db_out, cache.beta.dtype)]
    if cache.residual is not None:
        # d y / d residual: dy through the activation's mask (a new array, not dy itself)
        grads.append(store(dy, dr_out, x.dtype)
                     if dr_out is not None or dy is given or dy.dtype != x.dtype else dy)
    mark_written(cache, [dx_out, dg_out, db_out, dr_out])
    return tuple(grads)


def _masked_backward(dy, cache, w, dx_out, dg_out, db_out, dr_out):
    """Training backward with a mask (no interior axis): the masked kernel per group;
    a ReLU without residual inside it, other activations' masks applied first (dy
    through them: fbn_backward_ex's reduction, _masked_dy)."""
    x, f, given = cache.x, cache._features, dy
    if _wide_slope(cache):
        x = x.astype(np.float32)
    relu = cache.activation == "relu" and cache.residual is None
    if cache.activation is not None and not relu:
        dy = _masked_dy(dy, cache, w, x)
    x3, dy3 = aligned_contiguous(w.view(x)), aligned_contiguous(w.view(dy))
    dx = np.empty(x.shape, x.dtype)
    dx3, m2d = w.view(dx), _mask2d(f, x.shape, w)
    mean, invstd, r, d = (cache.flat(k) for k in ("mean", "invstd", "r", "d"))
    lows = cache._mean_lo
    C = f.channels
    dgamma, dbeta = np.zeros(C), np.zeros(C)
    for i, (rows, n) in enumerate(zip(cache.groups, cache.group_counts)):
        o = w.rows(rows)
        gamma, beta = _coefficients(cache, i)  # gamma * r, gamma * d + beta
        sum_dy, sum_dy_xhat = np.empty(C), np.empty(C)
        _kernels.backward_masked(
            _core._k(dy3[o]), _core._k(x3[o]), _core._k(dx3[o]), m2d[o], n, mean[i],
            None if lows is None else lows[i], invstd[i], gamma, beta if relu else None, relu,
            sum_dy, sum_dy_xhat, get_num_threads(), dt=_core._dt(x))
        ri, di = (1.0, 0.0) if r is None else (r[i], d[i])
        dgamma += ri * sum_dy_xhat + di * sum_dy
        dbeta += sum_dy
    return _grads(cache, dx, dgamma, dbeta, dy, given, dx_out, dg_out, db_out, dr_out)
