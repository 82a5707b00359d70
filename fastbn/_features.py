"""The forward keywords beyond PyTorch's batch norm (issue 20), shared by both backends:
several channel axes, ``mask=``, ``renorm=``, ``virtual_batch_size=``, ``residual=`` and
the leaky ReLU. Their checks, the geometry of a call (`Features`), the cache such a
call returns (`FeatureCache`) and the O(C) maths both backends share.

A call that uses none of them never reaches this module beyond `check_features`,
which returns None at once: the plain paths are unchanged.
"""
import math

import numpy as np

from ._cache import Cache
from ._checks import (_describe, bool_arg, data_array, invstd_values, is_integer, like_x,
                      real_number)

__all__ = ["Features", "FeatureCache", "check_features", "check_feature_cache",
           "renorm_constants", "activate", "activation_slope", "NEGATIVE_SLOPE", "NO_FEATURES"]

NEGATIVE_SLOPE = 0.01  # the default of negative_slope, as in PyTorch
# check_features' arguments after (x, a) when none is used: mask, renorm,
# virtual_batch_size, residual, negative_slope (a tuple: cheaper to pass than keywords)
NO_FEATURES = (None, None, None, None, NEGATIVE_SLOPE)


class Features:
    """A checked call's keywords beyond the plain forward, and its geometry.

    axes: the channel axes (sorted); others: the axes statistics are taken over;
    vshape: the shape that broadcasts a (C,) vector along the channel axes;
    groups: row slices of axis 0 (one slice: the whole batch); counts: values per
    channel entering each group's statistics."""
    __slots__ = ("axes", "others", "vshape", "chshape", "channels", "mask", "renorm",
                 "virtual_batch_size", "groups", "counts", "residual", "activation",
                 "negative_slope", "mask2d")

    def stat_shape(self):
        """The shape of the cache's statistics: the channel axes' shape, after a
        leading group axis with virtual batches."""
        lead = (len(self.groups),) if self.virtual_batch_size is not None else ()
        return lead + self.chshape


def geometry(f, shape, axis):
    """Fill the channel geometry of `f` for data of `shape` and checked `axis` (int or tuple)."""
    f.axes = (axis,) if is_integer(axis) else tuple(axis)
    f.others = tuple(d for d in range(len(shape)) if d not in f.axes)
    f.vshape = tuple(shape[d] if d in f.axes else 1 for d in range(len(shape)))
    f.chshape = tuple(shape[d] for d in f.axes)
    f.channels = math.prod(f.chshape)
    return f


def _positive_int(value, name):
    if not is_integer(value):
        raise TypeError(f"{name} must be a positive integer, got {_describe(value)}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return int(value)


def _renorm(value, a):
    if value is None:
        return None
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"renorm must be None or a pair (rmax, dmax), got {_describe(value)}")
    rmax = real_number(value[0], "renorm[0] (rmax)", low=1.0)
    dmax = real_number(value[1], "renorm[1] (dmax)", low=0.0)
    if a.training and a.running_mean is None:
        raise ValueError("renorm needs running_mean and running_var (r and d compare the "
                         "batch statistics with them)")
    return rmax, dmax


def _mask(mask, x, f):
    if mask is None:
        return None
    if not isinstance(mask, np.ndarray) or mask.dtype != np.bool_:
        raise TypeError(f"mask must be a numpy.ndarray of dtype bool, got {_describe(mask)}")
    if mask.ndim > x.ndim:
        raise ValueError(f"mask must broadcast to x's shape {x.shape}, got shape {mask.shape}")
    full = (1,) * (x.ndim - mask.ndim) + mask.shape
    if any(m not in (1, n) for m, n in zip(full, x.shape)):
        raise ValueError(f"mask must broadcast to x's shape {x.shape}, got shape {mask.shape}")
    if any(full[d] != 1 for d in f.axes):
        raise ValueError(f"mask must have size 1 along the channel axes {f.axes}, got shape "
                         f"{mask.shape}: every channel of a position is in or out together")
    return mask.reshape(full)


def _group_slices(n, k):
    """Rows [0:k], [k:2k], ...; the last group holds the N mod k rows left over."""
    if k is None or k >= n:
        return [slice(0, n)]
    return [slice(start, min(start + k, n)) for start in range(0, n, k)]


