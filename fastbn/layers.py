"""A batch-norm layer for NumPy trainers, in the manner of ``torch.nn.BatchNorm{1,2,3}d``.

The layer holds the learnable parameters, their gradients and the running
statistics, and calls ``fastbn.forward`` / ``fastbn.backward`` (looked up on the
``fastbn`` module at call time, so the backend in use is the one ``fastbn``
chose: the C kernels, or the NumPy reference).
"""
import json
import math
import os
import threading
from functools import partial

import numpy as np

from ._checks import (BFLOAT16, DATA_DTYPES, _describe, channel_axis, is_integer,
                      param_dtype, real_number, warn_momentum)
from ._checks import activation as _check_activation
from ._checks import bool_arg as _check_bool

__all__ = ["BatchNorm"]

_PARAM_KEYS = ("gamma", "beta")
_BUFFER_KEYS = ("running_mean", "running_var", "num_batches_tracked")
_CONFIG_KEY = "__fastbn_batchnorm_config__"


def _fastbn():
    """The fastbn package, for the backend it chose (the C kernels or the NumPy
    reference): imported at call time, when the package is fully imported."""
    import fastbn
    return fastbn


class BatchNorm:
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
            dt = np.dtype(np.float32 if dtype is None else
                          BFLOAT16 if BFLOAT16 is not None and dtype == "bfloat16" else dtype)
        except TypeError:
            raise TypeError(f"dtype must be {names}, got {dtype!r}") from None
        if dt not in DATA_DTYPES:
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

    # -- parameters -----------------------------------------------------------------------
    @property
    def gamma(self):
        """The scale, ``params["gamma"]`` (None when ``affine=False``)."""
        return self.params.get("gamma")

    @property
    def beta(self):
        """The shift, ``params["beta"]`` (None when ``affine=False``)."""
        return self.params.get("beta")

    def train(self, mode=True):
        """Switch to training mode (batch statistics), or to eval mode with False.

        Parameters
        ----------
        mode : bool, default True
            True for training mode, False for evaluation mode.

        Returns
        -------
        BatchNorm
            The layer itself, as in PyTorch.

        Raises
        ------
        TypeError
            If mode is not a bool.

        Examples
        --------
        >>> import fastbn
        >>> bn = fastbn.BatchNorm(3).eval()
        >>> bn.train().training
        True
        """
        self.training = _check_bool(mode, "mode")
        return self

    def eval(self):
        """Switch to evaluation mode (running statistics, if tracked).

        Returns
        -------
        BatchNorm
            The layer itself, as in PyTorch.

        Examples
        --------
        >>> import fastbn
        >>> fastbn.BatchNorm(3).eval().training
        False
        """
        self.training = False
        return self

    def freeze_stats(self, frozen=True):
        """Enter (or, with False, leave) the frozen-statistics mode, for fine-tuning.

        In this mode every forward normalises with the running statistics and
        does not update them, whatever the training mode (``train()``,
        ``eval()``, ``training=`` of a call), while ``backward`` still computes
        the gradients of gamma and beta (the statistics are constants): PyTorch's
        batch norm left in eval mode inside a training loop, Keras'
        ``trainable=False`` with the weights still trained. ``train()`` and
        ``eval()`` do not leave it; ``freeze_stats(False)`` does.

        Parameters
        ----------
        frozen : bool, default True
            True to freeze the running statistics, False to unfreeze them.

        Returns
        -------
        BatchNorm
            The layer itself.

        Raises
        ------
        TypeError
            If frozen is not a bool.
        ValueError
            If the layer has no running statistics (``track_running_stats=False``).

        Examples
        --------
        >>> import numpy as np
        >>> import fastbn
        >>> bn = fastbn.BatchNorm(2).freeze_stats()
        >>> x = np.array([[1.0, 2.0], [3.0, 6.0]], dtype=np.float32)
        >>> y = bn(x)  # normalised with the running statistics (0 and 1)
        >>> print(np.round(y, 4), bn.num_batches_tracked)
        [[1. 2.]
         [3. 6.]] 0
        >>> dx = bn.backward(np.ones_like(y))
        >>> print(np.round(bn.grads["gamma"], 3), bn.mode)  # sum(dy * xhat), xhat = x / sqrt(1 + eps)
        [4. 8.] frozen_stats
        """
        frozen = _check_bool(frozen, "frozen")
        if frozen and type(self).forward is not BatchNorm.forward:  # SyncBatchNorm, for now
            raise NotImplementedError(f"{type(self).__name__} has no frozen-statistics mode "
                                      "yet: use eval() (gamma and beta are still trained)")
        if frozen and not self.track_running_stats:
            raise ValueError("freeze_stats needs running statistics: the layer was built with "
                             "track_running_stats=False")
        self.stats_frozen = frozen
        return self

    @property
    def mode(self):
        """``"train"``, ``"eval"`` or ``"frozen_stats"`` (see `freeze_stats`)."""
        if self.stats_frozen:
            return "frozen_stats"
        return "train" if self.training else "eval"

    def zero_grad(self):
        """Set the gradients in ``grads`` to zero, in place.

        With ``accumulate_grads=True``, call it after each optimiser step.

        Examples
        --------
        >>> import numpy as np
        >>> import fastbn
        >>> bn = fastbn.BatchNorm(2)
        >>> x = np.array([[1.0, 2.0], [3.0, 6.0]], dtype=np.float32)
        >>> dx = bn.backward(np.ones_like(bn(x)))
        >>> print(bn.grads["beta"])
        [2. 2.]
        >>> bn.zero_grad()
        >>> print(bn.grads["beta"])
        [0. 0.]
        """
        for g in self.grads.values():
            g[...] = 0

    def reset_running_stats(self):
        """Reset the running statistics (mean 0, variance 1) and ``num_batches_tracked``.

        Examples
        --------
        >>> import numpy as np
        >>> import fastbn
        >>> bn = fastbn.BatchNorm(2)
        >>> y = bn(np.array([[1.0, 2.0], [3.0, 6.0]], dtype=np.float32))
        >>> bn.reset_running_stats()
        >>> print(bn.running_mean, bn.running_var, bn.num_batches_tracked)
        [0. 0.] [1. 1.] 0
        """
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
        self.num_batches_tracked = 0

    def __repr__(self):
        extra = "" if self.activation is None else f", activation={self.activation!r}"
        extra += "".join(f", {k}={v!r}" for k, v in self._extra_config().items())
        return (f"BatchNorm({self.num_features}, axis={self.axis}, eps={self.eps}, "
                f"momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}, "
                f"dtype={None if self._dtype_from_input else self.dtype.name}{extra}"
                + ("" if self.unbiased_running_var else ", unbiased_running_var=False")
                + (", accumulate_grads=True" if self.accumulate_grads else "") + ")")

    # -- forward / backward ---------------------------------------------------------------
    def _check_input(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy.ndarray, got {_describe(x)}")
        if x.ndim < 2:
            raise ValueError(f"x must have at least 2 dimensions (batch and channel), got shape {x.shape}")
        axes = [channel_axis(a, x.ndim) for a in
                (self.axis if isinstance(self.axis, tuple) else (self.axis,))]
        if math.prod(x.shape[a] for a in axes) != self.num_features:
            raise ValueError(f"expected {self.num_features} channels along axis {self.axis}, "
                             f"got input of shape {x.shape}")

    def forward(self, x, training=None, *, out=None, return_cache=False, mask=None,
                residual=None):
        """Normalise ``x``; in training mode update the running statistics (if tracked).

        ``bn(x)`` is the same call. Training mode (and eval mode with
        ``track_running_stats=False``) uses the batch statistics; eval mode uses
        the running statistics. The cache is kept for `backward`. The running
        statistics, ``num_batches_tracked`` and the cache change together, in one
        step that an interrupt (Ctrl-C) does not split; an error leaves them as
        they were.

        Parameters
        ----------
        x : ndarray of float32, float64, float16 or bfloat16, ndim >= 2
            The batch, with ``num_features`` channels along the layer's axis.
        training : bool or None, default None
            The mode of this call only (Keras style): True for training, False
            for evaluation; None uses the layer's mode (``train()``/``eval()``).
        out : ndarray, optional
            Where to write y: x's shape and dtype, writable.
        return_cache : bool, default False
            Also return the call's cache, for ``backward(dy, cache=cache)``
            after other forwards.
        mask : ndarray of bool, optional
            Positions that enter the statistics (``fastbn.forward``'s `mask`).
        residual : ndarray, optional
            Added before the activation (``fastbn.forward``'s `residual`);
            `backward` then returns ``(dx, dresidual)``.

        Returns
        -------
        y : ndarray
            The normalised batch, of x's shape and dtype (`out` if given).
        cache : Cache
            Only with ``return_cache=True``.

        Raises
        ------
        TypeError
            If x is not a float32/float64/float16/bfloat16 ndarray, or out has
            another dtype;
            training is not None or a bool; return_cache is not a bool.
        ValueError
            If x has fewer than 2 dimensions or not ``num_features`` channels;
            training with one value per channel; out has the wrong shape or is
            read-only. The layer's state is then unchanged.

        Examples
        --------
        >>> import numpy as np
        >>> import fastbn
        >>> bn = fastbn.BatchNorm(2, axis=-1)  # channels last
        >>> x = np.array([[[1.0, 8.0], [2.0, 4.0]], [[6.0, 3.0], [4.0, 5.0]]], np.float32)
        >>> y = bn.forward(x)
        >>> print(np.round(y[..., 0], 4))
        [[-1.1717 -0.6509]
         [ 1.4321  0.3906]]
        >>> bn.num_batches_tracked
        1
        >>> y = bn(x, training=False)  # this call only: running statistics
        >>> bn.training, bn.num_batches_tracked
        (True, 1)
        """
        self._check_input(x)
        mode = self._call_mode(training)
        return_cache = _check_bool(return_cache, "return_cache")
        impl = _fastbn()._impl
        mode = mode and not self.stats_frozen  # frozen statistics: as in evaluation mode
        use_batch_stats = mode or not self.track_running_stats
        update = mode and self.track_running_stats
        momentum = self._step_momentum(update)
        state = self._state_for(x)
        running = (None, None)
        if update or not use_batch_stats:
            running = (state["running_mean"], state["running_var"])
        count = self.num_batches_tracked + 1 if update else None
        y, cache = impl._forward_then(x, state.get("gamma"), state.get("beta"),
                                      self.axis, self.eps, use_batch_stats, *running, momentum,
                                      out, self.activation, partial(self._commit, count, state),
                                      self.unbiased_running_var,
                                      (mask, self.renorm if use_batch_stats else None,
                                       self.virtual_batch_size, residual, self.negative_slope))
        return (y, cache) if return_cache else y

    def _call_mode(self, training):
        """The mode of one call: `training` (True/False), or the layer's with None."""
        if training is None:
            return self.training
        return _check_bool(training, "training")

    def _state_for(self, x):
        """The arrays a forward on x uses: the layer's own, or with ``dtype=None`` before
        the first forward, new ones of x's dtype (installed by `_install` only once the
        forward succeeded: a failed call leaves the layer as it was)."""
        state = dict(self.params)
        if self.track_running_stats:
            state["running_mean"], state["running_var"] = self.running_mean, self.running_var
        dt = param_dtype(x.dtype)  # float32 for half-precision data
        if self._dtype_from_input and dt != self.dtype:
            state = {k: np.asarray(v).astype(dt) for k, v in state.items()}
            state["grads"] = {k: np.zeros(self.num_features, dt) for k in self.grads}
            state["dtype"] = dt
        return state

    def _install(self, state):
        """Make `state` (from `_state_for`) the layer's: this fixes a dtype=None layer's
        dtype at its first successful forward (idempotent)."""
        if "dtype" in state:
            for key in self.params:
                self.params[key] = state[key]
            self.grads.update(state["grads"])
            if self.track_running_stats:
                self.running_mean, self.running_var = state["running_mean"], state["running_var"]
            self.dtype = state["dtype"]
        self._dtype_from_input = False

    def _commit(self, num_batches_tracked, state, cache):
        """The layer's part of a forward's state update (idempotent: it may be rerun).
        `num_batches_tracked` is None when it does not change (eval mode)."""
        self._install(state)
        if num_batches_tracked is not None:
            self.num_batches_tracked = num_batches_tracked
        self._cache = cache

    __call__ = forward

    def backward(self, dy, *, cache=None, out=None, need_dx=True):
        """Gradient with respect to the input of the last forward call (or of `cache`'s).

        Fills ``grads["gamma"]`` and ``grads["beta"]`` (in place when they are arrays of
        the right shape and dtype; overwritten, or added to with
        ``accumulate_grads=True``) and returns dx.

        Parameters
        ----------
        dy : ndarray
            Gradient of the loss with respect to the forward's output: the
            shape and dtype of its input.
        cache : Cache, optional
            The cache of the forward to differentiate, from
            ``forward(x, return_cache=True)``; None: the last forward of this
            thread.
        out : ndarray, optional
            Where to write dx: the input's shape and dtype, writable.
        need_dx : bool, default True
            False: only the parameters' gradients (a first layer); dx is None.

        Returns
        -------
        dx : ndarray or None
            Gradient with respect to the last forward's input (`out` if given);
            None with ``need_dx=False``.
        dresidual : ndarray
            Only after a forward with `residual`: returned as ``(dx, dresidual)``.

        Raises
        ------
        RuntimeError
            If no forward call was made (or since ``load_state_dict``).
        TypeError, ValueError
            As ``fastbn.backward``: dy of another dtype or shape than x, a bad
            out, or a forward that wrote over its input.

        Examples
        --------
        >>> import numpy as np
        >>> import fastbn
        >>> bn = fastbn.BatchNorm(2)
        >>> x = np.array([[1.0, 8.0], [2.0, 4.0], [6.0, 3.0]], np.float32)
        >>> y = bn(x)
        >>> dx = bn.backward(np.array([[1.0, -1.0], [0.5, 2.0], [-2.0, 1.0]], np.float32))
        >>> print(np.round(dx, 4))
        [[-0.022  -0.0772]
         [ 0.0276  0.3858]
         [-0.0055 -0.3086]]
        >>> print(np.round(bn.grads["gamma"], 4), bn.grads["beta"])
        [-3.9347 -3.2404] [-0.5  2. ]

        Two forwards, then their backwards, with explicit caches:

        >>> y1, c1 = bn.forward(x, return_cache=True)
        >>> y2, c2 = bn.forward(2 * x, return_cache=True)
        >>> dx2 = bn.backward(np.ones_like(y2), cache=c2)
        >>> dx1 = bn.backward(np.ones_like(y1), cache=c1)
        """
        cache = self._backward_cache(cache)
        dx, dgamma, dbeta, *dresidual = _fastbn().backward(
            dy, cache, out=self._grad_outs(cache, out), need_dx=need_dx)
        self._store_grads(cache, dgamma, dbeta)
        return (dx, *dresidual) if dresidual else dx

    def _backward_cache(self, cache):
        if cache is None:
            cache = self._cache
            if cache is None:
                raise RuntimeError("BatchNorm.backward called before forward: call the layer "
                                   "on a batch first")
        return cache

    # -- steps shared with SyncBatchNorm ------------------------------------------------
    def _step_momentum(self, update):
        """The momentum of this step: cumulative averaging when momentum is None."""
        if update and self.momentum is None:
            return 1.0 / (self.num_batches_tracked + 1)
        return 0.0 if self.momentum is None else self.momentum

    def _grad_outs(self, cache, out):
        """The backward's out=: dx's buffer, plus grads["gamma"/"beta"] where they can be
        written in place (arrays of the parameters' shape and dtype; not when accumulating:
        they are added to afterwards)."""
        grad_out = [None, None]
        if self.accumulate_grads:
            return out
        if getattr(cache, "residual", None) is not None:
            grad_out.append(None)  # dresidual: a new array
        for i, key in enumerate(_PARAM_KEYS):
            p, g = getattr(cache, key), self.grads.get(key)
            if p is not None and isinstance(g, np.ndarray) and g.shape == p.shape \
                    and g.dtype == p.dtype and g.flags.writeable:
                grad_out[i] = g
        return out if all(g is None for g in grad_out) else (out, *grad_out)

    def _store_grads(self, cache, dgamma, dbeta):
        for key, grad in (("gamma", dgamma), ("beta", dbeta)):
            if getattr(cache, key) is None:
                continue
            if self.accumulate_grads:
                g = self.grads.get(key)
                if isinstance(g, np.ndarray) and g.shape == grad.shape and g.flags.writeable:
                    # in place: an optimiser's reference to the array stays valid
                    np.add(g, grad, out=g, casting="unsafe")
                    continue
                grad = grad if g is None else g + grad
            self.grads[key] = grad

    # -- state ----------------------------------------------------------------------------
    def _expected_keys(self):
        keys = list(_PARAM_KEYS) if self.affine else []
        if self.track_running_stats:
            keys += list(_BUFFER_KEYS)
        return keys

    def state_dict(self):
        """The layer's state as a dict of copies, as in PyTorch.

        Returns
        -------
        dict
            ``"gamma"``, ``"beta"`` (if affine), ``"running_mean"``,
            ``"running_var"`` and ``"num_batches_tracked"`` (an int64 0-d array;
            if track_running_stats), all copies.

        See Also
        --------
        load_state_dict, save

        Examples
        --------
        >>> import fastbn
        >>> sorted(fastbn.BatchNorm(3).state_dict())
        ['beta', 'gamma', 'num_batches_tracked', 'running_mean', 'running_var']
        """
        d = {}
        if self.affine:
            d["gamma"] = np.array(self.params["gamma"], copy=True)
            d["beta"] = np.array(self.params["beta"], copy=True)
        if self.track_running_stats:
            d["running_mean"] = self.running_mean.copy()
            d["running_var"] = self.running_var.copy()
            d["num_batches_tracked"] = np.array(self.num_batches_tracked, dtype=np.int64)
        return d

    def load_state_dict(self, state):
        """Load a ``state_dict()`` into the layer.

        Keys must match exactly; values are validated before anything is changed,
        then copied into the layer's arrays (keeping its dtype).

        Parameters
        ----------
        state : mapping
            The keys of ``state_dict()`` exactly, with array_like values of real
            numbers: (C,) vectors and an integer ``num_batches_tracked`` >= 0.

        Raises
        ------
        TypeError
            If state is not a mapping, or a value does not hold real numbers.
        KeyError
            If keys are missing or unexpected (the message lists them).
        ValueError
            If a vector does not have shape (C,), running_var has a negative
            value, or num_batches_tracked is not a non-negative integer.

        Notes
        -----
        The cache of the last forward is dropped: call forward again before
        backward.

        Examples
        --------
        >>> import numpy as np
        >>> import fastbn
        >>> bn = fastbn.BatchNorm(2)
        >>> y = bn(np.array([[1.0, 2.0], [3.0, 6.0]], dtype=np.float32))
        >>> other = fastbn.BatchNorm(2)
        >>> other.load_state_dict(bn.state_dict())
        >>> print(other.running_mean, other.num_batches_tracked)
        [0.2 0.4] 1
        """
        if not hasattr(state, "keys") or not hasattr(state, "__getitem__"):
            raise TypeError(f"state must be a mapping, got {_describe(state)}")
        expected = self._expected_keys()
        given = set(state.keys())
        missing = [k for k in expected if k not in given]
        unexpected = sorted(str(k) for k in given - set(expected))
        if missing or unexpected:
            parts = []
            if missing:
                parts.append(f"missing keys {missing}")
            if unexpected:
                parts.append(f"unexpected keys {unexpected}")
            raise KeyError("load_state_dict: " + "; ".join(parts) + f" (expected exactly {expected})")
        C = self.num_features
        values = {}
        for key in expected:
            v = np.asarray(state[key])
            if v.dtype.kind not in "fiu":
                raise TypeError(f"state[{key!r}] must hold real numbers, got dtype {v.dtype}")
            if key == "num_batches_tracked":
                if v.shape != () or v.dtype.kind not in "iu" and v != np.round(v):
                    raise ValueError(f"state['num_batches_tracked'] must be an integer scalar, "
                                     f"got {v!r}")
                if v < 0:
                    raise ValueError(f"state['num_batches_tracked'] must be >= 0, got {int(v)}")
                values[key] = int(v)
                continue
            if v.shape != (C,):
                raise ValueError(f"state[{key!r}] must have shape ({C},) for a layer of {C} "
                                 f"features, got {v.shape}")
            if key == "running_var" and (v < 0).any():
                raise ValueError("state['running_var'] must be non-negative")
            values[key] = v
        if self._dtype_from_input and self.dtype != np.float64:
            # dtype=None before the first input: float64 placeholders keep the loaded values
            # exactly until the first forward converts them (once) to the input's dtype
            self._install(self._state_for(np.empty(0)))
            self._dtype_from_input = True
        for key in _PARAM_KEYS:
            if key in values:
                p = self.params.get(key)
                if isinstance(p, np.ndarray) and p.shape == (C,) and p.flags.writeable:
                    p[...] = values[key]
                else:
                    self.params[key] = values[key].astype(self.dtype)
        if self.track_running_stats:
            self.running_mean[...] = values["running_mean"]
            self.running_var[...] = values["running_var"]
            self.num_batches_tracked = values["num_batches_tracked"]
        self._cache = None

    def _config(self):
        return {"num_features": self.num_features, "axis": self.axis, "eps": self.eps,
                "momentum": self.momentum, "affine": self.affine,
                "track_running_stats": self.track_running_stats,
                "dtype": None if self._dtype_from_input else self.dtype.name,
                "activation": self.activation, "unbiased_running_var": self.unbiased_running_var,
                "accumulate_grads": self.accumulate_grads, **self._extra_config()}

    def _extra_config(self):
        """The constructor arguments of issue 20 that differ from their defaults (only
        those: SyncBatchNorm and older files do not know them)."""
        extra = {"negative_slope": self.negative_slope,
                 "renorm": self.renorm,
                 "virtual_batch_size": self.virtual_batch_size,
                 "stats_frozen": self.stats_frozen}
        defaults = {"negative_slope": 0.01, "renorm": None, "virtual_batch_size": None,
                    "stats_frozen": False}
        return {k: v for k, v in extra.items() if v != defaults[k]}

    def save(self, path):
        """Write the configuration and ``state_dict()`` to an .npz file.

        The file is written at exactly ``path`` (a path or a binary file object);
        read it back with ``BatchNorm.load``.

        Parameters
        ----------
        path : str, os.PathLike or binary file object
            Where to write. A path is used as given (no ``.npz`` is appended).

        See Also
        --------
        load

        Examples
        --------
        >>> import io
        >>> import fastbn
        >>> f = io.BytesIO()
        >>> fastbn.BatchNorm(4, eps=1e-3).save(f)
        >>> _ = f.seek(0)
        >>> fastbn.BatchNorm.load(f).eps
        0.001
        """
        arrays = self.state_dict()
        arrays[_CONFIG_KEY] = np.array(json.dumps(self._config()))
        if isinstance(path, (str, os.PathLike)):
            with open(path, "wb") as f:
                np.savez(f, **arrays)
        else:
            np.savez(path, **arrays)

    @classmethod
    def load(cls, path, **kwargs):
        """A new layer from a file written by ``save`` (no pickles are loaded).

        Extra keyword arguments go to the constructor (``comm=`` for SyncBatchNorm).

        Parameters
        ----------
        path : str, os.PathLike or binary file object
            A file written by ``save``.
        **kwargs
            Passed to the constructor.

        Returns
        -------
        BatchNorm
            A new layer with the saved configuration and state.

        Raises
        ------
        ValueError
            If the file was not written by ``save``.

        Examples
        --------
        >>> import io
        >>> import fastbn
        >>> f = io.BytesIO()
        >>> fastbn.BatchNorm(4, axis=-1).save(f)
        >>> _ = f.seek(0)
        >>> bn = fastbn.BatchNorm.load(f)
        >>> bn.num_features, bn.axis
        (4, -1)
        """
        with np.load(path, allow_pickle=False) as f:
            if _CONFIG_KEY not in f.files:
                raise ValueError(f"{path!r} was not written by BatchNorm.save: it has no "
                                 f"{_CONFIG_KEY!r} entry")
            config = json.loads(str(f[_CONFIG_KEY]))
            state = {k: f[k] for k in f.files if k != _CONFIG_KEY}
        num_features = config.pop("num_features")
        if isinstance(config.get("axis"), list):  # JSON has no tuples
            config["axis"] = tuple(config["axis"])
        layer = cls(num_features, **config, **kwargs)
        layer.load_state_dict(state)
        return layer
