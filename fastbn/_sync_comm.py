"""fastbn.distributed's per-communicator state (lock, private duplicate, traffic
counts) and the exchange: recursive doubling over point-to-point messages, in a
bracketing fixed by the ranks alone (see fastbn.distributed)."""
import os
import threading
import time

import numpy as np
from mpi4py import MPI

from ._sync_protocol import (HEADER, _SLOT, MismatchError, _check_headers, _merge)


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
