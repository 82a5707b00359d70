"""Digests of the compiled kernels' outputs on a fixed set of inputs (issue 16).

Every output of every public entry point that reaches the C kernels is hashed
(SHA-256 of its dtype, shape and bytes, NaN bits included) on inputs generated
here by integer arithmetic (so that they do not depend on NumPy's random
streams): forward (training and inference, with and without ReLU, gamma/beta,
running statistics), backward (training and eval statistics), batch_stats,
normalize, backward_reduce, backward_elemt and update_running_stats, for float32
and float64, on NC, NCHW-like (inner > 1), NHWC (axis=-1), strided and
non-contiguous views and out=, at sizes that reach the kernels' single-tile,
tiled, multi-threaded and streamed (non-temporal store) paths, on 1 and 2
threads.

tests/test_digest.py compares them with tests/digests.json, written from the
build of main before the C restructure of issue 16: a restructure that changes
no result keeps them. The cases nc_order, nc_order_g8, nc_dxspans and st64_nhwc
came later (the columns-shape reductions' rows in order, float64 dx by flat
spans): written by that change's build, and ea272aa's build, from before it,
gives the same 2082 digests. Regenerate (only when a change of results is intended):

    python tests/digest_cases.py --write     # writes tests/digests.json
    python tests/digest_cases.py             # prints the cases that differ

The SIMD path that runs is the build's: a default GCC build on x86-64 dispatches
to its AVX-512, AVX2 or baseline clone by CPU; a build with
CFLAGS=-DFBN_NO_DISPATCH has only the baseline (SSE2) code (see
tools/digest_paths.sh, which checks both).
"""
import hashlib
import json
import pathlib
import sys

import numpy as np

STORE = pathlib.Path(__file__).resolve().parent / "digests.json"


def values(n, seed, dtype, spread=1.0):
    """n reproducible values in about [-spread, spread) (splitmix64 of the index)."""
    z = np.arange(n, dtype=np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % 2**64)
    with np.errstate(over="ignore"):
        z = z * np.uint64(0xBF58476D1CE4E5B9)
        z ^= z >> np.uint64(31)
        z = z * np.uint64(0x94D049BB133111EB)
        z ^= z >> np.uint64(29)
    u = (z >> np.uint64(11)).astype(np.float64) * 2.0 ** -53  # [0, 1)
    return ((2.0 * u - 1.0) * spread).astype(dtype)


def data(shape, seed, dtype, axis=1, offset=True):
    """Values with a per-channel offset and scale (channels along axis)."""
    x = values(int(np.prod(shape)), seed, np.float64).reshape(shape)
    if offset:
        C = shape[axis]
        view = [1] * len(shape)
        view[axis] = C
        x = x * (1.0 + values(C, seed + 1, np.float64) ** 2 * 3).reshape(view)
        x = x + (values(C, seed + 2, np.float64) * 4).reshape(view)
    return x.astype(dtype)


def channel_vec(C, seed, dtype=np.float64, positive=False):
    v = values(C, seed, np.float64)
    return (1.0 + 0.5 * v if positive else v).astype(dtype)


class Hasher:
    def __init__(self):
        self.digests = {}

    def add(self, name, *arrays):
        h = hashlib.sha256()
        for a in arrays:
            if a is None:
                h.update(b"None")
                continue
            a = np.asarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(np.ascontiguousarray(a).tobytes())
        assert name not in self.digests, name
        self.digests[name] = h.hexdigest()


