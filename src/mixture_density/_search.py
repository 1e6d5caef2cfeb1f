"""Mixture-generic numerical algorithms: mode search, the 1-D cdf and its inverse, and the
probability of intervals (censored, binned and partly missing observations).

They see the components only through :class:`~mixture_density._components.Components`
(log-densities and precision operations), so they serve every parameterization.
Shapes: ``*S`` sample dims, ``*B`` batch dims, ``K`` components, ``D`` event dim.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor

from ._components import Components
from ._math import LOG_2PI, log_softmax

__all__ = [
    "ICDF_BRACKET_STDS",
    "MODE_MAX_ITER",
    "MODE_NEWTON_STEPS",
    "MODE_TOL_ULPS",
    "find_mode",
    "interval_component_log_prob",
    "log1mexp",
    "log_ndtr_diff",
    "mixture_cdf",
    "mixture_icdf",
    "newton_bisect",
]

# Mode search: fixed-point (mean-shift / EM) iterations, then Newton polishing.
MODE_MAX_ITER = 500
MODE_NEWTON_STEPS = 20
# Fixed-point iterations stop once no coordinate moves more than this many ulps (relative to
# 1 + |y|): below that a step is rounding noise and the Newton polish takes over.
MODE_TOL_ULPS = 16.0

# Standard deviations below the smallest and above the largest component mean that bracket
# every quantile in [Phi(-10), 1 - Phi(-10)] ~ [7.6e-24, 1 - 7.6e-24]; more extreme
# quantiles widen the bracket (see ``mixture_icdf``).
ICDF_BRACKET_STDS = 10.0


# ---------------------------------------------------------------------------------------
# Mode
# ---------------------------------------------------------------------------------------


def find_mode(logits: Tensor, components: Components) -> Tensor:
    """Highest-density point reached by a local search from every component mean.

    Fixed-point (EM / mean-shift) iterations
    ``y <- (sum_k r_k Sigma_k^{-1})^{-1} sum_k r_k Sigma_k^{-1} mu_k`` (``r`` the
    responsibilities at ``y``; each step increases the density) run to convergence, then
    Newton steps with a density-increase check; the start whose end point has the highest
    density wins.

    Args:
        logits: (*B, K) normalized log-weights.
        components: the mixture's components.

    Returns:
        (*B, D), without a graph.
    """
    loc = components.loc  # (*B, K, D)
    x = loc.movedim(-2, 0).clone()  # starts: (K, *B, D)
    prec_mu = components.precision_times(loc)  # Sigma_k^{-1} mu_k: (*B, K, D)
    tol = MODE_TOL_ULPS * torch.finfo(loc.dtype).eps
    for _ in range(MODE_MAX_ITER):
        r = torch.softmax(logits + components.component_log_prob(x), -1)  # (K, *B, K)
        A = components.mix_precisions(r)  # sum_k r_k Sigma_k^{-1}
        x_new = components.solve_mixed(A, (r.unsqueeze(-1) * prec_mu).sum(-2))  # (K, *B, D)
        step = (x_new - x).abs().amax(-1)
        x = x_new
        if bool((step <= tol * (1 + x.abs().amax(-1))).all()):
            break
    x, lp = _newton_polish(logits, components, x)
    best = lp.argmax(0)  # (*B,)
    return x.gather(0, best[None, ..., None].expand((1, *x.shape[1:]))).squeeze(0)


def _newton_polish(logits: Tensor, components: Components, x: Tensor) -> tuple[Tensor, Tensor]:
    """Newton steps on log p, each kept only where it increases the density.

    Returns the points and their log-densities.
    """

    def log_prob(y: Tensor) -> Tensor:
        return torch.logsumexp(logits + components.component_log_prob(y), -1)

    lp = log_prob(x)
    for _ in range(MODE_NEWTON_STEPS):
        r = torch.softmax(logits + components.component_log_prob(x), -1)  # (K, *B, K)
        gk = components.precision_times(components.loc - x.unsqueeze(-2))  # (K, *B, K, D)
        g = (r.unsqueeze(-1) * gk).sum(-2)  # (K, *B, D) gradient of log p
        H = (r[..., None, None] * (gk.unsqueeze(-1) * gk.unsqueeze(-2))).sum(-3)
        H = H - components.mixed_matrix(components.mix_precisions(r))
        H = H - g.unsqueeze(-1) * g.unsqueeze(-2)  # Hessian of log p
        chol, info = torch.linalg.cholesky_ex(-H)
        ok = info == 0  # Newton only where log p is locally concave
        step = torch.cholesky_solve(g.unsqueeze(-1), chol).squeeze(-1)
        step = torch.where(ok.unsqueeze(-1) & torch.isfinite(step), step, 0.0)
        x_new = x + step
        lp_new = log_prob(x_new)
        better = lp_new >= lp
        x = torch.where(better.unsqueeze(-1), x_new, x)
        lp = torch.where(better, lp_new, lp)
        if bool((step.abs() == 0).all()):
            break
    return x, lp


# ---------------------------------------------------------------------------------------
# 1-D mixtures: cdf, pdf and quantiles
# ---------------------------------------------------------------------------------------


def _log_cdf(log_w: Tensor, z: Tensor) -> Tensor:
    # log_ndtr keeps the relative accuracy of the far lower tail (no underflow to 0).
    return torch.logsumexp(log_w + torch.special.log_ndtr(z), -1)


def mixture_cdf(logits: Tensor, loc: Tensor, scale: Tensor, y: Tensor) -> Tensor:
    """``F(y) = sum_k pi_k Phi((y - mu_k) / s_k)``, computed in log space.

    Args:
        logits: (*B, K) log-weights, normalized or not.
        loc: (*B, K) component means.
        scale: (*B, K) component standard deviations.
        y: (*B,) points. All four broadcast together.

    Returns:
        (*B,) values in ``[0, 1]``.
    """
    z = (y.unsqueeze(-1) - loc) / scale  # (*B, K)
    cdf = _log_cdf(torch.log_softmax(logits, -1), z).exp()
    # Rounding in logsumexp can land a hair above 1 in the upper tail.
    return cdf.clamp(max=1.0)


def _cdf_and_pdf(log_w: Tensor, loc: Tensor, scale: Tensor, x: Tensor) -> tuple[Tensor, Tensor]:
    """x (*S, *B) -> (cdf, pdf), both (*S, *B), of the mixture (log_w, loc, scale) (*B, K)."""
    z = (x.unsqueeze(-1) - loc) / scale  # (*S, *B, K)
    log_pdf = torch.logsumexp(log_w - 0.5 * z.square() - scale.log() - 0.5 * LOG_2PI, -1)
    return _log_cdf(log_w, z).exp(), log_pdf.exp()


def mixture_icdf(logits: Tensor, loc: Tensor, scale: Tensor, q: Tensor) -> Tensor:
    """Quantiles ``F^{-1}(q)`` by bracketed Newton-bisection, in float64 whatever the dtype.

    The bracket is ``[min_k(mu_k - c sigma_k), max_k(mu_k + c sigma_k)]`` with
    ``c = max(10, sqrt(-2 log min(q, 1 - q)))``, which contains every quantile because
    ``Phi(-c) < exp(-c^2 / 2)``. The search runs in float64: a float32 cdf is only good to
    a few 1e-8 in probability, so its root is only good to that over the density. The
    result is rounded to the dtype of ``q`` once, at the end.

    Args:
        logits: (*B, K) log-weights, normalized or not.
        loc: (*B, K) component means.
        scale: (*B, K) component standard deviations.
        q: (*S, *B) probabilities in ``[0, 1]``; 0 and 1 give ``-inf`` and ``inf``.

    Returns:
        (*S, *B) quantiles in the dtype of ``q``, without a graph.
    """
    work = torch.float64
    with torch.no_grad():
        log_w, mu, sd = torch.broadcast_tensors(logits.to(work), loc.to(work), scale.to(work))
        log_w = log_softmax(log_w)
        p = q.to(work)
        shape = torch.broadcast_shapes(p.shape, log_w.shape[:-1])
        tail = torch.minimum(p, 1 - p).clamp_min(torch.finfo(work).tiny)
        c = torch.sqrt(-2.0 * tail.log()).clamp_min(ICDF_BRACKET_STDS)  # (*S, *B)
        lo = (mu - sd * c.unsqueeze(-1)).amin(-1).expand(shape)  # (*S, *B)
        hi = (mu + sd * c.unsqueeze(-1)).amax(-1).expand(shape)
        # Element i of the flattened (*S, *B) uses the mixture of batch row i % rows when
        # the samples lead (the usual case); otherwise the parameters are expanded.
        K, batch = log_w.shape[-1], log_w.shape[:-1]
        if tuple(shape[len(shape) - len(batch) :]) != tuple(batch):
            log_w, mu, sd = (t.expand(*shape, K) for t in (log_w, mu, sd))
        rows = max(1, math.prod(log_w.shape[:-1]))
        lw, m, s = (t.reshape(-1, K) for t in (log_w, mu, sd))

        def cdf_pdf(v: Tensor, index: Tensor) -> tuple[Tensor, Tensor]:
            r = index % rows
            return _cdf_and_pdf(lw[r], m[r], s[r], v)

        p = p.expand(shape)
        x = newton_bisect(cdf_pdf, p, lo, hi)
        x = torch.where(p == 0, -math.inf, torch.where(p == 1, math.inf, x))
    return x.to(q.dtype)


def newton_bisect(
    func: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]],
    target: Tensor,
    lo: Tensor,
    hi: Tensor,
    *,
    max_iter: int = 200,
    xtol: float | None = None,
) -> Tensor:
    """Solve ``f(x) = target`` elementwise for increasing ``f`` by safeguarded Newton.

    Each iteration evaluates ``f`` at the current point and shrinks the bracket
    ``[lo, hi]`` to the side that holds the root; then it takes a Newton step, or bisects
    when that step leaves the bracket (or the derivative vanishes). Convergence is
    guaranteed for any continuous increasing ``f`` with ``f(lo) <= target <= f(hi)``. An
    element stops, and keeps its point, once ``f`` hits the target exactly, its Newton
    step or its bracket is below ``xtol * (1 + |x|)``. Only the elements still searching
    are evaluated: a few slow ones (bisecting in a flat stretch) do not make every
    element pay for their iterations.

    Args:
        func: maps ``(x, index)`` to ``(f(x), f'(x))``, all 1-D: ``x`` the points of the
            elements still searching and ``index`` their positions in the flattened
            ``target``.
        target: values to reach, same shape as ``lo`` and ``hi``.
        lo: lower end of the bracket.
        hi: upper end of the bracket.
        max_iter: iteration cap.
        xtol: relative step and bracket tolerance. Defaults to ``4 * eps`` of the dtype.

    Returns:
        The roots, shape of ``target``.

    Example:
        >>> cube = lambda x, index: (x**3, 3 * x**2)
        >>> r = newton_bisect(cube, torch.tensor([8.0, -1.0]), torch.full((2,), -5.0),
        ...                   torch.full((2,), 5.0))
        >>> torch.allclose(r, torch.tensor([2.0, -1.0]))
        True
    """
    if xtol is None:
        # A few ulps: bisection cannot do better, and Newton has converged long before.
        xtol = 4.0 * torch.finfo(target.dtype).eps
    shape = target.shape
    t = target.reshape(-1)
    lo, hi = lo.reshape(-1).clone(), hi.reshape(-1).clone()
    x = 0.5 * (lo + hi)
    active = torch.arange(t.numel(), device=t.device)
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        xa, ta = x[active], t[active]
        f, df = func(xa, active)
        hit = f == ta
        below = f < ta
        la = torch.where(below, xa, lo[active])
        ha = torch.where(below | hit, hi[active], xa)
        newton = xa - (f - ta) / df
        ok = torch.isfinite(newton) & (newton > la) & (newton < ha)
        x_new = torch.where(ok, newton, 0.5 * (la + ha))
        tol = xtol * (1.0 + x_new.abs())
        converged = hit | ((x_new - xa).abs() <= tol) | ((ha - la) <= tol)
        # An exact hit is the root itself: keep x, not the bracket midpoint that a rejected
        # Newton step (x_new == x == hi) would fall back to.
        x[active] = torch.where(hit, xa, x_new)
        lo[active], hi[active] = la, ha
        active = active[~converged]
    return x.reshape(shape)


# ---------------------------------------------------------------------------------------
# Intervals: censored, binned and missing coordinates
# ---------------------------------------------------------------------------------------


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate over the whole range (Maechler, 2012).

    ``log(-expm1(x))`` near 0, where ``1 - exp(x)`` cancels; ``log1p(-exp(x))`` below
    ``-log 2``, where ``exp(x)`` is small. ``x = 0`` gives ``-inf``, ``x = -inf`` gives 0.

    Example:
        >>> log1mexp(torch.tensor([-1e-20, -50.0], dtype=torch.float64))
        tensor([-4.6052e+01, -1.9287e-22], dtype=torch.float64)
    """
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_ndtr_diff(a: Tensor, b: Tensor) -> Tensor:
    """``log(Phi(b) - Phi(a))`` elementwise for finite ``a < b``, in log space.

    An interval above the median is reflected, ``Phi(b) - Phi(a) = Phi(-a) - Phi(-b)``, so
    that both ends lie where ``log_ndtr`` keeps its relative precision (the lower tail);
    then ``log Phi(b) + log1mexp(log Phi(a) - log Phi(b))``. The result keeps its relative
    accuracy 40 standard deviations out, where ``Phi(b) - Phi(a)`` itself underflows; the
    cancellation left is that of the difference of the two logarithms, a relative error of
    about ``eps * |log Phi(b)| / (log Phi(b) - log Phi(a))`` for very narrow intervals.

    Example:
        >>> lp = log_ndtr_diff(torch.tensor([40.0], dtype=torch.float64),
        ...                    torch.tensor([41.0], dtype=torch.float64))
        >>> round(lp.item(), 4)  # Phi(41) - Phi(40) is below 1e-300
        -804.6084
    """
    flip = (a + b) > 0
    lo = torch.where(flip, -b, a)
    hi = torch.where(flip, -a, b)
    log_hi = torch.special.log_ndtr(hi)
    return log_hi + log1mexp(torch.special.log_ndtr(lo) - log_hi)


def interval_component_log_prob(loc: Tensor, stddev: Tensor, low: Tensor, high: Tensor) -> Tensor:
    """Per-component log-likelihood of points observed per coordinate as intervals.

    Each coordinate ``d`` of a point is one of: observed exactly (``low == high``: the
    density ``log N(y_d | mu_kd, s_kd)``), an interval (``low < high``: the probability
    ``log(Phi(b) - Phi(a))``; ``low = -inf`` left-censored, ``high = inf`` right-censored) or
    missing (``low = -inf``, ``high = inf``: probability 1, the coordinate is marginalized).
    The coordinates of a component are independent (diagonal covariance, or ``D == 1``), so
    the terms add up.

    Every branch is evaluated on finite, ordered stand-in ends, and the branch a coordinate
    does not take is masked afterwards: an infinite end never enters the graph, so the
    gradients with respect to ``loc`` and ``stddev`` stay finite.

    Args:
        loc: (*B, K, D) component means.
        stddev: (*B, K, D) component standard deviations (elementwise, positive).
        low: (*S, *B, D) lower ends, ``-inf`` allowed.
        high: (*S, *B, D) upper ends, ``inf`` allowed; ``low <= high`` (not checked).

    Returns:
        (*S, *B, K).
    """
    low, high = low.unsqueeze(-2), high.unsqueeze(-2)  # (*S, *B, 1, D)
    lo_fin, hi_fin = torch.isfinite(low), torch.isfinite(high)
    point = low == high  # finite and equal: an exact observation
    # Stand-ins (data only, no graph): finite, with lo_s < hi_s, for every branch.
    hi_s = torch.where(hi_fin, high, torch.where(lo_fin, low + 1.0, 1.0))
    lo_s = torch.where(lo_fin & ~point, low, hi_s - 1.0)
    a = (lo_s - loc) / stddev  # (*S, *B, K, D)
    b = (hi_s - loc) / stddev
    z = (torch.where(point, low, 0.0) - loc) / stddev
    density = -0.5 * z.square() - stddev.log() - 0.5 * LOG_2PI
    interval = torch.where(
        lo_fin,
        torch.where(hi_fin, log_ndtr_diff(a, b), torch.special.log_ndtr(-a)),
        torch.where(hi_fin, torch.special.log_ndtr(b), torch.zeros_like(a)),
    )
    return torch.where(point, density, interval).sum(-1)
