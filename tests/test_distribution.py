"""Tests for GaussianMixture against torch.distributions and scipy references."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from scipy import integrate, optimize, stats
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from mixture_density import _kernels, _math, _search
from mixture_density._triangular import PackedPrecisionTrilComponents
from mixture_density.distribution import GaussianMixture

NOISE = ["full_tril", "full_precision", "diagonal", "isotropic", "shared", "fixed"]
BATCH = [(), (3,), (2, 3)]
SAMPLE = [(), (5,)]
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def _spd(batch: tuple[int, ...], K: int, D: int, dtype: torch.dtype) -> torch.Tensor:
    A = torch.randn(*batch, K, D, D, dtype=torch.float64)
    cov = A @ A.transpose(-1, -2) / D + 0.5 * torch.eye(D, dtype=torch.float64)
    return cov.to(dtype)


def make(
    noise: str,
    batch: tuple[int, ...],
    K: int,
    D: int,
    dtype: torch.dtype = torch.float64,
) -> tuple[GaussianMixture, MixtureSameFamily]:
    """Our mixture and the equivalent torch MixtureSameFamily (built independently)."""
    logits = torch.randn(*batch, K, dtype=dtype)
    loc = torch.randn(*batch, K, D, dtype=dtype)
    mix = Categorical(logits=logits)
    if noise in ("full_tril", "full_precision"):
        cov = _spd(batch, K, D, torch.float64)
        ref_comp = MultivariateNormal(loc, covariance_matrix=cov.to(dtype))
        if noise == "full_tril":
            gm = GaussianMixture(logits, loc, scale_tril=torch.linalg.cholesky(cov).to(dtype))
        else:
            # lower P with P P^T = Sigma^{-1}, computed in float64 by a reference route.
            P = torch.linalg.cholesky(torch.linalg.inv(cov)).to(dtype)
            gm = GaussianMixture(logits, loc, precision_tril=P)
        return gm, MixtureSameFamily(mix, ref_comp)
    shapes = {
        "diagonal": (*batch, K, D),
        "isotropic": (*batch, K, 1),
        "shared": (*batch, 1, 1),
        "fixed": (),
    }
    scale = (torch.rand(shapes[noise], dtype=dtype) + 0.5).to(dtype)
    gm = GaussianMixture(logits, loc, scale=scale)
    full = scale.expand(*batch, K, D)
    return gm, MixtureSameFamily(mix, Independent(Normal(loc, full), 1))


# ----------------------------------------------------------------- reference grid


@pytest.mark.parametrize("noise", NOISE)
@pytest.mark.parametrize("batch", BATCH)
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("D", [1, 2, 4])
def test_matches_mixture_same_family(noise: str, batch: tuple[int, ...], K: int, D: int) -> None:
    for dtype in (torch.float64, torch.float32):
        gm, ref = make(noise, batch, K, D, dtype)
        tol = TOL[dtype]
        for sample in SAMPLE:
            y = torch.randn(*sample, *batch, D, dtype=dtype)
            lp = gm.log_prob(y)
            assert lp.shape == (*sample, *batch)
            assert lp.dtype == dtype
            torch.testing.assert_close(lp, ref.log_prob(y), rtol=tol, atol=tol)
        torch.testing.assert_close(gm.mean, ref.mean, rtol=tol, atol=tol)
        torch.testing.assert_close(gm.variance, ref.variance, rtol=tol, atol=tol)
        # Law of total variance, from the reference components.
        comp = ref.component_distribution
        if isinstance(comp, Independent):
            ccov = torch.diag_embed(comp.base_dist.variance)
        else:
            ccov = comp.covariance_matrix
        dev = comp.mean - ref.mean.unsqueeze(-2)
        w = ref.mixture_distribution.probs[..., None, None]
        cov = (w * (ccov + dev.unsqueeze(-1) * dev.unsqueeze(-2))).sum(-3)
        torch.testing.assert_close(gm.covariance_matrix, cov, rtol=tol, atol=tol)
        torch.testing.assert_close(gm.component_covariance_matrix, ccov, rtol=tol, atol=tol)
        torch.testing.assert_close(
            gm.scale_tril @ gm.scale_tril.transpose(-1, -2), ccov, rtol=tol, atol=tol
        )
        torch.testing.assert_close(
            gm.component_stddev, ccov.diagonal(dim1=-2, dim2=-1).sqrt(), rtol=tol, atol=tol
        )
        torch.testing.assert_close(gm.stddev, gm.variance.sqrt())
        assert gm.batch_shape == batch and gm.event_shape == (D,)
        torch.testing.assert_close(gm.probs.sum(-1), torch.ones(batch, dtype=dtype))
        torch.testing.assert_close(gm.logits.exp(), gm.probs)
        # to_torch gives the same density.
        y = torch.randn(*batch, D, dtype=dtype)
        torch.testing.assert_close(gm.to_torch().log_prob(y), gm.log_prob(y), rtol=tol, atol=tol)


@pytest.mark.parametrize("noise", NOISE)
def test_shape_grid_gradients(noise: str) -> None:
    """Every parameter gets a finite gradient through log_prob and through the moments."""
    for batch in BATCH:
        K, D = 3, 2
        logits = torch.randn(*batch, K, dtype=torch.float64, requires_grad=True)
        loc = torch.randn(*batch, K, D, dtype=torch.float64, requires_grad=True)
        factor, kw = _factor(noise, batch, K, D)
        gm = GaussianMixture(logits, loc, **kw)
        y = torch.randn(5, *batch, D, dtype=torch.float64)
        (gm.log_prob(y).sum() + gm.mean.sum() + gm.variance.sum()).backward()
        for p in (logits, loc, factor):
            assert p.grad is not None and p.grad.shape == p.shape
            assert torch.isfinite(p.grad).all()
            assert p.grad.abs().sum() > 0


def _factor(
    noise: str, batch: tuple[int, ...], K: int, D: int
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    if noise in ("full_tril", "full_precision"):
        t = torch.linalg.cholesky(_spd(batch, K, D, torch.float64)).requires_grad_()
        return t, {"scale_tril" if noise == "full_tril" else "precision_tril": t}
    shapes = {"diagonal": (*batch, K, D), "isotropic": (*batch, K, 1), "shared": (1, 1)}
    t = (torch.rand(shapes.get(noise, ()), dtype=torch.float64) + 0.5).requires_grad_()
    return t, {"scale": t}


def test_scipy_spot_checks() -> None:
    """Independent constants check (the 2 pi term) against scipy.stats in float64."""
    K, D = 3, 3
    gm, _ = make("full_precision", (), K, D)
    cov = gm.component_covariance_matrix.numpy()
    y = np.random.default_rng(0).normal(size=(4, D))
    pdf = sum(
        gm.probs[k].item() * stats.multivariate_normal(gm.loc[k].numpy(), cov[k]).pdf(y)
        for k in range(K)
    )
    np.testing.assert_allclose(gm.log_prob(torch.from_numpy(y)).numpy(), np.log(pdf), rtol=1e-12)
    gd = GaussianMixture(torch.zeros(1), torch.zeros(1, 2), scale=torch.full((1, 2), 2.0))
    ref = stats.multivariate_normal(np.zeros(2), 4 * np.eye(2)).logpdf([0.3, -0.1])
    assert gd.log_prob(torch.tensor([0.3, -0.1])).item() == pytest.approx(ref, rel=1e-6)


# ----------------------------------------------------------------- gradients


@pytest.mark.parametrize("noise", NOISE)
def test_gradcheck(noise: str) -> None:
    batch, K, D = (2,), 3, 2
    logits = torch.randn(*batch, K, dtype=torch.float64, requires_grad=True)
    loc = torch.randn(*batch, K, D, dtype=torch.float64, requires_grad=True)
    factor, kw = _factor(noise, batch, K, D)
    (name,) = kw
    y = torch.randn(4, *batch, D, dtype=torch.float64, requires_grad=True)

    def f(y: torch.Tensor, lg: torch.Tensor, mu: torch.Tensor, fac: torch.Tensor) -> torch.Tensor:
        if name != "scale":
            fac = fac.tril()  # perturbations must stay in the lower triangle
        return GaussianMixture(lg, mu, **{name: fac}).log_prob(y)

    args = (y, logits, loc, factor)
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


@pytest.mark.parametrize("kind", ["diag", "precision"])
@pytest.mark.parametrize("D", [1, 3])
def test_fused_kernels_match_composite(kind: str, D: int) -> None:
    """The fused autograd.Functions equal the composite expressions, values and gradients."""
    batch, K = (3,), 4
    y = torch.randn(2, 5, *batch, D, dtype=torch.float64, requires_grad=True)
    lg = torch.randn(*batch, K, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(*batch, K, D, dtype=torch.float64, requires_grad=True)
    if kind == "diag":
        fac = (torch.rand(K, 1, dtype=torch.float64) + 0.5).requires_grad_()  # broadcast
        fused: Callable[..., torch.Tensor] = _kernels.diag_mixture_log_prob
        comp = _math.diag_component_log_prob
    else:
        fac = torch.linalg.cholesky(_spd(batch, K, D, torch.float64)).requires_grad_()
        fused, comp = _kernels.precision_mixture_log_prob, _math.precision_component_log_prob
    a = fused(y, lg, mu, fac)
    b = _math.mixture_log_prob(lg, comp(y, mu, fac))
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(a)
    ga = torch.autograd.grad(a, (y, lg, mu, fac), g)
    gb = torch.autograd.grad(b, (y, lg, mu, fac), g)
    for u, v in zip(ga, gb):
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------- shapes and errors


def test_rejects_batch_shaped_target_for_1d() -> None:
    """A (B,) target must not broadcast to (B, B) against a (B,) batch."""
    gm = GaussianMixture(torch.zeros(8, 2), torch.zeros(8, 2, 1), scale=torch.ones(8, 2, 1))
    with pytest.raises(ValueError, match=r"value.*\(8,\)"):
        gm.log_prob(torch.zeros(8))
    assert gm.log_prob(torch.zeros(8, 1)).shape == (8,)


def test_rejects_wrong_event_dim_and_batch() -> None:
    gm = GaussianMixture(torch.zeros(3, 2), torch.zeros(3, 2, 4), scale=torch.ones(3, 2, 4))
    with pytest.raises(ValueError, match="value"):
        gm.log_prob(torch.zeros(3, 3))
    with pytest.raises(ValueError, match="batch"):
        gm.log_prob(torch.zeros(5, 4))
    assert gm.log_prob(torch.zeros(7, 1, 4)).shape == (7, 3)  # broadcasting still allowed


def test_parameter_errors() -> None:
    lg, mu = torch.zeros(3, 2), torch.zeros(3, 2, 4)
    with pytest.raises(ValueError, match="exactly one"):
        GaussianMixture(lg, mu)
    with pytest.raises(ValueError, match="exactly one"):
        GaussianMixture(lg, mu, scale=torch.ones(()), scale_tril=torch.eye(4))
    with pytest.raises(ValueError, match=r"loc.*K = logits.shape\[-1\] = 2"):
        GaussianMixture(lg, torch.zeros(3, 5, 4), scale=torch.ones(()))
    with pytest.raises(ValueError, match=r"scale.*\(3, 2, 3\)"):
        GaussianMixture(lg, mu, scale=torch.ones(3, 2, 3))
    with pytest.raises(ValueError, match=r"scale_tril.*\(3, 2, 4, 3\)"):
        GaussianMixture(lg, mu, scale_tril=torch.ones(3, 2, 4, 3))
    with pytest.raises(ValueError, match="broadcast"):
        GaussianMixture(lg, torch.zeros(4, 2, 4), scale=torch.ones(()))
    with pytest.raises(TypeError, match="floating"):
        GaussianMixture(torch.zeros(3, 2, dtype=torch.long), mu, scale=torch.ones(()))


def test_validate_args_non_finite() -> None:
    lg, mu, s = torch.zeros(3, 2), torch.zeros(3, 2, 1), torch.ones(3, 2, 1)
    with pytest.raises(ValueError, match="logits must be finite"):
        GaussianMixture(lg.clone().fill_(math.nan), mu, scale=s, validate_args=True)
    with pytest.raises(ValueError, match="loc must be finite"):
        GaussianMixture(lg, mu.clone().fill_(math.inf), scale=s, validate_args=True)
    with pytest.raises(ValueError, match="scale must be positive"):
        GaussianMixture(lg, mu, scale=-s, validate_args=True)
    with pytest.raises(ValueError, match="scale must be finite"):
        GaussianMixture(lg, mu, scale=s * math.nan, validate_args=True)
    with pytest.raises(ValueError, match="lower triangular"):
        GaussianMixture(lg, mu.expand(3, 2, 2), scale_tril=torch.ones(2, 2), validate_args=True)
    with pytest.raises(ValueError, match="positive diagonal"):
        GaussianMixture(lg, mu.expand(3, 2, 2), precision_tril=-torch.eye(2), validate_args=True)
    gm = GaussianMixture(lg, mu, scale=s, validate_args=True)
    with pytest.raises(ValueError, match="value must be finite"):
        gm.log_prob(torch.full((3, 1), math.nan))
    # Without validation nothing is checked beyond shapes.
    assert GaussianMixture(lg, mu, scale=s * math.nan, validate_args=False).batch_shape == (3,)


def test_half_precision_upcasts_to_float32() -> None:
    for dtype in (torch.float16, torch.bfloat16):
        gm = GaussianMixture(
            torch.zeros(4, 3, dtype=dtype),
            torch.randn(4, 3, 2).to(dtype),
            scale=torch.ones(4, 3, 2, dtype=dtype),
        )
        lp = gm.log_prob(torch.randn(4, 2).to(dtype))
        assert lp.dtype == torch.float32 and torch.isfinite(lp).all()
        assert gm.sample((2,)).dtype == torch.float32


def test_extra_batch_dims_and_expand() -> None:
    gm, ref = make("full_precision", (2, 3), 3, 2)
    y = torch.randn(4, 1, 3, 2, dtype=torch.float64)
    torch.testing.assert_close(gm.log_prob(y), ref.log_prob(y))
    ex = gm.expand((5, 2, 3))
    assert ex.batch_shape == (5, 2, 3)
    torch.testing.assert_close(ex.log_prob(y[0])[0], gm.log_prob(y[0]))
    # Logits shared by the batch broadcast against loc.
    g2 = GaussianMixture(torch.zeros(3), torch.zeros(4, 3, 2), scale=torch.ones(3, 1))
    assert g2.batch_shape == (4,)


def test_scale_is_an_expanded_view() -> None:
    s = torch.ones(1, 1)
    gm = GaussianMixture(torch.zeros(100, 3), torch.zeros(100, 3, 4), scale=s)
    assert gm.scale is not None and gm.scale.shape == (100, 3, 4)
    assert gm.scale.data_ptr() == s.data_ptr() and gm.scale.stride() == (0, 0, 0)


# ----------------------------------------------------------------- numerics


@pytest.mark.parametrize("noise", ["diagonal", "isotropic", "full_tril", "full_precision"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_extreme_values_finite(noise: str, dtype: torch.dtype) -> None:
    """|y - mu| = 1e4 sigma, scales 1e-6 .. 1e3, logits +-1e4: finite values and gradients."""
    K, D = 3, 2
    logits = torch.tensor([1e4, -1e4, 0.0], dtype=dtype, requires_grad=True)
    loc = torch.zeros(K, D, dtype=dtype, requires_grad=True)
    sig = torch.tensor([1e-6, 1e-3, 1e3], dtype=dtype)
    if noise == "diagonal":
        f = sig[:, None].expand(K, D).clone().requires_grad_()
        kw = {"scale": f}
    elif noise == "isotropic":
        f = sig[:, None].clone().requires_grad_()
        kw = {"scale": f}
    elif noise == "full_tril":
        f = (sig[:, None, None] * torch.eye(D, dtype=dtype)).requires_grad_()
        kw = {"scale_tril": f}
    else:
        f = (torch.eye(D, dtype=dtype) / sig[:, None, None]).requires_grad_()
        kw = {"precision_tril": f}
    gm = GaussianMixture(logits, loc, **kw)
    y = torch.tensor([[1e-2, 1e-2], [1e4 * 1e-6, 0.0], [1e7, -1e7], [0.0, 0.0]], dtype=dtype)
    lp = gm.log_prob(y)
    assert torch.isfinite(lp).all()
    lp.sum().backward()
    for p in (logits, loc, f):
        assert p.grad is not None and torch.isfinite(p.grad).all()


# ----------------------------------------------------------------- sampling


@pytest.mark.parametrize("noise", NOISE)
def test_sample_moments(noise: str) -> None:
    """Sample mean/covariance within 5 sigma/sqrt(n) of the exact moments (seed 0)."""
    torch.manual_seed(0)
    gm, _ = make(noise, (2,), 3, 3)
    n = 20000
    x = gm.sample((n,))
    assert x.shape == (n, 2, 3) and x.dtype == torch.float64
    sd = gm.stddev
    assert ((x.mean(0) - gm.mean).abs() <= 5 * sd / math.sqrt(n)).all()
    dev = x - gm.mean
    emp = (dev.unsqueeze(-1) * dev.unsqueeze(-2)).mean(0)  # (2, 3, 3)
    # Standard error of a second moment entry: sqrt(Var[d_i d_j] / n).
    se = (dev.unsqueeze(-1) * dev.unsqueeze(-2)).std(0) / math.sqrt(n)
    assert ((emp - gm.covariance_matrix).abs() <= 5 * se).all()


def test_sample_index_valid_when_float32_probs_sum_below_one() -> None:
    """Regression (searchsorted on a cumsum that ends below 1 returns index K)."""
    K = 10
    logits = 3 * torch.randn(64, K, generator=torch.Generator().manual_seed(0))
    probs = torch.softmax(logits, -1)
    assert (probs.cumsum(-1)[:, -1] < 1).sum() >= 10  # the float32 trap is present
    loc = torch.arange(K, dtype=torch.float32).expand(64, K).unsqueeze(-1)
    gm = GaussianMixture(logits, loc, scale=torch.full((1, 1), 1e-3))
    x = gm.sample((200,))
    assert torch.isfinite(x).all()
    idx = x.round().long()
    assert ((idx >= 0) & (idx < K)).all()
    # Index frequencies follow the weights (no mass moved onto component 0).
    freq = torch.nn.functional.one_hot(idx[..., 0], K).double().mean(0)  # (64, K)
    assert (freq - probs.double()).abs().max() < 5 * math.sqrt(0.25 / 200)


def test_sample_uses_each_component_own_parameters() -> None:
    """Isotropic tiling regression: component k uses its own sigma on every output dim."""
    loc = torch.tensor([[0.0, 0.0], [100.0, 100.0]], dtype=torch.float64)
    scale = torch.tensor([[0.1], [10.0]], dtype=torch.float64)
    gm = GaussianMixture(torch.zeros(2, dtype=torch.float64), loc, scale=scale)
    x = gm.sample((20000,))
    near = x[:, 0] < 50
    assert near.float().mean().item() == pytest.approx(0.5, abs=0.02)
    torch.testing.assert_close(
        x[near].std(0), torch.full((2,), 0.1, dtype=torch.float64), rtol=0.05, atol=0.0
    )
    torch.testing.assert_close(
        x[~near].std(0), torch.full((2,), 10.0, dtype=torch.float64), rtol=0.05, atol=0.0
    )
    # Density: each component is MVN(mu_k, sigma_k^2 I), not sigma tiled across components.
    y = torch.tensor([[0.05, -0.02], [95.0, 103.0]], dtype=torch.float64)
    ref = torch.logsumexp(
        torch.stack(
            [
                MultivariateNormal(
                    loc[k], covariance_matrix=scale[k] ** 2 * torch.eye(2, dtype=torch.float64)
                ).log_prob(y)
                for k in range(2)
            ],
            -1,
        )
        + math.log(0.5),
        -1,
    )
    torch.testing.assert_close(gm.log_prob(y), ref)


def test_ks_1d_samples_against_cdf() -> None:
    torch.manual_seed(1)
    gm = GaussianMixture(
        torch.tensor([0.0, 1.0, -0.5], dtype=torch.float64),
        torch.tensor([[-2.0], [0.5], [3.0]], dtype=torch.float64),
        scale=torch.tensor([[0.5], [1.0], [0.3]], dtype=torch.float64),
    )
    x = gm.sample((3000,)).squeeze(-1).numpy()
    res = stats.kstest(x, lambda v: gm.cdf(torch.from_numpy(v).unsqueeze(-1)).numpy())
    assert res.pvalue > 1e-3


@pytest.mark.parametrize("noise", ["full_tril", "full_precision"])
def test_ks_projection_full(noise: str) -> None:
    """Full-covariance sampler: a 1-D marginal of the samples follows the marginal cdf."""
    torch.manual_seed(2)
    gm, _ = make(noise, (), 3, 3)
    x = gm.sample((3000,))[:, 1].numpy()
    m = gm.marginal([1])
    res = stats.kstest(x, lambda v: m.cdf(torch.from_numpy(v).unsqueeze(-1)).numpy())
    assert res.pvalue > 1e-3


# ----------------------------------------------------------------- cdf / icdf


def _mix1d(dtype: torch.dtype = torch.float64) -> GaussianMixture:
    return GaussianMixture(
        torch.tensor([[0.3, -1.0, 2.0], [0.0, 0.0, 0.0]], dtype=dtype),
        torch.tensor([[[-3.0], [0.0], [4.0]], [[0.0], [1e-3], [-1e-3]]], dtype=dtype),
        scale=torch.tensor([[[0.2], [1.5], [0.7]], [[1e-3], [2.0], [1.0]]], dtype=dtype),
    )


def test_cdf_against_scipy_and_icdf_roundtrip() -> None:
    gm = _mix1d()
    y = torch.linspace(-6, 6, 25, dtype=torch.float64)[:, None, None]  # (25, 1, 1)
    w, mu, sd = gm.probs.numpy(), gm.loc[..., 0].numpy(), gm.component_stddev[..., 0].numpy()
    ref = (w * stats.norm.cdf((y.numpy() - mu) / sd)).sum(-1)
    np.testing.assert_allclose(gm.cdf(y).numpy(), ref, rtol=1e-12, atol=1e-15)
    q = torch.tensor([1e-12, 1e-6, 0.01, 0.3, 0.5, 0.77, 0.99, 1 - 1e-9], dtype=torch.float64)
    q = q[:, None].expand(8, 2)
    x = gm.icdf(q)
    assert x.shape == (8, 2, 1)
    torch.testing.assert_close(gm.cdf(x), q, rtol=1e-9, atol=1e-14)
    for j in range(2):
        for i in (1, 3, 5, 6):
            qi = q[i, j].item()

            def f(v: float, qi: float = qi, j: int = j) -> float:
                return float((w[j] * stats.norm.cdf((v - mu[j]) / sd[j])).sum() - qi)

            r = optimize.brentq(f, -50, 50, xtol=1e-14)
            assert x[i, j, 0].item() == pytest.approx(r, abs=1e-6)
    assert torch.isinf(gm.icdf(torch.tensor([0.0, 1.0], dtype=torch.float64))).all()


def test_icdf_float32() -> None:
    gm = _mix1d(torch.float32)
    q = torch.tensor([0.01, 0.25, 0.5, 0.9], dtype=torch.float32)[:, None].expand(4, 2)
    x = gm.icdf(q)
    x64 = _mix1d().icdf(q.double())
    torch.testing.assert_close(x.double(), x64, rtol=1e-5, atol=1e-5)


def test_cdf_requires_1d() -> None:
    gm, _ = make("diagonal", (), 2, 3)
    with pytest.raises(ValueError, match=r"marginal\(\[d\]\)"):
        gm.cdf(torch.zeros(3, dtype=torch.float64))
    with pytest.raises(ValueError, match="marginal"):
        gm.icdf(torch.tensor(0.5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        _mix1d().icdf(torch.tensor([1.5, 0.5], dtype=torch.float64))


def _scipy_cdf(gm: GaussianMixture) -> Callable[[np.ndarray], np.ndarray]:
    """float64 scipy cdf of each 1-D mixture in gm's batch (B,): x (..., B) -> (..., B)."""
    w = gm.probs.double().numpy()
    mu, sd = gm.loc[..., 0].double().numpy(), gm.component_stddev[..., 0].double().numpy()
    return lambda x: (w * stats.norm.cdf((np.asarray(x)[..., None] - mu) / sd)).sum(-1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_icdf_regression_example(dtype: torch.dtype) -> None:
    """Was 0.2041 (cdf error -4.3e-5) or the bracket midpoint -4.65: the loop returned the
    bisection fallback once the cdf hit q exactly."""
    gm = GaussianMixture(
        torch.tensor([0.0, 1.0, -1.0], dtype=dtype),
        torch.tensor([[-2.0], [0.5], [4.0]], dtype=dtype),
        scale=torch.tensor([[0.3], [1.0], [0.1]], dtype=dtype),
    )
    x = gm.icdf(torch.tensor(0.5, dtype=dtype))
    assert x.shape == (1,) and x.dtype == dtype
    cdf = _scipy_cdf(gm.expand((1,)))
    root = optimize.brentq(lambda v: float(cdf(np.array([v]))[0]) - 0.5, -5, 5, xtol=1e-15)
    assert root == pytest.approx(0.2042956, abs=1e-7)
    assert abs(float(cdf(x.double().numpy())[0]) - 0.5) <= 1e-6
    assert x.item() == pytest.approx(root, abs=4 * torch.finfo(dtype).eps)


def _cdf_minus_q(v: float, w: np.ndarray, mu: np.ndarray, sd: np.ndarray, q: float) -> float:
    return float((w * stats.norm.cdf((v - mu) / sd)).sum() - q)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_icdf_against_scipy_grid(dtype: torch.dtype) -> None:
    """Random mixtures (K = 1..10, scales 1e-3..10) at q from 1e-6 to 1 - 1e-6 against
    scipy's brentq on the float64 mixture cdf: within 1e-6 in probability, plus, in float32,
    the probability of one float32 step at the root (the best a float32 answer can do)."""
    rng = np.random.default_rng(7)
    q_grid = [1e-6, 1e-5, 1e-3, 0.05, 0.2, 0.5, 0.8, 0.95, 1 - 1e-3, 1 - 1e-5, 1 - 1e-6]
    for K in (1, 2, 3, 5, 10):
        M = 8  # mixtures per K, one batch
        gm = GaussianMixture(
            torch.tensor(2.0 * rng.normal(size=(M, K)), dtype=dtype),
            torch.tensor(3.0 * rng.normal(size=(M, K, 1)), dtype=dtype),
            scale=torch.tensor(10.0 ** rng.uniform(-3, 1, size=(M, K, 1)), dtype=dtype),
        )
        q = torch.tensor(q_grid, dtype=dtype)[:, None].expand(len(q_grid), M)
        x = gm.icdf(q)[..., 0].double().numpy()  # (Q, M)
        cdf = _scipy_cdf(gm)
        w, mu = gm.probs.double().numpy(), gm.loc[..., 0].double().numpy()
        sd = gm.component_stddev[..., 0].double().numpy()
        qd = q.double().numpy()
        for i, j in np.ndindex(*qd.shape):
            args = (w[j], mu[j], sd[j], qd[i, j])
            root = optimize.brentq(_cdf_minus_q, -200.0, 200.0, args=args, xtol=1e-15)
            tol = 1e-6
            if dtype == torch.float32:
                pdf = (w[j] * stats.norm.pdf((root - mu[j]) / sd[j]) / sd[j]).sum()
                tol += pdf * np.spacing(np.float32(abs(root)), dtype=np.float32)
            err = abs(cdf(x[i])[j] - qd[i, j])
            assert err <= tol, (K, j, qd[i, j], x[i, j], root, err, tol)


def test_newton_bisect_keeps_an_exact_hit() -> None:
    """f(x) == target exactly: the root is returned, not the bracket midpoint (was 0.125)."""
    identity = lambda x, index: (x, torch.ones_like(x))  # noqa: E731
    lo, hi = torch.tensor([-1.0, -1.0]), torch.tensor([1.0, 1.0])
    r = _search.newton_bisect(identity, torch.tensor([0.25, -0.5]), lo, hi)
    torch.testing.assert_close(r, torch.tensor([0.25, -0.5]), rtol=0.0, atol=0.0)


# ----------------------------------------------------------------- marginal / condition


@pytest.mark.parametrize("noise", NOISE)
def test_marginal_closed_form(noise: str) -> None:
    gm, _ = make(noise, (2,), 3, 4)
    dims = [3, 1]
    m = gm.marginal(dims)
    cov = gm.component_covariance_matrix[..., dims, :][..., dims]
    ref = MixtureSameFamily(
        Categorical(logits=gm.logits), MultivariateNormal(gm.loc[..., dims], cov)
    )
    y = torch.randn(5, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(m.log_prob(y), ref.log_prob(y), rtol=1e-10, atol=1e-10)
    if noise != "full_precision" and noise != "full_tril":
        assert m.parameterization == "scale"
    assert gm.marginal([0, 1]).event_shape == (2,)


def test_marginal_numerical_integration() -> None:
    gm, _ = make("full_precision", (), 2, 2)
    m = gm.marginal([0])
    y0 = 0.3
    val, _ = integrate.quad(
        lambda t: math.exp(gm.log_prob(torch.tensor([y0, t], dtype=torch.float64)).item()),
        -30,
        30,
        epsabs=1e-12,
    )
    assert math.exp(m.log_prob(torch.tensor([y0], dtype=torch.float64)).item()) == pytest.approx(
        val, rel=1e-8
    )


@pytest.mark.parametrize("noise", NOISE)
def test_condition_matches_joint_minus_marginal(noise: str) -> None:
    batch, D = (3,), 4
    gm, _ = make(noise, batch, 3, D)
    b = [2, 0]
    a = [1, 3]
    yb = torch.randn(*batch, 2, dtype=torch.float64)
    c = gm.condition(b, yb)
    assert c.event_shape == (2,) and c.batch_shape == batch
    ya = torch.randn(6, *batch, 2, dtype=torch.float64)
    y = torch.empty(6, *batch, D, dtype=torch.float64)
    y[..., a], y[..., b] = ya, yb
    expected = gm.log_prob(y) - gm.marginal(b).log_prob(yb)
    torch.testing.assert_close(c.log_prob(ya), expected, rtol=1e-9, atol=1e-9)
    if noise not in ("full_tril", "full_precision"):
        assert c.parameterization == "scale"


# ----------------------------------------------------------------- transformations


@pytest.mark.parametrize("noise", NOISE)
def test_affine_change_of_variables(noise: str) -> None:
    gm, _ = make(noise, (2,), 3, 3)
    s = torch.tensor([2.0, -0.5, 3.0], dtype=torch.float64)
    t = torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64)
    g2 = gm.affine(s, t)
    assert g2.parameterization == gm.parameterization
    y = torch.randn(5, 2, 3, dtype=torch.float64)
    expected = gm.log_prob((y - t) / s) - s.abs().log().sum()
    torch.testing.assert_close(g2.log_prob(y), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(g2.mean, gm.mean * s + t)
    assert (g2.scale_tril.diagonal(dim1=-2, dim2=-1) > 0).all()
    g3 = gm.affine(-2.0)  # scalar scale, default shift
    expected = gm.log_prob(y / -2.0) - 3 * math.log(2.0)
    torch.testing.assert_close(g3.log_prob(y), expected, rtol=1e-10, atol=1e-10)
    with pytest.raises(ValueError, match="scale"):
        gm.affine(torch.zeros(3, dtype=torch.float64))


def test_tempered() -> None:
    gm, _ = make("full_precision", (2,), 3, 2)
    t1 = gm.tempered(1.0)
    y = torch.randn(4, 2, 2, dtype=torch.float64)
    torch.testing.assert_close(t1.log_prob(y), gm.log_prob(y))
    tau = 0.25
    t = gm.tempered(tau)
    torch.testing.assert_close(t.logits, torch.log_softmax(gm.logits / tau, -1))
    torch.testing.assert_close(t.component_covariance_matrix, gm.component_covariance_matrix * tau)
    d = GaussianMixture(torch.zeros(2), torch.zeros(2, 1), scale=torch.ones(2, 1)).tempered(4.0)
    torch.testing.assert_close(d.component_stddev, torch.full((2, 1), 2.0))
    with pytest.raises(ValueError, match="temperature"):
        gm.tempered(0.0)


def test_tempered_sampling_matches_sketch_rnn() -> None:
    """sketch-rnn's sampler (Ha & Eck, 2017: ``adjust_temp`` on the weights, then
    ``sigma * sqrt(temp)``), written out in numpy: weights ``pi^(1/tau)`` renormalized and
    standard deviations ``sigma sqrt(tau)``. Our tempered draws have its moments (5 sigma)."""
    pi = np.array([0.6, 0.3, 0.1])
    mu = np.array([-2.0, 0.5, 3.0])
    sigma = np.array([0.4, 1.0, 0.7])
    tau = 0.6
    w = np.exp(np.log(pi) / tau - np.max(np.log(pi) / tau))  # adjust_temp
    w /= w.sum()
    sd = sigma * np.sqrt(tau)
    mean = float(w @ mu)
    var = float(w @ (sd**2 + mu**2)) - mean**2
    gm = GaussianMixture(
        torch.tensor(np.log(pi)),
        torch.tensor(mu)[:, None],
        scale=torch.tensor(sigma)[:, None],
    ).tempered(tau)
    np.testing.assert_allclose(gm.probs.numpy(), w, rtol=1e-12)
    n = 200_000
    draws = gm.sample((n,), generator=torch.Generator().manual_seed(0))[:, 0].numpy()
    assert abs(draws.mean() - mean) < 5 * math.sqrt(var / n)
    fourth = float(np.mean((draws - draws.mean()) ** 4))
    assert abs(draws.var() - var) < 5 * math.sqrt((fourth - var**2) / n)


def _make_any(noise: str, batch: tuple[int, ...], K: int, D: int) -> GaussianMixture:
    """``make`` plus "packed": precision factors given by their packed entries."""
    if noise != "packed":
        return make(noise, batch, K, D)[0]
    _, _, diagonal, off = _packed(batch, K, D)
    logits = torch.randn(*batch, K, dtype=torch.float64)
    loc = torch.randn(*batch, K, D, dtype=torch.float64)
    return GaussianMixture.from_packed_precision_tril(logits, loc, diagonal, off)


@pytest.mark.parametrize("noise", [*NOISE, "packed"])
def test_tempered_two_temperatures(noise: str) -> None:
    """logits / temperature and covariances * scale_temperature, per batch element; the
    default scale_temperature is the temperature (sketch-rnn / world models)."""
    gm = _make_any(noise, (2,), 3, 2)
    y = torch.randn(4, 2, 2, dtype=torch.float64)
    tau = torch.tensor([0.5, 2.0], dtype=torch.float64)
    st = torch.tensor([0.25, 3.0], dtype=torch.float64)
    for t, s in ((tau, st), (tau, None), (0.7, 1.0), (1.0, 0.3)):
        out = gm.tempered(t, s)
        t_ = torch.as_tensor(t, dtype=torch.float64)
        s_ = t_ if s is None else torch.as_tensor(s, dtype=torch.float64)
        assert out.parameterization == gm.parameterization and out.batch_shape == (2,)
        # An independent reference: a scale_tril mixture built from the expected parameters.
        ref = GaussianMixture(
            gm.logits / t_.unsqueeze(-1),
            gm.loc,
            scale_tril=gm.scale_tril * s_.sqrt()[..., None, None, None],
        )
        torch.testing.assert_close(out.log_prob(y), ref.log_prob(y), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(
            out.component_covariance_matrix,
            gm.component_covariance_matrix * s_[..., None, None, None],
            rtol=1e-10,
            atol=1e-12,
        )
    torch.testing.assert_close(gm.tempered(tau).log_prob(y), gm.tempered(tau, tau).log_prob(y))
    with pytest.raises(ValueError, match="scale_temperature must be positive"):
        gm.tempered(1.0, torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="do not broadcast"):
        gm.tempered(torch.ones(3, dtype=torch.float64))


@pytest.mark.parametrize("noise", [*NOISE, "packed"])
def test_cat_components_and_batch(noise: str) -> None:
    """cat: equal-weight average (components) and batch concatenation, same parameterization."""
    parts = [_make_any(noise, (3,), K, 2) for K in (1, 2, 3)]
    y = torch.randn(5, 3, 2, dtype=torch.float64)
    avg = GaussianMixture.cat(parts, dim="components")
    assert avg.n_components == 6 and avg.parameterization == parts[0].parameterization
    expected = torch.logsumexp(torch.stack([m.log_prob(y) for m in parts]), 0) - math.log(3)
    torch.testing.assert_close(avg.log_prob(y), expected, rtol=1e-10, atol=1e-10)
    same_k = [_make_any(noise, b, 2, 2) for b in ((3,), (1,), (2,))]
    joined = GaussianMixture.cat(same_k, dim="batch")
    assert joined.batch_shape == (6,)
    yb = torch.randn(6, 2, dtype=torch.float64)
    expected = torch.cat(
        [m.log_prob(yb[i:j]) for m, (i, j) in zip(same_k, [(0, 3), (3, 4), (4, 6)])]
    )
    torch.testing.assert_close(joined.log_prob(yb), expected, rtol=1e-10, atol=1e-10)
    if noise == "packed":  # the packed entries are joined, not dense factors
        assert isinstance(avg._components, PackedPrecisionTrilComponents)
        assert isinstance(joined._components, PackedPrecisionTrilComponents)
    assert GaussianMixture.cat(parts[:1]) is parts[0]


def test_cat_packed_with_dense_precision() -> None:
    """Packed and dense precision factors join as dense precision factors."""
    packed, dense = _make_any("packed", (3,), 2, 2), _make_any("full_precision", (3,), 2, 2)
    joined = GaussianMixture.cat([packed, dense])
    assert joined.parameterization == "precision_tril"
    y = torch.randn(4, 3, 2, dtype=torch.float64)
    expected = torch.logsumexp(torch.stack([packed.log_prob(y), dense.log_prob(y)]), 0)
    torch.testing.assert_close(joined.log_prob(y), expected - math.log(2))


def test_cdf_is_metrics_mixture_cdf() -> None:
    """One implementation: GaussianMixture.cdf equals metrics.mixture_cdf, clamped to <= 1."""
    from mixture_density.metrics import mixture_cdf

    gm = _mix1d()
    y = torch.tensor([-1e3, -3.0, 0.0, 0.5, 4.0, 1e3], dtype=torch.float64)[:, None, None]
    ours = gm.cdf(y)
    ref = mixture_cdf(gm.logits, gm.loc[..., 0], gm.component_stddev[..., 0], y[..., 0])
    torch.testing.assert_close(ours, ref, rtol=0.0, atol=0.0)
    assert (ours <= 1).all() and (ours[-1] == 1).all() and (ours[0] == 0).all()


def test_cat_errors() -> None:
    a, b = _make_any("diagonal", (3,), 2, 2), _make_any("full_tril", (3,), 2, 2)
    with pytest.raises(ValueError, match="one parameterization"):
        GaussianMixture.cat([a, b])
    with pytest.raises(ValueError, match="dim must be"):
        GaussianMixture.cat([a, a], dim="rows")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="at least one"):
        GaussianMixture.cat([])
    with pytest.raises(ValueError, match="do not join along components"):
        GaussianMixture.cat([a, _make_any("diagonal", (4,), 2, 2)])
    with pytest.raises(ValueError, match="do not join along batch"):
        GaussianMixture.cat([a, _make_any("diagonal", (3,), 3, 2)], dim="batch")


@pytest.mark.parametrize("noise", ["diagonal", "full_tril", "full_precision"])
@pytest.mark.parametrize("grouped", [True, False])
def test_sample_generator_reproducible_and_leaves_global_rng(
    noise: str, grouped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every sampler path takes all its randomness from the generator given."""
    import mixture_density.distribution as distribution

    if not grouped:
        monkeypatch.setattr(distribution, "SAMPLE_MAX_GROUPS", 0)
    gm = _make_any(noise, (2,), 3, 3)
    state = torch.get_rng_state()
    a = gm.sample((50,), generator=torch.Generator().manual_seed(5))
    b = gm.sample((50,), generator=torch.Generator().manual_seed(5))
    c = gm.sample((50,), generator=torch.Generator().manual_seed(6))
    assert torch.equal(state, torch.get_rng_state())
    assert a.shape == (50, 2, 3) and torch.equal(a, b) and not torch.equal(a, c)


@pytest.mark.parametrize("noise", [*NOISE, "packed"])
def test_affine_batched_scale_and_packed(noise: str) -> None:
    """Per-batch-element scales (negative entries too); packed factors stay packed."""
    gm = _make_any(noise, (2,), 3, 3)
    s = torch.tensor([[2.0, -0.5, 3.0], [-1.0, 0.25, 1.5]], dtype=torch.float64)  # (2, 3)
    t = torch.tensor([1.0, 0.0, -2.0], dtype=torch.float64)
    g2 = gm.affine(s, t)
    assert g2.parameterization == gm.parameterization and g2.batch_shape == (2,)
    y = torch.randn(5, 2, 3, dtype=torch.float64)
    expected = gm.log_prob((y - t) / s) - s.abs().log().sum(-1)
    torch.testing.assert_close(g2.log_prob(y), expected, rtol=1e-10, atol=1e-10)
    if noise == "packed":
        assert isinstance(g2._components, PackedPrecisionTrilComponents)
        assert (g2.precision_tril.diagonal(dim1=-2, dim2=-1) > 0).all()


def test_component_posterior() -> None:
    gm, ref = make("diagonal", (3,), 4, 2)
    y = torch.randn(5, 3, 2, dtype=torch.float64)
    r = gm.component_posterior(y)
    comp = ref.component_distribution.log_prob(y.unsqueeze(-2))
    expected = torch.softmax(ref.mixture_distribution.logits + comp, -1)
    torch.testing.assert_close(r, expected)
    torch.testing.assert_close(gm.component_log_prob(y), comp)


# ----------------------------------------------------------------- mode


def _grad_at(gm: GaussianMixture, x: torch.Tensor) -> torch.Tensor:
    x = x.detach().clone().requires_grad_()
    (g,) = torch.autograd.grad(gm.log_prob(x).sum(), x)
    return g


@pytest.mark.parametrize("noise", NOISE)
def test_mode_is_stationary_and_best(noise: str) -> None:
    gm, _ = make(noise, (4,), 3, 2)
    m = gm.mode
    assert m.shape == (4, 2)
    assert _grad_at(gm, m).abs().max() < 1e-6
    at_means = gm.log_prob(gm.loc.movedim(-2, 0))  # (K, 4)
    assert (gm.log_prob(m) >= at_means.max(0).values - 1e-12).all()


def test_mode_bimodal_returns_taller_and_overlapping() -> None:
    # Well separated: the taller (narrower, not heavier) peak wins.
    gm = GaussianMixture(
        torch.log(torch.tensor([0.6, 0.4], dtype=torch.float64)),
        torch.tensor([[0.0], [5.0]], dtype=torch.float64),
        scale=torch.tensor([[2.0], [0.3]], dtype=torch.float64),
    )
    assert gm.mode.item() == pytest.approx(5.0, abs=1e-2)
    assert _grad_at(gm, gm.mode).abs().item() < 1e-8
    # Overlapping: one merged peak between the means.
    gm2 = GaussianMixture(
        torch.zeros(2, dtype=torch.float64),
        torch.tensor([[0.0, 0.0], [1.0, 0.5]], dtype=torch.float64),
        scale=torch.ones(2, 1, dtype=torch.float64),
    )
    torch.testing.assert_close(gm2.mode, torch.tensor([0.5, 0.25], dtype=torch.float64))
    assert _grad_at(gm2, gm2.mode).abs().max() < 1e-8


# ----------------------------------------------------------------- packed precision factors


def _packed(
    batch: tuple[int, ...], K: int, D: int, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(P, covariance, diagonal, strictly lower entries) of well-conditioned components."""
    cov = _spd(batch, K, D, torch.float64)
    P = torch.linalg.cholesky(torch.linalg.inv(cov))
    rows, cols = torch.tril_indices(D, D, offset=-1)
    diagonal, off = P.diagonal(dim1=-2, dim2=-1), P[..., rows, cols]
    return P.to(dtype), cov.to(dtype), diagonal.to(dtype), off.to(dtype)


@pytest.mark.parametrize("batch", BATCH)
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("D", [1, 2, 4])
def test_packed_matches_mixture_same_family(batch: tuple[int, ...], K: int, D: int) -> None:
    """The packed kernel (no sample dims) and the dense fallback (sample dims) both match."""
    for dtype in (torch.float64, torch.float32):
        P, cov, diagonal, off = _packed(batch, K, D, dtype)
        logits = torch.randn(*batch, K, dtype=dtype)
        loc = torch.randn(*batch, K, D, dtype=dtype)
        gm = GaussianMixture.from_packed_precision_tril(logits, loc, diagonal, off)
        ref = MixtureSameFamily(
            Categorical(logits=logits), MultivariateNormal(loc, covariance_matrix=cov)
        )
        assert gm.parameterization == "precision_tril"
        torch.testing.assert_close(gm.precision_tril, P, rtol=0.0, atol=0.0)
        for sample in SAMPLE:
            y = torch.randn(*sample, *batch, D, dtype=dtype)
            lp = gm.log_prob(y)
            assert lp.shape == (*sample, *batch)
            torch.testing.assert_close(lp, ref.log_prob(y), rtol=TOL[dtype], atol=TOL[dtype])
        torch.testing.assert_close(gm.mean, ref.mean, rtol=TOL[dtype], atol=TOL[dtype])
        torch.testing.assert_close(gm.variance, ref.variance, rtol=TOL[dtype], atol=TOL[dtype])


def test_packed_kernel_broadcasts_y_and_matches_dense_gradients() -> None:
    """Values and every gradient equal the dense fused kernel's; y broadcasts over the batch."""
    batch, K, D = (2, 3), 4, 5
    _, _, diagonal, off = _packed(batch, K, D)
    diagonal, off = diagonal.requires_grad_(), off.requires_grad_()
    y = torch.randn(3, D, dtype=torch.float64, requires_grad=True)  # broadcast over batch[0]
    lg = torch.randn(*batch, K, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(K, D, dtype=torch.float64, requires_grad=True)  # shared by the batch
    mu_b = mu.expand(*batch, K, D)
    a = _kernels.packed_precision_mixture_log_prob(y, lg, mu_b, diagonal, off)
    P = _math.tril_from_packed(diagonal, off)
    b = _kernels.precision_mixture_log_prob(y, lg, mu_b, P)
    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(a)
    inputs = (y, lg, mu, diagonal, off)
    for u, v in zip(torch.autograd.grad(a, inputs, g), torch.autograd.grad(b, inputs, g)):
        assert u.shape == v.shape
        torch.testing.assert_close(u, v, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("D", [1, 3])
@pytest.mark.parametrize("sample", SAMPLE)
def test_packed_gradcheck(D: int, sample: tuple[int, ...]) -> None:
    """First and second derivatives of both log_prob routes (packed kernel, dense fallback)."""
    batch, K = (2,), 3
    _, _, diagonal, off = _packed(batch, K, D)
    args = (
        torch.randn(*sample, *batch, D, dtype=torch.float64, requires_grad=True),
        torch.randn(*batch, K, dtype=torch.float64, requires_grad=True),
        torch.randn(*batch, K, D, dtype=torch.float64, requires_grad=True),
        diagonal.requires_grad_(),
        off.requires_grad_(),
    )

    def f(*a: torch.Tensor) -> torch.Tensor:
        return GaussianMixture.from_packed_precision_tril(*a[1:]).log_prob(a[0])

    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)


def test_packed_retained_graph_backward_twice() -> None:
    """A second backward through a retained graph gives the same gradients."""
    _, _, diagonal, off = _packed((4,), 2, 3)
    off.requires_grad_()
    gm = GaussianMixture.from_packed_precision_tril(
        torch.zeros(4, 2, dtype=torch.float64),
        torch.zeros(4, 2, 3, dtype=torch.float64),
        diagonal,
        off,
    )
    lp = gm.log_prob(torch.randn(4, 3, dtype=torch.float64)).sum()
    (g1,) = torch.autograd.grad(lp, off, retain_graph=True)
    (g2,) = torch.autograd.grad(lp, off)
    torch.testing.assert_close(g1, g2, rtol=0.0, atol=0.0)


def test_packed_validation_and_expand() -> None:
    _, _, diagonal, off = _packed((3,), 2, 3)
    logits, loc = torch.zeros(3, 2, dtype=torch.float64), torch.zeros(3, 2, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"off_diagonal must have shape \(\*batch, K, 3\)"):
        GaussianMixture.from_packed_precision_tril(logits, loc, diagonal, off[..., :2])
    with pytest.raises(ValueError, match="diagonal must have shape"):
        GaussianMixture.from_packed_precision_tril(logits, loc, diagonal[..., :2], off)
    with pytest.raises(ValueError, match="diagonal must be positive"):
        GaussianMixture.from_packed_precision_tril(logits, loc, -diagonal, off, validate_args=True)
    with pytest.raises(ValueError, match="off_diagonal must be finite"):
        GaussianMixture.from_packed_precision_tril(
            logits, loc, diagonal, off * math.inf, validate_args=True
        )
    with pytest.raises(TypeError, match=r"diagonal must be a torch\.Tensor"):
        GaussianMixture.from_packed_precision_tril(logits, loc, 1.0, off)  # type: ignore[arg-type]
    gm = GaussianMixture.from_packed_precision_tril(logits, loc, diagonal, off)
    big = gm.expand((5, 3))
    assert big.parameterization == "precision_tril" and big.batch_shape == (5, 3)
    y = torch.randn(5, 3, 3, dtype=torch.float64)
    # gm sees y as 5 samples (dense fallback), big as its batch (packed kernel).
    torch.testing.assert_close(big.log_prob(y), gm.log_prob(y), rtol=1e-12, atol=1e-12)
    # The expanded mixture keeps the packed entries (and with them the packed kernel).
    assert isinstance(big._components, PackedPrecisionTrilComponents)


@pytest.mark.parametrize("noise", NOISE)
def test_precision_tril_every_parameterization(noise: str) -> None:
    """precision_tril is lower triangular with a positive diagonal and P P^T = Sigma^{-1}."""
    gm, _ = make(noise, (2,), 3, 3)
    P = gm.precision_tril
    assert P.shape == (2, 3, 3, 3)
    torch.testing.assert_close(P, P.tril(), rtol=0.0, atol=0.0)
    assert (P.diagonal(dim1=-2, dim2=-1) > 0).all()
    eye = torch.eye(3, dtype=torch.float64).expand(2, 3, 3, 3)
    torch.testing.assert_close(
        P @ P.transpose(-1, -2) @ gm.component_covariance_matrix, eye, rtol=1e-10, atol=1e-10
    )


@pytest.mark.parametrize("grouped", [True, False])
def test_full_sampler_paths_have_the_right_moments(
    grouped: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Grouped (one GEMM per component) and gathered (one factor per draw) samplers."""
    import mixture_density.distribution as distribution

    if not grouped:
        monkeypatch.setattr(distribution, "SAMPLE_MAX_GROUPS", 0)
    torch.manual_seed(1)
    for noise in ("full_precision", "full_tril"):
        gm, _ = make(noise, (2,), 3, 3)
        n = 20000
        x = gm.sample((n,))
        assert x.shape == (n, 2, 3)
        assert ((x.mean(0) - gm.mean).abs() <= 5 * gm.stddev / math.sqrt(n)).all()
        dev = x - gm.mean
        prod = dev.unsqueeze(-1) * dev.unsqueeze(-2)  # (n, 2, 3, 3)
        se = prod.std(0) / math.sqrt(n)
        assert ((prod.mean(0) - gm.covariance_matrix).abs() <= 5 * se).all()


@pytest.mark.parametrize("kind", ["diag", "precision", "packed"])
def test_fused_kernels_gradcheck(kind: str) -> None:
    """gradcheck and gradgradcheck of each fused autograd.Function itself.

    GaussianMixture.log_prob takes the composite route for small problems, so the kernels
    are checked here directly.
    """
    batch, K, D = (2,), 3, 3
    _, _, diagonal, off = _packed(batch, K, D)
    lg = torch.randn(*batch, K, dtype=torch.float64, requires_grad=True)
    mu = torch.randn(*batch, K, D, dtype=torch.float64, requires_grad=True)
    sample = () if kind == "packed" else (4,)  # the packed kernel takes no sample dims
    y = torch.randn(*sample, *batch, D, dtype=torch.float64, requires_grad=True)
    args: tuple[torch.Tensor, ...]
    if kind == "diag":
        scale = (torch.rand(*batch, K, D, dtype=torch.float64) + 0.5).requires_grad_()
        fn: Callable[..., torch.Tensor] = _kernels.diag_mixture_log_prob
        args = (y, lg, mu, scale)
    elif kind == "precision":
        P = _math.tril_from_packed(diagonal, off).requires_grad_()

        def fn(
            y: torch.Tensor, lg: torch.Tensor, mu: torch.Tensor, P: torch.Tensor
        ) -> torch.Tensor:
            return _kernels.precision_mixture_log_prob(y, lg, mu, P.tril())

        args = (y, lg, mu, P)
    else:
        fn = _kernels.packed_precision_mixture_log_prob
        args = (y, lg, mu, diagonal.requires_grad_(), off.requires_grad_())
    assert torch.autograd.gradcheck(fn, args)
    assert torch.autograd.gradgradcheck(fn, args)


@pytest.mark.parametrize("kind", ["diagonal", "packed"])
def test_large_problems_take_the_fused_kernels(kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Above the size threshold log_prob runs the fused kernels; values still match torch."""
    name = "diag_mixture_log_prob" if kind == "diagonal" else "packed_precision_mixture_log_prob"
    calls = []
    kernel = getattr(_kernels, name)

    def spy(*args: torch.Tensor) -> torch.Tensor:
        calls.append(name)
        return kernel(*args)

    monkeypatch.setattr(_kernels, name, spy)
    batch, K, D = (4000,), 3, 3  # 4000 * K * D = 36000 residuals, above FUSED_MIN_NUMEL
    logits = torch.randn(*batch, K, dtype=torch.float64)
    loc = torch.randn(*batch, K, D, dtype=torch.float64)
    if kind == "diagonal":
        scale = torch.rand(*batch, K, D, dtype=torch.float64) + 0.5
        gm = GaussianMixture(logits, loc, scale=scale)
        comp: torch.distributions.Distribution = Independent(Normal(loc, scale), 1)
    else:
        _, cov, diagonal, off = _packed(batch, K, D)
        gm = GaussianMixture.from_packed_precision_tril(logits, loc, diagonal, off)
        comp = MultivariateNormal(loc, covariance_matrix=cov)
    ref = MixtureSameFamily(Categorical(logits=logits), comp)
    y = torch.randn(*batch, D, dtype=torch.float64)
    torch.testing.assert_close(gm.log_prob(y), ref.log_prob(y), rtol=1e-10, atol=1e-10)
    assert calls == [name]
    if kind == "packed":  # the packed kernel never builds the D x D factors
        assert isinstance(gm._components, PackedPrecisionTrilComponents)
        assert not gm._components.has_dense_factor
        gm.log_prob(y.unsqueeze(0))  # a sample dim: the dense fallback builds them once
        assert gm._components.has_dense_factor


def test_multinomial_counts_moments() -> None:
    """Conditional-binomial counts: sum to n, zero weights get nothing, multinomial moments."""
    from mixture_density.distribution import _multinomial_counts

    torch.manual_seed(0)
    p = torch.tensor([[0.5, 0.3, 0.2, 0.0], [0.0, 0.0, 0.0, 1.0]], dtype=torch.float64)
    n, reps = 1000, 4000
    c = torch.stack([_multinomial_counts(p, n) for _ in range(reps)]).double()  # (reps, 2, 4)
    assert (c.sum(-1) == n).all()
    assert (c[..., p == 0] == 0).all()
    mean, var = n * p, n * p * (1 - p)
    # Mean within 5 standard errors; variance within 5 (approximate) standard errors.
    assert ((c.mean(0) - mean).abs() <= 5 * (var / reps).sqrt() + 1e-12).all()
    assert ((c.var(0) - var).abs() <= 5 * var * math.sqrt(2 / reps) + 1e-12).all()


@pytest.mark.parametrize("parameterization", ["scale", "precision_tril"])
def test_high_dimensional_log_prob_is_finite_where_linear_space_underflows(
    parameterization: str,
) -> None:
    """D = 64: every component density underflows to 0 in float64, its log does not."""
    torch.manual_seed(0)
    B, K, D = 16, 3, 64
    logits = torch.randn(B, K, dtype=torch.float64)
    loc = torch.randn(B, K, D, dtype=torch.float64)
    sigma = torch.full((B, K, D), 0.05, dtype=torch.float64)
    y = loc[:, 0] + 3.0  # 60 sigma from component 0 in every coordinate
    if parameterization == "scale":
        gm = GaussianMixture(logits, loc, scale=sigma)
    else:
        gm = GaussianMixture(logits, loc, precision_tril=torch.diag_embed(1 / sigma))
    comp = gm.component_log_prob(y)
    assert (comp.exp() == 0).all()  # linear space would give log(0) = -inf
    lp = gm.log_prob(y)
    assert torch.isfinite(lp).all()
    ref = MixtureSameFamily(Categorical(logits=logits), Independent(Normal(loc, sigma), 1))
    torch.testing.assert_close(lp, ref.log_prob(y), rtol=1e-12, atol=1e-9)


def test_icdf_searches_only_the_elements_still_searching() -> None:
    """Quantiles of many rows and levels at once equal those computed one level at a time
    (the compacted search evaluates each element's own mixture), and hit their levels."""
    g = torch.Generator().manual_seed(3)
    gm = GaussianMixture(
        torch.randn(40, 6, generator=g, dtype=torch.float64),
        torch.randn(40, 6, 1, generator=g, dtype=torch.float64) * 3,
        scale=torch.rand(40, 6, 1, generator=g, dtype=torch.float64) + 0.05,
    )
    q = torch.rand(5, 40, generator=g, dtype=torch.float64)
    together = gm.icdf(q)  # (5, 40, 1)
    for level in range(5):
        torch.testing.assert_close(together[level], gm.icdf(q[level]), rtol=0, atol=0)
    torch.testing.assert_close(gm.cdf(together), q, rtol=0, atol=1e-13)
    one = gm.icdf(torch.full((1,), 0.3, dtype=torch.float64))  # a level broadcast to rows
    torch.testing.assert_close(gm.cdf(one), torch.full((40,), 0.3, dtype=torch.float64))
