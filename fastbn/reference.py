"""fastbn in plain NumPy: the specification in code, the test oracle, and the
fallback backend. Every public function of fastbn has its twin here, with the
same arguments, checks and errors (shared through fastbn._checks)."""
import numpy as np

from ._checks import store as _store
from functools import partial

from ._cache import Cache
from ._checks import (channel_axis, check_backward, check_count, check_forward,
                      check_merge, check_per_channel, check_running_update, commit,
                      data_array, mark_written, overwrites_x, running_var_factor,
                      vector_shape)
from . import _checks
from ._checks import activation as check_activation
from ._features import (NEGATIVE_SLOPE, NO_FEATURES, FeatureCache, activate,
                        activation_slope, check_features, renorm_constants)


def _col(v, ndim, axis):
    """Per-channel vector as float64, shaped to broadcast along `axis`."""
    return np.asarray(v, dtype=np.float64).reshape(vector_shape(ndim, axis))


def _others(ndim, axis):
    return tuple(d for d in range(ndim) if d != axis)


def batch_stats(x, *, axis=1):
    """Per-channel (count, mean, m2), m2 the sum of squared deviations; float64."""
    data_array(x, "x")
    axis = channel_axis(axis, x.ndim)
    count = x.size // x.shape[axis] if x.shape[axis] else 0
    if count == 0:
        return count, np.zeros(x.shape[axis]), np.zeros(x.shape[axis])
    xd = x.astype(np.float64)
    mean = xd.mean(axis=_others(x.ndim, axis))
    m2 = ((xd - _col(mean, x.ndim, axis)) ** 2).sum(axis=_others(x.ndim, axis))
    return count, mean, m2


def _batch_stats_lo(x, axis):
    """batch_stats with the residual of the mean (count, mean, mean_lo, m2): the
    reference's mean is a plain float64 one, so mean_lo is None (zeros)."""
    count, mean, m2 = batch_stats(x, axis=axis)
    return count, mean, None, m2


def merge_stats(counts, means, m2s):
    """Chan et al.: merge partial statistics stacked along the leading axis."""
    counts, means, m2s, per_channel = check_merge(counts, means, m2s)
    n = counts.sum(axis=0)
    mean = (counts * means).sum(axis=0) / np.where(n > 0, n, 1)
    m2 = (m2s + counts * (means - mean) ** 2).sum(axis=0)
    return (n.astype(np.int64) if per_channel else int(n[0])), mean, m2


def _running_copies(running_mean, running_var, mean, var, count, momentum, unbiased=True):
    """The new running statistics, computed in float64 and paired with where `commit`
    writes them (rounded once to their dtype)."""
    factor = running_var_factor(count, unbiased)
    old_mean, old_var = np.asarray(running_mean, np.float64), np.asarray(running_var, np.float64)
    return [(running_mean, (1 - momentum) * old_mean + momentum * mean),
            (running_var, (1 - momentum) * old_var + momentum * var * factor)]


def update_running_stats(running_mean, running_var, mean, var, count, *, momentum=0.1,
                         unbiased_running_var=True):
    """Exponential averages as in PyTorch; the variance made unbiased by m / (m - 1)
    unless unbiased_running_var=False. Both are written in one step that an interrupt
    does not split."""
    mean, var, momentum, unbiased = check_running_update(
        running_mean, running_var, mean, var, count, momentum, unbiased_running_var)
    commit(_running_copies(running_mean, running_var, mean, var, count, momentum, unbiased))


def normalize(x, mean, invstd, gamma=None, beta=None, *, axis=1, out=None, activation=None):
    """y = gamma * (x - mean) * invstd + beta, then ReLU if asked."""
    axis, (mean, invstd, gamma, beta) = check_per_channel(
        x, axis, {"mean": mean, "invstd": invstd, "gamma": gamma, "beta": beta}, out)
    act = check_activation(activation)
    col = lambda v, default: default if v is None else _col(v, x.ndim, axis)  # noqa: E731
    y = (x - col(mean, 0)) * col(invstd, 1) * col(gamma, 1) + col(beta, 0)
    return _store(np.maximum(y, 0) if act == "relu" else y, out, x.dtype)