# name, shape, axis, view: how x is made from a base array ("c": C-contiguous,
# "strided": every other element of the last axis, "fortran": F-ordered,
# "transposed": a transposed C array)
SHAPES = [
    ("nc_small", (40, 7), 1, "c"),              # columns, one tile, one thread
    ("nc_block", (100, 300), 1, "c"),           # columns, channel blocks (fused)
    ("nc_rows", (3000, 40), 1, "c"),            # columns, whole-row tiles (threads, tiled)
    ("nc_wide", (160, 1024), 1, "c"),           # 4 KB rows: paired row groups, prefetch
    ("nc_dxgroup", (2500, 32), 1, "c"),         # dx row groups (16..64 channels)
    ("nc_one", (70000, 1), 1, "c"),             # one channel (becomes inner)
    ("nchw_small", (4, 5, 7, 9), 1, "c"),       # rows, short runs
    ("nchw_mid", (8, 16, 14, 14), 1, "c"),      # rows, threaded elementwise
    ("nchw_tiled", (16, 3, 100, 100), 1, "c"),  # rows, several segments per channel
    ("nhwc", (8, 14, 14, 24), -1, "c"),         # axis=-1, short rows: repeated coefficients
    ("nhwc_3", (64, 20, 20, 3), -1, "c"),       # 3 channels
    ("strided", (50, 33), 1, "strided"),        # non-contiguous view
    ("fortran", (9, 6, 11), 1, "fortran"),
    ("transposed", (30, 12, 5), 2, "transposed"),
    ("axis0", (13, 40), 0, "c"),
    ("nc_order", (1003, 128), 1, "c"),          # reductions' rows in order (rows of 512 B+)
    ("nc_order_g8", (517, 256), 1, "c"),        # float64 2 KB rows: groups of 8, rows in order
    ("nc_dxspans", (1500, 48), 1, "c"),         # dx: float64 by flat spans, float32 row groups
]
# streamed (outputs of >= 16 MB: non-temporal stores, under an L3 of 16 MB), float32
# only (64 MB for float64 would take long; the float64 vector code is the same template)
STREAMED = [
    ("st_nchw", (4, 8, 360, 370), 1, "c"),      # rows shape
    ("st_nc300", (14000, 300), 1, "c"),         # columns, rows one by one
    ("st_nc2048", (2100, 2048), 1, "c"),        # columns, row groups through L1 buffer
    ("st_nhwc", (65600, 64), 1, "c"),           # columns, repeated coefficients
]
STREAMED_F64 = [("st64_nc", (2100, 1024), 1, "c"), ("st64_nchw", (4, 4, 360, 370), 1, "c"),
                ("st64_nhwc", (40000, 64), 1, "c")]  # rows in order, dx by flat spans


def make_x(shape, axis, view, seed, dtype):
    if view == "c":
        return data(shape, seed, dtype, axis)
    if view == "strided":
        base = data(shape[:-1] + (2 * shape[-1],), seed, dtype, axis)
        return base[..., ::2]
    if view == "fortran":
        return np.asfortranarray(data(shape, seed, dtype, axis))
    if view == "transposed":
        return data(shape[::-1], seed, dtype, len(shape) - 1 - axis).T
    raise ValueError(view)


def run_case(fastbn, hs, tag, shape, axis, view, dtype, seed, full=True, resident=False):
    """All ops on one shape; tag names the case in the digests. resident: the forward
    and backward write into given arrays already in memory (outputs in pages not yet
    touched, as fresh large allocations are, take plain stores, not streamed ones:
    src_c/stream.c), under the same names."""
    x = make_x(shape, axis, view, seed, dtype)
    dy = make_x(shape, axis, view, seed + 7, dtype)
    ax = axis % len(shape)
    C = shape[ax]
    gamma = channel_vec(C, seed + 3, dtype, positive=True)
    beta = channel_vec(C, seed + 4, dtype)
    for relu in (None, "relu"):
        r = "relu" if relu else "id"
        for affine in ((True, False) if full else (True,)):
            g, b = (gamma, beta) if affine else (None, None)
            a = "gb" if affine else "nogb"
            rm, rv = channel_vec(C, seed + 5, dtype), channel_vec(C, seed + 6, dtype, True)
            y_out = np.full(shape, np.nan, dtype) if resident else None
            dx_out = (np.full(shape, np.nan, dtype), None, None) if resident else None
            y, cache = fastbn.forward(x, g, b, axis=axis, running_mean=rm, running_var=rv,
                                      momentum=0.25, activation=relu, out=y_out)
            hs.add(f"{tag}/fwd/{r}/{a}", y, cache.mean, cache._mean_lo, cache.invstd, rm, rv)
            dx, dg, db = fastbn.backward(dy, cache, out=dx_out)
            hs.add(f"{tag}/bwd/{r}/{a}", dx, dg, db)
            # inference, and the backward of eval-mode statistics
            y, cache = fastbn.forward(x, g, b, axis=axis, training=False, running_mean=rm,
                                      running_var=rv, activation=relu, out=y_out)
            hs.add(f"{tag}/infer/{r}/{a}", y, cache.invstd)
            dx, dg, db = fastbn.backward(dy, cache, out=dx_out)
            hs.add(f"{tag}/bwd_eval/{r}/{a}", dx, dg, db)
        if not full:
            continue
        # out= (the compiled front end, writing into a given array)
        out = np.full(shape, np.nan, dtype)
        y, cache = fastbn.forward(x, gamma, beta, axis=axis, out=out, activation=relu,
                                  unbiased_running_var=False)
        dxo = np.full(shape, np.nan, dtype)
        dx, dg, db = fastbn.backward(dy, cache, out=dxo)
        hs.add(f"{tag}/out/{r}", out, dxo, dg, db)
        # building blocks
        count, mean, m2 = fastbn.batch_stats(x, axis=axis)
        hs.add(f"{tag}/batch_stats/{r}", mean, m2, np.asarray(count))
        invstd = 1.0 / np.sqrt(m2 / count + 1e-5)
        y = fastbn.normalize(x, mean, invstd, gamma, beta, axis=axis, activation=relu)
        hs.add(f"{tag}/normalize/{r}", y)
        s_dy, s_dyx = fastbn.backward_reduce(dy, x, mean, invstd, axis=axis, gamma=gamma,
                                             beta=beta, activation=relu)
        hs.add(f"{tag}/backward_reduce/{r}", s_dy, s_dyx)
        dx = fastbn.backward_elemt(dy, x, mean, invstd, gamma, s_dy, s_dyx, count, axis=axis,
                                   beta=beta, activation=relu)
        hs.add(f"{tag}/backward_elemt/{r}", dx)
    rm, rv = channel_vec(C, seed + 5, dtype), channel_vec(C, seed + 6, dtype, True)
    count, mean, m2 = fastbn.batch_stats(x, axis=axis)
    fastbn.update_running_stats(rm, rv, mean, m2 / count, count, momentum=0.3)
    hs.add(f"{tag}/update_running_stats", rm, rv)


