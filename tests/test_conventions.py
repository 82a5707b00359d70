"""Other frameworks' conventions (issue 15): the biased running variance of Keras, Flax
and course code, the momentum warning, parameters converted as NumPy would, dy's dtype,
and examples/course_adapter.py against a plain course-style NumPy batch norm.

Expected values are hand-computed sequences or the frameworks' own update formulas,
written out here in NumPy; both backends are checked (the `impl` fixture).
"""
import importlib.util
import pathlib
import warnings

import numpy as np
import pytest

import fastbn
from fastbn import _checks
from fastbn.layers import BatchNorm

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.fixture
def fresh_warning(monkeypatch):
    """The momentum warning as in a new process (it is shown once per process)."""
    monkeypatch.setattr(_checks, "_momentum_warned", False)


def batches(dtype=np.float64, steps=4, shape=(6, 3), seed=0):
    rng = np.random.default_rng(seed)
    col = (1, 3) + (1,) * (len(shape) - 2)  # per-channel scale and offset along axis 1
    scale, offset = np.reshape([1.0, 3.0, 0.5], col), np.reshape([0.0, 2.0, -1.0], col)
    return [(rng.normal(size=shape) * scale + offset).astype(dtype) for _ in range(steps)]


# ---------------------------------------------------------------------------------------
# unbiased_running_var
# ---------------------------------------------------------------------------------------
def test_biased_running_var_by_hand(impl):
    """Two steps computed by hand: x = [[1], [3]] then [[0], [4]], momentum 0.5."""
    rm, rv = np.zeros(1), np.ones(1)
    impl.forward(np.array([[1.0], [3.0]]), running_mean=rm, running_var=rv, momentum=0.5,
                 unbiased_running_var=False)
    assert rm.tolist() == [1.0] and rv.tolist() == [1.0]      # 0.5*0 + 0.5*2; 0.5*1 + 0.5*1
    impl.forward(np.array([[0.0], [4.0]]), running_mean=rm, running_var=rv, momentum=0.5,
                 unbiased_running_var=False)
    assert rm.tolist() == [1.5] and rv.tolist() == [2.5]      # 0.5*1 + 0.5*2; 0.5*1 + 0.5*4
    # the default stays PyTorch's unbiased variance: 0.5*2.5 + 0.5*(4 * 2/1) = 5.25
    impl.forward(np.array([[0.0], [4.0]]), running_mean=rm, running_var=rv, momentum=0.5)
    assert rv.tolist() == [5.25]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_biased_running_var_matches_keras_and_flax(impl, dtype):
    """Keras: moving = moving * m + batch * (1 - m); Flax: ra = m * ra + (1 - m) * batch,
    both with the biased batch variance and m = 0.99 the old value's weight."""
    m = 0.99
    keras_mean, keras_var = np.zeros(3), np.ones(3)
    rm, rv = np.zeros(3, dtype), np.ones(3, dtype)
    for x in batches(dtype, shape=(5, 3, 4)):
        xd = x.astype(np.float64)
        mean, var = xd.mean(axis=(0, 2)), xd.var(axis=(0, 2))
        keras_mean = keras_mean * m + mean * (1 - m)
        keras_var = keras_var * m + var * (1 - m)
        flax_var = m * rv.astype(np.float64) + (1 - m) * var
        impl.forward(x, running_mean=rm, running_var=rv, momentum=1 - m,
                     unbiased_running_var=False)
        tol = 1e-6 if dtype == np.float32 else 1e-13
        np.testing.assert_allclose(rv, flax_var, rtol=tol)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(rm, keras_mean, rtol=tol, atol=tol)
    np.testing.assert_allclose(rv, keras_var, rtol=tol)


