"""Ctrl-C and SIGTERM for the ``mdn`` command (private).

While :func:`handled` is active, SIGINT and SIGTERM both raise ``KeyboardInterrupt`` in the
main thread, so that every ``finally`` and ``except BaseException`` runs: the atomic writer
removes its temporary file, ``training.fit`` restores its best weights, and the command
reports one line. Which signal came last decides the exit status (130 for SIGINT, 143 for
SIGTERM, the shell's ``128 + signal number`` convention). This module imports nothing heavy,
so the command can install the handlers before torch is imported.

Importing torch is done inside :func:`deferred`, where a signal is only recorded:
an exception raised in the middle of an extension module's C++ initialization can abort the
process ("terminate called after throwing an instance of 'pybind11::error_already_set'",
status -6). :func:`check` raises it once the import is done, a second or two later.

Python also ignores an exception raised where nothing can catch it (a weakref callback, a
``__del__``; importlib runs such callbacks while torch imports): it prints "Exception
ignored in ..." and goes on. Inside :func:`handled` that print is silenced for our
``KeyboardInterrupt``, and :func:`check` raises it again at the next point that can take it.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from types import FrameType
from typing import Any

__all__ = [
    "EXIT_INTERRUPTED",
    "check",
    "deferred",
    "describe",
    "exit_status",
    "handled",
    "received",
    "reset",
]

#: Exit status after Ctrl-C (SIGINT).
EXIT_INTERRUPTED = 128 + signal.SIGINT

_received: int | None = None
_deferring = False


def _raise(signum: int, frame: FrameType | None) -> None:
    global _received
    _received = signum
    if not _deferring:
        raise KeyboardInterrupt


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Inside the block a signal is recorded, not raised; call :func:`check` after it."""
    global _deferring
    before = _deferring
    _deferring = True
    try:
        yield
    finally:
        _deferring = before


def check() -> None:
    """Raise ``KeyboardInterrupt`` if a signal came in while :func:`handled` was active.

    For the places after work whose interrupt Python may have ignored (see above).
    """
    if _received is not None:
        raise KeyboardInterrupt


def _quiet(previous: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """An unraisable-exception hook that drops our own ignored interrupts."""

    def hook(unraisable: Any) -> None:
        if not (isinstance(unraisable.exc_value, KeyboardInterrupt) and _received is not None):
            previous(unraisable)

    return hook


def received() -> int | None:
    """The last signal received while :func:`handled` was active (None: none)."""
    return _received


def reset() -> None:
    """Forget the last signal (each command run starts clean)."""
    global _received
    _received = None


def exit_status() -> int:
    """``128 + signal number`` of the last signal (130 when none was recorded)."""
    return 128 + _received if _received is not None else EXIT_INTERRUPTED


def describe() -> str:
    """``"interrupted"`` (SIGINT, or none recorded) or ``"terminated"`` (SIGTERM)."""
    return "terminated" if _received == signal.SIGTERM else "interrupted"


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGINT and SIGTERM raise ``KeyboardInterrupt`` inside the block (main thread only).

    The previous handlers are restored on exit, so ``mdn``'s ``main`` can run in-process.
    Elsewhere than the main thread, signals cannot be handled and the block runs as is.
    """
    reset()
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    unraisable = sys.unraisablehook
    sys.unraisablehook = _quiet(unraisable)
    for sig in previous:
        signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        sys.unraisablehook = unraisable
