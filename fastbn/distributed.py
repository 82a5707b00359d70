"""Synchronised batch normalisation over MPI (through mpi4py).

Every rank of a communicator holds part of one batch; the statistics used are
those of the union of all the parts, whatever each rank's batch size (an empty
batch included: its output is empty, and it still joins the collectives).

What is communicated
--------------------
A training-mode ``sync_forward`` or ``sync_backward`` makes one ``Allgather`` of
one float64 row per rank: a fixed header (:data:`HEADER`: what the message is,
see below) followed by the payload,

* forward: ``[mean[0..C), m2[0..C)]`` (the count per channel is in the header).
  Every rank merges the gathered partial statistics with ``fastbn.merge_stats``
  (Chan et al.), in rank order, on identical bytes: every rank gets bit-identical
  mean and variance, hence bit-identical running statistics;
* backward: ``[sum_dy[0..C), sum_dy_xhat[0..C)]``, summed in rank order, so dgamma
  and dbeta are bit-identical on every rank too.

Eval mode with running statistics does not communicate (a rank may evaluate alone).

Rows have one length for all the calls on a communicator (padded), agreed by every
rank: ``len(HEADER) + 2 * 64`` at first, grown to ``len(HEADER) + 2 * C`` by the first
call with more channels, which makes one more ``Allgather`` for its payload, once
the headers agreed. MPI needs equal lengths on every rank: with rows sized by each
rank's own C, ranks whose C differ would make MPI abort the job, or read garbage.

Errors, mismatches and deadlocks
--------------------------------
Every argument is checked on each rank before communicating. A rank whose
arguments are invalid still joins the collective with a header flagging its
failure, then raises its own error; the other ranks raise :class:`PeerError`
naming it. The header says what each rank is doing: the operation (forward or
backward), the number of the synchronised call on the communicator (for a
backward, also that of its forward), C, ``x.ndim``, the channel axis, eps,
momentum (when running statistics are updated), whether running statistics are
updated, gamma and beta are given and the layer is in training mode, and the
activation. Ranks that disagree on any of these (out-of-step calls, such as a
forward on one rank beside a backward on another; a backward of a different
forward; different eps, momentum, axis...) raise :class:`MismatchError` on every
rank, naming what differs and each rank's value. Training with a global count of
values per channel <= 1 raises ``ValueError`` on every rank. A failed call leaves
running statistics and layer state untouched.

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
"""
import threading
from functools import partial

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
from ._checks import commit, overlaps, warn_momentum
from ._checks import bool_arg as _check_bool
from ._checks import store as _store
from .layers import BatchNorm, _fastbn

__all__ = ["sync_forward", "sync_backward", "SyncBatchNorm", "SyncCache", "PeerError",
           "MismatchError", "HEADER"]


class PeerError(RuntimeError):
    """Raised on the ranks whose own arguments were valid when another rank's were not."""


class MismatchError(ValueError):
    """Raised on every rank when the ranks' synchronised calls disagree.

    They disagree when they are out of step (a forward beside a backward, a backward of
    another forward) or differ in C, eps, momentum, axis, mode, activation, ...; the
    message names what differs and each rank's value. A ValueError.
    """


# ------------------------------------------------------------------ the message header
# Slots of the float64 header that starts every row; the names double as the words of
# the error messages. All but the last two ("status" and "count", this rank's own) must
# be the same on every rank.
HEADER = ("magic", "operation", "call", "forward call", "channels", "ndim", "axis", "eps",
          "momentum", "flags", "activation", "status", "count")
_SLOT = {name: i for i, name in enumerate(HEADER)}
_AGREE = len(HEADER) - 2
_MAGIC = float(0x46424E31)       # "FBN1": not a fastbn message, or another layout, if absent
_OPS = {1.0: "sync_forward", 2.0: "sync_backward"}
_FORWARD, _BACKWARD = 1.0, 2.0
_FAILED = 1.0                    # status of a rank whose arguments were invalid
_FLAGS = ("updates running statistics", "has gamma", "has beta", "training mode",
          "biased running variance")  # bits 0..4