def special_cases(fastbn, hs, dtype, tag):
    """Non-finite values, a far pivot (second statistics pass), constant channels."""
    x = data((300, 6), 11, dtype)
    x[5, 1] = np.nan
    x[7, 2] = np.inf
    x[0, 3] = 1e6 if dtype == np.float64 else 1e4  # first value far from the mean
    x[:, 4] = 2.5                                    # constant channel
    x[:, 5] += 1e7 if dtype == np.float64 else 1e3   # far from the origin
    dy = data((300, 6), 12, dtype)
    for relu in (None, "relu"):
        y, cache = fastbn.forward(x, np.ones(6, dtype), np.zeros(6, dtype), activation=relu)
        dx, dg, db = fastbn.backward(dy, cache)
        hs.add(f"{tag}/special/{relu}", y, cache.mean, cache._mean_lo, cache.invstd, dx, dg, db)
    x4 = data((8, 3, 30, 30), 13, dtype)
    x4[0, 0, 0, 0] = 1e5 if dtype == np.float64 else 1e3
    x4[:, 1] += 1e6
    y, cache = fastbn.forward(x4)
    dx, dg, db = fastbn.backward(data((8, 3, 30, 30), 14, dtype), cache)
    hs.add(f"{tag}/special_rows", y, cache.mean, cache._mean_lo, cache.invstd, dx, dg, db)


def _streaming_l3(fastbn):
    """An L3 of 10 MB for the streamed cases, so that their outputs are streamed on any
    machine (src_c/plan.c streams a pass whose inputs and output take more than 3/4 of
    L3, 7.5 MB): the compiled kernels, to restore the detected sizes after (None without)."""
    if fastbn.backend != "c":
        return None
    import fastbn._kernels as kernels
    kernels._set_cache_sizes(0, 0, 10 << 20)
    return kernels


def compute(streamed=True, resident=True):
    import fastbn
    hs = Hasher()
    previous = fastbn.get_num_threads()
    try:
        for threads in (1, 2):
            fastbn.set_num_threads(threads)
            for dtype in (np.float32, np.float64):
                d = np.dtype(dtype).name
                for i, (name, shape, axis, view) in enumerate(SHAPES):
                    run_case(fastbn, hs, f"t{threads}/{d}/{name}", shape, axis, view, dtype,
                             100 + 10 * i)
                special_cases(fastbn, hs, dtype, f"t{threads}/{d}")
            if streamed:
                kernels = _streaming_l3(fastbn)
                try:
                    for i, (name, shape, axis, view) in enumerate(STREAMED):
                        run_case(fastbn, hs, f"t{threads}/float32/{name}", shape, axis, view,
                                 np.float32, 500 + 10 * i, full=False, resident=resident)
                    for i, (name, shape, axis, view) in enumerate(STREAMED_F64):
                        run_case(fastbn, hs, f"t{threads}/float64/{name}", shape, axis, view,
                                 np.float64, 700 + 10 * i, full=False, resident=resident)
                finally:
                    if kernels:
                        kernels._set_cache_sizes(0, 0, 0)
    finally:
        fastbn.set_num_threads(previous)
    return hs.digests


def differences(stored, now):
    names = sorted(set(stored) | set(now))
    return [n for n in names if stored.get(n) != now.get(n)]


def main(argv, compute=compute, store=STORE):
    """--write: store the digests of this build; else print the cases that differ."""
    now = compute()
    if "--write" in argv:
        store.write_text(json.dumps(now, indent=0, sort_keys=True) + "\n")
        print(f"wrote {len(now)} digests to {store}")
        return 0
    stored = json.loads(store.read_text())
    bad = differences(stored, now)
    for n in bad:
        print("differs:", n)
    print(f"{len(now)} cases, {len(bad)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
