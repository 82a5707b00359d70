"""fastbn.distributed's forward keywords beyond the plain call (issue 20): ``mask=``,
``renorm=``, several channel axes, ``residual=``, the leaky ReLU, and backward's
``need_dx=False``, synchronised.

Built on the single-process path, with the statistics made global in between:

  forward   this rank's (count, mean_hi, mean_lo, m2) over the positions its mask keeps
            (fastbn's batch_stats kernel; [interim] on a gathered (m, C) copy with a mask
            or several channel axes), merged across ranks as in the plain call; r and d
            from the merged statistics and the running ones; then y from the
            single-process eval-mode forward with the global statistics as its "running"
            ones and gamma * r, gamma * d + beta (minus the mean_lo term) as its affine
            map: the same fused residual and activation epilogue as one process.
  backward  the eval-mode backward of that forward gives, in one pass, dy through the
            activation's mask (dresidual), sum(dy') and sum(dy' * xhat) over every local
            position, and dx's first term gamma * r * invstd * dy'; the two sums are
            added across ranks; dx then takes the statistics' term
            - gamma * r * invstd * (sum_dy + xhat * sum_dy_xhat) / n at the positions
            that entered the statistics (all, or the mask's) [interim: one more pass].
"""
from functools import partial

import numpy as np
from mpi4py import MPI

from . import reference
from ._checks import check_backward, check_cache, check_forward, commit
from ._checks import bool_arg as _check_bool
from ._checks import store as _store
from ._features import Features, _renorm, check_features, geometry, renorm_constants
from ._sync_comm import _exchange, _locked
from ._sync_protocol import _BACKWARD, _FORWARD, _SLOT, _add, _flags, _header, _merge_moments
from ._sync_ops import SyncCache
from .layers import _fastbn

__all__ = ["SyncFeatureCache", "uses_features"]

_F64 = np.float64


def uses_features(axis, activation, mask, renorm, residual, negative_slope):
    """Whether a training call needs this module (else the plain synchronised path)."""
    return (mask is not None or renorm is not None or residual is not None
            or isinstance(axis, tuple) or activation == "leaky_relu"
            or not (type(negative_slope) is float and negative_slope == 0.01))


class SyncFeatureCache(SyncCache):
    """The SyncCache of a training-mode ``sync_forward`` with issue 20's keywords.

    Besides SyncCache's attributes (``mean``, ``invstd``, ``var`` are the global
    statistics, of the channel axes' shape; ``count`` is this rank's values per channel
    that entered them): ``r``, ``d`` (batch renormalisation's constants, None without),
    ``mask``, ``residual`` (references to the forward's), ``negative_slope``.
    """
    __slots__ = ("inner", "r", "d", "mask", "residual", "negative_slope", "_features")

    def check(self):
        """What backward reads: the eval-mode cache of the local normalisation."""
        check_cache(self.inner)
        return self


def _gathered(x, f):
    """x as (positions, C), channel axes last in their order, the positions the mask
    drops left out ([interim]: a copy unless x is (m, C) already)."""
    k = len(f.axes)
    rows = np.moveaxis(x, f.axes, range(x.ndim - k, x.ndim)).reshape(-1, f.channels)
    if f.mask is None:
        return rows
    one = tuple(1 if d in f.axes else n for d, n in enumerate(x.shape))
    keep = np.moveaxis(np.broadcast_to(f.mask, one), f.axes, range(x.ndim - k, x.ndim))
    return rows[keep.reshape(-1)]


def _local_stats(x, f, impl):
    """This rank's (count, mean_hi, mean_lo, m2) over the positions that enter the
    statistics (mean_lo zeros with the reference backend)."""
    C = f.channels
    if not C:
        return 0, np.zeros(0), np.zeros(0), np.zeros(0)
    if f.mask is None and len(f.axes) == 1:
        count, hi, lo, m2 = impl._batch_stats_lo(x, f.axes[0])
    else:
        count, hi, lo, m2 = impl._batch_stats_lo(_gathered(x, f), 1)
    return count, hi, np.zeros(C) if lo is None else lo, m2


