#!/usr/bin/env bash
# A/B timing of two git revisions: each is exported (git archive) to a scratch
# directory and built in place there, then bench/ab.py times them in one process.
# A revision may carry extra C flags after a colon (REV:CFLAGS), e.g. a tuning
# constant of src_c/tuning.h set otherwise (docs/performance.md lists the commands).
#
#   bench/ab_revs.sh main HEAD                      # all shapes, both dtypes, 1 and 2 threads
#   bench/ab_revs.sh main HEAD --quick --threads 1  # ab.py options follow the revisions
#   bench/ab_revs.sh main main --quick              # A/A: the noise band on this machine
#   bench/ab_revs.sh HEAD "HEAD:-DFBN_GROUP=8" --shapes 256x64 --ops affine
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
trees=()
for spec in "$a" "$b"; do
    rev="${spec%%:*}"
    flags=""
    [[ "$spec" == *:* ]] && flags="${spec#*:}"
    sha="$(git -C "$repo" rev-parse --short "$rev")"
    tree="$dir/$sha$(printf '%s' "$flags" | tr -c 'A-Za-z0-9_=' '_')"
    if [[ ! -e "$tree/.built" ]]; then
        mkdir -p "$tree"
        git -C "$repo" archive "$sha" | tar -C "$tree" -xf -
        echo "ab_revs: building $rev ($sha) with CFLAGS='$flags' in $tree" >&2
        (cd "$tree" && CFLAGS="$flags" "$python" setup.py build_ext --inplace -q \
            >build.log 2>&1) || { cat "$tree/build.log"; exit 1; }
        touch "$tree/.built"
    fi
    trees+=("$tree")
done
# this checkout's harness, so that both revisions are timed alike
env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE "$python" "$repo/bench/ab.py" \
    "${trees[0]}" "${trees[1]}" "$@"
