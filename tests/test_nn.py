"""Tests for mixture_density.nn: MixtureDensityHead and MixtureDensityNetwork."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from mixture_density import MixtureDensityNetwork
from mixture_density.nn import MixtureDensityHead
from mixture_density.noise import NoiseType

NOISE_TYPES = [t.value for t in NoiseType]
BATCHES = [(), (3,), (2, 3)]


def _make_head(noise_type: str, K: int, D: int, in_features: int = 6) -> MixtureDensityHead:
    fixed = 0.7 if noise_type == "fixed" else None
    return MixtureDensityHead(in_features, D, K, noise_type=noise_type, fixed_noise_level=fixed)


def test_readme_snippet() -> None:
    x = torch.randn(5, 1)
    y = torch.randn(5, 1)
    model = MixtureDensityNetwork(1, 1, n_components=3, hidden_dim=50)
    pred_parameters = model(x)
    assert pred_parameters.batch_shape == (5,)
    loss = model.loss(x, y)
    assert loss.shape == (5,)
    loss.mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    samples = model.sample(x)
    assert samples.shape == (5, 1)


@pytest.mark.parametrize("noise_type", NOISE_TYPES)
@pytest.mark.parametrize("D", [1, 2, 4])
@pytest.mark.parametrize("K", [1, 3])
@pytest.mark.parametrize("batch", BATCHES)
def test_shape_grid(batch: tuple[int, ...], K: int, D: int, noise_type: str) -> None:
    fixed = 0.7 if noise_type == "fixed" else None
    model = MixtureDensityNetwork(
        4, D, K, hidden_dim=8, noise_type=noise_type, fixed_noise_level=fixed
    ).double()
    x = torch.randn(*batch, 4, dtype=torch.float64)
    y = torch.randn(*batch, D, dtype=torch.float64)

    mixture = model(x)
    assert mixture.batch_shape == batch
    assert mixture.event_shape == (D,)
    assert mixture.logits.shape == (*batch, K)
    assert mixture.loc.shape == (*batch, K, D)
    assert mixture.component_stddev.shape == (*batch, K, D)
    assert torch.isfinite(mixture.component_stddev).all()

    loss = model.loss(x, y)
    assert loss.shape == batch
    assert torch.isfinite(loss).all()
    assert model.sample(x).shape == (*batch, D)
    assert model.sample(x, (5,)).shape == (5, *batch, D)
    assert torch.isfinite(model.sample(x, 5)).all()

    loss.sum().backward()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, name
        assert torch.isfinite(parameter.grad).all(), name
    # Every block of the head's output gets a non-zero gradient (the logits of a single
    # component are normalized away, so their gradient is exactly zero there).
    head = model.head
    grad_logits, grad_loc, grad_scale = head.layout.split(head.linear.bias.grad)
    assert grad_loc.abs().sum() > 0
    if K > 1:
        assert grad_logits.abs().sum() > 0
    if noise_type == "fixed":
        assert grad_scale.numel() == 0  # no scale parameters at all
        assert head.linear.out_features == K + K * D
    else:
        assert grad_scale.abs().sum() > 0


def _reference_mixture(head: MixtureDensityHead, h: torch.Tensor) -> MixtureSameFamily:
    """MixtureSameFamily built by hand from the head's raw outputs (documented layout)."""
    K, D, m = head.n_components, head.dim_out, head.min_scale
    raw = head.linear(h)
    logits = raw[..., :K]
    loc = raw[..., K : K + K * D].reshape(*raw.shape[:-1], K, D)
    rest = raw[..., K + K * D :]
    batch = raw.shape[:-1]
    mixing = Categorical(logits=logits)
    if head.noise_type is NoiseType.FULL:
        rest = rest.reshape(*batch, K, D * (D + 1) // 2)
        P = torch.zeros(*batch, K, D, D, dtype=raw.dtype)
        rows, cols = torch.tril_indices(D, D, offset=-1)
        for i in range(D):
            P[..., i, i] = 1.0 / (F.softplus(rest[..., i]) + m)
        for n, (i, j) in enumerate(zip(rows.tolist(), cols.tolist())):
            P[..., i, j] = rest[..., D + n]
        return MixtureSameFamily(mixing, MultivariateNormal(loc, precision_matrix=P @ P.mT))
    if head.noise_type is NoiseType.DIAGONAL:
        sigma = F.softplus(rest.reshape(*batch, K, D)) + m
    elif head.noise_type in (NoiseType.ISOTROPIC, NoiseType.ISOTROPIC_ACROSS_CLUSTERS):
        sigma = (F.softplus(rest) + m).unsqueeze(-1).expand(*batch, K, D)
    else:
        sigma = torch.full((*batch, K, D), head.fixed_noise_level or 0.0, dtype=raw.dtype)
    return MixtureSameFamily(mixing, Independent(Normal(loc, sigma), 1))


@pytest.mark.parametrize("noise_type", NOISE_TYPES)
@pytest.mark.parametrize("D", [1, 3])
@pytest.mark.parametrize("batch", BATCHES)
def test_log_prob_matches_torch_mixture(batch: tuple[int, ...], D: int, noise_type: str) -> None:
    head = _make_head(noise_type, K=3, D=D).double()
    with torch.no_grad():  # random, non-trivial scales and correlations
        head.linear.weight.normal_(0.0, 0.5)
        head.linear.bias.normal_(0.0, 0.5)
    h = torch.randn(*batch, 6, dtype=torch.float64)
    y = torch.randn(4, *batch, D, dtype=torch.float64) * 2.0  # (*sample, *batch, D)
    ours = head(h).log_prob(y)
    reference = _reference_mixture(head, h).log_prob(y)
    assert ours.shape == (4, *batch)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-10)


