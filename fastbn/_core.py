"""The public functions on the compiled kernels: validate (fastbn._checks),
reduce every layout to the canonical (outer, C, inner) view, dispatch."""
from functools import partial

import numpy as np

from . import _kernels
from ._cache import Cache
from ._checks import (canonical, canonical_inputs, channel_axis,
                      check_backward, check_count, check_forward, check_per_channel,
                      check_running_update, commit, data_array, mark_written,
                      overlaps, overwrites_x, running_var_factor, separate)
from . import _checks
from ._checks import activation as check_activation
from ._features import NEGATIVE_SLOPE, NO_FEATURES, FeatureCache, check_features
from ._checks import FLOAT16, is_half
from ._checks import store as _store
from ._threads import get_num_threads
from .reference import merge_stats  # O(parts * C) NumPy: nothing to gain in C

__all__ = ["forward", "backward", "batch_stats", "merge_stats", "normalize",
           "backward_reduce", "backward_elemt", "update_running_stats"]


_F64 = np.dtype(np.float64)
_EMA_DTYPES = (np.dtype(np.float32), _F64)  # the running statistics the kernels update


def _f64(v):
    """A per-channel vector as contiguous, aligned float64 (O(C)); None stays None."""
    if v is None or (v.dtype == _F64 and v.flags.c_contiguous and v.flags.aligned):
        return v
    return np.array(v, dtype=_F64)  # a new array: contiguous and aligned


def _same_buffer(a, b):
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0]
            and a.shape == b.shape and a.strides == b.strides)


class _Output:
    """Where a kernel writes: the user's `out` itself when it is C-contiguous and
    either disjoint from the inputs or exactly one of them (elementwise in place),
    otherwise a fresh buffer copied into `out` at the end (NumPy's rule)."""

    def __init__(self, out, like, inputs):
        """For an output like `like` (the user's array), of the canonical inputs' shape."""
        self.out, self.shape = out, like.shape
        canon = inputs[0].shape
        if out is not None and out.flags.c_contiguous and out.flags.aligned:
            out3 = out.reshape(canon)
            for a in inputs:  # a loop, not list and generator: ~1 us less on small calls
                if overlaps(out3, a) and not _same_buffer(out3, a):
                    break
            else:
                self.array3, self.direct = out3, True
                return
        self.array3, self.direct = _kernels.empty_output(canon, like.dtype), False

    def result(self):
        if self.out is None:
            return self.array3.reshape(self.shape)
        if not self.direct:
            np.copyto(self.out, self.array3.reshape(self.shape))
        return self.out


def _ema(running, batch, momentum, factor, batch_lo=None):
    """The updated running statistic, computed in a new array (the state is written
    only by `commit`, all statistics in one step)."""
    if running.dtype in _EMA_DTYPES:
        new = np.array(running, copy=True)  # contiguous and aligned, of running's dtype
        _kernels.ema(new, batch, batch_lo, momentum, factor)
        return new
    # another float dtype (float16, bfloat16, longdouble): computed in float64, rounded once
    new = np.array(running, dtype=_F64)
    _kernels.ema(new, batch, batch_lo, momentum, factor)
    return new.astype(running.dtype)


def _running_copies(running_mean, running_var, mean, var, count, momentum, mean_lo=None,
                    unbiased=True):
    """The new running statistics, paired with where `commit` writes them."""
    return [(running_mean, _ema(running_mean, mean, momentum, 1.0, mean_lo)),
            (running_var, _ema(running_var, var, momentum, running_var_factor(count, unbiased)))]


def update_running_stats(running_mean, running_var, mean, var, count, *, momentum=0.1,
                         unbiased_running_var=True):
    mean, var, momentum, unbiased = check_running_update(
        running_mean, running_var, mean, var, count, momentum, unbiased_running_var)
    commit(_running_copies(running_mean, running_var, np.ascontiguousarray(mean),
                           np.ascontiguousarray(var), count, momentum, unbiased=unbiased))


def _coefficients(mean, invstd, gamma, beta):
    """The kernels' per-channel form of the affine map, y = (x - shift) * scale + bias:
    `shift` is the mean's float64 high part (not beta, which ends up in `bias`)."""
    C = mean.shape[0]
    shift, scale, bias = np.empty(C), np.empty(C), np.empty(C)
    if C:
        _kernels.coefficients(mean, invstd, gamma, beta, shift, scale, bias)
    return shift, scale, bias


