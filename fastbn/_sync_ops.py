"""fastbn.distributed's functions: sync_forward and sync_backward (the plain call;
the keywords of issue 20 in fastbn._sync_features)."""
from functools import partial

import numpy as np
from mpi4py import MPI

from ._checks import (Cache, _describe, channel_axis, channel_vector, check_backward,
                      data_array, out_array, real_number, running_vector)
from ._checks import activation as _check_activation
from ._checks import commit, overlaps, warn_momentum
from ._checks import bool_arg as _check_bool
from ._checks import store as _store
from ._sync_comm import _exchange, _locked
from ._sync_protocol import _BACKWARD, _FORWARD, _SLOT, _add, _flags, _header, _merge_moments
from .layers import _fastbn

__all__ = ["sync_forward", "sync_backward", "SyncCache"]


class SyncCache(Cache):
    """The Cache of a training-mode ``sync_forward``.

    Also the global count per channel (``count`` stays the local one) and the
    communicator the statistics were taken over.

    Attributes
    ----------
    global_count : int
        Values per channel in the union of all ranks' batches.
    comm : mpi4py.MPI.Comm
        The communicator of the forward; ``sync_backward`` must use the same.

    call : int
        The number of this synchronised call on the communicator: its backward
        must be the same forward's on every rank.

    The other attributes are those of ``fastbn.Cache`` (``mean``, ``var`` and
    ``invstd`` are the global statistics).
    """
    __slots__ = ("global_count", "comm", "call")

    def __init__(self, *args, global_count, comm, call, **kwargs):
        super().__init__(*args, **kwargs)
        self.global_count, self.comm, self.call = global_count, comm, call


def _check_comm(comm):
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm must be an mpi4py.MPI communicator (e.g. MPI.COMM_WORLD), "
                        f"got {_describe(comm)}")
    if comm == MPI.COMM_NULL:
        raise ValueError("comm is MPI.COMM_NULL")
    if comm.Is_inter():
        raise ValueError("comm must be an intra-communicator, got an inter-communicator")
    return comm


def _check_local(x, gamma, beta, axis, eps, running_mean, running_var, momentum, out, activation):
    """The checks of fastbn.forward in training mode, except the count per channel,
    which is only known globally. Returns (axis, C, gamma, beta, eps, momentum, act)."""
    data_array(x, "x")
    axis = channel_axis(axis, x.ndim)
    C = x.shape[axis]
    gamma = channel_vector(gamma, C, "gamma", like=x.dtype)
    beta = channel_vector(beta, C, "beta", like=x.dtype)
    eps = real_number(eps, "eps", low=0.0, low_open=True)
    momentum = real_number(momentum, "momentum", low=0.0, high=1.0)
    if (running_mean is None) != (running_var is None):
        raise ValueError("running_mean and running_var must be given together")
    running_vector(running_mean, C, "running_mean", update=True)
    running_vector(running_var, C, "running_var", update=True)
    if running_mean is not None and np.may_share_memory(running_mean, running_var):
        raise ValueError("running_mean and running_var must not share memory")
    out_array(out, x.shape, x.dtype)
    return axis, C, gamma, beta, eps, momentum, _check_activation(activation)


