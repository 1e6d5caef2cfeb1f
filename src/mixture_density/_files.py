"""Output files: the one atomic writer, and the checks before expensive work (private).

Every file the library writes (model files, training checkpoints, CSV predictions, figures)
goes through :func:`atomic_path`: it is written to a temporary file next to its destination,
flushed to disk and renamed over the destination only when complete, so a crash of the
process or of the machine leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ._errors import MixtureDensityError

__all__ = ["atomic_path", "check_output_path", "save_figure"]


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only on success.

    Write the file at the yielded path (by name: ``torch.save``, ``savefig``, ``open``). When
    the block ends without an exception, the file is flushed to disk (``fsync``) and renamed
    onto ``path`` with :func:`os.replace` (atomic: the temporary file is in the same
    directory), and the directory entry is flushed too where the platform allows it. On an
    exception, ``KeyboardInterrupt`` included, the temporary file is removed and ``path`` is
    left untouched. The temporary file keeps the suffix of ``path``, so writers that infer a
    format from it (``matplotlib.savefig``, safetensors) still do.

    Example:
        >>> import tempfile, pathlib
        >>> target = pathlib.Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text()
        'done'
        >>> try:
        ...     with atomic_path(target) as tmp:
        ...         _ = tmp.write_text("half")
        ...         raise RuntimeError("failed midway")
        ... except RuntimeError:
        ...     pass
        >>> target.read_text(), sorted(p.name for p in target.parent.iterdir())
        ('done', ['out.txt'])
    """
    path = Path(path)
    # Not tempfile.mkstemp: it creates mode 0600 files, and the result should get the usual
    # permissions (0666 minus the umask), as if written in place. "x" refuses to clobber.
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}"
    open(tmp, "xb").close()
    try:
        yield tmp
        # The rename must not reach the disk before the data: after a power loss the
        # destination would name an empty file. "r+b": Windows flushes writable handles only.
        with open(tmp, "r+b") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Flush a directory's entries (the rename) to disk; a no-op where that is unsupported."""
    flags = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
    try:
        fd = os.open(directory, flags)
    except OSError:  # Windows cannot open a directory
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on directories
        pass
    finally:
        os.close(fd)


def check_output_path(path: str | None) -> None:
    """Fail before any expensive work if ``path`` cannot be created (``None``: stdout).

    Raises:
        MixtureDensityError: the directory of ``path`` does not exist, or ``path`` is one.

    Example:
        >>> check_output_path("/no/such/dir/out.csv")
        Traceback (most recent call last):
        ...
        mixture_density._errors.MixtureDensityError: cannot write /no/such/dir/out.csv: directory '/no/such/dir' does not exist
    """  # noqa: E501
    if path is None:
        return
    parent = Path(path).parent
    if not parent.is_dir():
        raise MixtureDensityError(f"cannot write {path}: directory {str(parent)!r} does not exist")
    if Path(path).is_dir():
        raise MixtureDensityError(f"cannot write {path}: it is a directory")


def save_figure(fig: Any, path: str) -> None:
    """Write a matplotlib ``Figure`` atomically, in the format its suffix names (default png)."""
    suffix = Path(path).suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix, dpi=120, bbox_inches="tight")