def test_isotropic_component_keeps_its_own_sigma() -> None:
    # Regression for the `repeat` defect: component k must use sigma_k in every dimension.
    K, D = 3, 4
    head = _make_head("isotropic", K, D).double()
    sigma = torch.tensor([0.2, 1.0, 5.0], dtype=torch.float64)
    with torch.no_grad():
        head.linear.weight.zero_()
        head.layout.split(head.linear.bias)[2].copy_(torch.log(torch.expm1(sigma - head.min_scale)))
    stddev = head(torch.randn(2, 6, dtype=torch.float64)).component_stddev  # (2, K, D)
    torch.testing.assert_close(stddev, sigma[:, None].expand(2, K, D), rtol=1e-12, atol=0.0)


@pytest.mark.parametrize(
    "noise_type", ["full", "diagonal", "isotropic", "isotropic_across_clusters"]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_scale_floor(noise_type: str, dtype: torch.dtype) -> None:
    K, D = 3, 2
    head = _make_head(noise_type, K, D).to(dtype)
    h = torch.randn(7, 6, dtype=dtype)
    y = torch.randn(7, D, dtype=dtype)
    for raw_value in (-1e4, 1e4):
        with torch.no_grad():
            head.linear.weight.zero_()
            scale_bias = head.layout.split(head.linear.bias)[2]
            if noise_type == "full":
                per_component = scale_bias.view(K, -1)
                per_component[:, :D] = raw_value  # the diagonal entries of P
                per_component[:, D:] = 0.5
            else:
                scale_bias.fill_(raw_value)
        mixture = head(h)
        assert torch.isfinite(mixture.component_stddev).all()
        assert (mixture.component_stddev >= head.min_scale * (1 - 1e-5)).all()
        loss = -mixture.log_prob(y)
        assert torch.isfinite(loss).all(), raw_value
        # The density of every component is bounded: (2 pi)^(-D/2) min_scale^(-D).
        bound = D * torch.log(torch.tensor(head.min_scale, dtype=torch.float64)) + D * 0.5 * (
            torch.log(torch.tensor(2 * torch.pi, dtype=torch.float64))
        )
        assert (loss.double() >= bound - 1e-3).all()


@pytest.mark.parametrize("D", [1, 2])
def test_initialize_finds_clusters(D: int) -> None:
    generator = torch.Generator().manual_seed(1)
    centers = torch.tensor([[-6.0, 0.0], [0.0, 6.0], [6.0, 0.0]], dtype=torch.float64)[:, :D]
    if D == 1:
        centers = torch.tensor([[-6.0], [0.0], [6.0]], dtype=torch.float64)
    sizes = [300, 600, 900]
    spread = 0.5
    y = torch.cat(
        [
            c + spread * torch.randn(n, D, generator=generator, dtype=torch.float64)
            for c, n in zip(centers, sizes)
        ]
    )
    model = MixtureDensityNetwork(2, D, n_components=3, hidden_dim=16).double()
    model.initialize(y[torch.randperm(len(y), generator=generator)])
    mixture = model(torch.randn(10, 2, dtype=torch.float64))
    loc = mixture.loc  # (10, 3, D)
    # Match components to clusters by their nearest center.
    order = torch.cdist(loc[0], centers).argmin(-1)
    assert sorted(order.tolist()) == [0, 1, 2]
    torch.testing.assert_close(loc, centers[order].expand_as(loc), rtol=0.0, atol=0.25)
    fractions = torch.tensor(sizes, dtype=torch.float64)[order] / sum(sizes)
    torch.testing.assert_close(mixture.probs, fractions.expand(10, 3), rtol=0.0, atol=0.02)
    torch.testing.assert_close(
        mixture.component_stddev,
        torch.full_like(mixture.component_stddev, spread),
        rtol=0.15,
        atol=0.0,
    )


@pytest.mark.parametrize("noise_type", NOISE_TYPES)
def test_initialize_every_noise_type(noise_type: str) -> None:
    generator = torch.Generator().manual_seed(2)
    covariance = torch.tensor([[1.0, 0.8], [0.8, 1.0]], dtype=torch.float64)
    L = torch.linalg.cholesky(covariance)
    y = torch.randn(4000, 2, generator=generator, dtype=torch.float64) @ L.T + 3.0
    fixed = 0.7 if noise_type == "fixed" else None
    model = MixtureDensityNetwork(
        3, 2, 1, hidden_dim=8, noise_type=noise_type, fixed_noise_level=fixed
    )
    rng_state = torch.random.get_rng_state()
    model.initialize(y)
    assert torch.equal(torch.random.get_rng_state(), rng_state)  # global RNG untouched
    mixture = model(torch.randn(5, 3))
    assert mixture.loc.dtype == torch.float32
    torch.testing.assert_close(mixture.loc, torch.full_like(mixture.loc, 3.0), rtol=0.0, atol=0.1)
    sd = mixture.component_stddev
    if noise_type == "fixed":
        torch.testing.assert_close(sd, torch.full_like(sd, 0.7))
    else:
        torch.testing.assert_close(sd, torch.ones_like(sd), rtol=0.1, atol=0.0)
    if noise_type == "full":
        # The correlation is captured too: Sigma = L L^T with L the scale_tril.
        Sigma = mixture.scale_tril @ mixture.scale_tril.mT
        torch.testing.assert_close(Sigma[:, 0, 0, 1], torch.full((5,), 0.8), rtol=0.0, atol=0.1)
    assert torch.isfinite(model.loss(torch.randn(5, 3), y[:5].float())).all()


def test_initialize_is_deterministic_given_seed() -> None:
    y = torch.randn(500, 3)
    first = MixtureDensityNetwork(2, 3, 4)
    second = MixtureDensityNetwork(2, 3, 4)
    first.initialize(y, seed=7)
    second.initialize(y, seed=7)
    torch.testing.assert_close(first.head.state_dict(), second.head.state_dict())
    second.initialize(y, seed=8)
    assert not torch.equal(first.head.linear.weight, second.head.linear.weight)


def test_initialize_errors() -> None:
    model = MixtureDensityNetwork(2, 2, n_components=4)
    with pytest.raises(ValueError, match=r"y must have shape \(n, 2\)"):
        model.initialize(torch.randn(10, 3))
    with pytest.raises(ValueError, match="at least n_components=4"):
        model.initialize(torch.randn(3, 2))
    with pytest.raises(ValueError, match="finite"):
        model.initialize(torch.tensor([[0.0, float("nan")]] * 10))


def test_unknown_noise_type_lists_options() -> None:
    with pytest.raises(ValueError, match="noise_type") as info:
        MixtureDensityNetwork(1, 1, 3, noise_type="gaussian")
    for name in NOISE_TYPES:
        assert repr(name) in str(info.value)


@pytest.mark.parametrize("level", [None, 0.0, -1.0, float("nan"), float("inf")])
def test_fixed_noise_level_must_be_positive_finite(level: float | None) -> None:
    with pytest.raises(ValueError, match="fixed_noise_level"):
        MixtureDensityNetwork(1, 1, 3, noise_type="fixed", fixed_noise_level=level)


def test_fixed_noise_level_refused_for_other_noise_types() -> None:
    with pytest.raises(ValueError, match=r"fixed_noise_level.*'diagonal'"):
        MixtureDensityNetwork(1, 1, 3, noise_type="diagonal", fixed_noise_level=0.1)


def test_fixed_noise_level_is_a_buffer() -> None:
    model = MixtureDensityNetwork(1, 2, 3, noise_type="FIXED", fixed_noise_level=0.25)
    assert "head.fixed_scale" in model.state_dict()
    assert "head.fixed_scale" not in dict(model.named_parameters())
    assert model.noise_type is NoiseType.FIXED


def test_bad_x_shape() -> None:
    model = MixtureDensityNetwork(3, 1, 2)
    with pytest.raises(ValueError, match=r"x must have shape \(\*batch, dim_in=3\), got \(5, 2\)"):
        model(torch.randn(5, 2))
    with pytest.raises(ValueError, match="x must have shape"):
        model.loss(torch.randn(5, 2), torch.randn(5, 1))
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        model([[1.0, 2.0, 3.0]])  # type: ignore[arg-type]


def test_y_shape_handling() -> None:
    model = MixtureDensityNetwork(3, 1, 2)
    x = torch.randn(5, 3)
    y = torch.randn(5)
    # (B,) is accepted for dim_out == 1 and means (B, 1).
    torch.testing.assert_close(model.loss(x, y), model.loss(x, y.unsqueeze(-1)))
    with pytest.raises(ValueError, match=r"y must have shape \(5, 1\) or \(5,\).*got \(4, 1\)"):
        model.loss(x, torch.randn(4, 1))
    with pytest.raises(ValueError, match="y must have shape"):
        model.loss(x, torch.randn(5, 5))  # would broadcast silently without the check
    wide = MixtureDensityNetwork(3, 2, 2)
    with pytest.raises(ValueError, match=r"y must have shape \(5, 2\) to match x .*got \(5,\)"):
        wide.loss(x, torch.randn(5))


def test_bad_constructor_arguments() -> None:
    with pytest.raises(TypeError, match="dim_in"):
        MixtureDensityNetwork(1.5, 1, 3)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="n_components must be >= 1"):
        MixtureDensityNetwork(1, 1, 0)
    with pytest.raises(ValueError, match="activation"):
        MixtureDensityNetwork(1, 1, 2, activation="wiggle")
    with pytest.raises(ValueError, match="min_scale"):
        MixtureDensityNetwork(1, 1, 2, min_scale=0.0)
    with pytest.raises(ValueError, match="dropout"):
        MixtureDensityNetwork(1, 1, 2, dropout=1.0)
    with pytest.raises(ValueError, match="h must have shape"):
        MixtureDensityHead(4, 1, 2)(torch.randn(3, 5))


