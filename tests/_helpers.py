"""Helpers shared by the test modules (not a test module itself)."""

from __future__ import annotations

import csv
from pathlib import Path


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    """Write ``header`` and ``rows`` to ``path`` as CSV; return ``path``."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path
