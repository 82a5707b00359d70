"""Shared fixtures, hypothesis profiles and array generators for the fastbn tests.

The generators build well-conditioned data (normal values, per-channel offsets)
in every memory layout the kernels must handle: C and Fortran order, strided
slices whose padding is NaN (so a kernel that reads outside the view shows it),
negative strides and transposed views.
"""
import json
import math
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# Every loop large enough to run on threads does, as if its workers were awake: the
# tests' small arrays then reach the threaded paths (fbn_pool_threads, parallel.c;
# tests/test_pool_wake.py checks the default). Set before fastbn's first call, for the
# subprocesses too.
os.environ.setdefault("FASTBN_WAKE_VALUES", "0")

import fastbn
import fastbn.reference


# ---------------------------------------------------------------- streamed outputs

STREAM_L3 = 10 << 20


@pytest.fixture
def streaming_l3():
    """An L3 of 10 MB for the test (fastbn._kernels._set_cache_sizes; restored after):
    a pass's stores are streamed when its inputs and output take more than 3/4 of L3
    (7.5 MB; src_c/plan.c, and more than 4 L2s), so that the outputs of about 16 MB these tests
    write take the streamed paths on any machine, a 105 MB L3 too."""
    if fastbn.backend != "c":
        yield
        return
    import fastbn._kernels as kernels
    kernels._set_cache_sizes(0, 0, STREAM_L3)
    try:
        yield
    finally:
        kernels._set_cache_sizes(0, 0, 0)


# ---------------------------------------------------------------- which fastbn is tested

def _backend_problem():
    """Why the suite must not run (None when it may): the "C vs reference" tests would
    otherwise compare the reference with itself when the extension is missing, or test
    another checkout's build (an editable install maps fastbn._kernels to its own tree)."""
    if os.environ.get("FASTBN_BACKEND", "").lower() == "numpy":
        return None  # the reference was asked for: it is what the suite tests then
    if fastbn.backend != "c":
        return (f"fastbn's compiled backend is missing ({fastbn._fallback_reason}): the "
                "comparisons with the reference would compare it with itself. Build the "
                "extension (`pip install -e .` or `python setup.py build_ext --inplace`), or "
                "set FASTBN_BACKEND=numpy to test the NumPy reference on purpose.")
    import fastbn._kernels as kernels
    here = os.path.realpath(os.path.dirname(fastbn.__file__))
    built = os.path.realpath(os.path.dirname(kernels.__file__))
    if here != built:
        return (f"fastbn is imported from {here} but its compiled extension from {built} "
                "(another checkout's build): build this one with "
                "`python setup.py build_ext --inplace`")
    return None


def pytest_sessionstart(session):
    problem = _backend_problem()
    if problem:
        pytest.exit("fastbn test suite: " + problem, returncode=3)


# ---------------------------------------------------------------- what did not run
# Skipped comparisons with other libraries are listed in one loud line; in CI (CI=true),
# where .ci/run installs them all, a skipped comparison fails the run.

SKIP_GROUPS = {  # group: (words of a skip reason, how to get it)
    "torch": (("torch",), "pip install torch (the PyTorch comparisons)"),
    "MPI": (("mpi4py", "mpiexec", "fastbn.distributed", "fastbn[mpi]"),
            "pip install 'fastbn[mpi]' (mpi4py + MPICH: the distributed tests)"),
    "scikit-learn": (("sklearn",), "pip install 'fastbn[examples]' (the example's run)"),
}
_skipped = {group: [] for group in SKIP_GROUPS}


def _skip_group(reason):
    low = reason.lower()
    for group, (words, _) in SKIP_GROUPS.items():
        if any(w in low for w in words):
            return group
    return None


def pytest_runtest_logreport(report):
    if report.skipped and isinstance(report.longrepr, tuple):
        group = _skip_group(str(report.longrepr[2]))
        if group:
            _skipped[group].append(report.nodeid)


