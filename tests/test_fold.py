"""fastbn.fold_linear: a layer followed by an eval-mode batch norm, merged into one layer."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.lib.stride_tricks import sliding_window_view

import fastbn
from fastbn.fold import fold_batchnorm, fold_linear
from fastbn.layers import BatchNorm

RNG = np.random.default_rng


# --- plain NumPy layers (stride 1, no padding) -------------------------------------------
def linear_out_in(x, W, b):
    """PyTorch convention: W is (out, in)."""
    y = x @ W.T
    return y if b is None else y + b


def linear_in_out(x, W, b):
    """NumPy-trainer convention y = x @ W: W is (in, out)."""
    y = x @ W
    return y if b is None else y + b


def conv(x, W, b):
    """N-d cross-correlation: x (N, Cin, *S), W (Cout, Cin, *K) -> (N, Cout, *S-K+1)."""
    k = W.shape[2:]
    d = len(k)
    win = sliding_window_view(x, k, axis=tuple(range(2, 2 + d)))  # (N, Cin, *out, *K)
    letters = "defg"[:d]
    kl = "uvwz"[:d]
    y = np.einsum(f"nc{letters}{kl},oc{kl}->no{letters}", win, W)
    return y if b is None else y + b.reshape((1, -1) + (1,) * d)


def conv_transpose2d(x, W, b):
    """x (N, Cin, H, W), W (Cin, Cout, kh, kw) -> (N, Cout, H+kh-1, W+kw-1)."""
    n, _, h, w = x.shape
    _, cout, kh, kw = W.shape
    y = np.zeros((n, cout, h + kh - 1, w + kw - 1), dtype=np.result_type(x, W))
    for u in range(kh):
        for v in range(kw):
            y[:, :, u:u + h, v:v + w] += np.einsum("nchw,co->nohw", x, W[:, :, u, v])
    return y if b is None else y + b.reshape(1, -1, 1, 1)


def bn_eval(y, gamma, beta, mean, var, eps, axis=1):
    out, _ = fastbn.forward(y, gamma, beta, axis=axis, eps=eps, training=False,
                            running_mean=mean, running_var=var)
    return out


def bn_params(C, dtype, rng, *, affine=True):
    gamma = rng.uniform(0.5, 2.0, C).astype(dtype) if affine else None
    beta = rng.normal(size=C).astype(dtype) if affine else None
    mean = rng.normal(size=C).astype(dtype)
    var = rng.uniform(0.1, 3.0, C).astype(dtype)
    return gamma, beta, mean, var


def tol(dtype):
    return dict(rtol=1e-10, atol=1e-10) if np.dtype(dtype) == np.float64 else dict(rtol=1e-4, atol=1e-4)


# --- equality with the unfused pair ---------------------------------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("affine", [True, False])
def test_linear_out_in(dtype, bias, affine):
    rng = RNG(0)
    x = rng.normal(size=(16, 7)).astype(dtype)
    W = rng.normal(size=(5, 7)).astype(dtype)
    b = rng.normal(size=5).astype(dtype) if bias else None
    gamma, beta, mean, var = bn_params(5, dtype, rng, affine=affine)
    expected = bn_eval(linear_out_in(x, W, b), gamma, beta, mean, var, 1e-3)
    Wf, bf = fold_linear(W, b, gamma, beta, mean, var, 1e-3)
    assert Wf.dtype == W.dtype and bf.dtype == W.dtype
    assert Wf.shape == W.shape and bf.shape == (5,)
    np.testing.assert_allclose(linear_out_in(x, Wf, bf), expected, **tol(dtype))


@pytest.mark.parametrize("axis", [1, -1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_linear_in_out(axis, dtype):
    rng = RNG(1)
    x = rng.normal(size=(16, 7)).astype(dtype)
    W = rng.normal(size=(7, 5)).astype(dtype)
    b = rng.normal(size=5).astype(dtype)
    gamma, beta, mean, var = bn_params(5, dtype, rng)
    expected = bn_eval(linear_in_out(x, W, b), gamma, beta, mean, var, 1e-5)
    Wf, bf = fold_linear(W, b, gamma, beta, mean, var, axis=axis)
    np.testing.assert_allclose(linear_in_out(x, Wf, bf), expected, **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("kernel", [(3,), (3, 2), (2, 2, 2)], ids=["conv1d", "conv2d", "conv3d"])
def test_conv(kernel, bias, dtype):
    rng = RNG(2)
    x = rng.normal(size=(2, 3) + (5,) * len(kernel)).astype(dtype)
    W = rng.normal(size=(4, 3) + kernel).astype(dtype)
    b = rng.normal(size=4).astype(dtype) if bias else None
    gamma, beta, mean, var = bn_params(4, dtype, rng)
    expected = bn_eval(conv(x, W, b), gamma, beta, mean, var, 1e-5)
    Wf, bf = fold_linear(W, b, gamma, beta, mean, var)
    np.testing.assert_allclose(conv(x, Wf, bf), expected, **tol(dtype))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_transposed_conv_axis_1(dtype):
    rng = RNG(3)
    x = rng.normal(size=(2, 3, 4, 4)).astype(dtype)
    W = rng.normal(size=(3, 6, 3, 2)).astype(dtype)  # (Cin, Cout, kh, kw)
    b = rng.normal(size=6).astype(dtype)
    gamma, beta, mean, var = bn_params(6, dtype, rng)
    expected = bn_eval(conv_transpose2d(x, W, b), gamma, beta, mean, var, 1e-5)
    Wf, bf = fold_linear(W, b, gamma, beta, mean, var, axis=1)
    np.testing.assert_allclose(conv_transpose2d(x, Wf, bf), expected, **tol(dtype))


def test_reference_layers_match_torch():
    """The plain NumPy conv layers used above are the real thing."""
    torch = pytest.importorskip("torch")
    rng = RNG(4)
    x = rng.normal(size=(2, 3, 5, 6))
    W, b = rng.normal(size=(4, 3, 3, 2)), rng.normal(size=4)
    np.testing.assert_allclose(conv(x, W, b), torch.nn.functional.conv2d(
        torch.from_numpy(x), torch.from_numpy(W), torch.from_numpy(b)).numpy(), rtol=1e-10, atol=1e-10)
    Wt = rng.normal(size=(3, 4, 3, 2))
    np.testing.assert_allclose(conv_transpose2d(x, Wt, b), torch.nn.functional.conv_transpose2d(
        torch.from_numpy(x), torch.from_numpy(Wt), torch.from_numpy(b)).numpy(), rtol=1e-10, atol=1e-10)


def test_matches_torch_fuse_helper():
    torch = pytest.importorskip("torch")
    fuse = pytest.importorskip("torch.nn.utils.fusion")
    rng = RNG(5)
    W, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    gamma, beta, mean, var = bn_params(4, np.float64, rng)
    t = [torch.from_numpy(a) for a in (W, b, mean, var, gamma, beta)]
    Wt, bt = fuse.fuse_conv_bn_weights(t[0], t[1], t[2], t[3], 1e-5, t[4], t[5])
    Wf, bf = fold_linear(W, b, gamma, beta, mean, var)
    np.testing.assert_allclose(Wf, Wt.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(bf, bt.detach().numpy(), rtol=1e-12, atol=1e-14)


def test_float32_computed_in_float64():
    rng = RNG(6)
    W = rng.normal(size=(5, 7)).astype(np.float32)
    gamma, beta, mean, var = bn_params(5, np.float32, rng)
    Wf, bf = fold_linear(W, None, gamma, beta, mean, var)
    s = gamma.astype(np.float64) / np.sqrt(var.astype(np.float64) + 1e-5)
    np.testing.assert_array_equal(Wf, (W.astype(np.float64) * s[:, None]).astype(np.float32))
    np.testing.assert_array_equal(bf, ((-mean.astype(np.float64)) * s + beta).astype(np.float32))


def test_mixed_dtypes_follow_W_and_inputs_untouched():
    rng = RNG(7)
    W = rng.normal(size=(3, 4))
    b = rng.normal(size=3).astype(np.float32)
    gamma, beta, mean, var = bn_params(3, np.float32, rng)
    copies = [a.copy() for a in (W, b, gamma, beta, mean, var)]
    Wf, bf = fold_linear(W, b, list(gamma), beta, mean, var)
    assert Wf.dtype == np.float64 and bf.dtype == np.float64
    for a, c in zip((W, b, gamma, beta, mean, var), copies):
        np.testing.assert_array_equal(a, c)


@settings(max_examples=50, deadline=None)
@given(n_in=st.integers(1, 6), n_out=st.integers(1, 6), seed=st.integers(0, 2**16),
       bias=st.booleans(), affine=st.booleans(), eps=st.floats(1e-6, 1e-1))
def test_property_linear(n_in, n_out, seed, bias, affine, eps):
    rng = RNG(seed)
    x = rng.normal(size=(4, n_in))
    W = rng.normal(size=(n_out, n_in))
    b = rng.normal(size=n_out) if bias else None
    gamma, beta, mean, var = bn_params(n_out, np.float64, rng, affine=affine)
    var[0] = 0.0  # a constant channel is fine: eps keeps the scale finite
    Wf, bf = fold_linear(W, b, gamma, beta, mean, var, eps)
    np.testing.assert_allclose(linear_out_in(x, Wf, bf),
                               bn_eval(linear_out_in(x, W, b), gamma, beta, mean, var, eps),
                               rtol=1e-9, atol=1e-9)
    # in the (in, out) convention the same numbers come out transposed
    Wf2, bf2 = fold_linear(W.T, b, gamma, beta, mean, var, eps, axis=1)
    np.testing.assert_allclose(Wf2, Wf.T, rtol=1e-15)
    np.testing.assert_array_equal(bf2, bf)


# --- from a BatchNorm layer ----------------------------------------------------------------
def test_fold_batchnorm_layer():
    rng = RNG(8)
    W, b = rng.normal(size=(4, 3, 2, 2)), rng.normal(size=4)
    bn = BatchNorm(4, dtype=np.float64, eps=1e-4)
    for _ in range(3):
        bn(conv(rng.normal(size=(3, 3, 5, 5)), W, b) * 2 + 1)
        bn.backward(rng.normal(size=(3, 4, 4, 4)))
        bn.params["gamma"] -= 0.1 * bn.grads["gamma"]
        bn.params["beta"] -= 0.1 * bn.grads["beta"]
    x = rng.normal(size=(2, 3, 5, 5))
    expected = bn.eval()(conv(x, W, b))
    Wf, bf = fold_batchnorm(W, b, bn)
    np.testing.assert_allclose(conv(x, Wf, bf), expected, rtol=1e-10, atol=1e-10)
    Wg, bg = fold_batchnorm(W, b, BatchNorm(4, affine=False))
    np.testing.assert_allclose(Wg, W / np.sqrt(1 + 1e-5), rtol=1e-6)


def test_fold_batchnorm_errors():
    W = np.ones((4, 3))
    with pytest.raises(TypeError, match="bn must be a fastbn.BatchNorm"):
        fold_batchnorm(W, None, {"gamma": np.ones(4)})
    with pytest.raises(ValueError, match="track_running_stats=False"):
        fold_batchnorm(W, None, BatchNorm(4, track_running_stats=False))
    with pytest.raises(ValueError, match="activation"):
        fold_batchnorm(W, None, BatchNorm(4, activation="relu"))
    with pytest.raises(ValueError, match="shape \\(4,\\)"):
        fold_batchnorm(W, None, BatchNorm(3))


# --- errors ----------------------------------------------------------------------------------
def _args(**over):
    a = dict(W=np.ones((4, 3)), b=np.zeros(4), gamma=np.ones(4), beta=np.zeros(4),
             running_mean=np.zeros(4), running_var=np.ones(4))
    a.update(over)
    return a


@pytest.mark.parametrize("over,exc,match", [
    (dict(W=[[1.0, 2.0]]), TypeError, "W must be a numpy.ndarray"),
    (dict(W=np.ones((4, 3), dtype=np.int64)), TypeError, "W must have dtype"),
    (dict(W=np.ones((4, 3), dtype=np.float16)), TypeError, "W must have dtype"),
    (dict(W=np.ones(4)), ValueError, "W must have at least 2 dimensions"),
    (dict(b=np.zeros(3)), ValueError, "b must have shape \\(4,\\)"),
    (dict(gamma=np.ones((4, 1))), ValueError, "gamma must have shape"),
    (dict(beta=np.zeros(5)), ValueError, "beta must have shape"),
    (dict(running_mean=None), TypeError, "running_mean is required"),
    (dict(running_var=None), TypeError, "running_var is required"),
    (dict(running_var=np.array([1.0, -1.0, 1.0, 1.0])), ValueError, "running_var must be non-negative"),
    (dict(running_mean=np.array([0.0, np.nan, 0.0, 0.0])), ValueError, "running_mean must be finite"),
    (dict(gamma="ones"), TypeError, "gamma must be a numpy.ndarray"),
    (dict(beta=np.array(["a"] * 4)), TypeError, "beta must hold real numbers"),
    (dict(b=np.ones(4, dtype=bool)), TypeError, "b must hold real numbers"),
])
def test_errors(over, exc, match):
    with pytest.raises(exc, match=match):
        fold_linear(**_args(**over))


@pytest.mark.parametrize("kw,exc,match", [
    (dict(eps=0.0), ValueError, "eps"),
    (dict(eps=-1.0), ValueError, "eps"),
    (dict(eps="small"), TypeError, "eps"),
    (dict(axis=2), ValueError, "axis=2 is out of bounds"),
    (dict(axis=1.0), TypeError, "axis must be an integer"),
])
def test_argument_errors(kw, exc, match):
    with pytest.raises(exc, match=match):
        fold_linear(**_args(), **kw)


def test_axis_picks_the_channel_count():
    # W (4, 3): with axis=1 there are 3 output channels, so (4,) vectors are refused
    with pytest.raises(ValueError, match="shape \\(3,\\)"):
        fold_linear(**_args(), axis=1)
