"""Issue 13, parts 4 and 5: aliased buffers, the cache, interrupts, fold_linear's inputs,
memory with many channels, and threads sharing one layer. Each test failed on the code
before the fix (checked with the fix stashed)."""
import os
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastbn
from fastbn import reference
from fastbn.fold import fold_linear

BACKENDS = [fastbn, reference]
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IDS = ["fastbn", "reference"]


def _close(a, b, rtol=1e-12):
    np.testing.assert_allclose(np.asarray(a, np.float64), np.asarray(b, np.float64),
                               rtol=rtol, atol=rtol * max(1.0, float(np.max(np.abs(b)))))


def _unaliased(fn, args, kwargs, out_names):
    """fn's results on private copies of every array: NumPy's answer for overlapping
    operands (inputs read before outputs are written)."""
    copy = lambda v: v.copy() if isinstance(v, np.ndarray) else v  # noqa: E731
    kw = {k: (tuple(copy(o) for o in v) if isinstance(v, tuple) else copy(v))
          for k, v in kwargs.items()}
    return fn(*[copy(a) for a in args], **kw)


# ---------------------------------------------------------------- 1. out= overlapping inputs

@pytest.mark.parametrize("impl", BACKENDS, ids=IDS)
@pytest.mark.parametrize("which", ["gamma", "beta"])
def test_forward_out_overlapping_gamma_or_beta(impl, which):
    """The issue's repro: gamma inside out's buffer (float64) was read after y was written."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8, 16, 16))
    out = np.zeros((4, 8, 16, 16))
    param = out.reshape(-1)[254:262]
    param[...] = 2.0
    other = np.zeros(8) if which == "gamma" else np.ones(8)
    gamma, beta = (param, other) if which == "gamma" else (other, param)
    expected, _ = reference.forward(x, gamma.copy(), beta.copy())
    y, cache = impl.forward(x, gamma, beta, out=out)
    assert y is out
    _close(y, expected)
    np.testing.assert_array_equal(cache.gamma if which == "gamma" else cache.beta, 2.0)


@pytest.mark.parametrize("impl", BACKENDS, ids=IDS)
@pytest.mark.parametrize("training", [True, False])
def test_forward_out_overlapping_running_stats_in_eval(impl, training):
    """Eval: the running statistics are inputs, read before y is written. Training: they
    are outputs too, and two outputs may not share memory."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((3, 5, 7))
    out = np.zeros((3, 5, 7))
    flat = out.reshape(-1)
    rm, rv = flat[10:15], flat[40:45]
    rm[...] = rng.standard_normal(5)
    rv[...] = rng.uniform(0.5, 2.0, 5)
    gamma = rng.standard_normal(5)
    if training:
        with pytest.raises(ValueError, match="share memory"):
            impl.forward(x, gamma, running_mean=rm, running_var=rv, out=out)
        return
    expected, _ = reference.forward(x, gamma, training=False, running_mean=rm.copy(),
                                    running_var=rv.copy())
    y, _ = impl.forward(x, gamma, training=False, running_mean=rm, running_var=rv, out=out)
    _close(y, expected)


@pytest.mark.parametrize("impl", BACKENDS, ids=IDS)
def test_running_stats_overlapping_gamma(impl):
    """gamma inside running_mean: the forward uses gamma as it was before the update."""
    rng = np.random.default_rng(2)
    x = rng.standard_normal((6, 4))
    rm, rv = np.full(4, 3.0), np.ones(4)
    gamma = rm  # the same array: read, then updated
    expected_y, _ = reference.forward(x, gamma.copy())
    y, cache = impl.forward(x, gamma, running_mean=rm, running_var=rv, momentum=0.5)
    _close(y, expected_y)
    np.testing.assert_array_equal(cache.gamma, 3.0)
    _close(rm, 0.5 * 3.0 + 0.5 * x.mean(axis=0))


