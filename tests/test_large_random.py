"""Large random arrays against the reference: the kernels' big-array paths.

The hypothesis strategies of conftest stay small (at most ~1,500 values, 9
channels); these draw arrays of up to ~300k values so that each example reaches
a path chosen first, and checks that it does with a Python model of the tiling
plan (src_c/plan.c fbn_make_plan, with the thresholds of src_c/plan.h):

* "threaded": >= FBN_MIN_PARALLEL (65,536) values in >= 2 tiles (2 threads run);
* "multi_tile": an elementwise pass cut into several tiles;
* "multi_segment": channels reduced in several segments, merged afterwards;
* "alias_4k": channels-last / (N, C) rows a multiple of 4 KB apart (C = 1,024,
  2,048, 4,096 float32, 512 float64), the dx branch that loads a row group
  before storing it and the row pairs for outputs in the same cache sets;
* "many_channels": 16 to 4,096 channels.

Outputs >= FBN_STREAM_BYTES (16 MB), streamed under an L3 of 16 MB, take a
few fixed examples (test_streamed_outputs_match_reference). Everything is
compared with fastbn.reference, never the C code with itself. Also here: `out`
that is one input but partially overlaps another (then a fresh buffer must be
used, NumPy's rule).
"""
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import fastbn
from fastbn import reference
from fastbn._checks import canonical_shape
from conftest import assert_close, channel_values

pytestmark = pytest.mark.skipif(fastbn.backend != "c", reason="compares the compiled kernels "
                                "with the reference")

MIN_PARALLEL, STREAM_BYTES, TILE_BYTES = 65536, 16 * 1024 * 1024, 1024 * 1024
COL_MAX, FLUSH_ROWS, ROW_TILES, MIN_TILES = 256, 64, 4, 16
# float32 against the float64 reference at the kernels' precision (measured ~1e-7;
# see test_tight_accuracy.py), float64 as in the rest of the suite
TOL = {np.dtype(np.float32): 3e-7, np.dtype(np.float64): 1e-12}


# ------------------------------------------------------------------ the plan, modelled

