"""sphinx-gallery hooks for the examples, which save a figure instead of showing it.

Every script in ``examples/`` builds a ``matplotlib.figure.Figure`` without pyplot (the
library never touches pyplot's global state) and writes it to ``--out``. The gallery's
default scraper only sees pyplot figures, so instead the build passes each script an
``--out`` under the build directory (the source tree is never written) and this scraper
moves that file to the gallery's image path after the script ran.

sphinx-gallery imports both functions by their qualified names, so the configuration stays
picklable (Sphinx caches it between builds).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

from sphinx_gallery.scrapers import figure_rst


def _figure_path(gallery_conf: dict[str, Any], src_file: str) -> Path:
    """Where the build asks the example ``src_file`` to save its figure."""
    return Path(gallery_conf["src_dir"], "_build", "gallery-figures", Path(src_file).stem + ".png")


def reset_argv(gallery_conf: dict[str, Any], script_vars: dict[str, Any]) -> list[str]:
    """Command-line arguments of an example: ``--out`` into the build directory."""
    out = _figure_path(gallery_conf, script_vars["src_file"])
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)  # a stale figure from an earlier build must not show
    # Relative to the script's folder (its working directory while it runs): the path is
    # printed on the page ("wrote ..."), where the build machine's layout has no business.
    return ["--out", os.path.relpath(out, Path(script_vars["src_file"]).parent)]


def saved_figure_scraper(
    block: Any, block_vars: dict[str, Any], gallery_conf: dict[str, Any]
) -> str:
    """reST for the figure the example saved, if it saved one in the block just run."""
    saved = _figure_path(gallery_conf, block_vars["src_file"])
    if not saved.is_file():
        return ""
    target = Path(next(block_vars["image_path_iterator"]))
    shutil.move(saved, target)
    return figure_rst([target], gallery_conf["src_dir"])
