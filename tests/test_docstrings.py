"""Docstrings of the public API: present, complete, one text for both backends, and
their Examples run.

(a) Every Examples section of every public object runs as a doctest, once with the
    C kernels (when built) and once with the NumPy reference swapped in as
    ``FASTBN_BACKEND=numpy`` would (the layer and SyncBN look fastbn's functions up
    at call time, so they follow), with NumPy's print options fixed.
(b) Every public function, class and method has a numpydoc docstring: a one-line
    summary, Parameters naming every argument, Returns when it returns a value, and
    Examples.
(c) fastbn._core and fastbn.reference carry the same text, from fastbn/_docs.py, and
    fastbn.reference says it is the specification.
"""
import ast
import doctest
import inspect
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import fastbn
import fastbn.reference as reference
from fastbn import _docs
from fastbn.layers import BatchNorm

try:
    from fastbn import _core as core
except ImportError:  # the extension is not built: only the reference is tested
    core = None

try:
    from fastbn import distributed
except ImportError:  # no mpi4py (or no MPI library): its examples are skipped
    distributed = None

FUNCTIONS = list(_docs.FUNCTION_DOCS)  # the functions both backends define

# NumPy's default print options, all of them, so that no other test's setting leaks
# into the expected outputs.
PRINT_OPTIONS = dict(precision=8, threshold=1000, edgeitems=3, linewidth=75, suppress=False,
                     nanstr="nan", infstr="inf", sign="-", floatmode="maxprec", legacy=False)

# Classes users receive but do not build: no constructor Parameters or Examples needed.
NOT_BUILT_BY_USERS = {"Cache", "SyncCache", "PeerError", "MismatchError"}


def _public_objects():
    """{qualified name: object} of the public functions and classes (methods apart)."""
    objects = {}
    for name in fastbn.__all__:
        obj = getattr(fastbn, name)
        if inspect.isroutine(obj) or inspect.isclass(obj):  # not `backend` or `reference`
            objects[f"fastbn.{name}"] = obj
    for name in FUNCTIONS:
        objects[f"fastbn.reference.{name}"] = getattr(reference, name)
    if distributed is not None:
        for name in distributed.__all__:
            obj = getattr(distributed, name)
            if inspect.isroutine(obj) or inspect.isclass(obj):  # not the HEADER tuple
                objects[f"fastbn.distributed.{name}"] = obj
    return objects


def _own_parts(cls):
    """`cls` and the mixins of fastbn's private modules it is made of (BatchNorm's
    fastbn._layer_* parts), up to the first public base (SyncBatchNorm's BatchNorm)."""
    parts = [cls]
    for base in cls.__mro__[1:]:
        if not base.__module__.startswith("fastbn._"):
            break
        parts.append(base)
    return parts


