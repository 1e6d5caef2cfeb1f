"""The Gaussian components of a mixture, one class per covariance parameterization.

A :class:`~mixture_density.GaussianMixture` holds its (unnormalized) logits and one
:class:`Components` object, chosen once at construction by the factor it was given:

* :class:`ScaleComponents`: elementwise standard deviations (diagonal, isotropic, shared or
  a fixed level, kept in their own broadcastable shape);
* :class:`ScaleTrilComponents`: lower Cholesky factors ``L_k`` of the covariances;
* :class:`PrecisionTrilComponents`: lower Cholesky factors ``P_k`` of the precisions, and
  :class:`PackedPrecisionTrilComponents` for factors given by their packed entries.

Each class owns everything that depends on its factor: the log-density kernels, the sampling
transform, the derived covariance factors, marginals, conditioning, affine maps,
temperature, broadcasting, validation and concatenation. No method asks which class it is.
Shapes: ``*S`` sample dims, ``*B`` batch dims, ``K`` components, ``D`` event dim.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from functools import cached_property
from typing import ClassVar, Literal

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Normal

from . import _kernels, _math

__all__ = ["Axis", "Components", "ScaleComponents", "all_finite", "diag_mixture_log_prob"]

#: How :meth:`Components.cat` joins: along the component axis or the (first) batch axis.
Axis = Literal["components", "batch"]


def all_finite(t: Tensor) -> bool:
    """Whether every entry is finite, usually with one reduction.

    A NaN or inf anywhere makes the sum NaN or inf, so a finite sum settles it; the exact
    elementwise test (several times slower on CPU) runs only when the sum is not finite.
    """
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def diag_mixture_log_prob(y: Tensor, logits: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """(*S, *B) mixture log-density of diagonal components, by the faster route for its size."""
    if y.numel() * loc.shape[-2] <= _kernels.FUSED_MIN_NUMEL:
        # Small problems: the fused kernel's Python overhead outweighs what it saves.
        return _math.mixture_log_prob(logits, _math.diag_component_log_prob(y, loc, scale))
    return _kernels.diag_mixture_log_prob(y, logits, loc, scale)


class Components(ABC):
    """``K`` Gaussian components per batch element: means and one covariance factor.

    Args:
        loc: (*B, K, D) component means, already broadcast to the full batch shape.
    """

    #: The constructor keyword (and ``GaussianMixture.parameterization``) of this class.
    parameterization: ClassVar[str]
    #: Whether draws are best made component by component: one matrix product per
    #: (batch element, component) block with :meth:`sample_factor` (full covariances).
    sample_by_component: ClassVar[bool] = False

    def __init__(self, loc: Tensor) -> None:
        self.loc = loc

    @classmethod
    @abstractmethod
    def factor_batch_shape(cls, factor: Tensor, K: int, D: int) -> torch.Size:
        """Batch shape of a factor as given; ``ValueError`` if it does not fit (K, D)."""

    @classmethod
    @abstractmethod
    def check_factor(cls, factor: Tensor) -> None:
        """Value checks of a factor as given (``validate_args``): finite, in its support."""

    @abstractmethod
    def validate(self) -> None:
        """Value checks of this object's own factor (see :meth:`check_factor`)."""

    # ------------------------------------------------------------------ densities

    @abstractmethod
    def component_log_prob(self, y: Tensor) -> Tensor:
        """(*S, *B, D) -> (*S, *B, K) ``log N(y | mu_k, Sigma_k)``."""

    def mixture_log_prob(self, y: Tensor, logits: Tensor) -> Tensor:
        """(*S, *B, D) -> (*S, *B) ``log sum_k softmax(logits)_k N(y | mu_k, Sigma_k)``."""
        return _math.mixture_log_prob(logits, self.component_log_prob(y))

    # ------------------------------------------------------------------ covariance factors

    @property
    def scale(self) -> Tensor | None:
        """(*B, K, D) elementwise standard deviations; ``None`` unless elementwise."""
        return None

    @property
    @abstractmethod
    def stddev(self) -> Tensor:
        """(*B, K, D) standard deviation of each component along each dim."""

    @property
    @abstractmethod
    def variance(self) -> Tensor:
        """(*B, K, D) diagonal of each covariance."""

    @property
    @abstractmethod
    def covariance(self) -> Tensor:
        """(*B, K, D, D) ``Sigma_k``."""

    @property
    @abstractmethod
    def scale_tril(self) -> Tensor:
        """(*B, K, D, D) lower Cholesky factor of ``Sigma_k``."""

    @property
    @abstractmethod
    def precision_tril(self) -> Tensor:
        """(*B, K, D, D) lower ``P_k`` with ``P_k P_k^T = Sigma_k^{-1}``."""

    @abstractmethod
    def to_torch(self) -> Distribution:
        """The components as a torch distribution of batch shape (*B, K)."""

    # ------------------------------------------------------------------ transformations

    @abstractmethod
    def marginal(self, dims: list[int]) -> Components:
        """Components over the output dims ``dims`` (normalized, distinct, in that order)."""

    @abstractmethod
    def condition(self, b: list[int], a: list[int], yb: Tensor) -> tuple[Tensor, Components]:
        """Condition every component on ``y_b``.

        Args:
            b: conditioned dims; a: the remaining dims, increasing.
            yb: (*B', 1, |b|) observed values; ``B'`` broadcasts ``B`` and the values' batch.

        Returns:
            ``(log_nb, components)``: ``log N(y_b | mu_kb, Sigma_kbb)`` of shape (*B', K)
            (the conditioning log-weights) and the conditioned components over ``a``.
        """

    @abstractmethod
    def affine(self, s: Tensor, t: Tensor) -> Components:
        """Components of ``s * y + t``; ``s`` (nonzero) and ``t`` are (*B, 1, D)."""

    @abstractmethod
    def tempered(self, root: Tensor) -> Components:
        """Covariances multiplied by ``root^2``; ``root`` (*B, 1, 1) positive."""

    @abstractmethod
    def expand(self, batch_shape: torch.Size) -> Components:
        """The same components broadcast to ``batch_shape`` (views)."""

    @classmethod
    @abstractmethod
    def cat(cls, parts: Sequence[Components], axis: Axis) -> Components:
        """Join components of one parameterization along the component or batch axis."""

    # ------------------------------------------------------------------ sampling

    def _gather(self, t: Tensor, idx: Tensor) -> Tensor:
        """Entries of component ``idx``: t (*B, K, *E) at (*S, *B) indices -> (*S, *B, *E)."""
        n, E = idx.dim(), t.shape[self.loc.dim() - 1 :]
        index = idx.reshape(idx.shape + (1,) * (1 + len(E))).expand((*idx.shape, 1, *E))
        return t.expand((*idx.shape, self.loc.shape[-2], *E)).gather(n, index).squeeze(n)

    @abstractmethod
    def sample_gathered(self, idx: Tensor, eps: Tensor) -> Tensor:
        """Draws ``mu_k + A_k eps`` for (*S, *B) component indices and (*S, *B, D) noise."""

    def sample_factor(self) -> Tensor:
        """(*B, K, D, D) ``A_k`` with ``A_k A_k^T = Sigma_k`` (when :attr:`sample_by_component`)."""
        raise NotImplementedError(f"{type(self).__name__} samples by gathering")

    # ------------------------------------------------------------------ precision algebra

    @abstractmethod
    def precision_times(self, v: Tensor) -> Tensor:
        """``Sigma_k^{-1} v_k`` for v (..., *B, K, D)."""

    @abstractmethod
    def mix_precisions(self, r: Tensor) -> Tensor:
        """``A = sum_k r_k Sigma_k^{-1}`` for weights r (..., *B, K), in a form for ``solve``."""

    @abstractmethod
    def solve_mixed(self, A: Tensor, b: Tensor) -> Tensor:
        """``A^{-1} b`` for ``A`` from :meth:`mix_precisions` and b (..., *B, D)."""

    @abstractmethod
    def mixed_matrix(self, A: Tensor) -> Tensor:
        """``A`` from :meth:`mix_precisions` as a (..., *B, D, D) matrix."""


