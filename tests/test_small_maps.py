"""Small maps (runs under 64 bytes: 2x2, 3x3 float32) walk their elementwise passes as
the columns shape: rows of C * inner values, each channel's coefficients repeated over
its inner positions (src_c/kern_coefs.h's fbn_spread_typed_<sfx>), where such an
array takes at most FBN_SPREAD_BYTES; above it, run by run. Both walks compute the
same values alike: channels [0, C0) of an array too wide to spread must get the bits
they get in the narrow array of those channels alone, for every op that rewrites the
data (inference, the training forward with its epilogues, the backward and
backward_elemt), every dtype, 1 and 2 threads. And they must be right: against the
reference."""
import numpy as np
import pytest

import fastbn
from fastbn import reference
from conftest import assert_bitwise_equal, assert_close, data_dtypes, RTOL

SPREAD_BYTES = 65536  # src_c/tuning.h FBN_SPREAD_BYTES

# (rows, map): 6 rows (a group of 4 and a rest), maps of 2, 4 and 9 values; narrow
# channel counts: repeated over a period (5), spans (300), long rows (1500);
# and 4x4: float32's 64-byte runs are not spread, 16-bit data's are for dx only
CASES = [(6, (2, 2), 5), (6, (2, 2), 1500), (5, (3, 3), 300), (7, (1, 2), 300), (5, (4, 4), 40)]
EPILOGUES = [dict(), dict(activation="relu"), dict(activation="leaky_relu", negative_slope=0.2),
             dict(activation="relu", residual=True)]


def _data(rows, hw, C, dtype, seed):
    rng = np.random.default_rng(seed)
    shape = (rows, C) + hw
    x = rng.standard_normal(shape) * rng.uniform(0.5, 3, (1, C, 1, 1)) + \
        rng.uniform(-20, 20, (1, C, 1, 1))
    dy = rng.standard_normal(shape) * rng.uniform(0.2, 2, (1, C, 1, 1))
    z = rng.standard_normal(shape)
    gamma, beta = rng.uniform(0.5, 1.5, C), rng.normal(0, 1, C)
    return x.astype(dtype), dy.astype(dtype), z.astype(dtype), gamma, beta


def _ops(x, dy, z, gamma, beta, epi):
    """Every output of the ops that rewrite x, per channel along axis 1."""
    kw = dict(epi)
    if kw.pop("residual", False):
        kw["residual"] = z
    y, cache = fastbn.forward(x, gamma, beta, **kw)
    grads = fastbn.backward(dy, cache)
    rv = cache.var.astype(np.float64)
    y_inf, eval_cache = fastbn.forward(x, gamma, beta, training=False, running_mean=cache.mean,
                                       running_var=rv, **kw)
    eval_grads = fastbn.backward(dy, eval_cache)
    act = kw.get("activation")
    y_norm = fastbn.normalize(x, cache.mean, cache.invstd, gamma, beta,
                              activation=act if act != "leaky_relu" else None)
    sum_dy, sum_dy_xhat = fastbn.backward_reduce(dy, x, cache.mean, cache.invstd)
    count = x.size // x.shape[1]
    dx_e = fastbn.backward_elemt(dy, x, cache.mean, cache.invstd, gamma, sum_dy, sum_dy_xhat,
                                 count)
    return [y, cache.mean, cache.var, *grads, y_inf, *eval_grads, y_norm, dx_e]


@pytest.mark.parametrize("epi", EPILOGUES, ids=lambda e: "-".join(f"{k}={v}" for k, v in
                                                                   e.items()) or "plain")
@pytest.mark.parametrize("dtype", data_dtypes(), ids=lambda d: d.name)
@pytest.mark.parametrize("rows,hw,C0", CASES)
def test_a_spread_walk_gets_the_bits_of_the_run_walk(rows, hw, C0, dtype, epi, restore_threads):
    inner = hw[0] * hw[1]
    wide = SPREAD_BYTES // 4 // inner + 3  # too wide to spread (float32 coefficients)
    x, dy, z, gamma, beta = _data(rows, hw, wide, dtype, seed=inner + C0)

    def narrow(a):
        return np.ascontiguousarray(a[:, :C0])
    for threads in (1, 2):
        fastbn.set_num_threads(threads)
        got = _ops(narrow(x), narrow(dy), narrow(z), gamma[:C0], beta[:C0], epi)
        want = _ops(x, dy, z, gamma, beta, epi)
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want)):
            part = narrow(w) if w.ndim == x.ndim else w[:C0]
            assert_bitwise_equal(g, part, f"output {i}, {threads} threads")


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("rows,hw,C0", CASES)
def test_small_maps_agree_with_the_reference(rows, hw, C0, dtype):
    x, dy, z, gamma, beta = _data(rows, hw, C0, dtype, seed=3)
    rtol = RTOL[np.dtype(dtype)]
    y, cache = fastbn.forward(x, gamma, beta, activation="relu", residual=z)
    ry, rcache = reference.forward(x, gamma, beta, activation="relu", residual=z)
    assert_close(y, ry, rtol)
    for got, want in zip(fastbn.backward(dy, cache), reference.backward(dy, rcache)):
        assert_close(got, want, rtol)
    y_inf = fastbn.normalize(x, cache.mean, cache.invstd, gamma, beta, activation="relu")
    r_inf = reference.normalize(x, cache.mean, cache.invstd, gamma, beta, activation="relu")
    assert_close(y_inf, r_inf, rtol)
