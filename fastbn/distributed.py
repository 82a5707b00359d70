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
and call: ``ceil(log2 P)`` messages of ``8 * (13 + 3C)`` bytes (forward) or
``8 * (13 + 2C)`` (backward), sent and received, plus one more each way for ranks
of a P that is not a power of two (docs/mpi.md has the cost model).

Eval mode with running statistics does not communicate (a rank may evaluate alone).

Errors, mismatches and deadlocks
--------------------------------
Every argument is checked on each rank before communicating. A rank whose
arguments are invalid still joins the exchange with a header flagging its
failure, then raises its own error; the other ranks raise :class:`PeerError`
naming it. The header says what each rank is doing: the operation (forward or
backward), the number of the synchronised call on the communicator (for a
backward, also that of its forward), C, ``x.ndim``, the channel axis, eps,
momentum (when running statistics are updated), whether running statistics are
updated, gamma and beta are given and the layer is in training mode, and the
activation. Headers are merged along with the payloads (the first part's values,
a flag set where two parts differ or one failed, the counts added): the merged
header is the same on every rank, so every rank sees a mismatch, then gathers
the headers (only then, an ``Allgather`` of 13 float64) to name it. Ranks that
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
import os
import threading
import time
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
class _CallLock:
    """The lock held during a call on a communicator: not reentrant (a second call,
    from another thread or nested in this one, finds it taken), and aware of its
    owner, so that a call releases it only if it took it, even when KeyboardInterrupt
    lands just after the acquisition (the owner is recorded by the C-level acquire
    itself, with no Python step in between)."""
    __slots__ = ("_lock",)

    def __init__(self):
        self._lock = threading.RLock()  # the C RLock: owner and acquisition in one step

    def acquire(self, blocking=True, timeout=-1):
        if self._lock._is_owned():
            return False  # not reentrant: this thread holds it already
        return self._lock.acquire(blocking, timeout)

    def release(self):
        self._lock.release()

    def owned(self):
        """Whether the calling thread holds it."""
        return self._lock._is_owned()

    def locked(self):
        if self._lock._is_owned():
            return True
        if self._lock.acquire(False):
            self._lock.release()
            return False
        return True


class _CommState:
    """What fastbn keeps on a communicator (as an MPI attribute, so every Python object
    for that communicator shares it), identical on every rank as long as they are in step."""
    __slots__ = ("lock", "calls", "private", "traffic", "broken")

    def __init__(self):
        self.lock = _CallLock()  # held during a call: another thread's call raises
        self.calls = 0           # synchronised calls made on the communicator
        self.private = None      # fastbn's duplicate of it (made by the first exchange)
        self.broken = False      # an exchange was interrupted: the ranks are out of step
        self.traffic = dict(messages_sent=0, bytes_sent=0, messages_received=0,
                            bytes_received=0, collectives=0)  # counted by _reduce


def _free_private(comm, keyval, state):
    """The attribute's delete callback (comm.Free(), MPI_Finalize): free the duplicate."""
    private = getattr(state, "private", None)
    if private is not None and private != MPI.COMM_NULL:
        state.private = None
        private.Free()


_KEYVAL = MPI.Comm.Create_keyval(delete_fn=_free_private)
_NEW_STATE = threading.Lock()
_TAG = 0x4642  # "FB": the tag of fastbn's messages on its private communicator
# while waiting for a message, fastbn polls MPI and yields the core in between, so that
# ranks outnumbering the cores (or sharing them with other work) do not spin against the
# very rank they wait for (measured: 10-30x faster exchanges on 4-8 ranks on 2 cores)
_yield = getattr(os, "sched_yield", None) or (lambda: time.sleep(0))


def _state(comm):
    state = comm.Get_attr(_KEYVAL)
    if state is None:
        with _NEW_STATE:  # two threads' first calls must not make two states
            state = comm.Get_attr(_KEYVAL)
            if state is None:
                state = _CommState()
                comm.Set_attr(_KEYVAL, state)
    return state


_BUSY = ("another thread is inside a fastbn.distributed call on this communicator: give "
         "each thread its own communicator (comm.Dup())")


