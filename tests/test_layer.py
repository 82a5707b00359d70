"""fastbn.BatchNorm: the layer for NumPy trainers.

Behaviour is checked against torch.nn.BatchNorm1d/2d/3d over several training steps
(forward, backward, identical SGD updates) and in eval mode, when torch is installed;
the rest of the tests need only NumPy.
"""
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastbn
from fastbn import reference
from fastbn.layers import BatchNorm

RNG = np.random.default_rng


def tol(dtype):
    return dict(rtol=1e-10, atol=1e-10) if np.dtype(dtype) == np.float64 else dict(rtol=2e-4, atol=2e-4)


# ---------------------------------------------------------------------------------------
# torch parity
# ---------------------------------------------------------------------------------------
SHAPES = {  # name -> (torch module name, per-step input shapes with C = 3 at axis 1)
    "1d-NC": ("BatchNorm1d", [(8, 3), (5, 3), (16, 3), (7, 3)]),
    "1d-NCL": ("BatchNorm1d", [(4, 3, 6), (2, 3, 5), (3, 3, 7), (5, 3, 2)]),
    "2d": ("BatchNorm2d", [(4, 3, 5, 4), (2, 3, 3, 3), (6, 3, 2, 5), (3, 3, 4, 4)]),
    "3d": ("BatchNorm3d", [(2, 3, 3, 4, 2), (3, 3, 2, 2, 2), (1, 3, 3, 3, 3), (2, 3, 2, 3, 4)]),
}
OPTIONS = [
    dict(),
    dict(momentum=None),
    dict(momentum=0.3, eps=1e-3),
    dict(affine=False),
    dict(track_running_stats=False),
    dict(affine=False, track_running_stats=False),
    dict(momentum=None, affine=False),
]


def _torch_pair(torch, module, C, dtype, options):
    tdtype = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}[np.dtype(dtype)]
    tb = getattr(torch.nn, module)(C, dtype=tdtype, **options)
    bn = BatchNorm(C, dtype=dtype, **options)
    rng = RNG(7)
    if bn.affine:  # start from non-trivial parameters, the same in both
        g, b = rng.uniform(0.5, 1.5, C).astype(dtype), rng.normal(size=C).astype(dtype)
        bn.params["gamma"][...] = g
        bn.params["beta"][...] = b
        with torch.no_grad():
            tb.weight.copy_(torch.from_numpy(g))
            tb.bias.copy_(torch.from_numpy(b))
    return tb, bn


def _step(torch, tb, bn, x, dy, *, axis=1, relu=False, lr=0.1):
    """One forward + backward in both; returns nothing, asserts equality."""
    t = tol(x.dtype)
    xt = torch.from_numpy(np.moveaxis(x, axis, 1).copy()).requires_grad_(True)
    yt = tb(xt)
    if relu:
        yt = torch.relu(yt)
    yt.backward(torch.from_numpy(np.moveaxis(dy, axis, 1).copy()))
    y = bn(x)
    dx = bn.backward(dy)
    assert y.dtype == x.dtype and dx.dtype == x.dtype
    np.testing.assert_allclose(y, np.moveaxis(yt.detach().numpy(), 1, axis), **t)
    np.testing.assert_allclose(dx, np.moveaxis(xt.grad.numpy(), 1, axis), **t)
    if bn.affine:
        np.testing.assert_allclose(bn.grads["gamma"], tb.weight.grad.numpy(), **t)
        np.testing.assert_allclose(bn.grads["beta"], tb.bias.grad.numpy(), **t)
        # the same SGD update in both
        bn.params["gamma"] -= lr * bn.grads["gamma"]
        bn.params["beta"] -= lr * bn.grads["beta"]
        with torch.no_grad():
            tb.weight -= lr * tb.weight.grad
            tb.bias -= lr * tb.bias.grad
            tb.weight.grad = None
            tb.bias.grad = None
        np.testing.assert_allclose(bn.params["gamma"], tb.weight.detach().numpy(), **t)
    else:
        assert bn.params == {} and bn.grads == {}
    if bn.track_running_stats:
        np.testing.assert_allclose(bn.running_mean, tb.running_mean.numpy(), **t)
        np.testing.assert_allclose(bn.running_var, tb.running_var.numpy(), **t)
        assert bn.num_batches_tracked == int(tb.num_batches_tracked)
    else:
        assert bn.running_mean is None and tb.running_mean is None


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()) or "default")
@pytest.mark.parametrize("kind", list(SHAPES))
def test_matches_torch_training_and_eval(kind, options, dtype):
    torch = pytest.importorskip("torch")
    module, shapes = SHAPES[kind]
    tb, bn = _torch_pair(torch, module, 3, dtype, options)
    rng = RNG(len(kind) * 100 + len(options))
    data = [(rng.normal(2.0, 3.0, s).astype(dtype), rng.normal(size=s).astype(dtype)) for s in shapes]
    for x, dy in data[:3]:  # training steps
        assert bn.training and tb.training
        _step(torch, tb, bn, x, dy)
    assert bn.eval() is bn
    tb.eval()
    assert not bn.training
    x, dy = data[3]
    _step(torch, tb, bn, x, dy)  # eval forward and backward (statistics are constants)
    assert bn.train() is bn
    tb.train()
    _step(torch, tb, bn, *data[0])  # and back to training


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("options", [dict(), dict(momentum=None), dict(track_running_stats=False)],
                         ids=["default", "cma", "no-running-stats"])
