"""fastbn.distributed: synchronised batch norm over MPI.

The multi-process tests launch ``mpiexec -n 2``, ``-n 3`` and ``-n 5`` (and ``-n 8``
with ``-m slow``) on tests/mpi_check.py,
which runs sync_forward/sync_backward and SyncBatchNorm on uneven per-rank batches
(one rank empty) and pickles every rank's inputs and outputs; the assertions are
here: each result must match single-process fastbn.forward/backward (or
fastbn.BatchNorm) on the union of the batches, and the statistics, running
statistics and parameter gradients must be bit-identical on every rank.
They skip when mpi4py or mpiexec is missing. The size-1 tests run in this process.
"""
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastbn
from fastbn.layers import BatchNorm


def test_import_error_names_mpi4py():
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "try:\n    import fastbn.distributed\n"
            "except ImportError as e:\n    print('IMPORT-ERROR:', e)\n")
    env = dict(os.environ, FASTBN_BACKEND="numpy", PYTHONPATH=_package_root())
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "IMPORT-ERROR:" in res.stdout and "mpi4py" in res.stdout, res.stdout + res.stderr
    assert "pip install" in res.stdout


def _package_root():
    """PYTHONPATH for subprocesses: the fastbn this process imported."""
    root = str(Path(fastbn.__file__).resolve().parent.parent)
    return os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])


try:
    from mpi4py import MPI
    from fastbn.distributed import (MismatchError, PeerError, SyncBatchNorm, SyncCache,
                                    sync_backward, sync_forward)
    MISSING = None
except (ImportError, RuntimeError) as exc:  # no mpi4py, or no MPI library for it
    MISSING = f"fastbn.distributed unavailable: {exc} (pip install 'fastbn[mpi]')"
    MPI = None
requires_mpi = pytest.mark.skipif(MISSING is not None, reason=str(MISSING))

HERE = Path(__file__).resolve().parent
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def close(actual, expected, what, rtol=None):
    """|actual - expected| <= rtol * max|expected|, same shape and dtype."""
    expected = np.asarray(expected)
    assert isinstance(actual, np.ndarray), f"{what}: got {type(actual)}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if expected.size == 0:
        return
    if expected.dtype.kind in "iu":
        assert np.array_equal(actual, expected), f"{what}: {actual} != {expected}"
        return
    rtol = RTOL[expected.dtype] if rtol is None else rtol
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    assert np.isfinite(a).all(), f"{what}: non-finite values"
    scale = max(float(np.abs(e).max()), 1e-300)
    err = float(np.abs(a - e).max())
    assert err <= rtol * scale, f"{what}: max error {err:.3e} > {rtol:.0e} * {scale:.3e}"


def identical(arrays, what):
    """The same bytes on every rank."""
    first = arrays[0]
    for r, a in enumerate(arrays[1:], 1):
        assert a.dtype == first.dtype and a.shape == first.shape, f"{what}: rank {r} differs"
        assert a.tobytes() == first.tobytes(), f"{what}: rank {r} differs from rank 0 (bitwise)"


# ------------------------------------------------------------------ one process, comm of size 1

COMMS = {"COMM_SELF": lambda: MPI.COMM_SELF, "COMM_WORLD": lambda: MPI.COMM_WORLD}
SHAPES = {"NC": ((6, 3), 1), "NCHW": ((3, 4, 5, 2), 1), "NHWC": ((3, 5, 2, 4), -1)}