def _traffic(comm):
    """A copy of the counts of what fastbn sent and received on `comm` so far:
    messages_sent, bytes_sent, messages_received, bytes_received (point-to-point, the
    payloads' bytes) and collectives (Allgathers of headers, on mismatches only)."""
    return dict(_state(comm).traffic)


# ------------------------------------------------------------------ the reduction
def _two_sum(a, b):
    """(s, e) with s = fl(a + b) and s + e = a + b exactly (Knuth)."""
    s = a + b
    bb = s - a
    return s, (a - (s - bb)) + (b - bb)


def _merge_moments(n_a, a, n_b, b):
    """Chan et al.'s merge of two parts' [mean_hi, mean_lo, m2] (each C values), counts
    n_a and n_b, the mean in double-double arithmetic: returns the merged vector."""
    if n_b == 0:
        return a
    if n_a == 0:
        return b
    C = a.size // 3
    h_a, l_a, m_a = a[:C], a[C:2 * C], a[2 * C:]
    h_b, l_b, m_b = b[:C], b[C:2 * C], b[2 * C:]
    n = n_a + n_b
    dh, de = _two_sum(h_b, -h_a)
    delta = dh + (de + (l_b - l_a))           # mean_b - mean_a, to a rounding of its own size
    hi, e = _two_sum(h_a, delta * (n_b / n))  # mean_a + delta * n_b / n, in double-double
    hi, lo = _two_sum(hi, e + l_a)
    m2 = (m_a + m_b) + (delta * delta) * (n_a * (n_b / n))
    return np.concatenate([hi, lo, m2])


def _add(n_a, a, n_b, b):
    return a + b


def _merge(low, high, combine):
    """Merge two messages, `low` from the lower ranks: the header's agreed slots are
    low's, its status is set if either part failed or the two disagree (on the agreed
    slots, or in length), its count is the sum; the payloads are combined if all is well."""
    H = len(HEADER)
    if low.size < H or high.size < H:  # not fastbn's (cannot happen on the private comm)
        bad = np.zeros(H)
        bad[_SLOT["status"]] = _FAILED
        return bad
    out_header = low[:H].copy()
    out_header[_SLOT["count"]] = low[_SLOT["count"]] + high[_SLOT["count"]]
    if (low[_SLOT["status"]] or high[_SLOT["status"]] or low.size != high.size
            or not np.array_equal(low[:_AGREE], high[:_AGREE])):
        out_header[_SLOT["status"]] = _FAILED
        return out_header  # the payloads are not used any more
    payload = combine(low[_SLOT["count"]], low[H:], high[_SLOT["count"]], high[H:])
    return np.concatenate([out_header, payload])


def _private(comm, state):
    """fastbn's duplicate of `comm` (collective: made in the first synchronised call on
    every rank alike), so that its messages never meet the program's own."""
    if state.private is None:
        state.private = comm.Dup()
    return state.private


def _wait(req):
    """Wait for an MPI request, yielding the core meanwhile (ranks may outnumber cores),
    in Python, so that Ctrl-C interrupts the wait."""
    while not req.Test():
        _yield()


def _reduce(comm, state, message, combine):
    """The merge of every rank's message (header + payload), by recursive doubling in a
    fixed bracketing (see the module docstring): the same bytes on every rank."""
    P = comm.Get_size()
    if P == 1:
        return message
    pc = _private(comm, state)
    rank = pc.Get_rank()
    t = state.traffic
    status = MPI.Status()

    def send(buf, dest):
        _wait(pc.Isend(buf, dest, _TAG))
        t["messages_sent"] += 1
        t["bytes_sent"] += buf.nbytes

    def recv(source):  # any length: a rank out of step may send another operation's
        msg = pc.Improbe(source, _TAG, status)
        while msg is None:
            _yield()
            msg = pc.Improbe(source, _TAG, status)
        buf = np.empty(status.Get_count(MPI.DOUBLE))
        msg.Recv(buf)
        t["messages_received"] += 1
        t["bytes_received"] += buf.nbytes
        return buf

    def sendrecv(buf, partner):
        req = pc.Isend(buf, partner, _TAG)
        got = recv(partner)
        _wait(req)
        t["messages_sent"] += 1
        t["bytes_sent"] += buf.nbytes
        return got

    p2 = 1 << (P.bit_length() - 1)  # the largest power of two <= P
    acc = message
    try:
        if rank >= p2:  # one of the P - p2 extra ranks: hand over, then wait for the result
            send(acc, rank - p2)
            return recv(rank - p2)
        if rank + p2 < P:
            acc = _merge(acc, recv(rank + p2), combine)
        k = 1
        while k < p2:
            partner = rank ^ k
            other = sendrecv(acc, partner)
            acc = _merge(acc, other, combine) if rank < partner else _merge(other, acc, combine)
            k <<= 1
        if rank + p2 < P:
            send(acc, rank + p2)
        return acc
    except BaseException:  # KeyboardInterrupt while waiting, an MPI error: messages of
        state.broken = True  # this exchange may be in flight, and would pair with the next
        raise


