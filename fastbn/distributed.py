"""Synchronised batch normalisation over MPI (through mpi4py).

Every rank of a communicator holds part of one batch; the statistics used are
those of the union of all the parts, whatever each rank's batch size (an empty
batch included: its output is empty, and it still joins the collectives).

What is communicated, once per call and for all channels in one buffer:

* ``sync_forward`` (training): one ``Allgather`` of ``3 + 2*C`` float64 per rank,
  ``[count, C, eps, mean[0..C), m2[0..C)]``. Every rank then merges the gathered
  partial statistics with ``fastbn.merge_stats`` (Chan et al.), in rank order, on
  identical bytes: every rank gets bit-identical mean and variance, hence
  bit-identical running statistics.
* ``sync_backward`` (training): one ``Allgather`` of ``1 + 2*C`` float64 per rank,
  ``[flag, sum_dy[0..C), sum_dy_xhat[0..C)]``, summed in rank order, so dgamma and
  dbeta are bit-identical on every rank too.
* Eval mode (running statistics): no communication at all.

Errors and deadlocks
--------------------
Every argument is checked on each rank before any communication. A rank whose
arguments are invalid but whose channel count is known (``x`` is an array of
rank >= 2 with a valid ``axis``; for backward, ``cache`` is a Cache) still joins
the collective, flagging its failure, and then raises its own error; the other
ranks raise :class:`PeerError` naming it. So a mistake made on some ranks only
(a wrong ``gamma`` shape, a read-only ``out``, a bad ``dy``) raises everywhere
instead of hanging. Training with a global count of values per channel <= 1, or
ranks that disagree on ``eps`` or on the number of channels, raise
``ValueError`` on every rank.

What cannot be made safe without an extra round of communication, and so is the
caller's duty: every rank of ``comm`` must make the same sequence of calls, all
in training mode or all in eval mode; an error that leaves the channel count
unknown (``x`` not an array, ``axis`` out of bounds, ``comm`` not a
communicator, ``training`` not a bool) raises at once on that rank only. Ranks
whose ``x`` have different numbers of channels send rows of different sizes to
``sync_forward``: MPI treats that as a fatal error (MPICH reports a truncated
message and aborts the job). ``SyncBatchNorm`` is safer: it knows its number of
channels, so an input with the wrong one raises on every rank like the other
mistakes. Every rank must also use the same fastbn backend for the bitwise
identity above.
"""
import numpy as np

try:
    from mpi4py import MPI
except (ImportError, RuntimeError) as _exc:  # RuntimeError: mpi4py found no MPI library
    raise ImportError(
        f"fastbn.distributed needs mpi4py and an MPI library ({_exc}): install them with "
        f"`pip install 'fastbn[mpi]'` or `pip install mpi4py mpich`") from _exc

from ._checks import (Cache, _describe, channel_axis, channel_vector, check_backward,
                      data_array, out_array, real_number, running_vector)
from ._checks import activation as _check_activation
from ._checks import store as _store
from .layers import BatchNorm

__all__ = ["sync_forward", "sync_backward", "SyncBatchNorm", "SyncCache", "PeerError"]

_FAILED = -1.0  # the count slot of a rank whose arguments were invalid


