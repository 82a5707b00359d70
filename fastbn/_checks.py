"""Argument validation and canonicalisation, shared by both backends.

Everything a public function needs is checked here before any output or
running statistic is touched, so a failed call never leaves state half-updated.
"""
import math
import numbers
import operator
import sys
import warnings

import numpy as np

from ._cache import Cache, ForwardArgs  # Cache here too: pickles name fastbn._checks.Cache

FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))
FLOAT16 = np.dtype(np.float16)
DATA_DTYPE_NAMES = "float32, float64, float16 or bfloat16"
OPTIONAL_VECTORS = ("gamma", "beta")  # per-channel vectors that may be None


def _describe(obj):
    if isinstance(obj, np.ndarray):
        return f"array of dtype {obj.dtype}"
    return type(obj).__name__


def refuse_subclass(a, name):
    """ndarray subclasses whose arithmetic differs from ndarray's are refused."""
    if isinstance(a, (np.ma.MaskedArray, np.matrix)):
        raise TypeError(f"{name} must be a plain numpy.ndarray, got {type(a).__name__} "
                        "(fill a masked array, or use np.asarray on a matrix)")


def float_array(a, name):
    """`a` must be a float32/float64 ndarray (no silent conversion of data)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32 or float64, got {_describe(a)}")
    refuse_subclass(a, name)
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    return a


def bfloat16(load=False):
    """ml_dtypes' bfloat16 dtype, or None without ml_dtypes (the optional extra "bf16").

    fastbn does not import ml_dtypes itself unless `load`: the import takes about a
    second (NumPy 2.4, ml_dtypes 0.7), and no bfloat16 array can exist before the
    user's code has imported it.
    """
    module = sys.modules.get("ml_dtypes")
    if module is None and load:
        try:
            import ml_dtypes as module
        except ImportError:
            return None
    bf16 = getattr(module, "bfloat16", None)
    return None if bf16 is None else np.dtype(bf16)


def is_half(dtype):
    """Whether data of `dtype` are half precision (float16, bfloat16): stored in 16 bits,
    computed in float32, with float32 parameters by default."""
    if dtype.itemsize != 2:  # (dtype.name would cost microseconds per call)
        return False
    if dtype == FLOAT16:
        return True
    bf16 = bfloat16()
    return bf16 is not None and dtype == bf16


def is_data_dtype(dtype):
    """float32, float64, float16 or bfloat16."""
    return dtype in FLOAT_DTYPES or is_half(dtype)


def is_float_dtype(dtype):
    """A real floating dtype, bfloat16 included (NumPy does not count it as np.floating)."""
    return dtype.kind == "f" or is_half(dtype)


def param_dtype(data_dtype):
    """The dtype of parameters made for data of `data_dtype` (from Python numbers, or by
    a layer with dtype=None): the data's, float32 for half-precision data."""
    return np.dtype(np.float32) if is_half(data_dtype) else np.dtype(data_dtype)