def test_fused_relu_matches_torch_bn_then_relu(options, dtype):
    torch = pytest.importorskip("torch")
    tb, bn = _torch_pair(torch, "BatchNorm2d", 4, dtype, options)
    bn.activation = "relu"
    rng = RNG(3)
    for step in range(4):
        if step == 3:
            bn.eval()
            tb.eval()
        x = rng.normal(0.5, 2.0, (3, 4, 5, 6)).astype(dtype)
        dy = rng.normal(size=x.shape).astype(dtype)
        _step(torch, tb, bn, x, dy, relu=True)


@pytest.mark.parametrize("activation", [None, "relu"])
def test_channels_last_matches_torch(activation):
    torch = pytest.importorskip("torch")
    tb, bn = _torch_pair(torch, "BatchNorm2d", 3, np.float64, {})
    bn.axis, bn.activation = -1, activation
    rng = RNG(11)
    for step in range(4):
        if step == 3:
            bn.eval()
            tb.eval()
        x = rng.normal(-1.0, 2.0, (4, 5, 6, 3))  # NHWC
        dy = rng.normal(size=x.shape)
        _step(torch, tb, bn, x, dy, axis=-1, relu=activation == "relu")


def test_eval_single_sample_and_train_refusal_match_torch():
    torch = pytest.importorskip("torch")
    tb, bn = _torch_pair(torch, "BatchNorm1d", 3, np.float64, {})
    x = RNG(0).normal(size=(1, 3))
    with pytest.raises(ValueError):
        tb(torch.from_numpy(x))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(x)
    assert bn.num_batches_tracked == 0
    tb.eval()
    bn.eval()
    np.testing.assert_allclose(bn(x), tb(torch.from_numpy(x)).detach().numpy(), rtol=1e-12)


# ---------------------------------------------------------------------------------------
# torch-free behaviour
# ---------------------------------------------------------------------------------------
def test_exported_from_package():
    assert fastbn.BatchNorm is BatchNorm


def test_defaults():
    bn = BatchNorm(5)
    assert bn.training and bn.affine and bn.track_running_stats
    assert bn.axis == 1 and bn.eps == 1e-5 and bn.momentum == 0.1 and bn.activation is None
    assert set(bn.params) == {"gamma", "beta"} and set(bn.grads) == {"gamma", "beta"}
    for d in (bn.params, bn.grads):
        for v in d.values():
            assert v.shape == (5,) and v.dtype == np.float32
    np.testing.assert_array_equal(bn.params["gamma"], 1)
    np.testing.assert_array_equal(bn.params["beta"], 0)
    np.testing.assert_array_equal(bn.running_mean, 0)
    np.testing.assert_array_equal(bn.running_var, 1)
    assert bn.running_mean.dtype == np.float32 and bn.num_batches_tracked == 0
    assert bn.gamma is bn.params["gamma"] and bn.beta is bn.params["beta"]
    assert "BatchNorm(5" in repr(bn)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("axis,shape", [(1, (6, 4)), (1, (3, 4, 5)), (-1, (2, 3, 4)), (2, (2, 3, 4, 5))])