def check_features(x, a, mask=None, renorm=None, virtual_batch_size=None, residual=None,
                   negative_slope=NEGATIVE_SLOPE):
    """The keywords beyond the plain forward, for the call checked as `a` (check_forward):
    None when none is used (the plain path), else a `Features`."""
    if (mask is None and renorm is None and virtual_batch_size is None and residual is None
            and type(a.axis) is int and a.activation != "leaky_relu"
            and type(negative_slope) is float and negative_slope == NEGATIVE_SLOPE):
        return None
    f = geometry(Features(), x.shape, a.axis)
    f.activation = a.activation
    f.negative_slope = real_number(negative_slope, "negative_slope")
    if f.negative_slope != NEGATIVE_SLOPE and f.activation != "leaky_relu":
        raise ValueError(f"negative_slope={negative_slope} is used only with "
                         f"activation='leaky_relu', got activation={f.activation!r}")
    f.renorm = _renorm(renorm, a)
    f.virtual_batch_size = None if virtual_batch_size is None else \
        _positive_int(virtual_batch_size, "virtual_batch_size")
    if f.virtual_batch_size is not None and 0 in f.axes:
        raise ValueError("virtual_batch_size splits axis 0 into groups of rows: axis 0 must "
                         f"not be a channel axis, got axis={a.axis}")
    f.mask = _mask(mask, x, f)
    f.mask2d = None  # the kernels' bytes of the mask, kept by the forward for backward
    f.residual = None
    if residual is not None:
        like_x(residual, x, "residual")
        if a.out is not None and _overlap(a.out, residual):
            raise ValueError("out must not share memory with residual: backward reads it")
        f.residual = residual
    if not a.training:  # evaluation mode normalises with the running statistics only
        f.renorm = f.virtual_batch_size = None
    f.groups = _group_slices(x.shape[0], f.virtual_batch_size)
    f.counts = [_count(f, x.shape, g) for g in f.groups]
    if a.training and f.channels:
        low = min(f.counts)
        if low <= 1:
            why = ("the mask keeps" if f.mask is not None else "a group of rows has") + \
                f" {low} value{'s' if low != 1 else ''} per channel"
            raise ValueError(f"expected more than 1 value per channel in each batch statistic "
                             f"when training, but {why} (virtual_batch_size="
                             f"{f.virtual_batch_size}, mask shape "
                             f"{None if f.mask is None else f.mask.shape})")
    return f


def _overlap(a, b):
    from ._checks import overlaps
    return overlaps(a, b)


def _count(f, shape, rows):
    """Values per channel entering the statistics of the rows `rows` (mask applied)."""
    if f.mask is None:
        return (rows.stop - rows.start) * math.prod(shape[1:]) // max(f.channels, 1)
    # the mask's own kept entries times the axes it is broadcast along (no
    # broadcast copy: this runs on every masked call)
    m = f.mask if f.mask.shape[0] == 1 else f.mask[rows]
    repeats = math.prod(n for d, n in enumerate(shape)
                        if d not in f.axes and f.mask.shape[d] == 1 and d > 0)
    if f.mask.shape[0] == 1 and 0 not in f.axes:
        repeats *= rows.stop - rows.start
    return int(np.count_nonzero(m)) * repeats


def renorm_constants(mean, var, running_mean, running_var, eps, rmax, dmax):
    """Batch renormalisation's r and d (Ioffe 2017), constants for backward:
    r = clip(sigma_B / sigma_run, 1/rmax, rmax), d = clip((mu_B - mu_run) / sigma_run,
    -dmax, dmax), with sigma = sqrt(var + eps) for both."""
    sigma_run = np.sqrt(np.asarray(running_var, dtype=np.float64) + eps)
    r = np.clip(np.sqrt(var + eps) / sigma_run, 1.0 / rmax, rmax)
    d = np.clip((mean - np.asarray(running_mean, dtype=np.float64)) / sigma_run, -dmax, dmax)
    return r, d


def activate(pre, activation, negative_slope):
    """The activation applied to the pre-activation (float64 or data dtype)."""
    if activation == "relu":
        return np.maximum(pre, 0)
    if activation == "leaky_relu":
        return np.where(pre > 0, pre, pre * negative_slope)
    return pre