def _public_methods(cls):
    """{name: function} of the public methods and properties defined in `cls` itself
    (or in its private parts, `_own_parts`)."""
    methods = {}
    for name, value in [item for part in reversed(_own_parts(cls))
                        for item in vars(part).items()]:
        if name.startswith("_"):
            continue
        if isinstance(value, (classmethod, staticmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            methods[name] = value
    return methods


def _documented():
    """(qualified name, object) of everything that must carry a full docstring."""
    items = list(_public_objects().items())
    classes = [BatchNorm] + ([distributed.SyncBatchNorm] if distributed is not None else [])
    for cls in classes:
        for name, method in _public_methods(cls).items():
            items.append((f"{cls.__module__}.{cls.__name__}.{name}", method))
    return items


# ------------------------------------------------------------------ (a) the examples

def _doctests():
    """{name: DocTest}, built afresh (a DocTest's globals are cleared after it runs)."""
    source = Path(_docs.__file__).read_text()
    parser, finder = doctest.DocTestParser(), doctest.DocTestFinder(exclude_empty=True)
    tests = {}
    for name, text in _docs.FUNCTION_DOCS.items():  # run once per backend, not per module
        at = source.find(text)  # for the line numbers of failures
        lineno = source[:at].count("\n") if at >= 0 else None
        tests[f"fastbn.{name}"] = parser.get_doctest(text, {}, f"fastbn.{name}", _docs.__file__,
                                                     lineno)
    for qualname, obj in _public_objects().items():
        if qualname.startswith("fastbn.reference.") or qualname.split(".")[-1] in FUNCTIONS:
            continue
        parts = _own_parts(obj) if inspect.isclass(obj) else [obj]
        for part in parts:  # a mixin's methods under the class's name
            for test in finder.find(part, qualname, module=inspect.getmodule(part), globs={}):
                if test.examples:
                    tests.setdefault(test.name, test)
    return tests


DOCTEST_NAMES = sorted(_doctests())
if distributed is None:
    DOCTEST_NAMES.append(pytest.param("fastbn.distributed", marks=pytest.mark.skip(
        reason="fastbn.distributed needs mpi4py and an MPI library")))


@pytest.fixture(params=["c", "numpy"])
def backend(request, monkeypatch):
    """fastbn's public functions taken from one backend, as fastbn/__init__.py does."""
    if request.param == "c" and core is None:
        pytest.skip("the compiled extension is not built")
    impl = core if request.param == "c" else reference
    for name in FUNCTIONS:
        monkeypatch.setattr(fastbn, name, getattr(impl, name))
    monkeypatch.setattr(fastbn, "backend", request.param)
    return impl


@pytest.mark.parametrize("name", DOCTEST_NAMES)
def test_examples_run(name, backend):
    test = _doctests()[name]
    assert test.examples, f"{name}: no examples found"
    report = []
    runner = doctest.DocTestRunner(optionflags=doctest.NORMALIZE_WHITESPACE)
    with np.printoptions(**PRINT_OPTIONS):
        result = runner.run(test, out=report.append)
    assert result.failed == 0, f"{name} ({fastbn.backend} backend):\n" + "".join(report)
    assert result.attempted == len(test.examples)


def test_the_backend_fixture_swaps_the_functions(backend):
    """The doctests above exercise the backend they claim to."""
    assert fastbn.forward is backend.forward and fastbn.backward is backend.backward


# ------------------------------------------------------------------ (b) completeness

def _sections(doc):
    """{section title: its text} of a numpydoc docstring (titles underlined with -)."""
    lines = inspect.cleandoc(doc).splitlines()
    sections, title = {}, None
    for i, line in enumerate(lines):
        nxt = (lines[i + 1] if i + 1 < len(lines) else "").strip()
        if line.strip() and re.fullmatch(r"-{3,}", nxt) and len(nxt) == len(line.strip()):
            title = line.strip()
            sections[title] = []
        elif title is not None and not re.fullmatch(r"-{3,}", line.strip()):
            sections[title].append(line)
    return {k: "\n".join(v) for k, v in sections.items()}


def _documented_parameters(text):
    """Names listed in a Parameters section: 'a : type', 'a, b : type' or 'a, b' lines
    at the section's indentation."""
    names = set()
    for line in text.splitlines():
        if line and not line[0].isspace():
            for part in line.split(" : ")[0].split(","):
                names.add(part.strip().lstrip("*"))
    return names


def _signature_parameters(obj):
    """The arguments a user passes (no self/cls)."""
    target = obj.__init__ if inspect.isclass(obj) else obj
    params = list(inspect.signature(target).parameters.values())
    if inspect.isclass(obj) or (params and params[0].name in ("self", "cls")):
        params = params[1:]
    return [p.name for p in params]


def _returns_a_value(func):
    """Whether `func`'s own body has a `return <value>` (nested functions apart).
    Compiled code is judged by its NumPy twin, else assumed to return a value."""
    try:
        source = inspect.getsource(func)
    except (OSError, TypeError):
        twin = getattr(reference, getattr(func, "__name__", ""), None)
        return _returns_a_value(twin) if inspect.isfunction(twin) else True
    tree = ast.parse(textwrap.dedent(source))
    body = tree.body[0]

    def visit(node):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda,
                                  ast.ClassDef)):
                continue
            if isinstance(child, ast.Return) and child.value is not None \
                    and not (isinstance(child.value, ast.Constant) and child.value.value is None):
                return True
            if visit(child):
                return True
        return False
    return visit(body)


