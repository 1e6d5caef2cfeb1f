"""The README's Python examples run as written (so the README stays true)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)


def test_readme_has_python_examples() -> None:
    assert len(BLOCKS) >= 1  # the README is an overview; the guide's examples: test_docs.py


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_readme_example_runs(index: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)  # examples may write files (model.pt)
    if "onnx" in BLOCKS[index]:  # the ONNX examples need the extra onnx
        for module in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(module)
    exec(compile(BLOCKS[index], f"README.md[python block {index}]", "exec"), {})
