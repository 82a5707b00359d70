"""Every output of the compiled kernels, bitwise, against stored digests (issue 16).

tests/digest_cases.py runs a fixed set of inputs through every entry point of the C
backend (all layouts, both dtypes, 1 and 2 threads, the tiled, threaded and streamed
paths) and hashes the outputs; tests/digests.json holds the digests of main's build
before the C restructure. A refactoring of the kernels must keep every one of them.
tools/digest_paths.sh runs the same check on a baseline-only (no SIMD dispatch) build.
"""
import json

import pytest

import fastbn

from digest_cases import STORE, compute, differences

pytestmark = pytest.mark.skipif(fastbn.backend != "c", reason="digests of the C kernels")


def test_outputs_match_stored_digests():
    stored = json.loads(STORE.read_text())
    now = compute()
    assert len(now) == len(stored)
    bad = differences(stored, now)
    assert not bad, f"{len(bad)} of {len(now)} outputs differ, e.g. {bad[:10]}"


def test_allocated_outputs_match_stored_digests():
    """The streamed cases with outputs fastbn allocates (large: pages not yet in memory,
    written with plain stores) give the bits of the streamed path."""
    stored = json.loads(STORE.read_text())
    now = compute(resident=False)
    bad = differences(stored, now)
    assert not bad, f"{len(bad)} of {len(now)} outputs differ, e.g. {bad[:10]}"


def test_results_do_not_depend_on_the_thread_count():
    stored = json.loads(STORE.read_text())
    one = {k[3:]: v for k, v in stored.items() if k.startswith("t1/")}
    two = {k[3:]: v for k, v in stored.items() if k.startswith("t2/")}
    assert one == two


def test_half_outputs_match_stored_digests():
    """float16 / bfloat16 outputs on NaNs (signs, payloads), infinities and subnormals,
    bitwise those stored (tests/half_digest_cases.py)."""
    pytest.importorskip("ml_dtypes")
    from half_digest_cases import STORE as HALF_STORE, compute as half_compute
    stored = json.loads(HALF_STORE.read_text())
    now = half_compute()
    assert len(now) == len(stored)
    bad = differences(stored, now)
    assert not bad, f"{len(bad)} of {len(now)} outputs differ, e.g. {bad[:10]}"
