"""The per-communicator lock of fastbn.distributed under interrupts and threads (issue 13).

A call holds its communicator's lock while it runs, so that a second thread's call
raises instead of pairing its messages with the wrong calls on other ranks. The lock
knows its owner: a KeyboardInterrupt landing anywhere in a call, including between the
acquisition and the code that releases it, leaves the lock free (and the state
untouched); a call refused because another thread holds the lock never releases that
thread's lock. All on COMM_SELF, in this process (and one subprocess for real signals).
"""
import os
import subprocess
import sys
import threading

import numpy as np
import pytest

pytest.importorskip("mpi4py")
try:
    from mpi4py import MPI

    import fastbn.distributed as fd
    import fastbn._sync_comm as fcomm  # where the lock and the exchange live
except ImportError as exc:
    pytest.skip(f"fastbn.distributed unavailable: {exc}", allow_module_level=True)

from test_distributed import _package_root  # noqa: E402


def _data():
    rng = np.random.default_rng(0)
    return rng.standard_normal((6, 3, 4)), rng.standard_normal((6, 3, 4))


def _calls():
    """Each kind of synchronised call, on fresh state: (name, call, state check)."""
    x, dy = _data()
    rm, rv = np.zeros(3), np.ones(3)
    _, cache = fd.sync_forward(x, comm=MPI.COMM_SELF)
    layer = fd.SyncBatchNorm(3, comm=MPI.COMM_SELF, dtype=np.float64)
    return [
        ("sync_forward", lambda: fd.sync_forward(x, comm=MPI.COMM_SELF, running_mean=rm,
                                                 running_var=rv),
         lambda: (rm == 0).all() and (rv == 1).all()),
        ("sync_backward", lambda: fd.sync_backward(dy, cache, comm=MPI.COMM_SELF), lambda: True),
        ("layer", lambda: layer(x),
         lambda: layer.num_batches_tracked == 0 and layer._cache is None
         and (layer.running_mean == 0).all()),
    ]


def test_interrupt_just_after_the_lock_was_taken(monkeypatch):
    """KeyboardInterrupt as the acquisition returns (the window between acquire and the
    try that releases, which leaked the lock for good): the lock is free afterwards."""
    real = fcomm._CallLock.acquire

    def acquire_then_interrupted(self, *args, **kwargs):
        got = real(self, *args, **kwargs)
        raise KeyboardInterrupt if got else AssertionError("the lock was busy")

    lock = fd._state(MPI.COMM_SELF).lock
    for name, call, unchanged in _calls():
        monkeypatch.setattr(fcomm._CallLock, "acquire", acquire_then_interrupted)
        with pytest.raises(KeyboardInterrupt):
            call()
        monkeypatch.setattr(fcomm._CallLock, "acquire", real)
        assert not lock.locked(), f"{name}: the interrupted call left the lock taken"
        assert unchanged(), f"{name}: the interrupted call changed the state"
        call()  # and the communicator works


def test_interrupt_inside_the_exchange(monkeypatch):
    real = fd._reduce

    def interrupted(*args, **kwargs):
        real(*args, **kwargs)
        raise KeyboardInterrupt

    lock = fd._state(MPI.COMM_SELF).lock
    for name, call, unchanged in _calls():
        monkeypatch.setattr(fcomm, "_reduce", interrupted)
        with pytest.raises(KeyboardInterrupt):
            call()
        monkeypatch.setattr(fcomm, "_reduce", real)
        assert not lock.locked() and unchanged(), name
        call()


def test_refused_call_leaves_another_threads_lock_alone():
    """A call refused because another thread is inside one must not free that thread's
    lock (a plain lock, released in a finally, would)."""
    lock = fd._state(MPI.COMM_SELF).lock
    taken, done = threading.Event(), threading.Event()

    def holder():
        assert lock.acquire(blocking=False)
        taken.set()
        done.wait(30)
        lock.release()

    calls = _calls()
    thread = threading.Thread(target=holder)
    thread.start()
    try:
        assert taken.wait(30)
        for name, call, unchanged in calls:
            with pytest.raises(RuntimeError, match="another thread"):
                call()
            assert lock.locked() and not lock.owned(), f"{name} released the other's lock"
            assert unchanged(), name
    finally:
        done.set()
        thread.join()
    assert not lock.locked()


def test_the_lock_is_not_reentrant():
    """A call nested in another on the same thread (a signal handler, a callback) is
    refused as a second thread's is, and leaves the outer call's lock held."""
    lock = fd._state(MPI.COMM_SELF).lock
    assert lock.acquire(blocking=False)
    try:
        assert lock.owned() and lock.locked()
        assert not lock.acquire(blocking=False)
        x, _ = _data()
        with pytest.raises(RuntimeError, match="another thread"):
            fd.sync_forward(x, comm=MPI.COMM_SELF)
        assert lock.owned()
    finally:
        lock.release()
    assert not lock.locked()


