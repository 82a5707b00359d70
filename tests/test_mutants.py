"""tools/mutants.py stays applicable: each mutant's old text occurs exactly once in
its file, so that tools/mutate.py mutates what the mutant's description says (a
mutant whose text moved away would silently mutate nothing, or the wrong place)."""
import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = os.path.join(ROOT, "tools")
HAVE = os.path.exists(os.path.join(TOOLS, "mutants.py"))

pytestmark = pytest.mark.skipif(not HAVE,
                                reason="tools/ is not in this tree (an installed wheel)")


def mutants():
    sys.path.insert(0, TOOLS)
    try:
        from mutants import MUTANTS
    finally:
        sys.path.remove(TOOLS)
    return MUTANTS


@pytest.mark.parametrize("m", mutants() if HAVE else [], ids=lambda m: m.name)
def test_mutant_text_occurs_once(m):
    with open(os.path.join(ROOT, m.path)) as f:
        text = f.read()
    assert text.count(m.old) == 1, f"{m.name}: old text found {text.count(m.old)} times in {m.path}"
    assert m.old != m.new