class PeerError(RuntimeError):
    """Raised on the ranks whose own arguments were valid when another rank's were not."""


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

    The other attributes are those of ``fastbn.Cache`` (``mean``, ``var`` and
    ``invstd`` are the global statistics).
    """
    __slots__ = ("global_count", "comm")

    def __init__(self, *args, global_count, comm, **kwargs):
        super().__init__(*args, **kwargs)
        self.global_count, self.comm = global_count, comm


def _fastbn():
    import fastbn  # the backend fastbn chose (C kernels or the NumPy reference)
    return fastbn


def _check_comm(comm):
    if not isinstance(comm, MPI.Comm):
        raise TypeError(f"comm must be an mpi4py.MPI communicator (e.g. MPI.COMM_WORLD), "
                        f"got {_describe(comm)}")
    if comm == MPI.COMM_NULL:
        raise ValueError("comm is MPI.COMM_NULL")
    if comm.Is_inter():
        raise ValueError("comm must be an intra-communicator, got an inter-communicator")
    return comm


def _check_bool(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {_describe(value)}")
    return bool(value)


def _channels_of(x, axis):
    """C if x and axis make it knowable, else None (never raises)."""
    try:
        if isinstance(x, np.ndarray) and x.ndim >= 2:
            return x.shape[channel_axis(axis, x.ndim)]
        return None
    except (TypeError, ValueError):
        return None


def _check_local(x, gamma, beta, axis, eps, running_mean, running_var, momentum, out, activation):
    """The checks of fastbn.forward in training mode, except the count per channel,
    which is only known globally. Returns (axis, C, gamma, beta, eps, momentum, act)."""
    data_array(x, "x")
    axis = channel_axis(axis, x.ndim)
    C = x.shape[axis]
    gamma = channel_vector(gamma, C, "gamma")
    beta = channel_vector(beta, C, "beta")
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


def _allgather(comm, row):
    table = np.empty((comm.Get_size(), row.shape[0]), dtype=np.float64)
    comm.Allgather(row, table)
    return table


def _raise_if_failed(table, comm, error, what):
    failed = [r for r in range(table.shape[0]) if table[r, 0] == _FAILED]
    if error is not None:
        raise error
    if failed:
        raise PeerError(f"{what}: the arguments were invalid on rank(s) {failed} of the "
                        f"communicator (this is rank {comm.Get_rank()}); see the error there")


def sync_forward(x, gamma=None, beta=None, *, comm, axis=1, eps=1e-5, training=True,
                 running_mean=None, running_var=None, momentum=0.1, out=None, activation=None):
    """``fastbn.forward`` with the statistics of the union of the batches of all ranks of ``comm``.

    Call it on every rank of ``comm`` with that rank's part of the batch (any size along
    the non-channel axes, empty included) and the same ``gamma``/``beta``/running
    statistics, ``axis``, ``eps``, ``training`` and ``momentum``. Returns ``(y, cache)``,
    ``y`` the normalised local part. In training mode, the running statistics are
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
    PeerError
        On the ranks whose own arguments were valid, when another rank's were not.

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
    if not training:
        return _fastbn().forward(x, gamma, beta, axis=axis, eps=eps, training=False,
                                 running_mean=running_mean, running_var=running_var,
                                 momentum=momentum, out=out, activation=activation)
    return _sync_forward_train(x, gamma, beta, comm, axis, eps, running_mean, running_var,
                               momentum, out, activation)


def _sync_forward_train(x, gamma, beta, comm, axis, eps, running_mean, running_var, momentum,
                        out, activation, error=None, channels=None):
    """The training forward. `error`: a failure found by the caller on this rank, which then
    joins the collective with `channels` (or x's channel count) and raises it."""
    fb = _fastbn()
    if error is None:
        try:
            axis, C, gamma, beta, eps, momentum, activation = _check_local(
                x, gamma, beta, axis, eps, running_mean, running_var, momentum, out, activation)
        except (TypeError, ValueError) as exc:
            error = exc
    if error is not None:
        C = channels if channels is not None else _channels_of(x, axis)
        if C is None:
            raise error  # the buffer size is unknown: this rank cannot join the collective

    row = np.zeros(3 + 2 * C)
    if error is None:
        count, mean, m2 = fb.batch_stats(x, axis=axis)
        row[0], row[1], row[2] = count, C, eps
        row[3:3 + C], row[3 + C:] = mean, m2
    else:
        row[0] = _FAILED
    table = _allgather(comm, row)  # the one collective
    _raise_if_failed(table, comm, error, "sync_forward")

    if (table[:, 1] != C).any():
        raise ValueError(f"sync_forward: the ranks disagree on the number of channels: "
                         f"{table[:, 1].astype(np.int64).tolist()}")
    if (table[:, 2] != eps).any():
        raise ValueError(f"sync_forward: the ranks disagree on eps: {table[:, 2].tolist()}")
    counts = table[:, 0].astype(np.int64)
    total = int(counts.sum())
    if total <= 1 and C:
        raise ValueError(f"expected more than 1 value per channel when training, got "
                         f"{total} over the {comm.Get_size()} ranks (local input of shape "
                         f"{x.shape})")
    _, mean, m2 = fb.merge_stats(counts, table[:, 3:3 + C], table[:, 3 + C:])
    var = m2 / max(total, 1)
    invstd = 1.0 / np.sqrt(var + eps)
    overwritten = out is not None and np.may_share_memory(out, x)
    y = fb.normalize(x, mean, invstd, gamma, beta, axis=axis, out=out, activation=activation)
    if running_mean is not None and C:
        fb.update_running_stats(running_mean, running_var, mean, var, total, momentum=momentum)
    return y, SyncCache(x, gamma, beta, mean, invstd, var, axis=axis, eps=eps, training=True,
                        activation=activation, x_overwritten=overwritten,
                        global_count=total, comm=comm)


