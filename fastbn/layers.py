"""A batch-norm layer for NumPy trainers, in the manner of ``torch.nn.BatchNorm{1,2,3}d``.

The layer holds the learnable parameters, their gradients and the running
statistics, and calls ``fastbn.forward`` / ``fastbn.backward`` (looked up on the
``fastbn`` module at call time, so the backend in use is the one ``fastbn``
chose: the C kernels, or the NumPy reference).
"""
import json
import os
import threading
from functools import partial

import numpy as np

from ._checks import FLOAT_DTYPES, _describe, channel_axis, is_integer, real_number
from ._checks import activation as _check_activation

__all__ = ["BatchNorm"]

_PARAM_KEYS = ("gamma", "beta")
_BUFFER_KEYS = ("running_mean", "running_var", "num_batches_tracked")
_CONFIG_KEY = "__fastbn_batchnorm_config__"


def _fastbn():
    import fastbn  # the package is fully imported by the time a layer is called
    return fastbn


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {_describe(value)}")
    return bool(value)


class BatchNorm:
    """Batch normalisation over the channel axis ``axis`` of inputs of any rank >= 2.

    ``BatchNorm(C)`` on (N, C), (N, C, L), (N, C, H, W) or (N, C, D, H, W) inputs
    behaves as ``torch.nn.BatchNorm1d/2d/3d(C)``; ``axis=-1`` serves channels-last
    layouts such as NHWC.

    Parameters
    ----------
    num_features : int
        Number of channels C (the length of ``x.shape[axis]``).
    axis : int
        The channel axis (default 1; -1 for channels-last).
    eps : float
        Added to the variance inside the square root (> 0).
    momentum : float in [0, 1] or None
        Weight of the new batch in the running statistics; ``None`` means a
        cumulative moving average (factor ``1 / num_batches_tracked``).
    affine : bool
        Learn a per-channel scale ``gamma`` (ones) and shift ``beta`` (zeros).
    track_running_stats : bool
        Keep running statistics and use them in eval mode. When False, batch
        statistics are used in eval mode too.
    dtype : float32 or float64
        Dtype of the parameters and running statistics. Inputs may be of either
        float dtype; outputs have the input's dtype.
    activation : None or "relu"
        A ReLU fused into the layer (``relu(bn(x))`` in one pass).

    Attributes
    ----------
    params, grads : dict
        ``{"gamma": ..., "beta": ...}`` (empty when ``affine=False``). ``backward``
        writes the gradients into ``grads`` in place; an optimiser may update
        ``params`` in place or replace its entries.
    running_mean, running_var : ndarray or None
    num_batches_tracked : int
    training : bool
    """

    def __init__(self, num_features, *, axis=1, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32, activation=None):
        if not is_integer(num_features):
            raise TypeError(f"num_features must be an integer, got {_describe(num_features)}")
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if not is_integer(axis):
            raise TypeError(f"axis must be an integer, got {_describe(axis)}")
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype must be float32 or float64, got {dtype!r}") from None
        if dt not in FLOAT_DTYPES:
            raise TypeError(f"dtype must be float32 or float64, got {dt}")
        self.num_features = int(num_features)
        self.axis = int(axis)
        self.eps = real_number(eps, "eps", low=0.0, low_open=True)
        self.momentum = None if momentum is None else real_number(momentum, "momentum", low=0.0, high=1.0)
        self.affine = _check_bool(affine, "affine")
        self.track_running_stats = _check_bool(track_running_stats, "track_running_stats")
        self.dtype = dt
        self.activation = _check_activation(activation)
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
        return self.params.get("gamma")

    @property
    def beta(self):
        return self.params.get("beta")

    def train(self, mode=True):
        """Switch to training mode (batch statistics); returns self."""
        self.training = _check_bool(mode, "mode")
        return self

    def eval(self):
        """Switch to evaluation mode (running statistics, if tracked); returns self."""
        self.training = False
        return self

    def zero_grad(self):
        for g in self.grads.values():
            g[...] = 0

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean[...] = 0
            self.running_var[...] = 1
        self.num_batches_tracked = 0

    def __repr__(self):
        extra = "" if self.activation is None else f", activation={self.activation!r}"
        return (f"BatchNorm({self.num_features}, axis={self.axis}, eps={self.eps}, "
                f"momentum={self.momentum}, affine={self.affine}, "
                f"track_running_stats={self.track_running_stats}, dtype={self.dtype.name}{extra})")

    # -- forward / backward ---------------------------------------------------------------
    def _check_input(self, x):
        if not isinstance(x, np.ndarray):
            raise TypeError(f"x must be a numpy.ndarray, got {_describe(x)}")
        if x.ndim < 2:
            raise ValueError(f"x must have at least 2 dimensions (batch and channel), got shape {x.shape}")
        axis = channel_axis(self.axis, x.ndim)
        if x.shape[axis] != self.num_features:
            raise ValueError(f"expected {self.num_features} channels along axis {self.axis}, "
                             f"got input of shape {x.shape}")
        return axis

    def forward(self, x, *, out=None):
        """Normalise ``x``; in training mode update the running statistics (if tracked).

        The running statistics, ``num_batches_tracked`` and the cache for ``backward``
        change together, in one step that an interrupt (Ctrl-C) does not split; an error
        leaves them as they were."""
        self._check_input(x)
        impl = _fastbn()._impl
        use_batch_stats = self.training or not self.track_running_stats
        update = self.training and self.track_running_stats
        momentum = self._step_momentum(update)
        running = (None, None)
        if update or not use_batch_stats:
            running = (self.running_mean, self.running_var)
        count = self.num_batches_tracked + 1 if update else None
        y, _ = impl.forward_then(x, self.params.get("gamma"), self.params.get("beta"),
                                 self.axis, self.eps, use_batch_stats, *running, momentum,
                                 out, self.activation, partial(self._commit, count))
        return y

    def _commit(self, num_batches_tracked, cache):
        """The layer's part of a forward's state update (idempotent: it may be rerun).
        `num_batches_tracked` is None when it does not change (eval mode)."""
        if num_batches_tracked is not None:
            self.num_batches_tracked = num_batches_tracked
        self._cache = cache

    __call__ = forward

    def backward(self, dy, *, out=None):
        """Gradient with respect to the input of the last forward call.

        Fills ``grads["gamma"]`` and ``grads["beta"]`` (in place when they are arrays of
        the right shape and dtype) and returns dx (written to ``out`` if given).
        """
        if self._cache is None:
            raise RuntimeError("BatchNorm.backward called before forward: call the layer on a "
                               "batch first")
        cache = self._cache
        dx, dgamma, dbeta = _fastbn().backward(dy, cache, out=self._grad_outs(cache, out))
        self._store_grads(cache, dgamma, dbeta)
        return dx

    # -- steps shared with SyncBatchNorm ------------------------------------------------
    def _step_momentum(self, update):
        """The momentum of this step: cumulative averaging when momentum is None."""
        if update and self.momentum is None:
            return 1.0 / (self.num_batches_tracked + 1)
        return 0.0 if self.momentum is None else self.momentum

    def _grad_outs(self, cache, out):
        """The backward's out=: dx's buffer, plus grads["gamma"/"beta"] where they can be
        written in place (arrays of the parameters' shape and dtype)."""
        grad_out = [None, None]
        for i, key in enumerate(_PARAM_KEYS):
            p, g = getattr(cache, key), self.grads.get(key)
            if p is not None and isinstance(g, np.ndarray) and g.shape == p.shape \
                    and g.dtype == p.dtype and g.flags.writeable:
                grad_out[i] = g
        return out if all(g is None for g in grad_out) else (out, *grad_out)

    def _store_grads(self, cache, dgamma, dbeta):
        if cache.gamma is not None:
            self.grads["gamma"] = dgamma
        if cache.beta is not None:
            self.grads["beta"] = dbeta

    # -- state ----------------------------------------------------------------------------
    def _expected_keys(self):
        keys = list(_PARAM_KEYS) if self.affine else []
        if self.track_running_stats:
            keys += list(_BUFFER_KEYS)
        return keys

    def state_dict(self):
        """Copies of gamma, beta (if affine), running_mean, running_var and
        num_batches_tracked (if track_running_stats), as in PyTorch."""
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
        """Load a ``state_dict()``: keys must match exactly; values are validated before
        anything is changed, then copied into the layer's arrays (keeping its dtype)."""
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
                "track_running_stats": self.track_running_stats, "dtype": self.dtype.name,
                "activation": self.activation}

    def save(self, path):
        """Write the configuration and ``state_dict()`` to an .npz file at exactly ``path``
        (a path or a binary file object); read it back with ``BatchNorm.load``."""
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

        Extra keyword arguments go to the constructor (``comm=`` for SyncBatchNorm)."""
        with np.load(path, allow_pickle=False) as f:
            if _CONFIG_KEY not in f.files:
                raise ValueError(f"{path!r} was not written by BatchNorm.save: it has no "
                                 f"{_CONFIG_KEY!r} entry")
            config = json.loads(str(f[_CONFIG_KEY]))
            state = {k: f[k] for k in f.files if k != _CONFIG_KEY}
        num_features = config.pop("num_features")
        layer = cls(num_features, **config, **kwargs)
        layer.load_state_dict(state)
        return layer

    save_npz = save
    load_npz = load