def test_matches_functional_reference(axis, shape, dtype):
    rng = RNG(1)
    C = shape[axis]
    bn = BatchNorm(C, axis=axis, dtype=dtype, momentum=0.2)
    bn.params["gamma"][...] = rng.uniform(0.5, 2, C)
    bn.params["beta"][...] = rng.normal(size=C)
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    x = rng.normal(1, 2, shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    y = bn(x)
    dx = bn.backward(dy)
    y_ref, cache = reference.forward(x, bn.gamma, bn.beta, axis=axis, running_mean=rm,
                                     running_var=rv, momentum=0.2)
    dx_ref, dg_ref, db_ref = reference.backward(dy, cache)
    t = tol(dtype)
    np.testing.assert_allclose(y, y_ref, **t)
    np.testing.assert_allclose(dx, dx_ref, **t)
    np.testing.assert_allclose(bn.grads["gamma"], dg_ref, **t)
    np.testing.assert_allclose(bn.grads["beta"], db_ref, **t)
    np.testing.assert_allclose(bn.running_mean, rm, **t)
    np.testing.assert_allclose(bn.running_var, rv, **t)
    bn.eval()
    y_eval = bn(x)
    y_ref_eval, _ = reference.forward(x, bn.gamma, bn.beta, axis=axis, training=False,
                                      running_mean=rm, running_var=rv)
    np.testing.assert_allclose(y_eval, y_ref_eval, **t)


def test_running_stats_formula_and_eval_leaves_them_alone():
    rng = RNG(2)
    bn = BatchNorm(3, dtype=np.float64, momentum=0.25)
    x = rng.normal(3, 2, (10, 3, 4))
    m = x.mean(axis=(0, 2))
    v = x.var(axis=(0, 2), ddof=1)
    bn(x)
    np.testing.assert_allclose(bn.running_mean, 0.25 * m, rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, 0.75 + 0.25 * v, rtol=1e-12)
    state = bn.state_dict()
    bn.eval()
    bn(x)
    bn.backward(x)
    after = bn.state_dict()
    for k in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_array_equal(after[k], state[k])


def test_momentum_none_is_cumulative_average():
    rng = RNG(3)
    bn = BatchNorm(4, dtype=np.float64, momentum=None)
    means, uvars = [], []
    for n in (5, 9, 3, 12):
        x = rng.normal(rng.normal(), 2, (n, 4))
        means.append(x.mean(axis=0))
        uvars.append(x.var(axis=0, ddof=1))
        bn(x)
    assert bn.num_batches_tracked == 4
    np.testing.assert_allclose(bn.running_mean, np.mean(means, axis=0), rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(bn.running_var, np.mean(uvars, axis=0), rtol=1e-12)


def test_no_running_stats_uses_batch_statistics_in_eval():
    rng = RNG(4)
    bn = BatchNorm(3, dtype=np.float64, track_running_stats=False)
    assert bn.running_mean is None and bn.running_var is None
    x = rng.normal(2, 3, (6, 3, 2))
    dy = rng.normal(size=x.shape)
    y_train, dx_train = bn(x), bn.backward(dy)
    bn.eval()
    y_eval, dx_eval = bn(x), bn.backward(dy)
    np.testing.assert_array_equal(y_train, y_eval)
    np.testing.assert_array_equal(dx_train, dx_eval)
    assert bn.num_batches_tracked == 0
    assert set(bn.state_dict()) == {"gamma", "beta"}


def test_affine_false():
    rng = RNG(5)
    bn = BatchNorm(3, affine=False, dtype=np.float64)
    assert bn.params == {} and bn.grads == {} and bn.gamma is None and bn.beta is None
    x = rng.normal(size=(7, 3))
    y = bn(x)
    np.testing.assert_allclose(y.mean(axis=0), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(axis=0), 1 / (1 + 1e-5 / x.var(axis=0)), rtol=1e-10)
    dx = bn.backward(rng.normal(size=x.shape))
    assert dx.shape == x.shape and bn.grads == {}
    assert set(bn.state_dict()) == {"running_mean", "running_var", "num_batches_tracked"}


def test_grads_written_in_place_and_replaced_params_used():
    rng = RNG(6)
    bn = BatchNorm(3, dtype=np.float64)
    g_arr, b_arr = bn.grads["gamma"], bn.grads["beta"]
    x = rng.normal(size=(5, 3))
    dy = rng.normal(size=x.shape)
    bn(x)
    bn.backward(dy)
    assert bn.grads["gamma"] is g_arr and bn.grads["beta"] is b_arr
    np.testing.assert_allclose(b_arr, dy.sum(axis=0), rtol=1e-12)
    # an optimiser that replaces the parameter arrays (not in place) is honoured
    bn.params["gamma"] = np.full(3, 2.0)
    bn.params["beta"] = np.full(3, -1.0)
    y = bn(x)
    y_ref, _ = reference.forward(x, np.full(3, 2.0), np.full(3, -1.0))
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    bn.zero_grad()
    np.testing.assert_array_equal(g_arr, 0)
    # a grads entry of the wrong kind is replaced, not used as out=
    bn.grads["gamma"] = None
    bn.backward(dy)
    assert isinstance(bn.grads["gamma"], np.ndarray) and bn.grads["gamma"].shape == (3,)


def test_out_arguments():
    rng = RNG(7)
    bn = BatchNorm(3, dtype=np.float64)
    x = rng.normal(size=(5, 3, 2))
    dy = rng.normal(size=x.shape)
    bn.params["gamma"][...] = [0.5, -2.0, 1.5]
    plain = BatchNorm(3, dtype=np.float64)
    plain.load_state_dict(bn.state_dict())
    y_out, dx_out = np.full_like(x, np.nan), np.full_like(x, np.nan)
    y = bn.forward(x, out=y_out)
    dx = bn.backward(dy, out=dx_out)
    assert y is y_out and dx is dx_out
    # the values written are those of the same layer without out, and right
    assert y.tobytes() == plain.forward(x).tobytes()
    assert dx.tobytes() == plain.backward(dy).tobytes()
    for key in ("gamma", "beta"):
        assert bn.grads[key].tobytes() == plain.grads[key].tobytes(), key
    ey, cache = reference.forward(x, bn.params["gamma"], bn.params["beta"])
    edx, _, _ = reference.backward(dy, cache)
    np.testing.assert_allclose(y, ey, rtol=0, atol=1e-12)
    np.testing.assert_allclose(dx, edx, rtol=0, atol=1e-12)


def test_input_dtype_other_than_layer_dtype():
    rng = RNG(8)
    bn = BatchNorm(3)  # float32 parameters
    x = rng.normal(size=(6, 3))
    y = bn(x)
    assert y.dtype == np.float64 and bn.running_mean.dtype == np.float32
    dx = bn.backward(np.ones_like(x))
    assert dx.dtype == np.float64 and bn.grads["gamma"].dtype == np.float32


def test_fused_relu_layer_against_unfused():
    rng = RNG(9)
    bn = BatchNorm(4, dtype=np.float64, activation="relu")
    plain = BatchNorm(4, dtype=np.float64)
    x = rng.normal(size=(6, 4, 3))
    dy = rng.normal(size=x.shape)
    y = bn(x)
    z = plain(x)
    np.testing.assert_allclose(y, np.maximum(z, 0), rtol=1e-12, atol=1e-15)
    dx = bn.backward(dy)
    dx_ref = plain.backward(np.where(z > 0, dy, 0))
    np.testing.assert_allclose(dx, dx_ref, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(bn.grads["gamma"], plain.grads["gamma"], rtol=1e-10, atol=1e-12)


@settings(max_examples=40, deadline=None)
@given(shape=st.lists(st.integers(1, 4), min_size=2, max_size=4), axis_pick=st.integers(0, 3),
       dtype=st.sampled_from([np.float32, np.float64]), seed=st.integers(0, 2**16),
       momentum=st.one_of(st.none(), st.floats(0, 1)), affine=st.booleans(),
       track=st.booleans(), training=st.booleans())
def test_property_layer_equals_reference(shape, axis_pick, dtype, seed, momentum, affine, track, training):
    axis = axis_pick % len(shape)
    shape[(axis + 1) % len(shape)] += 1  # at least two values per channel
    C = shape[axis]
    rng = RNG(seed)
    bn = BatchNorm(C, axis=axis, dtype=dtype, momentum=momentum, affine=affine,
                   track_running_stats=track).train(training)
    if affine:
        bn.params["gamma"][...] = rng.uniform(0.5, 2, C)
        bn.params["beta"][...] = rng.normal(size=C)
    if track:
        bn.running_mean[...] = rng.normal(size=C)
        bn.running_var[...] = rng.uniform(0.5, 2, C)
    rm = None if not track else bn.running_mean.copy()
    rv = None if not track else bn.running_var.copy()
    x = rng.normal(size=shape).astype(dtype)
    dy = rng.normal(size=shape).astype(dtype)
    y = bn(x)
    dx = bn.backward(dy)
    batch = training or not track
    y_ref, cache = reference.forward(
        x, bn.gamma, bn.beta, axis=axis, training=batch,
        running_mean=rm, running_var=rv,  # None when not tracked
        momentum=1.0 if momentum is None else momentum)  # None: 1 / num_batches_tracked = 1
    dx_ref, dg_ref, db_ref = reference.backward(dy, cache)
    t = dict(rtol=1e-9, atol=1e-9) if dtype == np.float64 else dict(rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(y, y_ref, **t)
    np.testing.assert_allclose(dx, dx_ref, **t)
    if affine:
        np.testing.assert_allclose(bn.grads["gamma"], dg_ref, **t)
        np.testing.assert_allclose(bn.grads["beta"], db_ref, **t)
    if track:
        np.testing.assert_allclose(bn.running_mean, rm, **t)
        np.testing.assert_allclose(bn.running_var, rv, **t)
        assert bn.num_batches_tracked == int(training)


# ---------------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs,exc,name", [
    (dict(num_features="3"), TypeError, "num_features"),
    (dict(num_features=3.0), TypeError, "num_features"),
    (dict(num_features=True), TypeError, "num_features"),
    (dict(num_features=0), ValueError, "num_features"),
    (dict(axis=1.0), TypeError, "axis"),
    (dict(axis=None), TypeError, "axis"),
    (dict(eps=0.0), ValueError, "eps"),
    (dict(eps=-1e-5), ValueError, "eps"),
    (dict(eps="1e-5"), TypeError, "eps"),
    (dict(momentum=1.5), ValueError, "momentum"),
    (dict(momentum=-0.1), ValueError, "momentum"),
    (dict(momentum="0.1"), TypeError, "momentum"),
    (dict(affine=1), TypeError, "affine"),
    (dict(track_running_stats=None), TypeError, "track_running_stats"),
    (dict(dtype=np.int32), TypeError, "dtype"),
    (dict(dtype=np.longdouble), TypeError, "dtype"),
    (dict(dtype="not a dtype"), TypeError, "dtype"),
    (dict(activation="tanh"), ValueError, "activation"),
])
def test_constructor_errors(kwargs, exc, name):
    kwargs = {"num_features": 3, **kwargs}
    with pytest.raises(exc, match=name):
        BatchNorm(kwargs.pop("num_features"), **kwargs)


def test_input_errors_leave_state_untouched():
    bn = BatchNorm(3, dtype=np.float64)
    before = bn.state_dict()
    with pytest.raises(ValueError, match="expected 3 channels"):
        bn(np.zeros((4, 5)))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        bn(np.zeros(3))
    with pytest.raises(TypeError, match="x must be a numpy.ndarray"):
        bn([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
    with pytest.raises(TypeError, match="dtype"):
        bn(np.zeros((4, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="axis"):
        BatchNorm(3, axis=3)(np.zeros((4, 3)))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        bn(np.zeros((1, 3)))
    after = bn.state_dict()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_backward_before_forward():
    bn = BatchNorm(3)
    with pytest.raises(RuntimeError, match="before forward"):
        bn.backward(np.zeros((2, 3), np.float32))


def test_backward_shape_mismatch():
    bn = BatchNorm(3, dtype=np.float64)
    bn(np.random.default_rng(0).normal(size=(4, 3)))
    with pytest.raises(ValueError, match="dy"):
        bn.backward(np.zeros((5, 3)))


# ---------------------------------------------------------------------------------------
# state_dict, save and load
# ---------------------------------------------------------------------------------------
def _trained(seed=0, **kwargs):
    rng = RNG(seed)
    C = kwargs.pop("C", 4)
    bn = BatchNorm(C, **kwargs)
    dtype = bn.dtype
    shape = (6, C, 3) if bn.axis == 1 else (6, 3, C)
    for _ in range(3):
        x = rng.normal(1.0, 2.0, shape).astype(dtype)
        bn(x)
        bn.backward(rng.normal(size=shape).astype(dtype))
        for k in bn.params:
            bn.params[k] -= 0.1 * bn.grads[k]
    return bn, rng.normal(size=shape).astype(dtype)


def _assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        np.testing.assert_array_equal(sa[k], sb[k])


def test_state_dict_contents_and_copies():
    bn, _ = _trained()
    sd = bn.state_dict()
    assert set(sd) == {"gamma", "beta", "running_mean", "running_var", "num_batches_tracked"}
    assert int(sd["num_batches_tracked"]) == 3
    np.testing.assert_array_equal(sd["gamma"], bn.params["gamma"])
    sd["gamma"][...] = 100.0
    sd["running_mean"][...] = 100.0
    assert not (bn.params["gamma"] == 100).any() and not (bn.running_mean == 100).any()


@pytest.mark.parametrize("kwargs", [dict(), dict(affine=False), dict(track_running_stats=False),
                                    dict(dtype=np.float64, momentum=None)])
def test_state_dict_round_trip(kwargs):
    src, x = _trained(**kwargs)
    dst = BatchNorm(4, **kwargs)
    gamma_arr = dst.params.get("gamma")
    dst.load_state_dict(src.state_dict())
    _assert_same_state(src, dst)
    assert dst.params.get("gamma") is gamma_arr  # loaded in place: optimiser references stay valid
    for mode in (True, False):
        src.train(mode)
        dst.train(mode)
        np.testing.assert_array_equal(dst(x), src(x))


def test_load_state_dict_keeps_layer_dtype():
    src, _ = _trained(dtype=np.float64)
    dst = BatchNorm(4, dtype=np.float32)
    dst.load_state_dict(src.state_dict())
    assert dst.params["gamma"].dtype == np.float32 and dst.running_var.dtype == np.float32
    np.testing.assert_allclose(dst.running_var, src.running_var, rtol=1e-6)


@pytest.mark.parametrize("edit,exc,match", [
    (lambda d: d.pop("running_var"), KeyError, "missing keys \\['running_var'\\]"),
    (lambda d: d.pop("gamma"), KeyError, "missing keys \\['gamma'\\]"),
    (lambda d: d.update(weight=np.ones(4)), KeyError, "unexpected keys \\['weight'\\]"),
    (lambda d: d.update(gamma=np.ones(5)), ValueError, "gamma.*shape \\(4,\\)"),
    (lambda d: d.update(running_mean=np.ones((4, 1))), ValueError, "running_mean.*shape"),
    (lambda d: d.update(beta=np.array(["a"] * 4)), TypeError, "beta"),
    (lambda d: d.update(running_var=-np.ones(4)), ValueError, "running_var.*non-negative"),
    (lambda d: d.update(num_batches_tracked=np.array([1, 2])), ValueError, "num_batches_tracked"),
    (lambda d: d.update(num_batches_tracked=-1), ValueError, "num_batches_tracked"),
    (lambda d: d.update(num_batches_tracked=2.5), ValueError, "num_batches_tracked"),
])
def test_load_state_dict_errors_change_nothing(edit, exc, match):
    src, _ = _trained(seed=1)
    dst, _ = _trained(seed=2)
    before = dst.state_dict()
    sd = src.state_dict()
    edit(sd)
    with pytest.raises(exc, match=match):
        dst.load_state_dict(sd)
    after = dst.state_dict()
    for k in before:
        np.testing.assert_array_equal(after[k], before[k])


def test_load_state_dict_rejects_non_mapping():
    with pytest.raises(TypeError, match="mapping"):
        BatchNorm(3).load_state_dict([1, 2, 3])


def test_load_state_dict_affine_mismatch():
    src, _ = _trained(affine=False)
    with pytest.raises(KeyError, match="missing keys \\['gamma', 'beta'\\]"):
        BatchNorm(4).load_state_dict(src.state_dict())


@pytest.mark.parametrize("kwargs", [
    dict(),
    dict(axis=-1, eps=1e-3, momentum=None, dtype=np.float64, activation="relu"),
    dict(affine=False),
    dict(track_running_stats=False, momentum=0.5),
])
def test_save_load_npz(tmp_path, kwargs):
    src, x = _trained(**kwargs)
    path = tmp_path / "bn_layer"  # no suffix: the file is written at exactly this path
    src.save(path)
    assert path.exists()
    dst = BatchNorm.load(path)
    assert repr(dst) == repr(src)
    _assert_same_state(src, dst)
    for mode in (True, False):
        np.testing.assert_array_equal(dst.train(mode)(x), src.train(mode)(x))
    # str paths
    src.save(str(tmp_path / "bn.npz"))
    _assert_same_state(src, BatchNorm.load(str(tmp_path / "bn.npz")))


def test_save_load_file_object():
    src, _ = _trained(dtype=np.float64)
    buf = io.BytesIO()
    src.save(buf)
    buf.seek(0)
    _assert_same_state(src, BatchNorm.load(buf))


def test_load_rejects_foreign_npz(tmp_path):
    path = tmp_path / "other.npz"
    np.savez(path, gamma=np.ones(3))
    with pytest.raises(ValueError, match="not written by BatchNorm.save"):
        BatchNorm.load(path)


# ---------------------------------------------------------------------------------------
# as trainers use it (issue 15): per-call mode, explicit caches, accumulation, dtype=None
# ---------------------------------------------------------------------------------------
def _batches(n, shape=(6, 3), dtype=np.float64, seed=0):
    rng = RNG(seed)
    return [(rng.normal(size=shape) * 2 + 1).astype(dtype) for _ in range(n)]


def test_per_call_training_keyword(layer_backend):
    x1, x2 = _batches(2)
    bn = BatchNorm(3, dtype=np.float64)
    bn(x1)
    state = bn.state_dict()
    y = bn(x2, training=False)  # eval for this call: running stats used, not updated
    _assert_same_state(bn, _with_state(state))
    assert bn.training is True
    expected, _ = reference.forward(x2, bn.gamma, bn.beta, training=False,
                                    running_mean=bn.running_mean, running_var=bn.running_var)
    np.testing.assert_allclose(y, expected, **tol(np.float64))
    bn.eval()
    y = bn(x2, training=True)  # training for this call, in eval mode
    assert bn.training is False and bn.num_batches_tracked == 2
    np.testing.assert_allclose(y, reference.forward(x2)[0], **tol(np.float64))
    np.testing.assert_allclose(bn(x2, training=None), bn(x2, training=False), rtol=0, atol=0)
    with pytest.raises(TypeError, match="training"):
        bn(x2, training="yes")
    assert bn.num_batches_tracked == 2


def _with_state(state):
    other = BatchNorm(3, dtype=np.float64)
    other.load_state_dict(state)
    return other


def test_several_forwards_then_backwards_with_explicit_caches(layer_backend):
    xs, dys = _batches(3), _batches(3, seed=1)
    bn = BatchNorm(3, dtype=np.float64)
    results = [bn.forward(x, return_cache=True) for x in xs]
    expected = []
    for x, dy in zip(xs, dys):  # each pair alone, as a layer that runs forward then backward
        one = BatchNorm(3, dtype=np.float64)
        one(x)
        expected.append((one.backward(dy), one.grads["gamma"].copy(), one.grads["beta"].copy()))
    for (y, cache), dy, (dx_e, dg_e, db_e) in reversed(list(zip(results, dys, expected))):
        assert isinstance(cache, fastbn.Cache)
        dx = bn.backward(dy, cache=cache)
        np.testing.assert_allclose(dx, dx_e, rtol=0, atol=0)
        np.testing.assert_allclose(bn.grads["gamma"], dg_e, rtol=0, atol=0)
        np.testing.assert_allclose(bn.grads["beta"], db_e, rtol=0, atol=0)
    # the simple use still differentiates the last forward
    np.testing.assert_allclose(bn.backward(dys[2]), expected[2][0], rtol=0, atol=0)


def test_accumulate_grads_adds_and_zero_grad_resets(layer_backend):
    xs, dys = _batches(3), _batches(3, seed=1)
    acc = BatchNorm(3, dtype=np.float64, accumulate_grads=True)
    plain = BatchNorm(3, dtype=np.float64)
    gamma_grad = acc.grads["gamma"]
    total_g, total_b = np.zeros(3), np.zeros(3)
    for x, dy in zip(xs, dys):
        np.testing.assert_allclose(acc.backward(dy, cache=acc.forward(x, return_cache=True)[1]),
                                   plain.backward(dy, cache=plain.forward(x, return_cache=True)[1]),
                                   rtol=0, atol=0)
        total_g += plain.grads["gamma"]
        total_b += plain.grads["beta"]
    np.testing.assert_allclose(acc.grads["gamma"], total_g, rtol=1e-13)
    np.testing.assert_allclose(acc.grads["beta"], total_b, rtol=1e-13)
    assert acc.grads["gamma"] is gamma_grad  # in place: an optimiser's reference stays valid
    np.testing.assert_allclose(plain.grads["beta"], dys[2].sum(axis=0), rtol=1e-13)  # overwrite
    acc.zero_grad()
    acc.backward(dys[0], cache=acc.forward(xs[0], return_cache=True)[1])
    np.testing.assert_allclose(acc.grads["beta"], dys[0].sum(axis=0), rtol=1e-13)
    with pytest.raises(TypeError, match="accumulate_grads"):
        BatchNorm(3, accumulate_grads=1)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dtype_none_takes_the_first_input_dtype(layer_backend, dtype):
    bn = BatchNorm(3, dtype=None)
    assert bn.params["gamma"].dtype == np.float32  # placeholders until the first input
    params, grads = bn.params, bn.grads
    with pytest.raises(ValueError, match="value per channel"):
        bn(np.ones((1, 3), dtype))  # a failed first forward fixes nothing
    assert bn.running_mean.dtype == np.float32 and bn.num_batches_tracked == 0
    x = _batches(1, dtype=dtype)[0]
    bn(x)
    assert bn.params is params and bn.grads is grads
    for a in (bn.gamma, bn.beta, bn.grads["gamma"], bn.running_mean, bn.running_var):
        assert a.dtype == dtype
    assert bn.dtype == dtype
    np.testing.assert_allclose(bn.running_mean, 0.1 * x.mean(axis=0), rtol=1e-6)
    bn.backward(np.ones_like(x))
    assert bn.grads["gamma"].dtype == dtype
    bn(x.astype(np.float32 if dtype == np.float64 else np.float64))  # later inputs: fixed
    assert bn.running_mean.dtype == dtype
    assert BatchNorm.load(_npz(bn)).dtype == dtype
    assert BatchNorm.load(_npz(BatchNorm(3, dtype=None)))._config()["dtype"] is None


def _npz(bn):
    f = io.BytesIO()
    bn.save(f)
    f.seek(0)
    return f


def test_dtype_none_load_state_dict_keeps_float64_values(layer_backend):
    src = BatchNorm(3, dtype=np.float64)
    src.params["gamma"][...] = [1 + 1e-12, 2.0, 3.0]
    x = _batches(1)[0]
    src(x)
    bn = BatchNorm(3, dtype=None)
    bn.load_state_dict(src.state_dict())
    assert bn(x, training=False).dtype == np.float64 and bn.dtype == np.float64
    np.testing.assert_array_equal(bn.gamma, src.gamma)  # not rounded through float32
    np.testing.assert_array_equal(bn.running_var, src.running_var)