def _data(shape, axis, dtype, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[axis]
    bshape = [1] * len(shape)
    bshape[axis] = C
    x = (rng.normal(0, 2, bshape) + rng.uniform(0.5, 2, bshape) * rng.standard_normal(shape))
    return (x.astype(dtype), rng.standard_normal(shape).astype(dtype),
            rng.uniform(0.5, 2, C).astype(dtype), rng.normal(0, 1, C).astype(dtype))


@requires_mpi
@pytest.mark.parametrize("comm", COMMS)
@pytest.mark.parametrize("layout", SHAPES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_size_one_matches_forward(comm, layout, dtype, activation):
    comm = COMMS[comm]()
    if comm.Get_size() != 1:
        pytest.skip("the test process runs under mpiexec")
    shape, axis = SHAPES[layout]
    x, dy, gamma, beta = _data(shape, axis, dtype)
    rm, rv = np.zeros(shape[axis]), np.ones(shape[axis], np.float32)
    rm2, rv2 = rm.copy(), rv.copy()
    y, cache = sync_forward(x, gamma, beta, comm=comm, axis=axis, running_mean=rm,
                            running_var=rv, momentum=0.3, activation=activation)
    y2, cache2 = fastbn.forward(x, gamma, beta, axis=axis, running_mean=rm2, running_var=rv2,
                                momentum=0.3, activation=activation)
    assert isinstance(cache, SyncCache)
    assert cache.global_count == cache.count == x.size // shape[axis]
    close(y, y2, "y")
    close(cache.mean, cache2.mean + cache2.mean_lo, "mean", 1e-13)
    close(cache.invstd, cache2.invstd, "invstd", 1e-12)
    close(rm, rm2, "running_mean", 1e-12)
    close(rv, rv2, "running_var")
    dx, dg, db = sync_backward(dy, cache, comm=comm)
    dx2, dg2, db2 = fastbn.backward(dy, cache2)
    close(dx, dx2, "dx", {np.float32: 1e-5, np.float64: 1e-11}[dtype])
    close(dg, dg2, "dgamma")
    close(db, db2, "dbeta")


@requires_mpi
def test_size_one_eval_and_out():
    x, dy, gamma, beta = _data((4, 3, 5), 1, np.float32)
    rm, rv = np.full(3, 0.5), np.full(3, 2.0)
    y, cache = sync_forward(x, gamma, beta, comm=MPI.COMM_SELF, training=False,
                            running_mean=rm, running_var=rv)
    y2, _ = fastbn.forward(x, gamma, beta, training=False, running_mean=rm, running_var=rv)
    np.testing.assert_array_equal(y, y2)
    assert not isinstance(cache, SyncCache)  # eval: a local forward, no communication
    dx, dg, db = sync_backward(dy, cache, comm=MPI.COMM_SELF)
    dx2, dg2, db2 = fastbn.backward(dy, cache)
    np.testing.assert_array_equal(dx, dx2)
    # out= for y, and for (dx, dgamma, dbeta)
    out = np.empty_like(x)
    y, cache = sync_forward(x, gamma, beta, comm=MPI.COMM_SELF, out=out)
    assert y is out
    outs = (np.empty_like(x), np.empty_like(gamma), np.empty_like(beta))
    res = sync_backward(dy, cache, comm=MPI.COMM_SELF, out=outs)
    assert all(r is o for r, o in zip(res, outs))
    # in place: backward then refuses the cache, as fastbn.backward does
    xc = x.copy()
    _, cache = sync_forward(xc, comm=MPI.COMM_SELF, out=xc)
    with pytest.raises(ValueError, match="in place"):
        sync_backward(dy, cache, comm=MPI.COMM_SELF)


@requires_mpi
def test_size_one_zero_channels():
    x = np.ones((4, 0, 3))
    rm, rv = np.zeros(0), np.ones(0)
    y, cache = sync_forward(x, np.ones(0), np.zeros(0), comm=MPI.COMM_SELF,
                            running_mean=rm, running_var=rv)
    assert y.shape == x.shape
    dx, dg, db = sync_backward(np.ones_like(x), cache, comm=MPI.COMM_SELF)
    assert dx.shape == x.shape and dg.shape == db.shape == (0,)


@requires_mpi
def test_size_one_validation():
    x = np.ones((4, 3))
    x[0] = 2
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(TypeError, match="comm"):
        sync_forward(x, comm=None)
    with pytest.raises(TypeError, match="comm"):
        sync_forward(x, comm="world")
    with pytest.raises(ValueError, match="COMM_NULL"):
        sync_forward(x, comm=MPI.COMM_NULL)
    with pytest.raises(TypeError, match="training"):
        sync_forward(x, comm=MPI.COMM_SELF, training=1)
    with pytest.raises(ValueError, match="gamma"):
        sync_forward(x, np.ones(4), comm=MPI.COMM_SELF)
    with pytest.raises(TypeError, match="x must"):
        sync_forward([[1.0, 2.0]], comm=MPI.COMM_SELF)
    with pytest.raises(ValueError, match="more than 1 value"):
        sync_forward(x[:1], comm=MPI.COMM_SELF, running_mean=rm, running_var=rv)
    with pytest.raises(ValueError, match="more than 1 value"):
        sync_forward(x[:0], comm=MPI.COMM_SELF, running_mean=rm, running_var=rv)
    with pytest.raises(ValueError, match="read-only"):
        ro = np.zeros(3)
        ro.flags.writeable = False
        sync_forward(x, comm=MPI.COMM_SELF, running_mean=ro, running_var=rv)
    np.testing.assert_array_equal(rm, 0)  # failed calls left the running stats alone
    np.testing.assert_array_equal(rv, 1)
    _, cache = sync_forward(x, comm=MPI.COMM_SELF)
    with pytest.raises(TypeError, match="comm"):
        sync_backward(np.ones_like(x), cache, comm=None)
    with pytest.raises(TypeError, match="cache"):
        sync_backward(np.ones_like(x), "cache", comm=MPI.COMM_SELF)
    with pytest.raises(ValueError, match="shape"):
        sync_backward(np.ones((4, 4)), cache, comm=MPI.COMM_SELF)
    _, local = fastbn.forward(x)
    with pytest.raises(TypeError, match="sync_forward"):
        sync_backward(np.ones_like(x), local, comm=MPI.COMM_SELF)


@requires_mpi
def test_size_one_busy_comm_raises_and_changes_nothing():
    """A call while another thread is inside one on the same communicator raises at once
    (the other thread is played by holding the communicator's lock)."""
    from fastbn.distributed import _state
    x, dy, gamma, beta = _data((4, 3, 5), 1, np.float64)
    _, cache = sync_forward(x, gamma, beta, comm=MPI.COMM_SELF)
    rm, rv = np.zeros(3), np.ones(3)
    layer = SyncBatchNorm(3, comm=MPI.COMM_SELF)
    lock = _state(MPI.COMM_SELF).lock
    assert lock.acquire(blocking=False)
    try:
        with pytest.raises(RuntimeError, match="another thread.*comm.Dup"):
            sync_forward(x, gamma, beta, comm=MPI.COMM_SELF, running_mean=rm, running_var=rv)
        with pytest.raises(RuntimeError, match="another thread"):
            sync_backward(dy, cache, comm=MPI.COMM_SELF)
        with pytest.raises(RuntimeError, match="another thread"):
            layer(x.astype(np.float32))
    finally:
        lock.release()
    np.testing.assert_array_equal(rm, 0)
    np.testing.assert_array_equal(rv, 1)
    assert layer.num_batches_tracked == 0 and layer._cache is None
    np.testing.assert_array_equal(layer.running_mean, 0)
    sync_forward(x, gamma, beta, comm=MPI.COMM_SELF, running_mean=rm, running_var=rv)
    assert not lock.locked()  # released after the call; and after an error:
    with pytest.raises(ValueError, match="gamma"):
        sync_forward(x, gamma[:2], comm=MPI.COMM_SELF)
    assert not lock.locked()


@requires_mpi
def test_size_one_layer_matches_batchnorm(tmp_path):
    rng = np.random.default_rng(3)
    sync = SyncBatchNorm(4, comm=MPI.COMM_SELF, momentum=None, axis=-1)
    plain = BatchNorm(4, momentum=None, axis=-1)
    for step in range(3):
        x = rng.normal(1, 2, (5, 3, 4)).astype(np.float32)
        dy = rng.standard_normal(x.shape).astype(np.float32)
        close(sync(x), plain(x), f"y step {step}")
        close(sync.backward(dy), plain.backward(dy), f"dx step {step}")
        for key in ("gamma", "beta"):
            close(sync.grads[key], plain.grads[key], f"d{key} step {step}")
            sync.params[key] -= 0.1 * sync.grads[key]
            plain.params[key] -= 0.1 * plain.grads[key]
    assert sync.num_batches_tracked == plain.num_batches_tracked == 3
    for key, value in plain.state_dict().items():
        close(np.asarray(sync.state_dict()[key]), np.asarray(value), key)
    sync.eval()
    plain.eval()
    x = rng.normal(1, 2, (2, 3, 4)).astype(np.float32)
    close(sync(x), plain(x), "eval y")
    close(sync.backward(np.ones_like(x)), plain.backward(np.ones_like(x)), "eval dx")
    # save / load (the comm is given again), and conversion from a BatchNorm
    sync.save(tmp_path / "bn.npz")
    again = SyncBatchNorm.load(tmp_path / "bn.npz", comm=MPI.COMM_SELF)
    assert isinstance(again, SyncBatchNorm) and again.axis == -1 and again.momentum is None
    for key, value in sync.state_dict().items():
        np.testing.assert_array_equal(again.state_dict()[key], value)
    conv = SyncBatchNorm.from_batchnorm(plain, comm=MPI.COMM_SELF)
    for key, value in plain.state_dict().items():
        np.testing.assert_array_equal(conv.state_dict()[key], value)
    with pytest.raises(TypeError, match="comm"):
        SyncBatchNorm(4, comm=None)
    with pytest.raises(ValueError, match="channels"):
        SyncBatchNorm(4, comm=MPI.COMM_SELF)(np.ones((3, 5)))
    assert "Sync" in repr(sync)


# ------------------------------------------------------------------ several processes

def _mpiexec():
    for cand in (Path(sys.executable).parent / "mpiexec", shutil.which("mpiexec")):
        if cand and os.access(cand, os.X_OK):
            return str(cand)
    return None


@pytest.fixture(scope="module", params=[2, 3, 5, pytest.param(8, marks=pytest.mark.slow)],
                ids=lambda n: f"n{n}")
def mpi_run(request, tmp_path_factory):
    """Launch tests/mpi_check.py on n ranks once; the gathered results."""
    return launch_script("mpi_check.py", request.param, tmp_path_factory)


def launch_script(script, n, tmp_path_factory, timeout=180):
    """Run tests/<script> OUTFILE n under mpiexec -n n; the results it pickled, each
    rank's checked for a crash report (skips without mpi4py or mpiexec)."""
    if MISSING is not None:
        pytest.skip(MISSING)
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (pip install 'fastbn[mpi]' brings MPICH's)")
    outfile = tmp_path_factory.mktemp(f"{Path(script).stem}{n}") / "results.pkl"
    env = dict(os.environ, PYTHONPATH=_package_root(), FASTBN_NUM_THREADS="1",
               OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", OMPI_MCA_rmaps_base_oversubscribe="1")
    cmd = [mpiexec, "-n", str(n), sys.executable, "-m", "mpi4py", str(HERE / script),
           str(outfile), str(n)]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{' '.join(cmd)} timed out (a deadlock?)\n{exc.stdout}\n{exc.stderr}")
    assert res.returncode == 0, f"{' '.join(cmd)} failed:\n{res.stdout}\n{res.stderr}"
    with open(outfile, "rb") as f:
        data = pickle.load(f)
    assert data["size"] == n
    assert data["backend"] == fastbn.backend
    for r in data["results"]:
        for rank, mine in enumerate(r["ranks"]):
            assert "crash" not in mine, f"{r['case']} rank {rank}:\n{mine['crash']}"
    return data


def _cases(data, kind):
    return [r for r in data["results"] if r["case"]["kind"] == kind]


def _expected(inputs, case):
    """Single-process fastbn.forward/backward on the union of the batches."""
    rm, rv = inputs["running_mean"].copy(), inputs["running_var"].copy()
    y, cache = fastbn.forward(inputs["x"], inputs["gamma"], inputs["beta"], axis=inputs["axis"],
                              running_mean=rm, running_var=rv, momentum=case["momentum"],
                              activation=case["activation"])
    dx, dgamma, dbeta = fastbn.backward(inputs["dy"], cache)
    return dict(y=y, dx=dx, dgamma=dgamma, dbeta=dbeta, running_mean=rm, running_var=rv,
                mean=cache.mean + cache.mean_lo, invstd=cache.invstd)


@requires_mpi
@pytest.mark.mpi
def test_functions_match_union(mpi_run):
    cases = _cases(mpi_run, "functions")
    assert len(cases) == 20
    assert max(len(r["inputs"]["gamma"] if r["inputs"]["gamma"] is not None else
                   r["inputs"]["running_mean"]) for r in cases) > 64  # wide and narrow
    for r in cases:
        case, inputs, ranks = r["case"], r["inputs"], r["ranks"]
        what = f"{case['layout']} {case['dtype']} split={case['split']} affine={case['affine']} " \
               f"act={case['activation']} out={case['use_out']}"
        exp = _expected(inputs, case)
        for key in ("y", "dx"):  # the local parts, glued back together along the batch axis
            for rank, n in enumerate(case["split"]):
                assert ranks[rank][key].shape[0] == n, f"{what}: {key} of rank {rank}"
            close(np.concatenate([m[key] for m in ranks]), exp[key], f"{what}: {key}")
        for key in ("dgamma", "dbeta"):
            if exp[key] is None:
                assert all(m[key] is None for m in ranks), f"{what}: {key}"
                continue
            for rank, m in enumerate(ranks):
                close(m[key], exp[key], f"{what}: {key} on rank {rank}")
            identical([m[key] for m in ranks], f"{what}: {key}")
        for key in ("running_mean", "running_var"):
            for rank, m in enumerate(ranks):
                close(m[key], exp[key], f"{what}: {key} on rank {rank}")
            identical([m[key] for m in ranks], f"{what}: {key}")
        close(ranks[0]["mean"], exp["mean"], f"{what}: mean", 1e-12)
        close(ranks[0]["invstd"], exp["invstd"], f"{what}: invstd", 1e-12)
        identical([m["mean"] for m in ranks], f"{what}: mean")
        identical([m["invstd"] for m in ranks], f"{what}: invstd")
        assert all(m["global_count"] == inputs["x"].size // len(exp["mean"]) for m in ranks)
        if case["use_out"]:
            assert all(m["y_is_out"] and m["dx_is_out"] for m in ranks), what


@requires_mpi
@pytest.mark.mpi
def test_splits_include_an_empty_rank(mpi_run):
    """The cases do cover an empty rank and a rank with a single sample."""
    splits = [r["case"]["split"] for r in _cases(mpi_run, "functions")]
    assert any(0 in s for s in splits) and any(1 in s for s in splits)
    for r in _cases(mpi_run, "functions"):
        for rank, n in enumerate(r["case"]["split"]):
            if n == 0:
                assert r["ranks"][rank]["y"].size == 0 and r["ranks"][rank]["dx"].size == 0


@requires_mpi
@pytest.mark.mpi
def test_layer_steps_match_batchnorm(mpi_run):
    (r,) = _cases(mpi_run, "layer")
    case, inputs, ranks = r["case"], r["inputs"], r["ranks"]
    ref = BatchNorm(case["C"], momentum=ranks[0]["momentum"])
    for key, value in inputs["init"].items():
        ref.params[key][...] = value
    for step, batch in enumerate(inputs["batches"]):
        y = ref(batch["x"])
        dx = ref.backward(batch["dy"])
        got = [m["steps"][step] for m in ranks]
        what = f"step {step} split={batch['split']}"
        close(np.concatenate([g["y"] for g in got]), y, f"{what}: y")
        close(np.concatenate([g["dx"] for g in got]), dx, f"{what}: dx")
        for key in ("gamma", "beta"):
            for rank, g in enumerate(got):
                close(g["d" + key], ref.grads[key], f"{what}: d{key} on rank {rank}")
            identical([g["d" + key] for g in got], f"{what}: d{key}")
            ref.params[key] -= np.float32(0.1) * ref.grads[key]
    ref.eval()
    y_eval = ref(inputs["x_eval"])
    for rank, m in enumerate(ranks):
        close(m["y_eval"], y_eval, f"eval y on rank {rank}")
        for key, value in ref.state_dict().items():
            close(np.asarray(m["state"][key]), np.asarray(value), f"state {key} on rank {rank}",
                  rtol=1e-5)
    for key in ranks[0]["state"]:
        identical([np.asarray(m["state"][key]) for m in ranks], f"state {key}")


MISMATCH = {"others": "MismatchError"}
EXPECTED_ERRORS = {  # case -> {rank or "others": exception name (None: returns)}
    "bad_gamma_on_last_rank": {"last": "ValueError", "others": "PeerError"},
    "global_count_one": {"others": "ValueError"},
    "eps_mismatch": MISMATCH,
    "bad_dy_on_rank_0": {0: "TypeError", "others": "PeerError"},
    "layer_bad_input_on_last_rank": {"last": "ValueError", "others": "PeerError"},
    "local_cache_in_training": {"others": "TypeError"},
    "x_not_array_on_last_rank": {"last": "TypeError", "others": "PeerError"},
    "cross_forward_backward": MISMATCH,
    "momentum_mismatch": MISMATCH,
    "axis_mismatch": MISMATCH,
    "ndim_mismatch": MISMATCH,
    "activation_mismatch": MISMATCH,
    "running_stats_use_mismatch": MISMATCH,
    "training_mismatch": MISMATCH,
    "layer_momentum_mismatch": MISMATCH,
    "backward_of_other_forward": MISMATCH,
    "channels_mismatch_wide": MISMATCH,
    "thread_inside_call": {0: "RuntimeError", "others": None},
}
MESSAGE_WORDS = {  # case -> what every rank's message must name (the values: rank order)
    "eps_mismatch": ["eps: [1e-05, 0.001"],
    "cross_forward_backward": ["out of step", "rank 0 in sync_forward (4 channels)",
                               "rank 1 in sync_backward (5 channels)"],
    "momentum_mismatch": ["momentum: [0.1, 0.3"],
    "axis_mismatch": ["axis: [1, 2"],
    "ndim_mismatch": ["ndim: [3, 2"],
    "activation_mismatch": ["activation: ['relu', None"],
    "running_stats_use_mismatch": ["flags: [[updates running statistics, training mode], "
                                   "[training mode]"],
    "training_mismatch": ["flags: [[has gamma, has beta, training mode], [has gamma, has beta]"],
    "layer_momentum_mismatch": ["momentum: [0.5, 0.3333333333333333"],
    "backward_of_other_forward": ["forward call: ["],
    "channels_mismatch_wide": ["channels: [4, 1000"],
    "thread_inside_call": ["another thread", "comm.Dup()"],
}


@requires_mpi
@pytest.mark.mpi
def test_errors_raise_on_every_rank(mpi_run):
    """A mistake or a mismatch on some ranks raises everywhere (no deadlock, no rank
    returns), leaves running statistics and layer state untouched, and the communicator
    stays usable, by MPI and by fastbn."""
    cases = {r["case"]["name"]: r["ranks"] for r in _cases(mpi_run, "error")}
    assert set(cases) == set(EXPECTED_ERRORS)
    n = mpi_run["size"]
    for name, ranks in cases.items():
        rule = EXPECTED_ERRORS[name]
        for rank, m in enumerate(ranks):
            key = "last" if rank == n - 1 and "last" in rule else rank if rank in rule else "others"
            assert m["error"] == rule[key], f"{name} on rank {rank}: {m}"
            assert m["comm_ok"], f"{name} on rank {rank}: the communicator is unusable"
            assert m["sync_ok"] is True, f"{name} on rank {rank}: the next call failed: {m}"
            assert m["state_ok"] in (None, True), f"{name} on rank {rank}: state changed"
            if m["error"] == "PeerError":
                culprit = n - 1 if "last" in rule else 0
                assert f"rank(s) [{culprit}]" in m["message"]
            if m["error"] is not None:
                for words in MESSAGE_WORDS.get(name, []):
                    assert words in m["message"], f"{name} on rank {rank}: {m['message']}"
    for name in ("momentum_mismatch", "axis_mismatch", "running_stats_use_mismatch",
                 "training_mismatch", "layer_momentum_mismatch", "channels_mismatch_wide"):
        assert all(m["state_ok"] is True for m in cases[name]), name  # was checked
    assert cases["thread_inside_call"][0]["first_ok"]  # the first thread's call worked
    assert issubclass(PeerError, RuntimeError) and issubclass(MismatchError, ValueError)


@requires_mpi
@pytest.mark.mpi
def test_example_runs_under_mpiexec():
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (pip install 'fastbn[mpi]' brings MPICH's)")
    example = HERE.parent / "examples" / "sync_bn_mpi.py"
    if not example.exists():
        pytest.skip("examples/ is not part of this checkout")
    env = dict(os.environ, PYTHONPATH=_package_root(), FASTBN_NUM_THREADS="1",
               OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = [mpiexec, "-n", "2", sys.executable, "-m", "mpi4py", str(example), "--epochs", "1"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=180,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "bit-identical on all ranks: True" in res.stdout, res.stdout


@requires_mpi
@pytest.mark.mpi
def test_exception_on_one_rank_aborts_under_python_m_mpi4py():
    """The README's launch command: an exception escaping on rank 0 while rank 1 waits in
    sync_forward ends the whole job (plain `python` would leave rank 1 waiting forever)."""
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (pip install 'fastbn[mpi]' brings MPICH's)")
    code = ("import numpy as np\nfrom mpi4py import MPI\nfrom fastbn.distributed import "
            "sync_forward\nif MPI.COMM_WORLD.Get_rank() == 0:\n    raise RuntimeError('boom')\n"
            "sync_forward(np.ones((3, 4)), comm=MPI.COMM_WORLD)\n")
    env = dict(os.environ, PYTHONPATH=_package_root(), FASTBN_NUM_THREADS="1",
               OMP_NUM_THREADS="1", OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1")
    cmd = [mpiexec, "-n", "2", sys.executable, "-m", "mpi4py", "-c", code]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120,
                             stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail("the job did not end: rank 1 still waits in sync_forward")
    assert res.returncode != 0 and "boom" in res.stderr, res.stdout + res.stderr
