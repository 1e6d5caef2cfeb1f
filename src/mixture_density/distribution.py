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

The mixture is its weights composed with one components object
(:mod:`mixture_density._components`, :mod:`mixture_density._triangular`), chosen once by the
factor given; everything that depends on the parameterization lives there, and the
mixture-generic algorithms (mode, quantiles) in :mod:`mixture_density._search`.

Half-precision parameters (float16, bfloat16) are upcast to float32 on construction, so
every result of such a mixture is float32: the log-sum-exp and the squared Mahalanobis
distances overflow or lose all precision in 16-bit arithmetic.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cached_property
from typing import ClassVar

import torch
from torch import Tensor
from torch.distributions import Categorical, MixtureSameFamily, constraints

from . import _math, _search, _validation
from ._components import Components, ScaleComponents
from ._transforms import MixtureTransforms
from ._triangular import (
    PackedPrecisionTrilComponents,
    PrecisionTrilComponents,
    ScaleTrilComponents,
)

__all__ = ["GaussianMixture"]

# The components class behind each constructor keyword.
_COMPONENTS: dict[
    str, type[ScaleComponents] | type[ScaleTrilComponents] | type[PrecisionTrilComponents]
] = {
    "scale": ScaleComponents,
    "scale_tril": ScaleTrilComponents,
    "precision_tril": PrecisionTrilComponents,
}

# sample(): draws of full-covariance mixtures are transformed by one GEMM per (batch element,
# component) group when there are at most this many groups (a Python loop over them), and
# by a gathered factor per draw otherwise (memory D^2 per draw, fine for few draws each).
SAMPLE_MAX_GROUPS = 4096