def test_update_running_stats_biased(impl):
    rm, rv = np.zeros(2), np.ones(2)
    impl.update_running_stats(rm, rv, np.array([1.0, 2.0]), np.array([4.0, 8.0]), 1,
                              momentum=0.25, unbiased_running_var=False)
    assert rm.tolist() == [0.25, 0.5] and rv.tolist() == [1.75, 2.75]
    with pytest.raises(ValueError, match="count"):  # unbiased needs count >= 2
        impl.update_running_stats(rm, rv, np.ones(2), np.ones(2), 1)
    with pytest.raises(TypeError, match="unbiased_running_var"):
        impl.update_running_stats(rm, rv, np.ones(2), np.ones(2), 4, unbiased_running_var=1)
    assert rm.tolist() == [0.25, 0.5] and rv.tolist() == [1.75, 2.75]


def test_unbiased_running_var_must_be_a_bool(impl):
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(TypeError, match="unbiased_running_var"):
        impl.forward(batches()[0], running_mean=rm, running_var=rv, unbiased_running_var="no")
    assert rm.tolist() == [0, 0, 0] and rv.tolist() == [1, 1, 1]


def test_layer_biased_running_var(layer_backend):
    bn = BatchNorm(3, dtype=np.float64, momentum=0.2, unbiased_running_var=False)
    rm, rv = np.zeros(3), np.ones(3)
    for x in batches():
        bn(x)
        rm = 0.8 * rm + 0.2 * x.mean(axis=0)
        rv = 0.8 * rv + 0.2 * x.var(axis=0)
    np.testing.assert_allclose(bn.running_mean, rm, rtol=1e-13, atol=1e-15)
    np.testing.assert_allclose(bn.running_var, rv, rtol=1e-13)
    copy = BatchNorm.load(_saved(bn))  # the setting survives save/load
    assert copy.unbiased_running_var is False


def _saved(bn):
    import io
    f = io.BytesIO()
    bn.save(f)
    f.seek(0)
    return f


def test_sync_forward_biased_running_var():
    pytest.importorskip("mpi4py", reason="SyncBN needs mpi4py")
    distributed = pytest.importorskip("fastbn.distributed")
    from mpi4py import MPI
    x = batches()[0]
    rm, rv = np.zeros(3), np.ones(3)
    distributed.sync_forward(x, comm=MPI.COMM_SELF, running_mean=rm, running_var=rv,
                             momentum=0.5, unbiased_running_var=False)
    np.testing.assert_allclose(rv, 0.5 + 0.5 * x.var(axis=0), rtol=1e-13)
    bn = distributed.SyncBatchNorm(3, comm=MPI.COMM_SELF, dtype=np.float64, momentum=0.5,
                                   unbiased_running_var=False)
    bn(x)
    np.testing.assert_allclose(bn.running_var, 0.5 + 0.5 * x.var(axis=0), rtol=1e-13)


# ---------------------------------------------------------------------------------------
# momentum > 0.5: one warning per process
# ---------------------------------------------------------------------------------------
def test_momentum_warning_once_with_the_fix(impl, fresh_warning):
    x, rm, rv = batches()[0], np.zeros(3), np.ones(3)
    with pytest.warns(fastbn.MomentumWarning, match=r"momentum=0\.1") as record:
        impl.forward(x, running_mean=rm, running_var=rv, momentum=0.9)
    assert record[0].filename == __file__  # points at the caller's line
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second call stays silent
        impl.forward(x, running_mean=rm, running_var=rv, momentum=0.9)
        BatchNorm(3, momentum=0.99)


def test_momentum_warning_not_on_defaults_or_where_momentum_is_unused(impl, fresh_warning):
    x, rm, rv = batches()[0], np.zeros(3), np.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        impl.forward(x, running_mean=rm, running_var=rv)                # default 0.1
        impl.forward(x, running_mean=rm, running_var=rv, momentum=0.5)  # the limit
        impl.forward(x, momentum=0.9)                                   # no running stats
        impl.forward(x, training=False, running_mean=rm, running_var=rv, momentum=0.9)
        BatchNorm(3)
        BatchNorm(3, momentum=None)


