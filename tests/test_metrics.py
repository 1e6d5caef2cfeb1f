"""Tests for mixture_density.metrics against independent float64 references.

References: properscoring (CRPS of a Gaussian), scipy.integrate.quad of the CRPS integral,
numpy brute-force energy scores, scipy.stats.kstest for PIT uniformity, binomial error bars
for interval coverage.
"""

from __future__ import annotations

import math

import numpy as np
import properscoring
import pytest
import torch
from scipy import integrate, stats

from mixture_density.metrics import (
    _sample_mixture,
    coverage_from_pit,
    crps_gaussian_mixture,
    energy_score_from_samples,
    mixture_cdf,
)

F64 = torch.float64


def _random_mixture(
    batch: tuple[int, ...], K: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*batch, K, generator=gen, dtype=F64)
    loc = 3.0 * torch.randn(*batch, K, generator=gen, dtype=F64)
    scale = 0.2 + torch.rand(*batch, K, generator=gen, dtype=F64)
    return logits, loc, scale


def _numpy_cdf(w: np.ndarray, mu: np.ndarray, s: np.ndarray, z: float) -> float:
    return float(np.sum(w * stats.norm.cdf(z, loc=mu, scale=s)))


def _crps_by_quadrature(w: np.ndarray, mu: np.ndarray, s: np.ndarray, y: float) -> float:
    """CRPS = int (F(z) - 1{z >= y})^2 dz, split at y where the integrand jumps."""
    opts = {"epsabs": 1e-13, "epsrel": 1e-13, "limit": 200}
    below, _ = integrate.quad(lambda z: _numpy_cdf(w, mu, s, z) ** 2, -np.inf, y, **opts)
    above, _ = integrate.quad(lambda z: (1.0 - _numpy_cdf(w, mu, s, z)) ** 2, y, np.inf, **opts)
    return below + above


# ------------------------------------------------------------------------------------------
# mixture_cdf
# ------------------------------------------------------------------------------------------


def test_mixture_cdf_matches_scipy() -> None:
    logits, loc, scale = _random_mixture((50,), 3, seed=1)
    y = 4.0 * torch.randn(50, dtype=F64)
    ours = mixture_cdf(logits, loc, scale, y).numpy()
    w = torch.softmax(logits, -1).numpy()
    ref = [_numpy_cdf(w[i], loc[i].numpy(), scale[i].numpy(), y[i].item()) for i in range(50)]
    np.testing.assert_allclose(ours, ref, rtol=1e-12, atol=1e-14)


def test_mixture_cdf_far_tails_stay_in_unit_interval() -> None:
    logits, loc, scale = _random_mixture((2,), 3, seed=2)
    values = mixture_cdf(logits, loc, scale, torch.tensor([-1e3, 1e3], dtype=F64))
    assert values[0] >= 0 and values[0] < 1e-100
    assert values[1] == 1.0


# ------------------------------------------------------------------------------------------
# CRPS
# ------------------------------------------------------------------------------------------


def test_crps_single_gaussian_matches_properscoring() -> None:
    gen = torch.Generator().manual_seed(3)
    mu = torch.randn(200, 1, generator=gen, dtype=F64)
    sigma = 0.05 + 2 * torch.rand(200, 1, generator=gen, dtype=F64)
    y = 3 * torch.randn(200, generator=gen, dtype=F64)
    ours = crps_gaussian_mixture(torch.zeros_like(mu), mu, sigma, y).numpy()
    ref = properscoring.crps_gaussian(y.numpy(), mu[:, 0].numpy(), sigma[:, 0].numpy())
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-10)


def test_crps_three_components_matches_numerical_integration() -> None:
    logits, loc, scale = _random_mixture((6,), 3, seed=4)
    # Observations in the bulk, between modes and far in a tail.
    y = torch.tensor([0.0, 1.3, -2.5, 5.0, -9.0, 14.0], dtype=F64)
    ours = crps_gaussian_mixture(logits, loc, scale, y).numpy()
    w = torch.softmax(logits, -1).numpy()
    ref = [
        _crps_by_quadrature(w[i], loc[i].numpy(), scale[i].numpy(), y[i].item()) for i in range(6)
    ]
    np.testing.assert_allclose(ours, ref, rtol=0, atol=1e-8)


def test_crps_is_unnormalized_logit_invariant_and_broadcasts() -> None:
    logits, loc, scale = _random_mixture((2, 3), 4, seed=6)
    y = torch.randn(2, 3, dtype=F64)
    base = crps_gaussian_mixture(logits, loc, scale, y)
    shifted = crps_gaussian_mixture(logits + 7.0, loc, scale, y)
    assert base.shape == (2, 3)
    torch.testing.assert_close(base, shifted, rtol=1e-12, atol=1e-12)
    # Scalar y broadcast against (2, 3) batches.
    scalar = crps_gaussian_mixture(logits, loc, scale, torch.tensor(0.25, dtype=F64))
    assert scalar.shape == (2, 3)


def test_crps_gradcheck() -> None:
    logits, loc, scale = _random_mixture((3,), 2, seed=7)
    y = torch.randn(3, dtype=F64)
    params = [t.clone().requires_grad_() for t in (logits, loc, scale, y)]
    assert torch.autograd.gradcheck(crps_gaussian_mixture, params)