def _min_tile_len(length, n, least):
    even = -(-n // MIN_TILES)
    return min(max(even, least), length)


def plan(outer, C, inner, elem, inputs, reduction):
    """(tiles, segments per channel, streamed) of fbn_make_plan for (outer, C, inner)."""
    per_channel = outer * inner
    stream = per_channel * C * elem >= STREAM_BYTES
    bpv = elem * (inputs + (0 if stream else 1))
    tile, block, fits = TILE_BYTES, 1, False
    if inner == 1:
        strip = min(C, COL_MAX)
        fits = strip > 0 and strip * per_channel * bpv <= tile and per_channel < 2 * FLUSH_ROWS
        block = strip if reduction and fits else C
    nblocks = -(-C // block)
    whole_rows = reduction and inner == 1 and not fits
    if whole_rows:
        tile *= ROW_TILES
    max_len = tile // (bpv * block)
    if whole_rows:
        max_len = _min_tile_len(max_len, per_channel, FLUSH_ROWS)
    split = not reduction and per_channel * C >= MIN_PARALLEL
    least = MIN_PARALLEL // MIN_TILES
    if split and inner == 1:
        max_len = _min_tile_len(max_len, per_channel, -(-least // C))
    max_len = max(max_len, 1)
    nsegs = -(-per_channel // max_len) if per_channel > max_len else 1
    if not reduction and inner > 1:
        total = outer * C
        rows = tile // (bpv * inner)
        if split:
            rows = _min_tile_len(rows, total, -(-least // inner))
        rows = max(rows, 1)
        nblocks, nsegs = 1, -(-total // rows)
    return nblocks * nsegs, nsegs, stream


def paths(shape, axis, dtype):
    """The paths a training forward + backward of a C-contiguous x takes."""
    outer, C, inner = canonical_shape(shape, axis % len(shape))  # one channel: (1, 1, size)
    elem = np.dtype(dtype).itemsize
    size = outer * C * inner
    r_tiles, r_segs, _ = plan(outer, C, inner, elem, 2, True)    # backward's reduction
    f_tiles, f_segs, _ = plan(outer, C, inner, elem, 1, True)    # forward's statistics
    e_tiles, _, stream = plan(outer, C, inner, elem, 2, False)   # dx's elementwise pass
    found = set()
    if size >= MIN_PARALLEL and min(r_tiles, f_tiles, e_tiles) >= 2:
        found.add("threaded")
    if e_tiles >= 2 and (f_segs > 1 or r_segs > 1):  # a separate elementwise pass, tiled
        found.add("multi_tile")
    if f_segs > 1 and r_segs > 1:
        found.add("multi_segment")
    if inner == 1 and (C * elem) % 4096 == 0:
        found.add("alias_4k")
    if C >= 16:
        found.add("many_channels")
    if stream:
        found.add("streamed")
    return found


# ------------------------------------------------------------------ the strategy

MAX_VALUES = 300_000
PATHS = ["threaded", "multi_tile", "multi_segment", "alias_4k", "many_channels"]


@st.composite
def large_cases(draw):
    """(path, shape, axis, dtype): a shape drawn to reach `path`."""
    path = draw(st.sampled_from(PATHS))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    elem = np.dtype(dtype).itemsize
    if path == "alias_4k":
        C = draw(st.sampled_from([1024, 2048, 4096] if elem == 4 else [512, 1024]))
        rows = draw(st.integers(2, max(2, MAX_VALUES // C)))
        lead = draw(st.sampled_from([(rows,), (1, rows), (rows // 2 or 1, 2)]))
        return path, lead + (C,), -1, dtype
    if path == "many_channels":
        C = draw(st.integers(16, 4096))
    elif path == "multi_segment":  # long channels (> 1 MB each): few of them
        C = draw(st.integers(1, 2))
    else:  # (one channel is one long run, whatever the layout: multi_tile needs two)
        C = draw(st.integers(2 if path == "multi_tile" else 1, 64))
    per_channel_min = {"threaded": -(-MIN_PARALLEL // C),
                       # a separate elementwise pass needs a multi-segment reduction:
                       # (N, C)-like layouts of >= 2 * FLUSH_ROWS rows
                       "multi_tile": max(2 * FLUSH_ROWS, -(-MIN_PARALLEL // C)),
                       "multi_segment": TILE_BYTES // elem + 1}.get(path, 4)
    per_channel_max = max(per_channel_min, MAX_VALUES // C)
    m = draw(st.integers(per_channel_min, per_channel_max))
    layout = draw(st.sampled_from(["NC", "NLC"] if path == "multi_tile"
                                  else ["NC", "NCL", "NLC", "NCHW"]))
    if layout == "NC":
        return path, (m, C), 1, dtype
    n = draw(st.integers(1, min(8, m)))
    rest = -(-m // n)
    if layout == "NCL":
        return path, (n, C, rest), 1, dtype
    if layout == "NLC":
        return path, (n, rest, C), -1, dtype
    h = draw(st.integers(1, max(1, int(math.sqrt(rest)))))
    return path, (n, C, h, -(-rest // h)), 1, dtype


@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(case=large_cases(), seed=st.integers(0, 2**32 - 1), affine=st.booleans(),
       out=st.booleans())
def test_large_random_arrays_match_reference(case, seed, affine, out):
    path, shape, axis, dtype = case
    # the strategy aims at `path`; the few shapes that miss it (e.g. a rows-shape
    # channel in one tile) are drawn again (the plan model is checked against a traced
    # C build: see the report of issue 14)
    assume(path in paths(shape, axis, dtype))
    rng = np.random.default_rng(seed)
    x = channel_values(rng, shape, axis, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    gamma = rng.uniform(0.5, 2.0, C) if affine else None
    beta = rng.standard_normal(C) if affine else None
    y_out = np.full(shape, np.nan, dtype) if out else None
    y, cache = fastbn.forward(x, gamma, beta, axis=axis, out=y_out)
    dx, dg, db = fastbn.backward(dy, cache, out=np.full(shape, np.nan, dtype) if out else None)
    ey, ecache = reference.forward(x.astype(np.float64), gamma, beta, axis=axis)
    edx, edg, edb = reference.backward(dy.astype(np.float64), ecache)
    tol = TOL[np.dtype(dtype)]
    assert_close(y, ey.astype(dtype), tol, "y", scale=float(np.max(np.abs(ey))))
    assert_close(dx, edx.astype(dtype), tol, "dx", scale=float(np.max(np.abs(edx))))
    if affine:
        assert_close(dg, edg, max(tol, 1e-12), "dgamma")
        assert_close(db, edb, max(tol, 1e-12), "dbeta")


# ------------------------------------------------------------------ fixed cases

# rows a multiple of 4 KB apart: partial row groups (rows % 4 != 0), channels-last
# images, eval mode (dx without the x term) and ReLU
ALIAS_CASES = [((64, 1024), np.float32), ((203, 2048), np.float32), ((37, 4096), np.float32),
               ((130, 512), np.float64), ((3, 5, 7, 1024), np.float32),
               ((2, 9, 9, 512), np.float64)]


def at_page_offset(a, offset):
    """A copy of `a` whose data start `offset` bytes past a 4 KB boundary."""
    raw = np.empty(a.nbytes + 8192, dtype=np.uint8)
    start = (offset - raw.__array_interface__["data"][0]) % 4096
    view = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    view[...] = a
    assert view.__array_interface__["data"][0] % 4096 == offset
    return view


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("shape, dtype", ALIAS_CASES)
def test_4k_aliasing_widths_match_reference(shape, dtype, activation, training):
    assert "alias_4k" in paths(shape, -1, dtype)
    rng = np.random.default_rng(len(shape) * shape[-1])
    x = channel_values(rng, shape, -1, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[-1]
    gamma, beta = rng.uniform(0.5, 2.0, C), rng.standard_normal(C)
    kw = dict(axis=-1, activation=activation, training=training,
              running_mean=rng.standard_normal(C) if not training else None,
              running_var=rng.uniform(0.5, 2.0, C) if not training else None)
    # x, dy and the outputs 16 bytes past a page, as NumPy's large arrays usually are:
    # a row group's lines of each fall in the same L1 sets (the row-pair branch)
    x, dy = at_page_offset(x, 16), at_page_offset(dy, 16)
    y_out, dx_out = (at_page_offset(np.full(shape, np.nan, dtype), 16) for _ in range(2))
    y, cache = fastbn.forward(x, gamma, beta, out=y_out, **kw)
    dx, dg, db = fastbn.backward(dy, cache, out=dx_out)
    assert y is y_out and dx is dx_out
    ey, ecache = reference.forward(x.astype(np.float64), gamma, beta, **kw)
    edx, edg, edb = reference.backward(dy.astype(np.float64), ecache)
    tol = TOL[np.dtype(dtype)]
    # ReLU keeps values rounded on the pre-activation's scale
    pre = reference.forward(x.astype(np.float64), gamma, beta, **dict(kw, activation=None))[0]
    pre_scale = float(np.max(np.abs(pre)))
    assert_close(y, ey.astype(dtype), tol, "y", scale=pre_scale)
    assert_close(dx, edx.astype(dtype), tol, "dx", scale=float(np.max(np.abs(edx))))
    d = dy.copy()
    dx2, _, _ = fastbn.backward(d, cache, out=d)  # in place over dy
    assert dx2 is d
    assert_close(dx2, edx.astype(dtype), tol, "dx (out=dy)", scale=float(np.max(np.abs(edx))))
    assert_close(dg, edg, max(tol, 1e-12), "dgamma")
    assert_close(db, edb, max(tol, 1e-12), "dbeta")


STREAM_CASES = [((4100, 1024), -1, np.float32),       # (N, C), 4K rows, 16.8 MB
                ((8, 64, 97, 91), 1, np.float32),     # NCHW runs of odd length, 18 MB
                ((2101, 999), -1, np.float64)]        # (N, C) float64, odd width, 16.8 MB


@pytest.mark.parametrize("activation", [None, "relu"])
@pytest.mark.parametrize("shape, axis, dtype", STREAM_CASES)
@pytest.mark.usefixtures("streaming_l3")
def test_streamed_outputs_match_reference(shape, axis, dtype, activation):
    assert "streamed" in paths(shape, axis, dtype)
    rng = np.random.default_rng(shape[-1])
    x = channel_values(rng, shape, axis, dtype)
    dy = rng.standard_normal(shape).astype(dtype)
    C = shape[axis]
    gamma, beta = rng.uniform(0.5, 2.0, C), rng.standard_normal(C)
    y, cache = fastbn.forward(x, gamma, beta, axis=axis, activation=activation)
    dx, _, _ = fastbn.backward(dy, cache)
    ey, ecache = reference.forward(x.astype(np.float64), gamma, beta, axis=axis,
                                   activation=activation)
    edx, _, _ = reference.backward(dy.astype(np.float64), ecache)
    pre = reference.forward(x.astype(np.float64), gamma, beta, axis=axis)[0]
    tol = TOL[np.dtype(dtype)]
    assert_close(y, ey.astype(dtype), tol, "y", scale=float(np.max(np.abs(pre))))
    assert_close(dx, edx.astype(dtype), tol, "dx", scale=float(np.max(np.abs(edx))))


# ------------------------------------------------------------------ partial overlaps

def split(buf, dy_first):
    """(x, dy): views of buf one row apart, dy before or after x."""
    return (buf[1:], buf[:-1]) if dy_first else (buf[:-1], buf[1:])


@pytest.mark.parametrize("N", [300, 5000])
@pytest.mark.parametrize("dy_first", [True, False])
def test_out_is_one_input_and_overlaps_another(dy_first, N):
    """backward(dy, cache, out=x) where dy is x's buffer shifted by a row: writing dx
    straight into x would change dy before it is read, so a fresh buffer is needed."""
    rng = np.random.default_rng(5)
    C = 8
    for dtype in (np.float32, np.float64):
        buf = rng.standard_normal((N + 1, C)).astype(dtype)
        x, dy = split(buf, dy_first)
        x0, dy0 = x.copy(), dy.copy()
        y, cache = fastbn.forward(x0.copy(), axis=1)  # the statistics of x
        ey, ecache = reference.forward(x0.astype(np.float64), axis=1)
        edx, _, _ = reference.backward(dy0.astype(np.float64), ecache)
        # a cache over x itself, then dx written over x while dy overlaps it
        _, cache = fastbn.forward(x, axis=1)
        dx, _, _ = fastbn.backward(dy, cache, out=x)
        assert dx is x
        assert_close(dx, edx.astype(dtype), TOL[np.dtype(dtype)], "dx over x",
                     scale=float(np.max(np.abs(edx))))
        # the building block, the same way: backward_elemt(dy, x, ..., out=x)
        buf = (np.concatenate([dy0[:1], x0]) if dy_first
               else np.concatenate([x0, dy0[-1:]])).astype(dtype)
        x, dy = split(buf, dy_first)
        assert np.array_equal(x, x0) and np.array_equal(dy, dy0)
        count, mean, m2 = reference.batch_stats(x0.astype(np.float64))
        invstd = 1 / np.sqrt(m2 / count + 1e-5)
        s1, s2 = reference.backward_reduce(dy0.astype(np.float64), x0.astype(np.float64), mean,
                                           invstd)
        expected = reference.backward_elemt(dy0.astype(np.float64), x0.astype(np.float64), mean,
                                            invstd, None, s1, s2, count)
        got = fastbn.backward_elemt(dy, x, mean, invstd, None, s1, s2, count, out=x)
        assert got is x
        assert_close(got, expected.astype(dtype), TOL[np.dtype(dtype)], "backward_elemt over x",
                     scale=float(np.max(np.abs(expected))))
