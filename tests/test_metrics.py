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

from mixture_density import GaussianMixture
from mixture_density.metrics import (
    calibration_error,
    coverage_from_pit,
    crps,
    crps_gaussian_mixture,
    energy_score,
    energy_score_from_samples,
    evaluate,
    interval_coverage,
    mixture_cdf,
    nll,
    pit,
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
    with pytest.raises(ValueError, match=r"y must have shape \(\*obs, 4, 3\)"):
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


def _sample(
    logits: torch.Tensor, loc: torch.Tensor, tril: torch.Tensor, n: int, gen: torch.Generator
) -> torch.Tensor:
    """(n, *batch, D) draws of the sampler energy_score uses, GaussianMixture.sample."""
    return GaussianMixture(logits, loc, scale_tril=tril).sample((n,), generator=gen)


def test_sample_mixture_moments() -> None:
    logits, loc, tril = _full_covariance_mixture(seed=10)
    n = 40_000
    x = _sample(logits, loc, tril, n, torch.Generator().manual_seed(0))  # (n, 3, 2)
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
    a = _sample(logits, loc, tril, 50, torch.Generator().manual_seed(3))
    b = _sample(logits, loc, tril, 50, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(state, torch.get_rng_state())


def test_sampled_energy_score_matches_independent_reference() -> None:
    """Our sampler + U-statistic vs numpy draws with independent pairs, full covariances."""
    logits, loc, tril = _full_covariance_mixture(seed=12)
    y = torch.tensor([[0.0, 0.0], [1.0, -2.0], [4.0, 3.0]], dtype=F64)
    x = _sample(logits, loc, tril, 2000, torch.Generator().manual_seed(1))
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


# ------------------------------------------------------------------------------------------
# Wrappers taking a GaussianMixture
# ------------------------------------------------------------------------------------------


def _gm(batch: tuple[int, ...], K: int, D: int, kind: str, seed: int) -> GaussianMixture:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(*batch, K, generator=gen, dtype=F64)
    loc = 2 * torch.randn(*batch, K, D, generator=gen, dtype=F64)
    diag = 0.3 + torch.rand(*batch, K, D, generator=gen, dtype=F64)
    if kind == "scale":
        return GaussianMixture(logits, loc, scale=diag)
    lower = 0.5 * torch.randn(*batch, K, D, D, generator=gen, dtype=F64).tril(-1)
    tril = lower + torch.diag_embed(diag)
    if kind == "scale_tril":
        return GaussianMixture(logits, loc, scale_tril=tril)
    precision = torch.cholesky_inverse(tril)  # (L L^T)^-1
    return GaussianMixture(logits, loc, precision_tril=torch.linalg.cholesky(precision))


def test_nll_matches_torch_mixture() -> None:
    dist = _gm((7,), 3, 2, "scale_tril", seed=20)
    y = torch.randn(7, 2, dtype=F64)
    ref = -dist.to_torch().log_prob(y)
    assert nll(dist, y) == pytest.approx(ref.mean().item(), abs=1e-12)
    assert nll(dist, y, reduction="sum") == pytest.approx(ref.sum().item(), abs=1e-12)
    torch.testing.assert_close(nll(dist, y, reduction="none"), ref, rtol=1e-12, atol=1e-12)
    # Any torch distribution with a vector event works.
    assert nll(dist.to_torch(), y) == pytest.approx(ref.mean().item(), abs=1e-12)


@pytest.mark.parametrize("kind", ["scale", "scale_tril", "precision_tril"])
def test_crps_and_pit_use_exact_marginals(kind: str) -> None:
    dist = _gm((2, 5), 3, 3, kind, seed=21)
    y = 2 * torch.randn(2, 5, 3, dtype=F64)
    values = crps(dist, y, reduction="none")
    u = pit(dist, y)
    assert values.shape == u.shape == (2, 5, 3)
    for d in range(3):
        marginal = dist.marginal([d])
        cov_dd = dist.component_covariance_matrix[..., d, d]
        ref = crps_gaussian_mixture(dist.logits, dist.loc[..., d], cov_dd.sqrt(), y[..., d])
        torch.testing.assert_close(values[..., d], ref, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(u[..., d], marginal.cdf(y[..., d : d + 1]), rtol=1e-12, atol=0)
    assert crps(dist, y) == pytest.approx(values.mean().item(), abs=1e-14)


def test_one_dimensional_targets_may_drop_the_event_dim() -> None:
    dist = _gm((6,), 2, 1, "scale", seed=22)
    y = torch.randn(6, dtype=F64)
    assert crps(dist, y, reduction="none").shape == (6,)
    assert pit(dist, y).shape == (6,)
    torch.testing.assert_close(pit(dist, y), pit(dist, y[:, None])[:, 0])
    assert nll(dist, y) == pytest.approx(nll(dist, y[:, None]))


def test_leading_observation_dims_score_against_the_same_forecast() -> None:
    dist = _gm((), 3, 2, "scale", seed=23)
    y = torch.randn(40, 2, dtype=F64)
    per_row = crps(dist, y, reduction="none")
    assert per_row.shape == (40, 2)
    expanded = dist.expand(torch.Size([40]))
    torch.testing.assert_close(per_row, crps(expanded, y, reduction="none"))
    assert nll(dist, y, reduction="none").shape == (40,)
    gen = torch.Generator().manual_seed(0)
    assert energy_score(dist, y, n_samples=50, generator=gen, reduction="none").shape == (40,)


def test_inputs_are_converted_to_the_distribution_dtype() -> None:
    dist = _gm((4,), 2, 1, "scale", seed=24)
    low = GaussianMixture(dist.logits.float(), dist.loc.float(), scale=dist.scale.float())
    y = np.linspace(-1, 1, 4)  # float64 numpy into a float32 distribution
    values = crps(low, y, reduction="none")
    assert values.dtype == torch.float32
    torch.testing.assert_close(values.double(), crps(dist, y, reduction="none"), atol=1e-5, rtol=0)
    assert pit(dist, [0, 1, 2, 3]).dtype == F64  # integer lists too


@pytest.mark.parametrize(
    ("shape", "pattern"),
    [((5, 2), r"got \(5, 2\)"), ((4, 3), r"got \(4, 3\)"), ((2,), r"got \(2,\)")],
)
@pytest.mark.parametrize("metric", ["nll", "crps", "pit", "energy_score", "interval_coverage"])
def test_bad_shapes_raise(shape: tuple[int, ...], pattern: str, metric: str) -> None:
    dist = _gm((4,), 2, 2, "scale", seed=25)
    fn = {
        "nll": nll,
        "crps": crps,
        "pit": pit,
        "energy_score": energy_score,
        "interval_coverage": interval_coverage,
    }[metric]
    with pytest.raises(ValueError, match=r"y must have shape \(\*obs, 4, 2\).*" + pattern):
        fn(dist, torch.zeros(shape, dtype=F64))


def test_bad_arguments_raise() -> None:
    dist = _gm((4,), 2, 1, "scale", seed=26)
    y = torch.zeros(4, 1, dtype=F64)
    with pytest.raises(ValueError, match="reduction"):
        crps(dist, y, reduction="median")  # type: ignore[call-overload]
    with pytest.raises(ValueError, match="n_samples"):
        energy_score(dist, y, n_samples=1)
    with pytest.raises(ValueError, match="levels"):
        interval_coverage(dist, y, levels=(95,))


def test_pit_of_own_samples_is_uniform_and_detects_a_shift() -> None:
    """KS test at alpha = 0.01 (fixed seed); a 0.3-sigma shift must be rejected."""
    dist = _gm((3000,), 3, 2, "scale_tril", seed=27)
    y = dist.sample()  # (3000, 2), one draw per row
    u = pit(dist, y)
    for d in range(2):
        assert stats.kstest(u[:, d].numpy(), "uniform").pvalue > 0.01
    shifted = pit(dist, y + 0.3 * dist.stddev)
    assert stats.kstest(shifted[:, 0].numpy(), "uniform").pvalue < 1e-6


def test_interval_coverage_is_nominal_for_own_samples() -> None:
    dist = _gm((4000,), 3, 1, "scale", seed=28)
    y = dist.sample()
    levels = (0.5, 0.8, 0.9, 0.95)
    coverage = interval_coverage(dist, y, levels)
    assert list(coverage) == list(levels)
    for level, observed in coverage.items():
        assert abs(observed - level) < 4 * math.sqrt(level * (1 - level) / 4000), (level, observed)


def test_interval_coverage_agrees_with_quantile_intervals() -> None:
    """Cross-check the PIT shortcut against icdf-based intervals of the mixture."""
    dist = _gm((500,), 3, 1, "scale", seed=29)
    y = 1.5 * dist.sample()
    coverage = interval_coverage(dist, y, (0.5, 0.9))
    for level in (0.5, 0.9):
        lo = dist.icdf(torch.full((500,), (1 - level) / 2, dtype=F64))
        hi = dist.icdf(torch.full((500,), (1 + level) / 2, dtype=F64))
        inside = ((y >= lo) & (y <= hi)).double().mean().item()
        assert coverage[level] == pytest.approx(inside, abs=1e-12)


def test_calibration_error_separates_calibrated_from_overdispersed() -> None:
    dist = _gm((3000,), 2, 1, "scale", seed=30)
    y = dist.sample()
    wide = GaussianMixture(dist.logits, dist.loc, scale=3 * dist.scale)
    assert calibration_error(dist, y) < 0.02
    assert calibration_error(wide, y) > 0.1


def test_energy_score_equals_crps_in_one_dimension() -> None:
    """Per-row differences ES - CRPS have mean 0; test the mean at 4 standard errors."""
    dist = _gm((40,), 3, 1, "scale", seed=31)
    y = 2 * torch.randn(40, 1, dtype=F64)
    gen = torch.Generator().manual_seed(31)
    es = energy_score(dist, y, n_samples=1000, generator=gen, reduction="none")
    diff = es - crps(dist, y, reduction="none")[:, 0]
    assert diff.abs().max() < 0.35  # about 5 Monte Carlo standard errors of one row
    assert diff.mean().abs() < 4 * diff.std() / math.sqrt(40)


def test_energy_score_prefers_the_true_distribution() -> None:
    dist = _gm((400,), 3, 2, "scale_tril", seed=32)
    y = dist.sample()
    shifted = GaussianMixture(dist.logits, dist.loc + 0.5, scale_tril=dist.scale_tril)
    gen = torch.Generator().manual_seed(32)
    true_es = energy_score(dist, y, n_samples=200, generator=gen, reduction="none")
    shifted_es = energy_score(shifted, y, n_samples=200, generator=gen, reduction="none")
    gap = shifted_es - true_es
    assert gap.mean() > 4 * gap.std() / math.sqrt(400)


def test_energy_score_same_for_equivalent_parameterizations() -> None:
    """Same covariances through scale_tril and precision_tril: same draws, same score."""
    a, b = _gm((3,), 2, 2, "scale_tril", seed=35), _gm((3,), 2, 2, "precision_tril", seed=35)
    y = torch.randn(3, 2, dtype=F64)
    es_a = energy_score(a, y, n_samples=300, generator=torch.Generator().manual_seed(0))
    es_b = energy_score(b, y, n_samples=300, generator=torch.Generator().manual_seed(0))
    assert es_a == pytest.approx(es_b, abs=1e-10)
    # An unbatched mixture scored on a single observation.
    single = _gm((), 3, 2, "scale", seed=36)
    gen = torch.Generator().manual_seed(0)
    assert energy_score(single, torch.zeros(2), generator=gen, reduction="none").shape == ()


def test_energy_score_is_reproducible_with_a_generator() -> None:
    dist = _gm((5,), 2, 3, "scale", seed=33)
    y = torch.randn(5, 3, dtype=F64)
    state = torch.get_rng_state()
    a = energy_score(dist, y, n_samples=64, generator=torch.Generator().manual_seed(1))
    b = energy_score(dist, y, n_samples=64, generator=torch.Generator().manual_seed(1))
    assert a == b
    assert torch.equal(state, torch.get_rng_state())


def test_crps_is_differentiable_for_training() -> None:
    logits = torch.zeros(8, 2, dtype=F64, requires_grad=True)
    loc = torch.randn(8, 2, 1, dtype=F64, requires_grad=True)
    scale = torch.ones(8, 2, 1, dtype=F64, requires_grad=True)
    dist = GaussianMixture(logits, loc, scale=scale)
    crps(dist, torch.randn(8, dtype=F64), reduction="none").mean().backward()
    for p in (logits, loc, scale):
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


def test_evaluate_reports_consistent_numbers() -> None:
    dist = _gm((50,), 2, 2, "scale", seed=34)
    y = dist.sample()
    report = evaluate(dist, y, levels=(0.5, 0.9))
    assert set(report) == {"nll", "crps", "calibration_error", "coverage_0.5", "coverage_0.9"}
    assert report["nll"] == pytest.approx(nll(dist, y))
    assert report["crps"] == pytest.approx(crps(dist, y))
    assert report["calibration_error"] == pytest.approx(calibration_error(dist, y))
    assert report["coverage_0.9"] == interval_coverage(dist, y, (0.9,))[0.9]
    assert all(isinstance(v, float) for v in report.values())
