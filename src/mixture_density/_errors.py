"""The package exception, and how the ``mdn`` command reports an error."""

from __future__ import annotations

import contextlib
import os
import sys
from typing import NoReturn

__all__ = ["EXIT_FAILURE", "EXIT_USAGE", "MixtureDensityError", "exit_now", "fail"]

#: Exit status for user errors (bad input or arguments), as argparse uses.
EXIT_USAGE = 2
#: Exit status when the work fails for another reason (a dead peer under torchrun).
EXIT_FAILURE = 1
#: Messages are cut to this many characters: a cell or a path can be huge (a 200,000
#: character cell), and one line on a terminal should stay readable.
MAX_MESSAGE_CHARS = 2000


class MixtureDensityError(ValueError):
    """Invalid user input: a bad file, column, model file or argument.

    A subclass of :class:`ValueError`, so code that catches ``ValueError`` keeps working.
    The ``mdn`` command turns it into a one-line message and exit status 2.

    Example:
        >>> try:
        ...     raise MixtureDensityError("column 'x' is missing")
        ... except ValueError as err:
        ...     print(err)
        column 'x' is missing
    """


def fail(message: str, code: int = EXIT_USAGE) -> int:
    r"""Print ``mdn: error: MESSAGE`` as one line on stderr; return ``code``.

    Example:
        >>> import contextlib, io
        >>> with contextlib.redirect_stderr(io.StringIO()) as err:
        ...     code = fail("no such column    'x'")
        >>> code, err.getvalue()
        (2, "mdn: error: no such column 'x'\n")
    """
    text = " ".join(message.split())
    if len(text) > MAX_MESSAGE_CHARS:
        text = text[: MAX_MESSAGE_CHARS - 3] + "..."
    print(f"mdn: error: {text}", file=sys.stderr)
    return code


def exit_now(code: int) -> NoReturn:
    """End the process with ``code`` at once: flush stdout and stderr, skip the interpreter's
    shutdown (``os._exit``). For exits whose status that shutdown would change: after a
    signal (see ``cli.run``) and after DDP over gloo (``_commands``)."""
    with contextlib.suppress(OSError, ValueError):  # a closed or broken stream
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)
