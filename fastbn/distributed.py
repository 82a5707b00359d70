"""Synchronised batch normalisation over MPI (through mpi4py).

Every rank of a communicator holds part of one batch; the statistics used are
those of the union of all the parts, whatever each rank's batch size (an empty
batch included: its output is empty, and it still joins the exchange).

What is communicated
--------------------
A training-mode ``sync_forward`` or ``sync_backward`` reduces one float64 message
per rank: a fixed header (:data:`HEADER`: what the message is, see below) followed
by the payload,

* forward: ``[mean_hi[0..C), mean_lo[0..C), m2[0..C)]``, this rank's statistics
  with the mean as a double-double (the count per channel is in the header);
  two parts merge with Chan et al.'s formula in double-double arithmetic, so the
  merged mean keeps about 32 digits, as the single-process kernel's does;
* backward: ``[sum_dy[0..C), sum_dy_xhat[0..C)]``; two parts add.

The reduction is fastbn's own recursive doubling over point-to-point messages
(on a private duplicate of the communicator, made by the first synchronised call):
with ``P' = 2**floor(log2(P))``, the ranks ``r >= P'`` first hand their message to
``r - P'``; then in step ``k`` rank ``r`` exchanges its partial result with rank
``r ^ 2**k`` and both compute ``merge(lower rank's part, higher rank's part)``; at
last ranks ``r >= P'`` get the result from ``r - P'``. The bracketing is fixed by
the ranks alone (not by the MPI library's algorithms), and both partners of a step
compute the same operation on the same bytes, so every rank ends with the same
bytes: bit-identical statistics, running statistics, dgamma and dbeta. Per rank
and call: ``ceil(log2 P)`` messages of ``8 * (17 + 3C)`` bytes (forward) or
``8 * (17 + 2C)`` (backward), sent and received, plus one more each way for ranks
of a P that is not a power of two (docs/mpi.md has the cost model).

Eval mode with running statistics does not communicate (a rank may evaluate alone).

The keywords of issue 20 (``mask``, ``renorm``, several channel axes, the leaky ReLU,
``residual``, ``need_dx=False``) are synchronised by fastbn._sync_features, with the
same messages; ``virtual_batch_size`` is refused (ghost batches are per rank by
definition). The code: _sync_protocol (header, merge, errors), _sync_comm (state,
lock, exchange), _sync_ops (sync_forward, sync_backward), _sync_features, and here
the layer.

Errors, mismatches and deadlocks
--------------------------------
Every argument is checked on each rank before communicating. A rank whose
arguments are invalid still joins the exchange with a header flagging its
failure, then raises its own error; the other ranks raise :class:`PeerError`
naming it. The header says what each rank is doing: the operation (forward or
backward), the number of the synchronised call on the communicator (for a
backward, also that of its forward), C, ``x.ndim``, the channel axis, eps,
momentum (when running statistics are updated), whether running statistics are
updated, gamma and beta are given and the layer is in training mode, the
activation and its slope, and (issue 20) the channel axes, whether a mask and a
residual are given, and renorm's bounds. Headers are merged along with the payloads (the first part's values,
a flag set where two parts differ or one failed, the counts added): the merged
header is the same on every rank, so every rank sees a mismatch, then gathers
the headers (only then, an ``Allgather`` of 17 float64) to name it. Ranks that
disagree on any of these (out-of-step calls, such as a forward on one rank beside
a backward on another; a backward of a different forward; different eps, momentum,
axis...) raise :class:`MismatchError` on every rank, naming what differs and each
rank's value. Training with a global count of values per channel <= 1 raises
``ValueError`` on every rank. A failed call leaves running statistics and layer
state untouched.

What stays the caller's duty: every rank of ``comm`` must make the same sequence of
synchronised calls. Eval calls do not communicate (so a rank may evaluate alone),
hence a rank that runs in eval mode while the others train is not detected: they
wait for its next synchronised call, and raise only if that differs from theirs in
something the header holds. An invalid ``comm`` or ``training`` raises on that rank
only. Launch with ``mpiexec -n N python -m mpi4py script.py``: an exception that
escapes on one rank then aborts the whole job instead of leaving the other ranks
waiting forever. A communicator must be used by one thread at a time: a call that
starts while another thread is inside a call on the same communicator raises
``RuntimeError`` (give each thread its own communicator, ``comm.Dup()``). Every
rank must also use the same fastbn backend for the bitwise identity above.

Interrupts: Ctrl-C anywhere in a call leaves the communicator's lock free, and
running statistics and layer state untouched. While waiting for another rank, a
call polls MPI in Python (yielding the core), so Ctrl-C interrupts the wait; but
the interrupted exchange's messages may still be in flight, so every later call on
that communicator raises ``RuntimeError`` at once instead of pairing with them: end
the job, or go on with a new communicator.
"""
from functools import partial

