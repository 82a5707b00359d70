"""The command line: `python -m fastbn info` and a smoke run of
`python -m fastbn bench` on tiny shapes (no timing is checked)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import fastbn
from fastbn import _bench

TINY = "16x8,2x4x3x3,2x3x3x4:-1"


def run_cli(*args, timeout=300):
    """`python -m fastbn *args` in a subprocess importing this very fastbn."""
    env = dict(os.environ)
    root = str(Path(fastbn.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    return subprocess.run([sys.executable, "-m", "fastbn", *args], capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_info_prints_the_configuration():
    proc = run_cli("info")
    assert proc.returncode == 0, proc.stderr
    assert f"fastbn {fastbn.__version__}" in proc.stdout
    for field in ("backend:", "openmp:", "threads:", "simd:"):
        assert field in proc.stdout


def test_bench_quick_prints_a_table(tmp_path):
    out = tmp_path / "bench.json"
    proc = run_cli("bench", "--quick", "--no-reference", "--shapes", TINY, "--repeat", "2",
                   "--json", str(out))
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    assert "copy: np.copyto" in text and "GB/s" in text
    assert text.count(_bench.HEADER) == 3  # one table per shape
    for op in _bench.OPS:
        assert text.count(f"\n{op} ") == 3, op  # one row per shape
    for label in ("16x8 axis=1", "2x4x3x3 axis=1", "2x3x3x4 axis=-1"):
        assert label in text
    results = json.loads(out.read_text())["results"]
    assert len(results) == 9
    for r in results:
        assert r["fastbn_s"] > 0 and r["bytes"] > 0 and "reference_s" not in r


def test_bench_reference_and_float64():
    proc = run_cli("bench", "--quick", "--no-torch", "--shapes", "16x8", "--dtype", "float64",
                   "--repeat", "2", "--ops", "backward")
    assert proc.returncode == 0, proc.stderr
    assert "16x8 axis=1 float64" in proc.stdout
    row = next(line for line in proc.stdout.splitlines() if line.startswith("backward "))
    assert row.split()[-1].endswith("x")  # the speed-up over the reference is filled in


@pytest.mark.parametrize("args", [["--shapes", "banana"], ["--shapes", "8"], ["--ops", "sideways"],
                                  ["--threads", "0"], ["--shapes", "1x8"]])
def test_bench_rejects_bad_arguments(args):
    proc = run_cli("bench", "--quick", "--no-torch", *args)
    assert proc.returncode == 2
    assert proc.stderr.strip()


def test_no_subcommand_is_a_usage_error():
    proc = run_cli()
    assert proc.returncode == 2 and "usage" in proc.stderr


@pytest.mark.parametrize("module", [fastbn, fastbn.reference], ids=["fastbn", "reference"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_numpy_ops_keep_running_statistics_as_the_layer_does(module, dtype):
    """float32 running statistics for half-precision data (the data's dtype otherwise),
    updated by the timed forward; every op runs."""
    d = _bench.make_data((16, 3, 2), 1, dtype)
    ops = _bench.numpy_ops(module, d)
    fn = ops["forward-train"]
    cells = {n: c.cell_contents for n, c in zip(fn.__code__.co_freevars, fn.__closure__)}
    want = np.float32 if dtype == np.float16 else dtype
    assert cells["rm"].dtype == want and cells["rv"].dtype == want
    before = cells["rm"].copy()
    for op in _bench.OPS:
        ops[op]()
    assert not np.array_equal(cells["rm"], before)


def test_parse_shapes():
    assert _bench.parse_shapes("nhwc", quick=False) == [("nhwc", (64, 56, 56, 64), -1)]
    assert _bench.parse_shapes("8x7x7x32:-1,64X4", quick=True) == [
        ("8x7x7x32:-1", (8, 7, 7, 32), -1), ("64X4", (64, 4), 1)]
    assert [s[0] for s in _bench.parse_shapes(None, quick=True)] == list(_bench.QUICK_SHAPES)


def test_plot_without_matplotlib_or_with_it(tmp_path):
    png = tmp_path / "sweep.png"
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        proc = run_cli("bench", "--quick", "--plot", str(png))
        assert proc.returncode == 2 and "matplotlib" in proc.stderr
        return
    proc = run_cli("bench", "--quick", "--no-reference", "--no-torch", "--shapes", "16x8",
                   "--ops", "inference", "--repeat", "1", "--plot", str(png))
    assert proc.returncode == 0, proc.stderr
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_small_prints_the_readme_table_and_its_summary():
    """`bench --small` gives what the README's small-shape table needs: per shape the
    forward, backward, eval and train times, against NumPy (and PyTorch when installed),
    then the fixed cost and the lowest ratios."""
    import io
    from fastbn._bench_small import SMALL_SHAPES, run_small
    out = io.StringIO()
    rows = run_small([np.float64], [1], 1, False, out)
    text = out.getvalue()
    assert {(r["shape"], r["op"]) for r in rows} == {
        (s, op) for s in SMALL_SHAPES for op in ("forward", "backward", "train", "eval")}
    assert "fixed cost" in text and "float64: forward" in text and "the bound" in text
    assert "lowest ratio numpy / fastbn" in text


def test_bench_small_times_half_precision_data_with_float32_parameters():
    """`bench --small --dtype half`: float16 (and bfloat16 with ml_dtypes) data, with
    float32 parameters and running statistics as the layer makes them; PyTorch's rows
    take bfloat16 through float32 (torch.from_numpy does not)."""
    import io
    from fastbn._bench import bench_dtypes
    from fastbn._bench_small import _candidates, run_small
    out = io.StringIO()
    rows = run_small([np.float16], [1], 1, False, out)
    assert {r["dtype"] for r in rows} == {"float16"} and "float16: forward" in out.getvalue()
    torch = pytest.importorskip("torch")
    half = "half" if fastbn._checks.bfloat16(load=True) is not None else "float16"
    for dtype in bench_dtypes(half, small=True):
        for impls in _candidates((4, 5), dtype, torch).values():
            for fn in impls.values():
                fn()


def test_bench_half_dtypes_need_small():
    proc = run_cli("bench", "--quick", "--no-torch", "--dtype", "float16")
    assert proc.returncode == 2 and "--small only" in proc.stderr
