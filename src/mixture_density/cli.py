"""The ``mdn`` command: a demo, and fit / predict / evaluate on CSV files.

Usage::

    mdn demo [--out mdn-demo.png] [--seed S] [--quick]
    mdn fit DATA.csv --target COL [COL ...] [--features COL ...] --out MODEL
            [--stream] [--memory-budget MB] [--chunk-rows N] [--val-rows N]
    torchrun --nproc-per-node N -m mixture_density fit ...   (data-parallel, rank 0 writes)
    mdn predict MODEL DATA.csv [--quantiles 0.05 0.5 0.95] [--samples N] [--output OUT.csv]
    mdn evaluate MODEL DATA.csv [--plot calibration.png]

User errors (missing file or column, non-numeric or missing cells, a model that does not fit the
data, bad arguments) print one line ``mdn: error: ...`` on stderr and exit with status 2. Output
files are written to a temporary file and renamed, so a failure never leaves half a file.
Files larger than ``--memory-budget`` (or any file with ``--stream``) are streamed from disk
by ``_streaming``; under ``torchrun`` every rank reads the data and rank 0 alone reports and
writes the model (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, NoReturn

import numpy as np

from ._errors import MixtureDensityError
from ._serialization import atomic_path

if TYPE_CHECKING:
    from .estimator import MDNRegressor

__all__ = ["main"]

#: Exit status for user errors (bad input or arguments), as argparse uses.
EXIT_USAGE = 2
#: Exit status when training fails for another reason (a dead peer under torchrun).
EXIT_FAILURE = 1

#: ``--memory-budget`` counts in MB of 2**20 bytes.
_MIB = 1 << 20
#: Files larger than this many MB are streamed by default. Reading a CSV into memory takes
#: about six times its size (the text of every cell, then the float arrays: 200 MB above the
#: libraries' own for a 35 MB file of 300,000 rows x 6 columns), so this default keeps the
#: in-memory path near 3 GB; streaming costs a parse of the file in every epoch.
_DEFAULT_MEMORY_BUDGET_MB = 512.0


# Optional dependencies (extras) the commands may need; a missing one is a user error.
_OPTIONAL_MODULES = frozenset({"matplotlib", "sklearn", "tqdm", "safetensors", "pandas"})


class _UsageError(Exception):
    """Raised by the argument parser instead of printing usage and exiting."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{message} (see '{self.prog} --help')")


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``mdn`` command.

    Args:
        argv: Arguments without the program name; ``None`` reads ``sys.argv[1:]``.

    Returns:
        The exit status: 0 on success, 2 on a user error (with one line on stderr).

    Example:
        >>> main(["--version"])  # doctest: +ELLIPSIS
        mdn ...
        0
    """
    parser = _build_parser()
    try:
        args = parser.parse_args(None if argv is None else list(argv))
    except _UsageError as err:
        return _fail(str(err))
    except SystemExit as exit_:  # --help and --version exit through argparse
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else EXIT_USAGE
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    import torch

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(args.threads)
        return int(args.handler(args))
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in _OPTIONAL_MODULES:
            raise  # a broken installation, not a missing extra: keep the traceback
        return _fail(f"{err}: install the extras with pip install 'mixture-density[all]'")
    except BrokenPipeError:
        # The reader went away (`mdn predict ... | head`): not an error worth a message.
        # Point stdout at devnull so that the interpreter's final flush does not fail again.
        with contextlib.suppress(OSError, ValueError, AttributeError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except (MixtureDensityError, OSError, ValueError) as err:
        return _fail(str(err))
    except KeyboardInterrupt:
        print("mdn: interrupted", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process: restore


def _fail(message: str, code: int = EXIT_USAGE) -> int:
    print(f"mdn: error: {' '.join(message.split())}", file=sys.stderr)
    return code


def _cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo  # imports the estimator and, when it runs, matplotlib

    return run_demo(args)


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
    demo.set_defaults(handler=_cmd_demo)

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
        default=5,
        metavar="K",
        help="mixture components (default: %(default)s)",
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
        help="ensemble size (default: the estimator's, 5; 1 with --stream or under torchrun)",
    )
    fit.add_argument(
        "--epochs", type=_positive_int, default=None, metavar="N", help="maximum epochs"
    )
    fit.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
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
    fit.set_defaults(handler=_cmd_fit)

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
    predict.set_defaults(handler=_cmd_predict)

    evaluate = sub.add_parser("evaluate", help="score a model on a CSV file with targets")
    evaluate.add_argument("model", metavar="MODEL", help="model file written by 'mdn fit'")
    evaluate.add_argument(
        "data", metavar="DATA.csv", help="CSV file with feature and target columns"
    )
    evaluate.add_argument("--plot", metavar="FIG.png", help="write a reliability diagram")
    evaluate.set_defaults(handler=_cmd_evaluate)
    return parser


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


def _probability(text: str) -> float:
    value = float(text)
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(
            f"expected a probability strictly between 0 and 1, got {text}"
        )
    return value


# ----------------------------------------------------------------------------------------------
# CSV input and output
# ----------------------------------------------------------------------------------------------


def _parse_header(path: str, header: list[str] | None) -> list[str]:
    """Column names of a CSV header row; empty or repeated names are errors."""
    if header is None:
        raise MixtureDensityError(f"{path}: empty file, expected a header row")
    names = [name.strip() for name in header]
    seen = set()
    for name in names:
        if not name:
            raise MixtureDensityError(f"{path}: the header has an empty column name")
        if name in seen:
            raise MixtureDensityError(f"{path}: column {name!r} appears twice in the header")
        seen.add(name)
    return names


def _read_header(path: str) -> list[str]:
    """The header of a CSV file, without reading the rest (for streamed fits)."""
    with open(path, newline="", encoding="utf-8-sig") as fh:
        return _parse_header(path, next(csv.reader(fh), None))


def _require_columns(path: str, header: Sequence[str], names: Sequence[str], what: str) -> None:
    missing = [name for name in names if name not in header]
    if missing:
        raise MixtureDensityError(
            f"{path}: {what} column(s) {', '.join(map(repr, missing))} not found "
            f"(columns: {', '.join(header)})"
        )


class _Table:
    """A CSV file read as text: header plus rows, with the line number of each row."""

    def __init__(self, path: str) -> None:
        self.path = path
        with open(path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.reader(fh)
            self.header = _parse_header(path, next(reader, None))
            self.lines: list[int] = []
            self.rows: list[list[str]] = []
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue  # blank line
                if len(row) != len(self.header):
                    raise MixtureDensityError(
                        f"{path} line {reader.line_num}: {len(row)} fields, but the header has "
                        f"{len(self.header)}"
                    )
                self.lines.append(reader.line_num)
                self.rows.append(row)
        if not self.rows:
            raise MixtureDensityError(f"{path}: no data rows after the header")

    def require(self, names: Sequence[str], what: str) -> None:
        _require_columns(self.path, self.header, names, what)

    def numeric(self, names: Sequence[str], what: str) -> np.ndarray:
        """``(n_rows, len(names))`` float64 array; every cell must be a finite number."""
        self.require(names, what)
        index = [self.header.index(name) for name in names]
        out = np.empty((len(self.rows), len(names)), dtype=np.float64)
        for i, (line, row) in enumerate(zip(self.lines, self.rows)):
            for j, (name, col) in enumerate(zip(names, index)):
                cell = row[col].strip()
                try:
                    value = float(cell)
                except ValueError:
                    problem = "empty cell" if not cell else f"{cell!r} is not a number"
                    raise MixtureDensityError(
                        f"{self.path} line {line}, column {name!r}: {problem}"
                    ) from None
                if not math.isfinite(value):
                    raise MixtureDensityError(
                        f"{self.path} line {line}, column {name!r}: {cell!r} (missing or "
                        "infinite values are not supported; drop or impute the row)"
                    )
                out[i, j] = value
        return out


def _check_output_path(path: str | None) -> None:
    """Fail before any expensive work if ``path`` cannot be created."""
    if path is None:
        return
    parent = Path(path).parent
    if not parent.is_dir():
        raise MixtureDensityError(f"cannot write {path}: directory {str(parent)!r} does not exist")
    if Path(path).is_dir():
        raise MixtureDensityError(f"cannot write {path}: it is a directory")


def _write_csv(path: str | None, header: Sequence[str], rows: np.ndarray) -> None:
    def write(fh: IO[str]) -> None:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(header)
        writer.writerows([[repr(float(v)) for v in row] for row in rows])

    if path is None:
        write(sys.stdout)
        return
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
        write(fh)


def _save_figure(fig: Any, path: str) -> None:
    suffix = Path(path).suffix.lstrip(".") or "png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format=suffix, dpi=120, bbox_inches="tight")


# ----------------------------------------------------------------------------------------------
# Commands
# ----------------------------------------------------------------------------------------------


def _cmd_fit(args: argparse.Namespace) -> int:
    from .estimator import DEFAULTS, MDNRegressor

    _check_output_path(args.out)
    world = _world_size()
    size = os.path.getsize(args.data)
    stream = args.stream or size > args.memory_budget * _MIB
    if args.val_rows is not None and not stream:
        raise MixtureDensityError(
            "--val-rows applies to streamed fits (--stream, or a file larger than "
            "--memory-budget); in memory, a random 10% of the rows is held out"
        )
    if args.estimators is None:
        # Ensemble members are trained as one batched model, which needs all rows in one
        # process: streamed and distributed fits train one network.
        args.estimators = 1 if (stream or world > 1) else DEFAULTS["n_estimators"]
    if (stream or world > 1) and args.estimators > 1:
        raise MixtureDensityError(
            f"--estimators {args.estimators} needs the whole data set in one process (the "
            "networks are trained as one batched model); use --estimators 1 with --stream, "
            "--memory-budget or torchrun"
        )
    model = MDNRegressor(
        n_components=args.components,
        hidden_dims=tuple(args.hidden),
        noise_type=args.noise,
        n_estimators=args.estimators,
        epochs=args.epochs if args.epochs is not None else DEFAULTS["epochs"],
        verbose=not args.quiet,
        random_state=args.seed,
    )
    model._check_params()  # bad hyperparameters fail before the data are read
    is_main = _rank() == 0
    train: Callable[[], MDNRegressor]
    if stream:
        from ._streaming import fit_streamed, scan_csv

        features, targets = _fit_columns(args, _read_header(args.data))
        if is_main:
            reason = (
                "--stream"
                if args.stream
                else f"larger than --memory-budget {args.memory_budget:g} MB"
            )
            print(
                f"streaming {args.data} ({size / _MIB:.3g} MB, {reason}) in chunks of "
                f"{args.chunk_rows} rows"
            )
        data = scan_csv(
            args.data, features, targets, chunk_rows=args.chunk_rows, val_rows=args.val_rows
        )
        n_rows, streamed = data.n_rows, data

        def train() -> MDNRegressor:
            return fit_streamed(model, data)

    else:
        table = _Table(args.data)
        features, targets = _fit_columns(args, table.header)
        X = table.numeric(features, "feature")
        y = table.numeric(targets, "target")
        del table  # the text of every cell: several times the size of X and y
        Y = y[:, 0] if len(targets) == 1 else y
        n_rows, streamed = X.shape[0], None

        def train() -> MDNRegressor:
            # MDNRegressor.fit trains in this process only; under torchrun the same fit
            # trains data-parallel (DDP) over the ranks.
            return model._fit(X, Y, distributed=None) if world > 1 else model.fit(X, Y)

    start = time.perf_counter()

    def finish(fitted: MDNRegressor) -> None:
        seconds = time.perf_counter() - start
        metadata: dict[str, Any] = {"features": features, "targets": targets}
        if streamed is not None:
            metadata["streamed"] = {
                "rows": streamed.n_rows,
                "val_rows": streamed.n_val,
                "chunk_rows": streamed.chunk_rows,
            }
        fitted.save(args.out, metadata=metadata)
        result = fitted.fit_results_[0]
        where = f" on {world} processes" if world > 1 else ""
        print(
            f"trained on {n_rows} rows ({len(features)} features -> {len(targets)} targets)"
            f"{where}, K={args.components}, {args.noise}, {result.epochs_run} epochs "
            f"({result.stop_reason}) in {seconds:.1f} s"
        )
        if math.isnan(fitted.val_nll_):
            why = "--val-rows 0" if streamed is not None else "too few rows to hold out"
            print(f"validation NLL: n/a ({why})")
        elif streamed is not None:
            print(
                f"validation NLL: {fitted.val_nll_:.4f} nats per row "
                f"(the first {streamed.n_val} rows of the file)"
            )
        else:
            print(f"validation NLL: {fitted.val_nll_:.4f} nats per row")
        print(f"wrote {args.out}")

    if world <= 1:
        finish(train())
        return 0
    return _fit_distributed(train, finish)


def _fit_columns(args: argparse.Namespace, header: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(features, targets)`` of ``mdn fit``: named, or every non-target column."""
    targets = list(dict.fromkeys(args.target))
    _require_columns(args.data, header, targets, "target")
    if args.features:
        features = list(dict.fromkeys(args.features))
        overlap = sorted(set(features) & set(targets))
        if overlap:
            raise MixtureDensityError(
                f"column(s) {', '.join(map(repr, overlap))} are both feature and target"
            )
        _require_columns(args.data, header, features, "feature")
    else:
        features = [name for name in header if name not in targets]
        if not features:
            raise MixtureDensityError(f"{args.data}: no feature columns left after the targets")
    return features, targets