def forward(x, gamma=None, beta=None, *, axis=1, eps=1e-5, training=True,
            running_mean=None, running_var=None, momentum=0.1, out=None, activation=None,
            unbiased_running_var=True, mask=None, renorm=None, virtual_batch_size=None,
            residual=None, negative_slope=NEGATIVE_SLOPE):
    if running_mean is not None and (training is True or training is np.True_) \
            and not _checks._momentum_warned:
        _checks.warn_momentum(momentum)  # once per process; the layer warns when built
    return _forward_then(x, gamma, beta, axis, eps, training, running_mean, running_var,
                        momentum, out, activation, None, unbiased_running_var,
                        (mask, renorm, virtual_batch_size, residual, negative_slope))


def _forward_then(x, gamma, beta, axis, eps, training, running_mean, running_var, momentum,
                 out, activation, then, unbiased_running_var=True, features=NO_FEATURES):
    """forward; `then(cache)`, if given, is committed with the running statistics."""
    a = check_forward(x, gamma, beta, axis, eps, training, running_mean, running_var,
                      momentum, out, activation, unbiased_running_var)
    f = check_features(x, a, *features)
    if f is not None:
        return _feature_forward(x, a, f, then)
    # the values forward uses, copied before `out` (which may overlap them) is written
    gamma = None if a.gamma is None else a.gamma.copy()
    beta = None if a.beta is None else a.beta.copy()
    if a.training:
        count, mean, m2 = batch_stats(x, axis=a.axis)
        var = m2 / max(count, 1)
    else:
        mean = a.running_mean.astype(np.float64)
        var = a.running_var.astype(np.float64)
    invstd = 1.0 / np.sqrt(var + a.eps)
    cache = Cache(x, gamma, beta, mean, invstd, axis=a.axis, eps=a.eps, training=a.training,
                  activation=a.activation, x_overwritten=overwrites_x(a, x), copy_params=False)
    y = normalize(x, mean, invstd, gamma, beta, axis=a.axis, out=a.out, activation=a.activation)
    copies = []
    if a.training and a.running_mean is not None and a.channels:
        copies = _running_copies(a.running_mean, a.running_var, mean, var, a.count, a.momentum,
                                 a.unbiased_running_var)
    if copies or then is not None:
        commit(copies, None if then is None else partial(then, cache))
    return y, cache


def _relu_masked(dy, x, mean, invstd, gamma, beta, axis, activation):
    """dy where the forward's ReLU passed (y > 0), 0 elsewhere; dy itself without one
    (activation None or "identity", as a cache may hold)."""
    if activation != "relu":
        return dy
    y = normalize(x, mean, invstd, gamma, beta, axis=axis)
    return np.where(y > 0, dy, 0).astype(dy.dtype)


def backward_reduce(dy, x, mean, invstd, *, axis=1, gamma=None, beta=None, activation=None):
    """Per-channel sum(dy) and sum(dy * xhat), float64; with activation="relu", dy is
    first masked where the forward's y (from gamma and beta) was not positive."""
    axis, (mean, invstd, gamma, beta) = check_per_channel(
        x, axis, {"mean": mean, "invstd": invstd, "gamma": gamma, "beta": beta}, dy=dy)
    dy = _relu_masked(dy, x, mean, invstd, gamma, beta, axis, check_activation(activation))
    xhat = (x - _col(mean, x.ndim, axis)) * _col(invstd, x.ndim, axis)
    dyd = dy.astype(np.float64)
    return dyd.sum(axis=_others(x.ndim, axis)), (dyd * xhat).sum(axis=_others(x.ndim, axis))


