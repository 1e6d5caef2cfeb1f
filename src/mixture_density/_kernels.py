"""Fused mixture log-densities, the training hot path of ``GaussianMixture.log_prob``.

The mixture log-densities of diagonal ``scale`` and ``precision_tril`` components (dense and
packed) are :class:`torch.autograd.Function` objects: the forward pass keeps only the tensors
the analytic backward needs (standardized residuals and responsibilities), which removes most
of the temporaries an op-by-op autograd graph holds. Their backward passes fall back to the
plain composite expressions of :mod:`mixture_density._math` when a graph of the gradient
itself is requested (``create_graph=True``), so higher derivatives stay exact.

Shapes use ``*S`` for sample dimensions, ``*B`` for batch dimensions, ``K`` for mixture
components and ``D`` for the event dimension.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ._math import (
    LOG_2PI,
    diag_component_log_prob,
    flatten_sample,
    half_log_det_diag,
    log_softmax,
    mixture_log_prob,
    precision_component_log_prob,
    row_times,
    tril_from_packed,
)

__all__ = [
    "FUSED_MIN_NUMEL",
    "diag_mixture_log_prob",
    "packed_precision_mixture_log_prob",
    "precision_mixture_log_prob",
]

# Below this many numbers (diagonal: residuals, samples x batch x K x D; packed precision
# factors: dense factors, batch x K x D x D) the composite expressions are faster than the
# fused autograd.Functions on CPU (their Python overhead outweighs what they save; the fused
# kernels win from a few thousand rows).
FUSED_MIN_NUMEL = 2**15

# ---------------------------------------------------------------------------------------
# Fused mixture log-densities (hot path)
# ---------------------------------------------------------------------------------------


def _reduce_to(grad: Tensor, like: Tensor) -> Tensor:
    """Sum a broadcast gradient back to the shape of the input it belongs to."""
    return grad if grad.shape == like.shape else grad.sum_to_size(like.shape)


class _DiagMixtureLogProb(torch.autograd.Function):
    @staticmethod
    def forward(y: Tensor, logits: Tensor, loc: Tensor, scale: Tensor) -> Any:
        D = y.shape[-1]
        log_w = log_softmax(logits)  # (*B, K)
        z = y.unsqueeze(-2) - loc  # (*S, *B, K, D)
        z.div_(scale)  # in place: the residual itself is never needed again
        lp = z.square().sum(-1)  # (*S, *B, K)
        lp.mul_(-0.5).add_(log_w - half_log_det_diag(scale, D) - 0.5 * D * LOG_2PI)
        out = torch.logsumexp(lp, -1)  # (*S, *B)
        resp = lp.sub_(out.unsqueeze(-1)).exp_()  # responsibilities, (*S, *B, K)
        return out, z, resp, log_w

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, ...], output: Any) -> None:
        y, logits, loc, scale = inputs
        _, z, resp, log_w = output
        ctx.save_for_backward(y, logits, loc, scale, z, resp, log_w)
        ctx.mark_non_differentiable(z, resp, log_w)
        # Only the first output gets a gradient; without this autograd would allocate and
        # zero-fill a gradient for each of the others (z is as large as the whole step).
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None, *_: Any) -> Any:
        y, logits, loc, scale, z, resp, log_w = ctx.saved_tensors
        if grad is None:  # no gradient reached the density (materialize_grads off)
            return (None,) * len(ctx.needs_input_grad)
        if torch.is_grad_enabled():
            # create_graph=True: differentiate the composite expression instead, so that the
            # gradient is itself differentiable with respect to every input.
            return _composite_backward(
                lambda *a: mixture_log_prob(a[1], diag_component_log_prob(a[0], a[2], a[3])),
                (y, logits, loc, scale),
                grad,
                ctx.needs_input_grad,
            )
        need_y, need_logits, need_loc, need_scale = ctx.needs_input_grad
        g_resp = resp * grad.unsqueeze(-1)  # (*S, *B, K)
        grads: list[Tensor | None] = [None, None, None, None]
        if need_logits:
            grads[1] = _reduce_to(g_resp - grad.unsqueeze(-1) * log_w.exp(), logits)
        if need_y or need_loc:
            w = z / scale * g_resp.unsqueeze(-1)  # d lp / d loc, (*S, *B, K, D)
            if need_loc:
                grads[2] = _reduce_to(w, loc)
            if need_y:
                grads[0] = _reduce_to(-w.sum(-2), y)
        if need_scale:
            # d log N / d sigma = (z^2 - 1) / sigma, per element of the (broadcast) scale.
            g_s = (z.square().sub_(1.0)).mul_(g_resp.unsqueeze(-1)).div_(scale)
            grads[3] = _reduce_to(g_s, scale)
        return tuple(grads)


class _PrecisionMixtureLogProb(torch.autograd.Function):
    @staticmethod
    def forward(y: Tensor, logits: Tensor, loc: Tensor, P: Tensor) -> Any:
        D = y.shape[-1]
        n_batch = loc.dim() - 2
        log_w = log_softmax(logits)  # (*B, K)
        d, sample_shape = flatten_sample(y.unsqueeze(-2) - loc, n_batch)  # (*B, K, N, D)
        u = row_times(d, P)  # (P^T d)^T, (*B, K, N, D)
        # The strided diagonal is gathered once (contiguous) and reused by the backward.
        diag_p = P.diagonal(dim1=-2, dim2=-1).contiguous()  # (*B, K, D)
        half_log_det = diag_p.log().sum(-1)  # (*B, K)
        lp = u.square().sum(-1)  # (*B, K, N)
        lp.mul_(-0.5).add_((log_w + half_log_det - 0.5 * D * LOG_2PI).unsqueeze(-1))
        out = torch.logsumexp(lp, -2)  # (*B, N)
        resp = lp.sub_(out.unsqueeze(-2)).exp_()  # (*B, K, N)
        out = out.movedim(-1, 0).reshape(sample_shape + out.shape[:-1])  # (*S, *B)
        return out, d, u, resp, log_w, diag_p

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, ...], output: Any) -> None:
        y, logits, loc, P = inputs
        _, d, u, resp, log_w, diag_p = output
        ctx.save_for_backward(y, logits, loc, P, d, u, resp, log_w, diag_p)
        ctx.mark_non_differentiable(d, u, resp, log_w, diag_p)
        ctx.set_materialize_grads(False)  # see _DiagMixtureLogProb

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None, *_: Any) -> Any:
        y, logits, loc, P, d, u, resp, log_w, diag_p = ctx.saved_tensors
        if grad is None:  # no gradient reached the density (materialize_grads off)
            return (None,) * len(ctx.needs_input_grad)
        if torch.is_grad_enabled():
            return _composite_backward(
                lambda *a: mixture_log_prob(a[1], precision_component_log_prob(a[0], a[2], a[3])),
                (y, logits, loc, P),
                grad,
                ctx.needs_input_grad,
            )
        need_y, need_logits, need_loc, need_P = ctx.needs_input_grad
        batch_shape = resp.shape[:-2]
        sample_shape = grad.shape[: grad.dim() - len(batch_shape)]
        g = grad.expand(sample_shape + batch_shape).reshape((-1, *batch_shape))
        g = g.movedim(0, -1).unsqueeze(-2)  # (*B, 1, N)
        g_resp = resp * g  # (*B, K, N)
        grads: list[Tensor | None] = [None, None, None, None]
        if need_logits:
            grads[1] = _reduce_to(g_resp.sum(-1) - g.sum(-1) * log_w.exp(), logits)
        if need_y or need_loc:
            # d lp / d loc = P P^T (y - mu) = P u
            w = row_times(u, P.transpose(-1, -2)).mul_(g_resp.unsqueeze(-1))  # (*B,K,N,D)
            if need_loc:
                # Summing over a length-1 axis is a full reduction kernel; a view is free.
                w_loc = w.squeeze(-2) if w.shape[-2] == 1 else w.sum(-2)
                grads[2] = _reduce_to(w_loc, loc)
            if need_y:
                gy = w.sum(-3).neg_().movedim(-2, 0)  # (N, *B, D)
                gy = gy.reshape(sample_shape + gy.shape[1:])
                grads[0] = _reduce_to(gy, y)
        if need_P:
            # d lp / d P = -(y - mu) u^T + diag(1 / diag P)
            dg = d * g_resp.unsqueeze(-1).neg()  # (*B, K, N, D)
            if dg.shape[-2] == 1:
                # One sample: an outer product. Broadcasting beats a batch of rank-1 GEMMs.
                gP = dg.transpose(-1, -2) * u  # (*B, K, D, D)
            else:
                gP = torch.matmul(dg.transpose(-1, -2), u)  # sums over the N samples
            diag = gP.diagonal(dim1=-2, dim2=-1)
            g_tot = g_resp.squeeze(-1) if g_resp.shape[-1] == 1 else g_resp.sum(-1)
            diag.add_(g_tot.unsqueeze(-1) / diag_p)
            grads[3] = _reduce_to(gP, P)
        return tuple(grads)


def _composite_backward(
    fn: Callable[..., Tensor],
    inputs: tuple[Tensor, ...],
    grad: Tensor,
    needs: tuple[bool, ...],
) -> tuple[Tensor | None, ...]:
    """Vector-Jacobian product of ``fn`` at ``inputs`` with a differentiable graph."""
    # The saved inputs are the caller's tensors with their history, so the returned
    # gradients stay connected to it (unlike a recomputation on detached copies).
    with torch.enable_grad():
        out = fn(*inputs)
        wrt = [x for x, n in zip(inputs, needs) if n]
        vjps = iter(torch.autograd.grad(out, wrt, grad, create_graph=True))
    return tuple(next(vjps) if n else None for n in needs)


def diag_mixture_log_prob(y: Tensor, logits: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """Mixture of diagonal Gaussians: fused ``log sum_k pi_k N(y | loc_k, diag(scale_k^2))``.

    Args:
        y: (*S, *B, D) points.
        logits: (*B, K) unnormalized log-weights.
        loc: (*B, K, D) means.
        scale: standard deviations broadcastable to (*B, K, D).

    Returns:
        (*S, *B) log-densities, equal to
        ``mixture_log_prob(logits, diag_component_log_prob(y, loc, scale))``.

    Example:
        >>> y, logits = torch.zeros(4, 1), torch.zeros(4, 3)
        >>> lp = diag_mixture_log_prob(y, logits, torch.zeros(4, 3, 1), torch.ones(4, 3, 1))
        >>> torch.allclose(lp, torch.full((4,), -0.5 * LOG_2PI))
        True
    """
    return _DiagMixtureLogProb.apply(y, logits, loc, scale)[0]


def precision_mixture_log_prob(
    y: Tensor, logits: Tensor, loc: Tensor, precision_tril: Tensor
) -> Tensor:
    """Mixture of full-covariance Gaussians parameterized by precision Cholesky factors.

    Args:
        y: (*S, *B, D) points.
        logits: (*B, K) unnormalized log-weights.
        loc: (*B, K, D) means.
        precision_tril: (*B, K, D, D) lower-triangular ``P_k``, ``Sigma_k^{-1} = P_k P_k^T``.

    Returns:
        (*S, *B) log-densities.

    Example:
        >>> P = torch.eye(2).expand(4, 3, 2, 2)
        >>> lp = precision_mixture_log_prob(torch.zeros(4, 2), torch.zeros(4, 3),
        ...                                 torch.zeros(4, 3, 2), P)
        >>> torch.allclose(lp, torch.full((4,), -LOG_2PI))
        True
    """
    return _PrecisionMixtureLogProb.apply(y, logits, loc, precision_tril)[0]


# ---------------------------------------------------------------------------------------
# Packed precision factors (the full-covariance head's hot path)
# ---------------------------------------------------------------------------------------


def _segments(D: int) -> list[tuple[int, int, int]]:
    """``(i, start, stop)``: row ``i`` of a strictly lower triangle packed row by row."""
    out, start = [], 0
    for i in range(1, D):
        out.append((i, start, start + i))
        start += i
    return out


def _batch_last(t: Tensor, n_batch: int) -> Tensor:
    """(*B, K, E) -> (K, E, N) with ``N = prod(B)`` innermost, contiguous.

    A no-op view when ``t`` already has that memory layout (the full-covariance head computes
    its outputs transposed for this reason); a copy otherwise.
    """
    flat = t.reshape((math.prod(t.shape[:n_batch]), *t.shape[n_batch:]))  # (N, K, E)
    out = flat.permute(1, 2, 0)  # (K, E, N)
    return out if out.stride(-1) == 1 else out.contiguous()


def _batch_first(t: Tensor, batch_shape: torch.Size) -> Tensor:
    """Inverse of :func:`_batch_last`: (K, E, N) -> (*B, K, E), a view."""
    return t.permute(2, 0, 1).reshape((*batch_shape, *t.shape[:2]))


class _PackedPrecisionMixtureLogProb(torch.autograd.Function):
    """Full-covariance mixture log-density straight from the packed precision factor.

    With ``P`` lower triangular, ``z = P^T d`` is ``z_j = P_jj d_j + sum_{i > j} P_ij d_i``:
    row ``i`` of the strict lower triangle adds ``d_i`` times its ``i`` entries to
    ``z[:i]``, one in-place ``addcmul`` per row, and no ``D x D`` matrix (nor its gradient) is
    ever materialized: at ``D = 32`` that dense tensor alone is larger than the rest of the
    step's memory traffic. Every tensor is laid out with the flattened batch innermost,
    (K, E, N), so that each of these row operations is a long contiguous vector operation
    (with the batch outermost, row ``i`` is ``i`` numbers per matrix, at a stride, and the
    same arithmetic runs far slower). Inputs carry no sample dims.
    """

    @staticmethod
    def forward(y: Tensor, logits: Tensor, loc: Tensor, diag_p: Tensor, off_p: Tensor) -> Any:
        batch_shape = logits.shape[:-1]
        nb = len(batch_shape)
        D = loc.shape[-1]
        log_w = log_softmax(logits)  # (*B, K)
        y_t = _batch_last(y.expand((*batch_shape, D)).unsqueeze(-2), nb)  # (1, D, N)
        d = y_t - _batch_last(loc, nb)  # (K, D, N)
        diag_t = _batch_last(diag_p, nb)  # (K, D, N)
        off_t = _batch_last(off_p, nb)  # (K, D (D - 1) / 2, N)
        z = d * diag_t  # (K, D, N)
        for i, start, stop in _segments(D):
            z[:, :i].addcmul_(off_t[:, start:stop], d[:, i : i + 1])
        half_log_det = diag_t.log().sum(1)  # (K, N)
        lp = z.square().sum(1).mul_(-0.5).add_(half_log_det)  # (K, N)
        lp = _batch_first(lp.unsqueeze(1), batch_shape).squeeze(-1)  # (*B, K)
        lp.add_(log_w - 0.5 * D * LOG_2PI)
        out = torch.logsumexp(lp, -1)  # (*B)
        resp = lp.sub_(out.unsqueeze(-1)).exp_()  # (*B, K)
        return out, d, z, diag_t, off_t, resp, log_w

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Tensor, ...], output: Any) -> None:
        _, d, z, diag_t, off_t, resp, log_w = output
        ctx.save_for_backward(*inputs, d, z, diag_t, off_t, resp, log_w)
        ctx.mark_non_differentiable(d, z, diag_t, off_t, resp, log_w)
        ctx.set_materialize_grads(False)  # see _DiagMixtureLogProb

    @staticmethod
    def backward(ctx: Any, grad: Tensor | None, *_: Any) -> Any:
        y, logits, loc, diag_p, off_p, d, z, diag_t, off_t, resp, log_w = ctx.saved_tensors
        if grad is None:  # no gradient reached the density (materialize_grads off)
            return (None,) * len(ctx.needs_input_grad)
        if torch.is_grad_enabled():
            return _composite_backward(
                lambda *a: mixture_log_prob(
                    a[1], precision_component_log_prob(a[0], a[2], tril_from_packed(a[3], a[4]))
                ),
                (y, logits, loc, diag_p, off_p),
                grad,
                ctx.needs_input_grad,
            )
        need_y, need_logits, need_loc, need_diag, need_off = ctx.needs_input_grad
        batch_shape = logits.shape[:-1]
        nb = len(batch_shape)
        D = d.shape[1]
        g_resp = resp * grad.unsqueeze(-1)  # (*B, K)
        grads: list[Tensor | None] = [None] * 5
        if need_logits:
            grads[1] = _reduce_to(g_resp - grad.unsqueeze(-1) * log_w.exp(), logits)
        g_resp_t = _batch_last(g_resp.unsqueeze(-1), nb)  # (K, 1, N)
        # Not in place: z must survive for a second backward through a retained graph.
        dz = z * g_resp_t.neg()  # d out / d z = -r z, (K, D, N)
        if need_diag:
            g_diag = (dz * d).addcdiv_(g_resp_t, diag_t)  # + r / P_jj from the log det
            grads[3] = _reduce_to(_batch_first(g_diag, batch_shape), diag_p)
        if need_off:
            # d out / d P_ij = d_i dz_j for i > j, written row by row into the packed layout.
            g_off = torch.empty_like(off_t)  # (K, D (D - 1) / 2, N)
            for i, start, stop in _segments(D):
                torch.mul(dz[:, :i], d[:, i : i + 1], out=g_off[:, start:stop])
            grads[4] = _reduce_to(_batch_first(g_off, batch_shape), off_p)
        if need_y or need_loc:
            g_d = dz * diag_t  # P dz, (K, D, N)
            for i, start, stop in _segments(D):
                g_d[:, i] += (off_t[:, start:stop] * dz[:, :i]).sum(1)
            if need_loc:
                # Negated in the (K, D, N) layout: elementwise work on the permuted
                # (*B, K, D) view is several times slower.
                grads[2] = _reduce_to(_batch_first(g_d.neg(), batch_shape), loc)
            if need_y:
                g_y = g_d.sum(0).T  # (N, D)
                grads[0] = _reduce_to(g_y.reshape((*batch_shape, D)), y)
        return tuple(grads)


def packed_precision_mixture_log_prob(
    y: Tensor, logits: Tensor, loc: Tensor, diagonal: Tensor, off_diagonal: Tensor
) -> Tensor:
    """Full-covariance mixture log-density from packed precision Cholesky factors.

    Same value as ``precision_mixture_log_prob(y, logits, loc, tril_from_packed(diagonal,
    off_diagonal))`` without building the ``D x D`` matrices.

    Args:
        y: (*B, D) points (no sample dims; broadcastable against the batch).
        logits: (*B, K) unnormalized log-weights.
        loc: (*B, K, D) means.
        diagonal: (*B, K, D) positive diagonal of each ``P_k``.
        off_diagonal: (*B, K, D * (D - 1) / 2) strictly lower triangle of each ``P_k``, row
            by row.

    Returns:
        (*B) log-densities.

    Example:
        >>> lp = packed_precision_mixture_log_prob(torch.zeros(4, 2), torch.zeros(4, 3),
        ...     torch.zeros(4, 3, 2), torch.ones(4, 3, 2), torch.zeros(4, 3, 1))
        >>> torch.allclose(lp, torch.full((4,), -LOG_2PI))
        True
    """
    return _PackedPrecisionMixtureLogProb.apply(y, logits, loc, diagonal, off_diagonal)[0]
