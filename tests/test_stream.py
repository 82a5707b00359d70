"""Streamed outputs (src_c/stream.c): the store width the CPU allows, and the
residency check that sends outputs in untouched pages to plain stores. The values
of both paths are checked bitwise by tests/test_digest.py (streamed cases, with
given and with allocated outputs) and against the reference below."""
import mmap
import os
import subprocess
import sys

import numpy as np
import pytest

import fastbn
from fastbn import reference

pytestmark = pytest.mark.skipif(fastbn.backend != "c", reason="the C kernels' stores")
_k = pytest.importorskip("fastbn._kernels")


def _env(**kw):
    """The environment of a child process that imports the fastbn this test imported
    (not another one the interpreter may find first), with kw set."""
    tree = os.path.dirname(os.path.dirname(os.path.abspath(fastbn.__file__)))
    path = os.pathsep.join(p for p in (tree, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, **kw)


def test_stream_width_is_a_vector_width():
    assert _k.stream_width() in (0, 16, 32, 64)


@pytest.mark.parametrize("want", ["16", "32"])
def test_stream_width_narrows_from_the_environment(want):
    code = "import fastbn._kernels as k; print(k.stream_width())"
    env = _env(FASTBN_STREAM_WIDTH=want)
    got = int(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                             capture_output=True, text=True).stdout)
    assert got == min(int(want), _k.stream_width()) or _k.stream_width() == 0


def test_untouched_pages_are_not_resident():
    m = mmap.mmap(-1, 64 * 4096)  # anonymous, never touched
    a = np.frombuffer(m, dtype=np.uint8)
    if sys.platform.startswith("linux"):
        assert not _k._resident(a)
    a[:] = 1
    assert _k._resident(a)
    del a
    m.close()


@pytest.mark.parametrize("width", ["16", "32", "64"])
def test_every_width_matches_the_reference(width, tmp_path):
    """A streamed forward and backward (outputs of 16 MB, given, so resident) at each
    store width, in a process of its own, against fastbn.reference: NCHW runs, rows
    one by one (C = 257) and groups of rows (C = 2048, fbn_stream_rows)."""
    script = tmp_path / "run.py"
    script.write_text(
        "import numpy as np, fastbn\n"
        "from fastbn import reference\n"
        "rng = np.random.default_rng(5)\n"
        "for shape in [(3, 5, 700, 401), (16400, 257), (2100, 2048)]:\n"
        "    x = rng.standard_normal(shape).astype(np.float32)\n"
        "    dy = rng.standard_normal(shape).astype(np.float32)\n"
        "    C = shape[1]\n"
        "    g, b = rng.uniform(0.5, 1.5, C).astype(np.float32), rng.standard_normal(C).astype(np.float32)\n"
        "    y = np.ones_like(x); dx = np.ones_like(x)\n"
        "    y1, c = fastbn.forward(x, g, b, out=y)\n"
        "    y2, c2 = reference.forward(x, g, b)\n"
        "    assert np.allclose(y1, y2, rtol=1e-4, atol=1e-4)\n"
        "    d1 = fastbn.backward(dy, c, out=(dx, None, None))[0]\n"
        "    d2 = reference.backward(dy, c2)[0]\n"
        "    assert np.allclose(d1, d2, rtol=1e-3, atol=1e-3)\n"
        "    rm, rv = np.zeros(C, np.float32), np.ones(C, np.float32)\n"
        "    y1, _ = fastbn.forward(x, g, b, training=False, running_mean=rm, running_var=rv, out=y)\n"
        "    y2, _ = reference.forward(x, g, b, training=False, running_mean=rm, running_var=rv)\n"
        "    assert np.allclose(y1, y2, rtol=1e-5, atol=1e-5)\n"
        "print('ok')\n")
    # an L3 of 16 MB: outputs of 16 MB are streamed (conftest.streaming_l3)
    env = _env(FASTBN_STREAM_WIDTH=width, FASTBN_CACHE_SIZES="0,0,16M")
    r = subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout.strip() == "ok", r.stderr[-2000:]


