"""Proper scoring rules and calibration checks for Gaussian-mixture predictions.

Two layers:

* pure tensor functions of 1-D mixture parameters (:func:`mixture_cdf`,
  :func:`crps_gaussian_mixture`, :func:`energy_score_from_samples`, :func:`coverage_from_pit`),
  usable without a :class:`~mixture_density.GaussianMixture`;
* thin wrappers taking a predicted distribution and the observed targets (:func:`nll`,
  :func:`crps`, :func:`energy_score`, :func:`pit`, :func:`interval_coverage`,
  :func:`calibration_error`, :func:`evaluate`).

For ``D > 1`` outputs, CRPS, PIT and interval coverage are computed per output dimension on the
marginal mixture ``sum_k pi_k N(mu_kd, Sigma_k[d, d])``, which is exact for every covariance
parameterization. The energy score is the multivariate proper score.

Reductions: ``reduction="mean"`` (default) and ``"sum"`` return Python floats; ``"none"``
returns a tensor that keeps the autograd graph, so ``crps(dist, y, reduction="none").mean()``
can be used as a training loss.

Only torch is needed at run time (no scipy).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, Literal, overload

import torch
from torch import Tensor

from . import _search

if TYPE_CHECKING:
    from .distribution import GaussianMixture

__all__ = [
    "DEFAULT_LEVELS",
    "calibration_error",
    "coverage_from_pit",
    "crps",
    "crps_gaussian_mixture",
    "energy_score",
    "energy_score_from_samples",
    "evaluate",
    "interval_coverage",
    "mixture_cdf",
    "nll",
    "pit",
]

Reduction = Literal["mean", "sum", "none"]

#: Central-interval levels reported by :func:`interval_coverage` by default.
DEFAULT_LEVELS: tuple[float, ...] = (0.5, 0.8, 0.9, 0.95)

# Levels 0.05, 0.10, ..., 0.95 over which :func:`calibration_error` averages.
_CALIBRATION_LEVELS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))

_SQRT_2 = math.sqrt(2.0)
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)

# Upper bound on elements of one (chunk, n, n) pairwise-distance block in the energy score:
# 2**22 doubles are 32 MiB, small enough for a shared machine, large enough to vectorize.
_PAIRWISE_CHUNK_ELEMENTS = 2**22


# --------------------------------------------------------------------------------------------
# Pure tensor functions (1-D mixtures given by their parameters)
# --------------------------------------------------------------------------------------------


def mixture_cdf(logits: Tensor, loc: Tensor, scale: Tensor, y: Tensor) -> Tensor:
    """CDF of a 1-D Gaussian mixture, ``F(y) = sum_k pi_k Phi((y - mu_k) / s_k)``.

    Computed in log space (``logsumexp`` of ``log pi_k + log Phi``), so values deep in the
    lower tail keep their relative accuracy instead of underflowing to 0.

    Args:
        logits: ``(*batch, K)`` mixture log-weights, normalized or not.
        loc: ``(*batch, K)`` component means.
        scale: ``(*batch, K)`` component standard deviations (positive).
        y: ``(*batch,)`` evaluation points. All four broadcast together.

    Returns:
        ``(*batch,)`` values in ``[0, 1]``.

    Example:
        >>> import torch
        >>> from mixture_density.metrics import mixture_cdf
        >>> logits = torch.zeros(2)
        >>> loc, scale = torch.tensor([-1.0, 1.0]), torch.ones(2)
        >>> round(mixture_cdf(logits, loc, scale, torch.tensor(0.0)).item(), 6)
        0.5
    """
    return _search.mixture_cdf(logits, loc, scale, y)  # the one GaussianMixture.cdf uses


def _expected_abs_normal(m: Tensor, var: Tensor) -> Tensor:
    """``E|Z|`` for ``Z ~ N(m, var)``: ``m (2 Phi(m/s) - 1) + 2 s phi(m/s)``, ``s = sqrt(var)``."""
    s = var.sqrt()
    z = m / s
    # erf(z / sqrt 2) == 2 Phi(z) - 1 without the cancellation near z = 0.
    return m * torch.erf(z / _SQRT_2) + s * _SQRT_2_OVER_PI * torch.exp(-0.5 * z.square())


def crps_gaussian_mixture(logits: Tensor, loc: Tensor, scale: Tensor, y: Tensor) -> Tensor:
    """Closed-form CRPS of a 1-D Gaussian mixture (Grimit et al., 2006).

    ``CRPS = sum_k pi_k A(y - mu_k, s_k^2) - 1/2 sum_{k,l} pi_k pi_l A(mu_k - mu_l, s_k^2 + s_l^2)``
    with ``A(m, v) = E|N(m, v)|``. Cost is ``O(K^2)`` per row. Differentiable in all arguments.

    Args:
        logits: ``(*batch, K)`` mixture log-weights, normalized or not.
        loc: ``(*batch, K)`` component means.
        scale: ``(*batch, K)`` component standard deviations (positive).
        y: ``(*batch,)`` observations. All four broadcast together.

    Returns:
        ``(*batch,)`` CRPS values (same units as ``y``; lower is better).

    Example:
        >>> import math, torch
        >>> from mixture_density.metrics import crps_gaussian_mixture
        >>> zero, one = torch.zeros(1, dtype=torch.float64), torch.ones(1, dtype=torch.float64)
        >>> value = crps_gaussian_mixture(zero, zero, one, zero[0])  # N(0, 1) scored at y = 0
        >>> bool(abs(value - (math.sqrt(2) - 1) / math.sqrt(math.pi)) < 1e-12)
        True
    """
    w = torch.softmax(logits, dim=-1)  # (*B, K)
    var = scale.square()  # (*B, K)
    fit = (w * _expected_abs_normal(y.unsqueeze(-1) - loc, var)).sum(-1)  # (*B,)
    pair_m = loc.unsqueeze(-1) - loc.unsqueeze(-2)  # (*B, K, K)
    pair_v = var.unsqueeze(-1) + var.unsqueeze(-2)  # (*B, K, K)
    pair_w = w.unsqueeze(-1) * w.unsqueeze(-2)  # (*B, K, K)
    spread = (pair_w * _expected_abs_normal(pair_m, pair_v)).sum((-2, -1))  # (*B,)
    return fit - 0.5 * spread


def energy_score_from_samples(samples: Tensor, y: Tensor) -> Tensor:
    """Unbiased Monte Carlo energy score ``E||X - y|| - 1/2 E||X - X'||`` from samples.

    ``E||X - X'||`` is the U-statistic over all ``n (n - 1)`` ordered pairs of distinct samples,
    so the estimate is unbiased for the score of the sampled distribution. For ``D == 1`` the
    energy score equals the CRPS.

    Args:
        samples: ``(n, *batch, D)`` draws from the forecast, ``n >= 2``.
        y: ``(*obs, *batch, D)`` observations; leading ``*obs`` dims (often none) are scored
            against the same samples.

    Returns:
        ``(*obs, *batch)`` energy scores.

    Raises:
        ValueError: if fewer than 2 samples or the shapes disagree.

    Example:
        >>> import torch
        >>> from mixture_density.metrics import energy_score_from_samples
        >>> samples = torch.tensor([[0.0, 0.0], [2.0, 0.0]])[:, None, :]  # (n=2, batch=1, D=2)
        >>> energy_score_from_samples(samples, torch.zeros(1, 2))
        tensor([0.])
    """
    if samples.dim() < 2 or samples.shape[0] < 2:
        raise ValueError(
            f"samples must have shape (n, *batch, D) with n >= 2, got {tuple(samples.shape)}"
        )
    n, event = samples.shape[0], samples.shape[1:]  # event = (*B, D)
    n_obs_dims = y.dim() - len(event)
    if n_obs_dims < 0 or y.shape[n_obs_dims:] != event:
        raise ValueError(
            f"y must have shape {_shape_str(event)} ending in samples.shape[1:], "
            f"got {tuple(y.shape)}"
        )
    D = event[-1]
    x = samples.reshape(n, *([1] * n_obs_dims), *event)  # (n, *1, *B, D)
    fit = (x - y).norm(dim=-1).mean(0)  # (*S, *B)
    flat = samples.movedim(0, -2).reshape(-1, n, D)  # (B, n, D)
    chunk = max(1, _PAIRWISE_CHUNK_ELEMENTS // (n * n))
    pair_sums = [
        # The matmul shortcut of cdist loses precision for nearby points; use direct differences.
        torch.cdist(xc, xc, compute_mode="donot_use_mm_for_euclid_dist").sum((-2, -1))
        for xc in flat.split(chunk)
    ]
    spread = torch.cat(pair_sums).reshape(event[:-1]) / (n * (n - 1))  # (*B,)
    return fit - 0.5 * spread


def coverage_from_pit(
    pit_values: Tensor, levels: Iterable[float] = DEFAULT_LEVELS
) -> dict[float, float]:
    """Fraction of PIT values inside each central interval ``[(1 - l)/2, (1 + l)/2]``.

    For a continuous, strictly increasing CDF ``F``, ``y`` lies in the central ``l`` prediction
    interval ``[F^-1((1-l)/2), F^-1((1+l)/2)]`` exactly when ``|F(y) - 1/2| <= l/2``, so coverage
    needs no quantile search.

    Args:
        pit_values: PIT values of any shape; all entries are pooled.
        levels: nominal levels in ``(0, 1)``.

    Returns:
        ``{level: observed coverage}``, in the order given.

    Example:
        >>> import torch
        >>> from mixture_density.metrics import coverage_from_pit
        >>> coverage_from_pit(torch.tensor([0.1, 0.4, 0.5, 0.7]), levels=(0.5,))
        {0.5: 0.75}
    """
    levels = _check_levels(levels)
    if pit_values.numel() == 0:
        raise ValueError("pit_values must not be empty")
    distance = (pit_values.detach() - 0.5).abs().flatten()
    return {level: (distance <= level / 2).double().mean().item() for level in levels}


# --------------------------------------------------------------------------------------------
# Wrappers taking a predicted distribution
# --------------------------------------------------------------------------------------------


@overload
def nll(dist: Any, y: Any, *, reduction: Literal["mean", "sum"] = ...) -> float: ...
@overload
def nll(dist: Any, y: Any, *, reduction: Literal["none"]) -> Tensor: ...
def nll(dist: Any, y: Any, *, reduction: Reduction = "mean") -> float | Tensor:
    """Negative log-likelihood ``-log p(y)`` of observations under the predicted distribution.

    Works for any ``torch.distributions.Distribution`` with ``event_shape == (D,)``.

    Args:
        dist: predicted distribution, ``batch_shape`` ``(*batch,)``, ``event_shape`` ``(D,)``.
        y: ``(*obs, *batch, D)`` observations (``(*obs, *batch)`` accepted when ``D == 1``);
            leading ``*obs`` dims (usually none) are further observations scored against the
            same forecast. Tensors, arrays and lists are converted to the distribution's dtype
            and device.
        reduction: ``"mean"`` or ``"sum"`` over all rows (Python float), or ``"none"``.

    Returns:
        A float, or for ``reduction="none"`` a ``(*obs, *batch)`` tensor (in nats).

    Raises:
        ValueError: if ``y`` does not have the shape above or ``reduction`` is unknown.

    Example:
        >>> import torch
        >>> from mixture_density import GaussianMixture
        >>> from mixture_density.metrics import nll
        >>> dist = GaussianMixture(torch.zeros(3, 1), torch.zeros(3, 1, 1), scale=torch.ones(1))
        >>> round(nll(dist, torch.zeros(3, 1)), 4)  # log(2 pi) / 2
        0.9189
    """
    y, _ = _check_y(dist, y)
    return _reduce(-dist.log_prob(y), reduction)


@overload
def crps(dist: GaussianMixture, y: Any, *, reduction: Literal["mean", "sum"] = ...) -> float: ...
@overload
def crps(dist: GaussianMixture, y: Any, *, reduction: Literal["none"]) -> Tensor: ...
def crps(dist: GaussianMixture, y: Any, *, reduction: Reduction = "mean") -> float | Tensor:
    """Continuous ranked probability score, closed form, per output dimension.

    For ``D > 1`` each dimension is scored under its marginal mixture; ``"mean"`` averages over
    rows and dimensions.

    Args:
        dist: predicted ``GaussianMixture``, ``batch_shape`` ``(*batch,)``, ``event_shape (D,)``.
        y: ``(*obs, *batch, D)`` observations (``(*obs, *batch)`` accepted when ``D == 1``),
            see :func:`nll`.
        reduction: ``"mean"``, ``"sum"`` (Python float) or ``"none"``.

    Returns:
        A float, or for ``reduction="none"`` a tensor shaped like ``y`` (after conversion).

    Raises:
        ValueError: if ``y`` does not have the shape above or ``reduction`` is unknown.

    Example:
        >>> import torch
        >>> from mixture_density import GaussianMixture
        >>> from mixture_density.metrics import crps
        >>> dist = GaussianMixture(torch.zeros(1), torch.zeros(1, 1), scale=torch.ones(1))
        >>> round(crps(dist, torch.zeros(1)), 4)  # (sqrt(2) - 1) / sqrt(pi)
        0.2337
    """
    y, squeeze = _check_y(dist, y)
    logits, loc, scale = _marginal_parameters(dist)
    values = crps_gaussian_mixture(logits, loc, scale, y)  # (*B, D)
    return _reduce(values.squeeze(-1) if squeeze else values, reduction)


@overload
def energy_score(
    dist: GaussianMixture,
    y: Any,
    *,
    n_samples: int = ...,
    generator: torch.Generator | None = ...,
    reduction: Literal["mean", "sum"] = ...,
) -> float: ...
@overload
def energy_score(
    dist: GaussianMixture,
    y: Any,
    *,
    n_samples: int = ...,
    generator: torch.Generator | None = ...,
    reduction: Literal["none"],
) -> Tensor: ...
def energy_score(
    dist: GaussianMixture,
    y: Any,
    *,
    n_samples: int = 1000,
    generator: torch.Generator | None = None,
    reduction: Reduction = "mean",
) -> float | Tensor:
    """Monte Carlo energy score ``E||X - y|| - 1/2 E||X - X'||`` for multivariate outputs.

    Draws ``n_samples`` samples per row with :meth:`GaussianMixture.sample` from ``generator``,
    leaving the global RNG untouched when one is given. The draws go through the lower Cholesky
    factor of each covariance (``loc + scale_tril @ eps``) whatever the parameterization, so
    equivalent mixtures get the same draws, and the same score, from the same generator. The
    pairwise term costs ``O(n_samples^2 D)`` per row; the Monte Carlo standard error shrinks
    like ``1 / sqrt(n_samples)``. For ``D == 1`` prefer the exact :func:`crps`.

    Args:
        dist: predicted ``GaussianMixture``, ``batch_shape`` ``(*batch,)``, ``event_shape (D,)``.
        y: ``(*obs, *batch, D)`` observations (``(*obs, *batch)`` accepted when ``D == 1``),
            see :func:`nll`.
        n_samples: samples per row, at least 2.
        generator: random generator on the distribution's device; ``None`` uses the global RNG.
        reduction: ``"mean"``, ``"sum"`` (Python float) or ``"none"``.

    Returns:
        A float, or a ``(*obs, *batch)`` tensor.

    Raises:
        ValueError: if ``y`` has the wrong shape, ``n_samples < 2`` or ``reduction`` is unknown.

    Example:
        >>> import torch
        >>> from mixture_density import GaussianMixture
        >>> from mixture_density.metrics import energy_score
        >>> dist = GaussianMixture(torch.zeros(4, 2), torch.randn(4, 2, 3), scale=torch.ones(3))
        >>> gen = torch.Generator().manual_seed(0)
        >>> energy_score(dist, torch.zeros(4, 3), n_samples=200, generator=gen) > 0
        True
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 2:
        raise ValueError(f"n_samples must be an integer >= 2, got {n_samples!r}")
    y, _ = _check_y(dist, y)
    if generator is not None and generator.device.type != dist.loc.device.type:
        raise ValueError(
            f"generator must be on the distribution's device ({dist.loc.device.type}), got one "
            f"on {generator.device.type}; create it with torch.Generator(device=...)"
        )
    # One sampling factor for every parameterization (see above): the scale_tril form.
    canonical = type(dist)(dist.logits, dist.loc, scale_tril=dist.scale_tril, validate_args=False)
    samples = canonical.sample((n_samples,), generator=generator)  # (n, *B, D)
    return _reduce(energy_score_from_samples(samples, y), reduction)


