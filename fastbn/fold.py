"""Folding an eval-mode batch norm into the linear or convolution layer before it.

For inference, ``bn(layer(x))`` with frozen statistics is itself an affine map of
``layer(x)``, per output channel, so it can be merged into the layer's weight and
bias: one pass over the data fewer.
"""
import numpy as np

from ._checks import _describe, channel_axis, float_array, real_number, refuse_subclass

__all__ = ["fold_linear", "fold_batchnorm"]


def _vector(v, channels, name, *, required=True):
    if v is None:
        if required:
            raise TypeError(f"{name} is required (an array of shape ({channels},))")
        return None
    arr = np.asarray(v) if isinstance(v, (list, tuple)) else v
    if not isinstance(arr, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of shape ({channels},), got {_describe(v)}")
    refuse_subclass(arr, name)  # a matrix's or masked array's arithmetic differs
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"{name} must hold real numbers, got dtype {arr.dtype}")
    if arr.shape != (channels,):
        raise ValueError(f"{name} must have shape ({channels},) to match the {channels} output "
                         f"channels of W, got {arr.shape}")
    arr = arr.astype(np.float64)
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} must be finite")
    return arr


def fold_linear(W, b, gamma, beta, running_mean, running_var, eps=1e-5, *, axis=0):
    """Weight and bias of one layer equal to ``layer`` followed by an eval-mode batch norm.

    For inference: a linear or convolution layer followed by a batch norm with
    frozen statistics is one affine map per output channel, so the batch norm
    can be merged into the layer's weight and bias (one pass over the data fewer).

    Parameters
    ----------
    W : float32/float64 ndarray, ndim >= 2
        The layer's weight. ``axis`` is its output-channel axis:
        ``0`` for a linear layer stored (out, in) as in PyTorch, and for a convolution
        (Cout, Cin, kh, kw, ...); ``1`` for a transposed convolution (Cin, Cout, kh, kw, ...)
        with groups=1; ``1`` or ``-1`` for a NumPy-style linear layer ``y = x @ W`` with W
        of shape (in, out).
    b : (Cout,) array or None
        The layer's bias; ``None`` means no bias (zero).
    gamma, beta : (Cout,) arrays or None
        The batch norm's affine parameters; ``None`` means 1 and 0.
    running_mean, running_var : (Cout,) arrays
        The statistics used in eval mode (running_var >= 0).
    eps : float > 0, default 1e-5
        The batch norm's eps.
    axis : int, default 0
        The output-channel axis of W (see W).

    Returns
    -------
    W_folded : ndarray
        Of W's shape and dtype.
    b_folded : ndarray of shape (Cout,)
        Of W's dtype (also when b is None).

    Raises
    ------
    TypeError
        If W is not a float32/float64 ndarray; running_mean or running_var is
        None; a vector is not an array of real numbers; eps is not a real
        number; axis is not an integer.
    ValueError
        If W has fewer than 2 dimensions; axis is out of bounds; a vector does
        not have shape (Cout,) or is not finite; running_var is negative;
        eps <= 0.

    See Also
    --------
    fold_batchnorm : The same, from a ``fastbn.BatchNorm`` layer.

    Notes
    -----
    With ``s = gamma / sqrt(running_var + eps)`` per output channel::

        W_folded = W * s        (s broadcast along the output-channel axis of W)
        b_folded = (b - running_mean) * s + beta

    Computed in float64, then cast back to W's dtype.

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> rng = np.random.default_rng(0)
    >>> W, b = rng.normal(size=(3, 4)), rng.normal(size=3)  # linear layer, (out, in)
    >>> gamma, beta = np.array([1.0, 2.0, 0.5]), np.array([0.0, 1.0, -1.0])
    >>> mean, var = np.array([0.1, -0.2, 0.3]), np.array([1.0, 4.0, 0.25])
    >>> W_folded, b_folded = fastbn.fold_linear(W, b, gamma, beta, mean, var)
    >>> x = rng.normal(size=(5, 4))
    >>> y, _ = fastbn.forward(x @ W.T + b, gamma, beta, training=False,
    ...                       running_mean=mean, running_var=var)
    >>> np.allclose(x @ W_folded.T + b_folded, y)
    True
    """
    float_array(W, "W")  # the core functions' check: a plain float32/float64 ndarray
    if W.ndim < 2:
        raise ValueError(f"W must have at least 2 dimensions (a linear or convolution weight), "
                         f"got shape {W.shape}")
    ax = channel_axis(axis, W.ndim)
    C = W.shape[ax]
    eps = real_number(eps, "eps", low=0.0, low_open=True)
    b = _vector(b, C, "b", required=False)
    gamma = _vector(gamma, C, "gamma", required=False)
    beta = _vector(beta, C, "beta", required=False)
    mean = _vector(running_mean, C, "running_mean")
    var = _vector(running_var, C, "running_var")
    if (var < 0).any():
        raise ValueError("running_var must be non-negative")
    scale = 1.0 / np.sqrt(var + eps)
    if gamma is not None:
        scale = scale * gamma
    shape = [1] * W.ndim
    shape[ax] = C
    W_folded = (W.astype(np.float64) * scale.reshape(shape)).astype(W.dtype)
    b_folded = ((0.0 if b is None else b) - mean) * scale
    if beta is not None:
        b_folded = b_folded + beta
    return W_folded, b_folded.astype(W.dtype)


