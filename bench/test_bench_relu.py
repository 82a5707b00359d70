"""Fused BN+ReLU against batch norm followed by a separate NumPy ReLU.

    python -m pytest bench/test_bench_relu.py --benchmark-group-by=group

The separate path is what a NumPy trainer does without the fused kernel:
forward ``np.maximum(y, 0, out=y)`` after the batch norm, backward a mask
``y > 0`` applied to dy before the batch-norm backward. Every buffer is
preallocated in both paths, so the comparison is of the passes over memory.
No timing is asserted; each benchmark checks once that both paths agree.

(The parameter is called ``which``: bench/conftest.py parametrises every test that
takes a ``case`` fixture over its own shapes.)
"""
import numpy as np
import pytest

pytest.importorskip("pytest_benchmark")

import fastbn  # noqa: E402

CASES = {
    "NCHW-64x64x56x56": ((64, 64, 56, 56), 1),
    "NC-8192x4096": ((8192, 4096), 1),
}
_DATA = {}


def data(case):
    """Inputs for a case, made once per session (they are large)."""
    if case not in _DATA:
        shape, axis = CASES[case]
        rng = np.random.default_rng(0)
        x = rng.standard_normal(shape, dtype=np.float32)
        dy = rng.standard_normal(shape, dtype=np.float32)
        C = shape[axis]
        gamma = rng.uniform(0.5, 1.5, C).astype(np.float32)
        beta = rng.normal(0.0, 0.5, C).astype(np.float32)
        _DATA.clear()  # keep one case in memory at a time
        _DATA[case] = dict(x=x, dy=dy, gamma=gamma, beta=beta, axis=axis,
                           y=np.empty_like(x), dx=np.empty_like(x),
                           dgamma=np.empty_like(gamma), dbeta=np.empty_like(beta))
    return _DATA[case]


def fused_forward(d):
    return fastbn.forward(d["x"], d["gamma"], d["beta"], axis=d["axis"], activation="relu",
                          out=d["y"])


def separate_forward(d):
    y, cache = fastbn.forward(d["x"], d["gamma"], d["beta"], axis=d["axis"], out=d["y"])
    np.maximum(y, 0, out=y)
    return y, cache


def fused_backward(d, cache):
    return fastbn.backward(d["dy"], cache, out=(d["dx"], d["dgamma"], d["dbeta"]))


def separate_backward(d, cache, mask, dy_masked):
    np.greater(d["y"], 0, out=mask)
    np.multiply(d["dy"], mask, out=dy_masked)
    return fastbn.backward(dy_masked, cache, out=(d["dx"], d["dgamma"], d["dbeta"]))


def _label(benchmark, phase, case, path):
    benchmark.group = f"{phase} {case} float32"
    benchmark.extra_info.update(backend=fastbn.backend, path=path, shape=CASES[case][0])


def _agree(a, b):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("which", list(CASES))
@pytest.mark.parametrize("path", ["fused", "separate"])
def test_forward(benchmark, which, path):
    d = data(which)
    _label(benchmark, "forward", which, path)
    fn = fused_forward if path == "fused" else separate_forward
    y, _ = benchmark(fn, d)
    other = (separate_forward if path == "fused" else fused_forward)(d)[0].copy()
    y, _ = fn(d)
    _agree(y, other)


@pytest.mark.parametrize("which", list(CASES))
@pytest.mark.parametrize("path", ["fused", "separate"])
def test_backward(benchmark, which, path):
    d = data(which)
    _label(benchmark, "backward", which, path)
    if path == "fused":
        _, cache = fused_forward(d)
        dx = benchmark(fused_backward, d, cache)[0]
    else:
        _, cache = separate_forward(d)
        mask = np.empty(d["x"].shape, dtype=bool)
        dy_masked = np.empty_like(d["dy"])
        dx = benchmark(separate_backward, d, cache, mask, dy_masked)[0]
    dx = dx.copy()
    _, cache = (separate_forward if path == "fused" else fused_forward)(d)
    if path == "fused":
        other = separate_backward(d, cache, np.empty(d["x"].shape, dtype=bool),
                                  np.empty_like(d["dy"]))[0]
    else:
        other = fused_backward(d, cache)[0]
    _agree(dx, other)


@pytest.mark.parametrize("which", list(CASES))
@pytest.mark.parametrize("path", ["fused", "separate"])
def test_training_step(benchmark, which, path):
    """forward + backward, as one training step of the layer sees it."""
    d = data(which)
    _label(benchmark, "forward+backward", which, path)
    if path == "fused":
        def step():
            _, cache = fused_forward(d)
            return fused_backward(d, cache)
    else:
        mask = np.empty(d["x"].shape, dtype=bool)
        dy_masked = np.empty_like(d["dy"])

        def step():
            _, cache = separate_forward(d)
            return separate_backward(d, cache, mask, dy_masked)
    dx, dgamma, dbeta = benchmark(step)
    assert dx.shape == d["x"].shape and dgamma.shape == d["gamma"].shape