def sync_forward(x, gamma=None, beta=None, *, comm, axis=1, eps=1e-5, training=True,
                 running_mean=None, running_var=None, momentum=0.1, out=None, activation=None,
                 unbiased_running_var=True, mask=None, renorm=None, residual=None,
                 negative_slope=0.01):
    """``fastbn.forward`` with the statistics of the union of the batches of all ranks of ``comm``.

    Call it on every rank of ``comm`` with that rank's part of the batch (any size along
    the non-channel axes, empty included) and the same ``gamma``/``beta``/running
    statistics, ``axis``, ``eps``, ``training``, ``momentum`` and ``activation``. Returns
    ``(y, cache)``, ``y`` the normalised local part. In training mode, the running statistics are
    updated with the global mean, the global biased variance made unbiased with the
    global count, identically on every rank. Eval mode (``training=False``) uses the
    running statistics and does not communicate.

    Parameters
    ----------
    x : ndarray of float32 or float64, ndim >= 2
        This rank's part of the batch.
    gamma, beta : ndarray of shape (C,), optional
        Per-channel scale and shift (None means 1 and 0).
    comm : mpi4py.MPI.Comm
        An intra-communicator (e.g. ``MPI.COMM_WORLD``) over the ranks that
        share the batch.
    axis, eps, training, running_mean, running_var, momentum, out, activation
        As in ``fastbn.forward`` (momentum is the weight of the *new* batch, as
        in PyTorch: ``1 - 0.99`` for Keras' 0.99).
    unbiased_running_var : bool, default True
        As in ``fastbn.forward``: False keeps the biased global variance in
        the running variance (Keras, Flax).
    mask, renorm, residual, negative_slope
        As in ``fastbn.forward`` (``axis`` may be a tuple too): a mask's
        statistics are over the union of every rank's kept positions; renorm's
        r and d compare the global batch statistics with the running ones.
        Every rank must use a mask, or none; the same renorm, activation and
        slope; a residual, or none. ``virtual_batch_size`` is not taken: ghost
        batches are groups of one rank's rows (use ``fastbn.forward`` per rank).

    Returns
    -------
    y : ndarray
        The normalised local part, of x's shape and dtype.
    cache : SyncCache or Cache
        For ``sync_backward`` (a plain ``Cache`` in eval mode).

    Raises
    ------
    TypeError, ValueError
        As ``fastbn.forward``, on every rank when the channel count is known
        (see the module's notes); also if comm is not an intra-communicator,
        or the ranks disagree on eps or on the number of channels.
    MismatchError
        On every rank, when the ranks' calls disagree (see the module docstring).
    PeerError
        On every rank whose own arguments were valid, when another rank's were not.
    RuntimeError
        When another thread is inside a call on the same communicator.

    See Also
    --------
    sync_backward, SyncBatchNorm, fastbn.forward

    Examples
    --------
    On one process (``MPI.COMM_SELF``) it is ``fastbn.forward``; run the same
    code on every rank with ``MPI.COMM_WORLD`` under ``mpiexec``:

    >>> import numpy as np
    >>> from mpi4py import MPI
    >>> import fastbn
    >>> from fastbn.distributed import sync_forward
    >>> x = np.array([[1.0, 8.0], [2.0, 4.0], [6.0, 3.0]])
    >>> y, cache = sync_forward(x, comm=MPI.COMM_SELF)
    >>> print(np.round(y, 4))
    [[-0.9258  1.3887]
     [-0.4629 -0.4629]
     [ 1.3887 -0.9258]]
    >>> cache.global_count
    3
    """
    _check_comm(comm)
    training = _check_bool(training, "training")
    if training and running_mean is not None:
        warn_momentum(momentum)  # once per process (SyncBatchNorm warns when built)
    if not training:
        return _fastbn().forward(x, gamma, beta, axis=axis, eps=eps, training=False,
                                 running_mean=running_mean, running_var=running_var,
                                 momentum=momentum, out=out, activation=activation,
                                 unbiased_running_var=unbiased_running_var, mask=mask,
                                 residual=residual, negative_slope=negative_slope)
    return _sync_forward_train(x, gamma, beta, comm, axis, eps, running_mean, running_var,
                               momentum, out, activation,
                               unbiased_running_var=unbiased_running_var,
                               features=(mask, renorm, residual, negative_slope))



def _shifted_beta(beta, gamma, invstd, lo):
    """beta - mean_lo * gamma * invstd (float64): normalising with the float64 mean
    (mean_hi) and this beta is normalising with the double-double mean, which is how
    the C kernels use mean_lo (fbn_coefficients); beta itself without a residual."""
    if lo is None:
        return beta
    scale = invstd if gamma is None else np.asarray(gamma, np.float64) * invstd
    return (0.0 if beta is None else np.asarray(beta, np.float64)) - lo * scale


def _sync_forward_train(x, gamma, beta, comm, axis, eps, running_mean, running_var, momentum,
                        out, activation, error=None, training_mode=True,
                        unbiased_running_var=True, then=None, features=None):
    """The forward with batch statistics. `error`: a failure found by the caller on this
    rank, which joins the exchange flagging it and then raises it. `training_mode`: the
    layer's mode, which the ranks must share (a SyncBatchNorm without running statistics
    uses batch statistics in eval mode too). `then(cache)`, if given, is the last step of
    the state update, written with the running statistics in one step (the layer's).
    `features`: (mask, renorm, residual, negative_slope), issue 20's keywords."""
    if features is not None and _features().uses_features(axis, activation, *features):
        return _locked(comm, partial(_features().forward_locked, x, gamma, beta, comm, axis,
                                     eps, running_mean, running_var, momentum, out, activation,
                                     error, training_mode, unbiased_running_var, then,
                                     features))
    return _locked(comm, partial(_forward_locked, x, gamma, beta, comm, axis, eps, running_mean,
                                 running_var, momentum, out, activation, error, training_mode,
                                 unbiased_running_var, then))


