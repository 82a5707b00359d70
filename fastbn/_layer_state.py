"""BatchNorm's state: ``state_dict`` / ``load_state_dict`` (PyTorch's), and ``save`` /
``load`` of the configuration and state in one .npz file (no pickles).

One of the parts ``fastbn.layers.BatchNorm`` is made of (see fastbn/layers.py).
"""
import json
import os

import numpy as np

from ._checks import _describe

_PARAM_KEYS = ("gamma", "beta")
_BUFFER_KEYS = ("running_mean", "running_var", "num_batches_tracked")
_CONFIG_KEY = "__fastbn_batchnorm_config__"


class BatchNormState:
    """The state_dict, save and load of `fastbn.layers.BatchNorm` (a mixin)."""

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