def _exchange(comm, state, header, payload, error, what, combine):
    """Merge every rank's header and payload (a float64 vector; None if `error`) with
    `combine`. Returns (merged header, merged payload), identical on every rank, once
    every header agreed; raises on every rank otherwise (this rank's own `error`, or
    PeerError or MismatchError, worded from the gathered headers)."""
    message = np.empty(len(HEADER) + (0 if payload is None else payload.size))
    message[:len(HEADER)] = header
    if payload is not None:
        message[len(HEADER):] = payload
    merged = _reduce(comm, state, message, combine)
    state.calls += 1  # on every rank, whatever follows
    if merged[_SLOT["status"]] or merged.size != message.size:
        # some rank failed or disagrees, and every rank knows it: gather the headers to
        # say who (the only Allgather; never in a call that succeeds)
        headers = np.empty((comm.Get_size(), len(HEADER)))
        pc = _private(comm, state) if comm.Get_size() > 1 else comm
        try:
            _wait(pc.Iallgather(np.ascontiguousarray(message[:len(HEADER)]), headers))
        except BaseException:
            state.broken = True
            raise
        state.traffic["collectives"] += 1
        _check_headers(headers, comm, error, what)
        raise MismatchError(f"{what}: the ranks' calls disagree")  # not reached
    if error is not None:  # one rank (COMM_SELF): nothing to tell the others
        raise error
    return merged[:len(HEADER)], merged[len(HEADER):]


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


def _begin(comm):
    """(state, held): the communicator's state, and whether this thread held its lock
    before the call (then the call is refused and must not release it)."""
    state = _state(comm)
    return state, state.lock.owned()


def _enter(state, held):
    """Take the communicator's lock for this call, or raise: collectives of two threads
    on one communicator would pair at random across ranks and mix their statistics.
    Called inside the call's try, whose finally runs _leave: an interrupt anywhere
    after the acquisition leaves the lock owned by this thread, and _leave frees it."""
    if held or not state.lock.acquire(blocking=False):
        raise RuntimeError(_BUSY)
    if state.broken:
        raise RuntimeError(
            "an earlier fastbn.distributed call on this communicator was interrupted in "
            "the middle of its exchange (KeyboardInterrupt, or an MPI error): its messages "
            "may still be in flight, so the ranks cannot be kept in step on it any more; "
            "end the job (python -m mpi4py does on an uncaught exception), or give the "
            "surviving code a new communicator (comm.Dup())")


def _leave(state, held):
    """Release the lock if this call took it; idempotent."""
    if not held and state.lock.owned():
        state.lock.release()


def _locked(comm, body):
    """body(state) with the communicator's lock held by this call; the lock is released
    whatever happens, and only if this call took it."""
    state, held = _begin(comm)
    try:
        _enter(state, held)
        return body(state)
    finally:
        # release to the end even if KeyboardInterrupt lands meanwhile, as it may on the
        # way into _leave (a call is a signal check): the handlers nest, as in
        # fastbn's commit, inline, so that no check falls between catching and retrying
        try:
            _leave(state, held)
        except KeyboardInterrupt:
            try:
                _leave(state, held)
            except KeyboardInterrupt:
                _leave(state, held)
            raise


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
                        unbiased_running_var=True, then=None):
    """The forward with batch statistics. `error`: a failure found by the caller on this
    rank, which joins the exchange flagging it and then raises it. `training_mode`: the
    layer's mode, which the ranks must share (a SyncBatchNorm without running statistics
    uses batch statistics in eval mode too). `then(cache)`, if given, is the last step of
    the state update, written with the running statistics in one step (the layer's)."""
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
    return _locked(comm, partial(_backward_locked, dy, cache, comm, out))


