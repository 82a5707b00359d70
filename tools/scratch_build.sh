#!/usr/bin/env bash
# Builds a scratch copy of the working tree with extra C flags and runs a command in it
# against that build (tools/digest_paths.sh and tools/half_paths.sh use it): the build
# paths the default build does not exercise on this machine.
#
#   tools/scratch_build.sh python tests/digest_cases.py       # CFLAGS=-DFBN_NO_DISPATCH
#   CFLAGS="-DFBN_NO_DISPATCH -mavx2 -mfma" FASTBN_THREADS=none tools/scratch_build.sh CMD...
#
# CFLAGS defaults to -DFBN_NO_DISPATCH (baseline x86-64 code only: no target_clones);
# FASTBN_THREADS (pthreads, openmp, none) as for setup.py. Exits with the command's
# status. The normal in-place build is not touched.
set -euo pipefail
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python}"
work="$(mktemp -d "${TMPDIR:-/tmp}/fastbn-scratch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
tar -C "$repo" --exclude=./.git --exclude=./build --exclude='*.so' --exclude='*.o' \
    --exclude=./.hypothesis --exclude=./.pytest_cache --exclude='__pycache__' \
    --exclude='*.egg-info' --exclude='fastbn/_kernels.c' -cf - . | tar -C "$work" -xf -
cd "$work"
flags="${CFLAGS:--DFBN_NO_DISPATCH}"
echo "scratch build: CFLAGS=$flags FASTBN_THREADS=${FASTBN_THREADS:-default} in $work"
CFLAGS="$flags" "$python" setup.py build_ext --inplace -q --build-temp build/scratch \
    >build.log 2>&1 || { cat build.log; exit 1; }
PYTHONPATH="$work" "$python" -c "import fastbn; assert fastbn.__file__.startswith('$work'); fastbn.show_config()"
PYTHONPATH="$work" "$@"
