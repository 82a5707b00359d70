"""Options and shared data for the pytest-benchmark suite in bench/.

    python -m pytest bench/test_bench.py --benchmark-group-by=group
    python -m pytest bench/test_bench.py --bench-quick              # small shapes
    python -m pytest bench/test_bench.py --bench-shapes nchw,nhwc --bench-dtype float32

The shapes are those of ``python -m fastbn bench`` (fastbn._bench), by name
(nc, nchw, nhwc, nchw-small, nc-small) or explicit (256x64, 8x7x7x32:-1).
"""
import numpy as np
import pytest

import fastbn
from fastbn import _bench

# No pytest_benchmark import here: a skip raised while importing a conftest is an
# error, so the test modules skip themselves when the plugin is missing.


def pytest_addoption(parser):
    group = parser.getgroup("fastbn bench")
    group.addoption("--bench-shapes", default=None,
                    help="comma-separated shapes: " + ", ".join(_bench.DEFAULT_SHAPES)
                         + " or explicit such as 256x64 or 8x7x7x32:-1 (default: all named)")
    group.addoption("--bench-quick", action="store_true",
                    help="the small shapes of `python -m fastbn bench --quick`")
    group.addoption("--bench-dtype", choices=["float32", "float64", "both"], default="both",
                    help="data type(s) to benchmark (default both)")
    group.addoption("--bench-threads", type=int, default=None,
                    help="threads for fastbn and torch (default fastbn.get_num_threads())")


def pytest_generate_tests(metafunc):
    """Parametrise the module-scoped `bn_case` fixture over shapes x dtypes, so that
    pytest runs every test of one case before building the next (they are large)."""
    if "bn_case" not in metafunc.fixturenames:
        return
    config = metafunc.config
    try:
        specs = _bench.parse_shapes(config.getoption("--bench-shapes"),
                                    config.getoption("--bench-quick"))
    except ValueError as exc:
        raise pytest.UsageError(str(exc)) from None
    dtype = config.getoption("--bench-dtype")
    dtypes = ["float32", "float64"] if dtype == "both" else [dtype]
    cases = [(name, shape, axis, dt) for name, shape, axis in specs for dt in dtypes]
    metafunc.parametrize("bn_case", cases, indirect=True, scope="module",
                         ids=[f"{name}-{dt}" for name, _, _, dt in cases])


@pytest.fixture(scope="session")
def threads(pytestconfig):
    n = pytestconfig.getoption("--bench-threads")
    previous = fastbn.set_num_threads(n) if n is not None else None
    yield fastbn.get_num_threads()
    if previous is not None:
        fastbn.set_num_threads(previous)


@pytest.fixture(scope="session")
def torch_module(threads):
    """torch with fastbn's thread count, or None when not installed."""
    try:
        import torch
    except ImportError:
        return None
    torch.set_num_threads(threads)
    return torch


class Case:
    """One shape and dtype: the data and, built lazily, each implementation's ops."""

    def __init__(self, name, shape, axis, dtype):
        self.name, self.shape, self.axis = name, tuple(shape), axis
        self.dtype = np.dtype(dtype)
        self.data = _bench.make_data(self.shape, axis, self.dtype)
        self.nbytes = self.data["x"].nbytes
        self.label = f"{'x'.join(map(str, self.shape))} axis={axis} {self.dtype.name}"
        self._ops = {}

    def ops(self, impl, torch=None):
        """{op: callable} for impl 'fastbn' or 'torch' (the faster aten form)."""
        if impl not in self._ops:
            if impl == "fastbn":
                self._ops[impl] = _bench.numpy_ops(fastbn, self.data)
            else:
                self._ops[impl] = {op: _bench.fastest(variants)[1]
                                   for op, variants in _bench.torch_ops(torch, self.data).items()}
        return self._ops[impl]


@pytest.fixture(scope="module")
def bn_case(request, threads):
    name, shape, axis, dtype = request.param
    return Case(name, shape, axis, dtype)