def test_momentum_warning_not_from_a_cumulative_layer(layer_backend, fresh_warning):
    """momentum=None averages with factor 1/n: 1.0 at the first step is no mistake."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        bn = BatchNorm(3, momentum=None)
        bn(batches(np.float32)[0])
        bn(batches(np.float32)[1])


def test_momentum_warning_as_error_leaves_state_untouched(impl, fresh_warning):
    x, rm, rv = batches()[0], np.zeros(3), np.ones(3)
    with warnings.catch_warnings():
        warnings.simplefilter("error", fastbn.MomentumWarning)
        with pytest.raises(fastbn.MomentumWarning):
            impl.forward(x, running_mean=rm, running_var=rv, momentum=0.9)
    assert rm.tolist() == [0, 0, 0] and rv.tolist() == [1, 1, 1]


def test_momentum_warning_from_sync_forward(fresh_warning):
    pytest.importorskip("mpi4py", reason="SyncBN needs mpi4py")
    distributed = pytest.importorskip("fastbn.distributed")
    from mpi4py import MPI
    with pytest.warns(fastbn.MomentumWarning):
        distributed.sync_forward(batches()[0], comm=MPI.COMM_SELF, running_mean=np.zeros(3),
                                 running_var=np.ones(3), momentum=0.99)


def test_momentum_warning_from_the_layer_and_silenced(fresh_warning):
    with pytest.warns(fastbn.MomentumWarning, match=r"momentum=0\.01"):
        BatchNorm(3, momentum=0.99)
    _checks._momentum_warned = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=fastbn.MomentumWarning)  # the documented way
        BatchNorm(3, momentum=0.9)


# ---------------------------------------------------------------------------------------
# parameters converted as NumPy would; data and running statistics are not
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parameters_converted_as_numpy_would(impl, dtype):
    x = batches(dtype)[0]
    dy = batches(dtype, seed=1)[0]
    y_ref, c_ref = impl.forward(x, np.array([3.0, 4.0, 5.0]), np.array([1.0, 0.0, -1.0]))
    for gamma, beta in [(np.asarray([3, 4, 5]), np.asarray([1, 0, -1])),   # int64
                        ([3, 4, 5], [1, 0, -1]), ((3.0, 4.0, 5.0), [1.0, 0.0, -1.0]),
                        (np.array([3, 4, 5], np.uint8), np.array([1, 0, -1], np.int8))]:
        y, cache = impl.forward(x, gamma, beta)
        np.testing.assert_array_equal(y, y_ref.astype(dtype))
        dx, dgamma, dbeta = impl.backward(dy, cache)
        # dgamma takes gamma's converted dtype: np.result_type(gamma, x), as gamma * x
        expected = np.result_type(np.asarray(gamma), dtype)
        assert dgamma.dtype == expected and dbeta.dtype == np.result_type(np.asarray(beta), dtype)
        np.testing.assert_allclose(dgamma, impl.backward(dy, c_ref)[1], rtol=1e-6)
    # a Python number applies to every channel and takes x's dtype (NumPy's weak scalars)
    y, cache = impl.forward(x, 2.0, 1)
    np.testing.assert_allclose(y, impl.forward(x, np.full(3, 2.0, dtype), np.ones(3, dtype))[0],
                               rtol=0, atol=0)
    assert cache.gamma.dtype == dtype and cache.beta.dtype == dtype


def test_integer_data_and_running_stats_refused(impl):
    x = batches()[0]
    with pytest.raises(TypeError, match=r"\bx\b"):
        impl.forward(np.asarray([[1, 2, 3], [4, 5, 6]]))
    with pytest.raises(TypeError, match=r"\bx\b"):
        impl.forward(x > 0)
    rm, rv = np.zeros(3), np.ones(3, dtype=np.int64)
    with pytest.raises(TypeError, match=r"running_var.*in place"):
        impl.forward(x, running_mean=rm, running_var=rv)
    with pytest.raises(TypeError, match="running_mean"):
        impl.forward(x, running_mean=[0.0, 0.0, 0.0], running_var=np.ones(3))
    with pytest.raises(TypeError, match="gamma"):
        impl.forward(x, np.ones(3, dtype=complex))
    with pytest.raises(ValueError, match="gamma"):
        impl.forward(x, [1.0, 2.0])
    assert rm.tolist() == [0, 0, 0]


def test_running_stats_updated_in_place_not_copied(impl):
    x = batches(np.float32)[0]
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float64)  # any float dtypes
    ids = (rm.__array_interface__["data"][0], rv.__array_interface__["data"][0])
    impl.forward(x, [1, 2, 3], 0, running_mean=rm, running_var=rv)
    assert rm.any() and (rv != 1).any()
    assert ids == (rm.__array_interface__["data"][0], rv.__array_interface__["data"][0])


def test_dy_of_another_dtype_refused_with_the_fix(impl):
    x = batches(np.float32)[0]
    _, cache = impl.forward(x)
    with pytest.raises(TypeError, match=r"dy.*float32.*astype\(np\.float32\)"):
        impl.backward(x.astype(np.float64), cache)
    with pytest.raises(TypeError, match=r"\bdy\b"):
        impl.backward(x.astype(np.int32), cache)


# ---------------------------------------------------------------------------------------
# examples/course_adapter.py against a plain course-style implementation
# ---------------------------------------------------------------------------------------
def course_batchnorm_forward(x, gamma, beta, bn_param):
    """The classic assignment's code: momentum is the old value's weight, biased variance,
    running statistics stored back into bn_param as new arrays."""
    mode, eps, momentum = bn_param["mode"], bn_param.get("eps", 1e-5), bn_param.get("momentum", 0.9)
    D = x.shape[1]
    running_mean = bn_param.get("running_mean", np.zeros(D, dtype=x.dtype))
    running_var = bn_param.get("running_var", np.zeros(D, dtype=x.dtype))
    if mode == "train":
        mu, var = x.mean(axis=0), x.var(axis=0)
        xhat = (x - mu) / np.sqrt(var + eps)
        out = gamma * xhat + beta
        cache = (xhat, gamma, var, eps)
        running_mean = momentum * running_mean + (1 - momentum) * mu
        running_var = momentum * running_var + (1 - momentum) * var
    else:
        out = gamma * (x - running_mean) / np.sqrt(running_var + eps) + beta
        cache = None
    bn_param["running_mean"], bn_param["running_var"] = running_mean, running_var
    return out, cache


def course_batchnorm_backward(dout, cache):
    xhat, gamma, var, eps = cache
    N = dout.shape[0]
    dxhat = dout * gamma
    dx = (N * dxhat - dxhat.sum(axis=0) - xhat * (dxhat * xhat).sum(axis=0)) \
        / (N * np.sqrt(var + eps))
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)


def _load_example():
    spec = importlib.util.spec_from_file_location("course_adapter",
                                                  ROOT / "examples" / "course_adapter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_course_adapter_is_at_most_15_lines():
    text = (ROOT / "examples" / "course_adapter.py").read_text()
    adapter = text.split("# ---- the adapter")[1].split("# ---- end of the adapter")[0]
    lines = [ln for ln in adapter.splitlines()[1:] if ln.strip()]
    assert len(lines) <= 15, "\n".join(lines)


def test_course_adapter_matches_course_code_over_steps(layer_backend):
    ex = _load_example()
    rng = np.random.default_rng(3)
    gamma, beta = rng.normal(size=4) + 1, rng.normal(size=4)
    mine, theirs = {"mode": "train", "momentum": 0.9}, {"mode": "train", "momentum": 0.9}
    for step in range(5):
        x = rng.normal(size=(8, 4)) * [1, 2, 3, 4] + step
        dout = rng.normal(size=(8, 4))
        out, cache = ex.batchnorm_forward(x, gamma, beta, mine)
        out_c, cache_c = course_batchnorm_forward(x, gamma, beta, theirs)
        np.testing.assert_allclose(out, out_c, rtol=1e-12, atol=1e-12)
        for got, want in zip(ex.batchnorm_backward(dout, cache),
                             course_batchnorm_backward(dout, cache_c)):
            np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
        for key in ("running_mean", "running_var"):
            np.testing.assert_allclose(mine[key], theirs[key], rtol=1e-12, atol=1e-14)
        gamma, beta = gamma - 0.1 * np.ones(4), beta + 0.05  # an optimiser step
    mine["mode"] = theirs["mode"] = "test"
    x = rng.normal(size=(3, 4))
    np.testing.assert_allclose(ex.batchnorm_forward(x, gamma, beta, mine)[0],
                               course_batchnorm_forward(x, gamma, beta, theirs)[0], rtol=1e-12)


def test_course_adapter_numeric_gradient_check(layer_backend):
    """Centred differences of sum(out * dout), as the assignment's gradient check."""
    ex = _load_example()
    rng = np.random.default_rng(4)
    x, gamma, beta = rng.normal(size=(5, 3)), rng.normal(size=3) + 1, rng.normal(size=3)
    dout = rng.normal(size=(5, 3))

    def loss(x_, gamma_, beta_):
        return (ex.batchnorm_forward(x_, gamma_, beta_, {"mode": "train"})[0] * dout).sum()

    def numeric(f, a, h=1e-5):
        grad = np.zeros_like(a)
        for i in np.ndindex(a.shape):
            old = a[i]
            a[i] = old + h
            plus = f()
            a[i] = old - h
            minus = f()
            a[i] = old
            grad[i] = (plus - minus) / (2 * h)
        return grad

    _, cache = ex.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    dx, dgamma, dbeta = ex.batchnorm_backward(dout, cache)
    f = lambda: loss(x, gamma, beta)  # noqa: E731 (reads the arrays numeric() perturbs)
    for got, a in ((dx, x), (dgamma, gamma), (dbeta, beta)):
        want = numeric(f, a)
        assert np.abs(got - want).max() / max(np.abs(got).max() + np.abs(want).max(), 1e-8) < 1e-7


