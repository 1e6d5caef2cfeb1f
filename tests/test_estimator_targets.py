"""MDNRegressor with targets on a grid, within bounds, censored or partly missing: fits, answers,
errors, the tie warning and model files."""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mixture_density import GaussianMixture, MDNRegressor
from mixture_density._likelihood import TargetDistribution

SMALL = {"n_components": 3, "hidden_dims": (16,), "epochs": 30, "n_estimators": 2}


@pytest.fixture(scope="module")
def grades() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(600, 2))
    y = np.clip(np.round(5 + 1.5 * X[:, 0] + 0.6 * rng.standard_normal(600)), 3, 8)
    return X, y


@pytest.fixture(scope="module")
def proportions() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    X = rng.uniform(-1, 1, size=(600, 1))
    y = 1 / (1 + np.exp(-(2 * X[:, 0] + 0.4 * rng.standard_normal(600))))
    return X, y


def test_grid_fit_scores_masses_and_answers_on_the_grid(
    grades: tuple[np.ndarray, np.ndarray],
) -> None:
    X, y = grades
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a resolution given: no point-mass warning
        est = MDNRegressor(target_resolution=1.0, random_state=0, **SMALL).fit(X, y)
    lp = est.log_prob(X[:50], y[:50])
    assert (lp <= 0).all() and np.isfinite(lp).all()
    # the masses of all grade values of a row sum to one
    all_grades = np.arange(-10.0, 21.0)
    total = sum(np.exp(est.log_prob(X[:5], np.full(5, g))) for g in all_grades)
    np.testing.assert_allclose(total, 1.0, atol=1e-5)
    s = est.sample(X[:5], 200, random_state=0)
    assert (s == np.round(s)).all()
    q = est.predict_quantiles(X[:5], [0.1, 0.5, 0.9])
    assert (q == np.round(q)).all() and (np.diff(q, axis=1) >= 0).all()
    assert isinstance(est.predict_distribution(X[:5]), TargetDistribution)
    assert est.target_transform_[0]["resolution"] == 1.0
    assert est.target_transform_[0]["origin"] == y.min()
    assert math.isfinite(est.val_nll_) and est.val_nll_ > 0  # a log-loss


def test_continuous_fit_on_grades_warns_once_naming_the_resolution(
    grades: tuple[np.ndarray, np.ndarray],
) -> None:
    X, y = grades
    with pytest.warns(UserWarning, match=r"spacing 1\b.*target_resolution=1\b") as record:
        MDNRegressor(random_state=0, **{**SMALL, "epochs": 2}).fit(X, y)
    assert len([w for w in record if "point masses" in str(w.message)]) == 1


def test_no_warning_on_continuous_targets(proportions: tuple[np.ndarray, np.ndarray]) -> None:
    X, y = proportions
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MDNRegressor(random_state=0, **{**SMALL, "epochs": 2}).fit(X, y)


def test_bounded_fit_keeps_samples_and_quantiles_inside(
    proportions: tuple[np.ndarray, np.ndarray],
) -> None:
    X, y = proportions
    est = MDNRegressor(target_bounds=(0, 1), random_state=0, **SMALL).fit(X, y)
    s = est.sample(X[:20], 2000, random_state=0)
    assert ((s > 0) & (s < 1)).all()
    q = est.predict_quantiles(X[:20], [1e-9, 0.5, 1 - 1e-9])
    assert ((q > 0) & (q < 1)).all()
    lo, hi = est.predict_interval(X[:20], 0.9)
    assert ((lo > 0) & (hi < 1) & (lo < hi)).all()
    mean = est.predict(X[:20])
    assert ((mean > 0) & (mean < 1)).all()
    np.testing.assert_allclose(mean, s.mean(0), atol=5 * s.std(0).max() / math.sqrt(2000))
    assert (est.log_prob(X[:3], [0.0, 1.0, 1.5]) == -math.inf).all()
    assert est.target_transform_[0]["map"] == "logit"
    with pytest.raises(ValueError, match="mode"):
        est.predict_mode(X[:2])


def test_bounded_log_prob_is_the_jacobian_of_the_base(
    proportions: tuple[np.ndarray, np.ndarray],
) -> None:
    X, y = proportions
    est = MDNRegressor(target_bounds=(0, 1), random_state=0, **{**SMALL, "epochs": 3}).fit(X, y)
    dist = est.predict_distribution(X[:10])
    assert isinstance(dist, TargetDistribution)
    z = torch.as_tensor(np.log(y[:10] / (1 - y[:10])), dtype=torch.float32)[:, None]
    base = dist.base.log_prob(z).double().numpy()
    np.testing.assert_allclose(
        est.log_prob(X[:10], y[:10]), base - np.log(y[:10] * (1 - y[:10])), rtol=1e-6
    )