def _check(x, gamma, beta, axis, eps, running_mean, running_var, momentum, out, activation,
           unbiased, mask, renorm, residual, negative_slope):
    """fastbn.forward's checks for one rank's part (the counts are checked merged)."""
    a = check_forward(x, gamma, beta, axis, eps, True, running_mean, running_var, momentum,
                      out, activation, unbiased, local=True)
    a.training = False  # the geometry, mask and residual only: no local count check
    f = check_features(x, a, mask, None, None, residual, negative_slope)
    a.training = True
    if f is None:  # renorm alone
        f = geometry(Features(), x.shape, a.axis)
        f.mask = f.residual = None
        f.activation, f.negative_slope = a.activation, float(negative_slope)
    f.renorm = _renorm(renorm, a)
    return a, f


def _facts(a, f, update, training_mode):
    """The header slots every rank must agree on, beyond the operation and call."""
    return dict(channels=f.channels, axis=f.axes, eps=a.eps,
                flags=_flags(update, a.gamma, a.beta, training_mode,
                             update and not a.unbiased_running_var, f.mask is not None,
                             f.residual is not None),
                activation=a.activation, renorm=f.renorm,
                negative_slope=f.negative_slope if a.activation == "leaky_relu" else 0.0)


def forward_locked(x, gamma, beta, comm, axis, eps, running_mean, running_var, momentum, out,
                   activation, error, training_mode, unbiased, then, features, state):
    """_sync_ops._forward_locked for a call with issue 20's keywords (`features`: mask,
    renorm, residual, negative_slope)."""
    fb = _fastbn()
    a = f = None
    if error is None:
        try:
            a, f = _check(x, gamma, beta, axis, eps, running_mean, running_var, momentum, out,
                          activation, unbiased, *features)
        except (TypeError, ValueError) as exc:
            error = exc
    call = state.calls
    if error is None:
        update = a.running_mean is not None
        count, hi, lo, m2 = _local_stats(x, f, fb._impl)
        header = _header(_FORWARD, call, forward_call=call, ndim=x.ndim, count=count,
                         momentum=a.momentum if update else 0.0,
                         **_facts(a, f, update, training_mode))
        payload = np.concatenate([hi, lo, m2])
    else:
        header, payload = _header(_FORWARD, call, failed=True), None
    merged, payload = _exchange(comm, state, header, payload, error, "sync_forward",
                                _merge_moments)
    C = f.channels
    total = int(merged[_SLOT["count"]])
    if total <= 1 and C:
        raise ValueError(f"expected more than 1 value per channel when training, got {total} "
                         f"over the {comm.Get_size()} ranks (local input of shape {x.shape}"
                         + (", after the mask)" if f.mask is not None else ")"))
    mean, lo, m2 = payload[:C].copy(), payload[C:2 * C].copy(), payload[2 * C:].copy()
    var = m2 / max(total, 1)
    invstd = 1.0 / np.sqrt(var + a.eps)
    g = np.ones(C) if a.gamma is None else a.gamma.astype(_F64).ravel()
    b = np.zeros(C) if a.beta is None else a.beta.astype(_F64).ravel()
    r = d = None
    if f.renorm is not None:
        r, d = renorm_constants(mean + lo, var, a.running_mean.ravel(), a.running_var.ravel(),
                                a.eps, *f.renorm)
    g_eff = g if r is None else g * r
    b_eff = (b if d is None else g * d + b) - lo * (g_eff * invstd)  # xhat from mean_hi
    # the single-process forward normalises with the global statistics, as its running ones
    y, inner = fb.forward(x, g_eff, b_eff, axis=a.axis, eps=a.eps, training=False,
                          running_mean=mean, running_var=var, out=a.out,
                          activation=a.activation, residual=f.residual,
                          negative_slope=f.negative_slope)
    shape = f.chshape
    cache = SyncFeatureCache(x, a.gamma, a.beta, mean.reshape(shape), invstd.reshape(shape),
                             var.reshape(shape), axis=f.axes[0], eps=a.eps, training=True,
                             activation=a.activation, mean_lo=lo.reshape(shape),
                             x_overwritten=inner.x_overwritten, global_count=total, comm=comm,
                             call=call)
    cache.axis, cache.count, cache.inner, cache._features = a.axis, count, inner, f
    cache.r, cache.d = (None if v is None else v.reshape(shape) for v in (r, d))
    cache.mask, cache.residual, cache.negative_slope = f.mask, f.residual, f.negative_slope
    copies = []
    if a.running_mean is not None and C:
        copies = reference._running_copies(
            a.running_mean, a.running_var, (mean + lo).reshape(a.running_mean.shape),
            var.reshape(a.running_mean.shape), total, a.momentum, a.unbiased_running_var)
    if copies or then is not None:  # all or nothing, even under Ctrl-C
        commit(copies, None if then is None else partial(then, cache))
    return y, cache