_ACTIVATIONS = (None, "relu")    # code = index
_FIRST_ROW = len(HEADER) + 2 * 64  # row length before any call with more than 64 channels


def _header(op, call, *, failed=False, forward_call=-1, channels=-1, ndim=-1, axis=-1,
            eps=0.0, momentum=0.0, flags=0, activation=None, count=0):
    """The header of this rank's row: its values in the order of HEADER."""
    return [_MAGIC, op, call, forward_call, channels, ndim, axis, eps, momentum,
            flags, _ACTIVATIONS.index(activation),
            _FAILED if failed else 0.0, count]


def _flags(updates, gamma, beta, training, biased=False):
    """The "flags" slot: bit i set when _FLAGS[i] holds."""
    return (updates | (gamma is not None) << 1 | (beta is not None) << 2 | training << 3
            | biased << 4)


def _show(name, value):
    """A header value as the error messages show it."""
    if name == "operation":
        return _OPS.get(value, repr(value))
    if name == "flags":
        return "[" + ", ".join(f for i, f in enumerate(_FLAGS) if int(value) >> i & 1) + "]"
    if name == "activation":
        return repr(_ACTIVATIONS[int(value)]) if 0 <= value < len(_ACTIVATIONS) else repr(value)
    if name in ("eps", "momentum"):
        return repr(float(value))
    return str(int(value))


def _check_headers(headers, comm, error, what):
    """Raise, identically on every rank, unless every rank sent a valid, agreeing header.
    `error`: this rank's own failure (raised here, after the collective)."""
    if error is not None:
        raise error
    agree = headers[:, :_AGREE]
    differs = agree != agree[0]
    if not differs.any() and agree[0, 0] == _MAGIC and not headers[:, _SLOT["status"]].any():
        return  # the usual case, in a few vector operations; what follows words the errors
    me = comm.Get_rank()
    col = {name: headers[:, i] for i, name in enumerate(HEADER)}
    alien = np.flatnonzero(col["magic"] != _MAGIC).tolist()
    if alien:
        raise MismatchError(f"{what} (rank {me}): rank(s) {alien} sent a row that is not a "
                            f"fastbn.distributed message (another collective on the same "
                            f"communicator, or another fastbn version)")
    failed = np.flatnonzero(col["status"] == _FAILED).tolist()
    if failed:
        raise PeerError(f"{what}: the arguments were invalid on rank(s) {failed} of the "
                        f"communicator (this is rank {me}); see the error there")
    if (col["operation"] != col["operation"][0]).any():
        doing = ", ".join(f"rank {r} in {_show('operation', op)} ({int(c)} channels)"
                          for r, (op, c) in enumerate(zip(col["operation"], col["channels"])))
        raise MismatchError(f"{what} (rank {me}): the ranks are out of step: {doing}; every "
                            f"rank must make the same sequence of synchronised calls")
    differ = [f"{name}: [" + ", ".join(_show(name, v) for v in col[name]) + "]"
              for i, name in enumerate(HEADER[:_AGREE]) if differs[:, i].any()]
    if differ:
        raise MismatchError(f"{what} (rank {me}): the ranks disagree on " + "; ".join(differ)
                            + " (values by rank)")


# ------------------------------------------------------------------ per-communicator state
class _CommState:
    """What fastbn keeps on a communicator (as an MPI attribute, so every Python object
    for that communicator shares it), identical on every rank as long as they are in step."""
    __slots__ = ("lock", "calls", "row")

    def __init__(self):
        self.lock = threading.Lock()  # held during a call: another thread's call raises
        self.calls = 0                # synchronised calls made on the communicator
        self.row = _FIRST_ROW         # length of the rows, agreed: grows, never shrinks


_KEYVAL = MPI.Comm.Create_keyval()
_NEW_STATE = threading.Lock()


def _state(comm):
    state = comm.Get_attr(_KEYVAL)
    if state is None:
        with _NEW_STATE:  # two threads' first calls must not make two states
            state = comm.Get_attr(_KEYVAL)
            if state is None:
                state = _CommState()
                comm.Set_attr(_KEYVAL, state)
    return state