def test_backbone_options() -> None:
    model = MixtureDensityNetwork(3, 2, 2, hidden_dims=[7, 5], activation="relu", dropout=0.1)
    linears = [m for m in model.backbone.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in linears] == [7, 5]
    assert any(isinstance(m, nn.ReLU) for m in model.backbone.modules())
    assert any(isinstance(m, nn.Dropout) for m in model.backbone.modules())
    assert model.head.in_features == 5
    linear_model = MixtureDensityNetwork(3, 2, 2, n_hidden_layers=0)
    assert isinstance(linear_model.backbone, nn.Identity)
    assert linear_model.head.in_features == 3
    gelu = MixtureDensityNetwork(3, 2, 2, activation=nn.GELU)
    assert any(isinstance(m, nn.GELU) for m in gelu.backbone.modules())
    assert any(
        isinstance(m, nn.LeakyReLU)
        for m in MixtureDensityNetwork(3, 2, 2, activation="LeakyReLU").modules()
    )


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"noise_type": "fixed", "fixed_noise_level": 0.3, "activation": nn.GELU},
        {"noise_type": NoiseType.FULL, "hidden_dims": (4, 6), "dropout": 0.2},
    ],
)
def test_config_is_json_and_rebuilds_the_model(kwargs: dict[str, object]) -> None:
    model = MixtureDensityNetwork(3, 2, 4, **kwargs)  # type: ignore[arg-type]
    config = json.loads(json.dumps(model.config))
    rebuilt = MixtureDensityNetwork(**config)
    rebuilt.load_state_dict(model.state_dict())
    x = torch.randn(6, 3)
    model.eval()
    rebuilt.eval()
    torch.testing.assert_close(
        model(x).log_prob(torch.zeros(6, 2)), rebuilt(x).log_prob(torch.zeros(6, 2))
    )
    assert rebuilt.config == config


