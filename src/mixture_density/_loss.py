"""The per-sample loss that :func:`mixture_density.training.fit` differentiates (private).

:class:`LossModule` wraps a model as a module computing per-sample NLLs ``(B,)``, so that
DistributedDataParallel and ``torch.compile`` can wrap it, and applies mixed precision to the
part of the model that tolerates it; :class:`FallbackLoss` runs a compiled loss and falls back
to eager mode when compiling fails.
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

from . import _distributed as _dist

__all__ = ["FallbackLoss", "LossModule", "batch_sum", "entries", "masked_mean", "masked_sums"]


class LossModule(nn.Module):
    """Per-sample NLL ``(B,)`` of ``model``; a module so that DDP and compile can wrap it.

    The protocol: a model with a ``loss`` method is asked for ``loss(x, y)``, or
    ``loss(x, y, mask)`` when the data have a mask and the method takes a third argument;
    it returns the NLL of every entry (``(B,)``, ``(B, T)`` for sequences, ``(M, B, ...)`` for
    a batched ensemble). Without ``loss``, the NLL is ``-model(x).log_prob(y)``. The caller
    (the loop) reduces over the observed entries itself, so a model may ignore the mask.

    Under bf16/fp16 autocast, a model with ``backbone`` and ``head`` runs only the backbone
    in low precision; the head and the mixture log-likelihood (log-sum-exp over components,
    triangular solves) run in the model's dtype, where their cancellation is harmless.
    """

    def __init__(self, model: nn.Module, amp_dtype: torch.dtype | None, device_type: str):
        super().__init__()
        self.model = model
        self.amp_dtype = amp_dtype
        self.device_type = device_type
        self.split = isinstance(getattr(model, "backbone", None), nn.Module) and isinstance(
            getattr(model, "head", None), nn.Module
        )
        self.loss_takes_mask = _takes_third_argument(getattr(model, "loss", None))

    def plain(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """The loss without mixed precision: ``model.loss(x, y[, mask])`` or
        ``-model(x).log_prob(y)``."""
        loss_fn = getattr(self.model, "loss", None)
        if callable(loss_fn):
            if mask is not None and self.loss_takes_mask:
                return cast(torch.Tensor, loss_fn(x, y, mask))
            return cast(torch.Tensor, loss_fn(x, y))
        return cast(torch.Tensor, -self.model(x).log_prob(y))

    def forward(
        self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.amp_dtype is None:
            return self.plain(x, y, mask)
        if self.split:
            backbone = cast(nn.Module, self.model.backbone)
            head = cast(nn.Module, self.model.head)
            with torch.autocast(self.device_type, dtype=self.amp_dtype):
                h = backbone(x)
            with torch.autocast(self.device_type, enabled=False):
                return cast(torch.Tensor, -head(h.to(y.dtype)).log_prob(y))
        with torch.autocast(self.device_type, dtype=self.amp_dtype):
            out = self.plain(x, y, mask)
        return out.to(y.dtype)


class FallbackLoss:
    """Calls the compiled loss; on its first failure warns once and stays eager.

    Only batches with the row count of the first one go through the compiled graph: the
    ragged last batch of an epoch runs eagerly, because recompiling for a dynamic batch
    dimension costs seconds and gave a slower graph than both the static one and eager mode
    (measured on an H100: benchmarks/RESULTS.md, "GPU").
    """

    def __init__(self, compiled: Callable[..., torch.Tensor], eager: Callable[..., torch.Tensor]):
        self.compiled: Callable[..., torch.Tensor] | None = compiled
        self.eager = eager
        self.rows: int | None = None

    def __call__(self, x: torch.Tensor, y: torch.Tensor, *mask: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            self.rows = x.shape[0]
        if self.compiled is not None and x.shape[0] == self.rows:
            try:
                return self.compiled(x, y, *mask)
            except Exception as exc:  # compile errors come in many types; eager re-raises real bugs
                warnings.warn(
                    f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); "
                    "falling back to eager mode",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.compiled = None
        return self.eager(x, y, *mask)


def batch_sum(nll: torch.Tensor, n: int) -> torch.Tensor:
    # A model whose loss already reduces to a scalar counts as that mean for each row.
    return nll.sum() if nll.ndim > 0 else nll * n


def masked_sums(
    nll: torch.Tensor, mask: torch.Tensor, members: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each member's NLL summed over the observed entries, and how many entries those are.

    Args:
        nll: ``(B, T)`` entry NLLs (``(M, B, T)`` for a batched ensemble), or a scalar that
            is already the mean over the observed entries.
        mask: ``(B, T)`` or ``(M, B, T)`` bool, True where the entry is observed.
        members: ``M``.

    Returns:
        ``(M,)`` sums (differentiable) and ``(M,)`` counts, in ``nll``'s dtype.

    Example:
        >>> nll = torch.tensor([[1.0, 2.0], [3.0, float("nan")]])
        >>> masked_sums(nll, torch.tensor([[True, True], [True, False]]), 1)
        (tensor([6.]), tensor([3.]))
    """
    if nll.ndim == 0:  # a mean already: it counts as that for every observed entry
        count = mask.sum().to(nll.dtype)
        return (nll * count).reshape(1), count.reshape(1)
    observed = mask.expand_as(nll)
    # where, not a product: an unobserved entry's NLL may be inf or NaN.
    sums = torch.where(observed, nll, torch.zeros((), dtype=nll.dtype, device=nll.device))
    counts = observed.reshape(members, -1).sum(1).to(nll.dtype)
    return sums.reshape(members, -1).sum(1), counts


def masked_mean(
    nll: torch.Tensor,
    mask: torch.Tensor,
    members: int,
    ranks: _dist.DistContext | None,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Each member's mean NLL over the observed entries: ``(M,)`` loss, sums and counts.

    With ``ranks`` (DDP, every rank in step), the sums are divided by the ranks' mean count
    instead of this rank's own: DDP averages the ranks' gradients, so the step is then that of
    the masked mean over the global minibatch (one all-reduce of ``M`` numbers per step).
    """
    sums, counts = masked_sums(nll, mask, members)  # (M,), (M,)
    denom = counts
    if ranks is not None:
        total = _dist.all_sum(ranks, counts.tolist(), device)
        denom = counts.new_tensor(total) / ranks.world_size
    return sums / denom.clamp_min(1.0), sums, counts


def entries(nll: torch.Tensor, rows: int, members: int) -> int:
    """Entries per member that ``nll`` scores: its rows, or (row, step) pairs of sequences
    (``rows`` for a loss already reduced to its mean)."""
    return nll.numel() // members if nll.ndim else rows


def _takes_third_argument(fn: object) -> bool:
    """Whether ``fn(x, y, mask)`` is a valid call (a third positional parameter or ``*args``)."""
    if not callable(fn):
        return False
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):  # builtins without a signature
        return False
    positional = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
    if any(p.kind is inspect.Parameter.VAR_POSITIONAL for p in params):
        return True
    return sum(p.kind in positional for p in params) >= 3
