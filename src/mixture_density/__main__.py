"""``python -m mixture_density``: the same as the ``mdn`` command."""

from __future__ import annotations

from .cli import run

if __name__ == "__main__":
    run()
