"""Optional: fastbn (both backends) against torch.nn.functional.batch_norm and its
autograd gradients, over layouts, dtypes, train/eval, ReLU and running-stat updates."""
import numpy as np
import pytest

import fastbn
from conftest import DTYPES, assert_close, channel_values

torch = pytest.importorskip("torch")
F = torch.nn.functional


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    """One torch thread while this module runs: the arrays are small, and torch's idle
    OpenMP workers would otherwise spin against fastbn's. Set here, not at import:
    torch's setting goes through OpenMP and would cap fastbn's threads in every
    test collected after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)

# torch wants channels at axis 1; NHWC is compared through a transpose.
LAYOUTS = {"NC": ((16, 3), 1), "NCL": ((4, 3, 7), 1), "NCHW": ((3, 4, 5, 6), 1),
           "NHWC": ((3, 5, 6, 4), -1), "NCDHW": ((2, 3, 3, 4, 5), 1)}
# Differences come from rounding alone, float32 outputs differing by a few ulps
# of the largest value (torch accumulates float32 in float32).
TORCH_RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}


def to_torch(a, axis, requires_grad=False):
    t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(a, axis, 1)))
    return t.requires_grad_(requires_grad)


def from_torch(t, axis):
    return np.moveaxis(t.detach().numpy(), 1, axis)


def torch_forward_backward(x, dy, gamma, beta, axis, training, running, momentum, eps,
                           activation):
    """y, dx, dgamma, dbeta from torch; `running` (mean, var) updated in place."""
    xt = to_torch(x, axis, requires_grad=True)
    gt = None if gamma is None else torch.from_numpy(gamma.copy()).requires_grad_(True)
    bt = None if beta is None else torch.from_numpy(beta.copy()).requires_grad_(True)
    rm, rv = (None, None) if running is None else (torch.from_numpy(r) for r in running)
    yt = F.batch_norm(xt, rm, rv, gt, bt, training=training, momentum=momentum, eps=eps)
    if activation == "relu":
        yt = F.relu(yt)
    yt.backward(to_torch(dy, axis))
    grad = lambda t: None if t is None else t.grad.numpy()  # noqa: E731
    return from_torch(yt, axis), from_torch(xt.grad, axis), grad(gt), grad(bt)


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_matches_torch(impl, layout, dtype, training, affine, activation):
    shape, axis = LAYOUTS[layout]
    rng = np.random.default_rng(31)
    x = channel_values(rng, shape, axis, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    gamma = rng.uniform(0.5, 2, C).astype(dtype) if affine else None
    beta = rng.standard_normal(C).astype(dtype) if affine else None
    running = (rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype))
    ours = tuple(r.copy() for r in running)
    eps, momentum = 1e-4, 0.2

    y, cache = impl.forward(x, gamma, beta, axis=axis, eps=eps, training=training,
                            running_mean=ours[0], running_var=ours[1], momentum=momentum,
                            activation=activation)
    dx, dgamma, dbeta = impl.backward(dy, cache)
    ty, tdx, tdgamma, tdbeta = torch_forward_backward(x, dy, gamma, beta, axis, training,
                                                      running, momentum, eps, activation)
    rtol = TORCH_RTOL[np.dtype(dtype)]
    assert_close(y, ty, rtol, "y")
    assert_close(dx, tdx, rtol, "dx")
    assert_close(ours[0], running[0], rtol, "running_mean")
    assert_close(ours[1], running[1], rtol, "running_var")
    if affine:
        assert_close(dgamma, tdgamma, rtol, "dgamma")
        assert_close(dbeta, tdbeta, rtol, "dbeta")
    else:
        assert dgamma is None and dbeta is None


@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_running_stats_track_torch_over_steps(impl, layout, dtype, momentum):
    shape, axis = LAYOUTS[layout]
    rng = np.random.default_rng(32)
    C = shape[axis]
    running_mean, running_var = np.zeros(C, dtype), np.ones(C, dtype)
    torch_mean, torch_var = torch.zeros(C, dtype=torch.from_numpy(running_mean).dtype), None
    torch_var = torch.ones(C, dtype=torch_mean.dtype)
    for step in range(4):
        x = channel_values(rng, shape, axis, dtype)
        impl.forward(x, axis=axis, running_mean=running_mean, running_var=running_var,
                     momentum=momentum)
        F.batch_norm(to_torch(x, axis), torch_mean, torch_var, training=True,
                     momentum=momentum)
        rtol = TORCH_RTOL[np.dtype(dtype)]
        assert_close(running_mean, torch_mean.numpy(), rtol, f"running_mean, step {step}")
        assert_close(running_var, torch_var.numpy(), rtol, f"running_var, step {step}")
    # and the eval-mode output with the accumulated statistics
    x = channel_values(rng, shape, axis, dtype)
    y, _ = impl.forward(x, axis=axis, training=False, running_mean=running_mean,
                        running_var=running_var)
    ty = F.batch_norm(to_torch(x, axis), torch_mean, torch_var, training=False)
    assert_close(y, from_torch(ty, axis), TORCH_RTOL[np.dtype(dtype)], "eval y")


# ---------------------------------------------------------------- issue 20's keywords
# PyTorch has them as compositions (leaky ReLU and a residual add after F.batch_norm; an
# input that does not require grad; batch norm in eval mode inside a training loop):
# fastbn's single calls must match torch's autograd through the composition.

@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", ["NCL", "NHWC"])
def test_residual_and_leaky_relu_match_torch(impl, layout, dtype, training, activation):
    shape, axis = LAYOUTS[layout]
    rng = np.random.default_rng(33)
    x, z = channel_values(rng, shape, axis, dtype), rng.standard_normal(shape).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    gamma, beta = rng.uniform(0.5, 2, C).astype(dtype), rng.standard_normal(C).astype(dtype)
    rm, rv = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    y, cache = impl.forward(x, gamma, beta, axis=axis, training=training, running_mean=rm.copy(),
                            running_var=rv.copy(), residual=z, activation=activation,
                            **({"negative_slope": 0.05} if activation == "leaky_relu" else {}))
    dx, dgamma, dbeta, dz = impl.backward(dy, cache)
    xt, zt = to_torch(x, axis, True), to_torch(z, axis, True)
    gt, bt = torch.from_numpy(gamma).requires_grad_(True), torch.from_numpy(beta).requires_grad_(True)
    yt = F.batch_norm(xt, torch.from_numpy(rm), torch.from_numpy(rv), gt, bt,
                      training=training) + zt
    yt = {None: yt, "relu": F.relu(yt), "leaky_relu": F.leaky_relu(yt, 0.05)}[activation]
    yt.backward(to_torch(dy, axis))
    rtol = TORCH_RTOL[np.dtype(dtype)]
    assert_close(y, from_torch(yt, axis), rtol, "y")
    assert_close(dx, from_torch(xt.grad, axis), rtol, "dx")
    assert_close(dz, from_torch(zt.grad, axis), rtol, "dresidual")
    assert_close(dgamma, gt.grad.numpy(), rtol, "dgamma")
    assert_close(dbeta, bt.grad.numpy(), rtol, "dbeta")


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", DTYPES)
def test_need_dx_false_matches_torch_without_input_grad(impl, dtype, training):
    shape, axis = LAYOUTS["NCHW"]
    rng = np.random.default_rng(34)
    x, dy = channel_values(rng, shape, axis, dtype), rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    gamma, beta = rng.uniform(0.5, 2, C).astype(dtype), rng.standard_normal(C).astype(dtype)
    rm, rv = rng.standard_normal(C).astype(dtype), rng.uniform(0.5, 2, C).astype(dtype)
    _, cache = impl.forward(x, gamma, beta, training=training, running_mean=rm.copy(),
                            running_var=rv.copy(), activation="relu")
    dx, dgamma, dbeta = impl.backward(dy, cache, need_dx=False)
    gt, bt = torch.from_numpy(gamma).requires_grad_(True), torch.from_numpy(beta).requires_grad_(True)
    yt = F.relu(F.batch_norm(to_torch(x, axis), torch.from_numpy(rm), torch.from_numpy(rv), gt,
                             bt, training=training))
    yt.backward(to_torch(dy, axis))
    assert dx is None
    rtol = TORCH_RTOL[np.dtype(dtype)]
    assert_close(dgamma, gt.grad.numpy(), rtol, "dgamma")
    assert_close(dbeta, bt.grad.numpy(), rtol, "dbeta")


def test_frozen_statistics_layer_matches_torch_eval_mode_in_training(layer_backend):
    """BatchNorm.freeze_stats(): torch's BatchNorm2d left in eval() while its parameters
    train: running statistics used and unchanged, gamma/beta gradients through them."""
    rng = np.random.default_rng(35)
    bn, tbn = fastbn.BatchNorm(4, dtype=np.float64), torch.nn.BatchNorm2d(4).double()
    for _ in range(2):  # some running statistics first, in both
        x = channel_values(rng, (3, 4, 5, 5), 1, np.float64)
        bn(x)
        tbn(torch.from_numpy(x))
    bn.freeze_stats()
    tbn.eval()
    x, dy = channel_values(rng, (3, 4, 5, 5), 1, np.float64), rng.standard_normal((3, 4, 5, 5))
    xt = torch.from_numpy(x).requires_grad_(True)
    yt = tbn(xt)
    yt.backward(torch.from_numpy(dy))
    y = bn(x)
    dx = bn.backward(dy)
    assert_close(y, yt.detach().numpy(), 1e-12, "y")
    assert_close(dx, xt.grad.numpy(), 1e-12, "dx")
    assert_close(bn.grads["gamma"], tbn.weight.grad.numpy(), 1e-12, "dgamma")
    assert_close(bn.running_mean, tbn.running_mean.numpy(), 1e-12, "running_mean")
    assert bn.num_batches_tracked == int(tbn.num_batches_tracked) == 2
