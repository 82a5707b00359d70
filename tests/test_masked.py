"""mask= through the compiled masked kernels (src_c/kern_masked.h, issue 20).

Against the reference and hand-derived formulas over shapes, axes, dtypes and mask
patterns, at sizes that reach the fused per-block path, the tiled path (several
segments per channel, merged) and the threaded one; a mask keeping everything gives
bitwise the unmasked result; results are bitwise independent of the thread count;
padded values (NaN included) change nothing but their own outputs; finite
differences in float64. Mutants these tests caught (2026-12-02): the merge
weighting a segment by kept + 1 (tiled cases), the columns-shape dx ignoring the
mask, the backward's count off by one, the mean's residual dropped (all-kept
bitwise test), the mask's positions reversed.
"""
import numpy as np
import pytest

import fastbn
import fastbn.reference as R
from conftest import assert_bitwise_equal, assert_close, channel_values
from test_gradients import FD_RTOL, central_difference

pytestmark = pytest.mark.skipif(fastbn.backend != "c", reason="the compiled kernels")

# (shape, axis, mask shape): rows shape (inner > 1) and columns shape (axis -1);
# the last two of each kind have more than FBN_TILE_BYTES per channel (tiled,
# merged) and more than FBN_MIN_PARALLEL values (threaded)
CASES = [((4, 3, 50), 1, (4, 1, 50)),
         ((8, 5, 7, 9), 1, (8, 1, 7, 9)),
         ((2, 4, 9), 1, (1, 1, 9)),
         ((300, 6), 1, (300, 1)),
         ((6, 7, 5), -1, (6, 7, 1)),
         ((3, 2, 100003), 1, (3, 1, 100003)),
         ((140001, 3), 1, (140001, 1)),
         ((70001, 2, 3), 1, (70001, 1, 3))]
PATTERNS = ["random", "prefix", "first_half_dropped", "one_tile_left"]