def _forward_locked(x, gamma, beta, comm, axis, eps, running_mean, running_var, momentum, out,
                    activation, error, training_mode, unbiased_running_var, then, state):
    fb = _fastbn()
    if error is None:
        try:
            axis, C, gamma, beta, eps, momentum, activation = _check_local(
                x, gamma, beta, axis, eps, running_mean, running_var, momentum, out,
                activation)
            unbiased_running_var = _check_bool(unbiased_running_var,
                                               "unbiased_running_var")
        except (TypeError, ValueError) as exc:
            error = exc
    call = state.calls
    if error is None:
        count, hi, lo, m2 = fb._impl._batch_stats_lo(x, axis)
        update = running_mean is not None
        header = _header(_FORWARD, call, forward_call=call, channels=C, ndim=x.ndim,
                         axis=axis, eps=eps, momentum=momentum if update else 0.0,
                         flags=_flags(update, gamma, beta, training_mode,
                                      update and not unbiased_running_var),
                         activation=activation, count=count)
        payload = np.concatenate([hi, np.zeros(C) if lo is None else lo, m2])
    else:
        header, payload = _header(_FORWARD, call, failed=True), None
    merged, payload = _exchange(comm, state, header, payload, error, "sync_forward",
                                _merge_moments)

    total = int(merged[_SLOT["count"]])
    if total <= 1 and C:
        raise ValueError(f"expected more than 1 value per channel when training, got "
                         f"{total} over the {comm.Get_size()} ranks (local input of shape "
                         f"{x.shape})")
    mean, m2 = payload[:C].copy(), payload[2 * C:].copy()
    lo = None if lo is None else payload[C:2 * C].copy()
    var = m2 / max(total, 1)
    invstd = 1.0 / np.sqrt(var + eps)
    overwritten = out is not None and overlaps(out, x)
    y = fb.normalize(x, mean, invstd, gamma, _shifted_beta(beta, gamma, invstd, lo),
                     axis=axis, out=out, activation=activation)
    cache = SyncCache(x, gamma, beta, mean, invstd, var, axis=axis, eps=eps, training=True,
                      activation=activation, mean_lo=lo, x_overwritten=overwritten,
                      global_count=total, comm=comm, call=call)
    copies = []
    if running_mean is not None and C:
        residual = {} if lo is None else {"mean_lo": lo}  # the C backend's ema takes it
        copies = fb._impl._running_copies(running_mean, running_var, mean, var, total,
                                          momentum, unbiased=unbiased_running_var,
                                          **residual)
    if copies or then is not None:  # all or nothing, even under Ctrl-C
        commit(copies, None if then is None else partial(then, cache))
    return y, cache


def sync_backward(dy, cache, *, comm, out=None, need_dx=True):
    """``fastbn.backward`` for a ``sync_forward``: returns ``(dx, dgamma, dbeta)``.

    After a forward with ``residual``, also ``dresidual`` (this rank's part), fourth.

    ``dx`` is the local part of the gradient of the global loss; ``dgamma`` and ``dbeta``
    are the global sums (the same on every rank; do not sum them again across ranks).
    ``out`` is as in ``fastbn.backward`` (dx, or a tuple (dx, dgamma, dbeta)). Must be
    called on every rank of ``comm``, with the cache of the same synchronised forward,
    when the forward was in training mode; an eval-mode cache is differentiated
    locally, without communication.

    Parameters
    ----------
    dy : ndarray
        Gradient with respect to this rank's y: x's shape and dtype.
    cache : SyncCache or Cache
        The cache returned by ``sync_forward`` on this rank.
    comm : mpi4py.MPI.Comm
        The communicator of the forward.
    out : ndarray or tuple of 3 (4 with a residual), optional
        As in ``fastbn.backward``.
    need_dx : bool, default True
        False: dx is None; only the sums of dgamma and dbeta are computed and
        exchanged (ranks may differ in it).

    Returns
    -------
    dx : ndarray or None
        This rank's part of the gradient with respect to x (None with
        ``need_dx=False``).
    dgamma, dbeta : ndarray of shape (C,) or None
        The global gradients of gamma and beta (None without them).
    dresidual : ndarray
        Only after a forward with ``residual``: this rank's part.

    Raises
    ------
    TypeError, ValueError
        As ``fastbn.backward``; also if the cache comes from a local training
        forward, or comm is not the forward's communicator.
    MismatchError
        On every rank, when the ranks' calls disagree (see the module docstring).
    PeerError
        On every rank whose own arguments were valid, when another rank's were not.
    RuntimeError
        When another thread is inside a call on the same communicator.

    See Also
    --------
    sync_forward, fastbn.backward

    Examples
    --------
    >>> import numpy as np
    >>> from mpi4py import MPI
    >>> from fastbn.distributed import sync_backward, sync_forward
    >>> x = np.array([[1.0, 8.0], [2.0, 4.0], [6.0, 3.0]])
    >>> gamma, beta = np.array([1.0, 2.0]), np.array([0.5, -1.0])
    >>> y, cache = sync_forward(x, gamma, beta, comm=MPI.COMM_SELF)
    >>> dy = np.array([[1.0, -1.0], [0.5, 2.0], [-2.0, 1.0]])
    >>> dx, dgamma, dbeta = sync_backward(dy, cache, comm=MPI.COMM_SELF)
    >>> print(np.round(dgamma, 4), dbeta)
    [-3.9347 -3.2404] [-0.5  2. ]
    """
    _check_comm(comm)
    if not isinstance(cache, Cache):
        raise TypeError(f"cache must be the Cache returned by sync_forward, got {_describe(cache)}")
    if not cache.training:
        return _fastbn().backward(dy, cache, out=out, need_dx=need_dx)
    return _sync_backward_train(dy, cache, comm, out, need_dx)


