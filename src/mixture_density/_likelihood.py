"""Likelihood and predictive distribution of targets given as intervals (private).

:func:`target_log_prob` is the log-likelihood of observations encoded as lower and upper
ends (``_targets.encode``): per output an exact value (equal ends: the density), an interval
(a bin, a censored or an interval-censored value: its probability) or a missing entry
(``(-inf, inf)``: marginalized). :class:`TargetLikelihood` trains a network on it through
the ordinary loop, and :class:`TargetDistribution` is the predictive distribution in the
original units of ``y`` (through the bounds' map, on the grid).
"""

from __future__ import annotations

import math
from functools import cache
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.distributions import Distribution, constraints

from ._search import interval_component_log_prob
from ._targets import GRID_RTOL, TargetSpec, encode
from .distribution import GaussianMixture

__all__ = ["TargetDistribution", "TargetLikelihood", "mapped_mean", "target_log_prob"]

#: Gauss-Hermite (components narrower than ``QUADRATURE_SPLIT_STD`` in z) and Gauss-Laguerre
#: (wider ones) nodes for the mean of a logit-normal component. 64 nodes each: largest error
#: 2e-14 of ``hi - lo`` against adaptive quadrature over means in [-15, 15] and standard
#: deviations from 0.01 to 100 (tests/test_targets.py checks 1e-12).
QUADRATURE_NODES = 64
QUADRATURE_SPLIT_STD = 1.0


def target_log_prob(gm: GaussianMixture, low: Tensor, high: Tensor) -> Tensor:
    """Log-likelihood of observations given by their ends, (*B, D) each -> (*B,).

    Diagonal (or ``D == 1``) mixtures take every combination of exact, interval and
    missing outputs exactly (``_search.interval_component_log_prob``). A full-covariance
    mixture over ``D > 1`` outputs groups the rows by which outputs are exact (E), an
    interval (I) or missing: ``log p(y_E) + log P(y_I in [a, b] | y_E)``, from the marginal
    over E and the conditional of I given y_E, exact for at most one interval output per row
    (a box under a full covariance has no closed form); more raise ``ValueError``.
    """
    if gm.scale is not None or gm.event_shape[0] == 1:
        comp = interval_component_log_prob(gm.loc, gm.component_stddev, low, high)
        return torch.logsumexp(gm.logits + comp, -1)
    return _by_pattern(gm, low, high)