def backward_elemt(dy, x, mean, invstd, gamma, sum_dy, sum_dy_xhat, count, *, axis=1, out=None,
                   beta=None, activation=None):
    """dx = gamma * invstd * (dy - sum_dy / count - xhat * sum_dy_xhat / count), dy masked
    as in backward_reduce."""
    axis, (mean, invstd, gamma, sum_dy, sum_dy_xhat, beta) = check_per_channel(
        x, axis, {"mean": mean, "invstd": invstd, "gamma": gamma, "sum_dy": sum_dy,
                  "sum_dy_xhat": sum_dy_xhat, "beta": beta}, out, dy=dy)
    count = check_count(count, x.shape[axis])
    dy = _relu_masked(dy, x, mean, invstd, gamma, beta, axis, check_activation(activation))
    col = lambda v: _col(v, x.ndim, axis)  # noqa: E731
    xhat = (x - col(mean)) * col(invstd)
    scale = col(invstd) * (1.0 if gamma is None else col(gamma))
    dx = scale * (dy - col(sum_dy / count) - xhat * col(sum_dy_xhat / count))
    return _store(dx, out, x.dtype)


def backward(dy, cache, *, out=None, need_dx=True):
    dx_out, dg_out, db_out, *dr_out = check_backward(dy, cache, out, need_dx)
    if isinstance(cache, FeatureCache):
        return _feature_backward(dy, cache, need_dx, dx_out, dg_out, db_out, *dr_out)
    x, axis = cache.x, cache.axis
    # the mask is recomputed, never stored
    dy = _relu_masked(dy, x, cache.mean, cache.invstd, cache.gamma, cache.beta, axis,
                      cache.activation)
    sum_dy, sum_dy_xhat = backward_reduce(dy, x, cache.mean, cache.invstd, axis=axis)
    if not need_dx:
        dx = None
    elif cache.training:
        dx = backward_elemt(dy, x, cache.mean, cache.invstd, cache.gamma, sum_dy, sum_dy_xhat,
                            cache.count, axis=axis, out=dx_out)
    else:  # the statistics are constants
        scale = cache.invstd * (1.0 if cache.gamma is None else cache.gamma)
        dx = _store(dy * _col(scale, x.ndim, axis), dx_out, x.dtype)
    dgamma = None if cache.gamma is None else _store(sum_dy_xhat, dg_out, cache.gamma.dtype)
    dbeta = None if cache.beta is None else _store(sum_dy, db_out, cache.beta.dtype)
    mark_written(cache, [dx_out, dg_out, db_out])
    return dx, dgamma, dbeta


# -- the keywords beyond the plain forward (fastbn._features): their specification ------

def _group_stats(x, a, f, rows, count):
    """(mean, var) of the rows `rows`, over the positions the mask keeps; the running
    statistics in evaluation mode."""
    if not a.training:
        return a.running_mean.astype(np.float64).ravel(), a.running_var.astype(np.float64).ravel()
    xg = x[rows].astype(np.float64)
    w = 1.0 if f.mask is None else np.broadcast_to(f.mask, x.shape)[rows]
    mean = (xg * w).sum(axis=f.others) / count
    var = ((xg - mean.reshape(f.vshape)) ** 2 * w).sum(axis=f.others) / count
    return mean.ravel(), var.ravel()


def _pre_activation(cache):
    """gamma * (xhat * r + d) + beta (+ residual), float64, each group with its statistics."""
    x, f = cache.x, cache._features
    col = lambda v: np.asarray(v, dtype=np.float64).reshape(f.vshape)  # noqa: E731
    mean, invstd, r, d = (cache.flat(k) for k in ("mean", "invstd", "r", "d"))
    pre = np.empty(x.shape)
    for i, rows in enumerate(cache.groups):
        xhat = (x[rows] - col(mean[i])) * col(invstd[i])
        if r is not None:
            xhat = xhat * col(r[i]) + col(d[i])
        pre[rows] = xhat * (1.0 if cache.gamma is None else col(cache.gamma)) + \
            (0.0 if cache.beta is None else col(cache.beta))
    return pre if cache.residual is None else pre + cache.residual


