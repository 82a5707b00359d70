#!/usr/bin/env bash
# The half-precision tests (tests/test_half.py, tests/test_half_conversions.py) on
# builds the default build does not exercise on this machine: a scratch copy of the
# working tree is built with extra C flags (as tools/digest_paths.sh does) and tested.
#
#   tools/half_paths.sh                              # baseline x86-64 (SSE2) code only
#   CFLAGS="-DFBN_NO_DISPATCH -mavx2 -mfma" tools/half_paths.sh   # an AVX2 machine's code
#
# Exits non-zero when a test fails. The normal in-place build is not touched.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python}"
work="$(mktemp -d "${TMPDIR:-/tmp}/fastbn-half.XXXXXX")"
trap 'rm -rf "$work"' EXIT
tar -C "$repo" --exclude=./.git --exclude=./build --exclude='*.so' --exclude='*.o' \
    --exclude=./.hypothesis --exclude=./.pytest_cache --exclude='__pycache__' \
    --exclude='*.egg-info' --exclude='fastbn/_kernels.c' -cf - . | tar -C "$work" -xf -
cd "$work"
flags="${CFLAGS:--DFBN_NO_DISPATCH}"
echo "half_paths: building with CFLAGS=$flags in $work"
CFLAGS="$flags" "$python" setup.py build_ext --inplace -q --build-temp build/half \
    >build.log 2>&1 || { cat build.log; exit 1; }
PYTHONPATH="$work" "$python" -c "import fastbn; assert fastbn.__file__.startswith('$work'); fastbn.show_config()"
PYTHONPATH="$work" "$python" -m pytest -q -p no:cacheprovider tests/test_half.py \
    tests/test_half_conversions.py
