"""The layer's plain forward on the compiled front end (fastbn._kernels.forward_then).

`BatchNorm.forward` calls fastbn._core._front_forward_then: a plain call (no mask,
renorm, virtual batch or residual; plain arrays and scalars) is checked and run in
compiled code, which computes the new running statistics into new arrays and writes
them, with the layer's num_batches_tracked and cache, by fastbn._checks.commit (one
step an interrupt does not split: tests/test_robustness.py). Every other call goes to
the checked path, _core._forward_then. Both must leave the layer in the same state,
bit for bit; the layer's backward runs on the compiled `backward`.
"""
import contextlib
import warnings

import numpy as np
import pytest

import fastbn
from fastbn import _checks, _core

from conftest import assert_bitwise_equal
from test_front import _assert_same_cache, spy

pytestmark = pytest.mark.skipif(fastbn.backend != "c", reason="the compiled backend's front end")


@contextlib.contextmanager
def checked_layer(monkeypatch):
    """The layer on the checked paths only (as before the compiled forward_then)."""
    with monkeypatch.context() as m:
        m.setattr(_core, "_front_forward_then", _core._forward_then)
        m.setattr(fastbn, "backward", _core._checked_backward)
        yield


def _case(seed):
    rng = np.random.default_rng(seed)
    ndim = int(rng.integers(2, 5))
    shape = tuple(int(n) for n in rng.integers(1, 6, ndim))
    axis = int(rng.integers(0, ndim))
    shape = shape[:axis] + (int(rng.integers(1, 7)),) + shape[axis + 1:]
    if np.prod(shape) // shape[axis] < 2:  # training needs two values per channel
        d = ndim - 1 if axis == 0 else 0
        shape = shape[:d] + (2,) + shape[d + 1:]
    return rng, dict(
        shape=shape, axis=axis - ndim if rng.integers(2) else axis,
        data=[np.float32, np.float64][rng.integers(2)],
        layer=dict(dtype=[np.float32, np.float64, None][rng.integers(3)],
                   momentum=[0.1, None, 0.7, 1.0, 0.0][rng.integers(5)],
                   affine=bool(rng.integers(4)), track_running_stats=bool(rng.integers(4)),
                   activation=[None, "relu", "identity"][rng.integers(3)],
                   unbiased_running_var=bool(rng.integers(2)),
                   accumulate_grads=bool(rng.integers(2)),
                   eps=[1e-5, 1e-3][rng.integers(2)]),
        modes=[bool(m) for m in rng.integers(0, 3, 5)],  # mostly training
        out=bool(rng.integers(4) == 0))


def _run(seed):
    """A few forwards and backwards of a fresh layer; everything it returned and holds."""
    rng, case = _case(seed)
    shape = case["shape"]
    C = shape[case["axis"]]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # momentum > 0.5: the layer warns when built
        bn = fastbn.BatchNorm(C, axis=case["axis"], **case["layer"])
    if bn.params.get("gamma") is not None:
        bn.params["gamma"][...] = rng.uniform(0.5, 1.5, C)
        bn.params["beta"][...] = rng.standard_normal(C)
    seen = []
    for step, training in enumerate(case["modes"]):
        x = (rng.standard_normal(shape) * 2 + 1).astype(case["data"])
        dy = rng.standard_normal(shape).astype(case["data"])
        out = np.full(shape, np.nan, case["data"]) if case["out"] else None
        y, cache = bn.forward(x, training=training or step == 0, out=out, return_cache=True)
        assert out is None or y is out
        assert bn._cache is cache
        dx = bn.backward(dy)
        seen.append((y, cache, dx, bn.num_batches_tracked, bn.dtype,
                     {k: None if v is None else v.copy() for k, v in bn.grads.items()},
                     None if bn.running_mean is None else bn.running_mean.copy(),
                     None if bn.running_var is None else bn.running_var.copy()))
    return seen


@pytest.mark.parametrize("seed", range(120))
def test_layer_matches_checked_path(seed, monkeypatch):
    with spy() as calls:
        fast = _run(seed)
    assert calls == [], "the plain layer left the compiled front end"
    with checked_layer(monkeypatch):
        slow = _run(seed)
    assert len(fast) == len(slow)
    for a, b in zip(fast, slow):
        for name, va, vb in zip(("y", "cache", "dx", "num_batches_tracked", "dtype", "grads",
                                 "running_mean", "running_var"), a, b):
            if name == "cache":
                _assert_same_cache(va, vb, same_x=False)
                assert_bitwise_equal(va.x, vb.x, "cache.x")
            elif name == "grads":
                assert va.keys() == vb.keys()
                for k in va:
                    assert (va[k] is None) == (vb[k] is None), k
                    if va[k] is not None:
                        assert_bitwise_equal(va[k], vb[k], k)
            elif isinstance(va, np.ndarray):
                assert_bitwise_equal(va, vb, name)
            else:
                assert va == vb and type(va) is type(vb), name


def test_plain_layer_takes_the_compiled_path_others_the_checked_one():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 8)).astype(np.float32)
    bn = fastbn.BatchNorm(8)
    with spy() as calls:
        bn(x)
        bn.backward(np.ones_like(x))
        bn(x, training=False)
        bn.backward(np.ones_like(x))
        assert calls == []
        bn(x, mask=np.ones((4, 1), bool))
        assert calls == ["forward_then"]
    assert bn.num_batches_tracked == 2


def test_failed_plain_forward_leaves_the_state_unchanged():
    """An error in the compiled step (a non-finite batch variance) commits nothing."""
    bn = fastbn.BatchNorm(3, dtype=np.float64)
    x = np.random.default_rng(1).standard_normal((5, 3))
    bn(x)
    rm, rv, cache = bn.running_mean.copy(), bn.running_var.copy(), bn._cache
    bad = x.copy()
    bad[0, 1] = np.inf
    try:
        bn(bad)
    except (ValueError, FloatingPointError, ArithmeticError):
        pass
    else:  # non-finite data is allowed: then it must all be committed
        assert bn.num_batches_tracked == 2
        return
    assert bn.num_batches_tracked == 1 and bn._cache is cache
    assert_bitwise_equal(bn.running_mean, rm)
    assert_bitwise_equal(bn.running_var, rv)


def test_running_statistics_written_only_by_the_commit(monkeypatch):
    """The compiled forward_then leaves the running statistics alone until its commit,
    which writes them together with num_batches_tracked and the cache."""
    bn = fastbn.BatchNorm(4, dtype=np.float64)
    x = np.random.default_rng(2).standard_normal((6, 4))
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    seen = []

    def commit(copies, then=None):
        seen.append((bn.running_mean.copy(), bn.running_var.copy(), len(copies)))
        return real(copies, then)

    real = _checks.commit
    monkeypatch.setattr(_checks, "commit", commit)
    bn(x)
    assert len(seen) == 1
    before_mean, before_var, n = seen[0]
    assert n == 2
    assert_bitwise_equal(before_mean, rm)
    assert_bitwise_equal(before_var, rv)
    assert bn.num_batches_tracked == 1
    assert not np.array_equal(bn.running_mean, rm)