_SIGNALS = """
import signal, sys
import numpy as np
from mpi4py import MPI
from fastbn.distributed import SyncBatchNorm, _state
comm = MPI.COMM_SELF
x = np.random.default_rng(0).standard_normal((8, 3))
layer = SyncBatchNorm(3, comm=comm, dtype=np.float64, momentum=1.0)
layer(x - 1000.0)  # warm up unarmed, on other data than any call below
lock = _state(comm).lock
armed = False

def alarm(signum, frame):
    if armed:
        raise KeyboardInterrupt

signal.signal(signal.SIGALRM, alarm)
signal.setitimer(signal.ITIMER_REAL, 0.0005, 0.0005)
interrupts = leaked = torn = 0
for i in range(int(sys.argv[1])):
    if interrupts >= 100:
        break
    before = layer.num_batches_tracked
    try:
        armed = True
        layer(x + i)
        armed = False
    except KeyboardInterrupt:
        armed = False
        interrupts += 1
    if lock.locked():
        leaked += 1
        lock.release()
    n = layer.num_batches_tracked
    mean = (x + i).mean(axis=0)
    if n not in (before, before + 1) or (n == before + 1) != np.allclose(layer.running_mean, mean, rtol=1e-13, atol=0):
        torn += 1
signal.setitimer(signal.ITIMER_REAL, 0, 0)
print(interrupts, leaked, torn)
"""


def test_real_interrupts_never_leave_the_lock_taken(tmp_path):
    """SIGALRM every 0.5 ms raising KeyboardInterrupt during many SyncBatchNorm calls:
    after each, the communicator's lock is free and the state all old or all new."""
    script = tmp_path / "signals.py"
    script.write_text(_SIGNALS)
    env = dict(os.environ, FASTBN_NUM_THREADS="1", PYTHONPATH=_package_root())
    run = subprocess.run([sys.executable, str(script), "50000"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    interrupts, leaked, torn = map(int, run.stdout.split())
    assert interrupts >= 20, "too few interrupts to test anything"
    assert leaked == torn == 0, f"after {interrupts} interrupts: {leaked} times the lock " \
                                f"was left taken, {torn} times the state was torn"


_INTERRUPTED_EXCHANGE = """
import time
import numpy as np
from mpi4py import MPI
import fastbn.distributed as fd
import fastbn._sync_comm as fcomm  # where the exchange polls
comm = MPI.COMM_WORLD
rank = comm.Get_rank()
x = np.random.default_rng(rank).standard_normal((4, 3))
rm, rv = np.zeros(3), np.ones(3)
fd.sync_forward(x, comm=comm)  # the private communicator exists from here
result = {}
if rank == 0:
    real, polls = fcomm._yield, [0]

    def interrupting():  # Ctrl-C while rank 0 waits for rank 1's message
        polls[0] += 1
        if polls[0] == 50:
            raise KeyboardInterrupt
        real()

    fcomm._yield = interrupting
    try:
        fd.sync_forward(x, comm=comm, running_mean=rm, running_var=rv)
        result["first"] = "returned"
    except KeyboardInterrupt:
        result["first"] = "KeyboardInterrupt"
    fcomm._yield = real
    result["untouched"] = bool((rm == 0).all() and (rv == 1).all())
    try:
        fd.sync_forward(x, comm=comm)  # rank 1's message of the first call is still queued
        result["second"] = "returned"
    except RuntimeError as exc:
        result["second"] = str(exc)
    result["dup"] = fd.sync_forward(x, comm=MPI.COMM_SELF.Dup())[0].shape == x.shape
else:
    time.sleep(1.0)
    fd.sync_forward(x, comm=comm, running_mean=rm, running_var=rv)  # completes: rank 0
    # sent its message before the interrupt
    result["first"] = "returned"
gathered = comm.gather(result, root=0)
if rank == 0:  # one writer: two ranks' prints interleave piece by piece ("10 [...")
    print("0", gathered, flush=True)
"""


def test_interrupted_exchange_makes_later_calls_refuse():
    """KeyboardInterrupt on rank 0 while it waits for rank 1: that call raises, changes
    nothing, and every later call on the communicator raises RuntimeError at once
    (rank 1's message of the interrupted call is still queued: a later exchange would
    pair with it and merge stale statistics), saying to end the job or use comm.Dup()."""
    from test_distributed import _mpiexec
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (pip install 'fastbn[mpi]' brings MPICH's)")
    env = dict(os.environ, FASTBN_NUM_THREADS="1", PYTHONPATH=_package_root())
    run = subprocess.run([mpiexec, "-n", "2", sys.executable, "-c", _INTERRUPTED_EXCHANGE],
                         env=env,
                         capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert run.returncode == 0, run.stdout + run.stderr
    line = next(l for l in run.stdout.splitlines() if l.startswith("0 "))
    assert "'first': 'KeyboardInterrupt'" in line and "'untouched': True" in line, line
    assert "was interrupted in the middle of its exchange" in line, line
    assert "'dup': True" in line and "[{" in line, line
