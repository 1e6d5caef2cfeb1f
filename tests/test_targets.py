"""Targets on a grid, within bounds, censored or partly missing: the spec, the maps, the encoded
ends, the likelihood and the predictive distribution, against scipy, lifelines and brute
force in float64."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats

from mixture_density import GaussianMixture
from mixture_density._likelihood import (
    TargetDistribution,
    TargetLikelihood,
    mapped_mean,
    target_log_prob,
)
from mixture_density._targets import TargetSpec, encode, grid_spacing, point_masses, tie_warning

F64 = torch.float64
INF = math.inf
UCI = Path(__file__).resolve().parents[2] / "shared" / "uci"


def mixture(w: list[float], mu: list[float], sd: list[float]) -> GaussianMixture:
    """A 1-D mixture with batch shape (1,), float64."""
    return GaussianMixture(
        torch.log(torch.tensor([w], dtype=F64)),
        torch.tensor([mu], dtype=F64)[..., None],
        scale=torch.tensor([sd], dtype=F64)[..., None],
    )


W, MU, SD = [0.3, 0.7], [-0.5, 1.2], [0.4, 0.9]


def scipy_density(y: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Density of y = g^{-1}(Z), Z ~ the mixture (W, MU, SD), from scipy's distributions."""
    out = np.zeros_like(y)
    for w, m, s in zip(W, MU, SD):
        if math.isinf(lo) and math.isinf(hi):
            out += w * stats.norm.pdf(y, m, s)
        elif math.isinf(hi):  # log(y - lo) ~ N(m, s): a shifted lognormal
            out += w * stats.lognorm.pdf(y - lo, s, scale=math.exp(m))
        elif math.isinf(lo):  # -log(hi - y) ~ N(m, s): hi - y is lognormal(-m, s)
            out += w * stats.lognorm.pdf(hi - y, s, scale=math.exp(-m))
        else:  # logit((y - lo) / (hi - lo)) ~ N(m, s)
            u = (y - lo) / (hi - lo)
            out += w * stats.norm.pdf(special.logit(u), m, s) / (u * (1 - u) * (hi - lo))
    return out


BOUNDS = [(-INF, INF), (2.0, INF), (-INF, 5.0), (-1.0, 3.0)]


# ------------------------------------------------------------------------------ the spec


def test_spec_maps_and_json_round_trip() -> None:
    spec = TargetSpec.from_params([None, 0.5, 1.0], [None, (0, None), (None, np.inf)], 3)
    assert [o.map for o in spec.outputs] == ["identity", "log_lower", "identity"]
    spec = TargetSpec.from_params(None, [(None, 4.0), (-1, 1), None], 3)
    assert [o.map for o in spec.outputs] == ["log_upper", "logit", "identity"]
    fitted = spec.with_origins(np.array([[1.0, 0.5, 2.0]]))
    assert TargetSpec.from_json(fitted.to_json()) == fitted
    assert TargetSpec.from_params(None, None, 2).plain