def pit(dist: GaussianMixture, y: Any) -> Tensor:
    """Probability integral transform ``F_d(y_d)`` per output dimension.

    Uses the marginal mixture CDF of each dimension. If the forecast is calibrated, the values
    are i.i.d. uniform on ``[0, 1]``.

    Args:
        dist: predicted ``GaussianMixture``, ``batch_shape`` ``(*batch,)``, ``event_shape (D,)``.
        y: ``(*obs, *batch, D)`` observations (``(*obs, *batch)`` accepted when ``D == 1``),
            see :func:`nll`.

    Returns:
        Tensor shaped like ``y`` (after conversion) with values in ``[0, 1]``.

    Raises:
        ValueError: if ``y`` does not have the shape above.

    Example:
        >>> import torch
        >>> from mixture_density import GaussianMixture
        >>> from mixture_density.metrics import pit
        >>> dist = GaussianMixture(torch.zeros(2, 1), torch.zeros(2, 1, 1), scale=torch.ones(1))
        >>> pit(dist, torch.tensor([0.0, 10.0]))
        tensor([0.5000, 1.0000])
    """
    y, squeeze = _check_y(dist, y)
    logits, loc, scale = _marginal_parameters(dist)
    values = mixture_cdf(logits, loc, scale, y)  # (*B, D)
    return values.squeeze(-1) if squeeze else values