def test_crps_float32_close_to_float64() -> None:
    logits, loc, scale = _random_mixture((100,), 3, seed=8)
    y = 3 * torch.randn(100, dtype=F64)
    ref = crps_gaussian_mixture(logits, loc, scale, y)
    low = crps_gaussian_mixture(logits.float(), loc.float(), scale.float(), y.float())
    assert low.dtype == torch.float32
    torch.testing.assert_close(low.double(), ref, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------
# Energy score (sample based)
# ------------------------------------------------------------------------------------------


def test_energy_score_from_samples_matches_brute_force() -> None:
    rng = np.random.default_rng(9)
    samples = rng.normal(size=(30, 4, 3))
    y = rng.normal(size=(4, 3))
    fit = np.linalg.norm(samples - y, axis=-1).mean(0)
    pair = np.linalg.norm(samples[:, None] - samples[None, :], axis=-1).sum((0, 1)) / (30 * 29)
    ours = energy_score_from_samples(torch.from_numpy(samples), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(ours, fit - 0.5 * pair, rtol=1e-12)


def test_energy_score_from_samples_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match=r"y must have shape \(4, 3\)"):
        energy_score_from_samples(torch.zeros(10, 4, 3), torch.zeros(4, 2))
    with pytest.raises(ValueError, match="n >= 2"):
        energy_score_from_samples(torch.zeros(1, 4, 3), torch.zeros(4, 3))


def _full_covariance_mixture(
    seed: int, batch: int = 3, K: int = 2, D: int = 2
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(batch, K, generator=gen, dtype=F64)
    loc = 2 * torch.randn(batch, K, D, generator=gen, dtype=F64)
    tril = torch.randn(batch, K, D, D, generator=gen, dtype=F64).tril()
    diag = 0.3 + torch.rand(batch, K, D, generator=gen, dtype=F64)
    tril = tril.tril(-1) + torch.diag_embed(diag)
    return logits, loc, tril


def test_sample_mixture_moments() -> None:
    logits, loc, tril = _full_covariance_mixture(seed=10)
    n = 40_000
    x = _sample_mixture(logits, loc, tril, n, torch.Generator().manual_seed(0))  # (n, 3, 2)
    assert x.shape == (n, 3, 2)
    w = torch.softmax(logits, -1)
    mean = (w.unsqueeze(-1) * loc).sum(-2)  # (3, 2)
    cov_k = tril @ tril.transpose(-1, -2)
    second = (w[..., None, None] * (cov_k + loc.unsqueeze(-1) * loc.unsqueeze(-2))).sum(-3)
    cov = second - mean.unsqueeze(-1) * mean.unsqueeze(-2)  # (3, 2, 2)
    # Moments within 5 standard errors.
    se_mean = (cov.diagonal(dim1=-2, dim2=-1) / n).sqrt()
    assert ((x.mean(0) - mean).abs() < 5 * se_mean).all()
    emp_cov = torch.einsum("nbi,nbj->bij", x - x.mean(0), x - x.mean(0)) / (n - 1)
    var = cov.diagonal(dim1=-2, dim2=-1)
    se_cov = ((var.unsqueeze(-1) * var.unsqueeze(-2) + cov.square()) / n).sqrt() * 2
    assert ((emp_cov - cov).abs() < 5 * se_cov).all()


def test_sample_mixture_generator_reproducible_and_leaves_global_rng() -> None:
    logits, loc, tril = _full_covariance_mixture(seed=11)
    state = torch.get_rng_state()
    a = _sample_mixture(logits, loc, tril, 50, torch.Generator().manual_seed(3))
    b = _sample_mixture(logits, loc, tril, 50, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(state, torch.get_rng_state())


def test_sampled_energy_score_matches_independent_reference() -> None:
    """Our sampler + U-statistic vs numpy draws with independent pairs, full covariances."""
    logits, loc, tril = _full_covariance_mixture(seed=12)
    y = torch.tensor([[0.0, 0.0], [1.0, -2.0], [4.0, 3.0]], dtype=F64)
    x = _sample_mixture(logits, loc, tril, 2000, torch.Generator().manual_seed(1))
    ours = energy_score_from_samples(x, y).numpy()

    rng = np.random.default_rng(12)
    w, mu, L = torch.softmax(logits, -1).numpy(), loc.numpy(), tril.numpy()
    n = 200_000

    def draw(i: int) -> np.ndarray:
        comp = rng.choice(2, size=n, p=w[i])
        return mu[i][comp] + np.einsum("nij,nj->ni", L[i][comp], rng.normal(size=(n, 2)))

    for i in range(3):
        a, b = draw(i), draw(i)
        fit = np.linalg.norm(a - y[i].numpy(), axis=-1)
        pair = np.linalg.norm(a - b, axis=-1)
        ref = fit.mean() - 0.5 * pair.mean()
        # Standard error of ours (2000 samples) dominates; bound it by the per-draw spread.
        se = math.sqrt((fit.var() + 0.25 * pair.var()) / 2000)
        assert abs(ours[i] - ref) < 5 * se, (i, ours[i], ref, se)


# ------------------------------------------------------------------------------------------
# Coverage from PIT
# ------------------------------------------------------------------------------------------


def test_coverage_from_pit_counts_central_intervals() -> None:
    u = torch.tensor([0.01, 0.2, 0.3, 0.5, 0.74, 0.96])
    cov = coverage_from_pit(u, levels=(0.5, 0.9))
    assert cov == {0.5: pytest.approx(3 / 6), 0.9: pytest.approx(4 / 6)}


@pytest.mark.parametrize("levels", [(), (0.0,), (1.0,), (0.5, 1.2)])
def test_coverage_from_pit_rejects_bad_levels(levels: tuple[float, ...]) -> None:
    with pytest.raises(ValueError, match="levels"):
        coverage_from_pit(torch.rand(10), levels=levels)
