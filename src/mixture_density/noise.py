"""Noise models: raw head outputs -> scale factors of the mixture components.

A mixture density head emits one flat vector of unconstrained numbers per input. This module
owns that vector's layout (:class:`HeadLayout`: logits, means, raw scales, and the packed
precision factor of ``full``) and the maps from its scale part to the spread of each
component, for five noise models:

=============================  =========================  ======================================
noise type                     raw outputs per input      parameter handed to ``GaussianMixture``
=============================  =========================  ======================================
``full``                       ``K * D * (D + 1) / 2``    ``precision_tril`` ``(*batch, K, D, D)``
``diagonal``                   ``K * D``                  ``scale`` ``(*batch, K, D)``
``isotropic``                  ``K``                      ``scale`` ``(*batch, K, 1)``
``isotropic_across_clusters``  ``1``                      ``scale`` ``(*batch, 1, 1)``
``fixed``                      ``0``                      ``scale`` ``(*batch, 1, 1)`` (a buffer)
=============================  =========================  ======================================

Every learned scale is ``softplus(raw) + min_scale``. The ``min_scale`` floor is what keeps the
likelihood bounded: with ``sigma = exp(raw)`` a component can shrink onto one training point,
``sigma`` underflows to 0 (or overflows to inf for large ``raw``) and the loss becomes inf/NaN.
``softplus`` grows only linearly, so large ``raw`` stays finite as well.

Isotropic scales keep a trailing axis of size 1 and *broadcast* over ``D``, so component ``k``
always uses its own ``sigma_k`` (tiling the ``(*batch, K)`` tensor with ``repeat`` would hand
component ``k`` the sigma of other components once ``D > 1`` and ``K > 1``).

Full covariance (what the floor bounds)
---------------------------------------
The head emits the lower-triangular Cholesky factor ``P`` of the *precision*,
``Sigma^-1 = P P^T``, so that the log-density needs one triangular mat-vec and no solve:
``log N(y) = -||P^T (y - mu)||^2 / 2 + sum_i log P_ii - D/2 log(2 pi)``. Its diagonal is
``P_ii = 1 / (softplus(raw_ii) + min_scale)`` and its strictly lower part is ``raw`` unchanged.

With ``U = P^-T`` (upper triangular, ``Sigma = U U^T``, ``U_ii = 1 / P_ii``) one has
``U_ii = sd(y_i | y_{i+1}, ..., y_D)``: ``1 / P_ii`` is the standard deviation of output ``i``
given the outputs *after* it. The floor therefore guarantees, for every component,

* ``sd(y_i | y_{i+1:}) >= min_scale`` for every ``i``, hence the marginal
  ``sd(y_i) >= min_scale`` (conditioning never increases variance);
* ``det(Sigma) = prod_i U_ii^2 >= min_scale^(2 D)``, hence the component density is at most
  ``(2 pi)^(-D/2) * min_scale^(-D)``: the negative log-likelihood is bounded below and cannot
  run off to ``-inf``.

It does **not** bound the smallest eigenvalue of ``Sigma``: strong correlations (large
off-diagonal ``P_ij``) may still make the density very thin along some direction, while
keeping ``det(Sigma)`` above the floor. The density is finite there all the same.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import Enum
from functools import cached_property
from typing import TypedDict

import torch
import torch.nn.functional as F
from torch import Tensor

from mixture_density._math import tril_from_packed
from mixture_density.distribution import GaussianMixture

__all__ = [
    "HeadLayout",
    "NoiseType",
    "ScaleParameters",
    "bounded_scale",
    "inverse_bounded_scale",
    "inverse_precision_diagonal",
    "n_scale_outputs",
    "precision_diagonal",
    "precision_tril_from_parts",
    "precision_tril_from_raw",
    "scale_from_raw",
    "scale_parameters",
]


class NoiseType(str, Enum):
    """How the spread of the mixture components is parameterized.

    Attributes:
        FULL: a full covariance matrix per component (through its precision Cholesky factor).
        DIAGONAL: one standard deviation per component and output dimension.
        ISOTROPIC: one standard deviation per component, shared by all output dimensions.
        ISOTROPIC_ACROSS_CLUSTERS: one standard deviation per input, shared by all components
            and output dimensions.
        FIXED: a constant standard deviation chosen by the user (not learned).

    Strings are accepted wherever a ``NoiseType`` is, case-insensitively.

    Example:
        >>> NoiseType.parse("Diagonal")
        <NoiseType.DIAGONAL: 'diagonal'>
        >>> NoiseType("FULL") is NoiseType.FULL
        True
    """

    FULL = "full"
    DIAGONAL = "diagonal"
    ISOTROPIC = "isotropic"
    ISOTROPIC_ACROSS_CLUSTERS = "isotropic_across_clusters"
    FIXED = "fixed"

    @classmethod
    def _missing_(cls, value: object) -> NoiseType | None:
        # Called by ``NoiseType(value)`` when no value matches exactly: accept any case.
        if isinstance(value, str):
            for member in cls:
                if member.value == value.strip().lower():
                    return member
        return None

    @classmethod
    def parse(cls, value: NoiseType | str) -> NoiseType:
        """Coerce a ``NoiseType`` or its name (any case) to a ``NoiseType``.

        Args:
            value: a member, or one of the strings ``"full"``, ``"diagonal"``,
                ``"isotropic"``, ``"isotropic_across_clusters"``, ``"fixed"``.

        Returns:
            The matching member.

        Raises:
            TypeError: if ``value`` is neither a ``NoiseType`` nor a string.
            ValueError: if ``value`` names no noise type; the message lists the options.
        """
        if isinstance(value, cls):
            return value
        if not isinstance(value, str):
            raise TypeError(
                f"noise_type must be a NoiseType or a string, got {type(value).__name__}: "
                f"{value!r}. Options: {cls.options()}."
            )
        try:
            return cls(value)
        except ValueError:
            raise ValueError(
                f"noise_type must be one of {cls.options()} (case-insensitive), got {value!r}."
            ) from None

    @classmethod
    def options(cls) -> str:
        """The accepted names, comma separated, for error messages."""
        return ", ".join(repr(member.value) for member in cls)


class ScaleParameters(TypedDict, total=False):
    """The one spread argument of ``GaussianMixture`` a noise model produces."""

    scale: Tensor
    precision_tril: Tensor


def n_scale_outputs(noise_type: NoiseType | str, n_components: int, dim_out: int) -> int:
    """Number of raw head outputs the noise model needs per input.

    Args:
        noise_type: the noise model.
        n_components: number of mixture components ``K``.
        dim_out: output dimension ``D``.

    Returns:
        ``K * D * (D + 1) / 2`` (full), ``K * D`` (diagonal), ``K`` (isotropic),
        ``1`` (isotropic across clusters) or ``0`` (fixed).

    Example:
        >>> n_scale_outputs("full", n_components=3, dim_out=2)
        9
    """
    noise_type = NoiseType.parse(noise_type)
    K, D = n_components, dim_out
    if noise_type is NoiseType.FULL:
        return K * D * (D + 1) // 2
    if noise_type is NoiseType.DIAGONAL:
        return K * D
    if noise_type is NoiseType.ISOTROPIC:
        return K
    if noise_type is NoiseType.ISOTROPIC_ACROSS_CLUSTERS:
        return 1
    return 0


def bounded_scale(raw: Tensor, min_scale: float) -> Tensor:
    """Map unconstrained numbers to scales ``softplus(raw) + min_scale``.

    The result is ``>= min_scale`` for every finite ``raw`` (``softplus`` underflows to 0, never
    below) and grows linearly, not exponentially, for large ``raw``.

    Args:
        raw: any shape.
        min_scale: the floor, a positive float in the units of the targets.

    Returns:
        Same shape and dtype as ``raw``.

    Example:
        >>> bounded_scale(torch.tensor([-1e4, 0.0, 1e4]), min_scale=1e-3)
        tensor([1.0000e-03, 6.9415e-01, 1.0000e+04])
    """
    return F.softplus(raw) + min_scale


def inverse_bounded_scale(scale: Tensor, min_scale: float) -> Tensor:
    """Inverse of :func:`bounded_scale`: the ``raw`` that gives ``scale``.

    Args:
        scale: any shape, every entry ``> min_scale``.
        min_scale: the floor used by :func:`bounded_scale`.

    Returns:
        Same shape as ``scale``.

    Raises:
        ValueError: if some ``scale <= min_scale`` (no finite ``raw`` maps there).

    Example:
        >>> raw = inverse_bounded_scale(torch.tensor([0.5, 2.0]), min_scale=1e-3)
        >>> bounded_scale(raw, min_scale=1e-3).tolist()
        [0.5, 2.0]
    """
    excess = scale - min_scale
    if bool((excess <= 0).any()):
        raise ValueError(
            f"scale must exceed min_scale={min_scale} everywhere, got minimum {scale.min().item()}."
        )
    # softplus^-1(s) = log(expm1(s)) = s + log(-expm1(-s)); the second form does not overflow
    # for large s and is exact for small s.
    return excess + torch.log(-torch.expm1(-excess))


def precision_diagonal(raw: Tensor, min_scale: float) -> Tensor:
    """Precision Cholesky diagonal from raw numbers: ``P_ii = 1 / (softplus(raw) + min_scale)``.

    ``1 / P_ii`` is the standard deviation of output ``i`` given the outputs after it, so the
    floor bounds it below by ``min_scale`` (see the module docstring for what this bounds).

    Args:
        raw: any shape; contiguous numbers are fastest (``softplus`` on a strided view is
            much slower on the CPU).
        min_scale: the floor on ``1 / P_ii``.

    Returns:
        Same shape as ``raw``, every entry in ``(0, 1 / min_scale]``.

    Example:
        >>> [round(p, 4) for p in precision_diagonal(torch.tensor([-1e4, 0.0]), 0.5).tolist()]
        [2.0, 0.8381]
    """
    return bounded_scale(raw, min_scale).reciprocal_()  # in place: one buffer fewer


def inverse_precision_diagonal(diagonal: Tensor, min_scale: float) -> Tensor:
    """Inverse of :func:`precision_diagonal`: the ``raw`` that gives ``P_ii = diagonal``.

    Args:
        diagonal: any shape, every entry in ``(0, 1 / min_scale)``.
        min_scale: the floor used by :func:`precision_diagonal`.

    Raises:
        ValueError: if some ``1 / diagonal <= min_scale`` (no finite ``raw`` maps there).

    Example:
        >>> raw = inverse_precision_diagonal(torch.tensor([0.5, 2.0]), min_scale=1e-3)
        >>> precision_diagonal(raw, min_scale=1e-3).tolist()
        [0.5, 2.0]
    """
    return inverse_bounded_scale(1.0 / diagonal, min_scale)


def scale_from_raw(
    noise_type: NoiseType | str,
    raw: Tensor,
    n_components: int,
    dim_out: int,
    min_scale: float,
) -> Tensor:
    """Elementwise standard deviations for the diagonal and isotropic noise models.

    Args:
        noise_type: ``diagonal``, ``isotropic`` or ``isotropic_across_clusters``.
        raw: ``(*batch, n_scale_outputs(noise_type, K, D))`` head outputs.
        n_components: ``K``.
        dim_out: ``D``.
        min_scale: the floor on every standard deviation.

    Returns:
        ``(*batch, K, D)`` (diagonal), ``(*batch, K, 1)`` (isotropic) or ``(*batch, 1, 1)``
        (isotropic across clusters); the size-1 axes broadcast against ``loc (*batch, K, D)``.

    Example:
        >>> scale_from_raw("isotropic", torch.zeros(4, 3), 3, 2, min_scale=1e-3).shape
        torch.Size([4, 3, 1])
    """
    noise_type = NoiseType.parse(noise_type)
    if noise_type is NoiseType.DIAGONAL:
        shape: tuple[int, int] = (n_components, dim_out)
    elif noise_type is NoiseType.ISOTROPIC:
        shape = (n_components, 1)
    elif noise_type is NoiseType.ISOTROPIC_ACROSS_CLUSTERS:
        shape = (1, 1)
    else:
        raise ValueError(
            f"scale_from_raw handles 'diagonal', 'isotropic' and 'isotropic_across_clusters', "
            f"got noise_type={noise_type.value!r}."
        )
    _check_last_dim(raw, math.prod(shape))
    return bounded_scale(raw.unflatten(-1, shape), min_scale)


def precision_tril_from_parts(
    diagonal_raw: Tensor, off_diagonal: Tensor, min_scale: float
) -> Tensor:
    """Precision Cholesky factors from raw diagonal and strictly-lower numbers.

    Args:
        diagonal_raw: ``(*batch, K, D)`` raw diagonal numbers.
        off_diagonal: ``(*batch, K, D * (D - 1) / 2)`` strictly lower triangle, row by row.
        min_scale: the floor on ``1 / P_ii``.

    Returns:
        ``(*batch, K, D, D)``: ``P_ii = 1 / (softplus(raw_ii) + min_scale)``, the strictly
        lower triangle from ``off_diagonal``, zeros above.

    Example:
        >>> P = precision_tril_from_parts(torch.zeros(1, 2), torch.ones(1, 1), 1e-3)
        >>> [[round(v, 3) for v in row] for row in P[0].tolist()]
        [[1.441, 0.0], [1.0, 1.441]]
    """
    # Elementwise work on contiguous numbers: softplus on a strided view (e.g. the diagonal
    # of a matrix) is much slower on the CPU.
    diagonal = precision_diagonal(diagonal_raw, min_scale)  # (*batch, K, D)
    return tril_from_packed(diagonal, off_diagonal)


def precision_tril_from_raw(
    raw: Tensor, n_components: int, dim_out: int, min_scale: float
) -> Tensor:
    """Lower Cholesky factor ``P`` of each component's precision, ``Sigma^-1 = P P^T``.

    Layout of the ``D * (D + 1) / 2`` raw numbers of one component (see
    :func:`mixture_density._math.tril_positions`): the first ``D`` give the diagonal,
    ``P_ii = 1 / (softplus(raw_i) + min_scale)``, so that ``1 / P_ii``, the standard deviation
    of ``y_i`` given ``y_{i+1:}``, is at least ``min_scale`` (see the module docstring for what
    this bounds); the remaining ``D * (D - 1) / 2`` fill the strictly lower triangle, row by
    row, unconstrained.

    Args:
        raw: ``(*batch, K * D * (D + 1) / 2)`` head outputs.
        n_components: ``K``.
        dim_out: ``D``.
        min_scale: the floor on ``1 / P_ii``.

    Returns:
        ``(*batch, K, D, D)``, lower triangular with a positive diagonal.

    Example:
        >>> P = precision_tril_from_raw(torch.zeros(3), 1, 2, min_scale=1e-3)
        >>> P.shape
        torch.Size([1, 2, 2])
    """
    layout = HeadLayout(NoiseType.FULL, n_components, dim_out)
    _check_last_dim(raw, layout.n_scale)
    diagonal_raw, off_diagonal = layout.split_packed(raw)  # (*batch, K, D), (*batch, K, D(D-1)/2)
    return precision_tril_from_parts(diagonal_raw.contiguous(), off_diagonal, min_scale)


def scale_parameters(
    noise_type: NoiseType | str,
    raw: Tensor,
    n_components: int,
    dim_out: int,
    min_scale: float,
    fixed_scale: Tensor | None = None,
) -> ScaleParameters:
    """Keyword arguments for ``GaussianMixture`` describing the component spread.

    Args:
        noise_type: the noise model.
        raw: ``(*batch, n_scale_outputs(noise_type, K, D))`` head outputs (``(*batch, 0)`` for
            ``fixed``; only its batch shape, dtype and device are used then).
        n_components: ``K``.
        dim_out: ``D``.
        min_scale: the floor of the learned scales.
        fixed_scale: the constant standard deviation, a 0-d tensor; ``fixed`` only.

    Returns:
        ``{"precision_tril": (*batch, K, D, D)}`` for ``full``, else ``{"scale": ...}`` with
        the shapes of :func:`scale_from_raw`, or ``(*batch, 1, 1)`` for ``fixed``.

    Example:
        >>> params = scale_parameters("diagonal", torch.zeros(5, 6), 3, 2, min_scale=1e-3)
        >>> params["scale"].shape
        torch.Size([5, 3, 2])
    """
    noise_type = NoiseType.parse(noise_type)
    if noise_type is NoiseType.FULL:
        return {"precision_tril": precision_tril_from_raw(raw, n_components, dim_out, min_scale)}
    if noise_type is NoiseType.FIXED:
        if fixed_scale is None:
            raise ValueError("noise_type='fixed' needs fixed_scale, got None.")
        # expand is a view: no copy, but every noise model yields a scale with the batch shape.
        scale = fixed_scale.to(dtype=raw.dtype, device=raw.device)
        return {"scale": scale.expand(*raw.shape[:-1], 1, 1)}
    return {"scale": scale_from_raw(noise_type, raw, n_components, dim_out, min_scale)}


@dataclass(frozen=True)
class HeadLayout:
    """Where each parameter sits in the flat raw output of a mixture density head.

    Per input a head emits ``n_outputs = K + K * D + S`` unconstrained numbers, in this order:

    * ``K`` mixture logits (rows :attr:`logits_rows` of the head's weight);
    * ``K * D`` component means, component by component (:attr:`loc_rows`);
    * ``S = n_scale_outputs(noise_type, K, D)`` raw scale numbers (:attr:`scale_rows`). For
      ``full`` these are, per component, ``D`` raw diagonal numbers of the precision factor
      (:func:`precision_diagonal`) then its ``D * (D - 1) / 2`` strictly lower entries, row by
      row (``torch.tril_indices(D, D, -1)`` order): see :meth:`split_packed`.

    :meth:`mixture` turns the three blocks into the :class:`GaussianMixture` (for ``full``
    through :meth:`GaussianMixture.from_packed_precision_tril`, which never builds the
    ``D x D`` factors for the log-density); :meth:`mixture_from_raw` does the same from the
    whole output, for any batch shape (e.g. ``(M, B, n_outputs)`` of a stacked ensemble gives
    batch shape ``(M, B)``).

    Attributes:
        noise_type: the noise model.
        n_components: ``K``.
        dim_out: ``D``.

    Example:
        >>> layout = HeadLayout(NoiseType.FULL, n_components=2, dim_out=2)
        >>> layout.n_outputs, layout.loc_rows, layout.scale_rows
        (12, slice(2, 6, None), slice(6, 12, None))
        >>> logits, loc, scale_raw = layout.split(torch.zeros(5, 12))
        >>> logits.shape, loc.shape, scale_raw.shape
        (torch.Size([5, 2]), torch.Size([5, 2, 2]), torch.Size([5, 6]))
        >>> mixture = layout.mixture_from_raw(torch.zeros(3, 5, 12), min_scale=1e-3)
        >>> mixture.batch_shape, mixture.event_shape
        (torch.Size([3, 5]), torch.Size([2]))
    """

    noise_type: NoiseType
    n_components: int
    dim_out: int

    def __post_init__(self) -> None:
        # A name is accepted as everywhere else; the field then holds the member.
        object.__setattr__(self, "noise_type", NoiseType.parse(self.noise_type))

    @cached_property
    def n_scale(self) -> int:
        """``S``: raw scale numbers per input (:func:`n_scale_outputs`)."""
        return n_scale_outputs(self.noise_type, self.n_components, self.dim_out)

    @cached_property
    def sizes(self) -> tuple[int, int, int]:
        """``(K, K * D, S)``: the lengths of the logits, mean and scale blocks."""
        K, D = self.n_components, self.dim_out
        return K, K * D, self.n_scale

    @cached_property
    def n_outputs(self) -> int:
        """``K + K * D + S``: raw outputs per input, the head's ``out_features``."""
        return sum(self.sizes)

    @cached_property
    def logits_rows(self) -> slice:
        """The logits' positions in the raw output (rows of the head's weight)."""
        return slice(0, self.n_components)

    @cached_property
    def loc_rows(self) -> slice:
        """The means' positions in the raw output."""
        K, KD, _ = self.sizes
        return slice(K, K + KD)

    @cached_property
    def scale_rows(self) -> slice:
        """The raw scale numbers' positions in the raw output."""
        K, KD, S = self.sizes
        return slice(K + KD, K + KD + S)

    def split(self, raw: Tensor, dim: int = -1) -> tuple[Tensor, Tensor, Tensor]:
        """Views of the three blocks of ``raw``, whose axis ``dim`` has ``n_outputs`` entries.

        Args:
            raw: e.g. ``(*batch, n_outputs)``; with ``dim=0`` the head's weight
                ``(n_outputs, in_features)``.
            dim: the axis of the outputs.

        Returns:
            ``logits (*, K)``, ``loc (*, K, D)``, ``scale_raw (*, S)`` for ``dim=-1`` (for
            another ``dim``, the same blocks along that axis, ``loc`` split there into ``K, D``).
            One ``torch.split``: its backward is one concatenation, not a zero-filled
            gradient of the whole of ``raw`` per block.
        """
        dim = dim % raw.dim()
        logits, loc, scale_raw = raw.split(self.sizes, dim)
        return logits, loc.unflatten(dim, (self.n_components, self.dim_out)), scale_raw

    def split_packed(self, scale_raw: Tensor, dim: int = -1) -> tuple[Tensor, Tensor]:
        """Views of the raw diagonal and strictly lower numbers of ``full`` scale outputs.

        Args:
            scale_raw: e.g. ``(*batch, S)`` with ``S = K * D * (D + 1) / 2`` along ``dim``.
            dim: the axis of the scale outputs.

        Returns:
            ``diagonal_raw (*, K, D)`` (to :func:`precision_diagonal`) and ``off_diagonal
            (*, K, D * (D - 1) / 2)`` (unconstrained), for ``dim=-1``; along ``dim`` otherwise.

        Raises:
            ValueError: for a noise type other than ``full``.
        """
        if self.noise_type is not NoiseType.FULL:
            raise ValueError(
                f"split_packed needs noise_type='full', got {self.noise_type.value!r}."
            )
        K, D = self.n_components, self.dim_out
        dim = dim % scale_raw.dim()
        packed = scale_raw.unflatten(dim, (K, D * (D + 1) // 2))  # (*, K, D (D + 1) / 2)
        return packed.narrow(dim + 1, 0, D), packed.narrow(dim + 1, D, D * (D - 1) // 2)

    def mixture(
        self,
        logits: Tensor,
        loc: Tensor,
        scale_raw: Tensor,
        *,
        min_scale: float,
        fixed_scale: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> GaussianMixture:
        """The mixture that the blocks of :meth:`split` describe.

        Args:
            logits: ``(*batch, K)``.
            loc: ``(*batch, K, D)``.
            scale_raw: ``(*batch, S)``; contiguous is fastest (``(*batch, 0)`` for ``fixed``:
                only its batch shape, dtype and device are used).
            min_scale: the floor of the learned scales.
            fixed_scale: the constant standard deviation, a 0-d tensor; ``fixed`` only.
            validate_args: as for :class:`GaussianMixture`.

        Returns:
            ``GaussianMixture`` with ``batch_shape = (*batch)`` and ``event_shape = (D,)``.
        """
        if self.noise_type is NoiseType.FULL:
            diagonal_raw, off_diagonal = self.split_packed(scale_raw)
            return GaussianMixture.from_packed_precision_tril(
                logits,
                loc,
                precision_diagonal(diagonal_raw, min_scale),
                off_diagonal,
                validate_args=validate_args,
            )
        params = scale_parameters(
            self.noise_type,
            scale_raw,
            self.n_components,
            self.dim_out,
            min_scale,
            fixed_scale=fixed_scale,
        )
        return GaussianMixture(logits, loc, **params, validate_args=validate_args)

    def mixture_from_raw(
        self,
        raw: Tensor,
        *,
        min_scale: float,
        fixed_scale: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> GaussianMixture:
        """:meth:`mixture` of the blocks of ``raw (*batch, n_outputs)``, batch ``(*batch)``."""
        _check_last_dim(raw, self.n_outputs)
        logits, loc, scale_raw = self.split(raw)
        return self.mixture(
            logits,
            loc,
            scale_raw.contiguous(),
            min_scale=min_scale,
            fixed_scale=fixed_scale,
            validate_args=validate_args,
        )


def _check_last_dim(raw: Tensor, expected: int) -> None:
    if raw.dim() == 0 or raw.shape[-1] != expected:
        raise ValueError(f"raw must have shape (*batch, {expected}), got {tuple(raw.shape)}.")
