"""The ``mdn`` command: a demo, and fit / predict / evaluate on CSV files.

Usage::

    mdn demo [--out mdn-demo.png] [--seed S] [--quick]
    mdn fit DATA.csv --target COL [COL ...] [--features COL ...] --out MODEL
            [--resolution H ...] [--bounds LO HI]... [--event COL | --upper COL]
            [--missing {error,drop}] [--stream] [--memory-budget MB] [--chunk-rows N]
            [--val-rows N]
    torchrun --nproc-per-node N -m mixture_density fit ...   (data-parallel, rank 0 writes)
    mdn predict MODEL DATA.csv [--quantiles 0.05 0.5 0.95] [--samples N] [--output OUT.csv]
    mdn evaluate MODEL DATA.csv [--plot calibration.png] [--event COL | --upper COL]
            [--missing {error,drop}]
    mdn export MODEL OUT.onnx [--opset N]

User errors (missing file or column, non-numeric or missing cells, a model that does not fit the
data, bad arguments) print one line ``mdn: error: ...`` on stderr and exit with status 2. Output
files are written to a temporary file and renamed, so a failure never leaves half a file.
Files larger than ``--memory-budget`` (or any file with ``--stream``) are streamed from disk
by ``_streaming``; under ``torchrun`` every rank reads the data and rank 0 alone reports and
writes the model (docs/scaling.md). This module holds the parser and :func:`main`; the
commands themselves are in ``_commands``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import warnings
from collections.abc import Iterator, Sequence
from typing import NoReturn, TextIO

# Only light modules at import time: main() installs the signal handling before torch and
# numpy are imported (importing torch takes about a second, and Ctrl-C may come then).
from . import _signals
from ._errors import EXIT_USAGE, MixtureDensityError, exit_now, fail

__all__ = ["main", "run"]

#: Files larger than this many MB are streamed by default. Reading a CSV into memory takes
#: about six times its size (the text of every cell, then the float arrays), so this default
#: keeps the in-memory path to a few GB; streaming costs a parse of the file in every epoch.
_DEFAULT_MEMORY_BUDGET_MB = 512.0


# Optional dependencies (extras) the commands may need; a missing one is a user error.
_OPTIONAL_MODULES = frozenset({"matplotlib", "sklearn", "tqdm", "safetensors", "pandas"})


class _UsageError(Exception):
    """Raised by the argument parser instead of printing usage and exiting."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mdn`` command.

    Ctrl-C (SIGINT) and SIGTERM stop the command at any moment (during the import of torch,
    as soon as it is done), with one line on stderr and status 130 or 143; no output file is
    left half written, and an interrupted ``fit`` never replaces its ``--out`` file.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 2 on a user error (with one line on stderr), 1 when
        the work failed otherwise, 130/143 after SIGINT/SIGTERM.

    Example:
        >>> main(["--version"])  # doctest: +ELLIPSIS
        mdn ...
        0
    """
    with _signals.handled(), _one_line_warnings():
        try:
            return _run(argv)
        except BaseException as exc:
            # A signal can surface as another exception: an extension module whose import it
            # interrupts reports an ImportError or SystemError, not the KeyboardInterrupt.
            if not isinstance(exc, KeyboardInterrupt) and _signals.received() is None:
                raise
            print(f"mdn: {_signals.describe()}", file=sys.stderr)
            return _signals.exit_status()


def run() -> NoReturn:
    """The ``mdn`` console script and ``python -m mixture_density``: :func:`main`, then exit.

    After a signal it leaves through ``os._exit`` (streams flushed first): an interrupt that
    passed through C code running Python code (importing torch does) leaves CPython's
    "unhandled KeyboardInterrupt" flag set although :func:`main` handled it, and the
    interpreter then kills itself with SIGINT at exit: status -2 instead of 130 or 143 (3 to
    5 of 20 SIGTERMs sent 1.0-1.6 s into ``mdn fit`` before this).
    """
    code = main()
    if _signals.received() is not None:
        exit_now(code)
    sys.exit(code)


def _run(argv: Sequence[str] | None) -> int:
    parser = _build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except _UsageError as err:
        return fail(str(err))
    except SystemExit as exit_:  # --help and --version exit through argparse
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    with _signals.deferred():  # an interrupt raised inside torch's C++ import aborts
        import torch

        from . import _commands
    _signals.check()  # a signal during the imports: stop now
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(args.threads)
        return int(getattr(_commands, f"cmd_{args.command}")(args))
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in _OPTIONAL_MODULES:
            raise  # a broken installation, not a missing extra: keep the traceback
        return fail(f"{err}: install the extras with pip install 'mixture-density[all]'")
    except BrokenPipeError:
        # The reader went away (`mdn predict ... | head`): not an error worth a message.
        # Point stdout at devnull so that the interpreter's final flush does not fail again.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as err:
        return fail(_os_error_text(err))
    except (MixtureDensityError, ValueError) as err:
        return fail(str(err))
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process: restore


def _os_error_text(err: OSError) -> str:
    """``PATH: what went wrong`` for file errors (their default text leads with ``[Errno N]``)."""
    if err.filename is not None and err.strerror:
        return f"{os.fsdecode(err.filename)}: {err.strerror}"
    return str(err)


@contextlib.contextmanager
def _one_line_warnings() -> Iterator[None]:
    """Warnings print as ``mdn: warning: MESSAGE``, one line each, while the command runs."""
    previous = warnings.showwarning

    def show(
        message: Warning | str,
        category: type[Warning],
        filename: str,
        lineno: int,
        file: TextIO | None = None,
        line: str | None = None,
    ) -> None:
        print(f"mdn: warning: {' '.join(str(message).split())}", file=sys.stderr)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = previous


def _build_parser() -> _Parser:
    from . import __version__

    parser = _Parser(
        prog="mdn",
        description="Mixture density networks: p(y | x) as a Gaussian mixture.",
    )
    parser.add_argument("--version", action="version", version=f"mdn {__version__}")
    parser.add_argument(
        "--threads",
        type=_positive_int,
        default=1,
        metavar="N",
        help="CPU threads for torch (default: %(default)s; small networks run fastest on one)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo = sub.add_parser(
        "demo",
        help="fit the classic multi-valued inverse problem and plot it",
        description=(
            "Fit K=3 components to x = 7 sin(5y) + 0.5y + noise, inverted (x -> y has several "
            "branches), report held-out scores and write a figure."
        ),
    )
    demo.add_argument("--out", default="mdn-demo.png", help="figure path (default: %(default)s)")
    demo.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    demo.add_argument(
        "--n",
        type=_positive_int,
        default=None,
        help="training rows (default: 3000, 600 with --quick)",
    )
    demo.add_argument(
        "--quick", action="store_true", help="small data and few epochs (a smoke test)"
    )

    fit = sub.add_parser("fit", help="train a model on a CSV file")
    fit.add_argument("data", metavar="DATA.csv", help="CSV file with a header row")
    fit.add_argument("--target", nargs="+", required=True, metavar="COL", help="target column(s)")
    fit.add_argument(
        "--features",
        nargs="+",
        metavar="COL",
        help="input columns (default: all non-target columns)",
    )
    fit.add_argument(
        "--components",
        type=_positive_int,
        default=None,
        metavar="K",
        help="mixture components of every network (default: the estimator's rule in the "
        "number of rows)",
    )
    fit.add_argument(
        "--noise",
        default="diagonal",
        metavar="TYPE",
        help="noise model: full, diagonal, isotropic, isotropic_across_clusters "
        "(default: %(default)s)",
    )
    fit.add_argument(
        "--hidden",
        type=_positive_int,
        nargs="+",
        default=[64, 64],
        metavar="W",
        help="hidden layer widths (default: 64 64)",
    )
    fit.add_argument(
        "--estimators",
        type=_positive_int,
        default=None,
        metavar="M",
        help="ensemble size (default: the estimator's rule; 1 with --stream or under torchrun)",
    )
    fit.add_argument(
        "--epochs",
        type=_positive_int,
        default=None,
        metavar="N",
        help="maximum epochs (default: the estimator's rule: 200, more on small data)",
    )
    fit.add_argument(
        "--patience",
        type=_positive_int,
        default=None,
        metavar="N",
        help="stop after N epochs without a better validation NLL (default: the estimator's)",
    )
    fit.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    fit.add_argument(
        "--resolution",
        type=float,
        nargs="+",
        metavar="H",
        help="the targets lie on a grid of spacing H (one for all, or one per target): train "
        "and score the probability of each value's bin [y - H/2, y + H/2]",
    )
    fit.add_argument(
        "--bounds",
        type=_bound,
        nargs=2,
        action="append",
        metavar=("LO", "HI"),
        help="the targets lie in (LO, HI); 'none' or inf leaves an end open (repeat once per "
        "target for different bounds)",
    )
    _add_target_options(fit)
    fit.add_argument("--quiet", action="store_true", help="no progress bar")
    fit.add_argument("--out", required=True, metavar="MODEL", help="model file to write")
    fit.add_argument(
        "--stream",
        action="store_true",
        help="read the CSV from disk in chunks in every epoch instead of into memory "
        "(automatic for files larger than --memory-budget)",
    )
    fit.add_argument(
        "--memory-budget",
        type=_positive_float,
        default=_DEFAULT_MEMORY_BUDGET_MB,
        metavar="MB",
        help="stream files larger than this (default: %(default)g; in memory a CSV takes "
        "about 6 times its size)",
    )
    fit.add_argument(
        "--chunk-rows",
        type=_positive_int,
        default=10_000,
        metavar="N",
        help="rows parsed at a time when streaming (default: %(default)s)",
    )
    fit.add_argument(
        "--val-rows",
        type=_nonnegative_int,
        default=None,
        metavar="N",
        help="when streaming: hold out the first N rows for validation and early stopping "
        "(default: 10%% of the rows, at most 10000; 0: none)",
    )

    predict = sub.add_parser("predict", help="predict means, quantiles and samples for a CSV file")
    predict.add_argument("model", metavar="MODEL", help="model file written by 'mdn fit'")
    predict.add_argument("data", metavar="DATA.csv", help="CSV file with the feature columns")
    predict.add_argument(
        "--quantiles",
        type=_probability,
        nargs="+",
        default=[],
        metavar="Q",
        help="quantile levels in (0, 1)",
    )
    predict.add_argument(
        "--samples", type=_nonnegative_int, default=0, metavar="N", help="samples per row"
    )
    predict.add_argument(
        "--seed", type=int, default=0, help="seed for --samples (default: %(default)s)"
    )
    predict.add_argument("--output", metavar="OUT.csv", help="output CSV (default: stdout)")

    evaluate = sub.add_parser("evaluate", help="score a model on a CSV file with targets")
    evaluate.add_argument("model", metavar="MODEL", help="model file written by 'mdn fit'")
    evaluate.add_argument(
        "data", metavar="DATA.csv", help="CSV file with feature and target columns"
    )
    evaluate.add_argument("--plot", metavar="FIG.png", help="write a reliability diagram")
    _add_target_options(evaluate)

    export = sub.add_parser(
        "export",
        help="write a model as an ONNX graph (needs the extra 'onnx')",
        description=(
            "Write MODEL as an ONNX graph mapping x (batch, features) to the mixture's "
            "logits, loc and scale (or scale_tril for full covariance), in original units."
        ),
    )
    export.add_argument("model", metavar="MODEL", help="model file written by 'mdn fit'")
    export.add_argument("out", metavar="OUT.onnx", help="ONNX file to write")
    export.add_argument(
        "--opset", type=_positive_int, default=None, metavar="N", help="ONNX opset version"
    )
    return parser


def _add_target_options(parser: argparse.ArgumentParser) -> None:
    """``--event``, ``--upper`` and ``--missing`` of fit and evaluate."""
    parser.add_argument(
        "--event",
        metavar="COL",
        help="censoring indicator of the one target: 1 event observed, 0 right-censored "
        "(the survival convention)",
    )
    parser.add_argument(
        "--upper",
        metavar="COL",
        help="upper ends of the one target: empty, nan or equal to it for an exact value, "
        "above it an interval, inf right-censored",
    )
    parser.add_argument(
        "--missing",
        choices=("error", "drop"),
        default="error",
        help="rows with a missing feature cell or no target value: an error (default) or "
        "dropped (and counted); with several targets, an empty target cell is a missing "
        "entry, scored through the marginal of the others",
    )


def _positive_int(text: str) -> int:
    value = int(text)  # ValueError -> argparse reports "invalid _positive_int value"
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text}")
    return value


def _nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text}")
    return value


def _bound(text: str) -> float | None:
    """An end of ``--bounds``: a number, ``inf``/``-inf``, or ``none`` (open)."""
    if text.strip().lower() == "none":
        return None
    value = float(text)
    if math.isnan(value):
        raise argparse.ArgumentTypeError(f"expected a number, inf or none, got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a probability strictly between 0 and 1, got {text}"
        )
    return value


if __name__ == "__main__":  # pragma: no cover
    run()
