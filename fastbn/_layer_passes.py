"""BatchNorm's forward and backward: the checks of a call, the dtype a ``dtype=None``
layer takes from its first input, the one-step commit of the new state, and the
gradient buffers.

One of the parts ``fastbn.layers.BatchNorm`` is made of (see fastbn/layers.py); the
steps below the forward and backward are shared with
``fastbn.distributed.SyncBatchNorm``.
"""
import math
from functools import partial

import numpy as np

from ._checks import _describe, channel_axis, param_dtype
from ._checks import bool_arg as _check_bool
from ._layer_state import _PARAM_KEYS


def _fastbn():
    """The fastbn package, for the backend it chose (the C kernels or the NumPy
    reference): imported at call time, when the package is fully imported."""
    import fastbn
    return fastbn


class BatchNormPasses:
    """The forward and backward of `fastbn.layers.BatchNorm` (a mixin)."""

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
        y, cache = impl._front_forward_then(x, state.get("gamma"), state.get("beta"),
                                            self.axis, self.eps, use_batch_stats, *running,
                                            momentum, out, self.activation,
                                            partial(self._commit, count, state),
                                            self.unbiased_running_var,
                                            (mask, self.renorm if use_batch_stats else None,
                                             self.virtual_batch_size, residual,
                                             self.negative_slope))
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