def test_dtype_follows_the_module() -> None:
    model = MixtureDensityNetwork(2, 2, 3, noise_type="fixed", fixed_noise_level=0.5).double()
    x = torch.randn(4, 2, dtype=torch.float64)
    mixture = model(x)
    assert mixture.loc.dtype == torch.float64
    assert mixture.component_stddev.dtype == torch.float64
    assert model.loss(x, torch.randn(4, 2, dtype=torch.float64)).dtype == torch.float64
    assert model.sample(x).dtype == torch.float64
    full = MixtureDensityNetwork(2, 2, 3, noise_type="full").double()
    assert full.loss(x, torch.randn(4, 2, dtype=torch.float64)).dtype == torch.float64


def test_initial_mixture_is_uniform_with_unit_scales() -> None:
    for noise_type in ["full", "diagonal", "isotropic", "isotropic_across_clusters"]:
        model = MixtureDensityNetwork(3, 2, 4, noise_type=noise_type).double()
        mixture = model(torch.randn(6, 3, dtype=torch.float64))
        torch.testing.assert_close(mixture.probs, torch.full((6, 4), 0.25, dtype=torch.float64))
        sd = mixture.component_stddev
        # The bias was set in float32 before .double(): float32 precision.
        torch.testing.assert_close(sd, torch.ones_like(sd), rtol=1e-6, atol=0.0)


