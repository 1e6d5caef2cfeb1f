"""The guide's examples run as written (``>>>`` lines of docs/**/*.md), so the guide stays true.

Each page is one doctest with one namespace, as a reader runs it from the top. Markdown fence
lines are blanked first: a doctest's expected output ends at a blank line, and the closing
fence would otherwise be read as output. Blanking keeps the line numbers of failures.
"""

from __future__ import annotations

import doctest
import importlib.util
import re
from pathlib import Path

import pytest

DOCS = Path(__file__).resolve().parents[1] / "docs"
GENERATED = {"_build", "auto_examples", "generated"}  # written by the docs build
PAGES = sorted(
    page
    for page in DOCS.rglob("*.md")
    if not GENERATED & set(page.relative_to(DOCS).parts) and ">>> " in page.read_text("utf-8")
)
FENCE = re.compile(r"^\s*(```|:::).*$", flags=re.M)


def test_guide_has_doctests() -> None:
    assert len(PAGES) >= 5, [page.name for page in PAGES]


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(DOCS)) for p in PAGES])
def test_guide_page(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples may write files (model.pt, model.onnx)
    text = page.read_text("utf-8")
    if "onnx" in text and any(
        importlib.util.find_spec(m) is None for m in ("onnx", "onnxscript", "onnxruntime")
    ):
        pytest.skip("the ONNX examples need the extra onnx")
    name = str(page.relative_to(DOCS))
    test = doctest.DocTestParser().get_doctest(FENCE.sub("", text), {}, name, str(page), 0)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    report: list[str] = []
    result = runner.run(test, out=report.append)
    if result.failed:
        pytest.fail("".join(report), pytrace=False)
