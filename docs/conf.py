"""Sphinx configuration of the fastbn documentation (``sphinx-build -W -b html docs docs/_build/html``).

Pages are MyST Markdown; most user-guide pages include sections of the README, so
that the two cannot drift apart: each ``## Title`` section of README.md is written to
``generated/readme/<first word of the title, lower case>.md`` at build time, and a page
includes it by that name (a renamed section fails the build). The API reference is generated from the numpydoc
docstrings of the installed (or in-place built) fastbn.
"""
import pathlib
import re

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
exclude_patterns = ["_build", "generated/readme"]  # included, not pages
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


def split_readme(readme, dest):
    """Write each ``## `` section of the README (body only) to dest/<first word>.md,
    with links into docs/ made relative to docs/ (where the including pages are),
    its ``###`` subsections one level up (they follow the including page's title) and
    links to other files of the repository as plain code (they are not pages) and
    links to the page that includes the section as plain text (myst cannot resolve them)."""
    dest.mkdir(parents=True, exist_ok=True)
    text = readme.read_text(encoding="utf-8")
    includers = {m.group(1): page.name for page in dest.parent.parent.glob("*.md")
                 for m in re.finditer(r"\{include\} generated/readme/(\w+)\.md",
                                      page.read_text(encoding="utf-8"))}
    for match in re.finditer(r"^## (.+?)\n(.*?)(?=^## |\Z)", text, re.S | re.M):
        name = re.match(r"[A-Za-z]+", match.group(1)).group(0).lower()
        body = match.group(2).replace("](docs/", "](../../")
        host = includers.get(name)
        if host:  # a link to the including page itself: plain text there
            body = re.sub(r"\[([^\]]+)\]\(\.\./\.\./" + re.escape(host) + r"\)", r"\1", body)
        body = re.sub(r"^### ", "## ", body, flags=re.M)
        body = re.sub(r"\[([^\]]+)\]\(((?:examples|bench|tools|fastbn|src_c|tests)/[^)]*)\)",
                      r"`\1`", body)
        path = dest / f"{name}.md"
        if not path.exists() or path.read_text(encoding="utf-8") != body:
            path.write_text(body, encoding="utf-8")  # unchanged files keep their mtime


HERE = pathlib.Path(__file__).resolve().parent
split_readme(HERE.parent / "README.md", HERE / "generated" / "readme")