def fold_batchnorm(W, b, bn, *, axis=0):
    """``fold_linear`` with the parameters and running statistics of a ``fastbn.BatchNorm``.

    The layer must track running statistics and have no fused activation (a ReLU after
    the batch norm cannot be folded into the weights).

    Parameters
    ----------
    W : float32/float64 ndarray, ndim >= 2
        The weight of the layer before the batch norm (see ``fold_linear``).
    b : (Cout,) array or None
        Its bias; ``None`` means no bias.
    bn : fastbn.BatchNorm
        The batch norm, with ``bn.num_features == Cout``; its mode (train or
        eval) does not matter: its running statistics are used.
    axis : int, default 0
        The output-channel axis of W.

    Returns
    -------
    W_folded : ndarray
        Of W's shape and dtype.
    b_folded : ndarray of shape (Cout,)
        Of W's dtype.

    Raises
    ------
    TypeError
        If bn is not a ``fastbn.BatchNorm``; otherwise as ``fold_linear``.
    ValueError
        If bn has ``track_running_stats=False`` or a fused activation;
        otherwise as ``fold_linear``.

    See Also
    --------
    fold_linear

    Examples
    --------
    >>> import numpy as np
    >>> import fastbn
    >>> rng = np.random.default_rng(0)
    >>> W, b = rng.normal(size=(3, 4)), rng.normal(size=3)
    >>> bn = fastbn.BatchNorm(3, dtype=np.float64)
    >>> y = bn(rng.normal(size=(8, 3)))  # a training step updates the running statistics
    >>> W_folded, b_folded = fastbn.fold_batchnorm(W, b, bn)
    >>> x = rng.normal(size=(5, 4))
    >>> np.allclose(x @ W_folded.T + b_folded, bn.eval()(x @ W.T + b))
    True
    """
    from .layers import BatchNorm
    if not isinstance(bn, BatchNorm):
        raise TypeError(f"bn must be a fastbn.BatchNorm, got {_describe(bn)}")
    if not bn.track_running_stats:
        raise ValueError("bn has track_running_stats=False: it normalises with batch "
                         "statistics even in eval mode, which cannot be folded")
    if bn.activation is not None:
        raise ValueError(f"bn has a fused activation ({bn.activation!r}): only the affine part "
                         "can be folded; fold a layer without activation and apply it after")
    return fold_linear(W, b, bn.params.get("gamma"), bn.params.get("beta"), bn.running_mean,
                       bn.running_var, bn.eps, axis=axis)
