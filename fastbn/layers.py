"""A batch-norm layer for NumPy trainers, in the manner of ``torch.nn.BatchNorm{1,2,3}d``.

The layer holds the learnable parameters, their gradients and the running
statistics, and calls ``fastbn.forward`` / ``fastbn.backward`` (looked up on the
``fastbn`` module at call time, so the backend in use is the one ``fastbn``
chose: the C kernels, or the NumPy reference).

The class is assembled from its parts, one family each: the constructor, the
per-thread cache and the repr here; the modes and parameter views in
fastbn/_layer_modes.py; forward and backward in fastbn/_layer_passes.py;
state_dict, save and load in fastbn/_layer_state.py.
"""
import threading

import numpy as np

from ._checks import _describe, bfloat16, is_data_dtype, is_integer, real_number, warn_momentum
from ._checks import activation as _check_activation
from ._checks import bool_arg as _check_bool
from ._layer_modes import BatchNormModes
from ._layer_passes import BatchNormPasses
from ._layer_passes import _fastbn  # noqa: F401 (fastbn.distributed imports it from here)
from ._layer_state import BatchNormState

__all__ = ["BatchNorm"]


class BatchNorm(BatchNormModes, BatchNormPasses, BatchNormState):
    """Batch normalisation over the channel axis ``axis`` of inputs of any rank >= 2.

    A layer for NumPy trainers: it holds the learnable ``gamma`` and ``beta``,
    their gradients and the running statistics, and calls ``fastbn.forward`` and
    ``fastbn.backward``. ``BatchNorm(C)`` on (N, C), (N, C, L), (N, C, H, W) or
    (N, C, D, H, W) inputs behaves as ``torch.nn.BatchNorm1d/2d/3d(C)``;
    ``axis=-1`` serves channels-last layouts such as NHWC.

    Parameters
    ----------
    num_features : int
        Number of channels C (the length of ``x.shape[axis]``), >= 1.
    axis : int or tuple of int, default 1
        The channel axis (1 as in PyTorch; -1 for channels-last), or several
        (``fastbn.forward``'s `axis`): then `num_features` is the product of
        their lengths, and the parameters have the flat (C,) shape.
    eps : float, default 1e-5
        Added to the variance inside the square root (finite, > 0).
    momentum : float in [0, 1] or None, default 0.1
        Weight of the *new* batch in the running statistics, as in PyTorch:
        ``running = (1 - momentum) * running + momentum * batch``. ``None``
        means a cumulative moving average (factor ``1 / num_batches_tracked``).
        Keras and Flax (0.99) and the classic course code (0.9) give the weight
        of the *old* value: pass ``momentum = 1 - their_momentum``. A momentum
        > 0.5 emits one ``fastbn.MomentumWarning`` per process (silence it with
        ``warnings.filterwarnings("ignore", category=fastbn.MomentumWarning)``).
    affine : bool, default True
        Learn a per-channel scale ``gamma`` (ones) and shift ``beta`` (zeros).
    track_running_stats : bool, default True
        Keep running statistics and use them in eval mode. When False, batch
        statistics are used in eval mode too.
    dtype : float32, float64, float16, bfloat16 or None, default float32
        Dtype of the parameters and running statistics. Inputs may be of any
        data dtype (float32, float64, float16, ``ml_dtypes.bfloat16``); outputs
        have the input's dtype. None: the dtype of the first input, float32 for
        half-precision input (float32 placeholders until then, whose values are
        kept; the arrays in ``params``, ``grads`` and the running statistics are
        replaced by new ones at that first forward).
    activation : None, "relu" or "leaky_relu", optional
        An activation fused into the layer (``relu(bn(x))`` in one pass).
    unbiased_running_var : bool, default True
        True: the running variance takes the unbiased batch variance (batch
        variance times m / (m - 1)), as PyTorch. False: the biased one, as
        Keras, Flax and the classic course code.
    accumulate_grads : bool, default False
        False: each ``backward`` overwrites ``grads``. True: each ``backward``
        adds to ``grads`` (gradient accumulation over micro-batches, as
        PyTorch's ``.grad``); call ``zero_grad()`` after each optimiser step.
    negative_slope : float, default 0.01
        The slope of "leaky_relu" for negative inputs.
    renorm : (rmax, dmax) or None, optional
        Batch renormalisation in training mode (``fastbn.forward``'s `renorm`);
        needs ``track_running_stats=True``.
    virtual_batch_size : int or None, optional
        Ghost batch norm in training mode: statistics per group of that many
        rows (``fastbn.forward``'s `virtual_batch_size`).
    stats_frozen : bool, default False
        Start in the frozen-statistics mode (see `freeze_stats`).

    Attributes
    ----------
    params, grads : dict
        ``{"gamma": ..., "beta": ...}`` (empty when ``affine=False``). ``backward``
        writes the gradients into ``grads`` in place; an optimiser may update
        ``params`` in place or replace its entries.
    running_mean, running_var : ndarray of shape (C,) or None
        The running statistics (None when ``track_running_stats=False``). The
        running variance is unbiased (batch variance times m / (m - 1)), as in
        PyTorch, unless ``unbiased_running_var=False``.
    num_batches_tracked : int
        Training steps taken (the divisor when ``momentum=None``).
    training : bool
        True in training mode (the initial mode), False after ``eval()``.
    stats_frozen : bool
        True in the frozen-statistics mode (`freeze_stats`): running statistics
        used and not updated, gamma and beta still trained.
    mode : str
        ``"train"``, ``"eval"`` or ``"frozen_stats"``.

    Raises
    ------
    TypeError
        If num_features is not an integer, or axis an integer or a tuple of
        them; eps, momentum or negative_slope is not a real number; affine,
        track_running_stats, unbiased_running_var, accumulate_grads or
        stats_frozen is not a bool; dtype is not float32, float64, float16,
        bfloat16 or None; activation is not a string; renorm is not a pair of
        real numbers; virtual_batch_size is not an integer.
    ValueError
        If num_features < 1; eps <= 0; momentum is outside [0, 1]; activation
        is unknown; negative_slope is given without "leaky_relu"; rmax < 1,
        dmax < 0 or renorm without running statistics; virtual_batch_size < 1;
        stats_frozen without running statistics.

    See Also
    --------
    fastbn.forward, fastbn.backward : The functions the layer calls.
    fastbn.distributed.SyncBatchNorm : The same layer, synchronised over MPI.
    fastbn.fold_batchnorm : Fold an eval-mode layer into the layer before it.

    Notes
    -----
    ``bn(x)`` is ``bn.forward(x)``; ``bn(x, training=False)`` chooses the mode
    for this call only (Keras style), beside ``train()``/``eval()``.
    ``bn.backward(dy)`` differentiates the last forward call (of this thread),
    whose cache keeps x by reference: do not change x in place before the
    backward. To run several forwards before their backwards, keep each cache:
    ``y, cache = bn.forward(x, return_cache=True)``, later
    ``bn.backward(dy, cache=cache)``. ``grads`` are overwritten by each backward
    unless ``accumulate_grads=True``.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> bn = fastbn.BatchNorm(3)
    >>> x = np.arange(12, dtype=np.float32).reshape(4, 3)  # (N, C)
    >>> y = bn(x)  # training mode: batch statistics
    >>> y.shape, y.dtype
    ((4, 3), dtype('float32'))
    >>> print(np.round(bn.running_mean, 4), np.round(bn.running_var, 4))
    [0.45 0.55 0.65] [2.4 2.4 2.4]
    >>> dx = bn.backward(np.ones_like(y))  # dL/dy
    >>> print(bn.grads["beta"])
    [4. 4. 4.]
    >>> for key in bn.params:  # an SGD step
    ...     bn.params[key] -= 0.1 * bn.grads[key]
    >>> y_eval = bn.eval()(x)  # evaluation mode: running statistics

    A layer ported from Keras (``BatchNormalization(momentum=0.99)``, biased
    running variance):

    >>> bn = fastbn.BatchNorm(16, axis=-1, momentum=1 - 0.99, eps=1e-3,
    ...                       unbiased_running_var=False)

    Gradient accumulation over two micro-batches, then one step:

    >>> bn = fastbn.BatchNorm(3, accumulate_grads=True)
    >>> for part in (x[:2], x[2:]):
    ...     _ = bn.backward(np.ones_like(bn(part)))
    >>> print(bn.grads["beta"])  # 2 + 2 rows
    [4. 4. 4.]
    >>> bn.zero_grad()
    """

    def __init__(self, num_features, *, axis=1, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32, activation=None,
                 unbiased_running_var=True, accumulate_grads=False, negative_slope=0.01,
                 renorm=None, virtual_batch_size=None, stats_frozen=False):
        if not is_integer(num_features):
            raise TypeError(f"num_features must be an integer, got {_describe(num_features)}")
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if not is_integer(axis) and not (isinstance(axis, tuple) and axis
                                         and all(is_integer(a) for a in axis)):
            raise TypeError(f"axis must be an integer or a non-empty tuple of integers, got "
                            f"{_describe(axis)}")
        names = "float32, float64, float16, bfloat16 or None"
        try:
            bf16 = bfloat16(load=True) if isinstance(dtype, str) and dtype == "bfloat16" else None
            dt = np.dtype(np.float32 if dtype is None else bf16 if bf16 is not None else dtype)
        except TypeError:
            raise TypeError(f"dtype must be {names}, got {dtype!r}") from None
        if not is_data_dtype(dt):
            raise TypeError(f"dtype must be {names}, got {dt}")
        self.num_features = int(num_features)
        self.axis = int(axis) if is_integer(axis) else tuple(int(a) for a in axis)
        self.eps = real_number(eps, "eps", low=0.0, low_open=True)
        self.momentum = None if momentum is None else real_number(momentum, "momentum", low=0.0, high=1.0)
        self.affine = _check_bool(affine, "affine")
        self.track_running_stats = _check_bool(track_running_stats, "track_running_stats")
        self.dtype = dt
        self.activation = _check_activation(activation, leaky=True)
        self.negative_slope = real_number(negative_slope, "negative_slope")
        if self.negative_slope != 0.01 and self.activation != "leaky_relu":
            raise ValueError("negative_slope is used only with activation='leaky_relu', got "
                             f"activation={self.activation!r}")
        if renorm is not None:  # checked as forward checks it (one message for both)
            if not isinstance(renorm, (tuple, list)) or len(renorm) != 2:
                raise TypeError(f"renorm must be None or a pair (rmax, dmax), got "
                                f"{_describe(renorm)}")
            renorm = (real_number(renorm[0], "renorm[0] (rmax)", low=1.0),
                      real_number(renorm[1], "renorm[1] (dmax)", low=0.0))
            if not _check_bool(track_running_stats, "track_running_stats"):
                raise ValueError("renorm needs track_running_stats=True (r and d compare the "
                                 "batch statistics with the running ones)")
        self.renorm = renorm
        if virtual_batch_size is not None:
            if not is_integer(virtual_batch_size):
                raise TypeError(f"virtual_batch_size must be a positive integer, got "
                                f"{_describe(virtual_batch_size)}")
            if virtual_batch_size < 1:
                raise ValueError(f"virtual_batch_size must be >= 1, got {virtual_batch_size}")
            virtual_batch_size = int(virtual_batch_size)
        self.virtual_batch_size = virtual_batch_size
        self.unbiased_running_var = _check_bool(unbiased_running_var, "unbiased_running_var")
        self.accumulate_grads = _check_bool(accumulate_grads, "accumulate_grads")
        self._dtype_from_input = dtype is None  # until the first forward
        if self.momentum is not None:
            warn_momentum(self.momentum)
        self.training = True
        C = self.num_features
        if self.affine:
            self.params = {"gamma": np.ones(C, dt), "beta": np.zeros(C, dt)}
            self.grads = {"gamma": np.zeros(C, dt), "beta": np.zeros(C, dt)}
        else:
            self.params, self.grads = {}, {}
        if self.track_running_stats:
            self.running_mean = np.zeros(C, dt)
            self.running_var = np.ones(C, dt)
        else:
            self.running_mean = self.running_var = None
        self.num_batches_tracked = 0
        self.stats_frozen = False
        self.freeze_stats(stats_frozen)
        self._local = threading.local()
        self._cache = None

    # -- the cache of the last forward: per thread, so that threads sharing one layer in
    #    eval mode each differentiate their own forward; a thread that ran no forward uses
    #    the last one of any thread (forward and backward in different threads) ----------
    @property
    def _cache(self):
        return getattr(self._local, "cache", self._last_cache)

    @_cache.setter
    def _cache(self, cache):
        self._local.cache = self._last_cache = cache

    def __getstate__(self):  # copy and pickle: a thread-local cannot be
        state = dict(self.__dict__)
        del state["_local"]
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    def __repr__(self):
        extra = "" if self.activation is None else f", activation={self.activation!r}"
        extra += "".join(f", {k}={v!r}" for k, v in self._extra_config().items())
        return (f"BatchNorm({self.num_features}, axis={self.axis}, eps={self.eps}, "
                f"momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}, "
                f"dtype={None if self._dtype_from_input else self.dtype.name}{extra}"
                + ("" if self.unbiased_running_var else ", unbiased_running_var=False")
                + (", accumulate_grads=True" if self.accumulate_grads else "") + ")")
