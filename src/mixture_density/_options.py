"""Options and results of :func:`mixture_density.training.fit` (private).

:class:`FitOptions` is the typed, validated form of ``fit``'s keyword arguments, read by the
loop in ``_loop``; :class:`FitResult` is what ``fit`` returns. The learning-rate schedule and
clipping constants live here so that every caller shares them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["Callback", "FitOptions", "FitResult", "noise_stds", "plateau_patience"]

Callback = Callable[[int, dict[str, float]], "bool | None"]

#: Stop reasons reported in ``FitResult.stop_reason``.
STOP_MAX_EPOCHS = "max_epochs"
STOP_EARLY = "early_stopping"
STOP_CALLBACK = "callback"
STOP_INTERRUPTED = "interrupted"
STOP_NON_FINITE = "non_finite"
STOP_CODES = {1: STOP_EARLY, 2: STOP_CALLBACK, 3: STOP_NON_FINITE}

#: The "plateau" schedule: multiply the rate by LR_FACTOR after ``plateau_patience(patience)``
#: epochs without a better validation NLL, never below ``lr * MIN_LR_FACTOR``.
LR_FACTOR = 0.5
MIN_LR_FACTOR = 1e-3
#: Gradient-norm bound by default: it tames the large gradients of components whose variance
#: collapses onto a few targets.
DEFAULT_CLIP_GRAD_NORM = 10.0


def plateau_patience(patience: int | None) -> int:
    """Epochs without improvement before the plateau schedule lowers the rate."""
    return max(1, patience // 4) if patience else 5


def noise_stds(spec: Any, n: int | None, d: int) -> tuple[float, float]:
    """``(std_x, std_y)`` for ``noise_regularization``; ``"auto"`` is h = n^(-1/(4+d))."""
    if spec is None:
        return 0.0, 0.0
    if isinstance(spec, str):
        if spec != "auto":
            raise ValueError(
                f"noise_regularization must be None, a float, a pair or 'auto', got {spec!r}"
            )
        if n is None:
            raise ValueError(
                "noise_regularization='auto' needs the number of training rows, but train_data "
                "has no len(); pass explicit (std_x, std_y)"
            )
        h = float(n) ** (-1.0 / (4 + d))
        return h, h
    if isinstance(spec, (int, float)):
        stds = (float(spec), float(spec))
    elif isinstance(spec, Sequence) and len(spec) == 2:
        stds = (float(spec[0]), float(spec[1]))
    else:
        raise ValueError(
            f"noise_regularization must be None, a float, a pair or 'auto', got {spec!r}"
        )
    if not all(math.isfinite(s) and s >= 0 for s in stds):
        raise ValueError(f"noise_regularization stds must be finite and >= 0, got {stds}")
    return stds


def _positive_int(name: str, value: Any, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@dataclass(frozen=True)
class FitOptions:
    """``fit``'s training options, validated on construction (see ``fit`` for each)."""

    epochs: int = 200
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    lr_schedule: str = "plateau"
    clip_grad_norm: float | None = DEFAULT_CLIP_GRAD_NORM
    patience: int | None = 20
    noise_regularization: Any = None
    val_fraction: float = 0.1
    checkpoint_path: str | None = None
    checkpoint_every: int | None = None
    resume: bool = False
    seed: int | None = None
    verbose: bool | None = None
    precision: str = "32"
    compile: bool = False
    callbacks: tuple[Callback, ...] = ()
    max_nonfinite_batches: int = 20

    def __post_init__(self) -> None:
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        _positive_int("patience", self.patience, allow_none=True)
        _positive_int("checkpoint_every", self.checkpoint_every, allow_none=True)
        _positive_int("max_nonfinite_batches", self.max_nonfinite_batches)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.val_fraction, (int, float)) and 0 <= self.val_fraction < 1):
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction!r}")
        clip = self.clip_grad_norm
        if clip is not None and not (isinstance(clip, (int, float)) and clip > 0):
            raise ValueError(f"clip_grad_norm must be None or > 0, got {clip!r}")
        if self.lr_schedule not in ("plateau", "cosine", "none"):
            raise ValueError(
                f"lr_schedule must be 'plateau', 'cosine' or 'none', got {self.lr_schedule!r}"
            )
        if self.precision not in ("32", "bf16", "fp16"):
            raise ValueError(f"precision must be '32', 'bf16' or 'fp16', got {self.precision!r}")
        if self.resume and self.checkpoint_path is None:
            raise ValueError("resume=True needs checkpoint_path")
        for cb in self.callbacks:
            if not callable(cb):
                raise TypeError(
                    f"callbacks must be callables (epoch, record) -> bool | None, got {cb!r}"
                )
        if self.noise_regularization is not None:
            noise_stds(self.noise_regularization, 1, 1)  # refuse a bad spec before training

    @property
    def amp_dtype(self) -> torch.dtype | None:
        return {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]


@dataclass
class FitResult:
    """What :func:`~mixture_density.training.fit` did.

    Attributes:
        history: one record per epoch with keys ``epoch`` (1-based), ``train_nll`` (mean
            per-sample NLL over the epoch's minibatches, with noise regularization and dropout
            active; per observed (row, step) entry for sequences and with a ``mask``, as is
            ``val_nll``), ``val_nll`` (NaN without validation data), ``lr`` (learning rate used
            during the epoch) and ``seconds`` (wall time). For a batched ensemble of ``M``
            members, ``train_nll`` is the mean over the members, ``val_nll`` is the NLL of
            their combined mixture, and ``members_train_nll`` / ``members_val_nll`` list each
            member's.
        best_epoch: epoch whose weights the model holds on return (0 = the initial weights).
        best_val_nll: validation NLL of those weights (NaN without validation data).
        stop_reason: ``"max_epochs"``, ``"early_stopping"``, ``"callback"``,
            ``"interrupted"`` (KeyboardInterrupt) or ``"non_finite"`` (see ``detail``).
        epochs_run: epochs completed in total, including those before a resume.
        detail: human-readable explanation for ``"non_finite"`` and ``"interrupted"``.
    """

    history: list[dict[str, Any]]
    best_epoch: int
    best_val_nll: float
    stop_reason: str
    epochs_run: int
    detail: str = field(default="")
