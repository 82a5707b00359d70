"""Digests of the float16 / bfloat16 outputs on inputs full of special values (issue 19).

tests/test_digest.py compares them with tests/half_digests.json, written from the
default build (AVX-512 dispatch): a change of the half-precision loops (e.g. conversions
in registers instead of through a float buffer) must keep every output bit
but NaNs' signs and payloads: every NaN is hashed as the one quiet NaN, for the NaN an
operation returns from two NaN operands is the first operand's, and which one that is
follows the operand order the compiler picks (builds of unrelated changes gave
different NaN bits in the backward's dx, dgamma and dbeta). NaN positions count.

The data (tests/digest_cases.py's integer-generated values) hold NaNs of both signs
with payloads, infinities, subnormals and zeros of both signs, in x and dy, on the
rows (NCHW), columns ((N, C), rows 4 KB apart too) and NHWC shapes at lengths around
multiples of 16 (the vector step), for normalize, backward_elemt, the forward (training
and inference, activations) and its backward, into new arrays and in place.

    python tests/half_digest_cases.py --write   # writes tests/half_digests.json
    python tests/half_digest_cases.py           # prints the cases that differ
"""
import pathlib
import sys

import numpy as np

from digest_cases import Hasher, channel_vec, data, main as digest_main

STORE = pathlib.Path(__file__).resolve().parent / "half_digests.json"

# name, shape, axis
SHAPES = [
    ("nchw_47", (3, 5, 47), 1),
    ("nchw_48", (2, 3, 16, 3), 1),
    ("nchw_1030", (5, 4, 1030), 1),
    ("nc_53", (37, 53), 1),
    ("nc_300", (9, 300), 1),
    ("nc_2048", (10, 2048), 1),      # rows 4 KB apart: the row groups
    ("nc_2064", (12, 2064), 1),
    ("nhwc_40", (33, 7, 40), -1),
    ("nhwc_64", (4, 6, 6, 64), -1),
]

# bit patterns: NaNs of both signs with payloads (quiet and signalling), infinities,
# subnormals, zeros of both signs
SPECIAL = {
    "float16": [0x7E00, 0xFE00, 0x7E55, 0xFC01, 0x7D23, 0x7C00, 0xFC00, 0x0001, 0x83FF,
                0x0200, 0x8000, 0x0000],
    "bfloat16": [0x7FC0, 0xFFC0, 0x7FD5, 0xFF81, 0x7F93, 0x7F80, 0xFF80, 0x0001, 0x807F,
                 0x0040, 0x8000, 0x0000],
}


def special_data(shape, axis, seed, dtype, steps):
    """data() with special values every steps[k]-th element (the k-th pattern)."""
    x = data(shape, seed, np.float32, axis).astype(dtype)
    bits = x.reshape(-1).view(np.uint16)
    for k, (pattern, step) in enumerate(zip(SPECIAL[dtype.name], steps)):
        bits[(3 * k + seed) % step::step] = pattern
    return x


class NaNsAsOne(Hasher):
    """Hasher of the arrays with every NaN as the one quiet NaN (see above)."""

    def add(self, name, *arrays):
        def canonical(a):
            if a is None:
                return a
            a = np.array(a)
            a[np.isnan(a)] = np.nan
            return a
        super().add(name, *map(canonical, arrays))


def run_case(fastbn, hs, tag, shape, axis, dtype, seed):
    ax = axis % len(shape)
    C = shape[ax]
    x = special_data(shape, axis, seed, dtype, [97, 101, 103, 89, 83, 107, 109, 61, 67, 71,
                                                73, 79])
    dy = special_data(shape, axis, seed + 7, dtype, [113, 127, 131, 137, 139, 149, 151, 53,
                                                     59, 157, 163, 167])
    # channels without specials too (finite statistics): the first channel's values
    clean = data(shape, seed + 1, np.float32, axis).astype(dtype)
    first = [slice(None)] * len(shape)
    first[ax] = 0
    x[tuple(first)] = clean[tuple(first)]
    mean = channel_vec(C, seed + 2)
    invstd = channel_vec(C, seed + 3, positive=True)
    gamma = channel_vec(C, seed + 4, np.float32, positive=True)
    gamma[1::3] = 1e-6  # outputs in the subnormal range of float16
    beta = channel_vec(C, seed + 5, np.float32)
    sums = channel_vec(C, seed + 6), channel_vec(C, seed + 8)
    for act in (None, "relu"):
        a = act or "id"
        hs.add(f"{tag}/normalize/{a}",
               fastbn.normalize(x, mean, invstd, gamma, beta, axis=axis, activation=act))
        hs.add(f"{tag}/backward_elemt/{a}",
               fastbn.backward_elemt(dy, x, mean, invstd, gamma, *sums, 1000, axis=axis,
                                     beta=beta, activation=act))
    for act in (None, "relu", "leaky_relu"):
        a = act or "id"
        for training in (True, False):
            rm = channel_vec(C, seed + 9, np.float32)
            rv = channel_vec(C, seed + 10, np.float32, positive=True)
            y, cache = fastbn.forward(x, gamma, beta, axis=axis, training=training,
                                      running_mean=rm, running_var=rv, activation=act)
            dx, dg, db = fastbn.backward(dy, cache)
            hs.add(f"{tag}/fwd_bwd/{a}/{'train' if training else 'eval'}", y, dx, dg, db)
    xc = x.copy()
    fastbn.normalize(xc, mean, invstd, gamma, beta, axis=axis, out=xc)
    dc = dy.copy()
    fastbn.backward_elemt(dc, x, mean, invstd, gamma, *sums, 1000, axis=axis, out=dc)
    hs.add(f"{tag}/in_place", xc, dc)


def compute():
    import ml_dtypes

    import fastbn
    hs = NaNsAsOne()
    previous = fastbn.get_num_threads()
    try:
        fastbn.set_num_threads(1)
        with np.errstate(all="ignore"):
            for dtype in (np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)):
                for i, (name, shape, axis) in enumerate(SHAPES):
                    run_case(fastbn, hs, f"{dtype.name}/{name}", shape, axis, dtype,
                             900 + 10 * i)
    finally:
        fastbn.set_num_threads(previous)
    return hs.digests


if __name__ == "__main__":
    sys.exit(digest_main(sys.argv[1:], compute, STORE))
