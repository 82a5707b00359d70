"""Sphinx configuration of the fastbn documentation (``sphinx-build -W -b html docs docs/_build/html``).

Pages are MyST Markdown; most user-guide pages include sections of the README, so
that the two cannot drift apart. The API reference is generated from the numpydoc
docstrings of the installed (or in-place built) fastbn.
"""
import fastbn

project = "fastbn"
author = "the fastbn developers"
copyright = "2026, the fastbn developers"
version = release = fastbn.__version__

extensions = [
    "myst_parser",
    "numpydoc",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_heading_anchors = 3
autosummary_generate = True
numpydoc_show_class_members = False
numpydoc_class_members_toctree = False
# numpydoc's cross-references to types that are plain words ("array", "optional")
numpydoc_xref_param_type = False
# No network at build time: intersphinx inventories are not fetched.
intersphinx_mapping = {}
html_theme = "pydata_sphinx_theme"
html_title = f"fastbn {release}"
html_theme_options = {"navigation_with_keys": False}

# fastbn.distributed imports mpi4py: documented from a mock where it is not installed.
try:
    import mpi4py  # noqa: F401
except ImportError:
    autodoc_mock_imports = ["mpi4py"]
