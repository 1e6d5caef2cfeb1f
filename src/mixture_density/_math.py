"""Pure tensor functions behind :class:`~mixture_density.GaussianMixture`.

Nothing here holds state. Shapes use ``*S`` for sample dimensions, ``*B`` for batch
dimensions, ``K`` for mixture components and ``D`` for the event dimension.

The two mixture log-densities that sit on the training hot path (diagonal ``scale`` and
``precision_tril``) are fused :class:`torch.autograd.Function` objects: the forward pass
keeps only the tensors the analytic backward needs (standardized residuals and
responsibilities), which removes most of the temporaries an op-by-op autograd graph holds.
Their backward passes fall back to the plain composite expressions when a graph of the
gradient itself is requested (``create_graph=True``), so higher derivatives stay exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "LOG_2PI",
    "diag_component_log_prob",
    "diag_mixture_log_prob",
    "log_softmax",
    "mixture_log_prob",
    "newton_bisect",
    "packed_precision_mixture_log_prob",
    "precision_component_log_prob",
    "precision_mixture_log_prob",
    "tril_component_log_prob",
    "tril_from_packed",
    "tril_positions",
]

LOG_2PI = math.log(2.0 * math.pi)


def _flatten_sample(d: Tensor, n_batch: int) -> tuple[Tensor, torch.Size]:
    """Move leading sample dims of ``d`` (*S, *B, K, D) into one axis: (*B, K, N, D).

    Batched matrix products then reuse each component's matrix for every sample instead of
    broadcasting (copying) it ``N`` times.
    """
    sample_shape = d.shape[: d.dim() - n_batch - 2]
    flat = d.reshape((-1, *d.shape[len(sample_shape) :]))  # (N, *B, K, D)
    return flat.movedim(0, -2), sample_shape  # (*B, K, N, D)


# ---------------------------------------------------------------------------------------
# Component log-densities (composite, differentiable to any order)
# ---------------------------------------------------------------------------------------


def diag_component_log_prob(y: Tensor, loc: Tensor, scale: Tensor) -> Tensor:
    """Log-density of each diagonal Gaussian component.

    Args:
        y: (*S, *B, D) points.
        loc: (*B, K, D) component means.
        scale: standard deviations broadcastable to (*B, K, D) (for example (*B, K, 1)
            for isotropic components or a scalar for a fixed noise level).

    Returns:
        (*S, *B, K) ``log N(y | loc_k, diag(scale_k^2))`` including ``-(D/2) log 2 pi``.

    Example:
        >>> lp = diag_component_log_prob(torch.zeros(1), torch.zeros(2, 1), torch.ones(2, 1))
        >>> torch.allclose(lp, torch.full((2,), -0.5 * LOG_2PI))
        True
    """
    D = y.shape[-1]
    z = (y.unsqueeze(-2) - loc) / scale  # (*S, *B, K, D)
    return -0.5 * z.square().sum(-1) - _half_log_det_diag(scale, D) - 0.5 * D * LOG_2PI


def _half_log_det_diag(scale: Tensor, D: int) -> Tensor:
    """``sum_d log scale_d`` over the event dim, for scale of shape (..., 1) or (..., D)."""
    log_scale = scale.log()
    if scale.dim() == 0:
        return log_scale * D
    if scale.shape[-1] == 1:
        return log_scale.squeeze(-1) * D  # isotropic: one log per component, not D
    return log_scale.sum(-1)


def tril_component_log_prob(y: Tensor, loc: Tensor, scale_tril: Tensor) -> Tensor:
    """Log-density of each component given the Cholesky factor of its covariance.

    Args:
        y: (*S, *B, D) points.
        loc: (*B, K, D) component means.
        scale_tril: (*B, K, D, D) lower-triangular ``L_k`` with ``Sigma_k = L_k L_k^T``.

    Returns:
        (*S, *B, K) log-densities; the Mahalanobis term is one triangular solve.
    """
    D = y.shape[-1]
    n_batch = loc.dim() - 2
    d = y.unsqueeze(-2) - loc  # (*S, *B, K, D)
    d, sample_shape = _flatten_sample(d, n_batch)  # (*B, K, N, D)
    L = scale_tril.expand((*d.shape[:-2], D, D))
    w = torch.linalg.solve_triangular(L, d.transpose(-1, -2), upper=False)  # (*B, K, D, N)
    maha = w.square().sum(-2)  # (*B, K, N)
    half_log_det = L.diagonal(dim1=-2, dim2=-1).contiguous().log().sum(-1)  # (*B, K)
    lp = -0.5 * maha - half_log_det.unsqueeze(-1) - 0.5 * D * LOG_2PI  # (*B, K, N)
    return _k_last(lp, sample_shape)


def _row_times(d: Tensor, M: Tensor) -> Tensor:
    """Row vectors times matrices, ``d @ M``: (*B, K, N, D) x (*B, K, D, D) -> (*B, K, N, D).

    For ``D == 1`` a product is cheaper than a batch of 1 x 1 matrix multiplications.
    """
    if M.shape[-1] == 1:
        return d * M.squeeze(-1).unsqueeze(-2)
    return torch.matmul(d, M)


def _k_last(lp: Tensor, sample_shape: torch.Size) -> Tensor:
    """(*B, K, N) -> (*S, *B, K)."""
    lp = lp.movedim(-1, 0)  # (N, *B, K)
    return lp.reshape(sample_shape + lp.shape[1:])


def precision_component_log_prob(y: Tensor, loc: Tensor, precision_tril: Tensor) -> Tensor:
    """Log-density of each component given a Cholesky factor of its precision.

    Args:
        y: (*S, *B, D) points.
        loc: (*B, K, D) component means.
        precision_tril: (*B, K, D, D) lower-triangular ``P_k`` with
            ``Sigma_k^{-1} = P_k P_k^T``.

    Returns:
        (*S, *B, K) log-densities: ``-||P_k^T (y - mu_k)||^2 / 2 + sum log diag P_k - ...``,
        a matrix-vector product and no solve.
    """
    D = y.shape[-1]
    n_batch = loc.dim() - 2
    d = y.unsqueeze(-2) - loc  # (*S, *B, K, D)
    d, sample_shape = _flatten_sample(d, n_batch)  # (*B, K, N, D)
    u = _row_times(d, precision_tril)  # rows of d P = (P^T d)^T: (*B, K, N, D)
    half_log_det = precision_tril.diagonal(dim1=-2, dim2=-1).contiguous().log().sum(-1)  # (*B, K)
    lp = -0.5 * u.square().sum(-1) + half_log_det.unsqueeze(-1) - 0.5 * D * LOG_2PI
    return _k_last(lp, sample_shape)


def log_softmax(logits: Tensor) -> Tensor:
    """``log_softmax`` over the last dim as ``x - logsumexp(x)``.

    Same values; several times faster than :func:`torch.log_softmax` on CPU for the short
    rows (``K`` of about 10) of a mixture.

    Example:
        >>> log_softmax(torch.zeros(4)).exp()
        tensor([0.2500, 0.2500, 0.2500, 0.2500])
    """
    return logits - torch.logsumexp(logits, -1, keepdim=True)


def mixture_log_prob(logits: Tensor, component_log_prob: Tensor) -> Tensor:
    """``log sum_k softmax(logits)_k exp(component_log_prob_k)`` over the last dim.

    Args:
        logits: (*B, K) unnormalized log-weights.
        component_log_prob: (*S, *B, K).

    Returns:
        (*S, *B).
    """
    return torch.logsumexp(log_softmax(logits) + component_log_prob, dim=-1)


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
        lp.mul_(-0.5).add_(log_w - _half_log_det_diag(scale, D) - 0.5 * D * LOG_2PI)
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
        d, sample_shape = _flatten_sample(y.unsqueeze(-2) - loc, n_batch)  # (*B, K, N, D)
        u = _row_times(d, P)  # (P^T d)^T, (*B, K, N, D)
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
            w = _row_times(u, P.transpose(-1, -2)).mul_(g_resp.unsqueeze(-1))  # (*B,K,N,D)
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


def tril_positions(dim: int, device: torch.device | None = None) -> Tensor:
    """Flat positions in a ``D x D`` matrix of the packed entries of a lower triangle.

    The packed layout puts the ``D`` diagonal entries first, then the strictly lower triangle
    row by row (``torch.tril_indices(D, D, -1)`` order).

    Args:
        dim: ``D``.
        device: where the index tensor lives.

    Returns:
        ``(D * (D + 1) / 2,)`` int64 positions ``row * D + col``.

    Example:
        >>> tril_positions(2).tolist()  # P_00, P_11, P_10
        [0, 3, 2]
    """
    rows, cols = torch.tril_indices(dim, dim, offset=-1, device=device)
    diagonal = torch.arange(dim, device=device) * (dim + 1)
    return torch.cat([diagonal, rows * dim + cols])


def tril_from_packed(diagonal: Tensor, off_diagonal: Tensor) -> Tensor:
    """Dense lower-triangular matrices from their diagonal and strictly lower entries.

    Args:
        diagonal: (*B, D) diagonal entries.
        off_diagonal: (*B, D * (D - 1) / 2) strictly lower triangle, row by row
            (``torch.tril_indices(D, D, -1)`` order). Broadcasts against ``diagonal``.

    Returns:
        (*B, D, D), zero above the diagonal; differentiable with respect to both inputs.

    Example:
        >>> tril_from_packed(torch.tensor([1.0, 2.0]), torch.tensor([3.0])).tolist()
        [[1.0, 0.0], [3.0, 2.0]]
    """
    D = diagonal.shape[-1]
    batch = torch.broadcast_shapes(diagonal.shape[:-1], off_diagonal.shape[:-1])
    packed = torch.cat(
        [diagonal.expand((*batch, D)), off_diagonal.expand((*batch, off_diagonal.shape[-1]))], -1
    )  # (*B, D (D + 1) / 2)
    # One index copy into zeros: writes each entry once (O(D^2) per matrix). A 0/1 embedding
    # matrix product does the same in O(D^4), most of the step at D = 32.
    flat = packed.new_zeros((*batch, D * D))
    flat = flat.index_copy(-1, tril_positions(D, packed.device), packed)
    return flat.unflatten(-1, (D, D))


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
    same arithmetic runs ~10x slower). Inputs carry no sample dims.
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


# ---------------------------------------------------------------------------------------
# Root finding
# ---------------------------------------------------------------------------------------


def newton_bisect(
    func: Callable[[Tensor], tuple[Tensor, Tensor]],
    target: Tensor,
    lo: Tensor,
    hi: Tensor,
    *,
    max_iter: int = 200,
    xtol: float | None = None,
) -> Tensor:
    """Solve ``f(x) = target`` elementwise for increasing ``f`` by safeguarded Newton.

    Each iteration takes a Newton step from the current point; when that step leaves the
    bracket ``[lo, hi]`` (or the derivative vanishes) it bisects instead, and the bracket
    shrinks every iteration, so convergence is guaranteed for any continuous increasing
    ``f`` with ``f(lo) <= target <= f(hi)``.

    Args:
        func: maps ``x`` to ``(f(x), f'(x))``, both of the shape of ``x``.
        target: values to reach, same shape as ``lo`` and ``hi``.
        lo: lower end of the bracket.
        hi: upper end of the bracket.
        max_iter: iteration cap.
        xtol: stop once every bracket or step is below ``xtol * (1 + |x|)``. Defaults to
            ``4 * eps`` of the dtype.

    Returns:
        The roots, shape of ``target``.

    Example:
        >>> cube = lambda x: (x**3, 3 * x**2)
        >>> r = newton_bisect(cube, torch.tensor([8.0, -1.0]), torch.full((2,), -5.0),
        ...                   torch.full((2,), 5.0))
        >>> torch.allclose(r, torch.tensor([2.0, -1.0]))
        True
    """
    if xtol is None:
        # A few ulps: bisection cannot do better, and Newton has converged long before.
        xtol = 4.0 * torch.finfo(target.dtype).eps
    lo, hi = lo.clone(), hi.clone()
    x = 0.5 * (lo + hi)
    for _ in range(max_iter):
        f, df = func(x)
        below = f < target
        lo = torch.where(below, x, lo)
        hi = torch.where(below, hi, x)
        step = (f - target) / df
        newton = x - step
        ok = torch.isfinite(newton) & (newton > lo) & (newton < hi)
        x_new = torch.where(ok, newton, 0.5 * (lo + hi))
        tol = xtol * (1.0 + x_new.abs())
        done = ((x_new - x).abs() <= tol) | ((hi - lo) <= tol) | (f == target)
        x = x_new
        if bool(done.all()):
            break
    return x