def _backward_locked(dy, cache, comm, out, state):
    fb = _fastbn()
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
    dx = fb.backward_elemt(dy, x, cache.mean, invstd, cache.gamma, sum_dy_shifted,
                           sum_dy_xhat, max(cache.global_count, 1), axis=axis, out=dx_out,
                           beta=beta, activation=cache.activation)
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
    stats_frozen : bool, default False
        Start in the frozen-statistics mode (``freeze_stats``): the running
        statistics normalise every call, locally (no communication), and
        ``backward`` gives this rank's gradients of gamma and beta.
    renorm, virtual_batch_size : None
        Not synchronised: anything but None raises ValueError (ghost batches are
        groups of one rank's rows, which need no synchronisation; batch
        renormalisation is not synchronised yet).

    Raises
    ------
    TypeError
        If comm is not an mpi4py communicator; otherwise as ``BatchNorm``.
    ValueError
        If comm is ``MPI.COMM_NULL`` or an inter-communicator; if renorm or
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
                 renorm=None, virtual_batch_size=None):
        if virtual_batch_size is not None:  # groups of rows are one rank's: nothing to share
            raise ValueError("SyncBatchNorm does not take virtual_batch_size: ghost batches "
                             "are groups of one rank's rows, whose statistics need no "
                             "synchronisation (use fastbn.BatchNorm on each rank)")
        if renorm is not None:
            raise ValueError("SyncBatchNorm does not take renorm yet (issue 20): batch "
                             "renormalisation is not synchronised")
        self.comm = _check_comm(comm)
        super().__init__(num_features, axis=axis, eps=eps, momentum=momentum, affine=affine,
                         track_running_stats=track_running_stats, dtype=dtype,
                         activation=activation, unbiased_running_var=unbiased_running_var,
                         accumulate_grads=accumulate_grads, stats_frozen=stats_frozen)

    def __repr__(self):
        return "Sync" + super().__repr__() + f" over {self.comm.Get_size()} ranks"

    def forward(self, x, training=None, *, out=None, return_cache=False, **unsupported):
        """Normalise ``x``, this rank's part of the batch.

        In training mode the statistics are those of all ranks' batches, and the
        running statistics (if tracked) are updated with them. In the
        frozen-statistics mode (``freeze_stats()``) every call normalises with the
        running statistics, locally, without communication (as in eval mode); its
        ``backward`` then gives this rank's gradients of gamma and beta (sum them
        across ranks with the model's other parameter gradients, as PyTorch's
        SyncBatchNorm in eval mode under DDP). ``BatchNorm.forward``'s ``mask`` and
        ``residual`` are not synchronised yet: passing them raises TypeError.

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
        **unsupported
            ``BatchNorm.forward``'s ``mask`` and ``residual``, which are not
            synchronised: any keyword here raises TypeError naming it.

        Returns
        -------
        y : ndarray
            The normalised local part.
        cache : SyncCache or Cache
            Only with ``return_cache=True``.

        Raises
        ------
        TypeError, ValueError
            As ``BatchNorm.forward``, on every rank (see ``sync_forward``);
            TypeError for ``mask``, ``residual`` or an unknown keyword.
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
        if unsupported:
            name = sorted(unsupported)[0]
            raise TypeError(f"SyncBatchNorm.forward got the keyword {name!r}: "
                            + (f"{name}= is not synchronised yet (issue 20; use fastbn.BatchNorm "
                               "on one process)" if name in ("mask", "residual")
                               else "unknown argument"))
        error, mode, state = None, self.training, {}
        try:
            mode = self._call_mode(training) and not self.stats_frozen
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
