"""The package's shape: imports point down, public torch APIs only, sizes that read in one sitting,
and optional dependencies imported only when used (docs/architecture.md)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mixture_density"
MODULES = sorted(SRC.glob("*.py"))
MAX_MODULE_LINES = 600
MAX_CLASS_LINES = 400
# torch._C and friends are how torch exposes public types; anything else under torch._ is private.
PRIVATE_TORCH = re.compile(r"\btorch\._(?!C\b)[A-Za-z]\w*|modules\.activation\.__all__")


def _internal_imports(path: Path) -> set[str]:
    """Modules of the package that ``path`` imports (relative imports, any depth)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level >= 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level >= 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("mixture_density."):
                found.add(node.module.split(".")[1])
    return {name for name in found if (SRC / f"{name}.py").exists()} - {"__init__"}


def test_no_import_cycles() -> None:
    graph = {p.stem: _internal_imports(p) for p in MODULES if p.stem != "__init__"}

    def reaches(start: str, goal: str) -> bool:
        seen, todo = set(), [start]
        while todo:
            for nxt in graph.get(todo.pop(), ()):
                if nxt == goal:
                    return True
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return False

    cycles = sorted({tuple(sorted((a, b))) for a in graph for b in graph[a] if reaches(b, a)})
    assert cycles == []


def test_public_torch_apis_only() -> None:
    uses = [
        f"{p.name}:{i}"
        for p in MODULES
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if PRIVATE_TORCH.search(line.split("#", 1)[0])
    ]
    assert uses == []


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.name)
def test_module_and_class_sizes(path: Path) -> None:
    text = path.read_text()
    assert len(text.splitlines()) <= MAX_MODULE_LINES
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ClassDef):
            assert node.end_lineno is not None
            assert node.end_lineno - node.lineno + 1 <= MAX_CLASS_LINES, node.name


def test_import_leaves_optional_dependencies_alone() -> None:
    code = (
        "import sys, mixture_density; "
        "print(sorted(m for m in ('sklearn', 'matplotlib', 'pandas', 'onnx', 'onnxruntime') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
