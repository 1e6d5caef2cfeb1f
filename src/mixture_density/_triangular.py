"""Full-covariance components: a lower-triangular Cholesky factor per component.

:class:`ScaleTrilComponents` holds ``L_k`` with ``Sigma_k = L_k L_k^T``;
:class:`PrecisionTrilComponents` holds ``P_k`` with ``Sigma_k^{-1} = P_k P_k^T``, whose density
needs only a matrix-vector product; :class:`PackedPrecisionTrilComponents` holds ``P_k`` by its
packed entries (the full-covariance head's output) and builds the dense factor only when
something other than the packed log-density needs it. What the two dense kinds share
(validation, moments from the covariance, marginals, conditioning, sampling by gathered
factor, the precision algebra of the mode search) lives once in :class:`TriangularComponents`.
Shapes: ``*S`` sample dims, ``*B`` batch dims, ``K`` components, ``D`` event dim.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Sequence
from functools import cached_property

import torch
from torch import Tensor
from torch.distributions import Distribution, MultivariateNormal

from . import _kernels, _math
from ._components import Axis, Components, all_finite, diag_mixture_log_prob

__all__ = [
    "PackedPrecisionTrilComponents",
    "PrecisionTrilComponents",
    "ScaleTrilComponents",
    "TriangularComponents",
]


def upper_nonzero(f: Tensor) -> bool:
    """Whether any matrix in ``f`` (..., D, D) has a nonzero strict upper triangle.

    One matrix-vector product with weights in ``[1, 2)`` on the strict upper triangle (zero
    elsewhere) replaces an elementwise test, which on CPU costs far more (``triu``, gathers
    and ``any`` are slow for large batches). A nonzero weighted sum proves a nonzero entry; a
    nonzero triangle whose weighted sum cancels exactly needs adversarial values.
    """
    D = f.shape[-1]
    # Fractional parts of k * golden ratio: distinct, so no two entries cancel by symmetry.
    k = torch.arange(D * D, dtype=f.dtype, device=f.device)
    weights = 1.0 + torch.frac(k * 0.6180339887498949)
    weights = weights * torch.ones(D, D, dtype=f.dtype, device=f.device).triu(1).flatten()
    return bool((f.reshape(-1, D * D) @ weights).any())


class TriangularComponents(Components):
    """Components with one dense lower-triangular factor each, (*B, K, D, D)."""

    sample_by_component = True

    def __init__(self, loc: Tensor, factor: Tensor) -> None:
        super().__init__(loc)
        self._factor = _math.expand_to(factor, (*loc.shape, loc.shape[-1]))

    @property
    def factor(self) -> Tensor:
        """(*B, K, D, D) the factor of this parameterization."""
        return self._factor

    @classmethod
    def factor_batch_shape(cls, factor: Tensor, K: int, D: int) -> torch.Size:
        if (
            factor.dim() < 2
            or factor.shape[-2:] != (D, D)
            or (factor.dim() >= 3 and factor.shape[-3] not in (1, K))
        ):
            raise ValueError(
                f"{cls.parameterization} must have shape (*batch, K, D, D) = "
                f"(..., {K}, {D}, {D}), got {tuple(factor.shape)}"
            )
        return factor.shape[:-3] if factor.dim() > 3 else torch.Size()

    @classmethod
    def check_factor(cls, factor: Tensor) -> None:
        kind = cls.parameterization
        if not all_finite(factor):
            raise ValueError(f"{kind} must be finite, found NaN or inf")
        if not bool(factor.diagonal(dim1=-2, dim2=-1).min() > 0):
            raise ValueError(f"{kind} must have a positive diagonal")
        if upper_nonzero(factor):
            raise ValueError(f"{kind} must be lower triangular (upper part is nonzero)")

    def validate(self) -> None:
        self.check_factor(self.factor)

    @cached_property
    def variance(self) -> Tensor:
        return self.covariance.diagonal(dim1=-2, dim2=-1)

    @cached_property
    def stddev(self) -> Tensor:
        return self.variance.sqrt()

    def to_torch(self) -> Distribution:
        return MultivariateNormal(self.loc, scale_tril=self.scale_tril)

    def marginal(self, dims: list[int]) -> Components:
        cov = self.covariance[..., dims, :][..., dims]
        return ScaleTrilComponents(self.loc[..., dims], torch.linalg.cholesky(cov))

    def condition(self, b: list[int], a: list[int], yb: Tensor) -> tuple[Tensor, Components]:
        # mu_{a|b} = mu_a + S_ab S_bb^{-1} (y_b - mu_b) and S_{a|b} = S_aa - S_ab S_bb^{-1} S_ba
        # are both read off one Cholesky factor of the covariance with the b dims first.
        shape = yb.shape[:-2] + self.loc.shape[-2:]  # (*B', K, D)
        loc = self.loc.expand(shape)
        perm = b + a
        cov = self.covariance[..., perm, :][..., perm]
        L = torch.linalg.cholesky(cov).expand((*shape, shape[-1]))  # (*B', K, D, D)
        nb = len(b)
        L_bb, L_ab, L_aa = L[..., :nb, :nb], L[..., nb:, :nb], L[..., nb:, nb:]
        diff = (yb - loc[..., b]).unsqueeze(-1)  # (*B', K, |b|, 1)
        w = torch.linalg.solve_triangular(L_bb, diff, upper=False)  # L_bb^{-1} (y_b - mu_b)
        loc_a = loc[..., a] + (L_ab @ w).squeeze(-1)
        log_nb = (
            -0.5 * w.squeeze(-1).square().sum(-1)
            - L_bb.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            - 0.5 * nb * _math.LOG_2PI
        )
        return log_nb, ScaleTrilComponents(loc_a, L_aa)

    def expand(self, batch_shape: torch.Size) -> Components:
        return type(self)(self.loc.expand((*batch_shape, *self.loc.shape[-2:])), self.factor)

    @classmethod
    def cat(cls, parts: Sequence[Components], axis: Axis) -> Components:
        full = [p for p in parts if isinstance(p, cls)]
        if len(full) != len(parts):
            raise TypeError(f"{cls.__name__}.cat joins {cls.__name__} only")
        on_components = axis == "components"
        loc = torch.cat([p.loc for p in full], -2 if on_components else 0)
        return cls(loc, torch.cat([p.factor for p in full], -3 if on_components else 0))

    def sample_gathered(self, idx: Tensor, eps: Tensor) -> Tensor:
        F = self._gather(self.factor, idx)  # (*S, *B, D, D), one factor per draw
        return self._gather(self.loc, idx) + self._transform(F, eps)

    @abstractmethod
    def _transform(self, F: Tensor, eps: Tensor) -> Tensor:
        """``A eps`` with ``A A^T = Sigma`` from the factors ``F`` (..., D, D), eps (..., D)."""

    @cached_property
    def precision_matrix(self) -> Tensor:
        """(*B, K, D, D) ``Sigma_k^{-1}``."""
        return self._precision_matrix()

    @abstractmethod
    def _precision_matrix(self) -> Tensor: ...

    def precision_times(self, v: Tensor) -> Tensor:
        return (self.precision_matrix @ v.unsqueeze(-1)).squeeze(-1)

    def mix_precisions(self, r: Tensor) -> Tensor:
        return (r[..., None, None] * self.precision_matrix).sum(-3)  # (..., *B, D, D)

    def solve_mixed(self, A: Tensor, b: Tensor) -> Tensor:
        return torch.cholesky_solve(b.unsqueeze(-1), torch.linalg.cholesky(A)).squeeze(-1)

    def mixed_matrix(self, A: Tensor) -> Tensor:
        return A


class ScaleTrilComponents(TriangularComponents):
    """Lower Cholesky factors ``L_k`` of the covariances; Mahalanobis terms by a solve."""

    parameterization = "scale_tril"

    def component_log_prob(self, y: Tensor) -> Tensor:
        return _math.tril_component_log_prob(y, self.loc, self.factor)

    @property
    def scale_tril(self) -> Tensor:
        return self.factor

    @cached_property
    def covariance(self) -> Tensor:
        return self.factor @ self.factor.transpose(-1, -2)

    @cached_property
    def variance(self) -> Tensor:
        return self.factor.square().sum(-1)

    @cached_property
    def precision_tril(self) -> Tensor:
        return torch.linalg.cholesky(torch.cholesky_inverse(self.factor))

    def marginal(self, dims: list[int]) -> Components:
        n = len(dims)
        if dims == list(range(n)):
            # A leading block of a Cholesky factor is the factor of the leading sub-block.
            return ScaleTrilComponents(self.loc[..., dims], self.factor[..., :n, :n])
        return super().marginal(dims)

    def affine(self, s: Tensor, t: Tensor) -> Components:
        # diag(s) L diag(sign s) keeps a positive diagonal: a valid Cholesky factor.
        tril = s.unsqueeze(-1) * self.factor * torch.sign(s).unsqueeze(-2)
        return ScaleTrilComponents(self.loc * s + t, tril)

    def tempered(self, root: Tensor) -> Components:
        return ScaleTrilComponents(self.loc, self.factor * root.unsqueeze(-1))

    def _transform(self, F: Tensor, eps: Tensor) -> Tensor:
        return (F @ eps.unsqueeze(-1)).squeeze(-1)

    def sample_factor(self) -> Tensor:
        return self.factor

    def _precision_matrix(self) -> Tensor:
        return torch.cholesky_inverse(self.factor)


class PrecisionTrilComponents(TriangularComponents):
    """Lower Cholesky factors ``P_k`` of the precisions; the density needs no solve."""

    parameterization = "precision_tril"

    def component_log_prob(self, y: Tensor) -> Tensor:
        return _math.precision_component_log_prob(y, self.loc, self.factor)

    def mixture_log_prob(self, y: Tensor, logits: Tensor) -> Tensor:
        return _kernels.precision_mixture_log_prob(y, logits, self.loc, self.factor)

    @property
    def precision_tril(self) -> Tensor:
        return self.factor

    @cached_property
    def covariance(self) -> Tensor:
        # Sigma = (P P^T)^{-1}: two triangular solves, no explicit inverse of a full matrix.
        cov = torch.cholesky_inverse(self.factor)
        return 0.5 * (cov + cov.transpose(-1, -2))  # exact symmetry for later Cholesky

    @cached_property
    def scale_tril(self) -> Tensor:
        return torch.linalg.cholesky(self.covariance)

    def affine(self, s: Tensor, t: Tensor) -> Components:
        # diag(1 / s) P diag(sign s): the precision factor of the scaled variable.
        prec = self.factor / s.unsqueeze(-1) * torch.sign(s).unsqueeze(-2)
        return PrecisionTrilComponents(self.loc * s + t, prec)

    def tempered(self, root: Tensor) -> Components:
        return PrecisionTrilComponents(self.loc, self.factor / root.unsqueeze(-1))

    def _transform(self, F: Tensor, eps: Tensor) -> Tensor:
        # Sigma = P^{-T} P^{-1}: x = P^{-T} eps solves P^T x = eps.
        x = torch.linalg.solve_triangular(F.transpose(-1, -2), eps.unsqueeze(-1), upper=True)
        return x.squeeze(-1)

    def sample_factor(self) -> Tensor:
        # A = P^{-T} (upper triangular): one solve per component, not one per draw.
        P = self.factor
        eye = torch.eye(P.shape[-1], dtype=P.dtype, device=P.device)
        return torch.linalg.solve_triangular(P.transpose(-1, -2), eye, upper=True)

    def _precision_matrix(self) -> Tensor:
        return self.factor @ self.factor.transpose(-1, -2)


class PackedPrecisionTrilComponents(PrecisionTrilComponents):
    """Precision factors given by their packed entries (the full-covariance head's output).

    ``diagonal`` (*B, K, D) holds ``P_k,ii > 0``, ``off_diagonal`` (*B, K, D (D - 1) / 2) the
    strictly lower entries row by row (``torch.tril_indices(D, D, -1)`` order). The log-density
    of points without sample dims runs the packed kernel on these numbers and never builds a
    ``D x D`` matrix; the dense :attr:`factor` is built, once and differentiably, only when
    something else needs it.
    """

    def __init__(self, loc: Tensor, diagonal: Tensor, off_diagonal: Tensor) -> None:
        Components.__init__(self, loc)
        shape = loc.shape[:-1]  # (*B, K)
        self.diagonal = _math.expand_to(diagonal, (*shape, diagonal.shape[-1]))
        self.off_diagonal = _math.expand_to(off_diagonal, (*shape, off_diagonal.shape[-1]))

    @cached_property
    def factor(self) -> Tensor:
        return _math.tril_from_packed(self.diagonal, self.off_diagonal)  # (*B, K, D, D)

    @property
    def has_dense_factor(self) -> bool:
        """Whether the dense factor has been built (the packed fast paths never build it)."""
        return "factor" in self.__dict__

    @staticmethod
    def check_packed(diagonal: Tensor, off_diagonal: Tensor) -> None:
        """Value checks of packed entries as given (``validate_args``)."""
        for name, t in (("diagonal", diagonal), ("off_diagonal", off_diagonal)):
            if not all_finite(t):
                raise ValueError(f"{name} must be finite, found NaN or inf")
        if diagonal.numel() and not bool(diagonal.min() > 0):
            raise ValueError(f"diagonal must be positive, got minimum {diagonal.min():g}")

    def validate(self) -> None:
        self.check_packed(self.diagonal, self.off_diagonal)

    def mixture_log_prob(self, y: Tensor, logits: Tensor) -> Tensor:
        D = self.loc.shape[-1]
        if D == 1:
            # A 1 x 1 precision factor is 1 / scale: the (cheaper) diagonal kernels apply.
            return diag_mixture_log_prob(y, logits, self.loc, self.diagonal.reciprocal())
        if y.dim() < self.loc.dim() and self.loc.numel() * D > _kernels.FUSED_MIN_NUMEL:
            # No sample dims: the packed kernel never builds the D x D factors.
            return _kernels.packed_precision_mixture_log_prob(
                y, logits, self.loc, self.diagonal, self.off_diagonal
            )
        return super().mixture_log_prob(y, logits)

    def affine(self, s: Tensor, t: Tensor) -> Components:
        # diag(1 / s) P diag(sign s) entry by entry: P_ij sign(s_j) / s_i, so P_ii / |s_i|.
        D = s.shape[-1]
        rows, cols = torch.tril_indices(D, D, offset=-1, device=s.device)
        off = self.off_diagonal * (torch.sign(s)[..., cols] / s[..., rows])
        return PackedPrecisionTrilComponents(self.loc * s + t, self.diagonal / s.abs(), off)

    def tempered(self, root: Tensor) -> Components:
        return PackedPrecisionTrilComponents(
            self.loc, self.diagonal / root, self.off_diagonal / root
        )

    def expand(self, batch_shape: torch.Size) -> Components:
        loc = self.loc.expand((*batch_shape, *self.loc.shape[-2:]))
        return PackedPrecisionTrilComponents(loc, self.diagonal, self.off_diagonal)

    @classmethod
    def cat(cls, parts: Sequence[Components], axis: Axis) -> Components:
        packed = [p for p in parts if isinstance(p, PackedPrecisionTrilComponents)]
        if len(packed) != len(parts):  # some dense: join the dense factors
            return PrecisionTrilComponents.cat(parts, axis)
        dim = -2 if axis == "components" else 0
        return PackedPrecisionTrilComponents(
            torch.cat([p.loc for p in packed], dim),
            torch.cat([p.diagonal for p in packed], dim),
            torch.cat([p.off_diagonal for p in packed], dim),
        )