@pytest.mark.parametrize(
    ("resolution", "bounds", "D", "match"),
    [
        (0.0, None, 1, r"target_resolution must be > 0 and finite, got 0"),
        (-1.0, None, 1, r"target_resolution must be > 0"),
        (math.nan, None, 1, r"target_resolution must be > 0"),
        ([1.0, 2.0], None, 3, r"target_resolution has 2 entries, expected one per output: D = 3"),
        (None, (1.0, 1.0), 1, r"target_bounds must have lo < hi, got \(1.0, 1.0\)"),
        (None, (2.0, 1.0), 1, r"lo < hi"),
        (None, (math.inf, None), 1, r"lo < hi"),
        (None, [(0, 1)], 2, r"target_bounds has 1 entries, expected one per output: D = 2"),
        (None, [(0, 1), "a"], 2, r"target_bounds \(output 1\) must be \(lo, hi\) or None"),
        ("a", None, 1, r"target_resolution must be one setting or one per output"),
    ],
)
def test_spec_errors_name_the_argument(
    resolution: object, bounds: object, D: int, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        TargetSpec.from_params(resolution, bounds, D)


@pytest.mark.parametrize(("lo", "hi"), BOUNDS)
def test_maps_invert_and_jacobian_is_the_derivative(lo: float, hi: float) -> None:
    spec = TargetSpec.from_params(None, (lo, hi), 1)
    z = torch.linspace(-8, 8, 33, dtype=F64)[:, None]
    y = spec.inverse(z)
    assert torch.allclose(spec.forward(y), z, rtol=1e-10, atol=1e-10)
    # log g'(y) against a central difference of g, with steps well inside the bounds
    dist = torch.minimum(y - lo, hi - y)
    eps = 1e-6 * torch.minimum(1 + y.abs(), dist)
    num = (spec.forward(y + eps) - spec.forward(y - eps)) / (2 * eps)
    assert torch.allclose(spec.log_det_jacobian(y), num.log(), atol=1e-6)


def test_inverse_stays_strictly_inside_far_out() -> None:
    spec = TargetSpec.from_params(None, [(0.0, 1.0), (2.0, None), (None, 5.0)], 3)
    z = torch.tensor([[-800.0, -800.0, 800.0], [800.0, 1e-3, -1e-3]], dtype=F64)
    y = spec.inverse(z)
    assert (y[:, 0] > 0).all() and (y[:, 0] < 1).all()
    assert (y[:, 1] > 2).all() and (y[:, 2] < 5).all()


# ------------------------------------------------------------------------------ densities


@pytest.mark.parametrize(("lo", "hi"), BOUNDS)
def test_bounded_density_is_scipys_change_of_variables(lo: float, hi: float) -> None:
    spec = TargetSpec.from_params(None, (lo, hi), 1)
    dist = TargetDistribution(mixture(W, MU, SD), spec)
    z = np.linspace(-2.5, 3.5, 41)
    y = spec.inverse(torch.tensor(z)[:, None]).numpy()[:, 0]
    got = dist.log_prob(torch.tensor(y)[:, None, None]).numpy()[:, 0]
    np.testing.assert_allclose(got, np.log(scipy_density(y, lo, hi)), rtol=1e-10)


@pytest.mark.parametrize(("lo", "hi"), BOUNDS[1:])
def test_bounded_density_integrates_to_one_and_is_minus_inf_outside(lo: float, hi: float) -> None:
    spec = TargetSpec.from_params(None, (lo, hi), 1)
    dist = TargetDistribution(mixture(W, MU, SD), spec)

    def density(v: float) -> float:
        return float(dist.log_prob(torch.tensor([[[v]]], dtype=F64)).exp())

    a = lo if math.isfinite(lo) else -np.inf
    b = hi if math.isfinite(hi) else np.inf
    total, _ = integrate.quad(density, a, b, limit=200, epsabs=1e-11)
    assert total == pytest.approx(1.0, abs=1e-8)
    outside = [v for v in (lo - 1.0, lo, hi, hi + 1.0) if math.isfinite(v)]
    lp = dist.log_prob(torch.tensor(outside, dtype=F64)[:, None, None])
    assert (lp == -INF).all()


@pytest.mark.parametrize(("lo", "hi"), [(-INF, INF), (0.0, INF), (0.0, 6.0)])
def test_grid_mass_is_the_brute_force_bin_integral_and_sums_to_one(lo: float, hi: float) -> None:
    h = 0.5
    spec = TargetSpec.from_params(h, (lo, hi), 1).with_origins(np.array([[0.0]]))
    dist = TargetDistribution(mixture([0.3, 0.7], [0.2, 1.0], [0.5, 0.8]), spec)
    cont = TargetDistribution(dist.base, TargetSpec.from_params(None, (lo, hi), 1))

    def density(v: float) -> float:
        return float(cont.log_prob(torch.tensor([[[v]]], dtype=F64)).exp())

    # far enough that the mass beyond is below 1e-12 (the lognormal's tail reaches furthest)
    grid = np.arange(0.0 if math.isfinite(lo) else -20.0, 6.01 if math.isfinite(hi) else 2e3, h)
    mass = dist.log_prob(torch.tensor(grid)[:, None, None]).exp().numpy()[:, 0]
    assert (mass <= 1).all()
    checked = [*np.argsort(-mass)[:8], 0, int(np.argmax(grid > 8))]  # the bulk, an end, a tail
    for v, m in zip(grid[checked], mass[checked]):
        a, b = max(v - h / 2, lo), min(v + h / 2, hi)
        brute, _ = integrate.quad(density, a, b, epsabs=1e-13)
        assert m == pytest.approx(brute, rel=1e-8, abs=1e-14)
    assert mass.sum() == pytest.approx(1.0, abs=1e-9)


def test_samples_and_quantiles_stay_inside_and_on_the_grid() -> None:
    torch.manual_seed(0)
    spec = TargetSpec.from_params([None, 1.0], [(0.0, 1.0), (0.0, None)], 2)
    spec = spec.with_origins(np.array([[0.5, 0.0]]))
    base = GaussianMixture(
        torch.zeros(3, 2), torch.randn(3, 2, 2) * 4, scale=torch.rand(3, 2, 2) * 6 + 0.1
    )
    dist = TargetDistribution(base, spec)
    s = dist.sample((20000,))
    assert ((s[..., 0] > 0) & (s[..., 0] < 1)).all()
    assert (s[..., 1] >= 0).all() and (s[..., 1] == s[..., 1].round()).all()
    q = torch.tensor([1e-12, 0.01, 0.5, 0.99, 1 - 1e-12])[:, None].expand(5, 3)
    z0 = base.marginal([0]).icdf(q)  # (5, 3, 1)
    y0 = spec.to_y(torch.cat([z0, torch.zeros_like(z0)], -1))[..., 0]
    assert ((y0 > 0) & (y0 < 1)).all()
    one = TargetDistribution(base.marginal([1]), TargetSpec(spec.outputs[1:]))
    qs = one.icdf(q)
    assert (qs >= 0).all() and (qs == qs.round()).all()
    # P(Y <= F^-1(q)) >= q, and below the previous grid value it is < q
    assert (one.cdf(qs) >= q.double() - 1e-6).all()
    assert (one.cdf(qs - 1.0) < q.double() + 1e-6).all()


@pytest.mark.parametrize(("lo", "hi"), BOUNDS)
def test_mean_through_the_map_matches_scipy(lo: float, hi: float) -> None:
    rng = np.random.default_rng(0)
    mu = rng.normal(0, 3, size=(40, 1, 1))
    sd = np.exp(rng.uniform(np.log(0.01), np.log(30.0), size=(40, 1, 1)))
    base = GaussianMixture(torch.zeros(40, 1, dtype=F64), torch.tensor(mu), scale=torch.tensor(sd))
    got = mapped_mean(base, TargetSpec.from_params(None, (lo, hi), 1)).numpy()[:, 0]
    m, s = mu[:, 0, 0], sd[:, 0, 0]
    if math.isinf(lo) and math.isinf(hi):
        expected = m
    elif math.isinf(hi):
        expected = lo + stats.lognorm.mean(s, scale=np.exp(m))
    elif math.isinf(lo):
        expected = hi - stats.lognorm.mean(s, scale=np.exp(-m))
    else:
        expected = np.array(
            [
                lo + (hi - lo) * stats.norm.expect(special.expit, loc=a, scale=b, epsabs=1e-14)
                for a, b in zip(m, s)
            ]
        )
    ok = np.isfinite(expected)  # scipy's lognormal mean overflows beyond sd = 26
    assert ok.sum() >= 35
    np.testing.assert_allclose(got[ok], expected[ok], rtol=1e-9, atol=1e-12 * (1 + abs(hi - lo)))


# ------------------------------------------------------------------------------ likelihood


def test_censored_likelihood_is_lifelines_lognormal_aft() -> None:
    pd = pytest.importorskip("pandas")
    lifelines = pytest.importorskip("lifelines")
    rng = np.random.default_rng(0)
    n = 300
    x = rng.normal(size=n)
    T = np.exp(1 + 0.5 * x + 0.7 * rng.normal(size=n))
    C = np.exp(1.3 + 0.5 * rng.normal(size=n))
    t, e = np.minimum(T, C), (C >= T).astype(float)
    aft = lifelines.LogNormalAFTFitter().fit(pd.DataFrame({"x": x, "t": t, "e": e}), "t", "e")
    p = aft.params_
    mu = p.loc[("mu_", "Intercept")] + p.loc[("mu_", "x")] * x
    sd = math.exp(p.loc[("sigma_", "Intercept")])
    # One component over log(t): a log-normal AFT model, with lifelines' fitted parameters.
    base = GaussianMixture(
        torch.zeros(n, 1, dtype=F64),
        torch.tensor(mu)[:, None, None],
        scale=torch.full((n, 1, 1), sd, dtype=F64),
    )
    dist = TargetDistribution(base, TargetSpec.from_params(None, (0, None), 1))
    upper = np.where(e == 1, np.nan, np.inf)[:, None]
    lp = dist.log_prob(torch.tensor(t)[:, None], upper)
    assert float(lp.sum()) == pytest.approx(aft.log_likelihood_, rel=1e-10)
    assert 0.2 < 1 - e.mean() < 0.6  # the data are censored


def test_left_and_interval_censoring_and_bounds() -> None:
    spec = TargetSpec.from_params(None, (0.0, None), 1)
    dist = TargetDistribution(mixture(W, MU, SD), spec)
    y = torch.tensor([[[-INF]], [[1.0]], [[0.5]]], dtype=F64)
    upper = np.array([[2.0], [3.0], [INF]])
    got = dist.log_prob(y, upper[:, :, None]).numpy()[:, 0]
    cdf = sum(w * stats.lognorm.cdf(np.array([2.0, 1.0, 3.0]), s, scale=np.exp(m))
              for w, m, s in zip(W, MU, SD))  # fmt: skip
    expected = [np.log(cdf[0]), np.log(cdf[2] - cdf[1]), None]
    assert got[0] == pytest.approx(expected[0], rel=1e-12)
    assert got[1] == pytest.approx(expected[1], rel=1e-12)
    surv = sum(w * stats.lognorm.sf(0.5, s, scale=np.exp(m)) for w, m, s in zip(W, MU, SD))
    assert got[2] == pytest.approx(np.log(surv), rel=1e-12)


def full_mixture() -> GaussianMixture:
    rng = np.random.default_rng(3)
    K, D = 3, 3
    A = rng.normal(size=(K, D, D))
    cov = A @ A.transpose(0, 2, 1) + 0.5 * np.eye(D)
    return GaussianMixture(
        torch.log(torch.tensor([[0.2, 0.5, 0.3]], dtype=F64)),
        torch.tensor(rng.normal(size=(1, K, D))),
        scale_tril=torch.linalg.cholesky(torch.tensor(cov))[None],
    )


def test_missing_entries_score_the_marginal_full_covariance() -> None:
    gm = full_mixture().expand((3,))
    cov = gm.component_covariance_matrix[0].numpy()
    w, mu = gm.probs[0].numpy(), gm.loc[0].numpy()
    y = np.array([[0.3, np.nan, -0.2], [np.nan, 1.0, np.nan], [0.1, 0.2, 0.3]])
    low = torch.tensor(np.where(np.isnan(y), -INF, y))
    high = torch.tensor(np.where(np.isnan(y), INF, y))
    got = target_log_prob(gm, low, high).numpy()
    for row, lp in zip(y, got):
        seen = ~np.isnan(row)
        dens = sum(
            wk * stats.multivariate_normal.pdf(row[seen], m[seen], c[np.ix_(seen, seen)])
            for wk, m, c in zip(w, mu, cov)
        )
        assert lp == pytest.approx(math.log(dens), rel=1e-10)


def test_exact_plus_one_interval_full_covariance_is_the_brute_force_integral() -> None:
    gm = full_mixture()
    cov = gm.component_covariance_matrix[0].numpy()
    w, mu = gm.probs[0].numpy(), gm.loc[0].numpy()
    # output 0 exact, output 1 in [-0.5, 0.7], output 2 missing
    low = torch.tensor([[0.3, -0.5, -INF]], dtype=F64)
    high = torch.tensor([[0.3, 0.7, INF]], dtype=F64)
    got = float(target_log_prob(gm, low, high))

    def joint(v: float) -> float:
        return sum(
            wk * stats.multivariate_normal.pdf([0.3, v], m[:2], c[:2, :2])
            for wk, m, c in zip(w, mu, cov)
        )

    brute, _ = integrate.quad(joint, -0.5, 0.7, epsabs=1e-14)
    assert got == pytest.approx(math.log(brute), rel=1e-9)
    with pytest.raises(ValueError, match="at most one binned or censored output"):
        target_log_prob(gm, torch.tensor([[0.0, 0.0, 0.0]]).double(), torch.ones(1, 3).double())


def test_diagonal_mixture_mixed_rows_match_full_covariance_path() -> None:
    # The same diagonal mixture through the vectorized kernel and, as scale_tril, by pattern.
    rng = np.random.default_rng(4)
    loc, sd = torch.tensor(rng.normal(size=(5, 2, 3))), torch.tensor(rng.uniform(0.5, 2, (5, 2, 3)))
    logits = torch.tensor(rng.normal(size=(5, 2)))
    diag = GaussianMixture(logits, loc, scale=sd)
    tril = GaussianMixture(logits, loc, scale_tril=torch.diag_embed(sd))
    low = torch.tensor(
        [[0.1, -INF, 0.3], [-INF, 0.2, 0.2], [0.0, 0.5, -1.0], [-INF, -INF, 1.0], [0.2, 0.3, 0.4]],
        dtype=F64,
    )
    high = torch.tensor(
        [[0.1, INF, 0.3], [INF, 0.2, 0.9], [0.0, 0.5, -1.0], [INF, INF, INF], [0.2, 0.3, 0.4]],
        dtype=F64,
    )
    np.testing.assert_allclose(
        target_log_prob(diag, low, high).numpy(),
        target_log_prob(tril, low, high).numpy(),
        rtol=1e-10,
    )


def test_target_likelihood_wraps_a_stacked_ensemble() -> None:
    from mixture_density._ensemble import StackedMDN
    from mixture_density.nn import MixtureDensityNetwork

    torch.manual_seed(0)
    members = [MixtureDensityNetwork(2, 1, 3, hidden_dims=(8,)) for _ in range(3)]
    model = TargetLikelihood(StackedMDN(members))
    assert model.n_members == 3 and model.infinite_targets
    x = torch.randn(3, 16, 2)
    y = torch.cat([torch.full((3, 16, 1), -0.5), torch.full((3, 16, 1), INF)], -1)
    nll = model.loss(x, y)
    assert nll.shape == (3, 16) and torch.isfinite(nll).all() and (nll > 0).all()
    nll.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_encode_ends() -> None:
    spec = TargetSpec.from_params(1.0, (0.0, 5.0), 1).with_origins(np.array([[0.0]]))
    enc = encode(spec, np.array([[0.0], [3.0], [5.0], [7.0], [np.nan]]))
    g = spec.forward(torch.tensor([[0.5], [2.5], [3.5], [4.5]], dtype=F64)).numpy()[:, 0]
    np.testing.assert_allclose(enc.low[:4, 0], [-INF, g[1], g[3], 0.0])
    np.testing.assert_allclose(enc.high[:4, 0], [g[0], g[2], INF, 0.0])
    assert enc.impossible.tolist() == [False, False, False, True, False]
    assert (enc.low[4], enc.high[4]) == (-INF, INF)


# ------------------------------------------------------------------------------ ties


def test_grid_spacing() -> None:
    assert grid_spacing(np.array([3.0, 5.0, 8.0, 6.0])) == 1.0
    assert grid_spacing(np.round(np.random.default_rng(0).normal(size=500), 2)) == 0.01
    assert grid_spacing(np.random.default_rng(0).normal(size=500)) is None
    assert grid_spacing(np.array([1.0])) is None


def test_tie_warning_rules() -> None:
    rng = np.random.default_rng(0)
    assert tie_warning(rng.normal(size=(1000, 1))) is None
    assert tie_warning(np.round(rng.normal(size=(1000, 1)), 2)) is None  # recorded to 0.01
    grades = rng.integers(3, 9, size=(1000, 1)).astype(float)
    message = tie_warning(grades)
    assert message and "target_resolution=1" in message and "--resolution 1" in message
    assert tie_warning(grades, 1.0) is None  # given: no warning
    floor = np.where(rng.random(1000) < 0.2, 0.0, rng.exponential(size=1000))[:, None]
    assert "point masses" in (tie_warning(floor) or "")  # one value on 20% of the rows
    assert "output 1" in (tie_warning(np.hstack([rng.normal(size=(1000, 1)), grades])) or "")


UCI_TARGETS = {
    "bostonHousing": False,
    "concrete": False,
    "energy": False,
    "kin8nm": False,
    "power-plant": False,
    "yacht": False,
    "protein-tertiary-structure": False,
    "wine-quality-red": True,
    "naval-propulsion-plant": True,
}


@pytest.mark.skipif(not UCI.is_dir(), reason="the shared UCI folder is not here")
@pytest.mark.parametrize(("name", "warns"), UCI_TARGETS.items())
def test_uci_targets_warn_exactly_on_the_grid_sets(name: str, warns: bool) -> None:
    data = np.loadtxt(UCI / name / "data.txt", ndmin=2)
    target = int(np.loadtxt(UCI / name / "index_target.txt"))
    y = data[:, [target]]
    assert bool(point_masses(y)) == warns
    train = np.loadtxt(UCI / name / "index_train_0.txt", dtype=int)
    assert bool(point_masses(y[train])) == warns  # the training split too


def test_fit_takes_infinite_ends_only_from_a_model_that_declares_them() -> None:
    from mixture_density.nn import MixtureDensityNetwork
    from mixture_density.training import fit

    torch.manual_seed(0)
    x = torch.randn(64, 1)
    ends = torch.cat([x, torch.where(x > 0, INF, x)], -1)  # right-censored where x > 0
    model = TargetLikelihood(MixtureDensityNetwork(1, 1, 2, hidden_dims=(8,)))
    result = fit(model, x, ends, epochs=2, seed=0, verbose=False)
    assert all(math.isfinite(r["train_nll"]) for r in result.history)
    with pytest.raises(ValueError, match=r"y contains NaN in 1 row\(s\), first at row 3"):
        fit(model, x, ends.index_fill(0, torch.tensor([3]), math.nan), epochs=1, verbose=False)
    plain = MixtureDensityNetwork(1, 2, 2, hidden_dims=(8,))
    with pytest.raises(ValueError, match="y contains NaN or inf"):
        fit(plain, x, ends, epochs=1, verbose=False)