DOCUMENTED = _documented()


@pytest.mark.parametrize("name, obj", DOCUMENTED, ids=[n for n, _ in DOCUMENTED])
def test_numpydoc_sections(name, obj):
    doc = obj.__doc__
    assert doc and doc.strip(), f"{name} has no docstring"
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    assert "\n" not in paragraphs[0], f"{name}: the summary is not one line: {paragraphs[0]!r}"
    sections = _sections(doc)
    if isinstance(obj, property):
        return  # an attribute: its one-line summary is enough
    short = name.split(".")[-1]
    if inspect.isclass(obj) and short in NOT_BUILT_BY_USERS:
        if not issubclass(obj, Exception):
            assert "Attributes" in sections, f"{name}: no Attributes section"
        return
    params = _signature_parameters(obj)
    if params:
        assert "Parameters" in sections, f"{name}: no Parameters section"
        missing = set(params) - _documented_parameters(sections["Parameters"])
        assert not missing, f"{name}: Parameters does not describe {sorted(missing)}"
    if not inspect.isclass(obj) and _returns_a_value(obj):
        assert "Returns" in sections, f"{name}: returns a value but has no Returns section"
    assert "Examples" in sections and ">>>" in sections["Examples"], f"{name}: no Examples"


def test_every_public_name_is_checked():
    """fastbn.__all__: every callable has a docstring checked above; the others are the
    backend name and the reference module."""
    checked = {n for n, _ in DOCUMENTED}
    for name in fastbn.__all__:
        obj = getattr(fastbn, name)
        if callable(obj):
            assert f"fastbn.{name}" in checked, name
        else:
            assert name in ("backend", "reference"), name
    assert {"fastbn.layers.BatchNorm.forward", "fastbn.layers.BatchNorm.backward",
            "fastbn.layers.BatchNorm.train", "fastbn.layers.BatchNorm.eval"} <= checked


# ------------------------------------------------------------------ (c) one text

@pytest.mark.parametrize("name", FUNCTIONS)
def test_both_backends_carry_the_same_text(name):
    text = _docs.FUNCTION_DOCS[name]
    assert getattr(reference, name).__doc__ == text
    if core is not None:
        assert getattr(core, name).__doc__ == text
    assert getattr(fastbn, name).__doc__ == text


def test_every_backend_function_has_its_text():
    """A public function added to a backend gets a text in fastbn/_docs.py."""
    defined = {n for n, f in vars(reference).items() if inspect.isfunction(f)
               and not n.startswith("_") and f.__module__ == reference.__name__}
    assert defined == set(FUNCTIONS)
    if core is not None:
        assert set(core.__all__) == set(FUNCTIONS)


def test_reference_says_it_is_the_specification():
    assert "specification" in reference.__doc__


def _package_root():
    """PYTHONPATH for subprocesses: the fastbn this process imported."""
    root = str(Path(fastbn.__file__).resolve().parent.parent)
    return os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p])


@pytest.mark.parametrize("env_backend", ["", "numpy"])
def test_help_shows_the_text(env_backend):
    """help(fastbn.forward) and help(fastbn.backward) as a user runs them, with the
    backend chosen at import."""
    code = "import fastbn; help(fastbn.forward); help(fastbn.backward); print(fastbn.backend)"
    env = dict(os.environ, FASTBN_BACKEND=env_backend, PYTHONPATH=_package_root(), PAGER="cat")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("Parameters\n    ----------") == 2, res.stdout[:2000]
    assert "weight of the *new* batch" in res.stdout.lower()
    assert "momentum = 1 - their_momentum" in res.stdout
    if env_backend == "numpy":
        assert res.stdout.rstrip().endswith("numpy")