def interval_coverage(
    dist: GaussianMixture, y: Any, levels: Iterable[float] = DEFAULT_LEVELS
) -> dict[float, float]:
    """Observed coverage of central prediction intervals of the marginal mixtures.

    The central ``l`` interval of dimension ``d`` is ``[F_d^-1((1-l)/2), F_d^-1((1+l)/2)]``;
    coverage is the fraction of all ``(row, dimension)`` pairs whose observation falls inside.
    Computed from PIT values (see :func:`coverage_from_pit`), which is exact and avoids a
    quantile search.

    Args:
        dist: predicted ``GaussianMixture``, ``batch_shape`` ``(*batch,)``, ``event_shape (D,)``.
        y: ``(*obs, *batch, D)`` observations (``(*obs, *batch)`` accepted when ``D == 1``),
            see :func:`nll`.
        levels: nominal levels in ``(0, 1)``.

    Returns:
        ``{level: observed coverage fraction}``.

    Raises:
        ValueError: if ``y`` has the wrong shape or a level is outside ``(0, 1)``.

    Example:
        >>> import torch
        >>> from mixture_density import GaussianMixture
        >>> from mixture_density.metrics import interval_coverage
        >>> dist = GaussianMixture(torch.zeros(2, 1), torch.zeros(2, 1, 1), scale=torch.ones(1))
        >>> interval_coverage(dist, torch.tensor([0.5, 3.0]), levels=(0.9,))
        {0.9: 0.5}
    """
    return coverage_from_pit(pit(dist, y), levels)


