"""src_c/half.h: the conversions of half-precision data, exact and bitwise equal on
every path.

tests/half_check.c (compiled here with the system's C compiler) dumps the portable
conversions, which are compared with NumPy (float16) and ml_dtypes (bfloat16) on all
65536 halves and on the floats whose bits are multiples of 251 (17 million, every
exponent and many significands), plus the boundaries: round to nearest even, NaN
kept NaN of the same sign, infinities, overflow, subnormals. It also compares the
vector forms (F16C, AVX2, AVX-512F, as this CPU has them) with the portable ones,
on every float in the slow run.
"""
import os
import shutil
import subprocess

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CC = os.environ.get("CC", "cc")

pytestmark = pytest.mark.skipif(shutil.which(CC) is None or not os.path.exists(
    os.path.join(ROOT, "src_c", "half.h")), reason="needs a C compiler and src_c/half.h")

STRIDE = 251


@pytest.fixture(scope="module")
def half_check(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("half") / "half_check")
    flags = ["-O2", "-std=c99", "-Wall", "-Wextra", "-Werror", "-mf16c", "-mavx2", "-mavx512f"]
    subprocess.run([CC, *flags, "-I", os.path.join(ROOT, "src_c"),
                    os.path.join(ROOT, "tests", "half_check.c"), "-o", exe], check=True)
    return exe


@pytest.fixture(scope="module")
def dumped(half_check, tmp_path_factory):
    path = str(tmp_path_factory.mktemp("dump") / "dump.bin")
    subprocess.run([half_check, "dump", str(STRIDE), path], check=True)
    raw = np.fromfile(path, dtype=np.uint8)
    widened = raw[:65536 * 4].view(np.uint32)
    narrowed = raw[65536 * 4:].view(np.uint16)
    n = narrowed.size // 2
    return widened, narrowed[:n], narrowed[n:]


def strided_floats():
    return (np.arange(0, 2 ** 32, STRIDE, dtype=np.uint64).astype(np.uint32)).view(np.float32)


def same_or_both_nan(got_bits, expected, dtype, nan_dtype_bits):
    """got (bits of `dtype`) equals `expected` bitwise, or both are NaNs of one sign."""
    exp_bits = expected.view(nan_dtype_bits)
    got = got_bits.view(dtype)
    with np.errstate(invalid="ignore"):
        nan = np.isnan(expected.astype(np.float32))
    assert (np.isnan(got.astype(np.float32)) == nan).all()
    assert (np.signbit(got.astype(np.float32)) == np.signbit(expected.astype(np.float32))).all()
    assert (got_bits[~nan] == exp_bits[~nan]).all()


def test_f16_to_f32_all_halves(dumped):
    widened, _, _ = dumped
    halves = np.arange(65536, dtype=np.uint32).astype(np.uint16).view(np.float16)
    same_or_both_nan(widened, halves.astype(np.float32), np.float32, np.uint32)
    # NaNs come out quiet, payload kept (as VCVTPH2PS)
    nan = np.isnan(halves)
    assert ((widened[nan] & 0x00400000) != 0).all()
    assert ((widened[nan] >> 13) & 0x1ff == halves.view(np.uint16)[nan] & 0x1ff).all()


def test_f32_to_f16_strided_floats(dumped):
    _, f16, _ = dumped
    x = strided_floats()
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(np.float16)
    same_or_both_nan(f16, expected, np.float16, np.uint16)


def test_f32_to_bf16_strided_floats(dumped):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    _, _, bf16 = dumped
    x = strided_floats()
    with np.errstate(over="ignore", invalid="ignore"):
        expected = x.astype(ml_dtypes.bfloat16)
    same_or_both_nan(bf16, expected, ml_dtypes.bfloat16, np.uint16)


def test_boundaries(half_check, tmp_path):
    """Ties, overflow and subnormals, which the strided floats mostly miss: every
    midpoint between neighbouring binary16 values (a tie), the floats either side of
    it, the overflow threshold 65520 and the subnormal range, both signs."""
    # every binary16 value, its midpoints to the next one, and the midpoints +- 1 float ulp
    h = np.arange(0, 0x7c00, dtype=np.uint16).view(np.float16)
    lo, hi = h.astype(np.float64)[:-1], h.astype(np.float64)[1:]
    mid = ((lo + hi) / 2).astype(np.float32)  # exact: a tie
    cases = np.concatenate([mid, np.nextafter(mid, np.float32(0)), np.nextafter(mid, np.float32(1)),
                            np.float32([65504, 65519.996, 65520, 65536, 1e30, np.inf, 2 ** -25,
                                        2 ** -25 * 1.0000001, 2 ** -24, 1.5 * 2 ** -24, 2.5 * 2 ** -24,
                                        1e-45, 2 ** -14, 2 ** -14 - 2 ** -25])])
    cases = np.concatenate([cases, -cases])
    src = tmp_path / "cases.c"
    src.write_text('#include <stdio.h>\n#include "half.h"\nint main(void){unsigned u; '
                   'while (scanf("%u", &u) == 1) printf("%u %u\\n", '
                   '(unsigned)fbn_f32_to_f16(fbn_bits_f32(u)), '
                   '(unsigned)fbn_f32_to_bf16(fbn_bits_f32(u))); return 0;}\n')
    exe = str(tmp_path / "cases")
    subprocess.run([CC, "-O2", "-std=c99", "-I", os.path.join(ROOT, "src_c"), str(src), "-o", exe],
                   check=True)
    out = subprocess.run([exe], input="\n".join(map(str, cases.view(np.uint32))),
                         capture_output=True, text=True, check=True).stdout.split()
    got = np.array(out, dtype=np.uint32).reshape(-1, 2)
    with np.errstate(over="ignore"):
        assert (got[:, 0] == cases.astype(np.float16).view(np.uint16)).all()
    ml_dtypes = pytest.importorskip("ml_dtypes")
    with np.errstate(over="ignore"):
        assert (got[:, 1] == cases.astype(ml_dtypes.bfloat16).view(np.uint16)).all()


def _compare(half_check, stride):
    out = subprocess.run([half_check, "compare", str(stride)], capture_output=True, text=True,
                         check=True).stdout
    rows = [line.split() for line in out.splitlines()]
    assert all(int(bad) == 0 for _, _, bad in rows), out
    return rows


def test_vector_forms_match_portable(half_check):
    _compare(half_check, STRIDE)


@pytest.mark.slow
def test_vector_forms_match_portable_on_every_float(half_check):
    rows = _compare(half_check, 1)
    assert any(int(n) == 2 ** 32 for _, n, _ in rows) or not rows