def _k(a):
    """Data as the kernels take it: itself, or for half precision its bits (uint16),
    which the kernels read as float16 or bfloat16 by the code `_dt` gives."""
    return a.view(np.uint16) if is_half(a.dtype) else a


def _dt(a):
    """The kernels' dtype code of data: DT_F16 (2), DT_BF16 (3), or -1 for float32 and
    float64 (told apart by type)."""
    return 2 if a.dtype == FLOAT16 else 3 if is_half(a.dtype) else -1


def batch_stats(x, *, axis=1):
    count, mean, _, m2 = _batch_stats_lo(x, axis)
    return count, mean, m2


def _batch_stats_lo(x, axis):
    """batch_stats with the residual of the mean: (count, mean, mean_lo, m2), mean +
    mean_lo the double-double mean (fastbn.distributed merges it across ranks)."""
    data_array(x, "x")
    axis = channel_axis(axis, x.ndim)
    C = x.shape[axis]
    count = x.size // C if C else 0
    mean, lo, m2 = np.zeros(C), np.zeros(C), np.zeros(C)
    if count:
        _kernels.batch_stats(_k(canonical(x, axis)), mean, lo, m2, get_num_threads(), dt=_dt(x))
    return count, mean, lo, m2


def normalize(x, mean, invstd, gamma=None, beta=None, *, axis=1, out=None, activation=None):
    axis, vectors = check_per_channel(
        x, axis, {"mean": mean, "invstd": invstd, "gamma": gamma, "beta": beta}, out)
    relu = check_activation(activation) == "relu"
    mean, invstd, gamma, beta = (_f64(v) for v in separate(vectors, [out]))
    x3 = canonical(x, axis)
    dest = _Output(out, x, [x3])
    if x.size:
        shift, scale, bias = _coefficients(mean, invstd, gamma, beta)
        _kernels.affine(_k(x3), _k(dest.array3), shift, scale, bias, relu, get_num_threads(),
                        dt=_dt(x))
    return dest.result()


def _checked_forward(x, gamma=None, beta=None, *, axis=1, eps=1e-5, training=True,
                     running_mean=None, running_var=None, momentum=0.1, out=None,
                     activation=None, unbiased_running_var=True, mask=None, renorm=None,
                     virtual_batch_size=None, residual=None, negative_slope=NEGATIVE_SLOPE):
    """forward for any arguments: checked, canonicalised, dispatched (the compiled
    front end, fastbn._kernels.forward, hands over every call it does not handle,
    among them any momentum > 0.5 before the one-time warning was shown)."""
    if running_mean is not None and (training is True or training is np.True_) \
            and not _checks._momentum_warned:
        _checks.warn_momentum(momentum)  # once; the layer warns when built
    return _forward_then(x, gamma, beta, axis, eps, training, running_mean, running_var,
                        momentum, out, activation, None, unbiased_running_var,
                        (mask, renorm, virtual_batch_size, residual, negative_slope))