def test_the_copy_writes_exactly_its_bytes_at_every_offset_and_length():
    """fbn_stream_copy at each of a line's 64 offsets of dst (src on a line, at
    dst's offset, or 16 bytes past it), for lengths around whole lines and
    between: every byte of dst copied (its plain head, 16-byte streamed stores to a
    line, whole lines, 16-byte and plain tail), and none of the guard bytes either
    side touched (a store of a whole vector past n would)."""
    rng = np.random.default_rng(3)
    buf, sbuf = np.empty(4096 + 64, np.uint8), np.empty(4096 + 64, np.uint8)
    base = (-buf.ctypes.data) % 64  # buf[base:] starts on a line
    sbase = (-sbuf.ctypes.data) % 64  # and sbuf[sbase:]
    lengths = sorted({n for k in range(6) for n in (64 * k - 1, 64 * k, 64 * k + 1)
                      if n >= 0} | {7, 16, 48, 200, 256, 512, 1000, 1024, 2048})
    for dst_off in range(64):
        for src_off in (0, dst_off, (dst_off + 16) % 64):
            for n in lengths:
                src = sbuf[sbase + src_off:sbase + src_off + n]
                src[:] = rng.integers(1, 256, n, dtype=np.uint8)
                region = buf[base:base + 3072]
                region[:] = 0
                dst = region[64 + dst_off:64 + dst_off + n]
                _k._stream_copy(dst, src)
                assert np.array_equal(dst, src), (dst_off, src_off, n)
                assert not region[:64 + dst_off].any(), (dst_off, src_off, n)
                assert not region[64 + dst_off + n:].any(), (dst_off, src_off, n)


def test_the_copy_refuses_what_it_cannot_copy():
    with pytest.raises(ValueError, match="dst and src"):
        _k._stream_copy(np.zeros(8, np.uint8), np.zeros(9, np.uint8))
    with pytest.raises(ValueError, match="dst and src"):
        _k._stream_copy(np.zeros(8, np.uint16), np.zeros(8, np.uint16))


_DIRECT_RUNS = r'''
import hashlib, sys
import numpy as np, fastbn
import fastbn._kernels as k
k._set_cache_sizes(0, 0, 10 << 20)  # outputs of 16 MB streamed (conftest.streaming_l3)
dtypes = [np.float16]
try:
    import ml_dtypes
    dtypes.append(ml_dtypes.bfloat16)
except ImportError:
    pass
if sys.argv[1].startswith("wide"):  # float32 / float64 (kern_direct.h)
    dtypes = [np.float32, np.float64]
rng = np.random.default_rng(7)


def at(shape, dtype, page_offset):
    """An array of `shape` starting `page_offset` bytes into a 4 KB page, its pages
    touched (outputs in untouched pages take plain stores: fbn_resident)."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    raw = np.ones(n + 8192, np.uint8)
    s = (page_offset - raw.ctypes.data) % 4096
    return raw[s:s + n].view(dtype).reshape(shape)


# runs: the rows shape (NCHW-like), runs of 784 and of 1009 (tails of 1-15);
# rows: the columns shape (channels last): repeated coefficients (64, 37 channels),
# rows one by one (1000: tails of 8), groups of rows and a last row alone (4096);
# wide: float32 rows one by one of 1000 and 520 channels (2080-byte rows: every
# offset in a line in turn), float64 of 520 (1000 take groups of rows) and 200;
# dx (and y) of flat spans of repeated coefficients: 128, 200, 13 and 16 channels
# (float32: streamed rows of 64 bytes), 40, 128 and 13 (float64; float32's 40 and
# float64's 16 take groups of rows); y of flat spans whose coefficients repeat within
# 4 vectors (held in registers: 64, 16, 24 and 3 channels; 3 and 24 repeat every 3)
# or up to 16 (float32 128, float64 64: a local copy), streamed, dx too, tiles as one
# flat span longer than the repeated arrays (fbn_held_flat_<sfx>: float32 16001x64,
# 45001x24, 350001x3, 60000x16, 9000x128; float64 20001x24, 60000x16, 9001x64);
# wide-runs: float32 / float64 runs (rows shape) of 784 values (3136 bytes: the same
# place in a line each run) and of 1009 (every place in turn)
axis, shapes = {"runs": (1, [(160, 64, 28, 28), (250, 32, 1009)]),
                "wide-runs": (1, [(40, 32, 28, 28), (64, 16, 1009)]),
                "rows": (-1, [(1200, 40, 64), (3000, 1000), (1001, 4096), (900, 100, 37),
                              (20001, 24), (60001, 3)]),
                "wide": (-1, [(3000, 1000), (5000, 520), (1001, 4096), (9000, 128),
                              (6000, 200), (60000, 13), (20000, 40), (60000, 16),
                              (20001, 24), (60001, 3), (9001, 64), (16001, 64), (45001, 24),
                              (350001, 3)])}[sys.argv[1]]
h = hashlib.sha256()
for dtype in dtypes:
    for shape in shapes:
        C = shape[axis]
        g = rng.uniform(0.5, 1.5, C).astype(np.float32)
        b = rng.standard_normal(C).astype(np.float32)
        rm = rng.standard_normal(C).astype(np.float32)
        rv = rng.uniform(0.5, 2, C).astype(np.float32)
        x, dy = at(shape, dtype, 16), at(shape, dtype, 1040)
        x[...] = rng.standard_normal(shape) * 2 + 1
        dy[...] = rng.standard_normal(shape)
        _, cache = fastbn.forward(x, g, b, axis=axis)
        _, relu = fastbn.forward(x, g, b, axis=axis, activation="relu")
        xi = at(shape, dtype, 16)  # eval-mode dx (through the buffer): x's infs
        xi[...] = x                # enter only a mask, never as inf * 0
        xi[::97, min(3, shape[1] - 1)] = np.inf
        _, ev = fastbn.forward(xi, g, b, axis=axis, training=False, running_mean=rm,
                               running_var=rv)
        # out at x's place in a page, before it, just past x or dy (4K aliasing:
        # the buffered path), at 2-byte offsets (heads) and a line's halves
        for off in [16, 0, 18, 30, 32, 48, 80, 528, 1042, 1056, 2064, 4094]:
            if off % np.dtype(dtype).itemsize:
                continue
            y = at(shape, dtype, off)
            fastbn.forward(x, g, b, axis=axis, training=False, running_mean=rm, running_var=rv,
                           out=y)
            dx = at(shape, dtype, off)
            fastbn.backward(dy, cache, out=(dx, None, None))
            h.update(y.tobytes())
            h.update(dx.tobytes())
            if off in (16, 18, 32, 48):  # y and dx through the ReLU
                fastbn.forward(x, g, b, axis=axis, training=False, running_mean=rm,
                               running_var=rv, activation="relu", out=y)
                fastbn.backward(dy, relu, out=(dx, None, None))
                h.update(y.tobytes())
                h.update(dx.tobytes())
                fastbn.backward(dy, ev, out=(dx, None, None))
                h.update(dx.tobytes())
        y = x.copy()  # in place
        fastbn.forward(y, g, b, axis=axis, training=False, running_mean=rm, running_var=rv,
                       out=y)
        h.update(y.tobytes())
        d = dy.copy()  # dx in place of dy
        fastbn.backward(d, cache, out=(d, None, None))
        h.update(d.tobytes())
print(h.hexdigest())
'''


