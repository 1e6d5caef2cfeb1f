"""Process-group set-up and collectives for :func:`mixture_density.training.fit` (private)."""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist

from . import _env

# Re-exported for training.py, which reads them from here (until it imports them from _env).


@dataclass
class DistContext:
    """Where this process sits in a (possibly trivial) process group."""

    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False
    timeout_s: float = _env.DEFAULT_TIMEOUT_S

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(distributed: bool | None, use_cuda: bool) -> DistContext:
    """Joins (or, under a launcher, creates) the default process group.

    Args:
        distributed: ``None`` = on when launched by ``torchrun`` with ``WORLD_SIZE > 1`` or when
            a process group is already initialized; ``True`` = required; ``False`` = off.
        use_cuda: choose ``nccl`` (CUDA) rather than ``gloo`` (CPU) for a new group.
    """
    if distributed is False:
        return DistContext()
    initialized = dist.is_available() and dist.is_initialized()
    if distributed is None and not initialized and _env.world_size() <= 1:
        return DistContext()
    if not dist.is_available():
        raise ValueError("distributed=True but this torch build has no torch.distributed")
    timeout = _env.dist_timeout_s()
    created = False
    if not initialized:
        missing = _env.missing_launcher_variables()
        if missing:
            raise ValueError(
                f"distributed=True but the environment lacks {missing}; launch with "
                "`torchrun --nproc-per-node N script.py` or call "
                "torch.distributed.init_process_group() before fit"
            )
        dist.init_process_group(
            backend="nccl" if use_cuda else "gloo",
            timeout=datetime.timedelta(seconds=timeout),
        )
        created = True
    ctx = DistContext(
        enabled=dist.get_world_size() > 1 or distributed is True,
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=_env.local_rank(),
        created_group=created,
        timeout_s=timeout,
    )
    if not ctx.enabled and created:
        dist.destroy_process_group()
        return DistContext()
    return ctx


def teardown(ctx: DistContext) -> None:
    """Destroys the process group only if :func:`setup` created it."""
    if ctx.created_group and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(ctx: DistContext, values: list[float], device: torch.device) -> list[float]:
    """Sums a few float64 numbers over ranks (identity when not distributed)."""
    if not ctx.enabled:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def broadcast_int(ctx: DistContext, value: int, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank, so decisions cannot diverge."""
    if not ctx.enabled:
        return value
    t = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(t, src=0)
    return int(t.item())


def broadcast_module(ctx: DistContext, module: torch.nn.Module) -> None:
    """Copies rank 0's parameters and buffers to every rank, in place."""
    if not ctx.enabled:
        return
    with torch.no_grad():
        for tensor in module.state_dict().values():
            if isinstance(tensor, torch.Tensor):
                dist.broadcast(tensor, src=0)
