"""Gaussian mixture distribution with three covariance parameterizations.

:class:`GaussianMixture` is an ordinary :class:`torch.distributions.Distribution` over
``R^D`` whose batch holds one mixture of ``K`` Gaussians per element. Each component's
covariance comes from exactly one factor, the single source of truth for density, sampling
and every derived quantity:

* ``scale``: elementwise standard deviations broadcastable to ``(*batch, K, D)``; covers
  diagonal ``(*batch, K, D)``, isotropic per component ``(*batch, K, 1)``, isotropic shared
  across components ``(*batch, 1, 1)`` and a fixed noise level (a scalar tensor);
* ``scale_tril``: lower Cholesky factor ``L_k`` of ``Sigma_k = L_k L_k^T``;
* ``precision_tril``: lower Cholesky factor ``P_k`` of the precision,
  ``Sigma_k^{-1} = P_k P_k^T``; the density then needs only a matrix-vector product.

Half-precision parameters (float16, bfloat16) are upcast to float32 on construction, so
every result of such a mixture is float32: the log-sum-exp and the squared Mahalanobis
distances overflow or lose all precision in 16-bit arithmetic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cached_property
from typing import Any, ClassVar

import torch
from torch import Tensor
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
    constraints,
)

from . import _math

__all__ = ["GaussianMixture"]

_HALF_DTYPES = (torch.float16, torch.bfloat16)

# Standard deviations below the smallest and above the largest component mean that bracket
# every quantile in [Phi(-10), 1 - Phi(-10)] ~ [7.6e-24, 1 - 7.6e-24]; more extreme
# quantiles widen the bracket (see ``icdf``).
ICDF_BRACKET_STDS = 10.0

# log_prob(): below this many numbers (diagonal: residuals, samples x batch x K x D; packed
# precision factors: dense factors, batch x K x D x D) the composite expressions are faster
# than the fused autograd.Functions on CPU (measured at batch 256, K = 10, D = 1 and 8; the
# fused kernels win from a few thousand rows).
_FUSED_MIN_NUMEL = 2**15

# sample(): draws of full-covariance mixtures are transformed by one GEMM per (batch element,
# component) group when there are at most this many groups (a Python loop over them), and
# by a gathered factor per draw otherwise (memory D^2 per draw, fine for few draws each).
SAMPLE_MAX_GROUPS = 4096

# Mode search: fixed-point (mean-shift / EM) iterations, then Newton polishing.
MODE_MAX_ITER = 500
MODE_NEWTON_STEPS = 20
# Fixed-point iterations stop once no coordinate moves more than this many ulps (relative to
# 1 + |y|): below that a step is rounding noise and the Newton polish takes over.
MODE_TOL_ULPS = 16.0


def _as_tensor_like(x: Any, like: Tensor, name: str) -> Tensor:
    if isinstance(x, Tensor):
        if x.is_complex():
            raise TypeError(f"{name} must be a real tensor, got dtype {x.dtype}")
        return x.to(dtype=like.dtype, device=like.device)
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


def _all_finite(t: Tensor) -> bool:
    """Whether every entry is finite, usually with one reduction.

    A NaN or inf anywhere makes the sum NaN or inf, so a finite sum settles it; the exact
    elementwise test (several times slower on CPU) runs only when the sum is not finite.
    """
    return bool(torch.isfinite(t.sum())) or bool(torch.isfinite(t).all())


def _upper_nonzero(f: Tensor) -> bool:
    """Whether any matrix in ``f`` (..., D, D) has a nonzero strict upper triangle.

    One matrix-vector product with weights in ``[1, 2)`` on the strict upper triangle (zero
    elsewhere) replaces an elementwise test, which on CPU costs ten times more (``triu``,
    gathers and ``any`` are slow for large batches). A nonzero weighted sum proves a nonzero
    entry; a nonzero triangle whose weighted sum cancels exactly needs adversarial values.
    """
    D = f.shape[-1]
    # Fractional parts of k * golden ratio: distinct, so no two entries cancel by symmetry.
    k = torch.arange(D * D, dtype=f.dtype, device=f.device)
    weights = 1.0 + torch.frac(k * 0.6180339887498949)
    weights = weights * torch.ones(D, D, dtype=f.dtype, device=f.device).triu(1).flatten()
    return bool((f.reshape(-1, D * D) @ weights).any())


def _broadcast_shapes(*shapes: torch.Size) -> torch.Size:
    """``torch.broadcast_shapes`` with a fast path for the usual case.

    When every shape is a trailing part of the longest (e.g. all equal), that is the
    result; ``torch.broadcast_shapes`` runs Python reference code costing tens of
    microseconds, a noticeable part of a small training step.
    """
    longest = max(shapes, key=len)
    if all(s == longest[len(longest) - len(s) :] for s in shapes):
        return torch.Size(longest)
    return torch.broadcast_shapes(*shapes)


def _multinomial_counts(probs: Tensor, n: int) -> Tensor:
    """One ``Multinomial(n, probs)`` draw per row: (R, K) -> (R, K) int64 counts.

    Conditional binomials in float64: ``n_k ~ Bin(remaining, pi_k / (pi_k + ... + pi_K))``;
    the ratio is clamped to ``[0, 1]`` (rounding can push it past 1, and a zero tail gives
    0 / 0) and the last component takes whatever remains, so the counts always sum to ``n``.
    """
    p = probs.to(torch.float64)
    tail = p.flip(-1).cumsum(-1).flip(-1)  # (R, K): pi_k + ... + pi_K
    remaining = torch.full_like(p[:, 0], float(n))
    counts = torch.empty_like(p)
    for k in range(p.shape[-1] - 1):
        ratio = torch.nan_to_num(p[:, k] / tail[:, k], nan=0.0).clamp(0.0, 1.0)
        counts[:, k] = torch.binomial(remaining, ratio)
        remaining = remaining - counts[:, k]
    counts[:, -1] = remaining
    return counts.round().long()


class GaussianMixture(Distribution):
    r"""Mixture of ``K`` Gaussians on ``R^D`` per batch element.

    .. math:: p(y) = \sum_k \pi_k \, \mathcal N(y \mid \mu_k, \Sigma_k),
              \quad \pi = \operatorname{softmax}(\text{logits})

    Give exactly one of ``scale``, ``scale_tril`` or ``precision_tril``.

    Args:
        logits: (*batch, K) unnormalized log-weights.
        loc: (*batch, K, D) component means.
        scale: standard deviations broadcastable to (*batch, K, D): (*batch, K, D)
            diagonal, (*batch, K, 1) isotropic per component, (*batch, 1, 1) isotropic
            shared by the components, or a scalar for a fixed noise level. Broadcast with
            ``expand`` (no copy).
        scale_tril: (*batch, K, D, D) lower Cholesky factor of each covariance.
        precision_tril: (*batch, K, D, D) lower Cholesky factor ``P_k`` of each precision,
            ``Sigma_k^{-1} = P_k P_k^T``.
        validate_args: check values (finite parameters, positive scales, triangular
            factors, finite inputs to ``log_prob``) as torch does; ``None`` follows
            :meth:`torch.distributions.Distribution.set_default_validate_args`. Shapes are
            always checked.

    Raises:
        ValueError: a shape mismatch, not exactly one covariance factor, or (with
            ``validate_args``) a non-finite or out-of-support parameter.
        TypeError: non-floating-point parameters.

    Example:
        >>> gm = GaussianMixture(torch.zeros(2), torch.tensor([[-1.0], [1.0]]),
        ...                      scale=torch.ones(2, 1))
        >>> gm.batch_shape, gm.event_shape
        (torch.Size([]), torch.Size([1]))
        >>> round(gm.log_prob(torch.tensor([0.0])).item(), 4)
        -1.4189
        >>> gm.sample((5,)).shape
        torch.Size([5, 1])
    """

    # Validation is done in ``__init__`` (constraints on a broadcastable ``scale`` or on a
    # lower-triangular factor are not expressible per argument without copies).
    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}
    support = constraints.real_vector
    has_rsample = False
    # (diagonal (*B, K, D), strictly lower (*B, K, D (D - 1) / 2)) of the precision factor,
    # set by ``from_packed_precision_tril`` only.
    _packed: tuple[Tensor, Tensor] | None = None

    def __init__(
        self,
        logits: Tensor,
        loc: Tensor,
        *,
        scale: Tensor | None = None,
        scale_tril: Tensor | None = None,
        precision_tril: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        given = {
            k: v
            for k, v in (
                ("scale", scale),
                ("scale_tril", scale_tril),
                ("precision_tril", precision_tril),
            )
            if v is not None
        }
        if len(given) != 1:
            raise ValueError(
                "give exactly one of scale, scale_tril, precision_tril; "
                f"got {sorted(given) or 'none'}"
            )
        ((kind, factor),) = given.items()
        for name, t in (("logits", logits), ("loc", loc), (kind, factor)):
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
        dtype = torch.promote_types(torch.promote_types(logits.dtype, loc.dtype), factor.dtype)
        if dtype in _HALF_DTYPES:
            dtype = torch.float32  # documented upcast: 16-bit log-densities are not usable
        logits, loc, factor = logits.to(dtype), loc.to(dtype), factor.to(dtype)

        if logits.dim() < 1:
            raise ValueError(f"logits must have shape (*batch, K), got {tuple(logits.shape)}")
        if loc.dim() < 2:
            raise ValueError(f"loc must have shape (*batch, K, D), got {tuple(loc.shape)}")
        K, D = logits.shape[-1], loc.shape[-1]
        if loc.shape[-2] != K:
            raise ValueError(
                f"loc must have shape (*batch, K, D) with K = logits.shape[-1] = {K}, "
                f"got {tuple(loc.shape)}"
            )
        if kind == "scale":
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
            factor_batch = factor.shape[:-2] if factor.dim() > 2 else torch.Size()
        else:
            if factor.dim() < 2 or factor.shape[-2:] != (D, D):
                raise ValueError(
                    f"{kind} must have shape (*batch, K, D, D) = (..., {K}, {D}, {D}), "
                    f"got {tuple(factor.shape)}"
                )
            if factor.dim() >= 3 and factor.shape[-3] not in (1, K):
                raise ValueError(
                    f"{kind} must have shape (*batch, K, D, D) = (..., {K}, {D}, {D}), "
                    f"got {tuple(factor.shape)}"
                )
            factor_batch = factor.shape[:-3] if factor.dim() > 3 else torch.Size()
        try:
            batch_shape = _broadcast_shapes(logits.shape[:-1], loc.shape[:-2], factor_batch)
        except RuntimeError:
            raise ValueError(
                "batch shapes do not broadcast: logits (*batch, K) "
                f"{tuple(logits.shape)}, loc (*batch, K, D) {tuple(loc.shape)}, "
                f"{kind} {tuple(factor.shape)}"
            ) from None

        self._kind = kind
        self._logits_raw = logits.expand((*batch_shape, K))  # (*B, K)
        self._loc = loc.expand((*batch_shape, K, D))  # (*B, K, D)
        # The factor keeps its own (broadcastable) shape: kernels broadcast it, and an
        # isotropic scale then costs one logarithm per component rather than D.
        self._factor = factor if kind == "scale" else factor.expand((*batch_shape, K, D, D))
        super().__init__(batch_shape, torch.Size((D,)), validate_args=validate_args)
        if self._validate_args:
            # The tensors as given, not their expanded views: no repeated work on broadcasts.
            self._check_parameters(logits, loc, factor)

    @classmethod
    def from_packed_precision_tril(
        cls,
        logits: Tensor,
        loc: Tensor,
        diagonal: Tensor,
        off_diagonal: Tensor,
        *,
        validate_args: bool | None = None,
    ) -> GaussianMixture:
        """Mixture whose precision Cholesky factors are given by their packed entries.

        The same distribution as ``GaussianMixture(logits, loc, precision_tril=P)`` with
        ``P = tril_from_packed(diagonal, off_diagonal)``, but ``log_prob`` of points without
        sample dims works on the packed numbers directly and never builds the ``D x D``
        matrices (the full-covariance head's training path); ``P`` is built, once and
        differentiably, only when something else needs it (:attr:`precision_tril`,
        sampling, moments).

        Args:
            logits: (*batch, K) unnormalized log-weights.
            loc: (*batch, K, D) component means.
            diagonal: (*batch, K, D) positive diagonal entries ``P_k,ii``.
            off_diagonal: (*batch, K, D * (D - 1) / 2) strictly lower entries of each
                ``P_k``, row by row (``torch.tril_indices(D, D, -1)`` order).
            validate_args: as for the constructor.

        Returns:
            GaussianMixture with ``parameterization == "precision_tril"``.

        Example:
            >>> gm = GaussianMixture.from_packed_precision_tril(
            ...     torch.zeros(3), torch.zeros(3, 2), torch.ones(3, 2), torch.zeros(3, 1))
            >>> gm.precision_tril.shape
            torch.Size([3, 2, 2])
            >>> round(gm.log_prob(torch.zeros(2)).item(), 4)
            -1.8379
        """
        tensors = (
            ("logits", logits),
            ("loc", loc),
            ("diagonal", diagonal),
            ("off_diagonal", off_diagonal),
        )
        for name, t in tensors:
            if not isinstance(t, Tensor):
                raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
        dtype = logits.dtype
        for _, t in tensors[1:]:
            dtype = torch.promote_types(dtype, t.dtype)
        if dtype in _HALF_DTYPES:
            dtype = torch.float32  # documented upcast, as in the constructor
        logits, loc, diagonal, off_diagonal = (t.to(dtype) for _, t in tensors)
        if logits.dim() < 1 or loc.dim() < 2 or loc.shape[-2] != logits.shape[-1]:
            raise ValueError(
                "logits must have shape (*batch, K) and loc (*batch, K, D) with the same K, "
                f"got {tuple(logits.shape)} and {tuple(loc.shape)}"
            )
        K, D = loc.shape[-2:]
        M = D * (D - 1) // 2
        for name, t, size in (("diagonal", diagonal, D), ("off_diagonal", off_diagonal, M)):
            if t.dim() < 2 or t.shape[-1] != size or t.shape[-2] not in (1, K):
                raise ValueError(
                    f"{name} must have shape (*batch, K, {size}) = (..., {K}, {size}) for "
                    f"D = {D}, got {tuple(t.shape)}"
                )
        try:
            batch_shape = _broadcast_shapes(
                logits.shape[:-1], loc.shape[:-2], diagonal.shape[:-2], off_diagonal.shape[:-2]
            )
        except RuntimeError:
            raise ValueError(
                f"batch shapes do not broadcast: logits {tuple(logits.shape)}, loc "
                f"{tuple(loc.shape)}, diagonal {tuple(diagonal.shape)}, off_diagonal "
                f"{tuple(off_diagonal.shape)}"
            ) from None
        self = cls.__new__(cls)
        self._kind = "precision_tril"
        self._logits_raw = logits.expand((*batch_shape, K))  # (*B, K)
        self._loc = loc.expand((*batch_shape, K, D))  # (*B, K, D)
        self._packed = (
            diagonal.expand((*batch_shape, K, D)),
            off_diagonal.expand((*batch_shape, K, M)),
        )
        Distribution.__init__(self, batch_shape, torch.Size((D,)), validate_args=validate_args)
        if self._validate_args:
            for name, t in tensors:
                if not _all_finite(t):
                    raise ValueError(f"{name} must be finite, found NaN or inf")
            if diagonal.numel() and not bool(diagonal.min() > 0):
                raise ValueError(f"diagonal must be positive, got minimum {diagonal.min():g}")
        return self

    @cached_property
    def _factor(self) -> Tensor:
        # Only reached for packed factors: the constructor stores ``_factor`` in the
        # instance dict, which takes precedence over this (non-data) descriptor.
        assert self._packed is not None
        return _math.tril_from_packed(*self._packed)  # (*B, K, D, D)

    # ------------------------------------------------------------------ validation

    def _check_parameters(self, logits: Tensor, loc: Tensor, f: Tensor) -> None:
        for name, t in (("logits", logits), ("loc", loc)):
            if not _all_finite(t):
                raise ValueError(f"{name} must be finite, found NaN or inf")
        if not _all_finite(f):
            raise ValueError(f"{self._kind} must be finite, found NaN or inf")
        if self._kind == "scale":
            if f.numel() and not bool(f.min() > 0):  # one reduction; faster than (f > 0).all()
                raise ValueError(f"scale must be positive, got minimum {f.min().item():g}")
            return
        if not bool(f.diagonal(dim1=-2, dim2=-1).min() > 0):
            raise ValueError(f"{self._kind} must have a positive diagonal")
        if _upper_nonzero(f):
            raise ValueError(f"{self._kind} must be lower triangular (upper part is nonzero)")

    def _check_value(self, value: Tensor, name: str = "value") -> Tensor:
        """Check ``value`` has shape (*sample, *batch, D) and cast it to the mixture dtype."""
        if not isinstance(value, Tensor):
            value = torch.as_tensor(value, dtype=self.dtype, device=self._loc.device)
        D = self.event_shape[0]

        def expected() -> str:  # built only for an error: log_prob is the training hot path
            return f"(*sample, *batch, D) = (..., {', '.join(map(str, (*self.batch_shape, D)))})"

        if value.dim() < 1 or value.shape[-1] != D:
            hint = (
                "; for D == 1 add the event dim, e.g. value.unsqueeze(-1)"
                if D == 1 and value.dim() >= 1
                else ""
            )
            raise ValueError(
                f"{name} must have shape {expected()}, got {tuple(value.shape)}: its last dim "
                f"must be the event dim D = {D}{hint}"
            )
        n = len(self.batch_shape)
        if n:
            vb = value.shape[:-1][-n:]
            vb = torch.Size((1,) * (n - len(vb))) + vb
            if any(a not in (1, b) for a, b in zip(vb, self.batch_shape)):
                raise ValueError(
                    f"{name} must have shape {expected()}, got {tuple(value.shape)}: its batch "
                    f"dims {tuple(vb)} do not broadcast to batch_shape {tuple(self.batch_shape)}"
                )
        value = value.to(dtype=self.dtype)
        if self._validate_args and not _all_finite(value):
            raise ValueError(f"{name} must be finite, found NaN or inf")
        return value

    # ------------------------------------------------------------------ parameters

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point dtype of every parameter and result."""
        return self._loc.dtype

    @property
    def parameterization(self) -> str:
        """``"scale"``, ``"scale_tril"`` or ``"precision_tril"``."""
        return self._kind

    @property
    def n_components(self) -> int:
        """Number of components ``K``."""
        return self._loc.shape[-2]

    @property
    def loc(self) -> Tensor:
        """(*batch, K, D) component means."""
        return self._loc

    @cached_property
    def logits(self) -> Tensor:
        """(*batch, K) normalized log-weights ``log pi_k`` (``log_softmax`` of the input)."""
        return _math.log_softmax(self._logits_raw)

    @cached_property
    def probs(self) -> Tensor:
        """(*batch, K) mixture weights ``pi_k``."""
        return torch.softmax(self._logits_raw, -1)

    @cached_property
    def scale(self) -> Tensor | None:
        """(*batch, K, D) elementwise standard deviations (a view); ``None`` unless diagonal."""
        if self._kind != "scale":
            return None
        return self._factor.expand(self._loc.shape)

    @cached_property
    def scale_tril(self) -> Tensor:
        """(*batch, K, D, D) lower Cholesky factor of each component covariance."""
        if self._kind == "scale":
            assert self.scale is not None
            return torch.diag_embed(self.scale)
        if self._kind == "scale_tril":
            return self._factor.expand(self._loc.shape + self._loc.shape[-1:])
        return torch.linalg.cholesky(self.component_covariance_matrix)

    @cached_property
    def precision_tril(self) -> Tensor:
        """(*batch, K, D, D) lower Cholesky factor ``P_k`` of each precision, ``P_k P_k^T =
        Sigma_k^{-1}``, for every parameterization.

        Computed lazily on first access and cached: the factor itself (a view) for
        ``precision_tril`` mixtures, built once from the packed entries for
        :meth:`from_packed_precision_tril`, ``diag(1 / scale)`` for ``scale`` and
        ``cholesky(Sigma^{-1})`` for ``scale_tril``. Differentiable.
        """
        D = self.event_shape[0]
        if self._kind == "precision_tril":
            return self._factor.expand((*self._loc.shape, D))
        if self._kind == "scale":
            assert self.scale is not None
            return torch.diag_embed(self.scale.reciprocal())
        return torch.linalg.cholesky(torch.cholesky_inverse(self.scale_tril))

    @cached_property
    def component_covariance_matrix(self) -> Tensor:
        """(*batch, K, D, D) covariance ``Sigma_k`` of each component."""
        if self._kind == "scale":
            assert self.scale is not None
            return torch.diag_embed(self.scale.square())
        if self._kind == "scale_tril":
            L = self.scale_tril
            return L @ L.transpose(-1, -2)
        # Sigma = (P P^T)^{-1}: two triangular solves, no explicit inverse of a full matrix.
        P = self._factor.expand(self._loc.shape + self._loc.shape[-1:])
        cov = torch.cholesky_inverse(P)
        return 0.5 * (cov + cov.transpose(-1, -2))  # exact symmetry for later Cholesky

    @cached_property
    def component_variance(self) -> Tensor:
        """(*batch, K, D) diagonal of each component covariance."""
        if self._kind == "scale":
            assert self.scale is not None
            return self.scale.square()
        if self._kind == "scale_tril":
            return self.scale_tril.square().sum(-1)
        return self.component_covariance_matrix.diagonal(dim1=-2, dim2=-1)

    @property
    def component_stddev(self) -> Tensor:
        """(*batch, K, D) standard deviation of each component along each output dim."""
        if self._kind == "scale":
            assert self.scale is not None
            return self.scale
        return self.component_variance.sqrt()

    # ------------------------------------------------------------------ moments

    @cached_property
    def mean(self) -> Tensor:
        """(*batch, D) mixture mean ``sum_k pi_k mu_k``."""
        return (self.probs.unsqueeze(-1) * self._loc).sum(-2)

    @cached_property
    def covariance_matrix(self) -> Tensor:
        """(*batch, D, D) mixture covariance by the law of total variance."""
        dev = self._loc - self.mean.unsqueeze(-2)  # (*B, K, D)
        outer = dev.unsqueeze(-1) * dev.unsqueeze(-2)  # (*B, K, D, D)
        w = self.probs[..., None, None]
        return (w * (self.component_covariance_matrix + outer)).sum(-3)

    @cached_property
    def variance(self) -> Tensor:
        """(*batch, D) mixture variance per output dim."""
        dev = self._loc - self.mean.unsqueeze(-2)  # (*B, K, D)
        return (self.probs.unsqueeze(-1) * (self.component_variance + dev.square())).sum(-2)

    @property
    def stddev(self) -> Tensor:
        """(*batch, D) mixture standard deviation per output dim."""
        return self.variance.sqrt()

    @cached_property
    def mode(self) -> Tensor:
        """(*batch, D) highest-density point found by a local search.

        From every component mean, fixed-point (EM / mean-shift) iterations
        ``y <- (sum_k r_k Sigma_k^{-1})^{-1} sum_k r_k Sigma_k^{-1} mu_k`` (``r`` the
        responsibilities at ``y``, each step increases the density) run to convergence,
        followed by Newton steps with a density-increase check; the start whose end point
        has the highest density wins. This is a local search: a mode that no component
        mean leads to can be missed. Not differentiable (computed without a graph).
        """
        with torch.no_grad():
            return self._find_mode()

    # ------------------------------------------------------------------ densities

    def component_log_prob(self, value: Tensor) -> Tensor:
        """Log-density of each component, ``log N(y | mu_k, Sigma_k)`` (no weights).

        Args:
            value: (*sample, *batch, D).

        Returns:
            (*sample, *batch, K).
        """
        value = self._check_value(value)
        return self._component_log_prob(value)

    def _component_log_prob(self, value: Tensor) -> Tensor:
        if self._kind == "scale":
            return _math.diag_component_log_prob(value, self._loc, self._factor)
        if self._kind == "scale_tril":
            return _math.tril_component_log_prob(value, self._loc, self._factor)
        return _math.precision_component_log_prob(value, self._loc, self._factor)

    def log_prob(self, value: Tensor) -> Tensor:
        """Exact log-density, including ``-(D/2) log 2 pi``.

        Args:
            value: (*sample, *batch, D). A ``(*batch,)`` target for ``D == 1`` is rejected
                rather than broadcast against the batch; add the event dim first.

        Returns:
            (*sample, *batch).

        Raises:
            ValueError: wrong shape, or a NaN/inf value when ``validate_args`` is on.
        """
        value = self._check_value(value)
        if self._kind == "scale":
            return self._diag_log_prob(value, self._factor)
        if self._packed is not None and self.event_shape[0] == 1:
            # A 1 x 1 precision factor is 1 / scale: the (cheaper) diagonal kernels apply.
            return self._diag_log_prob(value, self._packed[0].reciprocal())
        if (
            self._packed is not None
            and value.dim() <= len(self.batch_shape) + 1
            and self._loc.numel() * self._loc.shape[-1] > _FUSED_MIN_NUMEL
        ):
            # No sample dims: the packed kernel never builds the D x D factors.
            return _math.packed_precision_mixture_log_prob(
                value, self._logits_raw, self._loc, *self._packed
            )
        if self._kind == "precision_tril":
            return _math.precision_mixture_log_prob(
                value, self._logits_raw, self._loc, self._factor
            )
        return _math.mixture_log_prob(self._logits_raw, self._component_log_prob(value))

    def _diag_log_prob(self, value: Tensor, scale: Tensor) -> Tensor:
        if value.numel() * self.n_components <= _FUSED_MIN_NUMEL:
            # Small problems: the fused kernel's Python overhead outweighs what it saves.
            return _math.mixture_log_prob(
                self._logits_raw, _math.diag_component_log_prob(value, self._loc, scale)
            )
        return _math.diag_mixture_log_prob(value, self._logits_raw, self._loc, scale)

    def component_posterior(self, value: Tensor) -> Tensor:
        """Responsibilities ``p(k | y)``.

        Args:
            value: (*sample, *batch, D).

        Returns:
            (*sample, *batch, K), summing to one over the last dim.
        """
        value = self._check_value(value)
        return torch.softmax(self.logits + self._component_log_prob(value), -1)

    # ------------------------------------------------------------------ sampling

    def sample(self, sample_shape: torch.Size | Sequence[int] = ()) -> Tensor:
        """Draw samples (not reparameterized).

        The component index comes from :func:`torch.multinomial` on the weights, which
        normalizes them itself, so an index is always in ``[0, K)`` even when the float
        weights sum to slightly less than one. The draw uses the same factor as the density.
        Full-covariance mixtures with at most ``SAMPLE_MAX_GROUPS`` (batch element,
        component) pairs draw the per-component counts instead, transform each component's
        block with one matrix product and shuffle (see ``_sample_by_component``).

        Args:
            sample_shape: leading shape of the draws.

        Returns:
            (*sample_shape, *batch, D).
        """
        sample_shape = torch.Size(sample_shape)
        B, K, D = self.batch_shape, self.n_components, self.event_shape[0]
        n = sample_shape.numel()
        with torch.no_grad():
            probs = self.probs.reshape(-1, K)  # (prod B, K)
            if self._kind != "scale" and B.numel() * K <= SAMPLE_MAX_GROUPS and n > 1:
                return self._sample_by_component(probs, sample_shape)
            idx = torch.multinomial(probs, n, replacement=True)  # (prod B, n)
            idx = idx.T.reshape(sample_shape + B)  # (*S, *B)
            full = sample_shape + B + (K, D)
            gidx = idx[..., None, None].expand(sample_shape + B + (1, D))
            loc = self._loc.expand(full).gather(-2, gidx).squeeze(-2)  # (*S, *B, D)
            eps = torch.randn(sample_shape + B + (D,), dtype=self.dtype, device=loc.device)
            if self._kind == "scale":
                assert self.scale is not None
                s = self.scale.expand(full).gather(-2, gidx).squeeze(-2)
                return loc + s * eps
            fidx = idx[..., None, None, None].expand(sample_shape + B + (1, D, D))
            F = self._factor.expand((*full, D)).gather(-3, fidx).squeeze(-3)  # (*S,*B,D,D)
            if self._kind == "scale_tril":
                return loc + (F @ eps.unsqueeze(-1)).squeeze(-1)
            # Sigma = P^{-T} P^{-1}: x = P^{-T} eps solves P^T x = eps.
            x = torch.linalg.solve_triangular(F.transpose(-1, -2), eps.unsqueeze(-1), upper=True)
            return loc + x.squeeze(-1)

    def _sample_by_component(self, probs: Tensor, sample_shape: torch.Size) -> Tensor:
        """Full-covariance draws generated component by component, then shuffled.

        How many of the ``n`` draws of a batch element fall in each component is one
        multinomial draw, made as ``K - 1`` conditional binomials
        (``n_k ~ Bin(n - n_1 - ... - n_{k-1}, pi_k / (pi_k + ... + pi_K))``), which costs
        ``O(K)`` rather than a categorical draw per sample. The draws of component ``k`` are
        then ``mu_k + A_k eps`` with
        ``A_k A_k^T = Sigma_k``: one GEMM per (batch element, component) on a contiguous block,
        with no ``D x D`` factor gathered per draw (4 GB for 10^6 draws at D = 32) and no
        per-draw triangular solve. A uniformly random permutation of the blocks' rows then
        makes the sequence i.i.d. from the mixture (given the counts, every order of the
        component labels is equally likely).

        Args:
            probs: (prod B, K) mixture weights.
            sample_shape: ``(*S)``.

        Returns:
            (*S, *B, D).
        """
        K, D = self.n_components, self.event_shape[0]
        n_batch, n = probs.shape[0], sample_shape.numel()
        if self._kind == "scale_tril":
            A = self._factor.expand((*self._loc.shape, D))
        else:
            # Sigma = P^{-T} P^{-1}: A = P^{-T}, upper triangular, one solve per component.
            P = self._factor.expand((*self._loc.shape, D))
            eye = torch.eye(D, dtype=P.dtype, device=P.device)
            A = torch.linalg.solve_triangular(P.transpose(-1, -2), eye, upper=True)
        A = A.reshape(n_batch, K, D, D)
        loc = self._loc.reshape(n_batch, K, D)
        counts = _multinomial_counts(probs, n).reshape(-1).tolist()  # (prod B * K,)
        eps = torch.randn(n_batch, n, D, dtype=self.dtype, device=loc.device)
        out = torch.empty(n, n_batch, D, dtype=self.dtype, device=loc.device)
        draws = torch.empty(n, D, dtype=self.dtype, device=loc.device)
        for b in range(n_batch):
            start = 0
            for k in range(K):
                c = counts[b * K + k]
                if c:
                    rows = slice(start, start + c)
                    torch.addmm(loc[b, k], eps[b, rows], A[b, k].T, out=draws[rows])
                    start += c
            perm = torch.randperm(n, device=loc.device)
            out[:, b] = draws.index_select(0, perm)
        return out.reshape(sample_shape + self.batch_shape + (D,))

    # ------------------------------------------------------------------ 1-D functions

    def _require_1d(self, method: str) -> None:
        D = self.event_shape[0]
        if D != 1:
            raise ValueError(
                f"{method} is defined for D == 1 only, this mixture has D = {D}; "
                f"call .marginal([d]).{method}(...) for output dim d"
            )

    def _cdf_and_pdf(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """x: (*S, *B) -> (cdf, pdf), both (*S, *B)."""
        sd = self.component_stddev.squeeze(-1)  # (*B, K)
        z = (x.unsqueeze(-1) - self._loc.squeeze(-1)) / sd  # (*S, *B, K)
        log_cdf = torch.logsumexp(self.logits + torch.special.log_ndtr(z), -1)
        log_pdf = torch.logsumexp(
            self.logits - 0.5 * z.square() - sd.log() - 0.5 * _math.LOG_2PI, -1
        )
        return log_cdf.exp(), log_pdf.exp()

    def cdf(self, value: Tensor) -> Tensor:
        """Cumulative distribution function, ``D == 1`` only.

        Computed as ``exp(logsumexp_k(log pi_k + log Phi(z_k)))`` with ``log_ndtr`` so that
        far tails stay accurate.

        Args:
            value: (*sample, *batch, 1).

        Returns:
            (*sample, *batch).

        Raises:
            ValueError: ``D > 1`` (use :meth:`marginal`) or a wrongly shaped value.
        """
        self._require_1d("cdf")
        value = self._check_value(value)
        return self._cdf_and_pdf(value.squeeze(-1))[0]

    def icdf(self, value: Tensor) -> Tensor:
        """Quantile function, ``D == 1`` only, by bracketed Newton-bisection.

        The bracket is ``[min_k(mu_k - c sigma_k), max_k(mu_k + c sigma_k)]`` with
        ``c = max(10, sqrt(-2 log min(q, 1 - q)))``, which contains every quantile because
        ``Phi(-c) < exp(-c^2 / 2)``. ``q = 0`` and ``q = 1`` give ``-inf`` and ``inf``.

        Args:
            value: (*sample, *batch) probabilities in ``[0, 1]``.

        Returns:
            (*sample, *batch, 1) quantiles.

        Raises:
            ValueError: ``D > 1``, a value outside ``[0, 1]`` or a shape that does not
                broadcast with the batch.
        """
        self._require_1d("icdf")
        q = _as_tensor_like(value, self._loc, "value")
        n = len(self.batch_shape)
        try:
            shape = torch.broadcast_shapes(q.shape, self.batch_shape)
        except RuntimeError:
            shape = None
        if shape is None or shape[len(shape) - n :] != self.batch_shape:
            raise ValueError(
                f"value must have shape (*sample, *batch) = (..., "
                f"{', '.join(map(str, self.batch_shape))}), got {tuple(q.shape)}"
            )
        if bool(((q < 0) | (q > 1) | torch.isnan(q)).any()):
            raise ValueError("value must hold probabilities in [0, 1]")
        q = q.expand(shape)
        with torch.no_grad():
            tail = torch.minimum(q, 1 - q).clamp_min(torch.finfo(q.dtype).tiny)
            c = torch.sqrt(-2.0 * tail.log()).clamp_min(ICDF_BRACKET_STDS)  # (*S, *B)
            mu, sd = self._loc.squeeze(-1), self.component_stddev.squeeze(-1)  # (*B, K)
            lo = (mu - sd * c.unsqueeze(-1)).amin(-1)  # (*S, *B)
            hi = (mu + sd * c.unsqueeze(-1)).amax(-1)
            x = _math.newton_bisect(self._cdf_and_pdf, q, lo, hi)
            x = torch.where(q == 0, -math.inf, torch.where(q == 1, math.inf, x))
        return x.unsqueeze(-1)

    # ------------------------------------------------------------------ transformations

    def _normalize_dims(self, dims: Sequence[int] | int, name: str) -> list[int]:
        D = self.event_shape[0]
        if isinstance(dims, int):
            dims = [dims]
        out = []
        for d in dims:
            if not -D <= int(d) < D:
                raise ValueError(f"{name} entries must lie in [-{D}, {D}), got {list(dims)}")
            out.append(int(d) % D)
        if len(set(out)) != len(out) or not out:
            raise ValueError(f"{name} must be a non-empty list of distinct dims, got {list(dims)}")
        return out

    def marginal(self, dims: Sequence[int] | int) -> GaussianMixture:
        """Marginal mixture over the output dims ``dims`` (in the order given).

        Args:
            dims: output dims to keep.

        Returns:
            GaussianMixture over ``len(dims)`` dims, same weights. Diagonal mixtures stay
            diagonal; full ones get the Cholesky factor of the covariance sub-block.

        Example:
            >>> gm = GaussianMixture(torch.zeros(1), torch.zeros(1, 3),
            ...                      scale_tril=torch.eye(3).expand(1, 3, 3))
            >>> gm.marginal([2, 0]).event_shape
            torch.Size([2])
        """
        dims = self._normalize_dims(dims, "dims")
        loc = self._loc[..., dims]
        if self._kind == "scale":
            f = self._factor
            scale = f if f.dim() == 0 or f.shape[-1] == 1 else f[..., dims]
            return GaussianMixture(self._logits_raw, loc, scale=scale, validate_args=False)
        if self._kind == "scale_tril" and dims == list(range(len(dims))):
            # A leading block of a Cholesky factor is the factor of the leading sub-block.
            tril = self._factor[..., : len(dims), : len(dims)]
        else:
            cov = self.component_covariance_matrix[..., dims, :][..., dims]
            tril = torch.linalg.cholesky(cov)
        return GaussianMixture(self._logits_raw, loc, scale_tril=tril, validate_args=False)

    def condition(self, dims: Sequence[int] | int, values: Tensor) -> GaussianMixture:
        """Conditional mixture of the remaining dims given ``y[dims] = values``.

        Each component is conditioned in closed form,
        ``mu_{a|b} = mu_a + S_ab S_bb^{-1} (y_b - mu_b)``,
        ``S_{a|b} = S_aa - S_ab S_bb^{-1} S_ba``, both read off one Cholesky factor of the
        covariance with the ``b`` dims ordered first; the weights become
        ``log pi_k + log N(y_b | mu_kb, S_kbb)``. Diagonal mixtures stay diagonal and only
        re-weight.

        Args:
            dims: conditioned output dims ``b``.
            values: (*batch, len(dims)) observed values (broadcast against the batch).

        Returns:
            GaussianMixture over the remaining dims, in increasing order.

        Raises:
            ValueError: no dims left, or ``values`` of the wrong shape.

        Example:
            >>> gm = GaussianMixture(torch.zeros(1), torch.zeros(1, 2),
            ...                      scale=torch.ones(1, 2))
            >>> gm.condition([1], torch.tensor([0.5])).event_shape
            torch.Size([1])
        """
        b = self._normalize_dims(dims, "dims")
        D = self.event_shape[0]
        a = [d for d in range(D) if d not in b]
        if not a:
            raise ValueError(f"dims {list(b)} leave no output dim to condition on them")
        values = _as_tensor_like(values, self._loc, "values")
        if values.dim() < 1 or values.shape[-1] != len(b):
            raise ValueError(
                f"values must have shape (*batch, len(dims)) = (..., {len(b)}), "
                f"got {tuple(values.shape)}"
            )
        try:
            batch = torch.broadcast_shapes(values.shape[:-1], self.batch_shape)
        except RuntimeError:
            raise ValueError(
                f"values batch shape {tuple(values.shape[:-1])} does not broadcast with "
                f"batch_shape {tuple(self.batch_shape)}"
            ) from None
        K = self.n_components
        yb = values.expand((*batch, len(b))).unsqueeze(-2)  # (*B, 1, |b|)
        logits = self.logits.expand((*batch, K))
        loc = self._loc.expand((*batch, K, D))
        if self._kind == "scale":
            sd = self.component_stddev.expand((*batch, K, D))
            z = (yb - loc[..., b]) / sd[..., b]  # (*B, K, |b|)
            log_nb = (-0.5 * z.square() - sd[..., b].log()).sum(-1)
            log_nb = log_nb - 0.5 * len(b) * _math.LOG_2PI
            f = self._factor
            scale = f if f.dim() == 0 or f.shape[-1] == 1 else sd[..., a]
            return GaussianMixture(logits + log_nb, loc[..., a], scale=scale, validate_args=False)
        perm = b + a
        cov = self.component_covariance_matrix[..., perm, :][..., perm]
        L = torch.linalg.cholesky(cov).expand((*batch, K, D, D))  # (*B, K, D, D)
        nb = len(b)
        L_bb, L_ab, L_aa = L[..., :nb, :nb], L[..., nb:, :nb], L[..., nb:, nb:]
        diff = (yb - loc[..., b]).unsqueeze(-1)  # (*B, K, |b|, 1)
        w = torch.linalg.solve_triangular(L_bb, diff, upper=False)  # L_bb^{-1} (y_b - mu_b)
        loc_a = loc[..., a] + (L_ab @ w).squeeze(-1)
        log_nb = (
            -0.5 * w.squeeze(-1).square().sum(-1)
            - L_bb.diagonal(dim1=-2, dim2=-1).log().sum(-1)
            - 0.5 * nb * _math.LOG_2PI
        )
        return GaussianMixture(logits + log_nb, loc_a, scale_tril=L_aa, validate_args=False)

    def tempered(self, temperature: float | Tensor) -> GaussianMixture:
        """Sampling heuristic: logits divided by ``tau``, scales multiplied by ``sqrt(tau)``.

        This is the usual temperature knob of mixture density networks (``tau < 1``
        sharpens, ``tau > 1`` flattens); it is *not* the exact tempered density
        ``p(y)^(1/tau)`` normalized.

        Args:
            temperature: positive float or (*batch) tensor.

        Returns:
            GaussianMixture with the same parameterization.
        """
        tau = _as_tensor_like(temperature, self._loc, "temperature")
        if not bool((tau > 0).all()):
            raise ValueError(f"temperature must be positive, got {temperature}")
        t = tau.unsqueeze(-1)  # (*B, 1)
        logits = self.logits / t
        root = t.sqrt().unsqueeze(-1)  # (*B, 1, 1)
        if self._kind == "scale":
            return GaussianMixture(logits, self._loc, scale=self._factor * root)
        if self._kind == "scale_tril":
            return GaussianMixture(logits, self._loc, scale_tril=self._factor * root[..., None])
        return GaussianMixture(logits, self._loc, precision_tril=self._factor / root[..., None])

    def affine(self, scale: float | Tensor, shift: float | Tensor = 0.0) -> GaussianMixture:
        """Distribution of ``scale * y + shift`` (elementwise), same parameterization.

        For triangular factors a negative ``scale`` entry keeps a valid Cholesky factor:
        ``L' = diag(s) L diag(sign s)`` and ``P' = diag(1/s) P diag(sign s)``.

        Args:
            scale: nonzero, broadcastable to (*batch, D).
            shift: broadcastable to (*batch, D).

        Returns:
            GaussianMixture.

        Example:
            >>> gm = GaussianMixture(torch.zeros(1), torch.ones(1, 1), scale=torch.ones(1, 1))
            >>> gm.affine(2.0, 1.0).mean
            tensor([3.])
        """
        s = _as_tensor_like(scale, self._loc, "scale")
        t = _as_tensor_like(shift, self._loc, "shift")
        if bool((s == 0).any()):
            raise ValueError("scale must be nonzero everywhere (the result would be degenerate)")
        D = self.event_shape[0]
        for name, v in (("scale", s), ("shift", t)):
            if v.dim() > 0 and v.shape[-1] not in (1, D):
                raise ValueError(
                    f"{name} must be broadcastable to (*batch, D) = (..., {D}), "
                    f"got shape {tuple(v.shape)}"
                )
        s, t = s.expand((*s.shape[:-1], D)), t.expand((*t.shape[:-1], D))
        s1, t1 = s.unsqueeze(-2), t.unsqueeze(-2)  # (*B, 1, D)
        loc = self._loc * s1 + t1
        if self._kind == "scale":
            return GaussianMixture(self._logits_raw, loc, scale=self._factor * s1.abs())
        sign = torch.sign(s1)  # (*B, 1, D)
        if self._kind == "scale_tril":
            tril = s1.transpose(-1, -2) * self._factor * sign
            return GaussianMixture(self._logits_raw, loc, scale_tril=tril)
        prec = self._factor / s1.transpose(-1, -2) * sign
        return GaussianMixture(self._logits_raw, loc, precision_tril=prec)

    def to_torch(self) -> MixtureSameFamily:
        """Equivalent :class:`torch.distributions.MixtureSameFamily`.

        ``Independent(Normal)`` components for ``scale``, ``MultivariateNormal(scale_tril)``
        otherwise.
        """
        mix = Categorical(logits=self.logits)
        comp: Distribution
        if self._kind == "scale":
            comp = Independent(Normal(self._loc, self.component_stddev), 1)
        else:
            comp = MultivariateNormal(self._loc, scale_tril=self.scale_tril)
        return MixtureSameFamily(mix, comp)

    def expand(
        self, batch_shape: torch.Size | Sequence[int], _instance: Any = None
    ) -> GaussianMixture:
        """Same mixture broadcast to ``batch_shape`` (views, no copies)."""
        batch_shape = torch.Size(batch_shape)
        K, D = self.n_components, self.event_shape[0]
        logits = self._logits_raw.expand((*batch_shape, K))
        loc = self._loc.expand((*batch_shape, K, D))
        if self._packed is not None:
            diagonal, off_diagonal = self._packed
            return GaussianMixture.from_packed_precision_tril(
                logits,
                loc,
                diagonal.expand((*batch_shape, *diagonal.shape[-2:])),
                off_diagonal.expand((*batch_shape, *off_diagonal.shape[-2:])),
                validate_args=False,
            )
        kw: dict[str, Tensor] = {}
        if self._kind == "scale":
            assert self.scale is not None
            kw["scale"] = self.scale.expand((*batch_shape, K, D))
        else:
            kw[self._kind] = self._factor.expand((*batch_shape, K, D, D))
        return GaussianMixture(logits, loc, **kw, validate_args=False)

    def __repr__(self) -> str:
        return (
            f"GaussianMixture(batch_shape={tuple(self.batch_shape)}, "
            f"n_components={self.n_components}, event_shape={tuple(self.event_shape)}, "
            f"parameterization={self._kind!r}, dtype={self.dtype})"
        )

    # ------------------------------------------------------------------ mode search

    def _precisions(self) -> Tensor:
        """(*B, K, D, D) component precision matrices (or (*B, K, D) for diagonal)."""
        if self._kind == "scale":
            return self.component_variance.reciprocal()
        if self._kind == "precision_tril":
            P = self._factor
            return (P @ P.transpose(-1, -2)).expand(self._loc.shape + self._loc.shape[-1:])
        return torch.cholesky_inverse(self.scale_tril)

    def _find_mode(self) -> Tensor:
        prec = self._precisions()  # (*B, K, D[, D])
        x = self._loc.movedim(-2, 0).clone()  # starts: (K, *B, D)
        diag = self._kind == "scale"
        # Sigma_k^{-1} mu_k: (*B, K, D)
        prec_mu = prec * self._loc if diag else (prec @ self._loc.unsqueeze(-1)).squeeze(-1)
        tol = MODE_TOL_ULPS * torch.finfo(self.dtype).eps
        for _ in range(MODE_MAX_ITER):
            r = self.component_posterior(x)  # (K, *B, K)
            if diag:
                A = (r.unsqueeze(-1) * prec).sum(-2)  # (K, *B, D)
                x_new = (r.unsqueeze(-1) * prec_mu).sum(-2) / A
            else:
                A = (r[..., None, None] * prec).sum(-3)  # (K, *B, D, D)
                bvec = (r.unsqueeze(-1) * prec_mu).sum(-2)  # (K, *B, D)
                x_new = torch.cholesky_solve(bvec.unsqueeze(-1), torch.linalg.cholesky(A))
                x_new = x_new.squeeze(-1)
            step = (x_new - x).abs().amax(-1)
            x = x_new
            if bool((step <= tol * (1 + x.abs().amax(-1))).all()):
                break
        x = self._newton_polish(x, prec, diag)
        lp = self.log_prob(x)  # (K, *B)
        best = lp.argmax(0)  # (*B,)
        return x.gather(0, best[None, ..., None].expand((1, *x.shape[1:]))).squeeze(0)

    def _newton_polish(self, x: Tensor, prec: Tensor, diag: bool) -> Tensor:
        """Newton steps on log p, each kept only where it increases the density."""
        lp = self.log_prob(x)
        for _ in range(MODE_NEWTON_STEPS):
            r = self.component_posterior(x)  # (K, *B, K)
            dev = self._loc - x.unsqueeze(-2)  # (K, *B, K, D)
            if diag:
                gk = prec * dev  # Sigma_k^{-1} (mu_k - x)
                precm = torch.diag_embed(prec)
            else:
                gk = (prec @ dev.unsqueeze(-1)).squeeze(-1)
                precm = prec
            g = (r.unsqueeze(-1) * gk).sum(-2)  # (K, *B, D) gradient of log p
            H = (r[..., None, None] * (gk.unsqueeze(-1) * gk.unsqueeze(-2) - precm)).sum(-3)
            H = H - g.unsqueeze(-1) * g.unsqueeze(-2)  # Hessian of log p
            chol, info = torch.linalg.cholesky_ex(-H)
            ok = info == 0  # Newton only where log p is locally concave
            step = torch.cholesky_solve(g.unsqueeze(-1), chol).squeeze(-1)
            step = torch.where(ok.unsqueeze(-1) & torch.isfinite(step), step, 0.0)
            x_new = x + step
            lp_new = self.log_prob(x_new)
            better = lp_new >= lp
            x = torch.where(better.unsqueeze(-1), x_new, x)
            lp = torch.where(better, lp_new, lp)
            if bool((step.abs() == 0).all()):
                break
        return x