def _acquire(comm):
    """The communicator's state, locked for this thread (the caller releases state.lock):
    collectives of two threads on one communicator would pair at random across ranks
    and mix their statistics, so a second thread raises instead."""
    state = _state(comm)
    if not state.lock.acquire(blocking=False):
        raise RuntimeError("another thread is inside a fastbn.distributed call on this "
                           "communicator: give each thread its own communicator (comm.Dup())")
    return state


def _exchange(comm, state, header, parts, error, what):
    """Allgather every rank's header and payload, the concatenation of `parts` (float64
    vectors of C values; None if `error`). Returns (headers, payloads), one row per rank,
    once every header agreed; raises on every rank otherwise. Rows have the agreed length
    state.row; a payload too long for it follows in a second Allgather (every rank
    decides alike: C agreed), and state.row grows to fit it."""
    H = len(HEADER)
    n = 0 if parts is None else sum(p.size for p in parts)
    row = np.zeros(state.row)
    row[:H] = header
    if parts is not None and H + n <= state.row:
        at = H
        for p in parts:
            row[at:at + p.size] = p
            at += p.size
    table = np.empty((comm.Get_size(), state.row))
    comm.Allgather(row, table)  # the one collective
    state.calls += 1  # on every rank, whatever follows
    _check_headers(table[:, :H], comm, error, what)
    if H + n <= state.row:
        return table[:, :H], table[:, H:H + n]
    payloads = np.empty((comm.Get_size(), n))
    comm.Allgather(np.concatenate(parts), payloads)  # once per new, wider row
    state.row = H + n
    return table[:, :H], payloads


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
                 unbiased_running_var=True):
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
                                 unbiased_running_var=unbiased_running_var)
    return _sync_forward_train(x, gamma, beta, comm, axis, eps, running_mean, running_var,
                               momentum, out, activation,
                               unbiased_running_var=unbiased_running_var)


def _sync_forward_train(x, gamma, beta, comm, axis, eps, running_mean, running_var, momentum,
                        out, activation, error=None, training_mode=True,
                        unbiased_running_var=True, then=None):
    """The forward with batch statistics. `error`: a failure found by the caller on this
    rank, which joins the collective flagging it and then raises it. `training_mode`: the
    layer's mode, which the ranks must share (a SyncBatchNorm without running statistics
    uses batch statistics in eval mode too). `then(cache)`, if given, is the last step of
    the state update, written with the running statistics in one step (the layer's)."""
    fb = _fastbn()
    state = _acquire(comm)
    try:
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
            count, mean, m2 = fb.batch_stats(x, axis=axis)
            update = running_mean is not None
            header = _header(_FORWARD, call, forward_call=call, channels=C, ndim=x.ndim,
                             axis=axis, eps=eps, momentum=momentum if update else 0.0,
                             flags=_flags(update, gamma, beta, training_mode,
                                          update and not unbiased_running_var),
                             activation=activation, count=count)
            parts = (mean, m2)
        else:
            header, parts = _header(_FORWARD, call, failed=True), None
        headers, table = _exchange(comm, state, header, parts, error, "sync_forward")

        counts = headers[:, _SLOT["count"]].astype(np.int64)
        total = int(counts.sum())
        if total <= 1 and C:
            raise ValueError(f"expected more than 1 value per channel when training, got "
                             f"{total} over the {comm.Get_size()} ranks (local input of shape "
                             f"{x.shape})")
        _, mean, m2 = fb.merge_stats(counts, table[:, :C], table[:, C:])
        var = m2 / max(total, 1)
        invstd = 1.0 / np.sqrt(var + eps)
        overwritten = out is not None and overlaps(out, x)
        y = fb.normalize(x, mean, invstd, gamma, beta, axis=axis, out=out, activation=activation)
        cache = SyncCache(x, gamma, beta, mean, invstd, var, axis=axis, eps=eps, training=True,
                          activation=activation, x_overwritten=overwritten,
                          global_count=total, comm=comm, call=call)
        copies = []
        if running_mean is not None and C:
            copies = fb._impl._running_copies(running_mean, running_var, mean, var, total,
                                              momentum, unbiased=unbiased_running_var)
        if copies or then is not None:  # all or nothing, even under Ctrl-C
            commit(copies, None if then is None else partial(then, cache))
    finally:
        state.lock.release()
    return y, cache