@pytest.mark.parametrize("impl", BACKENDS, ids=IDS)
@pytest.mark.parametrize("target", ["mean", "invstd", "gamma", "beta"])
def test_normalize_out_overlapping_vectors(impl, target):
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 6, 5))
    out = np.zeros_like(x)
    vec = {"mean": rng.standard_normal(6), "invstd": rng.uniform(0.5, 2, 6),
           "gamma": rng.standard_normal(6), "beta": rng.standard_normal(6)}
    expected = reference.normalize(x, **{k: v.copy() for k, v in vec.items()})
    view = out.reshape(-1)[7:13]
    view[...] = vec[target]
    vec[target] = view
    y = impl.normalize(x, out=out, **vec)
    _close(y, expected)


@pytest.mark.parametrize("impl", BACKENDS, ids=IDS)
@pytest.mark.parametrize("target", ["mean", "invstd", "gamma", "sum_dy", "sum_dy_xhat"])
def test_backward_elemt_out_overlapping_vectors(impl, target):
    rng = np.random.default_rng(4)
    x, dy = rng.standard_normal((5, 6, 3)), rng.standard_normal((5, 6, 3))
    out = np.zeros_like(x)
    vec = {"mean": rng.standard_normal(6), "invstd": rng.uniform(0.5, 2, 6),
           "gamma": rng.standard_normal(6), "sum_dy": rng.standard_normal(6),
           "sum_dy_xhat": rng.standard_normal(6)}
    expected = reference.backward_elemt(dy, x, count=15, **{k: v.copy() for k, v in vec.items()})
    view = out.reshape(-1)[20:26]
    view[...] = vec[target]
    vec[target] = view
    dx = impl.backward_elemt(dy, x, count=15, out=out, **vec)
    _close(dx, expected)