import numpy as np

try:
    from mpi4py import MPI
except (ImportError, RuntimeError) as _exc:  # RuntimeError: mpi4py found no MPI library
    raise ImportError(
        f"fastbn.distributed needs mpi4py and an MPI library ({_exc}): install them with "
        f"`pip install 'fastbn[mpi]'` or `pip install mpi4py mpich`") from _exc

from ._checks import _describe
from ._checks import bool_arg as _check_bool
from .layers import BatchNorm
# the implementation, one concern per module; their names are re-exported here, the
# public import path (tests and tools also reach the private ones through it)
from ._sync_protocol import (HEADER, _FORWARD, _BACKWARD, _SLOT, MismatchError, PeerError,
                             _add, _check_headers, _flags, _header, _merge, _merge_moments,
                             _show, _two_sum)
from ._sync_comm import _exchange, _locked, _reduce, _state, _traffic
from ._sync_ops import (SyncCache, _check_comm, _sync_backward_train, _sync_forward_train,
                        sync_backward, sync_forward)

__all__ = ["sync_forward", "sync_backward", "SyncBatchNorm", "SyncCache", "PeerError",
           "MismatchError", "HEADER"]



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
    global sums, bit-identical everywhere. Ranks whose layers disagree (channels, eps,
    momentum, mode, ...) or are out of step raise ``MismatchError`` on every rank, and a
    call that raises leaves the layer's state as it was.

    Parameters
    ----------
    num_features : int
        Number of channels C.
    comm : mpi4py.MPI.Comm
        An intra-communicator over the ranks that share each batch.
    axis, eps, momentum, affine, track_running_stats, dtype, activation
        As in ``fastbn.BatchNorm`` (momentum is the weight of the *new* batch).
    unbiased_running_var, accumulate_grads
        As in ``fastbn.BatchNorm``.
    stats_frozen : bool, default False
        Start in the frozen-statistics mode (``freeze_stats``): the running
        statistics normalise every call, locally (no communication), and
        ``backward`` gives this rank's gradients of gamma and beta.
    negative_slope, renorm
        As in ``fastbn.BatchNorm``; renorm's r and d compare the synchronised
        batch statistics with the running ones.
    virtual_batch_size : None
        Not taken: anything but None raises ValueError (ghost batches are groups
        of one rank's rows, whose statistics are per rank by definition).

    Raises
    ------
    TypeError
        If comm is not an mpi4py communicator; otherwise as ``BatchNorm``.
    ValueError
        If comm is ``MPI.COMM_NULL`` or an inter-communicator; if
        virtual_batch_size is given; otherwise as ``BatchNorm``.

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
                 track_running_stats=True, dtype=np.float32, activation=None,
                 unbiased_running_var=True, accumulate_grads=False, stats_frozen=False,
                 renorm=None, virtual_batch_size=None, negative_slope=0.01):
        if virtual_batch_size is not None:  # groups of rows are one rank's: nothing to share
            raise ValueError("SyncBatchNorm does not take virtual_batch_size: ghost batches "
                             "are groups of one rank's rows, per rank by definition, so "
                             "there is nothing to synchronise (use fastbn.BatchNorm on each "
                             "rank)")
        self.comm = _check_comm(comm)
        super().__init__(num_features, axis=axis, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, dtype=dtype,
                         activation=activation, unbiased_running_var=unbiased_running_var,
                         accumulate_grads=accumulate_grads, stats_frozen=stats_frozen,
                         negative_slope=negative_slope, renorm=renorm)

    def __repr__(self):
        return "Sync" + super().__repr__() + f" over {self.comm.Get_size()} ranks"

    def forward(self, x, training=None, *, out=None, return_cache=False, mask=None,
                residual=None):
        """Normalise ``x``, this rank's part of the batch.

        In training mode the statistics are those of all ranks' batches, and the
        running statistics (if tracked) are updated with them. In the
        frozen-statistics mode (``freeze_stats()``) every call normalises with the
        running statistics, locally, without communication (as in eval mode); its
        ``backward`` then gives this rank's gradients of gamma and beta (sum them
        across ranks with the model's other parameter gradients, as PyTorch's
        SyncBatchNorm in eval mode under DDP). With ``mask`` the statistics are
        those of the union of every rank's kept positions (every rank passes a
        mask, or none).

        Parameters
        ----------
        x : ndarray of float32 or float64, ndim >= 2
            This rank's part of the batch (may be empty).
        training : bool or None, default None
            The mode of this call only, as in ``BatchNorm.forward`` (every rank
            must pass the same).
        out : ndarray, optional
            Where to write y: x's shape and dtype, writable.
        return_cache : bool, default False
            Also return the cache, for ``backward(dy, cache=cache)``.
        mask : ndarray of bool, optional
            This rank's positions that enter the statistics.
        residual : ndarray, optional
            Added before the activation; `backward` then returns
            ``(dx, dresidual)`` (this rank's part).

        Returns
        -------
        y : ndarray
            The normalised local part.
        cache : SyncCache or Cache
            Only with ``return_cache=True``.

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
        error, mode, state = None, self.training, {}
        try:
            mode = self._call_mode(training) and not self.stats_frozen
            return_cache = _check_bool(return_cache, "return_cache")
        except (TypeError, ValueError) as exc:
            error = exc  # joins the collective (if this mode shares statistics), then raises
        if error is None and not (mode or not self.track_running_stats):
            # running statistics: nothing to share
            return super().forward(x, False, out=out, return_cache=return_cache, mask=mask,
                                   residual=residual)
        try:
            if error is None:
                self._check_input(x)
                state = self._state_for(x)
        except (TypeError, ValueError) as exc:
            error = exc  # joins the collective with num_features, then raises
        update = mode and self.track_running_stats
        momentum = self._step_momentum(update)
        running = (state.get("running_mean"), state.get("running_var")) if update \
            else (None, None)
        # the layer's state changes only once forward succeeded, on every rank alike, in
        # the step that writes the running statistics
        count = self.num_batches_tracked + 1 if update else None
        y, cache = _sync_forward_train(x, state.get("gamma"), state.get("beta"),
                                       self.comm, self.axis, self.eps, *running, momentum, out,
                                       self.activation, error=error, training_mode=mode,
                                       unbiased_running_var=self.unbiased_running_var,
                                       then=partial(self._commit, count, state),
                                       features=(mask, self.renorm if mode else None,
                                                 residual, self.negative_slope))
        return (y, cache) if return_cache else y

    __call__ = forward

    def backward(self, dy, *, cache=None, out=None, need_dx=True):
        """Gradient with respect to this rank's input of the last forward call (or `cache`'s).

        Fills ``grads["gamma"]``/``grads["beta"]`` with the global sums (identical on
        every rank).

        Parameters
        ----------
        dy : ndarray
            Gradient with respect to this rank's output of the last forward.
        cache : SyncCache or Cache, optional
            The cache of the forward to differentiate (``return_cache=True``);
            None: the last forward's.
        out : ndarray, optional
            Where to write dx.
        need_dx : bool, default True
            False: only the gradients of gamma and beta; dx is None.

        Returns
        -------
        dx : ndarray or None
            This rank's part of the gradient with respect to x.
        dresidual : ndarray
            Only after a forward with `residual`: returned as ``(dx, dresidual)``.

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
        cache = self._cache if cache is None else cache
        if cache is None or not cache.training:  # local: no communication
            return super().backward(dy, cache=cache, out=out, need_dx=need_dx)
        dx, dgamma, dbeta, *dresidual = _sync_backward_train(
            dy, cache, self.comm, self._grad_outs(cache, out), need_dx)
        self._store_grads(cache, dgamma, dbeta)
        return (dx, *dresidual) if dresidual else dx

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