def pytest_collectreport(report):  # a whole module skipped (pytest.importorskip at the top)
    if report.skipped and isinstance(report.longrepr, tuple):
        group = _skip_group(str(report.longrepr[2]))
        if group:
            _skipped[group].append(report.nodeid + " (whole module)")


def _in_ci():
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_sessionfinish(session, exitstatus):
    if _in_ci() and any(_skipped.values()) and session.exitstatus == 0:
        session.exitstatus = 1  # CI promised these comparisons: their absence is a failure


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    missing = {g: ids for g, ids in _skipped.items() if ids}
    if not missing:
        return
    parts = []
    for g, ids in missing.items():
        modules = [i for i in ids if i.endswith("(whole module)")]
        what = f"{len(ids) - len(modules)} tests" + (
            f" + whole modules {', '.join(m.split()[0] for m in modules)}" if modules else "")
        parts.append(f"{g}: {what} (needs {SKIP_GROUPS[g][1]})")
    line = "SKIPPED COMPARISONS -- " + "; ".join(parts)
    if _in_ci():
        line += " -- FAILING the run: CI=true promises them"
    terminalreporter.write_sep("!", "fastbn: comparisons that did NOT run", red=True, bold=True)
    terminalreporter.write_line(line, red=True, bold=True)


settings.register_profile("ci", max_examples=40, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("thorough", max_examples=600, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

MODULES = [fastbn, fastbn.reference]
DTYPES = [np.float32, np.float64]
LAYOUTS = ("C", "F", "strided", "reversed", "transposed", "unaligned")
VECTOR_LAYOUTS = ("C", "strided", "reversed", "unaligned")  # for (C,) parameters and statistics
# Relative tolerances, scaled by the largest magnitude of the expected output.
RTOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
PAD = np.nan  # what surrounds strided views and fills fresh `out` buffers
BLOCK_WORK_C = 4096  # src_c/tuning.h FBN_BLOCK_WORK_C: a forward's per-thread block work from here


@pytest.fixture(scope="session", params=MODULES, ids=lambda m: m.__name__)
def impl(request):
    """The C-backed public module and its NumPy twin: both must honour the contract."""
    return request.param


@pytest.fixture(params=["c", "numpy"])
def layer_backend(request, monkeypatch):
    """The layer on each backend (it calls fastbn._impl, as FASTBN_BACKEND chooses)."""
    if request.param == "c" and fastbn.backend != "c":
        pytest.skip("the compiled extension is not built")
    impl = fastbn._impl if request.param == "c" else fastbn.reference
    monkeypatch.setattr(fastbn, "_impl", impl)
    for name in ("forward", "backward"):
        monkeypatch.setattr(fastbn, name, getattr(impl, name))
    return impl


@pytest.fixture
def restore_threads():
    # set_num_threads returns the raw setting (get_num_threads is capped by OpenMP's limit)
    previous = fastbn.set_num_threads(1)
    yield
    fastbn.set_num_threads(previous)


# ---------------------------------------------------------------- peak memory (issue 13)
# A call's growth of the process's peak resident memory, in a fresh process: the peak
# (VmHWM of /proc/self/status) only rises, and calls keep a cached work block
# (src_c/work.c). The kernels' work memory comes from malloc, which tracemalloc does
# not see; ru_maxrss would keep the pre-exec parent's peak.

def peak_memory_test(test):
    """Marks a test that measures peak memory: skipped without /proc/self/status, and
    under AddressSanitizer."""
    test = pytest.mark.skipif(not os.path.exists("/proc/self/status"),
                              reason="/proc/self/status (VmRSS, VmHWM)")(test)
    return pytest.mark.skipif(bool(os.environ.get("FASTBN_SANITIZED")),
                              reason="ASan's shadow memory and quarantine change RSS "
                                     "(.ci/sanitize)")(test)

PEAK_PROBE = textwrap.dedent("""
    import json, sys
    import numpy as np
    import fastbn
    def status(field):  # VmHWM: this process's peak RSS
        with open("/proc/self/status") as f:
            line = next(l for l in f if l.startswith(field + ":"))
        return int(line.split()[1]) * 1024
    def peak_growth(call):
        \"\"\"(growth of the peak RSS over the RSS before call(), call's result). Nothing
        before it may have raised the peak above the RSS (a temporary freed since would
        hide the growth): allocate the inputs and outputs in place, touched.\"\"\"
        before, peak_before = status("VmRSS"), status("VmHWM")
        assert peak_before <= before + (1 << 20), (peak_before, before)
        result = call()
        return status("VmHWM") - before, result
""")


def run_peak_probe(body, *args, env=None):
    """Runs PEAK_PROBE's helpers and then body (Python source, dedented; its
    sys.argv[1:] are args) in a fresh Python process, with env added to the
    environment; returns the JSON value its last line of output prints."""
    out = subprocess.run([sys.executable, "-c", PEAK_PROBE + textwrap.dedent(body),
                          *map(str, args)], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, **(env or {})))
    assert out.returncode == 0, (out.returncode, out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- comparisons

def assert_close(actual, expected, rtol=None, what="", scale=None):
    """|actual - expected| <= rtol * max|expected| (or rtol * scale, when the values
    are rounded on another scale), with the dtype and shape of expected."""
    expected = np.asarray(expected)
    assert isinstance(actual, np.ndarray), f"{what}: expected an ndarray, got {type(actual)}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    if rtol is None:
        rtol = RTOL[expected.dtype]
    if expected.size == 0:
        return
    assert np.isfinite(actual).all(), f"{what}: non-finite values in {actual}"
    if scale is None:
        scale = float(np.max(np.abs(expected.astype(np.float64))))
    err = float(np.max(np.abs(actual.astype(np.float64) - expected.astype(np.float64))))
    assert err <= rtol * scale, (f"{what}: max abs error {err:.3e} > {rtol:.0e} * {scale:.3e}"
                                 f"\nactual={actual}\nexpected={expected}")


def data_dtypes():
    """The data dtypes: float32, float64, float16 and, with the optional ml_dtypes,
    bfloat16."""
    out = [np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.float16)]
    bf16 = fastbn._checks.bfloat16(load=True)
    return out if bf16 is None else out + [bf16]


def assert_bitwise_equal(a, b, what=""):
    assert a.shape == b.shape and a.dtype == b.dtype, what
    assert np.ascontiguousarray(a).tobytes() == np.ascontiguousarray(b).tobytes(), what


def snapshot(*arrays):
    """Bytes of each array (None kept), to check later that nothing changed."""
    return [None if a is None else (a.shape, a.dtype, np.ascontiguousarray(a).tobytes())
            for a in arrays]


# ---------------------------------------------------------------- memory layouts

def lay_out(values, layout, rng):
    """A new array equal to `values`, laid out in memory as `layout` says."""
    values = np.asarray(values)
    if layout == "C":
        return np.ascontiguousarray(values)
    if layout == "F":
        return np.asfortranarray(values)
    if layout == "strided":
        steps = [int(rng.integers(1, 4)) for _ in values.shape]
        starts = [int(rng.integers(0, 2)) for _ in values.shape]
        big = np.full([st_ + n * sp + 1 for n, sp, st_ in zip(values.shape, steps, starts)],
                      PAD, dtype=values.dtype)
        view = big[tuple(slice(st_, st_ + n * sp, sp)
                         for n, sp, st_ in zip(values.shape, steps, starts))]
        view[...] = values
        return view
    if layout == "reversed":  # negative strides: x[::-1] along the first axis, maybe more
        flip = [0] + [d for d in range(1, values.ndim) if rng.random() < 0.5]
        index = tuple(slice(None, None, -1) if d in flip else slice(None)
                      for d in range(values.ndim))
        return np.ascontiguousarray(values[index])[index]
    if layout == "transposed":  # dense but neither C nor F ordered (for rank >= 3)
        perm = rng.permutation(values.ndim)
        inverse = np.argsort(perm)
        return np.ascontiguousarray(values.transpose(perm)).transpose(inverse)
    if layout == "unaligned":  # C order at an odd byte address (flags.aligned is False)
        raw = np.zeros(values.nbytes + 1, dtype=np.uint8)
        view = raw[1:].view(values.dtype).reshape(values.shape)
        view[...] = values
        return view
    raise ValueError(layout)


def fresh_out(shape, dtype, layout, rng):
    """An `out` buffer full of NaN in the given layout."""
    return lay_out(np.full(shape, PAD, dtype=dtype), layout, rng)


def padding_intact(a):
    """True if every element of a's memory buffer outside the view `a` is still PAD."""
    base = a.base
    if (base is None or not isinstance(base, np.ndarray) or base.size == a.size
            or base.dtype != a.dtype):
        return True
    covered = np.zeros(base.size, dtype=np.uint8)
    offset = (a.__array_interface__["data"][0] - base.__array_interface__["data"][0]) // a.itemsize
    marks = np.lib.stride_tricks.as_strided(
        covered[offset:], shape=a.shape, strides=[s // a.itemsize for s in a.strides])
    marks[...] = 1
    outside = np.ascontiguousarray(base).reshape(-1)[covered == 0]
    return bool(np.isnan(outside).all())


# ---------------------------------------------------------------- strategies

@st.composite
def shapes_and_axes(draw, min_rank=2, max_rank=5, min_count=1, max_size=1500):
    """(shape, axis) with small dims (1 allowed), at least `min_count` values per channel."""
    rank = draw(st.integers(min_rank, max_rank))
    max_dim = {2: 9, 3: 6, 4: 5, 5: 4}.get(rank, 3)
    shape = draw(st.lists(st.integers(1, max_dim), min_size=rank, max_size=rank))
    axis = draw(st.integers(-rank, rank - 1))  # first, middle, last, positive and negative
    channel = axis % rank
    others = [d for d in range(rank) if d != channel]
    count = math.prod(shape[d] for d in others)
    if count < min_count:  # grow one non-channel dimension rather than filter
        d = draw(st.sampled_from(others))
        shape[d] = math.ceil(min_count / (count // shape[d]))
    while math.prod(shape) > max_size:  # shrink the largest dimension that may shrink
        count = math.prod(shape[d] for d in others)
        shrinkable = [d for d in range(rank) if shape[d] > 1 and
                      (d == channel or count // shape[d] * (shape[d] - 1) >= min_count)]
        if not shrinkable:
            break
        shape[max(shrinkable, key=lambda d: shape[d])] -= 1
    return tuple(shape), axis


def channel_values(rng, shape, axis, dtype):
    """Normal data with per-channel offsets and scales: many distinct values per channel."""
    axis = axis % len(shape)
    bshape = [1] * len(shape)
    bshape[axis] = shape[axis]
    loc = rng.normal(0.0, 2.0, bshape)
    scale = rng.uniform(0.5, 2.0, bshape)
    return (loc + scale * rng.standard_normal(shape)).astype(dtype)


def vector(rng, n, dtype, low=0.5, high=2.0, signed=True):
    v = rng.uniform(low, high, n)
    if signed:
        v *= rng.choice([-1.0, 1.0], n)
    return v.astype(dtype)


@dataclass
class Case:
    """One drawn forward/backward configuration; arrays are built from `seed`."""
    shape: tuple
    axis: int
    dtype: type
    affine: str          # "none", "gamma", "beta", "both"
    param_dtype: type
    training: bool
    running: bool        # running statistics given
    running_dtype: type
    momentum: float
    activation: object   # None or "relu"
    x_layout: str
    dy_layout: str
    out_layout: object   # None or a layout
    seed: int
    vector_layout: str = "C"  # of gamma, beta and the running statistics
    eps: float = 1e-5

    @property
    def channels(self):
        return self.shape[self.axis % len(self.shape)]

    def rng(self, salt=0):
        return np.random.default_rng([self.seed, salt])

    def x(self):
        rng = self.rng(1)
        return lay_out(channel_values(rng, self.shape, self.axis, self.dtype), self.x_layout, rng)

    def dy(self):
        rng = self.rng(2)
        return lay_out(rng.standard_normal(self.shape).astype(self.dtype), self.dy_layout, rng)

    def params(self):
        rng = self.rng(3)
        gamma = vector(rng, self.channels, self.param_dtype)
        beta = rng.normal(0.0, 1.0, self.channels).astype(self.param_dtype)
        return (lay_out(gamma, self.vector_layout, rng) if self.affine in ("gamma", "both")
                else None,
                lay_out(beta, self.vector_layout, rng) if self.affine in ("beta", "both")
                else None)

    def running_stats(self):
        if not self.running:
            return None, None
        rng = self.rng(4)
        return (lay_out(rng.normal(0.0, 1.0, self.channels).astype(self.running_dtype),
                        self.vector_layout, rng),
                lay_out(rng.uniform(0.5, 2.0, self.channels).astype(self.running_dtype),
                        self.vector_layout, rng))

    def out(self, salt=5):
        if self.out_layout is None:
            return None
        return fresh_out(self.shape, self.dtype, self.out_layout, self.rng(salt))


@st.composite
def cases(draw, training=None, min_count=None, **shape_kw):
    training = draw(st.booleans()) if training is None else training
    if min_count is None:
        # Training needs m >= 2; m >= 4 keeps backward's projection away from exact
        # cancellation (with m == 2 the training dx is identically zero).
        min_count = 4 if training else 1
    shape, axis = draw(shapes_and_axes(min_count=min_count, **shape_kw))
    running = True if not training else draw(st.booleans())
    return Case(shape=shape, axis=axis,
                dtype=draw(st.sampled_from(DTYPES)),
                affine=draw(st.sampled_from(["none", "gamma", "beta", "both"])),
                param_dtype=draw(st.sampled_from(DTYPES)),
                training=training, running=running,
                running_dtype=draw(st.sampled_from(DTYPES)),
                momentum=draw(st.sampled_from([0.1, 0.0, 1.0, 0.37])),
                activation=draw(st.sampled_from([None, "relu"])),
                x_layout=draw(st.sampled_from(LAYOUTS)),
                dy_layout=draw(st.sampled_from(LAYOUTS)),
                out_layout=draw(st.sampled_from((None,) + LAYOUTS)),
                seed=draw(st.integers(0, 2**32 - 1)),
                vector_layout=draw(st.sampled_from(VECTOR_LAYOUTS)),
                eps=draw(st.sampled_from([1e-5, 1e-3, 0.5])))


def relu_scale(case, pre):
    """The scale y's rounding errors are measured on: ReLU keeps some values of the
    pre-activation gamma * xhat + beta, each rounded on the scale of its terms (a
    small kept value may come out of cancellation), and moves no error beyond them
    (it is 1-Lipschitz); None (max|y|) without ReLU."""
    if case.activation != "relu" or pre.size == 0:
        return None
    return float(np.max(np.abs(pre)))


def pre_activation(case, x, gamma, beta, running_mean=None, running_var=None):
    """gamma * xhat + beta in float64 (for ReLU kink checks), from the case's statistics."""
    axis = case.axis % x.ndim
    xd = x.astype(np.float64)
    others = tuple(d for d in range(x.ndim) if d != axis)
    bshape = [1] * x.ndim
    bshape[axis] = -1
    if case.training:
        mean, var = xd.mean(axis=others), xd.var(axis=others)
    else:
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
    xhat = (xd - mean.reshape(bshape)) / np.sqrt(var.reshape(bshape) + case.eps)
    g = 1.0 if gamma is None else gamma.astype(np.float64).reshape(bshape)
    b = 0.0 if beta is None else beta.astype(np.float64).reshape(bshape)
    return g * xhat + b
