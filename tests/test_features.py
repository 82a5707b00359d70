"""The keywords of issue 20 beyond PyTorch's batch norm: several channel axes, mask=,
renorm=, virtual_batch_size=, residual=, leaky ReLU, backward(need_dx=False), and the
layer's frozen-statistics mode.

Reference vs compiled over drawn shapes, axes, dtypes and combinations; formulas
derived by hand (renorm (1, 0) and virtual_batch_size >= N are plain batch norm,
a group is the forward of its slice, a mask keeps the statistics of the kept
positions, ...); finite differences of every new backward in float64; errors name
their argument and leave the state untouched. The PyTorch comparisons are in
test_torch.py.
"""
import math

import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

import fastbn
import fastbn.reference as R
from conftest import LAYOUTS, assert_close, channel_values, fresh_out, lay_out, snapshot
from test_gradients import FD_RTOL, central_difference

C_BACKEND = fastbn.backend == "c"
K = fastbn._impl  # the compiled backend (the reference with FASTBN_BACKEND=numpy)


def make(shape, axes, dtype=np.float64, seed=0):
    """x, dy, gamma, beta (the channel axes' flat (C,) shape) and running statistics."""
    rng = np.random.default_rng(seed)
    C = math.prod(shape[a] for a in axes)
    x = channel_values(rng, shape, axes[0], dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    gamma = (rng.uniform(0.5, 2.0, C) * rng.choice([-1.0, 1.0], C)).astype(dtype)
    beta = rng.normal(0.0, 1.0, C).astype(dtype)
    return x, dy, gamma, beta, rng.normal(0.0, 1.0, C), rng.uniform(0.5, 2.0, C)


def run(impl, x, dy, gamma, beta, rm, rv, bkw=None, **kw):
    """forward (running statistics copied) then backward: (y, rm, rv, *grads), cache."""
    rm, rv = rm.copy(), rv.copy()
    y, cache = impl.forward(x, gamma, beta, running_mean=rm, running_var=rv, **kw)
    return (y, rm, rv) + tuple(impl.backward(dy, cache, **(bkw or {}))), cache


def assert_all_close(got, want, rtol=None, what=""):
    assert len(got) == len(want), what
    for i, (g, w) in enumerate(zip(got, want)):
        if w is None:
            assert g is None, f"{what}[{i}]"
        else:
            assert_close(g, w, rtol, f"{what}[{i}]")


# ---------------------------------------------------------------- reference vs compiled

@st.composite
def feature_cases(draw):
    rank = draw(st.integers(2, 4))
    shape = [draw(st.integers(2, 5)) for _ in range(rank)]
    shape[0] = draw(st.integers(4, 9))
    candidates = list(range(1, rank))
    axes = sorted(draw(st.sets(st.sampled_from(candidates), min_size=1,
                               max_size=len(candidates))))
    if draw(st.booleans()) and rank > 2:  # sometimes axis 0 among the channel axes
        axes = [0] + axes[:1]
    kw = {"axis": tuple(axes) if len(axes) > 1 else axes[0]}
    activation = draw(st.sampled_from([None, "relu", "leaky_relu"]))
    if activation:
        kw["activation"] = activation
    if activation == "leaky_relu":
        kw["negative_slope"] = draw(st.sampled_from([0.01, 0.2, -0.5]))
    kw["training"] = draw(st.booleans())
    if draw(st.booleans()):
        kw["renorm"] = (draw(st.sampled_from([1.0, 1.5, 3.0])), draw(st.sampled_from([0.0, 0.5, 5.0])))
    if 0 not in axes and draw(st.booleans()):
        kw["virtual_batch_size"] = draw(st.integers(2, shape[0]))
    use_mask = draw(st.booleans())
    use_residual = draw(st.booleans())
    dtype = np.float64 if activation else draw(st.sampled_from([np.float32, np.float64]))
    return (tuple(shape), tuple(axes), dtype, kw, use_mask, use_residual,
            draw(st.booleans()), draw(st.integers(0, 2**32 - 1)), draw(st.sampled_from(LAYOUTS)),
            draw(st.booleans()))


@pytest.mark.skipif(not C_BACKEND, reason="compares the compiled backend with the reference")
@given(case=feature_cases())
def test_compiled_matches_reference(case):
    shape, axes, dtype, kw, use_mask, use_residual, need_dx, seed, layout, use_out = case
    x, dy, gamma, beta, rm, rv = make(shape, axes, dtype, seed)
    rng = np.random.default_rng([seed, 1])
    x, dy = lay_out(x, layout, rng), lay_out(dy, layout, rng)
    if use_mask:
        mshape = tuple(1 if d in axes or rng.random() < 0.3 else n for d, n in enumerate(shape))
        kw["mask"] = rng.random(mshape) < 0.8
    if use_residual:
        kw["residual"] = rng.standard_normal(shape).astype(dtype)
    try:
        want, ref_cache = run(R, x, dy, gamma, beta, rm, rv, {"need_dx": need_dx}, **kw)
    except ValueError:  # too few kept values per group: both backends must refuse
        with pytest.raises(ValueError):
            run(K, x, dy, gamma, beta, rm, rv, {"need_dx": need_dx}, **kw)
        return
    # m >= 4 values per statistic keeps dx away from exact cancellation (0 for m == 2)
    assume(not kw["training"] or min(getattr(ref_cache, "group_counts", [ref_cache.count])) >= 4)
    if use_out:
        kw["out"] = fresh_out(shape, dtype, layout, rng)
    got, cache = run(K, x, dy, gamma, beta, rm, rv, {"need_dx": need_dx}, **kw)
    assert not use_out or got[0] is kw["out"]
    rtol = {np.float32: 2e-5, np.float64: 1e-10}[dtype]
    assert_all_close(got, want, rtol, f"{kw}")


# ---------------------------------------------------------------- hand-derived formulas

MODULES = [K, R] if C_BACKEND else [R]


@pytest.fixture(params=MODULES, ids=lambda m: m.__name__)
def impl(request):
    return request.param


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_renorm_1_0_is_plain_batch_norm(impl, dtype):
    args = make((6, 3, 4), (1,), dtype)
    plain, _ = run(impl, *args)
    renormed, cache = run(impl, *args, renorm=(1.0, 0.0))
    assert_all_close(renormed, plain, what="renorm=(1, 0)")
    assert (cache.r == 1).all() and (cache.d == 0).all()


def test_renorm_formula(impl):
    x, dy, gamma, beta, rm, rv = make((7, 3, 2), (1,))
    eps, rmax, dmax = 1e-3, 1.2, 0.3
    rm0, rv0 = rm.copy(), rv.copy()
    (y, rm1, rv1, dx, dgamma, dbeta), cache = run(impl, x, dy, gamma, beta, rm, rv, eps=eps,
                                                  renorm=(rmax, dmax))
    mean, var = x.mean(axis=(0, 2)), x.var(axis=(0, 2))
    r = np.clip(np.sqrt(var + eps) / np.sqrt(rv0 + eps), 1 / rmax, rmax)
    d = np.clip((mean - rm0) / np.sqrt(rv0 + eps), -dmax, dmax)
    assert_close(cache.r, r)
    assert_close(cache.d, d)
    col = lambda v: v.reshape(1, -1, 1)  # noqa: E731
    xhat = (x - col(mean)) / np.sqrt(col(var) + eps)
    assert_close(y, col(gamma) * (xhat * col(r) + col(d)) + col(beta), what="y")
    assert_close(rm1, 0.9 * rm0 + 0.1 * mean)  # running statistics as without renorm
    # r and d are constants: dx is plain batch norm's with gamma * r
    m = x.size // 3
    g = col(gamma * r) / np.sqrt(col(var) + eps)
    want = g * (dy - col(dy.sum(axis=(0, 2))) / m - xhat * col((dy * xhat).sum(axis=(0, 2))) / m)
    assert_close(dx, want, what="dx")
    assert_close(dgamma, (dy * (xhat * col(r) + col(d))).sum(axis=(0, 2)), what="dgamma")
    assert_close(dbeta, dy.sum(axis=(0, 2)), what="dbeta")


def test_renorm_needs_running_stats_and_is_ignored_in_eval(impl):
    x, dy, gamma, beta, rm, rv = make((6, 3), (1,))
    with pytest.raises(ValueError, match="renorm needs running_mean"):
        impl.forward(x, renorm=(2.0, 1.0))
    plain, _ = run(impl, x, dy, gamma, beta, rm, rv, training=False)
    renormed, _ = run(impl, x, dy, gamma, beta, rm, rv, training=False, renorm=(2.0, 1.0))
    assert_all_close(renormed, plain, what="eval")


@pytest.mark.parametrize("k", [8, 9, 100])
def test_ghost_with_k_at_least_n_is_plain_batch_norm(impl, k):
    args = make((8, 3, 2), (1,))
    assert_all_close(run(impl, *args, virtual_batch_size=k)[0], run(impl, *args)[0],
                     what=f"k={k}")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_ghost_groups_are_their_slices(impl, dtype):
    """Rows [0:3], [3:6], [6:8] (N mod k = 2 left over): each group is the plain forward
    of its slice; dgamma/dbeta sum over groups; the running statistics take the mean
    of the groups' statistics (each variance unbiased with its own count)."""
    x, dy, gamma, beta, rm, rv = make((8, 3, 2), (1,), dtype)
    (y, rm1, rv1, dx, dgamma, dbeta), cache = run(impl, x, dy, gamma, beta, rm, rv,
                                                  virtual_batch_size=3, momentum=0.5)
    parts = [slice(0, 3), slice(3, 6), slice(6, 8)]
    assert cache.mean.shape == (3, 3) and cache.group_counts == (6, 6, 4)
    sums = [np.zeros(3), np.zeros(3)]
    for s in parts:
        ys, cs = impl.forward(x[s], gamma, beta)
        dxs, dgs, dbs = impl.backward(np.ascontiguousarray(dy[s]), cs)
        assert_close(y[s], ys, what=f"y{s}")
        assert_close(dx[s], dxs, what=f"dx{s}")
        sums[0] += dgs
        sums[1] += dbs
    assert_close(dgamma, sums[0].astype(dtype))
    assert_close(dbeta, sums[1].astype(dtype))
    means = [x[s].astype(np.float64).mean(axis=(0, 2)) for s in parts]
    uvars = [x[s].astype(np.float64).var(axis=(0, 2), ddof=1) for s in parts]
    assert_close(rm1, 0.5 * rm + 0.5 * np.mean(means, axis=0))
    assert_close(rv1, 0.5 * rv + 0.5 * np.mean(uvars, axis=0))


def test_ghost_refuses_groups_of_one_value_and_axis_0(impl):
    x = np.ones((7, 3))
    with pytest.raises(ValueError, match="virtual_batch_size=3"):  # last group: 1 row
        impl.forward(x, virtual_batch_size=3)
    with pytest.raises(ValueError, match="axis 0"):
        impl.forward(np.ones((4, 3, 2)), axis=(0, 1), virtual_batch_size=2)
    y, cache = impl.forward(x, training=False, running_mean=np.zeros(3), running_var=np.ones(3),
                            virtual_batch_size=3)  # eval: ignored
    assert cache.virtual_batch_size is None


@pytest.mark.parametrize("shape,axes", [((4, 3, 5, 2), (1, 2)), ((4, 3, 5, 2), (2, 3)),
                                        ((4, 3, 5, 2), (1, 3)), ((4, 3, 5, 2), (0, 2)),
                                        ((5, 2, 3), (1, 2))])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_several_axes_are_one_flattened_axis(impl, shape, axes, dtype):
    """Channel axes moved to the end and flattened: plain batch norm with axis=-1."""
    x, dy, gamma, beta, rm, rv = make(shape, axes, dtype)
    got, cache = run(impl, x, dy, gamma, beta, rm, rv, axis=axes)
    others = [d for d in range(len(shape)) if d not in axes]
    order = others + list(axes)
    flat = lambda a: np.ascontiguousarray(a.transpose(order)).reshape(-1, gamma.size)  # noqa
    want, _ = run(impl, flat(x), flat(dy), gamma, beta, rm, rv, axis=-1)
    back = lambda a: a.reshape([shape[d] for d in order]).transpose(np.argsort(order))  # noqa
    assert_all_close(got, [back(want[0]), *want[1:3], back(want[3]), *want[4:]], what=str(axes))
    assert cache.mean.shape == tuple(shape[a] for a in axes)
    assert cache.axis == axes


def test_several_axes_take_per_channel_arrays_of_their_shape(impl):
    x, dy, gamma, beta, rm, rv = make((4, 3, 5), (1, 2))
    flat, _ = run(impl, x, dy, gamma, beta, rm, rv, axis=(1, 2))
    shaped, _ = run(impl, x, dy, gamma.reshape(3, 5), beta.reshape(3, 5), rm.reshape(3, 5),
                    rv.reshape(3, 5), axis=(1, 2))
    assert shaped[1].shape == (3, 5) and shaped[4].shape == (3, 5)  # running_mean, dgamma
    assert_all_close([a.ravel() for a in shaped], [a.ravel() for a in flat])


@pytest.mark.skipif(not C_BACKEND, reason="the compiled backend's view")
@pytest.mark.parametrize("axes", [(1, 2), (1, 3), (2, 3)])
def test_several_axes_use_a_view_of_x(axes):
    """The (outer, W, inner) view the compiled path works on is x itself, adjacent
    channel axes or not: no copy of x."""
    from fastbn._features import check_features
    from fastbn._checks import check_forward
    from fastbn._interim import _Wide
    x = np.ones((4, 3, 5, 2))
    a = check_forward(x, None, None, axes, 1e-5, True, None, None, 0.1, None, None)
    view = _Wide(x.shape, check_features(x, a)).view(x)
    assert view.base is x or view.base is x.base
    assert np.shares_memory(view, x) and view.size == x.size


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mask_statistics_are_those_of_the_kept_positions(impl, dtype):
    """(N, C, L) with an (N, 1, L) mask: the statistics of the kept positions only;
    every position normalised; padded values change nothing else."""
    x, dy, gamma, beta, rm, rv = make((5, 3, 6), (1,), dtype)
    keep = np.random.default_rng(1).random((5, 1, 6)) < 0.6
    (y, rm1, rv1, dx, dgamma, dbeta), cache = run(impl, x, dy, gamma, beta, rm, rv, mask=keep)
    kept = np.moveaxis(x.astype(np.float64), 1, -1)[np.broadcast_to(keep[:, 0], (5, 6))]
    n = int(keep.sum())
    assert cache.count == n
    assert_close(cache.mean, kept.mean(axis=0))
    assert_close(rv1, 0.9 * rv + 0.1 * kept.var(axis=0, ddof=1))
    col = lambda v: v.reshape(1, -1, 1)  # noqa: E731
    xhat = (x - col(kept.mean(axis=0))) / np.sqrt(col(kept.var(axis=0)) + 1e-5)
    assert_close(y, (col(gamma) * xhat + col(beta)).astype(dtype), what="y")
    w = keep.astype(np.float64)
    want = col(gamma) / np.sqrt(col(kept.var(axis=0)) + 1e-5) * (
        dy - w * (col(dy.sum(axis=(0, 2))) + xhat * col((dy * xhat).sum(axis=(0, 2)))) / n)
    assert_close(dx, want.astype(dtype), what="dx")
    padded = np.where(keep, x, 1e3).astype(dtype)
    y2, _ = impl.forward(padded, gamma, beta, mask=keep)
    assert_close(np.where(keep, y2, 0), np.where(keep, y, 0).astype(dtype), what="kept y")


@pytest.fixture
def aligned_kernels(monkeypatch):
    """Every fastbn._kernels function made to refuse a misaligned array argument:
    misaligned loads are undefined behaviour in C (x86 tolerates them, so only a
    sanitizer build would notice otherwise; the CI's ASan + UBSan run did)."""
    kernels = fastbn._kernels

    def checked(name, fn):
        def spy(*args, **kw):
            for i, v in enumerate(list(args) + list(kw.values())):
                if isinstance(v, np.ndarray):
                    assert v.flags.aligned, f"_kernels.{name}: argument {i} is misaligned"
            return fn(*args, **kw)
        return spy

    for name in dir(kernels):
        fn = getattr(kernels, name)
        if not name.startswith("_") and callable(fn) and not isinstance(fn, type):
            monkeypatch.setattr(kernels, name, checked(name, fn))


@pytest.mark.skipif(not C_BACKEND, reason="the compiled kernels' arguments")
@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu"])
@pytest.mark.parametrize("groups", [None, 3])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_mask_kernels_get_aligned_data(aligned_kernels, dtype, groups, activation):
    """An unaligned x and dy (C order at an odd address) with a mask: the masked
    kernels read aligned copies, and the results are the reference's."""
    x, dy, gamma, beta, rm, rv = make((6, 3, 5), (1,), dtype, seed=3)
    rng = np.random.default_rng(4)
    x, dy = lay_out(x, "unaligned", rng), lay_out(dy, "unaligned", rng)
    kw = {"mask": rng.random((6, 1, 5)) < 0.8, "virtual_batch_size": groups}
    if activation:
        kw["activation"] = activation
    want, _ = run(R, x, dy, gamma, beta, rm, rv, **kw)
    got, _ = run(K, x, dy, gamma, beta, rm, rv, **kw)
    assert_all_close(got, want, {np.float32: 2e-5, np.float64: 1e-10}[dtype], f"{kw}")


def test_mask_all_true_is_plain_and_checks(impl):
    args = make((4, 3, 5), (1,))
    assert_all_close(run(impl, *args, mask=np.ones((4, 1, 5), bool))[0], run(impl, *args)[0])
    x = args[0]
    with pytest.raises(ValueError, match="size 1 along the channel axes"):
        impl.forward(x, mask=np.ones((4, 3, 5), bool))
    with pytest.raises(TypeError, match="mask must be a numpy.ndarray of dtype bool"):
        impl.forward(x, mask=np.ones((4, 1, 5)))
    with pytest.raises(ValueError, match="mask must broadcast"):
        impl.forward(x, mask=np.ones((4, 1, 4), bool))
    one = np.zeros((4, 1, 5), bool)
    one[2, 0, 3] = True
    with pytest.raises(ValueError, match="the mask keeps 1 value"):
        impl.forward(x, mask=one)
    impl.forward(x, mask=one, training=False, running_mean=np.zeros(3), running_var=np.ones(3))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_leaky_relu_limits(impl, dtype):
    args = make((6, 3, 2), (1,), dtype)
    assert_all_close(run(impl, *args, activation="leaky_relu", negative_slope=0.0)[0],
                     run(impl, *args, activation="relu")[0], what="slope 0")
    assert_all_close(run(impl, *args, activation="leaky_relu", negative_slope=1.0)[0],
                     run(impl, *args)[0], what="slope 1")
    y, cache = impl.forward(args[0], args[2], args[3], activation="leaky_relu",
                            negative_slope=0.25)
    pre, _ = impl.forward(args[0], args[2], args[3])
    assert_close(y, np.where(pre > 0, pre, 0.25 * pre), what="y")


@pytest.mark.parametrize("activation", [None, "relu", "leaky_relu"])
def test_residual(impl, activation):
    """y = act(bn(x) + z); dresidual = dy through the activation; dx = bn's backward of it."""
    x, dy, gamma, beta, rm, rv = make((6, 3, 4), (1,))
    z = np.random.default_rng(2).standard_normal(x.shape)
    (y, _, _, dx, dgamma, dbeta, dz), _ = run(impl, x, dy, gamma, beta, rm, rv, residual=z,
                                             activation=activation, negative_slope=0.01)
    pre = impl.forward(x, gamma, beta)[0] + z
    slope = {None: np.ones_like(pre), "relu": (pre > 0) * 1.0,
             "leaky_relu": np.where(pre > 0, 1.0, 0.01)}[activation]
    assert_close(y, pre * slope, what="y")
    assert_close(dz, dy * slope, what="dresidual")
    plain = impl.backward(dy * slope, impl.forward(x, gamma, beta)[1])
    assert_all_close([dx, dgamma, dbeta], plain, what="dx, dgamma, dbeta")
    with pytest.raises(ValueError, match="out must not share memory with residual"):
        impl.forward(x, gamma, beta, residual=z, out=z)
    with pytest.raises(TypeError, match="residual must have the dtype of x"):
        impl.forward(x, residual=z.astype(np.float32))
    with pytest.raises(ValueError, match="residual must have the shape of x"):
        impl.forward(x, residual=z[:3])


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_need_dx_false(impl, activation, training, dtype):
    x, dy, gamma, beta, rm, rv = make((6, 3, 4), (1,), dtype)
    full, _ = run(impl, x, dy, gamma, beta, rm, rv, training=training, activation=activation)
    part, cache = run(impl, x, dy, gamma, beta, rm, rv, {"need_dx": False}, training=training,
                      activation=activation)
    assert part[3] is None
    assert_all_close(part[4:], full[4:], what="dgamma, dbeta")
    dg = np.full(3, np.nan, dtype)
    _, dg_out, _ = impl.backward(dy, cache, need_dx=False, out=(None, dg, None))
    assert dg_out is dg and np.isfinite(dg).all()
    with pytest.raises(ValueError, match="must be None with need_dx=False"):
        impl.backward(dy, cache, need_dx=False, out=np.empty_like(x))
    with pytest.raises(TypeError, match="need_dx must be a bool"):
        impl.backward(dy, cache, need_dx=1)


# ---------------------------------------------------------------- finite differences

FD_CASES = {
    "renorm": dict(renorm=(1.5, 0.5)),  # r, d at their clips (see below): constants
    "ghost": dict(virtual_batch_size=2),
    "ghost uneven": dict(virtual_batch_size=3),
    "axes": dict(axis=(1, 2)),
    "axes apart": dict(axis=(1, 3)),
    "mask": dict(mask="mask"),
    "leaky": dict(activation="leaky_relu", negative_slope=0.3),
    "residual relu": dict(residual="z", activation="relu"),
    "all": dict(residual="z", activation="leaky_relu", negative_slope=-0.2, mask="mask",
                virtual_batch_size=3, renorm=(1.5, 0.5)),
}


@pytest.mark.parametrize("name", list(FD_CASES))
def test_backward_matches_finite_differences(impl, name):
    kw = dict(FD_CASES[name])
    shape = (5, 2, 3, 2)
    axes = kw["axis"] if "axis" in kw else (1,)
    x, dy, gamma, beta, rm, rv = make(shape, axes, np.float64, seed=3)
    rng = np.random.default_rng(4)
    if kw.get("mask") == "mask":
        kw["mask"] = np.array([True, True, False, True, True])[:, None, None, None] & \
            (rng.random((5, 1, 3, 1)) < 0.8)
        kw["mask"][:, :, 0] = True
    z = rng.standard_normal(shape)
    if kw.get("residual") == "z":
        kw["residual"] = z
    if "renorm" in kw:  # r = rmax and d = +-dmax for every channel and group: constants
        rv = np.full(rv.shape, 1e-3)
        rm = np.where(rng.random(rm.shape) < 0.5, -1e3, 1e3)

    def forward():
        return impl.forward(x, gamma, beta, running_mean=rm.copy(), running_var=rv.copy(), **kw)

    def loss():
        return float(np.sum(dy * forward()[0]))

    y, cache = forward()
    if kw.get("activation"):  # no step crosses the kink
        assert np.min(np.abs(R._pre_activation(cache))) > 1e-3, "a pre-activation at the kink"
    grads = impl.backward(dy, cache)
    assert_close(grads[0], central_difference(loss, x), FD_RTOL, "dx")
    assert_close(grads[1], central_difference(loss, gamma), FD_RTOL, "dgamma")
    assert_close(grads[2], central_difference(loss, beta), FD_RTOL, "dbeta")
    if "residual" in kw:
        assert_close(grads[3], central_difference(loss, z), FD_RTOL, "dresidual")
    dgamma_only = impl.backward(dy, cache, need_dx=False)
    assert dgamma_only[0] is None
    assert_all_close(dgamma_only[1:], grads[1:], what="need_dx=False")


# ---------------------------------------------------------------- errors leave state alone

BAD = [
    (dict(renorm=(0.5, 1.0)), ValueError, "renorm\\[0\\] \\(rmax\\) must be >= 1"),
    (dict(renorm=(2.0, -1.0)), ValueError, "renorm\\[1\\] \\(dmax\\) must be >= 0"),
    (dict(renorm=2.0), TypeError, "renorm must be None or a pair"),
    (dict(renorm=("a", 1.0)), TypeError, "renorm\\[0\\] \\(rmax\\) must be a real number"),
    (dict(virtual_batch_size=0), ValueError, "virtual_batch_size must be >= 1"),
    (dict(virtual_batch_size=2.0), TypeError, "virtual_batch_size must be a positive integer"),
    (dict(virtual_batch_size=True), TypeError, "virtual_batch_size must be a positive integer"),
    (dict(negative_slope=0.2), ValueError, "negative_slope=0.2 is used only with"),
    (dict(activation="leaky_relu", negative_slope="x"), TypeError, "negative_slope must be"),
    (dict(activation="leaky_relu", negative_slope=np.inf), ValueError, "negative_slope must be"),
    (dict(activation="elu"), ValueError, "activation must be None, 'relu' or 'leaky_relu'"),
    (dict(axis=()), ValueError, "axis must not be an empty tuple"),
    (dict(axis=(1, 1)), ValueError, "axis must not repeat"),
    (dict(axis=(1, 5)), ValueError, "axis\\[1\\]=5 is out of bounds"),
    (dict(axis=(1, "2")), TypeError, "axis\\[1\\] must be an integer"),
    (dict(residual=[1.0]), TypeError, "residual must be a numpy.ndarray"),
    (dict(mask=[True]), TypeError, "mask must be a numpy.ndarray"),
]


@pytest.mark.parametrize("bad,error,message", BAD, ids=[str(b[0]) for b in BAD])
def test_bad_keywords_raise_and_leave_state_untouched(impl, bad, error, message):
    x, _, gamma, beta, rm, rv = make((6, 3, 4), (1,))
    out = np.full(x.shape, np.nan)
    before = snapshot(rm, rv, out)
    with pytest.raises(error, match=message):
        impl.forward(x, gamma, beta, running_mean=rm, running_var=rv, out=out, **bad)
    assert snapshot(rm, rv, out) == before


def test_state_untouched_when_a_later_check_fails(impl):
    """A bad mask after valid renorm/virtual_batch_size: nothing written."""
    x, _, gamma, beta, rm, rv = make((6, 3, 4), (1,))
    before = snapshot(rm, rv)
    with pytest.raises(ValueError):
        impl.forward(x, gamma, beta, running_mean=rm, running_var=rv, renorm=(2.0, 1.0),
                     virtual_batch_size=3, mask=np.ones((6, 3, 4), bool))
    assert snapshot(rm, rv) == before


@pytest.mark.skipif(not C_BACKEND, reason="the compiled front end")
def test_plain_calls_keep_the_compiled_front_end():
    """Default keywords: the front end's own Cache; any keyword of issue 20: a FeatureCache
    from the checked path (which the front end's backward hands over)."""
    from fastbn._features import FeatureCache
    x = np.ones((4, 3)) + np.arange(4)[:, None]
    assert type(fastbn.forward(x, negative_slope=0.01)[1]) is fastbn.Cache
    for kw in (dict(axis=(1,)), dict(activation="relu")):
        assert type(fastbn.forward(x, **kw)[1]) is fastbn.Cache
    for kw in (dict(axis=(0, 1), training=False, running_mean=np.zeros(12),
                    running_var=np.ones(12)), dict(virtual_batch_size=2),
               dict(activation="leaky_relu"), dict(residual=x), dict(mask=np.ones((4, 1), bool))):
        y, cache = fastbn.forward(x, **kw)
        assert isinstance(cache, FeatureCache), kw
        assert len(fastbn.backward(np.ones_like(x), cache)) == 3 + ("residual" in kw)


def test_feature_cache_checks(impl):
    x, dy, gamma, beta, rm, rv = make((6, 3, 4), (1,))
    _, cache = impl.forward(x, gamma, beta, virtual_batch_size=3)
    with pytest.raises(ValueError, match="dy must have the shape of x"):
        impl.backward(dy[:3], cache)
    with pytest.raises(ValueError, match="out must be an array or a tuple"):
        impl.backward(dy, cache, out=(None, None))
    cache.invstd = -cache.invstd
    with pytest.raises(ValueError, match="cache.invstd must be >= 0"):
        impl.backward(dy, cache)


# ---------------------------------------------------------------- the layer

def test_layer_forwards_the_keywords(layer_backend):
    x, dy, gamma, beta, rm, rv = make((6, 3, 4), (1,), np.float32)
    z = np.ones_like(x)
    keep = np.ones((6, 1, 4), bool)
    keep[0, 0, :2] = False
    bn = fastbn.BatchNorm(3, activation="leaky_relu", negative_slope=0.1, renorm=(2.0, 1.0),
                          virtual_batch_size=3)
    bn.params["gamma"][...] = gamma
    rm0, rv0 = bn.running_mean.copy(), bn.running_var.copy()
    y = bn(x, mask=keep, residual=z)
    want, cache = layer_backend.forward(x, gamma, np.zeros(3, np.float32), running_mean=rm0,
                                        running_var=rv0, activation="leaky_relu",
                                        negative_slope=0.1, renorm=(2.0, 1.0),
                                        virtual_batch_size=3, mask=keep, residual=z)
    assert_close(y, want)
    assert_close(bn.running_mean, rm0)
    dx, dz = bn.backward(dy)
    wdx, wdg, wdb, wdz = layer_backend.backward(dy, cache)
    assert_all_close([dx, bn.grads["gamma"], bn.grads["beta"], dz], [wdx, wdg, wdb, wdz])
    assert bn.backward(dy, need_dx=False)[0] is None


def test_layer_accumulates_with_need_dx_false(layer_backend):
    x, dy, *_ = make((6, 3, 4), (1,), np.float32)
    bn = fastbn.BatchNorm(3, accumulate_grads=True)
    bn(x)
    assert bn.backward(dy, need_dx=False) is None
    bn.backward(dy)
    assert_close(bn.grads["beta"], 2 * dy.sum(axis=(0, 2)))


def test_layer_several_axes_and_save(layer_backend, tmp_path):
    x, dy, *_ = make((6, 3, 4), (1, 2), np.float32)
    bn = fastbn.BatchNorm(12, axis=(1, 2), renorm=(2.0, 1.0), virtual_batch_size=3)
    bn(x)
    assert bn.backward(dy).shape == x.shape and bn.grads["gamma"].shape == (12,)
    bn.save(tmp_path / "bn.npz")
    loaded = fastbn.BatchNorm.load(tmp_path / "bn.npz")
    assert loaded.axis == (1, 2) and loaded.renorm == (2.0, 1.0)
    assert loaded.virtual_batch_size == 3 and repr(loaded) == repr(bn)
    with pytest.raises(ValueError, match="expected 12 channels"):
        bn(np.ones((6, 3, 5), np.float32))


def test_layer_frozen_statistics_mode(layer_backend):
    """Running statistics used and not updated whatever the mode; gamma/beta trained with
    the statistics constant: an eval-mode forward and backward."""
    x, dy, *_ = make((6, 3, 4), (1,), np.float32)
    bn = fastbn.BatchNorm(3)
    bn(x)
    state = bn.state_dict()
    assert bn.freeze_stats() is bn and bn.mode == "frozen_stats"
    bn.train()
    y = bn(x, training=True)
    assert bn.mode == "frozen_stats" and bn.num_batches_tracked == 1
    assert snapshot(bn.running_mean, bn.running_var) == snapshot(state["running_mean"],
                                                                 state["running_var"])
    dx = bn.backward(dy)
    want_y, cache = layer_backend.forward(x, bn.gamma, bn.beta, training=False,
                                          running_mean=bn.running_mean,
                                          running_var=bn.running_var)
    want = layer_backend.backward(dy, cache)
    assert_all_close([y, dx, bn.grads["gamma"], bn.grads["beta"]], [want_y, *want])
    assert bn.freeze_stats(False).mode == "train"
    bn(x)
    assert bn.num_batches_tracked == 2
    with pytest.raises(ValueError, match="track_running_stats=False"):
        fastbn.BatchNorm(3, track_running_stats=False).freeze_stats()
    with pytest.raises(TypeError, match="frozen must be a bool"):
        bn.freeze_stats(1)
    assert fastbn.BatchNorm(3, stats_frozen=True).mode == "frozen_stats"


def test_layer_checks_the_new_arguments():
    with pytest.raises(ValueError, match="renorm needs track_running_stats=True"):
        fastbn.BatchNorm(3, renorm=(2.0, 1.0), track_running_stats=False)
    with pytest.raises(ValueError, match="negative_slope is used only"):
        fastbn.BatchNorm(3, negative_slope=0.2)
    with pytest.raises(TypeError, match="virtual_batch_size must be a positive integer"):
        fastbn.BatchNorm(3, virtual_batch_size="4")
    with pytest.raises(TypeError, match="axis must be an integer or a non-empty tuple"):
        fastbn.BatchNorm(3, axis=[1])