def make_mask(shape, pattern, rng):
    if pattern == "random":
        return rng.random(shape) < 0.6
    flat = np.zeros(int(np.prod(shape)), bool)
    n = flat.size
    if pattern == "prefix" and shape[-1] > 1:  # padded sequences: a kept prefix per row
        return np.arange(shape[-1]) < rng.integers(2, shape[-1] + 1, shape[:-1] + (1,))
    if pattern == "prefix":  # one position per row: the first rows kept
        flat[:max(2, 7 * n // 10)] = True
    if pattern == "first_half_dropped":  # whole leading segments empty
        flat[n // 2:] = True
    elif pattern == "one_tile_left":  # a few values at the very end only
        flat[-3:] = True
    return flat.reshape(shape)


def data(shape, axis, dtype, seed=0):
    rng = np.random.default_rng(seed)
    C = shape[axis]
    x = channel_values(rng, shape, axis, np.float64).astype(dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    return x, dy, rng.uniform(0.5, 2.0, C), rng.normal(0.0, 1.0, C), rng


@pytest.mark.parametrize("shape,axis,mshape", CASES)
@pytest.mark.parametrize("pattern", PATTERNS)
@pytest.mark.parametrize("activation", [None, "relu"])
def test_against_reference(shape, axis, mshape, pattern, activation):
    x, dy, gamma, beta, rng = data(shape, axis, np.float64)
    mask = make_mask(mshape, pattern, rng)
    y, cache = fastbn.forward(x, gamma, beta, axis=axis, mask=mask, activation=activation)
    yr, cr = R.forward(x, gamma, beta, axis=axis, mask=mask, activation=activation)
    one = tuple(1 if d == axis % x.ndim else n for d, n in enumerate(x.shape))
    assert cache.count == cr.count == int(np.broadcast_to(mask, one).sum())
    assert_close(y, yr, rtol=1e-13, what="y")
    assert_close(cache.mean, cr.mean, rtol=1e-14, what="mean", scale=np.abs(x).max())
    assert_close(cache.invstd, cr.invstd, rtol=1e-13, what="invstd")
    for got, want, what in zip(fastbn.backward(dy, cache), R.backward(dy, cr),
                               ("dx", "dgamma", "dbeta")):
        assert_close(got, want, rtol=1e-12, what=what)


@pytest.mark.parametrize("dtype", [np.float32, np.float16])
@pytest.mark.parametrize("shape,axis,mshape", [CASES[0], CASES[3], CASES[5], CASES[6]])
def test_narrow_dtypes(dtype, shape, axis, mshape):
    x, dy, gamma, beta, rng = data(shape, axis, dtype)
    mask = make_mask(mshape, "random", rng)
    y, cache = fastbn.forward(x, gamma, beta, axis=axis, mask=mask)
    yr, cr = R.forward(x, gamma, beta, axis=axis, mask=mask)
    tol = 1e-5 if dtype == np.float32 else 4e-3
    assert_close(y, yr, rtol=tol, what="y")
    assert_close(cache.mean, cr.mean, rtol=1e-12, what="mean",  # accumulated in float64
                 scale=float(np.abs(x.astype(np.float64)).max()))
    for got, want in zip(fastbn.backward(dy, cache), R.backward(dy, cr)):
        assert_close(got, want, rtol=tol)


@pytest.mark.parametrize("shape,axis,mshape", CASES)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_all_kept_is_bitwise_unmasked(shape, axis, mshape, dtype):
    x, dy, gamma, beta, _ = data(shape, axis, dtype)
    for activation in (None, "relu"):
        y1, c1 = fastbn.forward(x, gamma, beta, axis=axis, mask=np.ones(mshape, bool),
                                activation=activation)
        y2, c2 = fastbn.forward(x, gamma, beta, axis=axis, activation=activation)
        assert np.array_equal(y1, y2)
        assert np.array_equal(c1.mean, c2.mean) and np.array_equal(c1.invstd, c2.invstd)
        for a, b in zip(fastbn.backward(dy, c1), fastbn.backward(dy, c2)):
            assert np.array_equal(a, b)


@pytest.mark.parametrize("shape,axis,mshape", CASES[5:])
def test_thread_count_independent(shape, axis, mshape, restore_threads):
    x, dy, gamma, beta, rng = data(shape, axis, np.float32)
    mask = make_mask(mshape, "random", rng)
    results = []
    for n in (1, 2, 3):
        fastbn.set_num_threads(n)
        y, cache = fastbn.forward(x, gamma, beta, axis=axis, mask=mask)
        results.append((y, cache.mean, cache.invstd, *fastbn.backward(dy, cache)))
    for other in results[1:]:
        assert all(np.array_equal(a, b) for a, b in zip(results[0], other))


@pytest.mark.parametrize("shape,axis,mshape", [CASES[0], CASES[4], CASES[5], CASES[6]])
def test_hand_derived(shape, axis, mshape):
    """mean and var of the kept values picked out by hand; dx = gamma * invstd * (dy -
    keep * (sum dy + xhat * sum dy xhat) / n), sums over every position; a padded
    value, even NaN, changes only its own outputs."""
    x, dy, gamma, beta, rng = data(shape, axis, np.float64)
    mask = make_mask(mshape, "prefix", rng)
    keep = np.broadcast_to(mask, x.shape)
    ch = np.moveaxis(x, axis, -1)
    kept = ch[np.moveaxis(keep, axis, -1)].reshape(-1, x.shape[axis])
    n = kept.shape[0]
    mean, var = kept.mean(axis=0), kept.var(axis=0)
    y, cache = fastbn.forward(x, gamma, beta, axis=axis, mask=mask)
    assert cache.count == n
    assert_close(cache.mean, mean, rtol=1e-14, scale=np.abs(x).max())
    assert_close(cache.invstd, 1 / np.sqrt(var + 1e-5), rtol=1e-13)
    shp = [1] * x.ndim
    shp[axis] = -1
    col = lambda v: v.reshape(shp)  # noqa: E731
    others = tuple(d for d in range(x.ndim) if d != axis % x.ndim)
    xhat = (x - col(mean)) / np.sqrt(col(var) + 1e-5)
    assert_close(y, col(gamma) * xhat + col(beta), rtol=1e-13)
    dx, dgamma, dbeta = fastbn.backward(dy, cache)
    want = col(gamma) / np.sqrt(col(var) + 1e-5) * (
        dy - keep * (col(dy.sum(axis=others)) + xhat * col((dy * xhat).sum(axis=others))) / n)
    assert_close(dx, want, rtol=1e-12)
    assert_close(dgamma, (dy * xhat).sum(axis=others), rtol=1e-12)
    assert_close(dbeta, dy.sum(axis=others), rtol=1e-12)
    padded = np.where(keep, x, np.nan)
    y2, c2 = fastbn.forward(padded, gamma, beta, axis=axis, mask=mask)
    assert np.array_equal(c2.mean, cache.mean) and np.array_equal(c2.invstd, cache.invstd)
    assert np.array_equal(y2[keep], y[keep]) and np.isnan(y2[~keep]).all()


def test_all_dropped_is_an_error():
    x = np.ones((4, 3, 5))
    with pytest.raises(ValueError, match="the mask keeps 0 values"):
        fastbn.forward(x, mask=np.zeros((4, 1, 5), bool))
    rm, rv = np.zeros(3), np.ones(3)
    with pytest.raises(ValueError, match="the mask keeps 0 values"):
        fastbn.forward(x, mask=np.zeros((4, 1, 5), bool), running_mean=rm, running_var=rv)
    assert not rm.any() and (rv == 1).all()  # state untouched


@pytest.mark.parametrize("extra", [{}, {"activation": "relu"}, {"renorm": (1.5, 0.5)},
                                   {"virtual_batch_size": 3},
                                   {"activation": "leaky_relu", "negative_slope": 0.2},
                                   {"residual": True, "activation": "relu"}])
def test_finite_differences(extra):
    x, dy, gamma, beta, rng = data((7, 3, 6), 1, np.float64, seed=3)
    mask = make_mask((7, 1, 6), "prefix", rng)
    kw = dict(extra)
    if kw.pop("residual", False):
        kw["residual"] = rng.standard_normal(x.shape)
    if "renorm" in kw:  # r and d clipped (constants, as backward takes them): FD applies
        kw.update(running_mean=np.full(3, 100.0), running_var=np.full(3, 100.0))

    def loss():
        k = dict(kw)
        if "running_mean" in k:
            k["running_mean"], k["running_var"] = k["running_mean"].copy(), k["running_var"].copy()
        return float((fastbn.forward(x, gamma, beta, mask=mask, **k)[0] * dy).sum())

    _, cache = fastbn.forward(x, gamma, beta, mask=mask,
                              **{k: (v.copy() if k.startswith("running") else v)
                                 for k, v in kw.items()})
    grads = fastbn.backward(dy, cache)
    for got, a in zip(grads, (x, gamma, beta)):
        want = central_difference(loss, a)
        assert_close(got, want, rtol=FD_RTOL, scale=np.abs(want).max() + 1)
    if "residual" in kw:
        assert_close(grads[3], central_difference(loss, kw["residual"]), rtol=FD_RTOL)


@pytest.mark.parametrize("shape,axis,mshape", [CASES[0], CASES[4], CASES[5], CASES[6]])
@pytest.mark.parametrize("epilogue", [dict(residual=True), dict(residual=True, activation="relu"),
                                      dict(activation="leaky_relu", negative_slope=0.2),
                                      dict(residual=True, activation="leaky_relu",
                                           negative_slope=-0.3)])
def test_mask_with_epilogue(shape, axis, mshape, epilogue, monkeypatch):
    """A mask with a residual or a leaky ReLU: the masked kernels take the statistics and
    the backward (merge of k20 and m20), the epilogue kernels y (affine_ex) and dy through
    the activation (backward_ex's reduction), against the reference."""
    import fastbn._interim as interim
    x, dy, gamma, beta, rng = data(shape, axis, np.float64, seed=11)
    mask = make_mask(mshape, "random", rng)
    kw = dict(epilogue)
    if kw.pop("residual", False):
        kw["residual"] = rng.standard_normal(x.shape)
    called = []
    for name in ("forward_masked", "backward_masked", "affine_ex", "backward_ex"):
        real = getattr(interim._kernels, name)
        monkeypatch.setattr(interim._kernels, name,
                            lambda *a, _r=real, _n=name, **k: (called.append(_n), _r(*a, **k))[1])
    y, cache = fastbn.forward(x, gamma, beta, axis=axis, mask=mask, **kw)
    yr, cr = R.forward(x, gamma, beta, axis=axis, mask=mask, **kw)
    got, want = fastbn.backward(dy, cache), R.backward(dy, cr)
    assert {"forward_masked", "backward_masked", "affine_ex"} <= set(called)
    assert ("backward_ex" in called) == (kw.get("activation") is not None)
    assert_close(y, yr, rtol=1e-12, what="y")
    for g, w, what in zip(got, want, ("dx", "dgamma", "dbeta", "dresidual")):
        assert_close(g, w, rtol=1e-11, what=what)
    assert len(got) == len(want) == 3 + ("residual" in kw)


# every broadcast shape of a mask over (N, C, H, W) with axis 1 (size 1 along C), and
# shorter ones (leading axes added): each against the reference and its kept count
BROADCASTS = [(), (1,), (6,), (5, 6), (1, 6), (5, 1), (1, 1, 1, 6), (4, 1, 1, 1),
              (4, 1, 5, 1), (4, 1, 1, 6), (1, 1, 5, 6), (4, 1, 5, 6), (1, 1, 1, 1)]


@pytest.mark.parametrize("mshape", BROADCASTS)
def test_every_broadcast_shape(mshape):
    x, dy, gamma, beta, rng = data((4, 3, 5, 6), 1, np.float64, seed=5)
    mask = np.asarray(rng.random(mshape) < 0.7)
    mask.flat[:2] = True  # at least 2 kept values per channel (all of a 1-value mask)
    y, cache = fastbn.forward(x, gamma, beta, mask=mask)
    yr, cr = R.forward(x, gamma, beta, mask=mask)
    keep = np.broadcast_to(mask, x.shape)
    assert cache.count == cr.count == int(keep[:, 0].sum())
    assert_close(y, yr, rtol=1e-13, what="y")
    assert_close(cache.invstd, cr.invstd, rtol=1e-13, what="invstd")
    for got, want, what in zip(fastbn.backward(dy, cache), R.backward(dy, cr),
                               ("dx", "dgamma", "dbeta")):
        assert_close(got, want, rtol=1e-12, what=what)


@pytest.mark.parametrize("shape,axis,mshape", [CASES[0], CASES[3], CASES[5], CASES[6]])
def test_dropping_rows_gives_the_kept_rows_statistics(shape, axis, mshape):
    """A mask that drops whole samples: the statistics and y of the kept rows are those
    of forward on the kept rows alone; so is their dx when the dropped rows' dy is zero
    (the dropped rows' outputs, normalised with the same statistics, otherwise feed
    the sums, hand-derived in test_hand_derived); a dropped row's dx is
    gamma * invstd * dy."""
    x, dy, gamma, beta, rng = data(shape, axis, np.float64, seed=7)
    rows = np.arange(shape[0]) % 3 != 1
    mask = np.zeros(mshape, bool)
    mask[rows] = True
    y, cache = fastbn.forward(x, gamma, beta, axis=axis, mask=mask)
    yk, ck = fastbn.forward(x[rows], gamma, beta, axis=axis)
    assert cache.count == ck.count
    assert_close(cache.mean, ck.mean, rtol=1e-14, scale=np.abs(x).max())
    assert_close(cache.invstd, ck.invstd, rtol=1e-13)
    assert_close(y[rows], yk, rtol=1e-13)
    dy0 = np.where(rows.reshape((-1,) + (1,) * (x.ndim - 1)), dy, 0.0)
    dx0, dgamma0, dbeta0 = fastbn.backward(dy0, cache)
    dxk, dgk, dbk = fastbn.backward(dy[rows], ck)
    assert_close(dx0[rows], dxk, rtol=1e-12, scale=np.abs(dxk).max())
    assert not dx0[~rows].any()
    assert_close(dgamma0, dgk, rtol=1e-12)
    assert_close(dbeta0, dbk, rtol=1e-12)
    vshape = [1] * x.ndim
    vshape[axis] = -1
    dx = fastbn.backward(dy, cache)[0]
    assert_close(dx[~rows], (gamma * cache.invstd).reshape(vshape) * dy[~rows], rtol=1e-13)


@pytest.mark.parametrize("shape,axis,mshape", [CASES[5], CASES[6]])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_streamed_outputs_are_bitwise_the_cached_ones(shape, axis, mshape, dtype):
    """Small cache sizes make the tiled cases' y and dx streamed (non-temporal stores,
    into outputs already in memory: fbn_resident); the bits are the cached path's.
    (axis 1: x's (outer, C, inner) view is a reshape.)"""
    k = fastbn._kernels
    x, dy, gamma, beta, rng = data(shape, axis, dtype, seed=9)
    mask = make_mask(mshape, "random", rng)
    x3 = x.reshape(shape[0], shape[1], -1)
    dy3 = dy.reshape(x3.shape)
    m2d = np.ascontiguousarray(np.broadcast_to(mask, x.shape[:1] + (1,) + x.shape[2:])) \
        .reshape(x3.shape[0], x3.shape[2]).view(np.uint8)
    C = x3.shape[1]

    def run():
        y, dx = np.full(x3.shape, 7, dtype), np.full(x3.shape, 7, dtype)  # touched: resident
        hi, lo, var, inv, s1, s2 = (np.empty(C) for _ in range(6))
        n = k.forward_masked(x3, y, m2d, gamma, beta, 1e-5, False, hi, lo, var, inv, 2)
        k.backward_masked(dy3, x3, dx, m2d, n, hi, lo, inv, gamma, None, False, s1, s2, 2)
        return y, dx, hi, lo, inv, s1, s2

    cached = run()
    try:
        k._set_cache_sizes(32 << 10, 64 << 10, 256 << 10)
        streamed = run()
    finally:
        k._set_cache_sizes(0, 0, 0)
    for a, b in zip(cached, streamed):
        assert np.array_equal(a, b)
    y, cache = fastbn.forward(x, gamma, beta, axis=axis, mask=mask)
    assert np.array_equal(streamed[0].reshape(x.shape), y)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("hw", [(2, 2), (3, 3), (8, 8)], ids=lambda hw: "x".join(map(str, hw)))
def test_all_kept_statistics_only_are_bitwise_unmasked(hw, dtype):
    """The masked kernel without y (statistics only, as the features' groups call it)
    with a mask keeping everything: the statistics of the same call with y, and the
    unmasked forward's mean and invstd, bit for bit (small maps take the unmasked
    columns, 8x8 the masked runs)."""
    k = fastbn._kernels
    rng = np.random.default_rng(5)
    x = (rng.standard_normal((70, 6) + hw) * 2 + 30).astype(dtype)
    x3 = x.reshape(70, 6, -1)
    m2d = np.ones((70, x3.shape[2]), np.uint8)
    stats, with_y = [np.empty(6) for _ in range(4)], [np.empty(6) for _ in range(4)]
    n = k.forward_masked(x3, None, m2d, None, None, 1e-5, False, *stats, 2)
    k.forward_masked(x3, np.empty_like(x3), m2d, None, None, 1e-5, False, *with_y, 2)
    _, cache = fastbn.forward(x)
    assert n == x3.shape[0] * x3.shape[2]
    for got, want in zip(stats, with_y):
        assert_bitwise_equal(got, want)
    for got, want in zip((stats[0], stats[1], stats[3]),
                         (cache.mean, cache.mean_lo, cache.invstd)):
        assert_bitwise_equal(got, np.asarray(want, np.float64))