def calibration_error(
    dist: GaussianMixture, y: Any, levels: Iterable[float] = _CALIBRATION_LEVELS
) -> float:
    """Mean absolute gap between observed and nominal central-interval coverage.

    ``mean_l |coverage(l) - l|`` over ``levels`` (default 0.05, 0.10, ..., 0.95): 0 for a
    perfectly calibrated forecast; what :func:`~mixture_density.plotting.plot_reliability` shows.

    Args:
        dist: predicted ``GaussianMixture``.
        y: ``(*obs, *batch, D)`` observations (``(*obs, *batch)`` accepted when ``D == 1``),
            see :func:`nll`.
        levels: nominal levels in ``(0, 1)``.

    Returns:
        The calibration error, in ``[0, 1)``.

    Example:
        >>> import torch
        >>> from mixture_density import GaussianMixture
        >>> from mixture_density.metrics import calibration_error
        >>> dist = GaussianMixture(torch.zeros(1), torch.zeros(1, 1), scale=torch.ones(1))
        >>> calibration_error(dist, torch.randn(20000, 1)) < 0.02
        True
    """
    return _mean_gap(interval_coverage(dist, y, levels))


def evaluate(
    dist: GaussianMixture, y: Any, levels: Iterable[float] = DEFAULT_LEVELS
) -> dict[str, float]:
    """Summary of the exact (sampling-free) metrics, for reports and the command line.

    Args:
        dist: predicted ``GaussianMixture``.
        y: ``(*obs, *batch, D)`` observations (``(*obs, *batch)`` accepted when ``D == 1``),
            see :func:`nll`.
        levels: central-interval levels to report coverage for.

    Returns:
        ``{"nll", "crps", "calibration_error", "coverage_<level>"...}`` as floats.

    Example:
        >>> import torch
        >>> from mixture_density import GaussianMixture
        >>> from mixture_density.metrics import evaluate
        >>> dist = GaussianMixture(torch.zeros(1), torch.zeros(1, 1), scale=torch.ones(1))
        >>> sorted(evaluate(dist, torch.zeros(1, 1), levels=(0.9,)))
        ['calibration_error', 'coverage_0.9', 'crps', 'nll']
    """
    y, _ = _check_y(dist, y)
    with torch.no_grad():
        u = pit(dist, y)
        report = {
            "nll": nll(dist, y),
            "crps": crps(dist, y),
            "calibration_error": _mean_gap(coverage_from_pit(u, _CALIBRATION_LEVELS)),
        }
        report.update({f"coverage_{lv:g}": c for lv, c in coverage_from_pit(u, levels).items()})
    return report


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _mean_gap(coverage: dict[float, float]) -> float:
    return sum(abs(observed - level) for level, observed in coverage.items()) / len(coverage)


