#!/usr/bin/env bash
# The digest test (tests/digest_cases.py, tests/test_digest.py) on builds the default
# build does not exercise on this machine: a scratch copy of the working tree is built
# with extra C flags and checked against tests/digests.json.
#
#   tools/digest_paths.sh            # baseline x86-64 code only (-DFBN_NO_DISPATCH:
#                                    # no target_clones, so no AVX2/AVX-512 clone runs)
#   tools/digest_paths.sh none       # ... and FASTBN_THREADS=none (also pthreads, openmp)
#   CFLAGS=-march=native tools/digest_paths.sh   # other flags replace -DFBN_NO_DISPATCH
#
# Exits non-zero when a digest differs. The normal in-place build is not touched.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python}"
work="$(mktemp -d "${TMPDIR:-/tmp}/fastbn-digest.XXXXXX")"
trap 'rm -rf "$work"' EXIT
tar -C "$repo" --exclude=./.git --exclude=./build --exclude='*.so' --exclude='*.o' \
    --exclude=./.hypothesis --exclude=./.pytest_cache --exclude='__pycache__' \
    --exclude='*.egg-info' --exclude='fastbn/_kernels.c' -cf - . | tar -C "$work" -xf -
cd "$work"
flags="${CFLAGS:--DFBN_NO_DISPATCH}"
echo "digest_paths: building with CFLAGS=$flags FASTBN_THREADS=${1:-default} in $work"
CFLAGS="$flags" FASTBN_THREADS="${1:-}" "$python" setup.py build_ext --inplace -q \
    --build-temp build/digest >build.log 2>&1 || { cat build.log; exit 1; }
PYTHONPATH="$work" "$python" -c "import fastbn; assert fastbn.__file__.startswith('$work'); fastbn.show_config()"
PYTHONPATH="$work" "$python" tests/digest_cases.py