def _forward_then(x, gamma, beta, axis, eps, training, running_mean, running_var, momentum,
                 out, activation, then, unbiased_running_var=True, features=NO_FEATURES):
    """forward; `then(cache)`, if given, is the last step of the state update, committed
    with the running statistics in one step (the layer's num_batches_tracked)."""
    a = check_forward(x, gamma, beta, axis, eps, training, running_mean, running_var,
                      momentum, out, activation, unbiased_running_var)
    f = check_features(x, a, *features)
    if f is not None:  # the keywords beyond the plain forward: composed kernels (interim)
        from ._interim import feature_forward
        return feature_forward(x, a, f, then)
    relu = a.activation == "relu"
    # gamma and beta are copied first if y overlaps them, else after the kernel (fewer
    # buffers alive at its peak) but before the running statistics are written
    gamma, beta = (a.gamma, a.beta) if a.out is None else separate([a.gamma, a.beta], [a.out])
    x3 = canonical(x, a.axis)
    dest = _Output(a.out, x, [x3])
    C = a.channels
    if a.training:
        # var only for the running statistics; float32 gamma and beta read where they
        # are: no O(C) double copies (issue 13: (2, 50M) float32)
        mean, lo, invstd = np.empty(C), np.empty(C), np.empty(C)
        var = np.empty(C) if a.running_mean is not None else None
        if C and _f32_params(gamma, beta):
            _kernels.forward_train_f32_params(_k(x3), _k(dest.array3), gamma, beta, a.eps, relu,
                                              mean, lo, var, invstd, get_num_threads(),
                                              dt=_dt(x))
        elif C:  # training needs m > 1 values per channel: x.size > 0
            _kernels.forward_train_ex(_k(x3), _k(dest.array3), _f64(gamma), _f64(beta), a.eps,
                                      int(relu), 0.0, None, mean, lo, var, invstd,
                                      get_num_threads(), dt=_dt(x))
    else:
        # mean: a copy, never the live running_mean (the cache keeps what forward used)
        mean, lo, invstd = np.array(a.running_mean, dtype=_F64), None, np.empty(C)
        var, = separate([a.running_var], [a.out])
        if C:
            _kernels.forward_infer(_k(x3), _k(dest.array3), mean, _f64(var), _f64(gamma), _f64(beta),
                                   a.eps, relu, invstd, get_num_threads(), dt=_dt(x))
    y = dest.result()
    cache = Cache(x, _own(gamma, a.gamma), _own(beta, a.beta), mean, invstd, axis=a.axis,
                  eps=a.eps, training=a.training, activation=a.activation, mean_lo=lo,
                  x_overwritten=overwrites_x(a, x), copy_params=False)
    copies = []
    if a.training and a.running_mean is not None:
        copies = _running_copies(a.running_mean, a.running_var, mean, var, a.count,
                                 a.momentum, lo, a.unbiased_running_var)
    if copies or then is not None:
        commit(copies, None if then is None else partial(then, cache))
    return y, cache


def _f32_params(gamma, beta):
    """Whether gamma and beta (not both None) are plain float32 vectors the kernel reads."""
    return (gamma is not None or beta is not None) and all(
        v is None or (v.dtype == np.float32 and v.ndim == 1 and v.flags.c_contiguous
                      and v.flags.aligned) for v in (gamma, beta))


def _own(v, given):
    """The cache's copy of gamma or beta: `v` when it is already one."""
    return v.copy() if v is not None and v is given else v


def _checked_backward(dy, cache, *, out=None, need_dx=True):
    """backward for any arguments (see _checked_forward)."""
    dx_out, dg_out, db_out, *dr_out = check_backward(dy, cache, out, need_dx)
    if isinstance(cache, FeatureCache):
        from ._interim import feature_backward
        return feature_backward(dy, cache, need_dx, dx_out, dg_out, db_out, *dr_out)
    x, axis = cache.x, cache.axis
    C = x.shape[axis]
    if not need_dx:  # dgamma and dbeta only: one read of x and dy
        sum_dy, sum_dy_xhat = backward_reduce(dy, x, cache.mean, cache.invstd, axis=axis,
                                              gamma=cache.gamma, beta=cache.beta,
                                              activation=cache.activation)
        grads = (None,
                 None if cache.gamma is None else _store(sum_dy_xhat, dg_out, cache.gamma.dtype),
                 None if cache.beta is None else _store(sum_dy, db_out, cache.beta.dtype))
        mark_written(cache, [dg_out, db_out])
        return grads
    # only dx is written while they are read: dgamma and dbeta are stored last
    mean, lo, invstd, gamma, beta = vectors = \
        cache.mean, cache._mean_lo, cache.invstd, cache.gamma, cache.beta
    if dx_out is not None:
        mean, lo, invstd, gamma, beta = separate(vectors, [dx_out])
    x3, dy3 = canonical_inputs(axis, x, dy)
    dest = _Output(dx_out, x, [x3, dy3])
    sum_dy, sum_dy_xhat = np.empty(C), np.empty(C)  # the kernel writes every channel
    if C:
        lo = np.zeros(C) if lo is None else _f64(lo)  # None: zeros (eval mode)
        _kernels.backward_fused(_k(dy3), _k(x3), _k(dest.array3), _f64(mean), lo, _f64(invstd),
                                _f64(gamma), _f64(beta), cache.activation == "relu",
                                bool(cache.training), sum_dy, sum_dy_xhat, get_num_threads(),
                                dt=_dt(x))
    dx = dest.result()
    # dgamma/dbeta are written last: an out overlapping x or dy is read before (sums above)
    dgamma = None if gamma is None else _store(sum_dy_xhat, dg_out, gamma.dtype)
    dbeta = None if beta is None else _store(sum_dy, db_out, beta.dtype)
    mark_written(cache, [dx_out, dg_out, db_out])
    return dx, dgamma, dbeta


