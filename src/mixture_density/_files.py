"""Output files: the one atomic writer, and the checks before expensive work (private).

Every file the library writes (model files, training checkpoints, CSV predictions, figures)
goes through :func:`atomic_path`: it is written to a temporary file next to its destination,
flushed to disk and renamed over the destination only when complete, so a crash of the
process or of the machine leaves either the old file or the new one, never half of one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ._errors import MixtureDensityError

__all__ = [
    "MODEL_SUFFIXES",
    "TABLE_SUFFIXES",
    "atomic_path",
    "check_output_path",
    "figure_suffixes",
    "save_figure",
]


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

    Replacing an existing file keeps its permission bits; a file without write permission
    is refused (``PermissionError``), as an editor would refuse it. A symbolic link is
    written through: the file it points to is replaced and the link stays.

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
    path = Path(os.path.realpath(path))  # through symbolic links, to the file they name
    mode = _replaced_mode(path)
    # Not tempfile.mkstemp: it creates mode 0600 files, and a new file should get the usual
    # permissions (0666 minus the umask), as if written in place. "x" refuses to clobber.
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:12]}.tmp{path.suffix}"
    open(tmp, "xb").close()
    try:
        yield tmp
        if mode is not None:
            os.chmod(tmp, mode)
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


def _replaced_mode(path: Path) -> int | None:
    """Permission bits of the file ``path`` replaces (None: a new file); refuses read-only."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    if _read_only(path):
        raise PermissionError(
            errno.EACCES, "the file is read-only (refusing to replace it)", os.fspath(path)
        )
    return stat.S_IMODE(st.st_mode)


def _read_only(path: Path) -> bool:
    """No write permission for this process, or no write bit at all (which root would
    ignore: a file marked read-only for everyone is not silently replaced)."""
    mode = os.stat(path).st_mode
    return not os.access(path, os.W_OK) or not mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)


def _can_create_in(directory: Path) -> bool:
    """Whether a file can be created in ``directory``: by trying (permission bits do not tell
    for root, read-only mounts or pseudo file systems such as /proc)."""
    probe = directory / f".mixture-density-probe-{uuid.uuid4().hex[:12]}"
    try:
        open(probe, "xb").close()
    except OSError:
        return False
    with contextlib.suppress(OSError):
        probe.unlink()
    return True


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


#: Suffixes of the files each kind of output is written as (lower case).
MODEL_SUFFIXES = (".pt", ".pth", ".ckpt", ".safetensors")
TABLE_SUFFIXES = (".csv", ".txt")


def check_output_path(
    path: str | None,
    *,
    option: str = "output",
    suffixes: Sequence[str] | None = None,
    inputs: Sequence[str] = (),
) -> None:
    """Fail before any expensive work if ``path`` cannot be written (``None``: stdout).

    Checks, in order: the path is not empty, not a directory, its directory exists and is
    writable, an existing file there is writable, it is not the same file as any of
    ``inputs`` (same inode: a link or another spelling of the path counts), and its suffix
    is one of ``suffixes``.

    Args:
        path: the output file.
        option: the option that named it, for the message (``"--out"``).
        suffixes: accepted suffixes, lower case with the dot (None: any).
        inputs: files the command reads; writing over one of them is refused.

    Raises:
        MixtureDensityError: one of the checks failed; the message names ``option``.

    Example:
        >>> check_output_path("/no/such/dir/out.csv")
        Traceback (most recent call last):
        ...
        mixture_density._errors.MixtureDensityError: cannot write /no/such/dir/out.csv: directory '/no/such/dir' does not exist
    """  # noqa: E501
    if path is None:
        return
    if not path.strip():
        raise MixtureDensityError(f"{option} is empty: give the name of the file to write")
    target = Path(os.path.realpath(path))  # a symbolic link is written through
    if target.is_dir():
        raise MixtureDensityError(f"cannot write {path}: it is a directory")
    parent = target.parent
    if not parent.is_dir():
        shown = str(Path(path).parent)
        raise MixtureDensityError(f"cannot write {path}: directory {shown!r} does not exist")
    if not _can_create_in(parent):
        raise MixtureDensityError(
            f"cannot write {path}: directory {str(parent)!r} is not writable; choose another "
            f"{option}"
        )
    if target.exists() and _read_only(target):
        raise MixtureDensityError(
            f"cannot write {path}: the file is read-only (refusing to replace it); choose "
            f"another {option} or make it writable"
        )
    for source in inputs:
        if target.exists() and os.path.exists(source) and os.path.samefile(target, source):
            raise MixtureDensityError(
                f"{option} {path} is the input file {source}: writing it would destroy the "
                f"input; choose another {option}"
            )
    if suffixes is not None and target.suffix.lower() not in suffixes:
        raise MixtureDensityError(
            f"cannot write {path}: {option} must end in {', '.join(suffixes)} "
            f"(got {target.suffix or 'no suffix'!r})"
        )


def figure_suffixes() -> tuple[str, ...]:
    """The suffixes matplotlib can save a figure as (``.png``, ``.pdf``, ``.svg``, ...)."""
    from matplotlib.backend_bases import FigureCanvasBase

    return tuple(f".{ext}" for ext in FigureCanvasBase.get_supported_filetypes())


def save_figure(fig: Any, path: str) -> None:
    """Write a matplotlib ``Figure`` atomically, in the format its suffix names (default png)."""
    suffix = Path(path).suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix, dpi=120, bbox_inches="tight")
