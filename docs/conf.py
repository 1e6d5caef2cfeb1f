"""Sphinx configuration of the mixture-density documentation.

Built by ``make docs`` (warnings are errors). Nothing here reaches the network: the
cross-reference inventories of Python, torch, numpy and scikit-learn are written from
``_ext/offline_inventory.py`` into the build directory, and MathJax is served from
``_static/mathjax``. The gallery runs every script of ``examples/``; with
``MIXTURE_DENSITY_QUICK=1`` the scripts use small settings (CI).
"""

from __future__ import annotations

import os
import re
import shutil
import sys
from pathlib import Path
from typing import ClassVar

import torch
from sphinx import addnodes
from sphinx.transforms.post_transforms import SphinxPostTransform

import mixture_density

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(DOCS / "_ext"))  # the gallery scraper and the inventory writer

import offline_inventory  # noqa: E402

# The gallery and the plot directives fit small models in this process: one thread is fastest
# for them, and the build shares the CPU with other jobs (several threads thrash there).
torch.set_num_threads(1)

project = "mixture-density"
author = "mixture-density developers"
copyright = "mixture-density developers"
release = mixture_density.__version__
version = release

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "myst_parser",
    "sphinx_gallery.gen_gallery",
    "sphinxarg.ext",
    "sphinx_copybutton",
    "matplotlib.sphinxext.plot_directive",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = [
    "_build",
    "_static",
    "_templates",
    "_ext",
    "auto_examples/*.ipynb",
    "auto_examples/*.py",
]
templates_path = ["_templates"]
nitpicky = True

# -- Theme ---------------------------------------------------------------------------------
html_theme = "furo"
html_title = f"mixture-density {release}"
html_static_path = ["_static"]
html_show_sourcelink = False
pygments_style = "sphinx"
pygments_dark_style = "monokai"

# -- Math: MathJax 3 from _static (no CDN) ------------------------------------------------
# tex-svg.js draws glyphs as SVG paths, so no web fonts are fetched: it renders from a
# local copy opened as file://, where browsers refuse font files of other "origins".
mathjax_path = "mathjax/tex-svg.js"