def _sync_backward_train(dy, cache, comm, out, need_dx=True):
    if isinstance(cache, _features().SyncFeatureCache):
        return _locked(comm, partial(_features().backward_locked, dy, cache, comm, out, need_dx))
    return _locked(comm, partial(_backward_locked, dy, cache, comm, out, need_dx))


def _features():
    """fastbn._sync_features (imported on first use: it imports this module)."""
    from . import _sync_features
    return _sync_features


def _backward_locked(dy, cache, comm, out, need_dx, state):
    fb = _fastbn()
    error = None
    try:
        if not isinstance(cache, SyncCache):
            raise TypeError("cache comes from a local forward in training mode: "
                            "sync_backward needs the cache of sync_forward (or use "
                            "fastbn.backward)")
        if MPI.Comm.Compare(comm, cache.comm) not in (MPI.IDENT, MPI.CONGRUENT):
            raise ValueError("comm is not the communicator the forward was synchronised over")
        need_dx = _check_bool(need_dx, "need_dx")
        dx_out, dg_out, db_out = check_backward(dy, cache, out, need_dx)  # checks the cache
    except (TypeError, ValueError) as exc:
        error = exc
    call = state.calls
    if error is None:
        x, axis = cache.x, cache.axis
        C = x.shape[axis]
        lo, invstd = cache._mean_lo, cache.invstd
        beta = _shifted_beta(cache.beta, cache.gamma, invstd, lo)  # for the ReLU mask
        # the forward's ReLU mask is recomputed inside both building blocks
        sum_dy, sum_dy_xhat = fb.backward_reduce(dy, x, cache.mean, invstd, axis=axis,
                                                 gamma=cache.gamma, beta=beta,
                                                 activation=cache.activation)
        if lo is not None:  # xhat = (x - mean_hi) * invstd - mean_lo * invstd
            sum_dy_xhat = sum_dy_xhat - (lo * invstd) * sum_dy
        header = _header(_BACKWARD, call, forward_call=cache.call, channels=C,
                         ndim=x.ndim, axis=axis, eps=cache.eps,
                         flags=_flags(False, cache.gamma, cache.beta, True),
                         activation=cache.activation, count=cache.count)
        payload = np.concatenate([sum_dy, sum_dy_xhat])
    else:
        header, payload = _header(_BACKWARD, call, failed=True), None
    _, totals = _exchange(comm, state, header, payload, error, "sync_backward", _add)
    sum_dy, sum_dy_xhat = totals[:C], totals[C:]
    # backward_elemt subtracts sum_dy / count and xhat * sum_dy_xhat / count with
    # xhat from mean_hi: the residual's part moves into the first term
    sum_dy_shifted = sum_dy if lo is None else sum_dy - sum_dy_xhat * (lo * invstd)
    dx = None if not need_dx else fb.backward_elemt(dy, x, cache.mean, invstd, cache.gamma, sum_dy_shifted,
                           sum_dy_xhat, max(cache.global_count, 1), axis=axis, out=dx_out,
                           beta=beta, activation=cache.activation)
    dgamma = None if cache.gamma is None else _store(sum_dy_xhat, dg_out, cache.gamma.dtype)
    dbeta = None if cache.beta is None else _store(sum_dy, db_out, cache.beta.dtype)
    return dx, dgamma, dbeta