def sync_backward(dy, cache, *, comm, out=None):
    """``fastbn.backward`` for a ``sync_forward``: returns ``(dx, dgamma, dbeta)``.

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
        return _fastbn().backward(dy, cache, out=out)
    return _sync_backward_train(dy, cache, comm, out)


def _sync_backward_train(dy, cache, comm, out):
    fb = _fastbn()
    state = _acquire(comm)
    try:
        error = None
        try:
            if not isinstance(cache, SyncCache):
                raise TypeError("cache comes from a local forward in training mode: "
                                "sync_backward needs the cache of sync_forward (or use "
                                "fastbn.backward)")
            if MPI.Comm.Compare(comm, cache.comm) not in (MPI.IDENT, MPI.CONGRUENT):
                raise ValueError("comm is not the communicator the forward was synchronised over")
            dx_out, dg_out, db_out = check_backward(dy, cache, out)  # checks the cache too
        except (TypeError, ValueError) as exc:
            error = exc
        call = state.calls
        if error is None:
            x, axis = cache.x, cache.axis
            C = x.shape[axis]
            # the forward's ReLU mask is recomputed inside both building blocks
            sum_dy, sum_dy_xhat = fb.backward_reduce(dy, x, cache.mean, cache.invstd, axis=axis,
                                                     gamma=cache.gamma, beta=cache.beta,
                                                     activation=cache.activation)
            header = _header(_BACKWARD, call, forward_call=cache.call, channels=C,
                             ndim=x.ndim, axis=axis, eps=cache.eps,
                             flags=_flags(False, cache.gamma, cache.beta, True),
                             activation=cache.activation, count=cache.count)
            parts = (sum_dy, sum_dy_xhat)
        else:
            header, parts = _header(_BACKWARD, call, failed=True), None
        _, table = _exchange(comm, state, header, parts, error, "sync_backward")

        totals = table[0].copy()
        for r in range(1, table.shape[0]):  # a fixed order: identical sums on every rank
            totals += table[r]
        sum_dy, sum_dy_xhat = totals[:C], totals[C:]
        dx = fb.backward_elemt(dy, x, cache.mean, cache.invstd, cache.gamma, sum_dy, sum_dy_xhat,
                               max(cache.global_count, 1), axis=axis, out=dx_out,
                               beta=cache.beta, activation=cache.activation)
    finally:
        state.lock.release()
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
                 track_running_stats=True, dtype=np.float32, activation=None,
                 unbiased_running_var=True, accumulate_grads=False):
        self.comm = _check_comm(comm)
        super().__init__(num_features, axis=axis, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, dtype=dtype,
                         activation=activation, unbiased_running_var=unbiased_running_var,
                         accumulate_grads=accumulate_grads)

    def __repr__(self):
        return "Sync" + super().__repr__() + f" over {self.comm.Get_size()} ranks"

    def forward(self, x, training=None, *, out=None, return_cache=False):
        """Normalise ``x``, this rank's part of the batch.

        In training mode the statistics are those of all ranks' batches, and the
        running statistics (if tracked) are updated with them.

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
            mode = self._call_mode(training)
            return_cache = _check_bool(return_cache, "return_cache")
        except (TypeError, ValueError) as exc:
            error = exc  # joins the collective (if this mode shares statistics), then raises
        if error is None and not (mode or not self.track_running_stats):
            # running statistics: nothing to share
            return super().forward(x, False, out=out, return_cache=return_cache)
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
                                       then=partial(self._commit, count, state))
        return (y, cache) if return_cache else y

    __call__ = forward

    def backward(self, dy, *, cache=None, out=None):
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
        cache = self._cache if cache is None else cache
        if cache is None or not cache.training:
            return super().backward(dy, cache=cache, out=out)  # local: no communication
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
