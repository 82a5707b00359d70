"""The data classes of a forward call: `Cache`, what backward needs from it (public,
as ``fastbn.Cache``), and `ForwardArgs`, its validated arguments.

Pickles of a Cache made before this module existed name ``fastbn._checks.Cache``:
fastbn._checks still imports it, so they load.
"""
import numpy as np

__all__ = ["Cache", "ForwardArgs"]


class Cache:
    """What `backward` needs from a `forward` call: O(C) statistics plus a reference to x.

    Returned by ``fastbn.forward`` (users read it; they do not build one). It holds
    per-channel vectors of shape (C,) and references to the forward's arrays, and
    nothing of the size of x: x is kept by reference, not copied.

    Attributes
    ----------
    mean : ndarray of float64, shape (C,)
        The mean the forward normalised with: the batch mean in training mode,
        ``running_mean`` in evaluation mode. Assigning a new mean also drops
        `mean_lo` (it is the residual of the old one): backward then uses the
        new mean exactly, with either backend.
    mean_lo : ndarray of float64, shape (C,)
        The rounding residual of `mean` (``mean + mean_lo`` is the batch mean to
        about twice float64's precision), which the C kernels carry for accuracy
        far from 0; zeros from the NumPy backend, in evaluation mode and after
        `mean` was assigned. Backward refuses one larger than an ulp of `mean`.
    var : ndarray of float64, shape (C,)
        The variance the forward normalised with: the *biased* batch variance
        (divided by `count`) in training mode, ``running_var`` in evaluation mode.
        Not stored: recomputed from `invstd` as ``1 / invstd**2 - eps``, within a few
        float64 ulps of ``var + eps`` (values below that resolution read as 0).
    invstd : ndarray of float64, shape (C,)
        ``1 / sqrt(var + eps)``.
    count : int
        Values per channel of x, ``m = x.size // C``: the unbiased variance is
        ``var * count / (count - 1)``.
    axis : int
        The channel axis, as a non-negative index into ``x.shape``.
    eps : float
        The eps of the forward.
    training : bool
        Whether the forward used batch statistics (True) or running ones.
    activation : None or str
        The forward's fused activation (``"relu"``), or None.
    x : ndarray
        The forward's input itself (a reference): backward reads it, so it must
        not be changed in place before ``backward``.
    gamma, beta : ndarray of shape (C,) or None
        Copies, in the parameters' dtype, of the values the forward used (changing
        the parameters in place afterwards does not change the gradients), or None.
    x_overwritten, x_written : bool
        Whether the forward's output or an earlier backward's output was written
        over x; backward then refuses the cache.

    See Also
    --------
    fastbn.forward, fastbn.backward

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> x = np.array([[1.0, 8.0], [2.0, 4.0], [6.0, 3.0]])
    >>> y, cache = fastbn.forward(x)
    >>> print(cache.mean, np.round(cache.var, 4), np.round(cache.invstd, 4))
    [3. 5.] [4.6667 4.6667] [0.4629 0.4629]
    >>> cache.count, cache.axis, cache.training, cache.x is x
    (3, 1, True, True)
    """
    __slots__ = ("x", "gamma", "beta", "_mean", "_mean_lo", "invstd", "count", "axis", "eps",
                 "training", "activation", "x_overwritten", "x_written", "_var")

    def __init__(self, x, gamma, beta, mean, invstd, var=None, *, axis, eps, training,
                 activation=None, mean_lo=None, x_overwritten=False, copy_params=True):
        """`var` is accepted for compatibility and not stored (see `var`); with
        `copy_params=False`, gamma and beta must already be private copies."""
        if copy_params:
            gamma = None if gamma is None else np.array(gamma, copy=True)
            beta = None if beta is None else np.array(beta, copy=True)
        self.x, self.gamma, self.beta = x, gamma, beta
        self.mean, self.invstd, self._var = mean, invstd, None
        self._mean_lo = mean_lo  # None: zeros, made when asked for (not stored)
        self.count = x.size // x.shape[axis] if x.shape[axis] else 0
        self.axis, self.eps, self.training = axis, eps, training
        self.activation, self.x_overwritten = activation, x_overwritten
        self.x_written = False  # set by a backward that wrote over x

    @property
    def mean(self):
        """The mean the forward normalised with (float64); assigning drops mean_lo."""
        return self._mean

    @mean.setter
    def mean(self, value):
        self._mean, self._mean_lo = value, None

    @property
    def mean_lo(self):
        """Residual of the float64 mean (zeros from the reference and in eval mode)."""
        return np.zeros(np.shape(self.mean)) if self._mean_lo is None else self._mean_lo

    @mean_lo.setter
    def mean_lo(self, value):
        self._mean_lo = value

    @property
    def var(self):
        """Variance the forward normalised with (batch or running), float64, recomputed
        from invstd as 1 / invstd**2 - eps (not stored: it would cost 8 bytes per channel):
        within a few float64 ulps of var + eps; values below that resolution read as 0."""
        if self._var is not None:
            return self._var
        invstd = np.asarray(self.invstd, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            v = 1.0 / (invstd * invstd) - self.eps
            v[np.abs(v) <= 8 * np.finfo(np.float64).eps * (np.abs(v) + self.eps)] = 0.0
        return v

    @var.setter
    def var(self, value):
        self._var = value

    def __repr__(self):
        return (f"Cache(shape={self.x.shape}, dtype={self.x.dtype}, axis={self.axis}, "
                f"training={self.training}, activation={self.activation})")


class ForwardArgs:
    """Validated forward() arguments (filled by fastbn._checks.check_forward)."""
    __slots__ = ("gamma", "beta", "axis", "eps", "training", "running_mean", "running_var",
                 "momentum", "out", "activation", "count", "channels", "unbiased_running_var")
