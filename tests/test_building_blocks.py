"""The building blocks of a synchronised batch norm (batch_stats, merge_stats,
normalize, backward_reduce, backward_elemt): C against the reference, against
exact arithmetic, and composed into forward/backward over a split batch."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastbn
from fastbn import reference
from conftest import (DTYPES, LAYOUTS, RTOL, assert_close, cases, channel_values, lay_out,
                      padding_intact, relu_scale, snapshot, vector)


def per_channel(case, salt, low=0.5, high=2.0, dtype=None):
    return vector(case.rng(salt), case.channels, dtype or case.param_dtype, low, high,
                  signed=False)


def data_scale(x):
    return max(float(np.max(np.abs(x.astype(np.float64)))), 1.0) if x.size else 1.0


@given(case=cases(min_count=1))
def test_batch_stats_matches_reference(case):
    x = case.x()
    count, mean, m2 = fastbn.batch_stats(x, axis=case.axis)
    ref_count, ref_mean, ref_m2 = reference.batch_stats(x, axis=case.axis)
    assert count == ref_count == x.size // case.channels
    assert isinstance(count, (int, np.integer))
    assert mean.dtype == m2.dtype == np.float64
    assert mean.shape == m2.shape == (case.channels,)
    assert np.max(np.abs(mean - ref_mean)) <= 1e-12 * data_scale(x)
    assert_close(m2, ref_m2, 1e-12, "m2")


@pytest.mark.parametrize("offset", [0.0, 1e4, -3e6])
@pytest.mark.parametrize("dtype", DTYPES)
def test_batch_stats_exact(impl, dtype, offset):
    """Against exact rational arithmetic, far from the origin too (where a
    one-pass sum of squares would lose every digit)."""
    rng = np.random.default_rng(2)
    x = (offset + rng.standard_normal((9, 3, 7))).astype(dtype)
    count, mean, m2 = impl.batch_stats(x, axis=1)
    for c in range(3):
        values = [Fraction(float(v)) for v in x[:, c, :].ravel()]
        exact_mean = sum(values) / len(values)
        exact_m2 = sum((v - exact_mean) ** 2 for v in values)
        assert count == len(values)
        assert abs(Fraction(mean[c]) - exact_mean) <= 1e-15 * max(abs(offset), 1)
        assert abs(Fraction(m2[c]) - exact_m2) <= 1e-9 * exact_m2


def test_batch_stats_of_an_empty_batch(impl):
    count, mean, m2 = impl.batch_stats(np.zeros((0, 4, 3), dtype=np.float32))
    assert count == 0
    assert mean.shape == m2.shape == (4,) and not mean.any() and not m2.any()


def split_points(rng, n, parts):
    """Sorted cut points into `parts` pieces, empty pieces allowed."""
    return np.sort(rng.integers(0, n + 1, parts - 1))


@given(case=cases(min_count=1), parts=st.integers(1, 5), counts_2d=st.booleans())
def test_merge_of_parts_equals_stats_of_whole(impl, case, parts, counts_2d):
    x = case.x()
    rng = case.rng(9)
    axis = case.axis % x.ndim
    split_axis = int(rng.choice([d for d in range(x.ndim) if d != axis]))
    pieces = np.split(x, split_points(rng, x.shape[split_axis], parts), axis=split_axis)
    stats = [impl.batch_stats(p, axis=case.axis) for p in pieces]
    counts = np.array([s[0] for s in stats])
    if counts_2d:
        counts = np.repeat(counts[:, None], case.channels, axis=1)
    count, mean, m2 = impl.merge_stats(counts, np.stack([s[1] for s in stats]),
                                       np.stack([s[2] for s in stats]))
    ref_count, ref_mean, ref_m2 = reference.batch_stats(x, axis=case.axis)
    assert np.all(count == ref_count)
    assert np.max(np.abs(mean - ref_mean)) <= 1e-12 * data_scale(x)
    assert_close(m2, ref_m2, 1e-12, "m2")


def test_merged_count_is_usable_by_backward_elemt(impl):
    """merge_stats(counts of shape (R,)) returns a count backward_elemt accepts."""
    rng = np.random.default_rng(8)
    x = rng.standard_normal((6, 3))
    stats = [impl.batch_stats(p) for p in (x[:2], x[2:])]
    count, mean, m2 = impl.merge_stats(np.array([2, 4]), np.stack([s[1] for s in stats]),
                                       np.stack([s[2] for s in stats]))
    assert np.shape(count) in ((), (3,)) and np.all(count == 6)
    invstd = 1 / np.sqrt(m2 / 6 + 1e-5)
    dy = rng.standard_normal((6, 3))
    sum_dy, sum_dy_xhat = reference.backward_reduce(dy, x, mean, invstd)
    dx = impl.backward_elemt(dy, x, mean, invstd, None, sum_dy, sum_dy_xhat, count)
    # the training gradient of the whole batch: what backward gives for it
    _, cache = reference.forward(x)
    expected, _, _ = reference.backward(dy, cache)
    assert_close(dx, expected, 1e-12, "dx with a merged count")


def test_merge_of_nothing_but_empty_parts(impl):
    zeros = np.zeros((3, 2))
    count, mean, m2 = impl.merge_stats(np.zeros(3, dtype=np.int64), zeros, zeros)
    assert np.all(count == 0) and not mean.any() and not m2.any()


@given(case=cases(min_count=1), in_place=st.booleans())
def test_normalize_matches_reference(case, in_place):
    x = case.x()
    gamma, beta = case.params()
    mean = case.rng(7).normal(0, 1, case.channels).astype(case.param_dtype)
    invstd = per_channel(case, 8)
    ref_y = reference.normalize(x, mean, invstd, gamma, beta, axis=case.axis,
                                activation=case.activation)
    pre = reference.normalize(x, mean, invstd, gamma, beta, axis=case.axis)
    out = x if in_place else case.out()
    inputs = snapshot(mean, invstd, gamma, beta) + ([] if in_place else snapshot(x))
    y = fastbn.normalize(x, mean, invstd, gamma, beta, axis=case.axis, out=out,
                         activation=case.activation)
    if out is not None:
        assert y is out and padding_intact(out)
    assert_close(y, ref_y, what="y", scale=relu_scale(case, pre))
    assert snapshot(mean, invstd, gamma, beta) + ([] if in_place else snapshot(x)) == inputs


@given(case=cases(min_count=1))
def test_backward_reduce_matches_reference(case):
    x, dy = case.x(), case.dy()
    mean = case.rng(7).normal(0, 1, case.channels).astype(case.param_dtype)
    invstd = per_channel(case, 8)
    sums = fastbn.backward_reduce(dy, x, mean, invstd, axis=case.axis)
    ref_sums = reference.backward_reduce(dy, x, mean, invstd, axis=case.axis)
    for got, ref, name in zip(sums, ref_sums, ("sum_dy", "sum_dy_xhat")):
        assert got.dtype == np.float64 and got.shape == (case.channels,)
        # Sums of random-signed terms: compare on the scale of the terms summed.
        scale = max(float(np.max(np.abs(ref))), float(np.max(np.abs(dy), initial=1.0)))
        assert np.max(np.abs(got - ref), initial=0.0) <= 1e-12 * scale * np.sqrt(dy.size + 1), name


@given(case=cases(min_count=1), count_kind=st.sampled_from(["int", "array", "array0d"]),
       in_place=st.sampled_from([None, "dy", "x"]))
def test_backward_elemt_matches_reference(case, count_kind, in_place):
    x, dy = case.x(), case.dy()
    gamma, _ = case.params()
    rng = case.rng(7)
    mean = rng.normal(0, 1, case.channels)
    invstd = per_channel(case, 8)
    sum_dy, sum_dy_xhat = rng.normal(0, 3, case.channels), rng.normal(0, 3, case.channels)
    m = x.size // case.channels
    count = {"int": m, "array": rng.integers(1, 10, case.channels),
             "array0d": np.array(m)}[count_kind]
    args = (mean, invstd, gamma, sum_dy, sum_dy_xhat, count)
    ref_dx = reference.backward_elemt(dy.copy(), x.copy(), *args, axis=case.axis)
    out = {None: case.out(), "dy": dy, "x": x}[in_place]
    dx = fastbn.backward_elemt(dy, x, *args, axis=case.axis, out=out)
    if out is not None:
        assert dx is out and padding_intact(out)
    assert_close(dx, ref_dx, what="dx")


@pytest.mark.parametrize("parts", [1, 2, 4])
@pytest.mark.parametrize("activation, mask_by", [(None, None), ("relu", "caller"),
                                                 ("relu", "blocks")])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", [((12, 3), 1), ((10, 4, 5), 1), ((9, 3, 3, 5), -1)])
def test_split_batch_reproduces_forward_and_backward(impl, shape, axis, dtype, activation,
                                                     mask_by, parts):
    """What a synchronised batch norm does across ranks (one rank may hold an empty
    piece) gives forward's y and backward's dx, dgamma, dbeta for the whole batch. The
    ReLU mask is applied by the caller to dy, or by the blocks given gamma and beta."""
    rng = np.random.default_rng(4)
    x = channel_values(rng, shape, axis, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    gamma, beta, eps = rng.uniform(0.5, 2, C), rng.standard_normal(C), 1e-5
    y, cache = impl.forward(x, gamma, beta, axis=axis, eps=eps, activation=activation)
    dx, dgamma, dbeta = impl.backward(dy, cache)

    cuts = [0] + [int(c) for c in np.linspace(0, shape[0], parts + 1)[1:-1]] + [shape[0]]
    if parts > 1:
        cuts[1] = 0  # an empty piece on the first "rank"
    xs = [x[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    dys = [dy[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    stats = [impl.batch_stats(p, axis=axis) for p in xs]
    count, mean, m2 = impl.merge_stats(np.array([[s[0]] * C for s in stats]),
                                       np.stack([s[1] for s in stats]),
                                       np.stack([s[2] for s in stats]))
    invstd = 1 / np.sqrt(m2 / count + eps)
    ys = [impl.normalize(p, mean, invstd, gamma, beta, axis=axis, activation=activation)
          for p in xs]
    assert_close(np.concatenate(ys), y, what="y")

    mask = {}
    if mask_by == "caller":
        dys = [np.where(yp > 0, d, 0).astype(dtype) for yp, d in zip(ys, dys)]
    elif mask_by == "blocks":
        mask = {"beta": beta, "activation": activation}
    sums = [impl.backward_reduce(d, p, mean, invstd, axis=axis, gamma=gamma, **mask)
            for d, p in zip(dys, xs)]
    sum_dy = np.sum([s[0] for s in sums], axis=0)
    sum_dy_xhat = np.sum([s[1] for s in sums], axis=0)
    assert_close(sum_dy, dbeta, 1e-12, "dbeta")
    assert_close(sum_dy_xhat, dgamma, 1e-12, "dgamma")
    dxs = [impl.backward_elemt(d, p, mean, invstd, gamma, sum_dy, sum_dy_xhat, count, axis=axis,
                               **mask)
           for d, p in zip(dys, xs)]
    assert_close(np.concatenate(dxs), dx, what="dx")


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape, axis", [((40, 3), 1), ((6, 5, 7, 3), 1), ((4, 6, 6, 33), -1),
                                         ((16, 1024), 1)])
def test_blocks_relu_mask_is_the_forwards(impl, shape, axis, dtype):
    """With activation="relu", backward_reduce and backward_elemt mask dy exactly where
    normalize(..., activation="relu") gave 0: bitwise the results of a dy masked by hand."""
    rng = np.random.default_rng(11)
    x = channel_values(rng, shape, axis, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    gamma = rng.uniform(-2, 2, C).astype(dtype)  # negative gammas flip the mask
    beta = rng.standard_normal(C)
    count, mean, m2 = impl.batch_stats(x, axis=axis)
    invstd = 1 / np.sqrt(m2 / count + 1e-5)
    y = impl.normalize(x, mean, invstd, gamma, beta, axis=axis, activation="relu")
    masked = np.where(y > 0, dy, 0).astype(dtype)
    assert 0 < np.count_nonzero(y) < y.size
    got = impl.backward_reduce(dy, x, mean, invstd, axis=axis, gamma=gamma, beta=beta,
                               activation="relu")
    want = impl.backward_reduce(masked, x, mean, invstd, axis=axis)
    for a, b in zip(got, want):
        assert a.tobytes() == b.tobytes()
    args = (mean, invstd, gamma, got[0], got[1], count)
    dx = impl.backward_elemt(dy, x, *args, axis=axis, beta=beta, activation="relu")
    assert dx.tobytes() == impl.backward_elemt(masked, x, *args, axis=axis).tobytes()


@pytest.mark.parametrize("layout", LAYOUTS)
def test_building_blocks_accept_float32_vectors(impl, layout):
    """Per-channel vectors may be float32 even for float64 data (and vice versa)."""
    rng = np.random.default_rng(6)
    x = lay_out(rng.standard_normal((5, 3, 4)), layout, rng)
    mean32, invstd32 = rng.standard_normal(3).astype(np.float32), np.ones(3, np.float32)
    y = impl.normalize(x, mean32, invstd32)
    expected = reference.normalize(x, mean32.astype(np.float64), invstd32.astype(np.float64))
    assert y.dtype == np.float64
    assert_close(y, expected)
    x32 = x.astype(np.float32)
    y32 = impl.normalize(x32, mean32.astype(np.float64), invstd32.astype(np.float64))
    assert y32.dtype == np.float32
    assert_close(y32, expected.astype(np.float32), RTOL[np.dtype(np.float32)])
