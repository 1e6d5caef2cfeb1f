"""The ``mdn`` subcommands: fit, predict, evaluate, export and demo (private; see :mod:`.cli`).

Each handler takes the parsed arguments and returns an exit status; user errors are raised
as :class:`~mixture_density._errors.MixtureDensityError` (or ``OSError``/``ValueError``), which
:func:`mixture_density.cli.main` prints as one line. Data files are read by ``_csv``; every
output file is written through ``_files.atomic_path``.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from . import _env, _signals
from ._csv import Table, column_indices, read_header, write_csv
from ._errors import EXIT_FAILURE, MixtureDensityError, exit_now, fail
from ._files import MODEL_SUFFIXES, TABLE_SUFFIXES, check_output_path, figure_suffixes, save_figure
from ._options import STOP_INTERRUPTED

if TYPE_CHECKING:
    from .estimator import MDNRegressor

__all__ = ["cmd_demo", "cmd_evaluate", "cmd_export", "cmd_fit", "cmd_predict"]

#: ``--memory-budget`` counts in MB of 2**20 bytes.
MIB = 1 << 20


def cmd_demo(args: argparse.Namespace) -> int:
    from ._demo import run_demo  # imports the estimator and, when it runs, matplotlib

    return run_demo(args)


def cmd_fit(args: argparse.Namespace) -> int:
    with warnings.catch_warnings():
        # fit's "interrupted in epoch ..." warning: the command reports that in its own line.
        warnings.filterwarnings("ignore", message="interrupted in epoch", category=RuntimeWarning)
        return _fit(args)


def _fit(args: argparse.Namespace) -> int:
    from ._fitting import check_params
    from .estimator import DEFAULTS, MDNRegressor

    check_output_path(args.out, option="--out", suffixes=MODEL_SUFFIXES, inputs=[args.data])
    check_output_path(interrupted_path(args.out), option="--out")
    world = _env.world_size()
    size = os.path.getsize(args.data)
    stream = args.stream or size > args.memory_budget * MIB
    if args.val_rows is not None and not stream:
        raise MixtureDensityError(
            "--val-rows applies to streamed fits (--stream, or a file larger than "
            "--memory-budget); in memory, a random 10% of the rows is held out"
        )
    targeted = [o for o, v in _TARGET_OPTIONS(args) if v]
    if stream and targeted:
        raise MixtureDensityError(
            f"{', '.join(targeted)} need(s) an in-memory fit; the file is streamed "
            f"({'--stream' if args.stream else 'larger than --memory-budget'})"
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
        n_components=args.components if args.components is not None else DEFAULTS["n_components"],
        hidden_dims=tuple(args.hidden),
        noise_type=args.noise,
        n_estimators=args.estimators,
        epochs=args.epochs if args.epochs is not None else DEFAULTS["epochs"],
        patience=args.patience if args.patience is not None else DEFAULTS["patience"],
        verbose=not args.quiet,
        random_state=args.seed,
        target_resolution=_resolution(args.resolution),
        target_bounds=_bounds(args.bounds),
    )
    check_params(model)  # bad hyperparameters fail before the data are read
    is_main = _env.rank() == 0
    train: Callable[[], MDNRegressor]
    if stream:
        from ._streaming import fit_streamed, scan_csv

        features, targets = _fit_columns(args, read_header(args.data))
        if is_main:
            reason = (
                "--stream"
                if args.stream
                else f"larger than --memory-budget {args.memory_budget:g} MB"
            )
            print(
                f"streaming {args.data} ({size / MIB:.3g} MB, {reason}) in chunks of "
                f"{args.chunk_rows} rows"
            )
        data = scan_csv(
            args.data, features, targets, chunk_rows=args.chunk_rows, val_rows=args.val_rows
        )
        n_rows, streamed = data.n_rows, data

        def train() -> MDNRegressor:
            return fit_streamed(model, data)

    else:
        table = Table(args.data)
        features, targets = _fit_columns(args, table.header)
        X, y, y_upper = read_data(args, table, features, targets)
        del table  # the text of every cell: several times the size of X and y
        Y = y[:, 0] if len(targets) == 1 else y
        n_rows, streamed = X.shape[0], None

        def train() -> MDNRegressor:
            # MDNRegressor.fit trains in this process only; under torchrun the same fit
            # trains data-parallel (DDP) over the ranks.
            if world > 1:
                return model._fit(X, Y, distributed=None, y_upper=y_upper)
            return model.fit(X, Y, y_upper=y_upper)

    if is_main:
        print(
            f"training on {n_rows} rows ({len(features)} features -> {len(targets)} targets); "
            "Ctrl-C stops and keeps the best weights so far",
            flush=True,
        )
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
            f"{where}, {args.noise}: {fitted.plan_.summary()}; {result.epochs_run} epochs "
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
            kind = " (log probability of the grid bins)" if args.resolution else ""
            print(f"validation NLL: {fitted.val_nll_:.4f} nats per row{kind}")
        print(f"wrote {args.out}")

    def keep_interrupted(fitted: MDNRegressor) -> int:
        """An interrupted fit: ``--out`` stays as it was; the best weights go elsewhere."""
        result = fitted.fit_results_[0]
        if result.best_epoch >= 1:
            path = interrupted_path(args.out)
            fitted.save(path, metadata={"features": features, "targets": targets})
            kept = f"the best weights so far (epoch {result.best_epoch}) are in {path}"
        else:
            kept = "no epoch finished, nothing was written"
        print(
            f"mdn: {_signals.describe()} in epoch {result.epochs_run + 1}; {args.out} is "
            f"unchanged; {kept}",
            file=sys.stderr,
        )
        return _signals.exit_status()

    if world <= 1:
        fitted = train()
        if fitted.fit_results_[0].stop_reason == STOP_INTERRUPTED:
            return keep_interrupted(fitted)
        finish(fitted)
        return 0
    return _fit_distributed(train, finish, keep_interrupted)


def interrupted_path(out: str) -> str:
    """Where an interrupted ``mdn fit --out MODEL`` keeps its best weights: ``MODEL`` with
    ``.interrupted`` before the suffix (``model.pt`` -> ``model.interrupted.pt``)."""
    root, suffix = os.path.splitext(out)
    return f"{root}.interrupted{suffix}"


def _fit_columns(args: argparse.Namespace, header: Sequence[str]) -> tuple[list[str], list[str]]:
    """``(features, targets)`` of ``mdn fit``: named, or every other column (not the
    targets, nor ``--event``/``--upper``)."""
    targets = list(dict.fromkeys(args.target))
    column_indices(args.data, header, targets, "target")
    used = targets + [c for c in (args.event, args.upper) if c is not None]
    if args.features:
        features = list(dict.fromkeys(args.features))
        overlap = sorted(set(features) & set(used))
        if overlap:
            raise MixtureDensityError(
                f"column(s) {', '.join(map(repr, overlap))} are both feature and target "
                "(or --event/--upper)"
            )
        column_indices(args.data, header, features, "feature")
    else:
        features = [name for name in header if name not in used]
        if not features:
            raise MixtureDensityError(f"{args.data}: no feature columns left after the targets")
    return features, targets


# ----------------------------------------------------------------------------------------------
# torchrun: one rank of a data-parallel fit
# ----------------------------------------------------------------------------------------------


def _fit_distributed(
    train: Callable[[], MDNRegressor],
    finish: Callable[[MDNRegressor], None],
    keep_interrupted: Callable[[MDNRegressor], int],
) -> int:
    """Runs ``train`` as one rank of a ``torchrun`` job; rank 0 then runs ``finish``.

    The data have been read and checked on every rank before this, so a bad file fails on
    every rank alike, before any rank waits for another. Training runs under DDP in a
    process group made here (gloo: the command trains on the CPU), which outlives
    :func:`~mixture_density.training.fit` so that a final all-reduce can (1) hold every
    rank until rank 0 has written the model and (2) give every rank rank 0's outcome as
    its exit status. A rank that fails prints one line and exits non-zero: 2 for a user
    error, 1 when training itself failed (a dead or stalled peer: fit raises after
    ``MIXTURE_DENSITY_DIST_TIMEOUT`` seconds at the latest, naming the rank). After Ctrl-C or
    SIGTERM (which reach every rank), no rank waits for another: rank 0 keeps the best
    weights so far as :func:`keep_interrupted` does, and every rank exits with 130 or 143.

    Returns:
        The exit status, only when the process group existed before (``main`` called from
        a program of the caller's that set it up); otherwise the process ends here.
    """
    import torch.distributed as dist

    from . import _distributed

    try:
        ctx = _distributed.setup(None, use_cuda=False)
    except RuntimeError as err:  # rendezvous failed: a peer never came, or the store is gone
        return fail(f"could not join the torchrun job: {err}", EXIT_FAILURE)
    code, trained = 0, False
    try:
        fitted = train()
        trained = True
        if fitted.fit_results_[0].stop_reason == STOP_INTERRUPTED:
            code = keep_interrupted(fitted) if ctx.is_main else _signals.exit_status()
        elif ctx.is_main:
            finish(fitted)
    except (MixtureDensityError, OSError, ValueError) as err:
        code = fail(str(err))
    except RuntimeError as err:  # fit's "fit failed on rank R of W ..." after a peer's failure
        code = fail(str(err), EXIT_FAILURE) if _signals.received() is None else 0
    except KeyboardInterrupt:
        code = 0  # reported below
    if _signals.received() is not None:
        # The peers may be anywhere (in a collective, or gone): wait for none of them.
        if not trained or code not in (130, 143):
            print(f"mdn: {_signals.describe()} (rank {ctx.rank})", file=sys.stderr)
        code = _signals.exit_status()
    elif trained:  # the peers are alive (training's last collective passed): compare outcomes
        import torch

        status = torch.tensor([code], dtype=torch.int64)
        try:
            dist.all_reduce(status, op=dist.ReduceOp.MAX)
            if int(status) and not code:
                code = fail("rank 0 failed after training (see its error message)", int(status))
        except RuntimeError as err:
            code = code or fail(f"lost the other ranks after training: {err}", EXIT_FAILURE)
    if not ctx.created_group:
        return code
    if _signals.received() is None:
        with contextlib.suppress(RuntimeError):
            _distributed.teardown(ctx)
    # torch 2.13 on CPU: a process that used DDP over gloo sometimes aborts while the
    # interpreter shuts down ("terminate called without an active exception", SIGABRT),
    # after all of its work is done (docs/scaling.md, "Exit"); a bare DDP script does it
    # too. The model is written and the group destroyed, so end the process here, skipping
    # that shutdown, so that the exit status says what happened.
    exit_now(code)


def _TARGET_OPTIONS(args: argparse.Namespace) -> list[tuple[str, Any]]:  # noqa: N802
    return [
        ("--resolution", args.resolution),
        ("--bounds", args.bounds),
        ("--event", args.event),
        ("--upper", args.upper),
        ("--missing drop", args.missing == "drop"),
    ]


def _resolution(values: Sequence[float] | None) -> float | list[float] | None:
    """``--resolution H [H ...]``: one spacing for every target, or one per target."""
    if not values:
        return None
    return float(values[0]) if len(values) == 1 else [float(v) for v in values]


def _bounds(pairs: Sequence[Sequence[float | None]] | None) -> Any:
    """``--bounds LO HI`` (repeated: one pair per target)."""
    if not pairs:
        return None
    return tuple(pairs[0]) if len(pairs) == 1 else [tuple(p) for p in pairs]


def read_data(
    args: argparse.Namespace, table: Table, features: Sequence[str], targets: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``X (n, d)``, ``y (n, D)`` (NaN: a missing target, ``D > 1``) and ``y_upper (n, 1)``
    (from ``--event`` or ``--upper``, else ``None``) of ``mdn fit`` and ``mdn evaluate``.

    A missing feature cell, or a row with no target value, is an error naming its line;
    ``--missing drop`` drops those rows instead and says how many.
    """
    drop = args.missing == "drop"
    X = table.numeric(features, "feature", missing=drop)
    y = table.numeric(targets, "target", missing=drop or len(targets) > 1)
    y_upper = None
    if (args.event or args.upper) and len(targets) != 1:
        raise MixtureDensityError(
            f"--event and --upper need one target column, got {len(targets)}: {list(targets)}"
        )
    if args.event and args.upper:
        raise MixtureDensityError("give --event or --upper, not both")
    if args.event:
        event = table.numeric([args.event], "event", missing=drop)[:, 0]
        bad = ~np.isin(event, (0.0, 1.0)) & ~np.isnan(event)
        if bad.any():
            i = int(np.argmax(bad))
            raise MixtureDensityError(
                f"{table.path} line {table.lines[i]}, column {args.event!r} (--event): "
                f"{event[i]:g}; it must be 1 (event observed) or 0 (right-censored)"
            )
        y_upper = np.where(event == 1.0, np.nan, np.where(event == 0.0, np.inf, np.nan))[:, None]
        y[np.isnan(event)] = np.nan  # a row without its event indicator has no target
    elif args.upper:
        y_upper = table.numeric([args.upper], "upper", missing=True, infinite=True)
    keep = ~np.isnan(X).any(1) & ~np.isnan(y).all(1)
    if not keep.all():
        lines = [table.lines[i] for i in np.flatnonzero(~keep)[:5]]
        more = f" and {int((~keep).sum()) - 5} more" if (~keep).sum() > 5 else ""
        if not drop:
            raise MixtureDensityError(
                f"{table.path} line(s) {', '.join(map(str, lines))}{more}: no target value "
                "(every row needs at least one); pass --missing drop to drop such rows"
            )
        print(
            f"dropped {int((~keep).sum())} of {len(keep)} rows with missing cells (--missing drop)"
        )
        if not keep.any():
            raise MixtureDensityError(f"{table.path}: no complete row left after --missing drop")
        X, y = X[keep], y[keep]
        y_upper = None if y_upper is None else y_upper[keep]
    return X, y, y_upper


def _load_model(path: str) -> MDNRegressor:
    from .estimator import MDNRegressor

    return MDNRegressor.load(path, device="cpu")


def _features_of(model: MDNRegressor, table: Table) -> np.ndarray:
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


def cmd_predict(args: argparse.Namespace) -> int:
    check_output_path(
        args.output, option="--output", suffixes=TABLE_SUFFIXES, inputs=[args.model, args.data]
    )
    model = _load_model(args.model)
    X = _features_of(model, Table(args.data))
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
    write_csv(args.output, header, np.concatenate(columns, axis=1))
    if args.output is not None:
        print(f"wrote {n} rows to {args.output}", file=sys.stderr)
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from ._targets import point_masses

    if args.plot is not None:
        check_output_path(
            args.plot, option="--plot", suffixes=figure_suffixes(), inputs=[args.model, args.data]
        )
    model = _load_model(args.model)
    table = Table(args.data)
    targets = model.metadata_.get("targets")
    if targets is None:
        raise MixtureDensityError(
            f"{args.model} stores no target column names (saved without metadata); "
            "evaluate needs a model written by 'mdn fit'"
        )
    features = model.metadata_.get("features")
    if features is None:  # saved from Python without column names: every column, in order
        _features_of(model, table)  # checks the count
        features = table.header
    X, y, y_upper = read_data(args, table, features, targets)
    print(f"rows: {X.shape[0]}")
    spec = model.target_transform_
    plain = all(t["map"] == "identity" and t["resolution"] is None for t in spec)
    if plain and y_upper is None and not np.isnan(y).any():
        _continuous_report(args, model, X, y)
    else:
        _target_report(model, X, y, y_upper)
    resolution = [t["resolution"] for t in spec]
    for d, text, h in point_masses(y, resolution):
        fix = f"--resolution {h:g}" if h else "--resolution"
        print(
            f"note: target {targets[d]!r} has point masses ({text}); a density there can put "
            f"spikes on them and its NLL says nothing about the fit: refit with {fix}"
        )
    return 0


def _continuous_report(args: argparse.Namespace, model: MDNRegressor, X: Any, y: Any) -> None:
    import torch

    from .metrics import energy_score, evaluate

    dist = model._mixture(X)
    y_t = torch.as_tensor(y, dtype=dist.loc.dtype)
    report = evaluate(dist, y_t)
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
        save_figure(fig, args.plot)
        print(f"wrote {args.plot}")


def cmd_export(args: argparse.Namespace) -> int:
    """``mdn export MODEL OUT.onnx``: the model as an ONNX graph (``MDNRegressor.to_onnx``)."""
    check_output_path(args.out, option="OUT.onnx", suffixes=(".onnx",), inputs=[args.model])
    model = _load_model(args.model)
    try:
        model.to_onnx(args.out, opset=args.opset)
    except ModuleNotFoundError as err:
        if (err.name or "").split(".")[0] not in ("onnx", "onnxscript"):
            raise
        raise MixtureDensityError(str(err)) from None
    from ._onnx import output_names

    outputs = ", ".join(output_names(model.noise_type))
    print(
        f"wrote {args.out}: input x (batch, {model.n_features_in_}) float32 -> {outputs} "
        f"(K'={sum(m.n_components for m in model.models_)}, D={model.n_outputs_}, original units)"
    )
    return 0


def _target_report(model: MDNRegressor, X: Any, y: Any, y_upper: Any) -> None:
    """NLL and interval coverage of grid, bounded, censored or partly missing targets."""
    Y = y[:, 0] if y.shape[1] == 1 else y
    nll = -float(np.mean(model.log_prob(X, Y, y_upper)))
    kinds = []
    if any(t["resolution"] is not None for t in model.target_transform_):
        kinds.append("probability mass of the grid values")
    if y_upper is not None:
        kinds.append("survival or interval probability for censored rows")
    if np.isnan(y).any():
        kinds.append("marginal over the observed targets")
    print(f"NLL:  {nll:.4f} nats per row" + (f" ({'; '.join(kinds)})" if kinds else ""))
    exact = ~np.isnan(y)
    if y_upper is not None:
        exact &= np.isnan(y_upper) | (y_upper == y)
    for level in (0.5, 0.9):
        lower, upper = model.predict_interval(X, level)
        lower, upper = lower.reshape(y.shape), upper.reshape(y.shape)
        inside = (lower <= y) & (y <= upper)
        print(
            f"coverage of the central {level:.0%} interval: {inside[exact].mean():.1%} "
            f"({int(exact.sum())} exactly observed values)"
        )
    print("CRPS and calibration: reported for continuous, fully observed targets only")