@pytest.mark.parametrize("impl", BACKENDS, ids=IDS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("activation", [None, "relu"])
def test_backward_outputs_overlapping_inputs(impl, training, activation):
    """dx's out overlapping dy (shifted), dgamma's out inside x: NumPy's answer."""
    rng = np.random.default_rng(5)
    shape = (4, 3, 8)
    buf = rng.standard_normal(2 * int(np.prod(shape)) + 10)
    x = buf[:96].reshape(shape)
    dy = buf[96:192].reshape(shape)
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.uniform(0.5, 2, 3)
    kw = dict(training=training, running_mean=rm, running_var=rv, activation=activation)
    _, ref_cache = reference.forward(x.copy(), gamma.copy(), beta.copy(), **kw)
    ex_dx, ex_dg, ex_db = reference.backward(dy.copy(), ref_cache)
    _, cache = impl.forward(x, gamma, beta, **{**kw, "running_mean": rm.copy(),
                                                 "running_var": rv.copy()})
    dx_out = buf[100:196].reshape(shape)   # overlaps dy, shifted by 4 values
    dg_out = buf[50:53]                     # inside x
    dx, dg, db = impl.backward(dy, cache, out=(dx_out, dg_out, None))
    _close(dx, ex_dx, 1e-10)
    _close(dg, ex_dg, 1e-10)
    _close(db, ex_db, 1e-10)
    with pytest.raises(ValueError, match="out=x"):  # dgamma's out was inside x
        impl.backward(dy, cache)
    _, cache = impl.forward(x, gamma, beta, **kw)
    with pytest.raises(ValueError, match="share memory"):  # two outputs overlapping
        impl.backward(dy, cache, out=(np.zeros(shape), dg_out, dg_out))


# ---------------------------------------------------------------- 2. the cache's copies

@pytest.mark.parametrize("impl", BACKENDS, ids=IDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cache_keeps_the_parameters_forward_used(impl, dtype):
    rng = np.random.default_rng(6)
    x, dy = rng.standard_normal((8, 5)), rng.standard_normal((8, 5))
    g = rng.uniform(0.5, 1.5, 5).astype(dtype)
    b = rng.standard_normal(5).astype(dtype)
    _, ref_cache = reference.forward(x, g.copy(), b.copy(), activation="relu")
    expected = reference.backward(dy, ref_cache)
    _, cache = impl.forward(x, g, b, activation="relu")
    g *= -1  # an optimiser step between forward and backward
    b += 1
    assert cache.gamma.dtype == dtype and cache.beta.dtype == dtype
    for got, exp in zip(impl.backward(dy, cache), expected):
        _close(got, exp, 1e-6 if dtype == np.float32 else 1e-12)


@pytest.mark.parametrize("impl", BACKENDS, ids=IDS)
def test_eval_cache_keeps_the_running_stats_forward_used(impl):
    rng = np.random.default_rng(7)
    x, dy = rng.standard_normal((8, 5)), rng.standard_normal((8, 5))
    rm, rv = rng.standard_normal(5), rng.uniform(0.5, 2, 5)
    _, ref_cache = reference.forward(x, training=False, running_mean=rm.copy(),
                                     running_var=rv.copy(), activation="relu")
    expected = reference.backward(dy, ref_cache)
    _, cache = impl.forward(x, training=False, running_mean=rm, running_var=rv,
                            activation="relu")
    rm += 5  # a training step in between
    rv *= 3
    _close(impl.backward(dy, cache)[0], expected[0])


@pytest.mark.parametrize("impl", BACKENDS, ids=IDS)
def test_second_backward_after_out_x_is_refused(impl):
    rng = np.random.default_rng(8)
    x, dy = rng.standard_normal((8, 5)), rng.standard_normal((8, 5))
    _, cache = impl.forward(x)
    dx, _, _ = impl.backward(dy, cache, out=x)
    assert dx is x
    with pytest.raises(ValueError, match="out=x"):
        impl.backward(dy, cache)
    _, cache = impl.forward(x)  # another out is fine, as often as wanted
    first = impl.backward(dy, cache, out=np.empty_like(x))[0].copy()
    np.testing.assert_array_equal(impl.backward(dy, cache)[0], first)


def test_cache_var_is_the_variance_forward_used():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((50, 6)) * np.array([1e-3, 1, 10, 1e3, 0, 1])
    for impl in BACKENDS:
        _, cache = impl.forward(x)
        _close(cache.var, x.var(axis=0), 1e-12)
        assert cache.var[4] == 0.0


# ---------------------------------------------------------------- 3. exact overlap of x

@pytest.mark.parametrize("impl", BACKENDS, ids=IDS)
def test_out_interleaved_with_x_keeps_the_cache_usable(impl):
    rng = np.random.default_rng(10)
    buf = rng.standard_normal((6, 8, 5))
    x = buf[:, ::2]
    dy = rng.standard_normal(x.shape)
    expected = reference.backward(dy, reference.forward(x.copy())[1])[0]
    y, cache = impl.forward(x, out=buf[:, 1::2])
    _close(impl.backward(dy, cache)[0], expected)
    _, cache = impl.forward(x, out=buf[:, ::2])  # in place
    with pytest.raises(ValueError, match="in place"):
        impl.backward(dy, cache)


# ---------------------------------------------------------------- 5. fold_linear's inputs

@pytest.mark.parametrize("bad", ["matrix", "masked"])
@pytest.mark.parametrize("arg", ["W", "b", "gamma", "beta", "running_mean", "running_var"])
def test_fold_linear_refuses_matrix_and_masked(bad, arg):
    C = 3
    args = {"W": np.ones((C, C)), "b": np.zeros(C), "gamma": np.ones(C), "beta": np.zeros(C),
            "running_mean": np.zeros(C), "running_var": np.ones(C)}
    v = args[arg]
    args[arg] = np.asmatrix(v) if bad == "matrix" else np.ma.masked_array(v, mask=False)
    with pytest.raises(TypeError, match=arg):
        fold_linear(**args)


# ---------------------------------------------------------------- 4. Ctrl-C during training

_INTERRUPT_SCRIPT = r"""
import signal, sys
import numpy as np
import fastbn
from fastbn import reference

impl = fastbn if sys.argv[1] == "fastbn" else reference
mode, calls = sys.argv[2], int(sys.argv[3])
rng = np.random.default_rng(0)
base = rng.standard_normal((6, 3))
batches = [base * (1 + k % 5) + 10.0 * k for k in range(-1, 50)]  # batch k at index k + 1
means = [b.mean(axis=0) for b in batches]
vars_ = [b.var(axis=0, ddof=1) for b in batches]


def which(rm):
    # the batch whose mean running_mean holds (momentum 1 copies it)
    return int(np.rint((rm[0] - means[0][0]) / 10.0)) - 1


def consistent(rm, rv, k):
    return (np.allclose(rm, means[k + 1], rtol=1e-12, atol=1e-9)
            and np.allclose(rv, vars_[k + 1], rtol=1e-12, atol=1e-9))


bn = fastbn.BatchNorm(3, momentum=1.0, dtype=np.float64, affine=False)
rm, rv = (bn.running_mean, bn.running_var) if mode == "layer" else (np.zeros(3), np.ones(3))
rm[...], rv[...] = means[0], vars_[0]
armed = False
# warm up unarmed: a lazy import (numpy.ma) interrupted every time would never finish
scratch = np.zeros(3), np.ones(3)
impl.forward(batches[0], running_mean=scratch[0], running_var=scratch[1])
impl.update_running_stats(*scratch, means[0], vars_[0], 6)
fastbn.BatchNorm(3)(batches[0])
consistent(rm, rv, -1)


def alarm(signum, frame):
    global armed
    if armed:  # one interrupt per call: a second one could land in the except clause below
        armed = False
        raise KeyboardInterrupt


signal.signal(signal.SIGALRM, alarm)
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
interrupts = bad = 0
state = -1, 0  # batch in the running statistics, commits seen
for i in range(calls):
    if interrupts >= 100:  # enough: fast calls (the compiled path) need many more calls
        break
    k = i % 49
    x = batches[k + 1]
    try:
        armed = True
        if mode == "layer":
            bn(x)
        elif mode == "update":
            impl.update_running_stats(rm, rv, means[k + 1], x.var(axis=0), 6, momentum=1.0)
        else:
            impl.forward(x, running_mean=rm, running_var=rv, momentum=1.0)
        armed = False
    except KeyboardInterrupt:
        armed = False
        interrupts += 1
    now = which(rm)
    committed = now == k and state[0] != k
    if now not in (k, state[0]) or not consistent(rm, rv, now):
        bad += 1
    elif mode == "layer":
        expected = state[1] + committed
        cache = bn._cache
        if bn.num_batches_tracked != expected or (committed and cache.x is not x):
            bad += 1
    state = now, state[1] + committed
    if mode == "layer":  # follow the layer's own count from here
        state = now, bn.num_batches_tracked
signal.setitimer(signal.ITIMER_REAL, 0, 0)
print(interrupts, bad)
"""


@pytest.mark.parametrize("impl", ["fastbn", "reference"])
@pytest.mark.parametrize("mode", ["forward", "update", "layer"])
def test_interrupts_leave_the_state_all_old_or_all_new(impl, mode, tmp_path):
    """An alarm every 1 ms raises KeyboardInterrupt (as Ctrl-C's SIGINT handler does)
    during many small training calls (momentum 1: the running statistics copy the
    batch's): after each call, the running mean and variance (and the layer's
    num_batches_tracked and cache) are all from the same batch, or all unchanged."""
    if impl == "reference" and mode == "layer" and fastbn.backend == "numpy":
        pytest.skip("the layer runs on the backend fastbn chose")
    script = tmp_path / "interrupts.py"
    script.write_text(_INTERRUPT_SCRIPT)
    env = dict(os.environ, FASTBN_NUM_THREADS="1",  # this checkout's fastbn, not an installed one
               PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]))
    if impl == "reference" and mode == "layer":
        env["FASTBN_BACKEND"] = "numpy"
    run = subprocess.run([sys.executable, str(script), impl, mode, "100000"], env=env,
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    interrupts, bad = map(int, run.stdout.split())
    assert interrupts >= 20, "too few interrupts to test anything"
    assert bad == 0, f"{bad} inconsistent states after {interrupts} interrupts"


# ---------------------------------------------------------------- 7. threads sharing a layer

@pytest.mark.parametrize("activation", [None, "relu"])
def test_one_layer_in_eval_mode_shared_by_threads(activation):
    """Threads calling one eval-mode layer on different inputs get the serial results,
    and each thread's backward uses its own forward's cache."""
    rng = np.random.default_rng(11)
    bn = fastbn.BatchNorm(6, dtype=np.float64, activation=activation)
    for _ in range(3):
        bn(rng.standard_normal((16, 6, 5)) * 2 + 1)
    bn.params["gamma"][...] = rng.uniform(0.5, 1.5, 6)
    bn.eval()
    inputs = [rng.standard_normal((1 + i % 5, 6, 3 + i % 7)) for i in range(8)]
    serial = []
    for x in inputs:
        y = bn(x)
        serial.append((y, bn.backward(np.ones_like(x))))
    results, errors = [None] * len(inputs), []
    start = threading.Barrier(len(inputs))

    def work(i):
        try:
            start.wait()
            for _ in range(300):
                y = bn(inputs[i])
                dx = bn.backward(np.ones_like(inputs[i]))
                if not (np.array_equal(y, serial[i][0]) and np.array_equal(dx, serial[i][1])):
                    results[i] = "differs"
                    return
            results[i] = "same"
        except Exception as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(inputs))]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often: interleavings are otherwise rare
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not errors, errors
    assert results == ["same"] * len(inputs)


