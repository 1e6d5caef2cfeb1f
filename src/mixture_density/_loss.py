"""The per-sample loss that :func:`mixture_density.training.fit` differentiates (private).

:class:`LossModule` wraps a model as a module computing per-sample NLLs ``(B,)``, so that
DistributedDataParallel and ``torch.compile`` can wrap it, and applies mixed precision to the
part of the model that tolerates it; :class:`FallbackLoss` runs a compiled loss and falls back
to eager mode when compiling fails.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import cast

import torch
from torch import nn

__all__ = ["FallbackLoss", "LossModule", "batch_sum"]


class LossModule(nn.Module):
    """Per-sample NLL ``(B,)`` of ``model``; a module so that DDP and compile can wrap it.

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

    def plain(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The loss without mixed precision: ``model.loss(x, y)`` or ``-model(x).log_prob(y)``."""
        loss_fn = getattr(self.model, "loss", None)
        if callable(loss_fn):
            return cast(torch.Tensor, loss_fn(x, y))
        return cast(torch.Tensor, -self.model(x).log_prob(y))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.amp_dtype is None:
            return self.plain(x, y)
        if self.split:
            backbone = cast(nn.Module, self.model.backbone)
            head = cast(nn.Module, self.model.head)
            with torch.autocast(self.device_type, dtype=self.amp_dtype):
                h = backbone(x)
            with torch.autocast(self.device_type, enabled=False):
                return cast(torch.Tensor, -head(h.to(y.dtype)).log_prob(y))
        with torch.autocast(self.device_type, dtype=self.amp_dtype):
            out = self.plain(x, y)
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

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if self.rows is None:
            self.rows = x.shape[0]
        if self.compiled is not None and x.shape[0] == self.rows:
            try:
                return self.compiled(x, y)
            except Exception as exc:  # compile errors come in many types; eager re-raises real bugs
                warnings.warn(
                    f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); "
                    "falling back to eager mode",
                    RuntimeWarning,
                    stacklevel=2,
                )
                self.compiled = None
        return self.eager(x, y)


def batch_sum(nll: torch.Tensor, n: int) -> torch.Tensor:
    # A model whose loss already reduces to a scalar counts as that mean for each row.
    return nll.sum() if nll.ndim > 0 else nll * n
