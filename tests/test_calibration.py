"""Tests for post-hoc recalibration: the PIT map R, the recalibrated distribution, and
``MDNRegressor.calibrate`` bringing a miscalibrated model's coverage to its nominal level."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from mixture_density import GaussianMixture
from mixture_density._calibration import (
    IDENTITY_WEIGHT,
    PITCalibrator,
    RecalibratedDistribution,
)
from mixture_density.estimator import MDNRegressor


def test_map_is_monotone_and_near_identity_for_uniform_pits() -> None:
    rng = np.random.default_rng(0)
    cal = PITCalibrator.fit(rng.uniform(size=10_000))
    u = torch.linspace(0, 1, 1001, dtype=torch.float64)
    r = cal.map(u)
    assert r[0] == 0 and r[-1] == 1 and bool((r[1:] > r[:-1]).all())
    # Through the empirical quantiles of 10^4 uniform draws: within a few 1/sqrt(n) of u.
    assert float((r - u).abs().max()) < 0.02
    torch.testing.assert_close(cal.inverse(r), u, rtol=0, atol=1e-12)
    slope = cal.log_slope(u).exp()
    assert float(slope.min()) > 0.5 and float(slope.max()) < 1.5


def test_map_slopes_are_bounded_whatever_the_pits() -> None:
    cal = PITCalibrator.fit(np.full(400, 0.5))  # every PIT value the same
    smallest_step = min(b - a for a, b in itertools.pairwise(cal.values))
    slopes = cal.log_slope(torch.linspace(0, 1, 999, dtype=torch.float64)).exp()
    # Each step of R rises by a level step over at most the whole of [0, 1], and over at
    # least IDENTITY_WEIGHT times that level step.
    assert float(slopes.min()) >= smallest_step - 1e-12
    assert float(slopes.max()) == pytest.approx(1 / IDENTITY_WEIGHT)
    assert PITCalibrator.from_config(cal.to_config()) == cal
    with pytest.raises(ValueError, match="increase strictly"):
        PITCalibrator.from_config({"values": [0.0, 0.7, 0.6, 1.0], "n": 3})


def test_recalibrated_intervals_cover_their_level_on_few_rows() -> None:
    """An over-confident model (PIT values Phi(1.4 z): its 90% interval covers 76%)
    recalibrated on 40 rows: the 90% and 50% intervals cover their levels in expectation
    (mean over 400 calibration samples, exact coverage of each interval under the true PIT
    law; the standard error of the mean is about 0.002)."""
    rng = np.random.default_rng(0)
    s = 1.4
    covers = []
    for _ in range(400):
        cal = PITCalibrator.fit(stats.norm.cdf(s * rng.standard_normal(40)))
        ends = cal.inverse(torch.tensor([0.05, 0.95, 0.25, 0.75], dtype=torch.float64))
        true_cdf = stats.norm.cdf(stats.norm.ppf(ends.numpy()) / s)  # P(U <= end)
        covers.append([true_cdf[1] - true_cdf[0], true_cdf[3] - true_cdf[2]])
    c90, c50 = np.mean(covers, axis=0)
    assert abs(c90 - 0.90) < 0.01 and abs(c50 - 0.50) < 0.01, (c90, c50)


@pytest.fixture()
def recalibrated() -> RecalibratedDistribution:
    base = GaussianMixture(
        torch.tensor([[0.0, 1.0]], dtype=torch.float64),
        torch.tensor([[[-1.0], [2.0]]], dtype=torch.float64),
        scale=torch.tensor([[[0.5], [1.5]]], dtype=torch.float64),
    )
    rng = np.random.default_rng(1)
    return RecalibratedDistribution(base, PITCalibrator.fit(rng.beta(2.0, 1.0, size=500)))


def test_recalibrated_density_cdf_and_quantiles_agree(
    recalibrated: RecalibratedDistribution,
) -> None:
    def density(y: float) -> float:
        v = torch.tensor([[y]], dtype=torch.float64)
        return float(recalibrated.log_prob(v).exp())

    # The density R'(F) f jumps where F crosses a grid point of R: integrate between them.
    m = recalibrated.calibrator.steps
    grid = torch.arange(1, m, dtype=torch.float64)[:, None] / m
    inner = recalibrated.base.icdf(grid)[:, 0, 0].tolist()
    pieces = [-40.0, *inner, 50.0]
    parts = [integrate.quad(density, a, b, limit=200)[0] for a, b in itertools.pairwise(pieces)]
    assert sum(parts) == pytest.approx(1.0, abs=1e-8)
    q = torch.tensor([[0.05], [0.5], [0.95]], dtype=torch.float64)
    x = recalibrated.icdf(q)  # (3, 1, 1)
    torch.testing.assert_close(recalibrated.cdf(x), q, rtol=0, atol=1e-8)
    # The mean by quadrature of the quantile function against integrating y g(y).
    first = sum(integrate.quad(lambda y: y * density(y), a, b, limit=200)[0]
                for a, b in itertools.pairwise(pieces))  # fmt: skip
    assert float(recalibrated.mean) == pytest.approx(first, abs=2e-3)


def test_recalibrated_samples_follow_its_cdf(recalibrated: RecalibratedDistribution) -> None:
    torch.manual_seed(0)
    draws = recalibrated.sample((4000,))  # (4000, 1, 1)
    u = recalibrated.cdf(draws).reshape(-1).numpy()
    assert stats.kstest(u, "uniform").pvalue > 0.01


def heavy_tailed(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, 1))
    return X, np.sin(2 * X[:, 0]) + 0.3 * rng.standard_t(2, size=n)


def coverage(model: MDNRegressor, X: np.ndarray, y: np.ndarray, level: float) -> float:
    lo, hi = model.predict_interval(X, level)
    return float(np.mean((y >= lo) & (y <= hi)))


def test_calibrate_brings_coverage_to_nominal(tmp_path: Path) -> None:
    # A single Gaussian component on Student-t(2) noise: its 50% intervals are too wide and
    # its 90% intervals... the PIT values are far from uniform, and calibrate must fix both.
    X, y = heavy_tailed(6000, seed=0)
    model = MDNRegressor(n_components=1, n_estimators=1, hidden_dims=(16,), epochs=40,
                         random_state=0).fit(X[:1000], y[:1000])  # fmt: skip
    X_cal, y_cal, X_new, y_new = X[1000:3000], y[1000:3000], X[3000:], y[3000:]
    before = {level: coverage(model, X_new, y_new, level) for level in (0.5, 0.9)}
    assert abs(before[0.5] - 0.5) > 0.04  # miscalibrated to start with
    model.calibrate(X_cal, y_cal)
    after = {level: coverage(model, X_new, y_new, level) for level in (0.5, 0.9)}
    # 3000 new rows: a binomial SE of about 0.009 (50%) and 0.0055 (90%).
    assert after[0.5] == pytest.approx(0.5, abs=0.03)
    assert after[0.9] == pytest.approx(0.9, abs=0.02)
    # log_prob and the intervals come from one recalibrated distribution.
    assert np.mean(model.log_prob(X_new, y_new)) > -1e9
    quantiles = model.predict_quantiles(X_new[:5], [0.05, 0.95])
    lo, _ = model.predict_interval(X_new[:5], 0.9)
    np.testing.assert_array_equal(quantiles[:, 0], lo)
    # Saved and loaded, the recalibration stays.
    model.save(tmp_path / "m.pt")
    loaded = MDNRegressor.load(tmp_path / "m.pt")
    np.testing.assert_array_equal(loaded.predict_quantiles(X_new[:5], [0.05, 0.95]), quantiles)
    np.testing.assert_array_equal(loaded.log_prob(X_new[:5], y_new[:5]),
                                  model.log_prob(X_new[:5], y_new[:5]))  # fmt: skip
    assert model.predict(X_new[:5]).shape == (5,) and model.sample(X_new[:5], 3).shape == (3, 5)


def test_cross_fitted_calibration_on_the_training_rows() -> None:
    # No rows to spare: calibrate(X, y, cv=4) on the 400 training rows themselves. The PIT
    # values come from 4 copies fitted on 300 rows each; the model is not refitted.
    X, y = heavy_tailed(4400, seed=2)
    params = dict(n_components=1, n_estimators=1, hidden_dims=(16,), epochs=40, random_state=0)
    model = MDNRegressor(**params).fit(X[:400], y[:400])
    X_new, y_new = X[400:], y[400:]
    mode = model.predict_mode(X_new[:5])
    before = {level: coverage(model, X_new, y_new, level) for level in (0.5, 0.9)}
    assert abs(before[0.5] - 0.5) > 0.04
    model.calibrate(X[:400], y[:400], cv=4)
    assert model.calibrator_.n == 400
    np.testing.assert_array_equal(model.predict_mode(X_new[:5]), mode)  # same network
    after = {level: coverage(model, X_new, y_new, level) for level in (0.5, 0.9)}
    # 4000 new rows (binomial SE 0.008 and 0.005). The copies saw 25% fewer rows, and
    # their PIT values on unseen rows spread more than the model's will, so the map errs
    # wide (here 0.84 -> 0.56 and 0.98 -> 0.95); it must move both intervals at least a
    # third of the way to their level, and not past it.
    for level in (0.5, 0.9):
        assert level <= after[level] < before[level] - (before[level] - level) / 3
    # The same folds and fits again: the same map.
    again = MDNRegressor(**params).fit(X[:400], y[:400]).calibrate(X[:400], y[:400], cv=4)
    assert again.calibrator_ == model.calibrator_
    with pytest.raises(ValueError, match="at least 2 folds"):
        model.calibrate(X[:400], y[:400], cv=1)
    with pytest.raises(TypeError, match="cv must be None or an integer"):
        model.calibrate(X[:400], y[:400], cv="4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least 30 rows"):
        model.calibrate(X[:25], y[:25], cv=30)


def test_calibrate_refuses_what_it_cannot_do() -> None:
    X, y = heavy_tailed(200, seed=1)
    model = MDNRegressor(n_components=1, n_estimators=1, hidden_dims=(8,), epochs=3,
                         random_state=0).fit(X, y)  # fmt: skip
    with pytest.raises(ValueError, match="at least 20 rows"):
        model.calibrate(X[:19], y[:19])
    far = y[:30].copy()
    far[[3, 7]] = 1e30  # beyond float32's range after squaring: zero density
    with pytest.raises(ValueError, match=r"rows \[3, 7\]"):
        model.calibrate(X[:30], far)
    two = MDNRegressor(n_components=1, hidden_dims=(8,), epochs=3).fit(X, np.c_[y, y])
    with pytest.raises(ValueError, match="one continuous output"):
        two.calibrate(X, np.c_[y, y])


def test_recalibrated_mixture_mean_is_the_integral_of_its_quantiles() -> None:
    """The closed-form mean (partial first moments between the knots' quantiles) equals the
    quantile function integrated numerically (midpoint rule, 200,000 points), float64."""
    g = torch.Generator().manual_seed(0)
    gm = GaussianMixture(
        torch.randn(7, 4, generator=g, dtype=torch.float64),
        torch.randn(7, 4, 1, generator=g, dtype=torch.float64),
        scale=torch.rand(7, 4, 1, generator=g, dtype=torch.float64) + 0.1,
    )
    dist = RecalibratedDistribution(gm, PITCalibrator.fit(np.random.default_rng(0).beta(2, 3, 400)))
    k = 200_000
    q = ((torch.arange(k, dtype=torch.float64) + 0.5) / k).view(k, 1).expand(k, 7)
    torch.testing.assert_close(dist.mean[..., 0], dist.icdf(q).mean(0)[..., 0], rtol=0, atol=1e-6)


def test_interval_ends_are_knots_and_old_files_read_uniform() -> None:
    """The 50% and 90% interval ends are levels of R: their recalibrated PIT values are the
    PIT quantiles at plotting position q (n + 1) (numpy's "weibull" method), not an
    interpolation across a step; a calibrator saved without a grid (equal steps) maps as
    before."""
    pit = np.random.default_rng(1).beta(0.5, 0.5, size=40)  # overconfident: PITs at the ends
    cal = PITCalibrator.fit(pit)
    m = 6  # round(sqrt(40))
    assert set((0.05, 0.25, 0.75, 0.95)) <= set(cal.values) and len(cal.grid) == m + 1 + 4
    for q in (0.05, 0.25, 0.75, 0.95):
        w = IDENTITY_WEIGHT
        expected = (1 - w) * np.quantile(pit, q, method="weibull") + w * q
        got = cal.inverse(torch.tensor([q], dtype=torch.float64)).item()
        assert got == pytest.approx(expected, rel=1e-12)
    assert PITCalibrator.from_config(cal.to_config()) == cal
    old = PITCalibrator.from_config({"values": [0.0, 0.3, 0.5, 1.0], "n": 30})
    u = torch.tensor([0.0, 1 / 6, 0.5, 0.9, 1.0], dtype=torch.float64)
    torch.testing.assert_close(old.map(u), torch.tensor([0.0, 0.15, 0.4, 0.85, 1.0],
                               dtype=torch.float64))  # fmt: skip
    assert old.log_slope(torch.tensor([0.1])).exp().item() == pytest.approx(0.9)
    with pytest.raises(ValueError, match="same length"):
        PITCalibrator.from_config({"values": [0.0, 0.5, 1.0], "n": 30, "grid": [0.0, 1.0]})