# ----------------------------------------------------------------------------------------------
# torchrun: one rank of a data-parallel fit
# ----------------------------------------------------------------------------------------------


def _world_size() -> int:
    """Processes in the job, from the ``WORLD_SIZE`` that ``torchrun`` sets (1 without it)."""
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw)
    except ValueError:
        raise MixtureDensityError(f"WORLD_SIZE must be an integer, got {raw!r}") from None


def _rank() -> int:
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        raise MixtureDensityError(f"RANK must be an integer, got {os.environ['RANK']!r}") from None


def _fit_distributed(
    train: Callable[[], MDNRegressor], finish: Callable[[MDNRegressor], None]
) -> int:
    """Runs ``train`` as one rank of a ``torchrun`` job; rank 0 then runs ``finish``.

    The data have been read and checked on every rank before this, so a bad file fails on
    every rank alike, before any rank waits for another. Training runs under DDP in a
    process group made here (gloo: the command trains on the CPU), which outlives
    :func:`~mixture_density.training.fit` so that a final all-reduce can (1) hold every
    rank until rank 0 has written the model and (2) give every rank rank 0's outcome as
    its exit status. A rank that fails prints one line and exits non-zero: 2 for a user
    error, 1 when training itself failed (a dead or stalled peer: fit raises after
    ``MIXTURE_DENSITY_DIST_TIMEOUT`` seconds at the latest, naming the rank).

    Returns:
        The exit status, only when the process group existed before (``main`` called from
        a program of the caller's that set it up); otherwise the process ends here.
    """
    import torch.distributed as dist

    from . import _distributed

    try:
        ctx = _distributed.setup(None, use_cuda=False)
    except RuntimeError as err:  # rendezvous failed: a peer never came, or the store is gone
        return _fail(f"could not join the torchrun job: {err}", EXIT_FAILURE)
    code, trained = 0, False
    try:
        fitted = train()
        trained = True
        if ctx.is_main:
            finish(fitted)
    except (MixtureDensityError, OSError, ValueError) as err:
        code = _fail(str(err))
    except RuntimeError as err:  # fit's "fit failed on rank R of W ..." after a peer's failure
        code = _fail(str(err), EXIT_FAILURE)
    if trained:  # the peers are alive (training's last collective passed): compare outcomes
        import torch

        status = torch.tensor([code], dtype=torch.int64)
        try:
            dist.all_reduce(status, op=dist.ReduceOp.MAX)
            if int(status) and not code:
                code = _fail("rank 0 failed after training (see its error message)", int(status))
        except RuntimeError as err:
            code = code or _fail(f"lost the other ranks after training: {err}", EXIT_FAILURE)
    if not ctx.created_group:
        return code
    with contextlib.suppress(RuntimeError):
        _distributed.teardown(ctx)
    # torch 2.13 on CPU: a process that used DDP over gloo sometimes aborts while the
    # interpreter shuts down ("terminate called without an active exception", SIGABRT),
    # after all of its work is done (docs/scaling.md, "Exit"); a bare DDP script does it
    # too. The model is written and the group destroyed, so end the process here, skipping
    # that shutdown, so that the exit status says what happened.
    with contextlib.suppress(OSError, ValueError):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _load_model(path: str) -> MDNRegressor:
    from .estimator import MDNRegressor

    return MDNRegressor.load(path, device="cpu")