def activation_slope(pre, activation, negative_slope):
    """d activation / d pre where the forward's pre-activation was `pre` (None: 1)."""
    if activation == "relu":
        return pre > 0
    if activation == "leaky_relu":
        return np.where(pre > 0, 1.0, negative_slope)
    return None


class FeatureCache(Cache):
    """The `Cache` of a forward that used keywords beyond the plain forward.

    Besides Cache's attributes (``axis`` is then a tuple with several channel axes;
    ``mean``, ``invstd``, ``var`` have the channel axes' shape, after a leading group
    axis with ``virtual_batch_size``; ``count`` is the values per channel that entered
    the statistics, summed over the groups):

    Attributes
    ----------
    group_counts : tuple of int
        Values per channel in each group's statistics (one group without
        virtual_batch_size).
    groups : list of slice
        The groups' rows along axis 0.
    r, d : ndarray of float64 or None
        Batch renormalisation's constants (``mean``'s shape); None without renorm.
    mask, residual : ndarray or None
        References to the forward's mask and residual.
    negative_slope : float
        The leaky ReLU's slope for negative inputs.
    virtual_batch_size : int or None
    """
    __slots__ = ("group_counts", "groups", "r", "d", "mask", "residual", "negative_slope",
                 "virtual_batch_size", "_features")

    def __init__(self, x, gamma, beta, mean, invstd, *, f, eps, training, r=None, d=None,
                 x_overwritten=False):
        self.x, self.gamma, self.beta = x, gamma, beta
        shape = f.stat_shape()
        self.mean, self.invstd = mean.reshape(shape), invstd.reshape(shape)
        self._var, self._mean_lo = None, None
        self.r = None if r is None else r.reshape(shape)
        self.d = None if d is None else d.reshape(shape)
        self.group_counts, self.groups = tuple(f.counts), f.groups
        self.count = sum(f.counts)
        self.axis = f.axes[0] if len(f.axes) == 1 else f.axes
        self.eps, self.training, self.activation = eps, training, f.activation
        self.mask, self.residual, self.negative_slope = f.mask, f.residual, f.negative_slope
        self.virtual_batch_size = f.virtual_batch_size
        self.x_overwritten, self.x_written = x_overwritten, False
        self._features = f

    def check(self):
        return check_feature_cache(self)

    def flat(self, name):
        """`name` (mean, invstd, r, d) as a (groups, C) float64 array."""
        v = getattr(self, name)
        return None if v is None else np.asarray(v, dtype=np.float64).reshape(
            len(self.groups), -1)

    def __repr__(self):
        return (f"FeatureCache(shape={self.x.shape}, dtype={self.x.dtype}, axis={self.axis}, "
                f"training={self.training}, activation={self.activation}, "
                f"virtual_batch_size={self.virtual_batch_size}, renorm={self.r is not None}, "
                f"mask={self.mask is not None}, residual={self.residual is not None})")


def check_feature_cache(cache):
    """The fields of a FeatureCache backward reads (it may have been edited by hand)."""
    x = cache.x
    if not isinstance(x, np.ndarray):
        raise TypeError(f"cache.x must be a numpy.ndarray, got {_describe(x)}")
    data_array(x, "cache.x")
    f = cache._features
    if not isinstance(f, Features) or x.shape[0] != f.groups[-1].stop \
            or f.vshape != tuple(x.shape[d] if d in f.axes else 1 for d in range(x.ndim)):
        raise ValueError("cache was made by a forward on another x: cache.x must not be "
                         "replaced")
    G, C = len(cache.groups), f.channels
    for name in ("mean", "invstd", "r", "d"):
        v = getattr(cache, name)
        if v is None and name in ("r", "d"):
            continue
        if not isinstance(v, np.ndarray) or v.dtype.kind != "f" or v.size != G * C:
            raise TypeError(f"cache.{name} must be a float ndarray of {G * C} values, got "
                            f"{_describe(v)}")
    for name in ("gamma", "beta"):
        v = getattr(cache, name)
        if v is not None and (not isinstance(v, np.ndarray) or v.size != C):
            raise TypeError(f"cache.{name} must be None or an ndarray of {C} values, "
                            f"got {_describe(v)}")
    invstd_values(np.asarray(cache.invstd, dtype=np.float64).ravel(), "cache.invstd")
    for name in ("training", "x_overwritten", "x_written"):
        bool_arg(getattr(cache, name), f"cache.{name}")
    return cache