def test_positive_target_with_values_on_the_floor_needs_a_grid() -> None:
    rng = np.random.default_rng(2)
    X = rng.uniform(-1, 1, size=(300, 1))
    counts = rng.poisson(np.exp(1 + X[:, 0])).astype(float)  # zeros included
    with pytest.raises(ValueError, match=r"outside target_bounds \(0, inf\).*target_resolution"):
        MDNRegressor(target_bounds=(0, None), **SMALL).fit(X, counts)
    est = MDNRegressor(target_bounds=(0, None), target_resolution=1, random_state=0, **SMALL)
    est.fit(X, counts)
    s = est.sample(X[:10], 500, random_state=0)
    assert (s >= 0).all() and (s == np.round(s)).all()
    mass = sum(np.exp(est.log_prob(X[:4], np.full(4, k))) for k in range(0, 200))
    np.testing.assert_allclose(mass, 1.0, atol=1e-4)


def test_censoring_removes_the_bias_of_ignoring_it() -> None:
    # Log-normal times, median exp(1 + x); independent censoring hits about half the rows.
    rng = np.random.default_rng(0)
    n = 3000
    X = rng.uniform(-1, 1, size=(n, 1))
    T = np.exp(1 + X[:, 0] + 0.5 * rng.standard_normal(n))
    C = np.exp(1.2 + 0.5 * rng.standard_normal(n))
    t, event = np.minimum(T, C), T <= C
    assert 0.3 < 1 - event.mean() < 0.7
    upper = np.where(event, np.nan, np.inf)
    kw = {"target_bounds": (0, None), "random_state": 0, "n_components": 2,
          "hidden_dims": (16,), "epochs": 60, "n_estimators": 1}  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        honest = MDNRegressor(**kw).fit(X, t, y_upper=upper)
        naive = MDNRegressor(**kw).fit(X, t)
    grid = np.linspace(-0.9, 0.9, 19)[:, None]
    truth = 1 + grid[:, 0]  # log of the true median
    err_honest = np.log(honest.predict_quantiles(grid, 0.5)[:, 0]) - truth
    err_naive = np.log(naive.predict_quantiles(grid, 0.5)[:, 0]) - truth
    # Ignoring censoring pulls the median down, most where censoring is heaviest (large x).
    assert np.mean(err_naive) < -0.15
    assert abs(np.mean(err_honest)) < 0.06
    assert np.max(np.abs(err_honest)) < np.max(np.abs(err_naive))
    # and the censored likelihood prefers the honest fit on fresh data
    X2 = rng.uniform(-1, 1, size=(n, 1))
    T2 = np.exp(1 + X2[:, 0] + 0.5 * rng.standard_normal(n))
    C2 = np.exp(1.2 + 0.5 * rng.standard_normal(n))
    t2, up2 = np.minimum(T2, C2), np.where(T2 <= C2, np.nan, np.inf)
    assert honest.log_prob(X2, t2, up2).mean() > naive.log_prob(X2, t2, up2).mean() + 0.05


