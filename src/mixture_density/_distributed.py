"""Process-group set-up and collectives for :func:`mixture_density.training.fit` (private)."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

#: Environment variable with the process-group timeout in seconds. A collective that waits
#: longer than this for a peer (for example one that was killed) raises instead of hanging.
TIMEOUT_ENV = "MIXTURE_DENSITY_DIST_TIMEOUT"
#: Default timeout: long enough for a slow first step (``torch.compile`` on one rank while the
#: others wait at the first all-reduce), short enough that a dead peer is noticed.
DEFAULT_TIMEOUT_S = 600.0


@dataclass
class DistContext:
    """Where this process sits in a (possibly trivial) process group."""

    enabled: bool = False
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    created_group: bool = False
    timeout_s: float = DEFAULT_TIMEOUT_S

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _timeout_s() -> float:
    raw = os.environ.get(TIMEOUT_ENV)
    if raw is None:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ValueError(f"{TIMEOUT_ENV} must be a positive number of seconds, got {raw!r}")
    return value


def resolve_device(device: str | torch.device, local_rank: int) -> torch.device:
    """``"auto"``: CUDA device ``local_rank`` if CUDA is available, else CPU.

    A bare ``"cuda"`` also becomes ``cuda:local_rank``, so that each process of a node
    drives its own GPU.
    """
    if isinstance(device, str) and device == "auto":
        return (
            torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
        )
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


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
    world_env = int(os.environ.get("WORLD_SIZE", "1"))
    if distributed is None and not initialized and world_env <= 1:
        return DistContext()
    if not dist.is_available():
        raise ValueError("distributed=True but this torch build has no torch.distributed")
    timeout = _timeout_s()
    created = False
    if not initialized:
        missing = [
            k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
        ]
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
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
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