def _features_of(model: MDNRegressor, table: _Table) -> np.ndarray:
    features = model.metadata_.get("features")
    if features is None:  # saved from Python without column names: use every column, in order
        if len(table.header) != model.n_features_in_:
            raise MixtureDensityError(
                f"{table.path} has {len(table.header)} columns, but the model expects "
                f"{model.n_features_in_} features"
            )
        features = table.header
    return table.numeric(features, "feature")


def _target_names(model: MDNRegressor) -> list[str]:
    names = model.metadata_.get("targets")
    if names is None:
        names = ["y"] if model.n_outputs_ == 1 else [f"y{d}" for d in range(model.n_outputs_)]
    return list(names)


def _cmd_predict(args: argparse.Namespace) -> int:
    _check_output_path(args.output)
    model = _load_model(args.model)
    X = _features_of(model, _Table(args.data))
    targets = _target_names(model)
    n, D = X.shape[0], model.n_outputs_
    columns: list[np.ndarray] = [model.predict(X).reshape(n, D)]
    header = [f"{t}_mean" for t in targets]
    if args.quantiles:
        q = model.predict_quantiles(X, args.quantiles).reshape(n, D, len(args.quantiles))
        columns += [q[:, d, :] for d in range(D)]
        header += [f"{t}_q{level:g}" for t in targets for level in args.quantiles]
    if args.samples:
        s = model.sample(X, args.samples, random_state=args.seed).reshape(args.samples, n, D)
        columns += [s[:, :, d].T for d in range(D)]
        header += [f"{t}_sample{j}" for t in targets for j in range(args.samples)]
    _write_csv(args.output, header, np.concatenate(columns, axis=1))
    if args.output is not None:
        print(f"wrote {n} rows to {args.output}", file=sys.stderr)
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    import torch

    from .metrics import energy_score, evaluate

    _check_output_path(args.plot)
    model = _load_model(args.model)
    table = _Table(args.data)
    targets = model.metadata_.get("targets")
    if targets is None:
        raise MixtureDensityError(
            f"{args.model} stores no target column names (saved without metadata); "
            "evaluate needs a model written by 'mdn fit'"
        )
    X = _features_of(model, table)
    y = table.numeric(targets, "target")
    dist = model.predict_distribution(X)
    y_t = torch.as_tensor(y, dtype=dist.loc.dtype)
    report = evaluate(dist, y_t)
    print(f"rows: {X.shape[0]}")
    print(f"NLL:  {report['nll']:.4f} nats per row")
    print(f"CRPS: {report['crps']:.4f}" + (" (mean over targets)" if y.shape[1] > 1 else ""))
    if y.shape[1] > 1:
        generator = torch.Generator().manual_seed(0)
        print(f"energy score: {energy_score(dist, y_t, generator=generator):.4f}")
    print(f"calibration error: {report['calibration_error']:.4f}")
    for key, value in report.items():
        if key.startswith("coverage_"):
            level = float(key.removeprefix("coverage_"))
            print(f"coverage of the central {level:.0%} interval: {value:.1%}")
    if args.plot:
        from matplotlib.figure import Figure

        from .plotting import plot_reliability

        # A bare Figure (no pyplot): no GUI backend, no global figure registry to clean up.
        fig = Figure(figsize=(4.5, 4.5))
        plot_reliability(dist, y_t, ax=fig.subplots())
        _save_figure(fig, args.plot)
        print(f"wrote {args.plot}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