@pytest.mark.parametrize("noise_type", NOISE_TYPES)
def test_gradcheck_through_the_head(noise_type: str) -> None:
    """Analytic gradients (incl. the fused kernels' backward) match finite differences."""
    head = _make_head(noise_type, K=2, D=3, in_features=3).double()
    with torch.no_grad():
        head.linear.weight.normal_(0.0, 0.5)
        head.linear.bias.normal_(0.0, 0.5)
    h = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    y = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    weight = head.linear.weight.detach().clone().requires_grad_(True)
    bias = head.linear.bias.detach().clone().requires_grad_(True)

    def nll(h: torch.Tensor, y: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        params = {"linear.weight": w, "linear.bias": b}
        return -torch.func.functional_call(head, params, (h,)).log_prob(y)

    assert torch.autograd.gradcheck(nll, (h, y, weight, bias))


@pytest.mark.parametrize("batch", BATCHES)
def test_full_head_packed_path_matches_dense_factor(batch: tuple[int, ...]) -> None:
    """The full head's packed log-density equals the dense-factor route, values and grads."""
    torch.manual_seed(0)
    head = _make_head("full", K=3, D=4).double()
    with torch.no_grad():
        head.linear.weight.normal_(0.0, 0.3)
    h = torch.randn(*batch, 6, dtype=torch.float64)
    y = torch.randn(*batch, 4, dtype=torch.float64)
    mixture = head(h)
    packed = mixture.log_prob(y)
    P = mixture.precision_tril  # (*batch, K, D, D), built from the packed entries
    assert P.shape == (*batch, 3, 4, 4)
    dense = type(mixture)(mixture.logits, mixture.loc, precision_tril=P).log_prob(y)
    torch.testing.assert_close(packed, dense, rtol=1e-12, atol=1e-12)
    params = list(head.parameters())
    for g_packed, g_dense in zip(
        torch.autograd.grad(packed.sum(), params, retain_graph=True),
        torch.autograd.grad(dense.sum(), params),
    ):
        torch.testing.assert_close(g_packed, g_dense, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("D", [1, 3])
@pytest.mark.parametrize("noise_type", ["diagonal", "isotropic", "fixed", "full"])
def test_small_and_large_batches_give_the_same_mixture(noise_type: str, D: int) -> None:
    """The one-GEMM path (small batches) and the per-block or transposed GEMMs agree."""
    torch.manual_seed(0)
    head = _make_head(noise_type, K=3, D=D, in_features=64).double()
    with torch.no_grad():
        head.linear.weight.normal_(0.0, 0.1)
    h = torch.randn(1100, 64, dtype=torch.float64)  # 1100 * 64 numbers: above the threshold
    large = head(h)
    small = [head(chunk) for chunk in h.split(100)]
    torch.testing.assert_close(large.logits, torch.cat([m.logits for m in small]))
    torch.testing.assert_close(large.loc, torch.cat([m.loc for m in small]))
    torch.testing.assert_close(large.precision_tril, torch.cat([m.precision_tril for m in small]))
    y = torch.randn(1100, D, dtype=torch.float64)
    torch.testing.assert_close(
        large.log_prob(y), torch.cat([m.log_prob(yc) for m, yc in zip(small, y.split(100))])
    )