def test_missing_targets_are_fitted_and_scored_through_marginals() -> None:
    rng = np.random.default_rng(3)
    n = 800
    X = rng.uniform(-1, 1, size=(n, 2))
    Y = np.stack([X[:, 0], X[:, 0] + X[:, 1]], 1) + 0.2 * rng.standard_normal((n, 2))
    Y[rng.random(n) < 0.25, 0] = np.nan
    Y[rng.random(n) < 0.25, 1] = np.nan
    empty = np.isnan(Y).all(1)
    Y[empty, 1] = rng.normal(size=empty.sum())  # every row keeps one observed entry
    for noise in ("diagonal", "full"):
        est = MDNRegressor(noise_type=noise, random_state=0, **SMALL).fit(X, Y)
        assert math.isfinite(est.val_nll_)
        lp = est.log_prob(X[:40], Y[:40])
        gm = est.predict_distribution(X[:40])
        assert isinstance(gm, GaussianMixture)
        with pytest.raises(ValueError, match="no observed entry in row 1"):
            est.log_prob(X[:2], [[0.0, 1.0], [np.nan, np.nan]])
        for i in range(40):
            seen = [d for d in range(2) if not np.isnan(Y[i, d])]
            one = gm.marginal(seen).log_prob(torch.as_tensor(Y[i, seen], dtype=torch.float32))
            assert lp[i] == pytest.approx(float(one[i]), rel=1e-5, abs=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "fit", "match"),
    [
        ({"target_resolution": 0}, {}, r"target_resolution must be > 0"),
        ({"target_resolution": [1.0, 1.0]}, {}, r"target_resolution has 2 entries.*D = 1"),
        ({"target_bounds": (1, 0)}, {}, r"target_bounds must have lo < hi"),
        ({"target_bounds": [(0, 1), (0, 2)]}, {}, r"target_bounds has 2 entries.*D = 1"),
        ({"target_bounds": (0, 1)}, {}, r"outside target_bounds \(0, 1\) in rows 0, 2"),
        ({}, {"y_upper": [2.0, 0.0, 3.0, 4.0, 5.0, 6.0]}, r"y_upper must be >= y.*row 1"),
        ({}, {"y": [[1.0, 2.0]] * 6, "y_upper": [9.0] * 6}, r"y_upper .* needs one target"),
        ({}, {"y": [[1.0, np.nan], [np.nan, np.nan]] * 3}, r"no observed entry in rows 1, 3"),
        ({"noise_regularization": 0.1}, {"y_upper": [np.inf] * 6}, r"noise_regularization"),
    ],
)
def test_bad_targets_raise_naming_the_argument(
    kwargs: dict[str, object], fit: dict[str, object], match: str
) -> None:
    X = np.arange(12.0).reshape(6, 2)
    y = fit.pop("y", [1.0, 0.5, 2.0, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=match):
        MDNRegressor(**{**SMALL, "epochs": 1}, **kwargs).fit(X, y, **fit)  # type: ignore[arg-type]


def test_missing_feature_is_an_error_naming_the_column() -> None:
    pd = pytest.importorskip("pandas")
    X = pd.DataFrame({"a": [1.0, 2.0, 3.0, 4.0], "b": [1.0, np.nan, 3.0, np.nan]})
    with pytest.raises(ValueError, match=r"X contains NaN in column 1 \('b'\), rows 1, 3"):
        MDNRegressor(**{**SMALL, "epochs": 1}).fit(X, [1.0, 2.0, 3.0, 4.0])


def test_full_covariance_refuses_two_grid_outputs() -> None:
    rng = np.random.default_rng(0)
    X, Y = rng.normal(size=(40, 1)), np.round(rng.normal(size=(40, 2)))
    est = MDNRegressor(noise_type="full", target_resolution=1.0, **{**SMALL, "epochs": 1})
    with pytest.raises(ValueError, match="at most one binned or censored output"):
        est.fit(X, Y)


def test_plain_fit_is_unchanged_by_the_new_parameters() -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(200, 2)), rng.normal(size=200)
    a = MDNRegressor(random_state=0, **SMALL).fit(X, y)
    b = MDNRegressor(random_state=0, target_resolution=None, target_bounds=None, **SMALL)
    b.fit(X, y, y_upper=None)
    np.testing.assert_array_equal(a.log_prob(X, y), b.log_prob(X, y))
    assert isinstance(a.predict_distribution(X[:2]), GaussianMixture)
    assert a.target_transform_ == [
        {"map": "identity", "lower": None, "upper": None, "resolution": None, "origin": None,
         "shift": float(a.y_mean_[0]), "scale": float(a.y_scale_[0])}
    ]  # fmt: skip


def test_model_file_records_and_restores_the_targets(
    tmp_path: Path, grades: tuple[np.ndarray, np.ndarray]
) -> None:
    X, y = grades
    est = MDNRegressor(target_resolution=1.0, target_bounds=(2.5, None), random_state=0, **SMALL)
    est.fit(X[:300], y[:300])
    path = tmp_path / "m.pt"
    est.save(path)
    back = MDNRegressor.load(path)
    assert back.target_transform_ == est.target_transform_
    assert back.get_params()["target_bounds"] == [2.5, None]
    np.testing.assert_array_equal(back.log_prob(X[:20], y[:20]), est.log_prob(X[:20], y[:20]))
    np.testing.assert_array_equal(
        back.sample(X[:5], 10, random_state=1), est.sample(X[:5], 10, random_state=1)
    )
    # The targets are part of the checksummed configuration.
    raw = path.read_bytes()
    assert b'"resolution": 1.0' in raw or b'"resolution":1.0' in raw
    tampered = raw.replace(b'"resolution": 1.0', b'"resolution": 2.0')
    assert tampered != raw
    (tmp_path / "t.pt").write_bytes(tampered)
    with pytest.raises(Exception, match="corrupted"):
        MDNRegressor.load(tmp_path / "t.pt")


def test_plain_model_file_has_no_targets_entry(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 1)), rng.normal(size=50)
    est = MDNRegressor(random_state=0, **{**SMALL, "epochs": 2}).fit(X, y)
    est.save(tmp_path / "m.pt")
    from mixture_density._serialization import read_checkpoint

    config, _ = read_checkpoint(tmp_path / "m.pt")
    assert "targets" not in config and config["version"] == 2
    assert "target_resolution" not in config["params"]
    json.dumps(config)  # what older readers parse
