"""Pure tensor functions behind :class:`~mixture_density.GaussianMixture`.

Nothing here holds state. Shapes use ``*S`` for sample dimensions, ``*B`` for batch
dimensions, ``K`` for mixture components and ``D`` for the event dimension.

These are the composite (op-by-op, differentiable to any order) component log-densities,
the mixture log-sum-exp and the packed lower-triangle layout. The fused autograd kernels of
the training hot path are in :mod:`mixture_density._kernels`.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "LOG_2PI",
    "diag_component_log_prob",
    "expand_to",
    "flatten_sample",
    "half_log_det_diag",
    "log_softmax",
    "mixture_log_prob",
    "precision_component_log_prob",
    "row_times",
    "tril_component_log_prob",
    "tril_from_packed",
    "tril_positions",
]

LOG_2PI = math.log(2.0 * math.pi)


def expand_to(t: Tensor, shape: tuple[int, ...]) -> Tensor:
    """``t.expand(shape)``, or ``t`` itself when it has that shape already.

    An ``expand`` costs Python and dispatch overhead on every call, and a mixture is built
    every training step from parameters that usually have their full shape already.
    """
    return t if t.shape == shape else t.expand(shape)


def flatten_sample(d: Tensor, n_batch: int) -> tuple[Tensor, torch.Size]:
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
    return -0.5 * z.square().sum(-1) - half_log_det_diag(scale, D) - 0.5 * D * LOG_2PI


def half_log_det_diag(scale: Tensor, D: int) -> Tensor:
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
    d, sample_shape = flatten_sample(d, n_batch)  # (*B, K, N, D)
    L = scale_tril.expand((*d.shape[:-2], D, D))
    w = torch.linalg.solve_triangular(L, d.transpose(-1, -2), upper=False)  # (*B, K, D, N)
    maha = w.square().sum(-2)  # (*B, K, N)
    half_log_det = L.diagonal(dim1=-2, dim2=-1).contiguous().log().sum(-1)  # (*B, K)
    lp = -0.5 * maha - half_log_det.unsqueeze(-1) - 0.5 * D * LOG_2PI  # (*B, K, N)
    return _k_last(lp, sample_shape)


def row_times(d: Tensor, M: Tensor) -> Tensor:
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
    d, sample_shape = flatten_sample(d, n_batch)  # (*B, K, N, D)
    u = row_times(d, precision_tril)  # rows of d P = (P^T d)^T: (*B, K, N, D)
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
# Packed lower triangles (the layout of the full-covariance head's precision factors)
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