def _feature_forward(x, a, f, then):
    """forward with several channel axes, mask, renorm, virtual_batch_size, residual or
    leaky ReLU (any together)."""
    gamma = None if a.gamma is None else a.gamma.copy()
    beta = None if a.beta is None else a.beta.copy()
    stats = [_group_stats(x, a, f, rows, n) for rows, n in zip(f.groups, f.counts)]
    mean, var = np.array([s[0] for s in stats]), np.array([s[1] for s in stats])  # (groups, C)
    invstd = 1.0 / np.sqrt(var + a.eps)
    r = d = None
    if f.renorm is not None and a.training:
        r, d = renorm_constants(mean, var, a.running_mean.ravel(), a.running_var.ravel(), a.eps,
                                *f.renorm)
    cache = FeatureCache(x, gamma, beta, mean, invstd, f=f, eps=a.eps, training=a.training,
                         r=r, d=d, x_overwritten=overwrites_x(a, x))
    y = _store(activate(_pre_activation(cache), f.activation, f.negative_slope), a.out, x.dtype)
    copies = []
    if a.training and a.running_mean is not None and f.channels:
        # the groups' statistics averaged, each variance made unbiased with its own count
        factors = [running_var_factor(n, a.unbiased_running_var) for n in f.counts]
        shape = a.running_mean.shape
        copies = _running_copies(a.running_mean, a.running_var, mean.mean(0).reshape(shape),
                                 (var * np.array(factors)[:, None]).mean(0).reshape(shape),
                                 2, a.momentum, unbiased=False)
    if copies or then is not None:
        commit(copies, None if then is None else partial(then, cache))
    return y, cache


def _feature_backward(dy, cache, need_dx, dx_out, dg_out, db_out, dr_out=None):
    x, f = cache.x, cache._features
    col = lambda v: v.reshape(f.vshape)  # noqa: E731
    slope = activation_slope(_pre_activation(cache), cache.activation, cache.negative_slope) \
        if cache.activation else None
    # the activation's mask, in float64: dy * a boolean ReLU slope would keep dy's dtype,
    # and the sums below would then accumulate in float16 / bfloat16
    dy = dy.astype(np.float64) if slope is None else dy.astype(np.float64) * slope
    mean, invstd, r, d = (cache.flat(k) for k in ("mean", "invstd", "r", "d"))
    gamma = np.ones(f.channels) if cache.gamma is None else cache.gamma.astype(np.float64).ravel()
    dx = np.empty(x.shape) if need_dx else None
    dgamma, dbeta = np.zeros(f.channels), np.zeros(f.channels)
    for i, (rows, n) in enumerate(zip(cache.groups, cache.group_counts)):
        xhat = (x[rows] - col(mean[i])) * col(invstd[i])
        sum_dy = dy[rows].sum(axis=f.others).ravel()
        sum_dy_xhat = (dy[rows] * xhat).sum(axis=f.others).ravel()
        ri, di = (1.0, 0.0) if r is None else (r[i], d[i])  # constants: not differentiated
        if need_dx and cache.training:  # only the positions the mask keeps move the statistics
            w = 1.0 if cache.mask is None else np.broadcast_to(cache.mask, x.shape)[rows]
            dx[rows] = col(gamma * ri * invstd[i]) * (
                dy[rows] - w * (col(sum_dy) + xhat * col(sum_dy_xhat)) / n)
        elif need_dx:
            dx[rows] = col(gamma * ri * invstd[i]) * dy[rows]
        dgamma += ri * sum_dy_xhat + di * sum_dy
        dbeta += sum_dy
    grads = [None if dx is None else _store(dx, dx_out, x.dtype),
             None if cache.gamma is None else
             _store(dgamma.reshape(cache.gamma.shape), dg_out, cache.gamma.dtype),
             None if cache.beta is None else
             _store(dbeta.reshape(cache.beta.shape), db_out, cache.beta.dtype)]
    if cache.residual is not None:
        grads.append(_store(dy, dr_out, x.dtype))  # d y / d residual: the activation's mask
    mark_written(cache, [dx_out, dg_out, db_out, dr_out])
    return tuple(grads)


from ._docs import document as _document; _document(globals())  # noqa: E702 docstrings: _docs.py

_front_forward_then = _forward_then  # the layer's forward (as fastbn._core's)