def _mask_coefficients(mean, invstd, gamma, beta, relu):
    """scale and bias of the forward's pre-activation (x - mean) * scale + bias, which
    the kernels recompute for a ReLU mask exactly as normalize does; None without."""
    if not relu:
        return None, None
    _, scale, bias = _coefficients(mean, invstd, gamma, beta)
    return scale, bias


def backward_reduce(dy, x, mean, invstd, *, axis=1, gamma=None, beta=None, activation=None):
    axis, vectors = check_per_channel(
        x, axis, {"mean": mean, "invstd": invstd, "gamma": gamma, "beta": beta}, dy=dy)
    relu = check_activation(activation) == "relu"
    mean, invstd, gamma, beta = (_f64(v) for v in vectors)
    C = x.shape[axis]
    sum_dy, sum_dy_xs = np.zeros(C), np.zeros(C)
    if x.size:
        scale, bias = _mask_coefficients(mean, invstd, gamma, beta, relu)
        x3, dy3 = canonical_inputs(axis, x, dy)
        _kernels.backward_reduce(_k(dy3), _k(x3), mean, scale, bias,
                                 relu, sum_dy, sum_dy_xs, get_num_threads(), dt=_dt(x))
    return sum_dy, invstd * sum_dy_xs


def backward_elemt(dy, x, mean, invstd, gamma, sum_dy, sum_dy_xhat, count, *, axis=1, out=None,
                   beta=None, activation=None):
    axis, vectors = check_per_channel(
        x, axis, {"mean": mean, "invstd": invstd, "gamma": gamma, "sum_dy": sum_dy,
                  "sum_dy_xhat": sum_dy_xhat, "beta": beta}, out, dy=dy)
    relu = check_activation(activation) == "relu"
    mean, invstd, gamma, sum_dy, sum_dy_xhat, beta = (_f64(v) for v in separate(vectors, [out]))
    count = check_count(count, x.shape[axis])
    x3, dy3 = canonical_inputs(axis, x, dy)
    dest = _Output(out, x, [x3, dy3])
    if x.size:
        # dx = k_dy * (dy - sum_dy / count) + k_x * xhat, as the kernel's k_dy and k_x
        k_dy = invstd * (1.0 if gamma is None else gamma)
        k_x = -k_dy * (sum_dy_xhat / count)
        scale, bias = _mask_coefficients(mean, invstd, gamma, beta, relu)
        _kernels.backward_elemt(_k(dy3), _k(x3), _k(dest.array3), mean, invstd, k_dy, k_x,
                                sum_dy / count, scale, bias, relu, get_num_threads(),
                                dt=_dt(x))
    return dest.result()


# forward and backward are compiled front ends (fastbn/_front.pxi) over the paths above
_kernels.set_checked_paths(_checked_forward, _checked_backward, Cache, get_num_threads,
                           _forward_then)
forward, backward = _kernels.forward, _kernels.backward
# and the building blocks (fastbn/_front_blocks.pxi) over theirs
checked_blocks = {"batch_stats": batch_stats, "normalize": normalize,
                  "backward_reduce": backward_reduce, "backward_elemt": backward_elemt}
_kernels.set_checked_blocks(**checked_blocks)
batch_stats, normalize, backward_reduce, backward_elemt = (
    _kernels.front_batch_stats, _kernels.front_normalize, _kernels.front_backward_reduce,
    _kernels.front_backward_elemt)
for _f in (batch_stats, normalize, backward_reduce, backward_elemt):
    _f.__name__ = _f.__qualname__ = _f.__name__[len("front_"):]  # help() shows the public name
# the layer's forward (fastbn/_layer_passes.py): _forward_then with the compiled front end
_front_forward_then = _kernels.forward_then

from ._docs import document as _document; _document(globals())  # noqa: E702 docstrings: _docs.py
