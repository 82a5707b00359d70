"""pytest-benchmark suite: fastbn against PyTorch (when installed), per op,
shape and dtype; fastbn and torch share a group so they sit side by side.

    python -m pytest bench/test_bench.py --benchmark-group-by=group
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python -m pytest bench/test_bench.py \
        --benchmark-group-by=group --benchmark-json=bench/results/bench.json

extra_info of every benchmark holds the bytes moved (forward-train and
inference 2 * x.nbytes, backward 3 * x.nbytes) and the GB/s of the median
(saved with --benchmark-json). fastbn writes into preallocated out= buffers;
torch runs aten.native_batch_norm[_backward] (the faster of its out= and
allocating forms). No timing is asserted. See `python -m fastbn bench` for the
interleaved comparison with the copy bandwidth and the NumPy reference.
"""
import pytest

pytest.importorskip("pytest_benchmark")

import fastbn  # noqa: E402
from fastbn import _bench  # noqa: E402


@pytest.mark.parametrize("impl", ["fastbn", "torch"])
@pytest.mark.parametrize("op", list(_bench.OPS))
def test_op(benchmark, bn_case, op, impl, torch_module, threads):
    case = bn_case
    if impl == "torch" and torch_module is None:
        pytest.skip("torch is not installed")
    fn = case.ops(impl, torch_module)[op]
    moved = _bench.BYTES_PER_ELEMENT_PASS[op] * case.nbytes
    benchmark.group = f"{op} {case.label}"
    benchmark.extra_info.update(impl=impl, op=op, shape=list(case.shape), axis=case.axis,
                                dtype=case.dtype.name, bytes=moved, threads=threads,
                                backend=fastbn.backend if impl == "fastbn" else "torch")
    benchmark(fn)
    if benchmark.stats is not None:  # None under --benchmark-disable
        benchmark.extra_info["GBps"] = round(moved / benchmark.stats.stats.median / 1e9, 3)
