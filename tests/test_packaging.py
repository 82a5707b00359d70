"""Packaging and documentation: every Python example of the README and of the docs/
pages runs (as a doctest would), and the version is written in one place.

Each ```python block runs on its own in a fresh namespace, in a scratch directory.
Blocks that are fragments of a training loop use names they do not define (x, dy,
lr, W, ...): FIXTURES gives those, with shapes that fit the README's examples; a
block's own assignments replace them. Blocks that import mpi4py run on
COMM_WORLD of this single process and skip without mpi4py.
"""
import pathlib
import re
import sys

import numpy as np
import pytest

import fastbn

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def fixtures():
    rng = np.random.default_rng(0)
    f32 = np.float32
    return {
        "np": np, "fastbn": fastbn,
        # the layer example: BatchNorm(128) on (N, 128) batches
        "x": rng.standard_normal((16, 128)).astype(f32),
        "dy": rng.standard_normal((16, 128)).astype(f32),
        "x_test": rng.standard_normal((4, 128)).astype(f32),
        "x1": rng.standard_normal((16, 128)).astype(f32),
        "x2": rng.standard_normal((16, 128)).astype(f32),
        "dy1": rng.standard_normal((16, 128)).astype(f32),
        "dy2": rng.standard_normal((16, 128)).astype(f32),
        "lr": 0.1,
        # the folding example: a (4, 4) weight and 4 channels of statistics
        "W": rng.standard_normal((4, 4)), "b": rng.standard_normal(4),
        "gamma": rng.uniform(0.5, 2, 4).astype(f32), "beta": rng.standard_normal(4).astype(f32),
        "running_mean": rng.standard_normal(4).astype(f32),
        "running_var": rng.uniform(0.5, 2, 4).astype(f32),
        "rm": np.zeros(4, f32), "rv": np.ones(4, f32), "eps": 1e-5,
        "bn": fastbn.BatchNorm(4),
        # the MPI example: each rank's part of a batch of 4 channels
        "x_local": rng.standard_normal((8, 4)).astype(f32),
        "dy_local": rng.standard_normal((8, 4)).astype(f32),
    }


def blocks():
    found = []
    for doc in DOCUMENTS:
        if not doc.exists():
            continue
        for i, match in enumerate(BLOCK.finditer(doc.read_text(encoding="utf-8"))):
            found.append(pytest.param(match.group(1), id=f"{doc.name}-{i}"))
    return found


CODE_BLOCKS = blocks()


@pytest.mark.skipif(not CODE_BLOCKS, reason="README.md and docs/ are not beside tests/")
@pytest.mark.parametrize("code", CODE_BLOCKS)
def test_documented_example_runs(code, tmp_path, monkeypatch):
    if "mpi4py" in code:
        pytest.importorskip("mpi4py")
    monkeypatch.chdir(tmp_path)  # examples that save files write here
    previous = fastbn.get_num_threads()
    try:
        exec(compile(code, "<example>", "exec"), fixtures())
    finally:
        fastbn.set_num_threads(previous)


def test_readme_has_runnable_examples():
    """The collector finds the README's examples (a broken pattern would skip them all)."""
    readme = ROOT / "README.md"
    if not readme.exists():
        pytest.skip("README.md is not beside tests/")
    assert len(BLOCK.findall(readme.read_text(encoding="utf-8"))) >= 4


def test_version_is_written_once():
    """pyproject.toml takes the version from fastbn.__version__ (no second copy)."""
    if sys.version_info < (3, 11):
        pytest.skip("tomllib needs Python 3.11")
    import tomllib
    pyproject = ROOT / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("pyproject.toml is not beside tests/")
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    assert "version" not in project and "version" in project["dynamic"]
    assert re.fullmatch(r"\d+\.\d+\.\d+([ab]\d+|rc\d+|\.dev\d+)?", fastbn.__version__)