def _digests_by_width(tmp_path, shape):
    script = tmp_path / "runs.py"
    script.write_text(_DIRECT_RUNS)
    digests = {}
    for width in ("64", "32", "16"):
        env = _env(FASTBN_STREAM_WIDTH=width)
        r = subprocess.run([sys.executable, str(script), shape], env=env, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr[-2000:]
        digests[width] = r.stdout.strip()
    return digests


def test_wide_streamed_rows_are_bitwise_the_buffered_ones(tmp_path):
    """float32 / float64 streamed rows one by one and flat spans (columns shape:
    fbn_span_direct, kern_walk.h; kern_direct.h) write y's and dx's whole lines
    straight from registers, 64 or 32 bytes a store, the partial lines at either end
    of a row through the L1 buffer: bitwise the buffered values
    (FASTBN_STREAM_WIDTH=16), with and without ReLU, eval-mode dx (buffered),
    outputs at every offset in a line, in place, and rows of groups beside."""
    digests = _digests_by_width(tmp_path, "wide")
    assert digests["64"] == digests["16"] and digests["32"] == digests["16"], digests


def test_wide_streamed_runs_are_bitwise_the_buffered_ones(tmp_path):
    """float32 / float64 streamed runs (rows shape: fbn_stream_regs, kern_elemwise.h;
    fbn_direct_run, kern_direct.h) write y's and dx's whole lines straight from
    registers, one channel's coefficients broadcast, the partial lines at either
    end of a run through the L1 buffer: bitwise the buffered values
    (FASTBN_STREAM_WIDTH=16) in the fused passes and inference, with and without
    ReLU, eval-mode dx (buffered), outputs at every offset in a line, in place."""
    digests = _digests_by_width(tmp_path, "wide-runs")
    assert digests["64"] == digests["16"] and digests["32"] == digests["16"], digests


@pytest.mark.parametrize("shape", ["runs", "rows"])
def test_half_streamed_runs_are_bitwise_the_buffered_ones(tmp_path, shape):
    """16-bit streamed runs (rows shape: fbn_stream_regs, kern_elemwise.h) and
    rows of one span (columns shape: fbn_span_direct, kern_walk.h) go straight from
    registers by non-temporal stores, with the partial steps at either end, and
    outputs just past an input within a page, through the L1 buffer. With 32-byte
    streams narrowed away (FASTBN_STREAM_WIDTH=16) everything takes the buffer: the
    values must be bitwise the same, for y and dx (with and without ReLU), outputs
    at every kind of offset, runs and rows with and without tails, in place."""
    digests = _digests_by_width(tmp_path, shape)
    assert digests["64"] == digests["16"] and digests["32"] == digests["16"], digests
