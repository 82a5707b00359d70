"""BatchNorm's modes and parameters: train/eval, the frozen-statistics mode, the
``gamma``/``beta`` views, ``zero_grad`` and ``reset_running_stats``.

One of the parts ``fastbn.layers.BatchNorm`` is made of (see fastbn/layers.py): a mixin
with no state of its own, documented as BatchNorm's.
"""
from ._checks import bool_arg as _check_bool


class BatchNormModes:
    """The modes and parameter views of `fastbn.layers.BatchNorm` (a mixin)."""

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
