"""Training checkpoints for :func:`mixture_density.training.fit` (private).

A checkpoint is one ``torch.save`` file holding everything that an exact resume needs: the
model, optimizer, scheduler and gradient-scaler states, the RNG states (fit's generators and
the global CPU/CUDA generators, which drive dropout), and the loop's progress (epoch, history,
early-stopping state). It is read back with ``torch.load(weights_only=True)``, which refuses
to run pickled code, and written atomically, so a crash leaves the previous file intact.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from . import _distributed as _dist
from ._files import atomic_path

__all__ = [
    "CKPT_VERSION",
    "Checkpointable",
    "atomic_save",
    "check_same_data",
    "cpu_state",
    "load",
    "save",
]

#: Checkpoint layout version, bumped when the payload changes incompatibly.
CKPT_VERSION = 1

#: Payload keys that describe the loop's progress (the rest restore objects' states).
PROGRESS_KEYS = (
    "epoch",
    "history",
    "best_state",
    "best_epoch",
    "best_val_nll",
    "bad_epochs",
    "seed",
    "n_train",
    "n_val",
    "noise",
    "finished",
)


def atomic_save(obj: Any, path: str) -> None:
    """Writes ``obj`` to ``path`` so that a crash leaves either the old or the new file.

    The payload goes to a temporary file next to ``path`` that is flushed to disk, then
    renamed over ``path`` (``_files.atomic_path``).

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "sub", "c.pt")
        >>> atomic_save({"epoch": 3}, path)
        >>> torch.load(path, weights_only=True)
        {'epoch': 3}
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        torch.save(obj, handle)


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of ``module.state_dict()`` (a snapshot that training cannot alter)."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


@dataclass
class Checkpointable:
    """The objects whose states a checkpoint saves and restores, besides the loop's progress.

    Attributes:
        model: the model being trained.
        optimizer: its optimizer.
        scheduler: learning-rate scheduler, or None.
        scaler: fp16 gradient scaler, or None.
        generator: fit's CPU generator (validation split, shuffling).
        noise_generator: the generator of noise regularization (on the training device).
        device: the training device; its CUDA RNG is saved when it is a GPU.
    """

    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: torch.amp.GradScaler | None
    generator: torch.Generator
    noise_generator: torch.Generator
    device: torch.device

    def state_dict(self) -> dict[str, Any]:
        """The states of all objects, with the global RNG states, as payload entries."""
        cuda = self.device.type == "cuda"
        return {
            "model": cpu_state(self.model),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "generator": self.generator.get_state(),
            "noise_generator": self.noise_generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if cuda else None,
        }

    def load_state_dict(self, ckpt: dict[str, Any]) -> None:
        """Restores every object (and the global RNGs) from a payload, in place."""
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        if self.scheduler is not None and ckpt["scheduler"] is not None:
            self.scheduler.load_state_dict(ckpt["scheduler"])
        if self.scaler is not None and ckpt["scaler"] is not None:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.generator.set_state(ckpt["generator"])
        self.noise_generator.set_state(ckpt["noise_generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        if self.device.type == "cuda" and ckpt.get("cuda_rng") is not None:
            torch.cuda.set_rng_state(ckpt["cuda_rng"], self.device)


def save(path: str, objects: Checkpointable, progress: dict[str, Any]) -> None:
    """Writes a checkpoint of ``objects`` and the loop's ``progress`` (see PROGRESS_KEYS)."""
    missing = set(PROGRESS_KEYS) - set(progress)
    if missing:  # a programming error in fit, not a user error
        raise RuntimeError(f"checkpoint progress lacks {sorted(missing)}")
    atomic_save({"version": CKPT_VERSION, **objects.state_dict(), **progress}, path)


def load(path: str, ctx: _dist.DistContext, device: torch.device) -> dict[str, Any] | None:
    """Reads the checkpoint at ``path`` on every rank; None if rank 0 does not see the file.

    Rank 0 decides whether the file exists (``device`` is where the collective runs), so all
    ranks resume or all start fresh.

    Raises:
        FileNotFoundError: rank 0 sees the file but this rank does not (no shared filesystem).
        ValueError: the file is not a checkpoint of this layout version.
    """
    exists = _dist.broadcast_int(ctx, int(os.path.exists(path)), device)
    if not exists:
        return None
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"rank {ctx.rank} cannot see checkpoint {path} that rank 0 has; "
            "checkpoints must be on a filesystem shared by all ranks"
        )
    ckpt: dict[str, Any] = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("version") != CKPT_VERSION:
        raise ValueError(
            f"{path} is not a mixture_density checkpoint (version "
            f"{ckpt.get('version')!r}, expected {CKPT_VERSION})"
        )
    return ckpt


def check_same_data(ckpt: dict[str, Any], path: str, n_train: int | None, n_val: Any) -> None:
    """Refuses to resume on data of another size than the checkpoint's (a different split)."""
    for key, current in (("n_train", n_train), ("n_val", n_val)):
        if ckpt[key] != current:
            raise ValueError(
                f"checkpoint {path} was made with {key}={ckpt[key]}, "
                f"but this data gives {current}; resume needs the same data"
            )