def _check_y(dist: Any, y: Any) -> tuple[Tensor, bool]:
    """Convert ``y`` to the distribution's dtype/device and check ``(*obs, *batch, D)``.

    Leading ``*obs`` dims are extra observations scored against the same forecast, as in
    ``log_prob``. Returns ``(y of shape (*obs, *batch, D), squeezed)`` where ``squeezed`` says
    the caller left out the ``D == 1`` event dim, so per-dimension results can be given back
    in the caller's shape.
    """
    event_shape = tuple(dist.event_shape)
    if len(event_shape) != 1:
        raise ValueError(
            f"dist must have event_shape (D,), got {event_shape}; metrics score vector targets"
        )
    # Any parameter tensor tells dtype and device; `mean` covers generic torch distributions.
    ref = dist.loc if isinstance(getattr(dist, "loc", None), Tensor) else dist.mean
    y = torch.as_tensor(y, device=ref.device)
    if not (y.is_floating_point() and y.dtype == ref.dtype):
        y = y.to(ref.dtype)
    batch_shape = tuple(dist.batch_shape)
    expected = batch_shape + event_shape

    def ends_with(shape: tuple[int, ...]) -> bool:
        return y.dim() >= len(shape) and tuple(y.shape[y.dim() - len(shape) :]) == shape

    if ends_with(expected):
        return y, False
    if event_shape == (1,) and ends_with(batch_shape):
        return y.unsqueeze(-1), True
    alternative = f" or {_shape_str(batch_shape)}" if event_shape == (1,) else ""
    raise ValueError(
        f"y must have shape {_shape_str(expected)}{alternative} (dist.batch_shape + "
        f"dist.event_shape, after optional leading observation dims), got {tuple(y.shape)}"
    )


