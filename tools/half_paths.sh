#!/usr/bin/env bash
# The half-precision tests (tests/test_half.py, tests/test_half_conversions.py,
# tests/test_half_sums.py, tests/test_half_runs.py, tests/test_stream.py (16-bit streamed
# runs from registers against the buffer), and
# the digests of tests/test_digest.py, half-precision ones included) on
# builds the default build does not exercise on this machine: a scratch copy of the
# working tree (tools/scratch_build.sh) is built with extra C flags and tested.
#
#   tools/half_paths.sh                              # baseline x86-64 (SSE2) code only
#   CFLAGS="-DFBN_NO_DISPATCH -mavx2 -mfma -mf16c" tools/half_paths.sh   # an AVX2 + F16C machine's code
#   CFLAGS=-DFBN_NO_BF16_HW tools/half_paths.sh     # AVX-512F without AVX512_BF16's rounding
#   (without -mf16c the half conversions are the portable ones: show_config's "half data")
#
# Exits non-zero when a test fails. The normal in-place build is not touched.
set -euo pipefail
exec "$(dirname "$0")/scratch_build.sh" "${PYTHON:-python}" -m pytest -q -p no:cacheprovider \
    tests/test_half.py tests/test_half_conversions.py tests/test_half_sums.py \
    tests/test_half_runs.py tests/test_stream.py tests/test_digest.py
