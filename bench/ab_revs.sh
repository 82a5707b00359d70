#!/usr/bin/env bash
# A/B timing of two git revisions: each is exported (git archive) to a scratch
# directory and built in place there, then bench/ab.py times them in one process.
#
#   bench/ab_revs.sh main HEAD                      # all shapes, both dtypes, 1 and 2 threads
#   bench/ab_revs.sh main HEAD --quick --threads 1  # ab.py options follow the revisions
#   bench/ab_revs.sh main main --quick              # A/A: the noise band on this machine
#
# Uses the current `python` ($PYTHON to override), which needs numpy, Cython and
# setuptools. OPENBLAS_CORETYPE/OPENBLAS_L2_SIZE are unset for the timing. The
# builds are kept in $FASTBN_AB_DIR (default: a new temporary directory).
set -euo pipefail
[[ $# -ge 2 ]] || { echo "usage: $0 REV_A REV_B [ab.py options]" >&2; exit 2; }
repo="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python}"
a="$1" b="$2"
shift 2
dir="${FASTBN_AB_DIR:-$(mktemp -d "${TMPDIR:-/tmp}/fastbn-ab.XXXXXX")}"
for rev in "$a" "$b"; do
    sha="$(git -C "$repo" rev-parse --short "$rev")"
    tree="$dir/$sha"
    if [[ ! -e "$tree/.built" ]]; then
        mkdir -p "$tree"
        git -C "$repo" archive "$sha" | tar -C "$tree" -xf -
        echo "ab_revs: building $rev ($sha) in $tree" >&2
        (cd "$tree" && "$python" setup.py build_ext --inplace -q >build.log 2>&1) || {
            cat "$tree/build.log"; exit 1; }
        touch "$tree/.built"
    fi
done
# this checkout's harness, so that both revisions are timed alike
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$python" "$repo/bench/ab.py" \
    "$dir/$(git -C "$repo" rev-parse --short "$a")" "$dir/$(git -C "$repo" rev-parse --short "$b")" "$@"
