"""Tests of the targets benchmark harness (benchmarks/targets.py): the AFT likelihoods it scores
lifelines' models with, and its tables."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import targets


@pytest.mark.parametrize("kind", ["weibull_aft", "lognormal_aft"])
def test_aft_log_likelihood_is_lifelines_own(kind: str) -> None:
    pd = pytest.importorskip("pandas")
    lifelines = pytest.importorskip("lifelines")
    rng = np.random.default_rng(0)
    n = 400
    Z = pd.DataFrame({"a": rng.normal(size=n), "b": rng.uniform(size=n)})
    T = np.exp(1 + 0.5 * Z["a"] - Z["b"] + 0.6 * rng.normal(size=n)).to_numpy()
    C = np.exp(1.2 + 0.5 * rng.normal(size=n))
    t, e = np.minimum(T, C), (T <= C).astype(float)
    fitter = {
        "weibull_aft": lifelines.WeibullAFTFitter,
        "lognormal_aft": lifelines.LogNormalAFTFitter,
    }
    model = fitter[kind]().fit(Z.assign(T=t, E=e), "T", "E")
    ll = targets.aft_log_likelihood(kind, model.params_, Z, t, e)
    assert ll.shape == (n,)
    assert ll.sum() == pytest.approx(model.log_likelihood_, rel=1e-10)


def test_report_pairs_against_the_first_method() -> None:
    rows = [
        {"dataset": "d", "split": s, "method": m, "metric": "logloss", "value": v,
         "fit_seconds": 1.0}
        for s, (a, b) in enumerate([(0.9, 1.0), (0.8, 1.1), (1.0, 0.95)])
        for m, v in (("ours", a), ("theirs", b))
    ]  # fmt: skip
    table = targets.report(rows)
    assert "| ours | logloss | 0.900 ± 0.058 |  |" in table
    assert "| theirs | logloss | 1.017 ± 0.044 | -0.117 ± 0.101 (2/3) |" in table