def test_course_adapter_trains():
    ex = _load_example()
    loss, accuracy = ex.train(steps=60)
    assert loss < 0.5 and accuracy > 0.9


MPI_SCRIPT = """
import numpy as np
from mpi4py import MPI
from fastbn.distributed import MismatchError, sync_forward
comm = MPI.COMM_WORLD
r = comm.Get_rank()
x = np.random.default_rng(r).normal(size=(4 + r, 3)) + r
try:
    sync_forward(x, comm=comm, running_mean=np.zeros(3), running_var=np.ones(3),
                 unbiased_running_var=(r == 0))
    out = [f"{r} accepted"]
except MismatchError as exc:
    out = [f"{r} mismatch {'biased running variance' in str(exc)}"]
rm, rv = np.zeros(3), np.ones(3)
sync_forward(x, comm=comm, running_mean=rm, running_var=rv, momentum=0.5,
             unbiased_running_var=False)
union = np.concatenate(comm.allgather(x))
out.append(f"{r} biased {bool(np.allclose(rv, 0.5 + 0.5 * union.var(axis=0), rtol=1e-13))}")
lines = comm.gather(out)
if r == 0:
    print("\\n".join(sum(lines, [])))
"""


@pytest.mark.mpi
def test_sync_ranks_must_agree_on_unbiased_running_var(tmp_path):
    """Two ranks: a disagreement raises MismatchError on both (not silently different
    running variances); agreeing on False gives the union's biased variance."""
    pytest.importorskip("mpi4py")
    import os
    import shutil
    import subprocess
    import sys
    mpiexec = pathlib.Path(sys.executable).parent / "mpiexec"
    mpiexec = str(mpiexec) if mpiexec.exists() else shutil.which("mpiexec")
    if mpiexec is None:
        pytest.skip("mpiexec not found")
    script = tmp_path / "check.py"
    script.write_text(MPI_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT), FASTBN_NUM_THREADS="1", OMP_NUM_THREADS="1")
    res = subprocess.run([mpiexec, "-n", "2", sys.executable, "-m", "mpi4py", str(script)],
                         capture_output=True, text=True, env=env, timeout=120,
                         stdin=subprocess.DEVNULL)
    assert res.returncode == 0, res.stdout + res.stderr
    lines = sorted(res.stdout.split("\n"))
    for rank in (0, 1):
        assert f"{rank} mismatch True" in lines and f"{rank} biased True" in lines, res.stdout