def _multinomial_counts(probs: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
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
        counts[:, k] = torch.binomial(remaining, ratio, generator=generator)
        remaining = remaining - counts[:, k]
    counts[:, -1] = remaining
    return counts.round().long()


def _sample_by_component(
    probs: Tensor, loc: Tensor, A: Tensor, n: int, generator: torch.Generator | None
) -> Tensor:
    """``n`` draws per row generated component by component, then shuffled.

    How many of the ``n`` draws of a batch element fall in each component is one
    multinomial draw, made as ``K - 1`` conditional binomials, which costs ``O(K)`` rather
    than a categorical draw per sample. The draws of component ``k`` are then
    ``mu_k + A_k eps`` with ``A_k A_k^T = Sigma_k``: one GEMM per (batch element, component)
    on a contiguous block, with no ``D x D`` factor gathered per draw (4 GB for 10^6 draws at
    D = 32) and no per-draw triangular solve. A uniformly random permutation of the blocks'
    rows then makes the sequence i.i.d. from the mixture (given the counts, every order of
    the component labels is equally likely).

    Args:
        probs: (R, K) mixture weights of the ``R`` flattened batch elements.
        loc: (R, K, D) means.
        A: (R, K, D, D) factors.
        n: draws per batch element.
        generator: source of randomness; ``None`` uses the global one.

    Returns:
        (n, R, D).
    """
    n_batch, K, D = loc.shape
    counts = _multinomial_counts(probs, n, generator).reshape(-1).tolist()  # (R * K,)
    eps = torch.randn(n_batch, n, D, dtype=loc.dtype, device=loc.device, generator=generator)
    out = torch.empty(n, n_batch, D, dtype=loc.dtype, device=loc.device)
    draws = torch.empty(n, D, dtype=loc.dtype, device=loc.device)
    for b in range(n_batch):
        start = 0
        for k in range(K):
            c = counts[b * K + k]
            if c:
                rows = slice(start, start + c)
                torch.addmm(loc[b, k], eps[b, rows], A[b, k].T, out=draws[rows])
                start += c
        perm = torch.randperm(n, device=loc.device, generator=generator)
        out[:, b] = draws.index_select(0, perm)
    return out


def _sample(
    components: Components,
    probs: Tensor,
    sample_shape: torch.Size,
    generator: torch.Generator | None,
) -> Tensor:
    """(*S, *B, D) draws: component indices from ``probs`` (prod B, K), then their Gaussians."""
    B, (K, D) = components.loc.shape[:-2], components.loc.shape[-2:]
    n = sample_shape.numel()
    if components.sample_by_component and B.numel() * K <= SAMPLE_MAX_GROUPS and n > 1:
        A = components.sample_factor().reshape(-1, K, D, D)
        x = _sample_by_component(probs, components.loc.reshape(-1, K, D), A, n, generator)
        return x.reshape(sample_shape + B + (D,))
    idx = torch.multinomial(probs, n, replacement=True, generator=generator)  # (prod B, n)
    idx = idx.T.reshape(sample_shape + B)  # (*S, *B)
    loc = components.loc
    eps = torch.randn(
        sample_shape + B + (D,), dtype=loc.dtype, device=loc.device, generator=generator
    )
    return components.sample_gathered(idx, eps)


class GaussianMixture(MixtureTransforms):
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
            always checked; values are not while ``torch.export`` traces (ONNX export).

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
        kind, factor = _validation.one_factor(
            scale=scale, scale_tril=scale_tril, precision_tril=precision_tril
        )
        logits, loc, factor = _validation.float_tensors(
            ("logits", logits), ("loc", loc), (kind, factor)
        )
        K, D = _validation.logits_and_loc(logits, loc)
        components = _COMPONENTS[kind]
        batch_shape = _validation.batch_shape(
            logits.shape[:-1],
            loc.shape[:-2],
            components.factor_batch_shape(factor, K, D),
            given=lambda: (
                f"logits (*batch, K) {tuple(logits.shape)}, loc (*batch, K, D) "
                f"{tuple(loc.shape)}, {kind} {tuple(factor.shape)}"
            ),
        )
        self._logits = _math.expand_to(logits, (*batch_shape, K))
        self._components = components(_math.expand_to(loc, (*batch_shape, K, D)), factor)
        super().__init__(batch_shape, torch.Size((D,)), validate_args=validate_args)
        if _validation.checks_values(self._validate_args):
            # The tensors as given, not their expanded views: no repeated work on broadcasts.
            _validation.check_finite(("logits", logits), ("loc", loc))
            components.check_factor(factor)

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
        logits, loc, diagonal, off_diagonal = _validation.packed_parameters(
            logits, loc, diagonal, off_diagonal
        )
        components = PackedPrecisionTrilComponents(loc, diagonal, off_diagonal)
        return cls._from_components(logits, components, validate_args)

    def _check_value(self, value: Tensor) -> Tensor:
        """(*sample, *batch, D) ``value`` in the mixture dtype (see ``_validation``)."""
        D = self.event_shape[0]
        return _validation.check_value(
            value, self.batch_shape, D, self._logits, _validation.checks_values(self._validate_args)
        )

    # ------------------------------------------------------------------ parameters

    @property
    def dtype(self) -> torch.dtype:
        """Floating-point dtype of every parameter and result."""
        return self._logits.dtype

    @property
    def parameterization(self) -> str:
        """``"scale"``, ``"scale_tril"`` or ``"precision_tril"``."""
        return self._components.parameterization

    @property
    def n_components(self) -> int:
        """Number of components ``K``."""
        return self._logits.shape[-1]

    @property
    def loc(self) -> Tensor:
        """(*batch, K, D) component means."""
        return self._components.loc

    @cached_property
    def logits(self) -> Tensor:
        """(*batch, K) normalized log-weights ``log pi_k`` (``log_softmax`` of the input)."""
        return _math.log_softmax(self._logits)

    @cached_property
    def probs(self) -> Tensor:
        """(*batch, K) mixture weights ``pi_k``."""
        return torch.softmax(self._logits, -1)

    @property
    def scale(self) -> Tensor | None:
        """(*batch, K, D) elementwise standard deviations (a view); ``None`` unless diagonal."""
        return self._components.scale

    @property
    def scale_tril(self) -> Tensor:
        """(*batch, K, D, D) lower Cholesky factor of each component covariance."""
        return self._components.scale_tril

    @property
    def precision_tril(self) -> Tensor:
        """(*batch, K, D, D) lower Cholesky factor ``P_k`` of each precision, ``P_k P_k^T =
        Sigma_k^{-1}``, for every parameterization.

        Computed lazily on first access and cached: the factor itself (a view) for
        ``precision_tril`` mixtures, built once from the packed entries for
        :meth:`from_packed_precision_tril`, ``diag(1 / scale)`` for ``scale`` and
        ``cholesky(Sigma^{-1})`` for ``scale_tril``. Differentiable.
        """
        return self._components.precision_tril

    @property
    def component_covariance_matrix(self) -> Tensor:
        """(*batch, K, D, D) covariance ``Sigma_k`` of each component."""
        return self._components.covariance

    @property
    def component_variance(self) -> Tensor:
        """(*batch, K, D) diagonal of each component covariance."""
        return self._components.variance

    @property
    def component_stddev(self) -> Tensor:
        """(*batch, K, D) standard deviation of each component along each output dim."""
        return self._components.stddev

    # ------------------------------------------------------------------ moments

    @cached_property
    def mean(self) -> Tensor:
        """(*batch, D) mixture mean ``sum_k pi_k mu_k``."""
        return (self.probs.unsqueeze(-1) * self.loc).sum(-2)

    @cached_property
    def covariance_matrix(self) -> Tensor:
        """(*batch, D, D) mixture covariance by the law of total variance."""
        dev = self.loc - self.mean.unsqueeze(-2)  # (*B, K, D)
        outer = dev.unsqueeze(-1) * dev.unsqueeze(-2)  # (*B, K, D, D)
        w = self.probs[..., None, None]
        return (w * (self.component_covariance_matrix + outer)).sum(-3)

    @cached_property
    def variance(self) -> Tensor:
        """(*batch, D) mixture variance per output dim."""
        dev = self.loc - self.mean.unsqueeze(-2)  # (*B, K, D)
        return (self.probs.unsqueeze(-1) * (self.component_variance + dev.square())).sum(-2)

    @property
    def stddev(self) -> Tensor:
        """(*batch, D) mixture standard deviation per output dim."""
        return self.variance.sqrt()

    @cached_property
    def mode(self) -> Tensor:
        """(*batch, D) highest-density point found by a local search from every component
        mean (EM fixed-point iterations, then Newton; see ``_search.find_mode``). A mode that
        no component mean leads to can be missed. Not differentiable (computed without a graph).
        """
        with torch.no_grad():
            return _search.find_mode(self.logits, self._components)

    # ------------------------------------------------------------------ densities

    def component_log_prob(self, value: Tensor) -> Tensor:
        """Log-density of each component, ``log N(y | mu_k, Sigma_k)`` (no weights).

        Args:
            value: (*sample, *batch, D).

        Returns:
            (*sample, *batch, K).
        """
        return self._components.component_log_prob(self._check_value(value))

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
        return self._components.mixture_log_prob(self._check_value(value), self._logits)

    def log_interval_prob(self, low: Tensor, high: Tensor) -> Tensor:
        """``log P(low <= Y <= high)``, the log-probability of a box (``D == 1``, or elementwise
        scales; a full-covariance box has no closed form: take a ``marginal`` first).

        Per component ``sum_d log(Phi(b_kd) - Phi(a_kd))`` from ``log_ndtr`` on the side of the
        median that keeps precision (exact far into the tails). ``low = -inf`` or ``high = inf``
        censors a coordinate, ``(-inf, inf)`` marginalizes it and ``low == high`` observes it
        exactly (its density).

        Args:
            low, high: (*sample, *batch, D) ends, ``low <= high``, not NaN.

        Returns:
            (*sample, *batch).

        Example:
            >>> gm = GaussianMixture(torch.zeros(1), torch.zeros(1, 1), scale=torch.ones(1))
            >>> gm.log_interval_prob(torch.tensor([-1.0]), torch.tensor([1.0])).exp()
            tensor(0.6827)
        """
        lo, hi = _validation.interval_ends(low, high, self)
        comp = _search.interval_component_log_prob(self.loc, self.component_stddev, lo, hi)
        return torch.logsumexp(self.logits + comp, -1)

    def component_posterior(self, value: Tensor) -> Tensor:
        """Responsibilities ``p(k | y)``.

        Args:
            value: (*sample, *batch, D).

        Returns:
            (*sample, *batch, K), summing to one over the last dim.
        """
        return torch.softmax(self.logits + self.component_log_prob(value), -1)

    # ------------------------------------------------------------------ sampling

    def sample(
        self,
        sample_shape: torch.Size | Sequence[int] = (),
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Draw samples (not reparameterized).

        The component index comes from :func:`torch.multinomial` on the weights, which
        normalizes them itself, so an index is always in ``[0, K)`` even when the float
        weights sum to slightly less than one. The draw uses the same factor as the density.
        Full-covariance mixtures with at most ``SAMPLE_MAX_GROUPS`` (batch element,
        component) pairs draw the per-component counts instead, transform each component's
        block with one matrix product and shuffle (see ``_sample_by_component``).

        Args:
            sample_shape: leading shape of the draws.
            generator: source of randomness (on the mixture's device) for every draw;
                ``None`` uses the global generator.

        Returns:
            (*sample_shape, *batch, D).
        """
        with torch.no_grad():
            probs = self.probs.reshape(-1, self.n_components)  # (prod B, K)
            return _sample(self._components, probs, torch.Size(sample_shape), generator)

    # ------------------------------------------------------------------ 1-D functions

    def _parameters_1d(self, method: str) -> tuple[Tensor, Tensor]:
        """(*batch, K) means and standard deviations; ``ValueError`` unless ``D == 1``."""
        D = self.event_shape[0]
        if D != 1:
            raise ValueError(
                f"{method} is defined for D == 1 only, this mixture has D = {D}; "
                f"call .marginal([d]).{method}(...) for output dim d"
            )
        return self.loc.squeeze(-1), self.component_stddev.squeeze(-1)

    def cdf(self, value: Tensor) -> Tensor:
        """Cumulative distribution function, ``D == 1`` only.

        Computed as ``exp(logsumexp_k(log pi_k + log Phi(z_k)))`` with ``log_ndtr`` so that
        far tails stay accurate (the same function as :func:`metrics.mixture_cdf`).

        Args:
            value: (*sample, *batch, 1).

        Returns:
            (*sample, *batch).

        Raises:
            ValueError: ``D > 1`` (use :meth:`marginal`) or a wrongly shaped value.
        """
        loc, sd = self._parameters_1d("cdf")
        value = self._check_value(value)
        return _search.mixture_cdf(self.logits, loc, sd, value.squeeze(-1))

    def icdf(self, value: Tensor) -> Tensor:
        """Quantile function, ``D == 1`` only, by bracketed Newton-bisection in float64.

        See ``_search.mixture_icdf`` for the bracket. ``q = 0`` and ``q = 1`` give ``-inf`` and
        ``inf``; a float32 result is the float64 root rounded once.

        Args:
            value: (*sample, *batch) probabilities in ``[0, 1]``.

        Returns:
            (*sample, *batch, 1) quantiles.

        Raises:
            ValueError: ``D > 1``, a value outside ``[0, 1]`` or a shape that does not
                broadcast with the batch.

        Example:
            >>> gm = GaussianMixture(torch.zeros(2), torch.tensor([[-1.0], [1.0]]),
            ...                      scale=torch.ones(2, 1))
            >>> x = gm.icdf(torch.tensor([0.1, 0.9]))
            >>> x.squeeze(-1), gm.cdf(x)
            (tensor([-1.8495,  1.8495]), tensor([0.1000, 0.9000]))
        """
        loc, sd = self._parameters_1d("icdf")
        q = _validation.probabilities(value, self.batch_shape, self._logits)
        return _search.mixture_icdf(self.logits, loc, sd, q).unsqueeze(-1)

    def to_torch(self) -> MixtureSameFamily:
        """Equivalent :class:`torch.distributions.MixtureSameFamily`.

        ``Independent(Normal)`` components for ``scale``, ``MultivariateNormal(scale_tril)``
        otherwise.
        """
        return MixtureSameFamily(Categorical(logits=self.logits), self._components.to_torch())

    def __repr__(self) -> str:
        return (
            f"GaussianMixture(batch_shape={tuple(self.batch_shape)}, "
            f"n_components={self.n_components}, event_shape={tuple(self.event_shape)}, "
            f"parameterization={self.parameterization!r}, dtype={self.dtype})"
        )
