"""INTERIM compiled path of the forward keywords beyond PyTorch's (issue 20): several
channel axes, mask=, renorm=, virtual_batch_size=, residual=, leaky ReLU, and
backward(need_dx=False) on such a cache.

Each call is a composition of the existing kernels, through fastbn._core's building
blocks, on the (outer, W, inner) view of x in which the span of the channel axes is
one axis of W values (a view of a C-contiguous x: no copy):

  statistics   batch_stats per group of rows (virtual batches: slices of axis 0, views),
               merged over the axes inside the span that are not channel axes (Chan);
               with a mask, batch_stats of the kept positions, gathered  [interim: a copy]
  forward      normalize with per-channel coefficients (renorm: gamma * r, gamma * d + beta;
               ReLU fused when there is no residual), then residual and leaky ReLU in
               NumPy  [interim]
  backward     the activation's mask recomputed (normalize + NumPy), backward_reduce,
               backward_elemt with gamma * r; with a mask, dx where the mask is False
               from normalize  [interim]

What a fused kernel would save: the NumPy passes marked [interim] (one read of x
and y each) and, for the mask, the NumPy statistics. See the report of issue 20.
"""
import math

import numpy as np

from . import _core
from ._checks import commit, mark_written, overwrites_x, store
from ._features import FeatureCache, activate, activation_slope, renorm_constants
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


def _normalized(cache, w, relu):
    """gamma * (xhat * r + d) + beta of every group, in x's dtype, C-contiguous."""
    x = cache.x
    y = np.empty(x.shape, x.dtype)
    x3, y3 = w.view(x), w.view(y)
    mean, invstd = cache.flat("mean"), cache.flat("invstd")
    for i, rows in enumerate(cache.groups):
        o = w.rows(rows)
        gamma, beta = _coefficients(cache, i)
        _core.normalize(x3[o], w.expand(mean[i]), w.expand(invstd[i]), w.expand(gamma),
                        w.expand(beta), axis=1, out=y3[o], activation="relu" if relu else None)
    return y


def feature_forward(x, a, f, then):
    """fastbn._core's forward for a call with features `f` (see the module)."""
    w = _Wide(x.shape, f)
    x3 = w.view(x)
    gamma = None if a.gamma is None else a.gamma.copy()
    beta = None if a.beta is None else a.beta.copy()
    if not a.training:
        stats = [(a.running_mean.astype(np.float64).ravel(),
                  a.running_var.astype(np.float64).ravel())]
    elif f.mask is not None:
        stats = [_masked_stats(x, f, rows) for rows in f.groups]
    else:
        stats = [w.stats(x3[w.rows(rows)]) for rows in f.groups]
    mean, var = np.array([s[0] for s in stats]), np.array([s[1] for s in stats])
    invstd = 1.0 / np.sqrt(var + a.eps)
    r = d = None
    if f.renorm is not None:
        r, d = renorm_constants(mean, var, a.running_mean.ravel(), a.running_var.ravel(), a.eps,
                                *f.renorm)
    cache = FeatureCache(x, gamma, beta, mean, invstd, f=f, eps=a.eps, training=a.training,
                         r=r, d=d, x_overwritten=overwrites_x(a, x))
    fused_relu = f.activation == "relu" and f.residual is None
    y = _normalized(cache, w, fused_relu)
    if f.residual is not None or f.activation == "leaky_relu":  # [interim] NumPy
        pre = y if f.residual is None else np.add(y, f.residual, out=y)
        y = activate(pre, f.activation, f.negative_slope)
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


def feature_backward(dy, cache, need_dx, dx_out, dg_out, db_out, dr_out=None):
    """fastbn._core's backward for a FeatureCache (see the module)."""
    x, f, given = cache.x, cache._features, dy
    w = _Wide(x.shape, f)
    if cache.activation is not None:  # [interim] the mask recomputed in NumPy
        pre = _normalized(cache, w, False)
        if cache.residual is not None:
            pre += cache.residual
        slope = activation_slope(pre, cache.activation, cache.negative_slope)
        dy = (dy * slope).astype(x.dtype)
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
    grads = [None if dx is None else (dx if dx_out is None else store(dx, dx_out, x.dtype)),
             None if cache.gamma is None else
             store(dgamma.reshape(cache.gamma.shape), dg_out, cache.gamma.dtype),
             None if cache.beta is None else
             store(dbeta.reshape(cache.beta.shape), db_out, cache.beta.dtype)]
    if cache.residual is not None:
        # d y / d residual: dy through the activation's mask (a new array, not dy itself)
        grads.append(store(dy, dr_out, x.dtype) if dr_out is not None or dy is given
                     else dy)
    mark_written(cache, [dx_out, dg_out, db_out, dr_out])
    return tuple(grads)