def _by_pattern(gm: GaussianMixture, low: Tensor, high: Tensor) -> Tensor:
    D = low.shape[-1]
    exact = low == high
    interval = ~exact & ~(torch.isinf(low) & torch.isinf(high))
    code = (exact.long() + 2 * interval.long()) * 3 ** torch.arange(D, device=low.device)
    code = code.sum(-1)  # (*B',) one number per pattern of exact/interval/missing outputs
    batch = torch.broadcast_shapes(gm.batch_shape, low.shape[:-1])
    out = low.new_zeros(batch)
    for c in code.unique().tolist():
        rows = (code == c).unsqueeze(-1)
        E = [d for d in range(D) if (c // 3**d) % 3 == 1]
        Interval = [d for d in range(D) if (c // 3**d) % 3 == 2]
        if len(Interval) > 1:
            raise ValueError(
                f"a full-covariance mixture takes at most one binned or censored output per "
                f"row, got outputs {Interval}: use noise_type='diagonal' (an exact box "
                "probability), or give target_resolution to one output only"
            )
        y_e = torch.where(rows, low[..., E], 0.0)  # stand-ins outside the pattern
        lp = gm.marginal(E).log_prob(y_e) if E else low.new_zeros(batch)
        if Interval:
            i = Interval
            a = torch.where(rows, low[..., i], -1.0)
            b = torch.where(rows, high[..., i], 1.0)
            one = gm.marginal(E + i).condition(list(range(len(E))), y_e) if E else gm.marginal(i)
            comp = interval_component_log_prob(one.loc, one.component_stddev, a, b)
            lp = lp + torch.logsumexp(one.logits + comp, -1)
        out = torch.where(rows.squeeze(-1), lp, out)
    return out


class TargetLikelihood(nn.Module):
    """A network (or stacked ensemble) trained on the likelihood of encoded targets.

    ``loss(x, y)`` takes ``y (B, 2D)`` (or ``(M, B, 2D)``): the lower ends, then the upper
    ends, in standardized ``z`` units (``_targets.Encoded.standardized``), and returns the
    per-row negative log-likelihood ``(B,)`` (``(M, B)`` for ``n_members = M``), so that
    ``training.fit`` trains it, validates it and stops early on it like any model.

    Attributes:
        model: the wrapped network or ``StackedMDN``.
        n_members: the wrapped model's (1 for a network).
        infinite_targets: read by ``fit``'s data preparation: the targets hold ``-inf`` and
            ``inf`` (censored or missing ends), which it otherwise rejects.
    """

    infinite_targets = True

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.n_members = int(getattr(model, "n_members", 1))

    def forward(self, x: Tensor) -> GaussianMixture:
        out: GaussianMixture = self.model(x)
        return out

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        low, high = y.chunk(2, dim=-1)
        return -target_log_prob(self.model(x), low, high)


# ------------------------------------------------------------------------------ predictions


@cache
def _nodes(kind: str) -> tuple[np.ndarray, np.ndarray]:
    if kind == "hermite":  # E[f(X)], X ~ N(0, 1): probabilists' nodes, weights / sqrt(2 pi)
        x, w = np.polynomial.hermite_e.hermegauss(QUADRATURE_NODES)
        return x, w / math.sqrt(2 * math.pi)
    return np.polynomial.laguerre.laggauss(QUADRATURE_NODES)  # int_0^inf e^{-s} f(s) ds


def _logit_normal_mean(mu: Tensor, sd: Tensor) -> Tensor:
    """``E[sigmoid(Z)]`` for ``Z ~ N(mu, sd^2)``, elementwise (float64).

    Narrow components: Gauss-Hermite on ``sigmoid(mu + sd x)``. Wide ones, where the
    integrand is a steep step for Hermite nodes: ``E = Phi(mu / sd) + int_0^inf sigmoid(-s)
    (N(-s) - N(s)) ds`` (the step integrated exactly; the rest decays like ``e^{-s}``),
    by Gauss-Laguerre.
    """
    xh, wh = (torch.as_tensor(v, dtype=mu.dtype, device=mu.device) for v in _nodes("hermite"))
    xl, wl = (torch.as_tensor(v, dtype=mu.dtype, device=mu.device) for v in _nodes("laguerre"))
    m, s = mu.unsqueeze(-1), sd.unsqueeze(-1)
    narrow = (wh * torch.sigmoid(m + s * xh)).sum(-1)

    def normal_pdf(v: Tensor) -> Tensor:
        return torch.exp(-0.5 * ((v - m) / s) ** 2) / (s * math.sqrt(2 * math.pi))

    rest = (wl * (normal_pdf(-xl) - normal_pdf(xl)) / (1 + torch.exp(-xl))).sum(-1)
    wide = torch.special.ndtr(mu / sd) + rest
    return torch.where(sd <= QUADRATURE_SPLIT_STD, narrow, wide)


def mapped_mean(gm: GaussianMixture, spec: TargetSpec) -> Tensor:
    """``E[g^{-1}(Z)]`` per output for ``Z ~ gm`` (float64), (*B, D).

    Exact for the identity and the log maps (``E[exp(Z)]`` of a normal component is
    ``exp(mu + sd^2 / 2)``: a lognormal mean, ``inf`` when it overflows); the logit map's
    logit-normal components by quadrature (:func:`_logit_normal_mean`, accurate to about
    ``1e-13 (hi - lo)``). A grid is not applied: the mean of the rounded values differs from
    this by at most ``h / 2``.
    """
    w = gm.probs.double().unsqueeze(-1)  # (*B, K, 1)
    mu, sd = gm.loc.double(), gm.component_stddev.double()  # (*B, K, D)
    out = []
    for d, o in enumerate(spec.outputs):
        m, s = mu[..., d], sd[..., d]
        if o.map == "identity":
            v = m
        elif o.map == "log_lower":
            v = o.lower + torch.exp(m + 0.5 * s**2)
        elif o.map == "log_upper":
            v = o.upper - torch.exp(-m + 0.5 * s**2)
        else:
            v = o.lower + (o.upper - o.lower) * _logit_normal_mean(m, s)
        out.append((w[..., 0] * v).sum(-1))
    return torch.stack(out, -1)


class TargetDistribution(Distribution):
    """The predictive distribution of ``y`` in its original units: a mixture over ``z = g(y)``.

    ``base`` is a :class:`~mixture_density.GaussianMixture` over the transformed target
    ``z`` (per output the identity, ``log(y - lo)``, ``-log(hi - y)`` or the logit between the
    bounds; see ``_targets``); on a grid, values are rounded to the grid and ``log_prob`` is
    the log probability mass of a value's bin (always <= 0). Results are float64.

    Args:
        base: mixture over ``z``, batch shape (*B,), event shape (D,).
        spec: the targets' grid and bounds (``MDNRegressor.target_transform_`` describes it).

    Attributes:
        base, spec: as given.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {}
    support = constraints.real_vector
    has_rsample = False

    def __init__(self, base: GaussianMixture, spec: TargetSpec) -> None:
        self.base, self.spec = base, spec
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    @property
    def mean(self) -> Tensor:
        """(*B, D) ``E[y]`` of the continuous model (see :func:`mapped_mean`)."""
        return mapped_mean(self.base, self.spec)

    @property
    def mode(self) -> Tensor:
        raise ValueError(
            "the mode of a bounded or grid target is not computed (a map moves a density's "
            "peak); use the median, predict_quantiles(X, 0.5), or the mixture's mode in the "
            "transformed units, .base.mode"
        )

    def log_prob(self, value: Any, upper: Any = None) -> Tensor:
        """Log density (continuous outputs, with the map's Jacobian) or log probability mass
        (grid outputs) of ``value`` (*S, *B, D); NaN entries are marginalized. ``upper``
        (same shape, ``D == 1``) makes rows with ``upper > value`` intervals (``inf``:
        right-censored). Values outside the bounds give ``-inf``.
        """
        y = np.asarray(torch.as_tensor(value, dtype=torch.float64).cpu())
        shape = y.shape[:-1]
        y2 = y.reshape(-1, y.shape[-1])
        up = None if upper is None else np.asarray(upper, dtype=np.float64).reshape(y2.shape)
        enc = encode(self.spec, y2, up)
        device, dtype = self.base.loc.device, self.base.dtype
        low = torch.as_tensor(enc.low.reshape(y.shape), dtype=dtype, device=device)
        high = torch.as_tensor(enc.high.reshape(y.shape), dtype=dtype, device=device)
        with torch.no_grad():
            lp = target_log_prob(self.base, low, high).double().cpu()
        lp = lp + torch.as_tensor(enc.log_jacobian.reshape(shape))
        return torch.where(torch.as_tensor(enc.impossible.reshape(shape)), -math.inf, lp)

    def sample(self, sample_shape: Any = ()) -> Tensor:
        """(*S, *B, D) draws: the mixture's, mapped back into the bounds, rounded to the grid."""
        return self.spec.to_y(self.base.sample(torch.Size(sample_shape)))

    def cdf(self, value: Tensor) -> Tensor:
        """``P(Y <= value)``, ``D == 1``; on a grid up to the end of the value's bin."""
        o = self.spec.outputs[0]
        y = torch.as_tensor(value, dtype=torch.float64)
        if o.resolution is not None:
            g = o.origin or 0.0
            # the grid points up to y (a few ulps of slack: y itself may be one)
            k = torch.floor((y - g) / o.resolution + GRID_RTOL)
            y = (k + 0.5) * o.resolution + g
        z = self.spec.forward(y.clamp(o.lower, o.upper))
        z = z.clamp(-torch.finfo(self.base.dtype).max, torch.finfo(self.base.dtype).max)
        return self.base.cdf(z.to(self.base.dtype).to(self.base.loc.device)).double()

    def icdf(self, value: Tensor) -> Tensor:
        """Quantiles ``(*S, *B, 1)`` of probabilities ``(*S, *B)``, ``D == 1``."""
        return self.spec.to_y(self.base.icdf(value))