def test_layer_copies_and_pickles():
    """The per-thread cache does not stop a layer from being copied or pickled."""
    import copy
    import pickle
    bn = fastbn.BatchNorm(3, dtype=np.float64)
    x, dy = np.random.default_rng(12).standard_normal((2, 5, 3))
    bn(x)
    twins = [copy.deepcopy(bn), pickle.loads(pickle.dumps(bn))]
    dx = bn.backward(dy)
    for twin in twins:
        np.testing.assert_array_equal(twin.running_mean, bn.running_mean)
        np.testing.assert_array_equal(twin.backward(dy), dx)


# ---------------------------------------------------------------- 6. memory, many channels

@pytest.mark.parametrize("impl", BACKENDS, ids=IDS)
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("affine", [False, True])
def test_what_a_forward_keeps_with_many_channels(impl, training, affine):
    """Few rows, many channels: y and the cache keep x.nbytes plus, per channel, the
    float64 mean, mean_lo (training) and invstd and the copies of gamma and beta;
    no float64 var and no zero mean_lo in eval mode (numpy's allocations, traced)."""
    import tracemalloc
    C = 200_000
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, C), dtype=np.float32)
    g, b = (np.ones(C, np.float32), np.zeros(C, np.float32)) if affine else (None, None)
    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)
    impl.forward(x[:, :3], running_mean=rm[:3], running_var=rv[:3])  # lazy imports first
    tracemalloc.start()
    try:
        kept = impl.forward(x, g, b, training=training, running_mean=rm, running_var=rv)
        retained = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    vectors = (3 if training else 2) * 8 * C + (2 * 4 * C if affine else 0)
    assert retained <= x.nbytes + vectors + 64 * 1024, (retained - x.nbytes) / C
    cache = kept[1]
    assert cache.mean.shape == cache.invstd.shape == cache.var.shape == (C,)
    assert cache.count == 2


def test_overlap_test_is_exact_within_its_bound(monkeypatch):
    """Interleaved views of one buffer do not overlap; when the exact test needs more
    work than allowed, the answer is the safe one ("they overlap")."""
    from fastbn import _checks
    buf = np.zeros((6, 8, 5))
    assert not _checks.overlaps(buf[:, ::2], buf[:, 1::2])
    assert _checks.overlaps(buf[:, ::2], buf[:, 2::4])
    monkeypatch.setattr(_checks, "_OVERLAP_WORK", 0)
    assert _checks.overlaps(buf[:, ::2], buf[:, 1::2])