# -- MyST ----------------------------------------------------------------------------------
myst_enable_extensions = ["dollarmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

# -- autodoc, autosummary, napoleon --------------------------------------------------------
autosummary_generate = True
autosummary_imported_members = False
autosummary_ignore_module_all = False  # a module page lists what its __all__ names
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"
autodoc_preserve_defaults = True
autodoc_default_options = {"show-inheritance": True}
# Names of the package namespace: documented there; module pages only link to them.
ROOT_NAMES = [name for name in mixture_density.__all__ if name != "__version__"]
autosummary_context = {"root_names": ROOT_NAMES}
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# -- Cross-references without network access -----------------------------------------------
_INVENTORIES = offline_inventory.write_all(DOCS / "_build" / "inventories")
intersphinx_mapping = {
    name: (base_url, str(path)) for name, (base_url, path) in _INVENTORIES.items()
}
intersphinx_timeout = 1

# -- Copy buttons copy code, not prompts or outputs -----------------------------------------
copybutton_prompt_text = r">>> |\.\.\. |\$ "
copybutton_prompt_is_regexp = True
copybutton_only_copy_prompt_lines = True

# -- matplotlib plot directive (figures of the guide, drawn at build time) -----------------
plot_include_source = False
plot_html_show_source_link = False
plot_html_show_formats = False
plot_formats = [("png", 110)]
plot_rcparams = {"figure.dpi": 110}

# -- sphinx-gallery: every script of examples/ runs at build time -------------------------
QUICK = os.environ.get("MIXTURE_DENSITY_QUICK") == "1"
_GALLERY = DOCS / "auto_examples"
_MODE_STAMP = _GALLERY / ".mode"
# sphinx-gallery reruns a script only when its source changed; a switch between quick and
# full settings must rerun them too, or full pages would show the quick figures.
_mode = "quick" if QUICK else "full"
if _MODE_STAMP.is_file() and _MODE_STAMP.read_text().strip() != _mode:
    shutil.rmtree(_GALLERY)
_GALLERY.mkdir(exist_ok=True)
_MODE_STAMP.write_text(_mode + "\n")

sphinx_gallery_conf = {
    "examples_dirs": str(ROOT / "examples"),
    "gallery_dirs": str(_GALLERY),
    "filename_pattern": r"\.py$",  # run every example, not only plot_*.py
    "ignore_pattern": r"__init__\.py",
    # The examples save a matplotlib Figure (no pyplot) to --out; the scraper shows it.
    "reset_argv": "gallery_figures.reset_argv",
    "image_scrapers": ("gallery_figures.saved_figure_scraper",),
    "within_subsection_order": "FileNameSortKey",
    "download_all_examples": False,
    "remove_config_comments": True,
    "show_memory": False,
    "abort_on_example_error": True,
    "capture_repr": (),
    "min_reported_time": 1,
    "write_computation_times": False,  # sg_execution_times.rst would land in docs/
}


# Private names that signatures show and that have no page of their own. References into
# private modules (``mixture_density._search``...) render as code without a link.
nitpick_ignore = [
    ("py:class", "mixture_density._transforms.T"),  # the TypeVar of "returns the same class"
    ("py:class", "ChunkTransform"),  # CSVChunkDataset's transform; its docstring says what
    ("py:class", "Reduction"),  # metrics' Literal["mean", "sum", "none"], in the signatures
    ("py:exc", "MixtureDensityError"),  # the package exception (of a private module)
]
nitpick_ignore_regex = [(r"py:.*", r"mixture_density\.(\w+\.)*_\w+(\..*)?")]


# -- Docstrings: the package's Google-style text as reStructuredText -----------------------
# Docstrings write shapes as torch does, "(*batch, K, D)". In reST a "*" before a word opens
# emphasis, so outside literals and code such a star is escaped; "*word*" (emphasis) and
# "**" are left alone.
_SHAPE_STAR = re.compile(r"(?<![\w*\\])\*(?=[A-Za-z_]\w*(?![\w*]))")
_LITERAL = re.compile(r"(``.*?``|:\w+:`[^`]*`|`[^`]*`_?)")


def _escape_shape_stars(line: str) -> str:
    parts = _LITERAL.split(line)  # odd items are literals, kept as they are
    return "".join(p if i % 2 else _SHAPE_STAR.sub(r"\\*", p) for i, p in enumerate(parts))


def _process_docstring(app, what, name, obj, options, lines: list[str]) -> None:
    block_indent = None  # set inside a literal block ("::") or a directive's body
    for i, line in enumerate(lines):
        stripped = line.lstrip()
        indent = len(line) - len(stripped)
        if block_indent is not None:
            if not stripped or indent > block_indent:
                continue
            block_indent = None
        if stripped.startswith((">>>", "...")):  # doctests are code
            continue
        if stripped.startswith(".. "):
            block_indent = indent
            continue
        if stripped.endswith("::"):
            block_indent = indent
        lines[i] = _escape_shape_stars(line)


def _skip_member(app, what, name, obj, skip, options):
    # Class pages show inherited members too (GaussianMixture's marginal, condition...),
    # but only those defined in this package: what a class inherits from torch,
    # scikit-learn (set_fit_request & co.) or str is documented by those projects.
    if what != "class":
        return None
    owner = obj
    for attribute in ("fget", "func", "__func__"):  # property, cached_property, classmethod
        owner = getattr(owner, attribute, owner)
    module = getattr(owner, "__module__", None)
    if module is None:  # methods of built-in types
        module = getattr(getattr(owner, "__objclass__", None), "__module__", None)
    if isinstance(module, str) and module.split(".")[0] != "mixture_density":
        return True
    return None


def _public_bases(app, name, obj, options, bases: list) -> None:
    # "Bases: MixtureTransforms" would name a private class: show its bases instead.
    # "Bases: object" says nothing: no line at all.
    if bases == [object]:
        bases.clear()
        return
    i = 0
    while i < len(bases):
        base = bases[i]
        module = getattr(base, "__module__", "")
        if module.startswith("mixture_density.") and any(
            part.startswith("_") for part in module.split(".")[1:]
        ):
            bases[i : i + 1] = list(base.__bases__)
        else:
            i += 1


def _package_relative(app, env, node, contnode):
    """Resolve the names that docstrings write relative to the package.

    ``GaussianMixture.sample`` and ``metrics.mixture_cdf`` mean ``mixture_density.<name>``;
    ``mixture_density.training.fit`` is documented where the package exports it,
    ``mixture_density.fit`` (classes get that alias from autodoc, functions do not).
    """
    if node.get("refdomain") != "py":
        return None
    parts = node["reftarget"].lstrip("~.").split(".")
    if parts[0] == "mixture_density":
        parts = parts[1:]
    candidates = []
    if len(parts) > 1 and parts[1] in ROOT_NAMES and _is_public_module(parts[0]):
        candidates.append(parts[1:])  # mixture_density.training.fit -> mixture_density.fit
    if parts and (parts[0] in ROOT_NAMES or _is_public_module(parts[0])):
        candidates.append(parts)
    for candidate in candidates:
        target = ".".join(["mixture_density", *candidate])
        found = env.domains["py"].resolve_xref(
            env, node["refdoc"], app.builder, node["reftype"], target, node, contnode
        )
        if found is not None:
            return found
    return None


def _is_public_module(name: str) -> bool:
    return not name.startswith("_") and (ROOT / "src" / "mixture_density" / f"{name}.py").is_file()


class _IncludedFileLinks(SphinxPostTransform):
    """Markdown links to repository files that a page includes lead to that page.

    ``[...](../benchmarks/RESULTS.md)`` works on GitHub; on the site RESULTS.md is the
    Benchmarks page, so MyST would find no document there.
    """

    default_priority = 5  # before MyST resolves its links (9)
    included: ClassVar[dict[str, str]] = {str(ROOT / "benchmarks" / "RESULTS"): "benchmarks"}

    def run(self, **kwargs) -> None:
        for node in self.document.findall(addnodes.pending_xref):
            if node.get("reftype") == "myst" and node.get("refdomain") == "doc":
                node["reftarget"] = self.included.get(node["reftarget"], node["reftarget"])


def setup(app) -> None:
    app.add_post_transform(_IncludedFileLinks)
    app.connect("autodoc-process-docstring", _process_docstring)
    app.connect("autodoc-skip-member", _skip_member)
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("missing-reference", _package_relative)