def backward_locked(dy, cache, comm, out, need_dx, state):
    """_sync_ops._backward_locked for a SyncFeatureCache: (dx, dgamma, dbeta), plus
    dresidual after a forward with a residual."""
    fb = _fastbn()
    error = None
    try:
        if MPI.Comm.Compare(comm, cache.comm) not in (MPI.IDENT, MPI.CONGRUENT):
            raise ValueError("comm is not the communicator the forward was synchronised over")
        need_dx = _check_bool(need_dx, "need_dx")
        outs = check_backward(dy, cache, out, need_dx)  # checks the cache too
    except (TypeError, ValueError) as exc:
        error = exc
    call = state.calls
    if error is None:
        f, inner = cache._features, cache.inner
        C = f.channels
        mean, lo, invstd = (np.asarray(v, _F64).ravel() for v in
                            (cache.mean, cache._mean_lo, cache.invstd))
        # one pass: dx's first term, sum(dy'), sum(dy' * xhat_hi), dresidual = dy'
        dx, sum_dy_xhat, sum_dy, *dres = fb.backward(dy, inner, need_dx=need_dx)
        sum_dy_xhat = sum_dy_xhat.ravel() - (lo * invstd) * sum_dy.ravel()
        sum_dy = sum_dy.ravel()
        a = _Args(cache)
        header = _header(_BACKWARD, call, forward_call=cache.call, ndim=cache.x.ndim,
                         count=cache.count, **_facts(a, f, False, True))
        payload = np.concatenate([sum_dy, sum_dy_xhat])
    else:
        header, payload = _header(_BACKWARD, call, failed=True), None
    _, totals = _exchange(comm, state, header, payload, error, "sync_backward", _add)
    sum_dy, sum_dy_xhat = totals[:C], totals[C:]
    r, d = (None if v is None else np.ravel(v) for v in (cache.r, cache.d))
    if need_dx:
        dx = _statistics_term(dx, cache, mean, lo, invstd, sum_dy, sum_dy_xhat, fb)
    dx_out, dg_out, db_out, *dr_out = outs
    grads = [None if dx is None else (dx if dx_out is None else _store(dx, dx_out, dx.dtype))]
    for p, v, o in ((cache.gamma, sum_dy_xhat if r is None else r * sum_dy_xhat + d * sum_dy,
                     dg_out), (cache.beta, sum_dy, db_out)):
        grads.append(None if p is None else _store(v.reshape(p.shape), o, p.dtype))
    if cache.residual is not None:
        grads.append(dres[0] if dr_out[0] is None else _store(dres[0], dr_out[0], dy.dtype))
    return tuple(grads)


class _Args:
    """The checked forward arguments _facts reads, as the cache recorded them."""

    def __init__(self, cache):
        self.gamma, self.beta, self.eps = cache.gamma, cache.beta, cache.eps
        self.activation, self.unbiased_running_var = cache.activation, True


def _statistics_term(dx, cache, mean, lo, invstd, sum_dy, sum_dy_xhat, fb):
    """dx + c1 * xhat + c0 at the positions that entered the statistics, with
    c1 = -k * sum_dy_xhat, c0 = -k * sum_dy, k = gamma * r * invstd / n (global n)."""
    g = np.ones_like(mean) if cache.gamma is None else cache.gamma.astype(_F64).ravel()
    if cache.r is not None:
        g = g * np.ravel(cache.r)
    k = g * invstd / max(cache.global_count, 1)
    c1, c0 = -k * sum_dy_xhat, -k * sum_dy
    # c1 * ((x - mean_hi) * invstd - mean_lo * invstd) + c0, as a normalisation
    term, _ = fb.forward(cache.x, c1, c0 - c1 * lo * invstd, axis=cache.axis, eps=cache.eps,
                         training=False, running_mean=mean, running_var=np.ravel(cache.var))
    where = True if cache.mask is None else np.broadcast_to(cache.mask, dx.shape)
    np.add(dx, term, out=dx, where=where)
    return dx
