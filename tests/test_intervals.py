"""Interval probabilities of mixtures (censored, binned, partly missing points) against scipy and
mpmath in float64, far tails included."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import stats

from mixture_density import GaussianMixture
from mixture_density._search import interval_component_log_prob, log1mexp, log_ndtr_diff

F64 = torch.float64
INF = math.inf


def _mp_log_diff(a: float, b: float) -> float:
    """log(Phi(b) - Phi(a)) with 1000 significant digits (1 - Phi(40) needs about 350)."""
    with mpmath.workdps(1000):
        return float(mpmath.log(mpmath.ncdf(b) - mpmath.ncdf(a)))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (-1.0, 1.0),
        (0.3, 0.30001),  # narrow, above the median
        (-40.0, -39.0),  # far lower tail: Phi(-39) is about 1e-333, below float64
        (39.0, 40.0),  # far upper tail: 1 - Phi(39) underflows, Phi(40) - Phi(39) too
        (-38.5, -38.4999),  # narrow and far out
        (5.0, 60.0),
        (-3.0, 30.0),  # straddles the median
        (-1e-8, 1e-8),  # tiny, at the median
    ],
)
def test_log_ndtr_diff_matches_mpmath(a: float, b: float) -> None:
    got = log_ndtr_diff(torch.tensor(a, dtype=F64), torch.tensor(b, dtype=F64)).item()
    expected = _mp_log_diff(a, b)
    # Relative error of the log: ~eps |log Phi(b)| / (log Phi(b) - log Phi(a)) at worst (the
    # narrow intervals); 1e-9 leaves room for that and fails on any lost digit elsewhere.
    assert got == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_log1mexp_both_branches() -> None:
    x = torch.tensor([-1e-300, -1e-10, -0.5, -math.log(2.0), -1.0, -40.0, -800.0], dtype=F64)
    expected = [float(mpmath.log(-mpmath.expm1(mpmath.mpf(v)))) for v in x.tolist()]
    assert log1mexp(x).tolist() == pytest.approx(expected, rel=1e-13)
    assert log1mexp(torch.tensor([0.0, -INF], dtype=F64)).tolist() == [-INF, 0.0]


def _mixture_1d(rng: np.random.Generator, batch: int, K: int) -> tuple[np.ndarray, ...]:
    w = rng.dirichlet(np.ones(K), size=batch)
    mu = rng.normal(0, 2, size=(batch, K))
    sd = rng.uniform(0.2, 2.0, size=(batch, K))
    return w, mu, sd


def test_interval_probability_1d_matches_scipy() -> None:
    rng = np.random.default_rng(0)
    w, mu, sd = _mixture_1d(rng, 50, 3)
    gm = GaussianMixture(
        torch.tensor(np.log(w)), torch.tensor(mu)[..., None], scale=torch.tensor(sd)[..., None]
    )
    lo = rng.normal(0, 2, size=50)
    hi = lo + rng.exponential(1.0, size=50)
    lo[:10], hi[10:20] = -INF, INF  # left- and right-censored rows
    got = gm.log_interval_prob(torch.tensor(lo)[:, None], torch.tensor(hi)[:, None])
    p = (w * (stats.norm.cdf(hi[:, None], mu, sd) - stats.norm.cdf(lo[:, None], mu, sd))).sum(1)
    np.testing.assert_allclose(got.numpy(), np.log(p), rtol=1e-12)
    # The censored rows: survival and cdf from scipy's own log functions.
    surv = (w * stats.norm.sf(lo[:, None], mu, sd)).sum(1)[10:20]
    np.testing.assert_allclose(got.numpy()[10:20], np.log(surv), rtol=1e-12)


def test_interval_probability_far_tail_matches_mpmath() -> None:
    # Two components 50 and 60 standard deviations below the interval: every probability
    # underflows in float64, the log stays exact.
    gm = GaussianMixture(
        torch.log(torch.tensor([0.3, 0.7], dtype=F64)),
        torch.tensor([[-50.0], [-60.0]], dtype=F64),
        scale=torch.ones(2, 1, dtype=F64),
    )
    for lo, hi in [(0.0, 1.0), (0.0, INF), (-INF, -95.0)]:
        got = gm.log_interval_prob(torch.tensor([lo], dtype=F64), torch.tensor([hi], dtype=F64))
        with mpmath.workdps(1000):
            terms = [
                mpmath.mpf(w) * (mpmath.ncdf(hi - m) - mpmath.ncdf(lo - m))
                for w, m in ((0.3, -50.0), (0.7, -60.0))
            ]
            expected = float(mpmath.log(sum(terms)))
        assert got.item() == pytest.approx(expected, rel=1e-11)


def test_box_of_diagonal_mixture_is_product_per_component() -> None:
    rng = np.random.default_rng(1)
    B, K, D = 20, 4, 3
    w = rng.dirichlet(np.ones(K), size=B)
    mu = rng.normal(0, 1, size=(B, K, D))
    sd = rng.uniform(0.3, 1.5, size=(B, K, D))
    gm = GaussianMixture(torch.tensor(np.log(w)), torch.tensor(mu), scale=torch.tensor(sd))
    lo = rng.normal(0, 1, size=(B, D))
    hi = lo + rng.exponential(1.0, size=(B, D))
    lo[:, 2], hi[:, 2] = -INF, INF  # the last coordinate missing: marginalized
    got = gm.log_interval_prob(torch.tensor(lo), torch.tensor(hi)).numpy()
    per_dim = stats.norm.cdf(hi[:, None, :], mu, sd) - stats.norm.cdf(lo[:, None, :], mu, sd)
    expected = np.log((w * per_dim.prod(-1)).sum(-1))
    np.testing.assert_allclose(got, expected, rtol=1e-12)
    marginal = gm.marginal([0, 1]).log_interval_prob(
        torch.tensor(lo[:, :2]), torch.tensor(hi[:, :2])
    )
    np.testing.assert_allclose(got, marginal.numpy(), rtol=1e-12)


def test_point_coordinates_contribute_their_density() -> None:
    # Coordinate 0 observed exactly, coordinate 1 right-censored: sum_k w_k N(y0) S_k(c1).
    rng = np.random.default_rng(2)
    B, K = 10, 3
    w = rng.dirichlet(np.ones(K), size=B)
    mu = rng.normal(0, 1, size=(B, K, 2))
    sd = rng.uniform(0.3, 1.5, size=(B, K, 2))
    gm = GaussianMixture(torch.tensor(np.log(w)), torch.tensor(mu), scale=torch.tensor(sd))
    y0, c1 = rng.normal(size=B), rng.normal(size=B)
    lo = np.stack([y0, c1], 1)
    hi = np.stack([y0, np.full(B, INF)], 1)
    got = gm.log_interval_prob(torch.tensor(lo), torch.tensor(hi)).numpy()
    terms = stats.norm.pdf(y0[:, None], mu[..., 0], sd[..., 0]) * stats.norm.sf(
        c1[:, None], mu[..., 1], sd[..., 1]
    )
    np.testing.assert_allclose(got, np.log((w * terms).sum(1)), rtol=1e-12)


def test_full_covariance_1d_works_and_2d_refuses() -> None:
    gm = GaussianMixture(
        torch.zeros(2, dtype=F64),
        torch.tensor([[0.0], [1.0]], dtype=F64),
        scale_tril=torch.tensor([[[1.0]], [[2.0]]], dtype=F64),
    )
    got = gm.log_interval_prob(torch.tensor([0.0], dtype=F64), torch.tensor([1.0], dtype=F64))
    p = 0.5 * (stats.norm.cdf(1.0) - 0.5) + 0.5 * (stats.norm.cdf(0.0) - stats.norm.cdf(-0.5))
    assert got.item() == pytest.approx(math.log(p), rel=1e-12)
    full = GaussianMixture(torch.zeros(1), torch.zeros(1, 2), scale_tril=torch.eye(2)[None])
    with pytest.raises(ValueError, match=r"D == 1 or elementwise scales.*marginal"):
        full.log_interval_prob(torch.zeros(2), torch.ones(2))


@pytest.mark.parametrize(
    ("low", "high", "match"),
    [
        ([1.0], [0.0], "low <= high"),
        ([math.nan], [0.0], "NaN"),
        ([0.0, 1.0], [1.0, 2.0], "shape"),
    ],
)
def test_bad_ends_raise(low: list[float], high: list[float], match: str) -> None:
    gm = GaussianMixture(torch.zeros(1), torch.zeros(1, 1), scale=torch.ones(1))
    with pytest.raises(ValueError, match=match):
        gm.log_interval_prob(torch.tensor(low), torch.tensor(high))


def test_gradients_are_finite_with_infinite_ends() -> None:
    # Infinite ends never enter the graph: finite gradients, and gradcheck passes.
    loc = torch.tensor([[[0.3], [-1.0]]], dtype=F64, requires_grad=True)  # (1, 2, 1)
    sd = torch.tensor([[[0.7], [1.3]]], dtype=F64, requires_grad=True)
    low = torch.tensor([[-INF], [0.5], [-INF], [0.2], [-0.4]], dtype=F64)  # (5, 1)
    high = torch.tensor([[0.1], [INF], [INF], [0.2], [0.9]], dtype=F64)

    def f(loc: torch.Tensor, sd: torch.Tensor) -> torch.Tensor:
        return interval_component_log_prob(loc, sd, low, high)

    out = f(loc, sd)
    out.sum().backward()
    assert loc.grad is not None and sd.grad is not None
    assert torch.isfinite(loc.grad).all() and torch.isfinite(sd.grad).all()
    assert torch.autograd.gradcheck(f, (loc, sd))
