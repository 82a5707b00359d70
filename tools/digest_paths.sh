#!/usr/bin/env bash
# The digest test (tests/digest_cases.py, tests/test_digest.py) on builds the default
# build does not exercise on this machine: a scratch copy of the working tree
# (tools/scratch_build.sh) is built with extra C flags and checked against
# tests/digests.json.
#
#   tools/digest_paths.sh            # baseline x86-64 code only (-DFBN_NO_DISPATCH:
#                                    # no target_clones, so no AVX2/AVX-512 clone runs)
#   tools/digest_paths.sh none       # ... and FASTBN_THREADS=none (also pthreads, openmp)
#   CFLAGS=-march=native tools/digest_paths.sh   # other flags replace -DFBN_NO_DISPATCH
#
# Exits non-zero when a digest differs. The normal in-place build is not touched.
set -euo pipefail
FASTBN_THREADS="${1:-}" exec "$(dirname "$0")/scratch_build.sh" "${PYTHON:-python}" \
    tests/digest_cases.py