def data_float_array(a, name):
    """`a` must be an ndarray of a data dtype: float32, float64, float16 or bfloat16."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of {DATA_DTYPE_NAMES}, "
                        f"got {_describe(a)}")
    refuse_subclass(a, name)
    if not is_data_dtype(a.dtype):
        raise TypeError(f"{name} must have dtype {DATA_DTYPE_NAMES}, got {a.dtype}")
    return a


def data_array(x, name, min_ndim=2):
    data_float_array(x, name)
    if x.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimensions "
                         f"(batch and channel), got shape {x.shape}")
    return x


def channel_axis(axis, ndim, name="axis"):
    if isinstance(axis, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        axis = operator.index(axis)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {_describe(axis)}") from None
    if not -ndim <= axis < ndim:
        raise ValueError(f"{name}={axis} is out of bounds for an array of {ndim} dimensions")
    return axis % ndim


def channel_axes(axis, ndim):
    """`axis` of forward: an integer, or a tuple of distinct axes (several channel
    axes, sorted; a tuple of one is that integer)."""
    if type(axis) is not tuple:
        return channel_axis(axis, ndim)
    if not axis:
        raise ValueError("axis must not be an empty tuple: give at least one channel axis")
    axes = sorted(channel_axis(a, ndim, "axis[%d]" % i) for i, a in enumerate(axis))
    if len(set(axes)) != len(axes):
        raise ValueError(f"axis must not repeat an axis, got {axis}")
    return axes[0] if len(axes) == 1 else tuple(axes)


def is_integer(value):
    """An int or NumPy integer, not a bool (`type is int` first: ABC checks cost
    more than a small kernel call)."""
    return type(value) is int or (not isinstance(value, (bool, np.bool_))
                                  and isinstance(value, numbers.Integral))


def real_number(value, name, *, low=None, high=None, low_open=False):
    if type(value) is not float and (isinstance(value, (bool, np.bool_))
                                     or not isinstance(value, numbers.Real)):
        raise TypeError(f"{name} must be a real number, got {_describe(value)}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if low is not None and (value <= low if low_open else value < low):
        raise ValueError(f"{name} must be {'>' if low_open else '>='} {low}, got {value}")
    if high is not None and value > high:
        raise ValueError(f"{name} must be <= {high}, got {value}")
    return value


class MomentumWarning(UserWarning):
    """A momentum > 0.5 was given: probably the weight of the *old* value (Keras, Flax,
    course code), where fastbn, as PyTorch, takes the weight of the *new* batch."""


_momentum_warned = False  # once per process: a user who meant it is told only once


def warn_momentum(momentum, stacklevel=3):
    """Warn, once per process, that a momentum in (0.5, 1] is probably 1 - what was
    meant. Called before validation (a warning turned into an error must leave the state
    untouched): anything else is left to the checks. Silenced by
    ``warnings.filterwarnings("ignore", category=fastbn.MomentumWarning)``."""
    global _momentum_warned
    if _momentum_warned or isinstance(momentum, (bool, np.bool_)) \
            or not isinstance(momentum, numbers.Real) or not 0.5 < momentum <= 1:
        return
    _momentum_warned = True
    warnings.warn(
        f"fastbn: momentum={momentum:g} is the weight of the NEW batch in the running "
        f"statistics (as in PyTorch), so they mostly follow the last batch. If "
        f"{momentum:g} is the weight of the old value (Keras, Flax, course code), pass "
        f"momentum={1 - momentum:.6g}. Shown once per process; silence it with "
        f'warnings.filterwarnings("ignore", category=fastbn.MomentumWarning).',
        MomentumWarning, stacklevel=stacklevel)


def channel_vector(v, channels, name, like=None, shape=None):
    """A per-channel vector that is only read (gamma, beta, mean, invstd): shape (C,), float.

    Float ndarrays are used as they are. With `like` (the data's dtype), parameters
    given as lists, tuples, Python numbers or integer/bool arrays are converted as
    NumPy arithmetic with data of dtype `like` would (a number is broadcast to (C,)):
    ``np.asarray([3, 4, 5])`` becomes float64, ``2.0`` takes the data's dtype.
    Without `like`, only lists and tuples of floats are accepted (converted).
    With several channel axes, `shape` (theirs) is accepted as well as (C,).
    """
    if v is None:
        return None
    arr = np.asarray(v) if isinstance(v, (list, tuple)) else v
    if like is not None and not isinstance(arr, np.ndarray) and is_number(arr):
        # NEP 50: a weak scalar takes the data's dtype (float32 for half-precision data)
        arr = np.full(channels, arr, dtype=np.result_type(arr, param_dtype(like)))
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of shape ({channels},), got {_describe(v)}")
    refuse_subclass(arr, name)
    if not is_float_dtype(arr.dtype):
        if like is None or arr.dtype.kind not in "biu":
            raise TypeError(f"{name} must have a float dtype (float32, float64, float16, "
                            f"bfloat16), got {arr.dtype}")
        try:
            target = np.result_type(arr.dtype, like)  # int64 -> float64, as x * gamma
        except TypeError:  # ml_dtypes < 0.5 on NumPy 1: no integer promotion for bfloat16
            target = np.result_type(arr.dtype, np.float16)
            target = like if target == np.float16 else target
        arr = arr.astype(target)
    if arr.shape != (channels,) and (shape is None or arr.shape != shape):
        also = "" if shape is None else f" or {shape}"
        raise ValueError(f"{name} must have shape ({channels},){also} to match the {channels} "
                         f"channels, got {arr.shape}")
    return arr


def is_number(value):
    """A Python or NumPy real number (bools included, as NumPy treats them), not an array."""
    return isinstance(value, (numbers.Real, np.bool_)) and not isinstance(value, np.ndarray)


def invstd_values(v, name):
    """1 / sqrt(var + eps) with eps > 0 is finite and positive; NaN marks a channel
    whose data held a NaN. Anything else cannot come from a batch and is refused.
    (fmin/fmax skip NaNs and warn of nothing: cheaper than masks under errstate.)"""
    if v.size and (np.fmin.reduce(v) < 0 or np.fmax.reduce(v) == np.inf):
        bad = v[(v < 0) | (v == np.inf)]
        raise ValueError(f"{name} must be >= 0 and finite (or NaN), got {bad[0]}")
    return v


def residual_values(mean, lo, name):
    """`lo` is the rounding residual of the float64 `mean` (a double-double): at most
    one unit in the last place of `mean` where `mean` is finite. Anything larger cannot
    come from a forward, and the kernels would take it for part of the mean."""
    hi = np.abs(np.asarray(mean, dtype=np.float64))
    lo = np.abs(np.asarray(lo, dtype=np.float64))
    with np.errstate(invalid="ignore"):
        bad = np.isfinite(hi) & ~(lo <= np.spacing(hi))
    if bad.any():
        raise ValueError(f"{name} must be the rounding residual of cache.mean (at most one "
                         f"unit in its last place), got {lo[bad][0]} beside {hi[bad][0]}")
    return lo


def running_vector(v, channels, name, *, update, shape=None):
    """A running statistic: an ndarray of shape (C,), writable when it is to be updated in place."""
    if v is None:
        return None
    if not isinstance(v, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray (it is updated in place), got {_describe(v)}")
    if not is_float_dtype(v.dtype):
        raise TypeError(f"{name} must have a float dtype (it is updated in place, "
                        f"never copied), got {v.dtype}: pass {name}.astype(np.float32) and "
                        "keep that array")
    channel_vector(v, channels, name, shape=shape)
    if update and not v.flags.writeable:
        raise ValueError(f"{name} is read-only, but it is updated in place in training mode")
    return v


def out_array(out, shape, dtype, name="out"):
    if out is None:
        return None
    if not isinstance(out, np.ndarray):
        raise TypeError(f"{name} must be a plain numpy.ndarray, got {_describe(out)}")
    refuse_subclass(out, name)
    if out.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype}, got {out.dtype}")
    if out.shape != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {out.shape}")
    if not out.flags.writeable:
        raise ValueError(f"{name} is read-only")
    return out


def store(values, out, dtype):
    """`values` as a new array of `dtype`, or written into the checked `out`."""
    if out is None:
        return values.astype(dtype)
    np.copyto(out, values, casting="unsafe")
    return out


def same_shape(a, ref, name, ref_name):
    if a.shape != ref.shape:
        raise ValueError(f"{name} must have the shape of {ref_name} {ref.shape}, got {a.shape}")
    return a


def like_x(a, x, name):
    """`a` (dy, residual): a data array of x's shape and dtype."""
    data_float_array(a, name)
    same_shape(a, x, name, "x")
    if a.dtype != x.dtype:
        raise TypeError(f"{name} must have the dtype of x ({x.dtype}), got {a.dtype}: "
                        f"pass {name}.astype(np.{x.dtype})")
    return a


def activation(value, name="activation", leaky=False):
    """None (or "identity"), "relu", and with `leaky` (forward, backward, the layer)
    "leaky_relu"."""
    if value is None:
        return None
    if isinstance(value, str):
        if value == "identity":
            return None
        if value == "relu" or (leaky and value == "leaky_relu"):
            return value
    known = "None, 'relu' or 'leaky_relu'" if leaky else "None or 'relu'"
    if not isinstance(value, str):
        raise TypeError(f"{name} must be {known}, got {_describe(value)}")
    raise ValueError(f"{name} must be {known}, got {value!r}")


def canonical_shape(shape, axis):
    """The (outer, C, inner) view every layout reduces to. One channel is one long
    run, (1, 1, size), whatever the axis: its values are contiguous."""
    outer = math.prod(shape[:axis])  # math.prod: np.prod costs more than a small kernel
    inner = math.prod(shape[axis + 1:])
    if shape[axis] == 1:
        return 1, 1, outer * inner
    return outer, shape[axis], inner


def aligned_contiguous(a):
    """`a` C-contiguous and aligned (misaligned loads are undefined behaviour in C):
    itself when it is, one copy otherwise."""
    a = np.ascontiguousarray(a)
    return a if a.flags.aligned else a.copy()


def canonical(a, axis):
    """`a` as an aligned (outer, C, inner) array whose (C, inner) blocks are contiguous:
    a view when possible, also of a slice whose rows (outer) are further apart
    (x[:, a:b], x[::2]: src_c/fastbn.h, fbn_shape.row_stride), else a C-contiguous copy.
    The compiled front end decides the same in fastbn/_front.pxi, canonical_view."""
    shape = canonical_shape(a.shape, axis)
    if a.flags.c_contiguous:
        return aligned_contiguous(a).reshape(shape)
    v = a.reshape(shape)  # a view when one exists, else a C-contiguous copy (any NumPy)
    if not np.may_share_memory(v, a):
        return aligned_contiguous(v)
    outer, C, inner = shape
    s0, s1, s2 = v.strides
    n = v.itemsize
    if (v.flags.aligned and (inner == 1 or s2 == n) and (C == 1 or s1 == inner * n)
            and (outer == 1 or (s0 % n == 0 and s0 >= C * inner * n))):
        return v
    return aligned_contiguous(a).reshape(shape)


def canonical_inputs(axis, *arrays):
    """canonical() of the inputs of one kernel (x, dy, residual; None stays None), which
    share one row stride: views when they have one, else every strided one copied (the
    front end's backward: canonical_view of x and dy, equal row strides)."""
    views = [None if a is None else canonical(a, axis) for a in arrays]
    if len({v.strides[0] for v in views if v is not None and v.shape[0] > 1}) <= 1:
        return views
    return [None if v is None else aligned_contiguous(v) for v in views]


def vector_shape(ndim, axis):
    """Shape that broadcasts a (C,) vector along `axis` of an ndim array."""
    return tuple(-1 if d == axis else 1 for d in range(ndim))


def overlaps(a, b):
    """Whether arrays `a` and `b` share memory. Exact (np.shares_memory) when their
    extents overlap, with a bounded effort: "yes" when that bound is exceeded."""
    if a.base is None and b.base is None:  # each owns its buffer: O(1), the usual case
        return a is b
    if not np.may_share_memory(a, b):
        return False
    try:
        return bool(np.shares_memory(a, b, max_work=_OVERLAP_WORK))
    except np.exceptions.TooHardError:
        return True


_OVERLAP_WORK = 100_000  # strided views of one buffer need far fewer steps


def separate(vectors, outputs):
    """`vectors` (None or arrays), each copied if it shares memory with one of `outputs`
    (arrays or None): every input is then read as it was before any output is written
    (NumPy's rule for overlapping operands). O(C) copies, only when needed."""
    outputs = [o for o in outputs if o is not None]
    if not outputs:  # the usual case: nothing to compare
        return vectors
    separated = []
    for v in vectors:  # loops, not any(generator): ~1 us less per vector on small calls
        if v is not None:
            for o in outputs:
                if overlaps(v, o):
                    v = v.copy()
                    break
        separated.append(v)
    return separated


def outputs_apart(named):
    """Outputs written by one call must not share memory with each other."""
    named = [(n, a) for n, a in named if a is not None]
    for i, (n1, a1) in enumerate(named):
        for n2, a2 in named[i + 1:]:
            if overlaps(a1, a2):
                raise ValueError(f"{n1} and {n2} must not share memory (both are written)")


def _write(copies, then):
    for dst, src in copies:
        np.copyto(dst, src, casting="unsafe")
    if then is not None:
        then()


def commit(copies, then=None):
    """Write the precomputed new state (`copies`, (destination, value) pairs, then the
    call `then()`, which must be idempotent) to the end even if KeyboardInterrupt
    arrives meanwhile, then re-raise it: an interrupted call leaves the state all old
    or all new.

    An interrupted write starts again (every step is idempotent). The handlers nest,
    rather than loop, so that no check for signals falls between catching an interrupt
    and the protected call (Python checks at calls and backward jumps)."""
    try:
        _write(copies, then)
    except KeyboardInterrupt:
        try:
            _write(copies, then)
        except KeyboardInterrupt:
            try:
                _write(copies, then)
            except KeyboardInterrupt:
                _write(copies, then)
        raise


def bool_arg(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {_describe(value)}")
    return bool(value)


def check_forward(x, gamma, beta, axis, eps, training, running_mean, running_var,
                  momentum, out, activation_, unbiased_running_var=True, local=False):
    """`local=True`: one rank's part of a synchronised batch, whose count per channel is
    checked only once merged (fastbn.distributed)."""
    a = ForwardArgs()
    data_array(x, "x")
    a.axis = channel_axes(axis, x.ndim)
    if type(a.axis) is int:
        chshape, a.channels = None, x.shape[a.axis]
    else:  # several channel axes: per-channel arrays of their shape or (C,)
        chshape = tuple(x.shape[d] for d in a.axis)
        a.channels = math.prod(chshape)
    a.count = x.size // a.channels if a.channels else 0
    a.gamma = channel_vector(gamma, a.channels, "gamma", like=x.dtype, shape=chshape)
    a.beta = channel_vector(beta, a.channels, "beta", like=x.dtype, shape=chshape)
    a.eps = real_number(eps, "eps", low=0.0, low_open=True)
    a.training = bool_arg(training, "training")
    a.momentum = real_number(momentum, "momentum", low=0.0, high=1.0)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together")
    a.running_mean = running_vector(running_mean, a.channels, "running_mean",
                                    update=a.training, shape=chshape)
    a.running_var = running_vector(running_var, a.channels, "running_var",
                                   update=a.training, shape=chshape)
    if a.running_mean is not None and np.may_share_memory(a.running_mean, a.running_var):
        raise ValueError("running_mean and running_var must not share memory")
    if not a.training and a.running_mean is None:
        raise ValueError("running_mean and running_var are required when training=False")
    if a.training and a.count <= 1 and a.channels and not local:
        raise ValueError(f"expected more than 1 value per channel when training, got input "
                         f"of shape {x.shape} (m = {a.count} values per channel)")
    a.out = out_array(out, x.shape, x.dtype)
    if a.out is not None and a.training and a.running_mean is not None:
        outputs_apart([("out", a.out), ("running_mean", a.running_mean),
                       ("running_var", a.running_var)])
    a.activation = activation(activation_, leaky=True)
    a.unbiased_running_var = bool_arg(unbiased_running_var, "unbiased_running_var")
    return a


def forward_outputs(a):
    """What a checked forward writes: out, and the running statistics in training."""
    running = a.training and a.running_mean is not None
    return [a.out] + ([a.running_mean, a.running_var] if running else [])


def overwrites_x(a, x):
    """Whether the forward checked as `a` writes over (part of) its input x, which
    backward reads."""
    for o in forward_outputs(a):
        if o is not None and overlaps(o, x):
            return True
    return False


def check_cache(cache):
    """A Cache may have been edited by hand: check every field backward reads,
    so that nothing inconsistent reaches the kernels."""
    if not isinstance(cache, Cache):
        raise TypeError(f"cache must be the Cache returned by forward, got {_describe(cache)}")
    if type(cache) is not Cache and hasattr(cache, "_features"):
        return cache.check()  # a FeatureCache: a forward with keywords beyond the plain ones
    x = cache.x
    if not isinstance(x, np.ndarray):
        raise TypeError(f"cache.x must be a numpy.ndarray, got {_describe(x)}")
    data_array(x, "cache.x")
    if not is_integer(cache.axis) or not 0 <= cache.axis < x.ndim:
        raise ValueError(f"cache.axis must be an integer in [0, {x.ndim}), got {cache.axis!r}")
    C = x.shape[cache.axis]
    for name in ("mean", "mean_lo", "invstd", "gamma", "beta"):
        v = getattr(cache, name)
        if v is None and name in OPTIONAL_VECTORS:
            continue
        if not isinstance(v, np.ndarray):
            raise TypeError(f"cache.{name} must be a numpy.ndarray of shape ({C},), got {_describe(v)}")
        channel_vector(v, C, f"cache.{name}")
    invstd_values(cache.invstd, "cache.invstd")
    residual_values(cache.mean, cache.mean_lo, "cache.mean_lo")
    for name in ("training", "x_overwritten", "x_written"):
        if not isinstance(getattr(cache, name), (bool, np.bool_)):
            raise TypeError(f"cache.{name} must be a bool, got {_describe(getattr(cache, name))}")
    activation(cache.activation, "cache.activation")
    if not is_integer(cache.count) or cache.count != (x.size // C if C else 0):
        raise ValueError(f"cache.count must be {x.size // C if C else 0} (values per channel of "
                         f"cache.x), got {cache.count!r}")
    return cache


def check_backward(dy, cache, out, need_dx=True):
    """dy, the cache and out of backward: (dx_out, dgamma_out, dbeta_out), plus
    dresidual_out after them for a cache of a forward with residual=."""
    check_cache(cache)
    x = cache.x
    data_float_array(dy, "dy")
    same_shape(dy, x, "dy", "x")
    if dy.dtype != x.dtype:
        raise TypeError(f"dy must have the dtype of x ({x.dtype}), got {dy.dtype}: gradients "
                        f"have their variable's dtype; pass dy.astype(np.{x.dtype})")
    if cache.x_overwritten:
        raise ValueError("cannot run backward: forward was called in place (out=x), which "
                         "overwrote the input that backward needs")
    if cache.x_written:
        raise ValueError("cannot run backward: an earlier backward on this cache wrote its "
                         "output over x (out=x), which backward needs; run backward once, "
                         "or give it another out")
    if need_dx is not True:
        bool_arg(need_dx, "need_dx")
    residual = type(cache) is not Cache and getattr(cache, "residual", None) is not None
    if isinstance(out, tuple):
        if len(out) != 3 + residual:
            names = "(dx, dgamma, dbeta, dresidual)" if residual else "(dx, dgamma, dbeta)"
            raise ValueError(f"out must be an array or a tuple {names}, got a tuple of {len(out)}")
        dx_out, dg_out, db_out, *dr_out = out
    else:
        dx_out, dg_out, db_out, dr_out = out, None, None, [None]
    if not need_dx and dx_out is not None:
        raise ValueError(f"out{'[0]' if isinstance(out, tuple) else ''} must be None with "
                         "need_dx=False: there is no dx to write")
    dx_out = out_array(dx_out, x.shape, x.dtype, "out[0]" if isinstance(out, tuple) else "out")
    if cache.gamma is None and dg_out is not None:
        raise ValueError("out[1] must be None: the forward had no gamma, so there is no dgamma")
    if cache.beta is None and db_out is not None:
        raise ValueError("out[2] must be None: the forward had no beta, so there is no dbeta")
    if dg_out is not None:
        dg_out = out_array(dg_out, cache.gamma.shape, cache.gamma.dtype, "out[1]")
    if db_out is not None:
        db_out = out_array(db_out, cache.beta.shape, cache.beta.dtype, "out[2]")
    outs = [dx_out, dg_out, db_out]
    if residual:
        outs.append(out_array(dr_out[0], x.shape, x.dtype, "out[3]"))
    if dg_out is not None or db_out is not None or (residual and outs[3] is not None):
        outputs_apart([(f"out[{i}]", o) for i, o in enumerate(outs)])
    return outs


def mark_written(cache, outputs):
    """After a backward: remember whether it wrote over cache.x, which a second backward
    on the same cache would read."""
    for o in outputs:
        if o is not None and overlaps(o, cache.x):
            cache.x_written = True


def check_count(count, channels):
    """`count` of backward_elemt: a positive int, or a (C,) array of them."""
    if isinstance(count, (bool, np.bool_)):
        raise TypeError("count must be a positive integer or an array of shape (C,), got bool")
    if isinstance(count, numbers.Integral):
        if count > 2 ** 62:
            raise ValueError(f"count must be at most 2**62, got {count}")
        counts = np.full(channels, float(count))
    elif isinstance(count, np.ndarray) and count.dtype.kind in "iuf":
        refuse_subclass(count, "count")
        if count.shape not in ((), (channels,)):
            raise ValueError(f"count must be a scalar or have shape ({channels},), got {count.shape}")
        counts = np.broadcast_to(count.astype(np.float64), (channels,))
    else:
        raise TypeError(f"count must be a positive integer or an array of shape (C,), got {_describe(count)}")
    if channels and not (counts > 0).all():
        raise ValueError("count must be positive")
    return np.ascontiguousarray(counts, dtype=np.float64)


def check_merge(counts, means, m2s):
    """merge_stats inputs: counts (R,) or (R, C); means, m2s (R, C).

    Returns float64 counts of shape (R, C) or (R, 1), and whether they were per channel."""
    means = channel_stack(means, "means")
    m2s = channel_stack(m2s, "m2s")
    if m2s.shape != means.shape:
        raise ValueError(f"m2s must have the shape of means {means.shape}, got {m2s.shape}")
    counts = np.asarray(counts) if isinstance(counts, (list, tuple)) else counts
    if not isinstance(counts, np.ndarray) or counts.dtype.kind not in "iuf":
        raise TypeError(f"counts must be an array of integers, got {_describe(counts)}")
    refuse_subclass(counts, "counts")
    per_channel = counts.ndim == 2
    if counts.shape == means.shape[:1]:
        counts = counts[:, None]
    elif counts.shape != means.shape:
        raise ValueError(f"counts must have shape {means.shape[:1]} or {means.shape}, got {counts.shape}")
    if not np.isfinite(counts).all() or (counts < 0).any() or (counts != np.round(counts)).any():
        raise ValueError("counts must be finite non-negative integers")
    return counts.astype(np.float64), means, m2s, per_channel


def channel_stack(a, name):
    a = np.asarray(a) if isinstance(a, (list, tuple)) else a
    float_array(a, name)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D (parts, channels), got shape {a.shape}")
    return a.astype(np.float64, copy=False)


def check_running_update(running_mean, running_var, mean, var, count, momentum,
                         unbiased_running_var=True):
    C = mean.shape[0] if isinstance(mean, np.ndarray) and mean.ndim == 1 else None
    if C is None:
        raise TypeError(f"mean must be a 1-D float array, got {_describe(mean)}")
    if var is None:
        raise TypeError(f"var must be an array of shape ({C},), got None")
    mean = channel_vector(mean, C, "mean")
    var = channel_vector(var, C, "var")
    if running_mean is None or running_var is None:
        raise TypeError("running_mean and running_var must be arrays")
    running_vector(running_mean, C, "running_mean", update=True)
    running_vector(running_var, C, "running_var", update=True)
    if np.may_share_memory(running_mean, running_var):
        raise ValueError("running_mean and running_var must not share memory")
    if not is_integer(count):
        raise TypeError(f"count must be an integer, got {_describe(count)}")
    unbiased = bool_arg(unbiased_running_var, "unbiased_running_var")
    if unbiased and not 2 <= count <= 2 ** 62:
        raise ValueError(f"count must be in [2, 2**62] for the unbiased running variance, got {count}")
    if not unbiased and not 1 <= count <= 2 ** 62:
        raise ValueError(f"count must be in [1, 2**62], got {count}")
    momentum = real_number(momentum, "momentum", low=0.0, high=1.0)
    return mean.astype(np.float64), var.astype(np.float64), momentum, unbiased


def running_var_factor(count, unbiased):
    """What the batch variance is multiplied by in the running variance: m / (m - 1)
    (unbiased, PyTorch) or 1 (biased: Keras, Flax, course code)."""
    return count / (count - 1) if unbiased else 1.0


_NO_DY = object()


def check_per_channel(x, axis, vectors, out=None, dy=_NO_DY):
    """Common checks of the building blocks: x (and dy), axis, (C,) vectors, out.

    Only gamma and beta may be None."""
    data_array(x, "x")
    if dy is not _NO_DY:
        like_x(dy, x, "dy")
    axis = channel_axis(axis, x.ndim)
    C = x.shape[axis]
    for name, v in vectors.items():
        if v is None and name not in OPTIONAL_VECTORS:
            raise TypeError(f"{name} must be an array of shape ({C},), got None")
    checked = [channel_vector(v, C, name) for name, v in vectors.items()]
    if "invstd" in vectors:
        invstd_values(checked[list(vectors).index("invstd")], "invstd")
    out_array(out, x.shape, x.dtype)
    return axis, checked