def sync_backward(dy, cache, *, comm, out=None):
    """``fastbn.backward`` for a ``sync_forward``: returns ``(dx, dgamma, dbeta)``.

    ``dx`` is the local part of the gradient of the global loss; ``dgamma`` and ``dbeta``
    are the global sums (the same on every rank; do not sum them again across ranks).
    ``out`` is as in ``fastbn.backward`` (dx, or a tuple (dx, dgamma, dbeta)). Must be
    called on every rank of ``comm`` when the forward was in training mode; an eval-mode
    cache is differentiated locally, without communication.

    Parameters
    ----------
    dy : ndarray
        Gradient with respect to this rank's y: x's shape and dtype.
    cache : SyncCache or Cache
        The cache returned by ``sync_forward`` on this rank.
    comm : mpi4py.MPI.Comm
        The communicator of the forward.
    out : ndarray or tuple of 3, optional
        As in ``fastbn.backward``.

    Returns
    -------
    dx : ndarray
        This rank's part of the gradient with respect to x.
    dgamma, dbeta : ndarray of shape (C,) or None
        The global gradients of gamma and beta (None without them).

    Raises
    ------
    TypeError, ValueError
        As ``fastbn.backward``; also if the cache comes from a local training
        forward, or comm is not the forward's communicator.
    PeerError
        On the ranks whose own arguments were valid, when another rank's were not.

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
        return _fastbn().backward(dy, cache, out=out)
    return _sync_backward_train(dy, cache, comm, out)


def _sync_backward_train(dy, cache, comm, out):
    fb = _fastbn()
    error = None
    try:
        if not isinstance(cache, SyncCache):
            raise TypeError("cache comes from a local forward in training mode: sync_backward "
                            "needs the cache of sync_forward (or use fastbn.backward)")
        if MPI.Comm.Compare(comm, cache.comm) not in (MPI.IDENT, MPI.CONGRUENT):
            raise ValueError("comm is not the communicator the forward was synchronised over")
        dx_out, dg_out, db_out = check_backward(dy, cache, out)  # checks the cache too
    except (TypeError, ValueError) as exc:
        error = exc
    x, axis = cache.x, cache.axis
    C = _channels_of(x, axis)
    if C is None:
        raise error if error is not None else ValueError("cache.x is not a valid input")

    row = np.zeros(1 + 2 * C)
    if error is None:
        # the forward's ReLU mask is recomputed inside both building blocks
        sum_dy, sum_dy_xhat = fb.backward_reduce(dy, x, cache.mean, cache.invstd, axis=axis,
                                                 gamma=cache.gamma, beta=cache.beta,
                                                 activation=cache.activation)
        row[1:1 + C], row[1 + C:] = sum_dy, sum_dy_xhat
    else:
        row[0] = _FAILED
    table = _allgather(comm, row)  # the one collective
    _raise_if_failed(table, comm, error, "sync_backward")

    totals = table[0, 1:].copy()
    for r in range(1, table.shape[0]):  # a fixed order: identical sums on every rank
        totals += table[r, 1:]
    sum_dy, sum_dy_xhat = totals[:C], totals[C:]
    dx = fb.backward_elemt(dy, x, cache.mean, cache.invstd, cache.gamma, sum_dy, sum_dy_xhat,
                           max(cache.global_count, 1), axis=axis, out=dx_out, beta=cache.beta,
                           activation=cache.activation)
    dgamma = None if cache.gamma is None else _store(sum_dy_xhat, dg_out, cache.gamma.dtype)
    dbeta = None if cache.beta is None else _store(sum_dy, db_out, cache.beta.dtype)
    return dx, dgamma, dbeta


class SyncBatchNorm(BatchNorm):
    """``fastbn.BatchNorm`` synchronised over the ranks of an MPI communicator.

    Its batch statistics are those of the union of the batches of all ranks of
    ``comm`` (PyTorch's ``SyncBatchNorm``).
    Same interface as ``BatchNorm`` (``train``/``eval``, ``params``/``grads``,
    ``state_dict``/``load_state_dict``, ``save``/``load``), plus ``comm``. Every rank
    must call ``forward`` and ``backward`` together while training (and in eval mode
    when ``track_running_stats=False``, where batch statistics are used, also
    synchronised); eval mode with running statistics does not communicate. Start all
    ranks from the same parameters and state (e.g. broadcast a ``state_dict``): the
    updates are then identical on every rank, since the gradients of gamma and beta are
    global sums, bit-identical everywhere.

    Parameters
    ----------
    num_features : int
        Number of channels C.
    comm : mpi4py.MPI.Comm
        An intra-communicator over the ranks that share each batch.
    axis, eps, momentum, affine, track_running_stats, dtype, activation
        As in ``fastbn.BatchNorm`` (momentum is the weight of the *new* batch).

    Raises
    ------
    TypeError
        If comm is not an mpi4py communicator; otherwise as ``BatchNorm``.
    ValueError
        If comm is ``MPI.COMM_NULL`` or an inter-communicator; otherwise as
        ``BatchNorm``.

    See Also
    --------
    fastbn.BatchNorm, sync_forward, sync_backward

    Examples
    --------
    >>> import numpy as np
    >>> from mpi4py import MPI
    >>> from fastbn.distributed import SyncBatchNorm
    >>> bn = SyncBatchNorm(2, comm=MPI.COMM_SELF)
    >>> y = bn(np.array([[1.0, 8.0], [2.0, 4.0], [6.0, 3.0]], np.float32))
    >>> dx = bn.backward(np.ones_like(y))
    >>> print(bn.grads["beta"], np.round(bn.running_mean, 4))
    [3. 3.] [0.3 0.5]
    """

    def __init__(self, num_features, *, comm, axis=1, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, dtype=np.float32, activation=None):
        self.comm = _check_comm(comm)
        super().__init__(num_features, axis=axis, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, dtype=dtype,
                         activation=activation)

    def __repr__(self):
        return "Sync" + super().__repr__() + f" over {self.comm.Get_size()} ranks"

    def forward(self, x, *, out=None):
        """Normalise ``x``, this rank's part of the batch.

        In training mode the statistics are those of all ranks' batches, and the
        running statistics (if tracked) are updated with them.

        Parameters
        ----------
        x : ndarray of float32 or float64, ndim >= 2
            This rank's part of the batch (may be empty).
        out : ndarray, optional
            Where to write y: x's shape and dtype, writable.

        Returns
        -------
        y : ndarray
            The normalised local part.

        Raises
        ------
        TypeError, ValueError
            As ``BatchNorm.forward``, on every rank (see ``sync_forward``).
        PeerError
            When another rank's input was invalid.

        Examples
        --------
        >>> import numpy as np
        >>> from mpi4py import MPI
        >>> from fastbn.distributed import SyncBatchNorm
        >>> bn = SyncBatchNorm(2, comm=MPI.COMM_SELF)
        >>> bn.forward(np.ones((4, 2), np.float32)).shape
        (4, 2)
        """
        use_batch_stats = self.training or not self.track_running_stats
        if not use_batch_stats:
            return super().forward(x, out=out)  # running statistics: nothing to share
        error = None
        try:
            self._check_input(x)
        except (TypeError, ValueError) as exc:
            error = exc  # joins the collective with num_features, then raises
        update = self.training and self.track_running_stats
        momentum = self._step_momentum(update)
        running = (self.running_mean, self.running_var) if update else (None, None)
        y, cache = _sync_forward_train(x, self.params.get("gamma"), self.params.get("beta"),
                                       self.comm, self.axis, self.eps, *running, momentum, out,
                                       self.activation, error=error, channels=self.num_features)
        if update:  # only once forward succeeded, on every rank alike
            self.num_batches_tracked += 1
        self._cache = cache
        return y

    __call__ = forward

    def backward(self, dy, *, out=None):
        """Gradient with respect to this rank's input of the last forward call.

        Fills ``grads["gamma"]``/``grads["beta"]`` with the global sums (identical on
        every rank).

        Parameters
        ----------
        dy : ndarray
            Gradient with respect to this rank's output of the last forward.
        out : ndarray, optional
            Where to write dx.

        Returns
        -------
        dx : ndarray
            This rank's part of the gradient with respect to x.

        Raises
        ------
        RuntimeError
            If no forward call was made.
        TypeError, ValueError
            As ``BatchNorm.backward``, on every rank.
        PeerError
            When another rank's arguments were invalid.

        Examples
        --------
        >>> import numpy as np
        >>> from mpi4py import MPI
        >>> from fastbn.distributed import SyncBatchNorm
        >>> bn = SyncBatchNorm(2, comm=MPI.COMM_SELF)
        >>> y = bn(np.array([[1.0, 8.0], [2.0, 4.0], [6.0, 3.0]], np.float32))
        >>> bn.backward(np.ones_like(y)).shape
        (3, 2)
        """
        cache = self._cache
        if cache is None or not cache.training:
            return super().backward(dy, out=out)  # local: no communication needed
        dx, dgamma, dbeta = _sync_backward_train(dy, cache, self.comm,
                                                 self._grad_outs(cache, out))
        self._store_grads(cache, dgamma, dbeta)
        return dx

    @classmethod
    def load(cls, path, *, comm):
        """A new layer over ``comm`` from a file written by ``save`` (of either class).

        Parameters
        ----------
        path : str, os.PathLike or binary file object
            A file written by ``save``.
        comm : mpi4py.MPI.Comm
            The communicator of the new layer.

        Returns
        -------
        SyncBatchNorm

        Examples
        --------
        >>> import io
        >>> from mpi4py import MPI
        >>> import fastbn
        >>> from fastbn.distributed import SyncBatchNorm
        >>> f = io.BytesIO()
        >>> fastbn.BatchNorm(4).save(f)
        >>> _ = f.seek(0)
        >>> SyncBatchNorm.load(f, comm=MPI.COMM_SELF).num_features
        4
        """
        return super().load(path, comm=comm)

    load_npz = load

    @classmethod
    def from_batchnorm(cls, layer, *, comm):
        """A SyncBatchNorm with the configuration and state of a ``BatchNorm``.

        Parameters
        ----------
        layer : fastbn.BatchNorm
            The layer to copy (its parameters and running statistics are copied).
        comm : mpi4py.MPI.Comm
            The communicator of the new layer.

        Returns
        -------
        SyncBatchNorm

        Raises
        ------
        TypeError
            If layer is not a ``fastbn.BatchNorm``.

        Examples
        --------
        >>> from mpi4py import MPI
        >>> import fastbn
        >>> from fastbn.distributed import SyncBatchNorm
        >>> bn = fastbn.BatchNorm(8, axis=-1)
        >>> SyncBatchNorm.from_batchnorm(bn, comm=MPI.COMM_SELF).axis
        -1
        """
        if not isinstance(layer, BatchNorm):
            raise TypeError(f"layer must be a fastbn.BatchNorm, got {_describe(layer)}")
        new = cls(comm=comm, **layer._config())
        new.load_state_dict(layer.state_dict())
        return new