def _shape_str(shape: Sequence[int]) -> str:
    return "(" + ", ".join(["*obs", *map(str, shape)]) + ")"


def _marginal_parameters(dist: GaussianMixture) -> tuple[Tensor, Tensor, Tensor]:
    """1-D marginal mixtures of every output dimension, laid out ``(*batch, D, K)``.

    The marginal of dimension ``d`` is ``sum_k pi_k N(mu_kd, Sigma_k[d, d])`` whatever the
    covariance structure, so it needs only the component standard deviations.
    """
    logits = dist.logits.unsqueeze(-2)  # (*B, 1, K), broadcasts over D
    loc = dist.loc.transpose(-1, -2)  # (*B, D, K)
    scale = dist.component_stddev.transpose(-1, -2)  # (*B, D, K)
    return logits, loc, scale


def _check_levels(levels: Iterable[float]) -> tuple[float, ...]:
    levels = tuple(float(level) for level in levels)
    if not levels:
        raise ValueError("levels must contain at least one level in (0, 1), got none")
    bad = [level for level in levels if not 0.0 < level < 1.0]
    if bad:
        raise ValueError(f"levels must lie strictly between 0 and 1, got {bad}")
    return levels


def _reduce(values: Tensor, reduction: Reduction) -> float | Tensor:
    if reduction == "mean":
        return values.mean().item()
    if reduction == "sum":
        return values.sum().item()
    if reduction == "none":
        return values
    raise ValueError(f"reduction must be 'mean', 'sum' or 'none', got {reduction!r}")
