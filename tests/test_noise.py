"""Tests for mixture_density.noise: noise types and raw -> scale maps."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mixture_density.distribution import GaussianMixture
from mixture_density.noise import (
    HeadLayout,
    NoiseType,
    bounded_scale,
    inverse_bounded_scale,
    inverse_precision_diagonal,
    n_scale_outputs,
    precision_diagonal,
    precision_tril_from_raw,
    scale_from_raw,
    scale_parameters,
)

ALL_NAMES = ["full", "diagonal", "isotropic", "isotropic_across_clusters", "fixed"]


@pytest.mark.parametrize("name", ALL_NAMES)
def test_parse_accepts_member_and_any_case(name: str) -> None:
    member = NoiseType(name)
    assert member.value == name
    assert NoiseType.parse(member) is member
    assert NoiseType.parse(name.upper()) is member
    assert NoiseType.parse(name.title()) is member
    assert NoiseType(name.upper()) is member
    assert member == name  # str enum: compares equal to its value


def test_parse_unknown_lists_every_option() -> None:
    with pytest.raises(ValueError, match="noise_type") as info:
        NoiseType.parse("spherical")
    for name in ALL_NAMES:
        assert repr(name) in str(info.value)
    assert "'spherical'" in str(info.value)


def test_parse_rejects_non_strings() -> None:
    with pytest.raises(TypeError, match="noise_type"):
        NoiseType.parse(3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("full", 3 * 4 * 5 // 2),
        ("diagonal", 12),
        ("isotropic", 3),
        ("isotropic_across_clusters", 1),
        ("fixed", 0),
    ],
)
def test_n_scale_outputs(name: str, expected: int) -> None:
    assert n_scale_outputs(name, n_components=3, dim_out=4) == expected


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bounded_scale_floor_and_no_overflow(dtype: torch.dtype) -> None:
    min_scale = 1e-3
    raw = torch.tensor([-1e30, -1e4, -50.0, 0.0, 50.0, 1e4, 1e30], dtype=dtype)
    scale = bounded_scale(raw, min_scale)
    assert scale.dtype == dtype
    assert torch.isfinite(scale).all()
    assert (scale >= min_scale).all()
    # The floor is reached from above, not crossed: large negative raw gives exactly min_scale.
    assert scale[0].item() == pytest.approx(min_scale, rel=1e-6)
    assert (scale.diff() >= 0).all()  # monotone


def test_inverse_bounded_scale_round_trip() -> None:
    min_scale = 1e-3
    scale = torch.tensor([1.0001e-3, 1e-2, 0.5, 1.0, 30.0, 1e6], dtype=torch.float64)
    raw = inverse_bounded_scale(scale, min_scale)
    assert torch.isfinite(raw).all()
    torch.testing.assert_close(bounded_scale(raw, min_scale), scale, rtol=1e-12, atol=0.0)


def test_inverse_bounded_scale_rejects_values_at_the_floor() -> None:
    with pytest.raises(ValueError, match="min_scale"):
        inverse_bounded_scale(torch.tensor([1e-3, 1.0]), min_scale=1e-3)


@pytest.mark.parametrize(
    ("name", "shape"),
    [("diagonal", (3, 4)), ("isotropic", (3, 1)), ("isotropic_across_clusters", (1, 1))],
)
@pytest.mark.parametrize("batch", [(), (2,), (2, 5)])
def test_scale_from_raw_shapes(name: str, shape: tuple[int, int], batch: tuple[int, ...]) -> None:
    raw = torch.randn(*batch, n_scale_outputs(name, 3, 4), dtype=torch.float64)
    scale = scale_from_raw(name, raw, 3, 4, min_scale=1e-3)
    assert scale.shape == (*batch, *shape)
    torch.testing.assert_close(scale.flatten(), (F.softplus(raw) + 1e-3).flatten())


def test_isotropic_component_keeps_its_own_sigma() -> None:
    # Regression: tiling a (B, K) sigma with repeat(1, D) and viewing it as (B, K, D) hands
    # component k the sigmas of other components once D > 1 and K > 1.
    K, D = 3, 4
    sigma = torch.tensor([[0.5, 1.0, 2.0], [3.0, 4.0, 5.0]], dtype=torch.float64)  # (B, K)
    raw = inverse_bounded_scale(sigma, min_scale=1e-3)
    scale = scale_from_raw("isotropic", raw, K, D, min_scale=1e-3)
    per_dimension = scale.expand(2, K, D)  # what a (B, K, D) loc sees
    for k in range(K):
        torch.testing.assert_close(
            per_dimension[:, k, :], sigma[:, k : k + 1].expand(2, D), rtol=1e-12, atol=0.0
        )
    # The defect this guards against really is different here.
    tiled = sigma.repeat(1, D).view(2, K, D)
    assert not torch.allclose(tiled, per_dimension)


def test_scale_from_raw_errors() -> None:
    with pytest.raises(ValueError, match="full"):
        scale_from_raw("full", torch.zeros(3), 1, 2, min_scale=1e-3)
    with pytest.raises(ValueError, match=r"raw must have shape \(\*batch, 6\)"):
        scale_from_raw("diagonal", torch.zeros(4, 5), 3, 2, min_scale=1e-3)


def _hand_built_precision_tril(raw: torch.Tensor, D: int, min_scale: float) -> torch.Tensor:
    """Loop version of the documented layout for one component: diagonal first, then tril."""
    P = torch.zeros(D, D, dtype=raw.dtype)
    for i in range(D):
        P[i, i] = 1.0 / (F.softplus(raw[i]) + min_scale)
    rows, cols = torch.tril_indices(D, D, offset=-1)
    for n, (i, j) in enumerate(zip(rows.tolist(), cols.tolist())):
        P[i, j] = raw[D + n]
    return P


@pytest.mark.parametrize("D", [1, 2, 4])
def test_precision_tril_layout(D: int) -> None:
    K, batch, min_scale = 3, (2, 5), 1e-3
    raw = torch.randn(*batch, K * D * (D + 1) // 2, dtype=torch.float64)
    P = precision_tril_from_raw(raw, K, D, min_scale)
    assert P.shape == (*batch, K, D, D)
    torch.testing.assert_close(P, P.tril(), rtol=0.0, atol=0.0)
    per_component = raw.unflatten(-1, (K, -1))
    for b0 in range(batch[0]):
        for b1 in range(batch[1]):
            for k in range(K):
                expected = _hand_built_precision_tril(per_component[b0, b1, k], D, min_scale)
                torch.testing.assert_close(P[b0, b1, k], expected, rtol=1e-14, atol=0.0)


def test_precision_floor_bounds_conditional_and_marginal_std() -> None:
    """1 / P_ii is sd(y_i | y_{i+1:}); with the floor every marginal sd >= min_scale."""
    D, min_scale = 4, 1e-2
    raw = torch.randn(50, D * (D + 1) // 2, dtype=torch.float64) * 3.0
    raw[:, :D] = -1e4  # push every diagonal entry of P to its ceiling 1 / min_scale
    P = precision_tril_from_raw(raw, 1, D, min_scale)[:, 0]  # (50, D, D)
    covariance = torch.cholesky_inverse(torch.linalg.cholesky(P @ P.mT))  # (50, D, D)
    for i in range(D):
        # Conditional variance of y_i given y_{i+1:} (Schur complement).
        rest = slice(i + 1, D)
        s_ii = covariance[:, i, i]
        if i + 1 < D:
            s_ir = covariance[:, i, rest].unsqueeze(-1)
            s_rr = covariance[:, rest, rest]
            s_ii = s_ii - (s_ir.mT @ torch.linalg.solve(s_rr, s_ir)).squeeze((-1, -2))
        torch.testing.assert_close(s_ii.sqrt(), 1.0 / P[:, i, i], rtol=1e-8, atol=0.0)
    marginal_sd = covariance.diagonal(dim1=-2, dim2=-1).sqrt()
    assert (marginal_sd >= min_scale * (1 - 1e-9)).all()
    half_log_det = torch.linalg.slogdet(covariance).logabsdet / 2
    assert (half_log_det >= D * math.log(min_scale) - 1e-8).all()


def test_scale_parameters_dispatch() -> None:
    raw = torch.zeros(5, 2, 9, dtype=torch.float64)
    full = scale_parameters("full", raw, 3, 2, min_scale=1e-3)
    assert set(full) == {"precision_tril"}
    assert full["precision_tril"].shape == (5, 2, 3, 2, 2)

    empty = torch.zeros(5, 2, 0, dtype=torch.float64)
    fixed = scale_parameters("fixed", empty, 3, 2, 1e-3, fixed_scale=torch.tensor(0.25))
    assert fixed["scale"].shape == (5, 2, 1, 1)
    assert fixed["scale"].dtype == torch.float64
    assert (fixed["scale"] == 0.25).all()
    with pytest.raises(ValueError, match="fixed_scale"):
        scale_parameters("fixed", empty, 3, 2, min_scale=1e-3)


def test_precision_diagonal_round_trip_and_floor() -> None:
    raw = torch.linspace(-30.0, 30.0, 61, dtype=torch.float64)
    p = precision_diagonal(raw, min_scale=1e-2)
    torch.testing.assert_close(p, 1.0 / (F.softplus(raw) + 1e-2), rtol=1e-15, atol=0.0)
    assert (p <= 1.0 / 1e-2).all() and (p > 0).all()
    torch.testing.assert_close(inverse_precision_diagonal(p[:40], 1e-2), raw[:40])
    with pytest.raises(ValueError, match="min_scale"):
        inverse_precision_diagonal(torch.tensor([1.0 / 1e-2]), 1e-2)


@pytest.mark.parametrize("name", ALL_NAMES)
@pytest.mark.parametrize("D", [1, 3])
def test_head_layout_blocks_partition_the_output(name: str, D: int) -> None:
    K = 2
    layout = HeadLayout(NoiseType(name), K, D)
    assert layout.n_outputs == K + K * D + n_scale_outputs(name, K, D) == sum(layout.sizes)
    rows = [layout.logits_rows, layout.loc_rows, layout.scale_rows]
    assert [r.start for r in rows] == [0, rows[0].stop, rows[1].stop]
    assert rows[2].stop == layout.n_outputs
    raw = torch.arange(float(3 * layout.n_outputs)).reshape(3, -1)  # (B, n_outputs)
    logits, loc, scale_raw = layout.split(raw)
    assert torch.equal(logits, raw[:, rows[0]])
    assert torch.equal(loc, raw[:, rows[1]].reshape(3, K, D))
    assert torch.equal(scale_raw, raw[:, rows[2]])
    # Along dim 0 (the head's weight, outputs first): the same blocks.
    by_rows = layout.split(raw.T, dim=0)
    for a, b in zip(by_rows, (logits, loc, scale_raw)):
        assert torch.equal(a.movedim(0, -1) if a.dim() == 2 else a.permute(2, 0, 1), b)


def test_head_layout_packed_full_factor() -> None:
    K, D = 2, 3
    layout = HeadLayout(NoiseType.FULL, K, D)
    scale_raw = torch.randn(4, layout.n_scale, dtype=torch.float64)
    diagonal_raw, off_diagonal = layout.split_packed(scale_raw)
    per_component = scale_raw.reshape(4, K, D * (D + 1) // 2)  # D diagonal, then the rest
    assert torch.equal(diagonal_raw, per_component[..., :D])
    assert torch.equal(off_diagonal, per_component[..., D:])
    torch.testing.assert_close(
        precision_tril_from_raw(scale_raw, K, D, 1e-3),
        scale_parameters("full", scale_raw, K, D, 1e-3)["precision_tril"],
    )
    with pytest.raises(ValueError, match="full"):
        HeadLayout(NoiseType.DIAGONAL, K, D).split_packed(scale_raw)


@pytest.mark.parametrize("name", ALL_NAMES)
def test_head_layout_mixture_matches_scale_parameters(name: str) -> None:
    # The layout's mixture is the GaussianMixture of the documented blocks, for any batch shape
    # (here (M, B): a stacked ensemble's).
    K, D = 3, 2
    layout = HeadLayout(NoiseType(name), K, D)
    raw = torch.randn(4, 5, layout.n_outputs, dtype=torch.float64)
    fixed = torch.tensor(0.3, dtype=torch.float64) if name == "fixed" else None
    mixture = layout.mixture_from_raw(raw, min_scale=1e-3, fixed_scale=fixed)
    assert mixture.batch_shape == (4, 5) and mixture.event_shape == (D,)
    logits, loc, scale_raw = raw.split(layout.sizes, -1)
    params = scale_parameters(name, scale_raw, K, D, 1e-3, fixed_scale=fixed)
    expected = GaussianMixture(logits, loc.unflatten(-1, (K, D)), **params)
    y = torch.randn(4, 5, D, dtype=torch.float64)
    torch.testing.assert_close(mixture.log_prob(y), expected.log_prob(y), rtol=1e-12, atol=1e-12)
    with pytest.raises(ValueError, match="raw must have shape"):
        layout.mixture_from_raw(raw[..., 1:], min_scale=1e-3, fixed_scale=fixed)