class ScaleComponents(Components):
    """Elementwise standard deviations broadcastable to (*B, K, D), kept in their own shape.

    Diagonal (*B, K, D), isotropic (*B, K, 1), shared (*B, 1, 1) or a fixed level (a scalar):
    the kernels broadcast the factor, so an isotropic scale costs one logarithm per
    component rather than ``D``, and nothing is copied.
    """

    parameterization = "scale"

    def __init__(self, loc: Tensor, scale: Tensor) -> None:
        super().__init__(loc)
        self.factor = scale

    @classmethod
    def factor_batch_shape(cls, factor: Tensor, K: int, D: int) -> torch.Size:
        if factor.dim() >= 1 and factor.shape[-1] not in (1, D):
            raise ValueError(
                f"scale must be broadcastable to (*batch, K, D) = (..., {K}, {D}); its "
                f"last dim must be 1 or {D}, got shape {tuple(factor.shape)}"
            )
        if factor.dim() >= 2 and factor.shape[-2] not in (1, K):
            raise ValueError(
                f"scale must be broadcastable to (*batch, K, D) = (..., {K}, {D}); its "
                f"second-to-last dim must be 1 or {K}, got shape {tuple(factor.shape)}"
            )
        return factor.shape[:-2] if factor.dim() > 2 else torch.Size()

    @classmethod
    def check_factor(cls, factor: Tensor) -> None:
        if not all_finite(factor):
            raise ValueError("scale must be finite, found NaN or inf")
        # One reduction; faster than (factor > 0).all().
        if factor.numel() and not bool(factor.min() > 0):
            raise ValueError(f"scale must be positive, got minimum {factor.min().item():g}")

    def validate(self) -> None:
        self.check_factor(self.factor)

    def component_log_prob(self, y: Tensor) -> Tensor:
        return _math.diag_component_log_prob(y, self.loc, self.factor)

    def mixture_log_prob(self, y: Tensor, logits: Tensor) -> Tensor:
        return diag_mixture_log_prob(y, logits, self.loc, self.factor)

    @property
    def _isotropic(self) -> bool:
        """One standard deviation for every output dim (of a component, or of all)."""
        return self.factor.dim() == 0 or self.factor.shape[-1] == 1

    @property
    def scale(self) -> Tensor:
        return self.factor.expand(self.loc.shape)  # a view

    @property
    def stddev(self) -> Tensor:
        return self.scale

    @cached_property
    def variance(self) -> Tensor:
        return self.scale.square()

    @cached_property
    def covariance(self) -> Tensor:
        return torch.diag_embed(self.variance)

    @cached_property
    def scale_tril(self) -> Tensor:
        return torch.diag_embed(self.scale)

    @cached_property
    def precision_tril(self) -> Tensor:
        return torch.diag_embed(self.scale.reciprocal())

    def to_torch(self) -> Distribution:
        return Independent(Normal(self.loc, self.scale), 1)

    def marginal(self, dims: list[int]) -> ScaleComponents:
        scale = self.factor if self._isotropic else self.factor[..., dims]
        return ScaleComponents(self.loc[..., dims], scale)

    def condition(self, b: list[int], a: list[int], yb: Tensor) -> tuple[Tensor, Components]:
        shape = yb.shape[:-2] + self.loc.shape[-2:]  # (*B', K, D)
        loc, sd = self.loc.expand(shape), self.scale.expand(shape)
        z = (yb - loc[..., b]) / sd[..., b]  # (*B', K, |b|)
        log_nb = (-0.5 * z.square() - sd[..., b].log()).sum(-1) - 0.5 * len(b) * _math.LOG_2PI
        # Diagonal components only re-weight: the other dims are independent of y_b.
        scale = self.factor if self._isotropic else sd[..., a]
        return log_nb, ScaleComponents(loc[..., a], scale)

    def affine(self, s: Tensor, t: Tensor) -> ScaleComponents:
        return ScaleComponents(self.loc * s + t, self.factor * s.abs())

    def tempered(self, root: Tensor) -> ScaleComponents:
        return ScaleComponents(self.loc, self.factor * root)

    def expand(self, batch_shape: torch.Size) -> ScaleComponents:
        # The factor keeps its broadcastable shape.
        return ScaleComponents(self.loc.expand((*batch_shape, *self.loc.shape[-2:])), self.factor)

    @classmethod
    def cat(cls, parts: Sequence[Components], axis: Axis) -> ScaleComponents:
        scales = [p for p in parts if isinstance(p, ScaleComponents)]
        if len(scales) != len(parts):
            raise TypeError("ScaleComponents.cat joins ScaleComponents only")
        dim = -2 if axis == "components" else 0
        # Isotropic factors stay isotropic: (*B, K, 1) blocks, one log per component.
        iso = all(p._isotropic for p in scales)
        factors = [p.factor.expand((*p.loc.shape[:-1], 1)) if iso else p.scale for p in scales]
        loc = torch.cat([p.loc for p in scales], dim)
        return ScaleComponents(loc, torch.cat(factors, dim))

    def sample_gathered(self, idx: Tensor, eps: Tensor) -> Tensor:
        return self._gather(self.loc, idx) + self._gather(self.scale, idx) * eps

    @cached_property
    def _precision(self) -> Tensor:
        return self.variance.reciprocal()  # (*B, K, D), the diagonal of Sigma_k^{-1}

    def precision_times(self, v: Tensor) -> Tensor:
        return self._precision * v

    def mix_precisions(self, r: Tensor) -> Tensor:
        return (r.unsqueeze(-1) * self._precision).sum(-2)  # the diagonal, (..., *B, D)

    def solve_mixed(self, A: Tensor, b: Tensor) -> Tensor:
        return b / A

    def mixed_matrix(self, A: Tensor) -> Tensor:
        return torch.diag_embed(A)
