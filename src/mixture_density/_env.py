"""The process and device environment, read in one place (private).

Where this process sits in a job (world size, rank, local rank), how a streamed data set is
sharded over ranks and DataLoader workers, which device a ``device`` argument means, and the
process-group timeout. An initialized ``torch.distributed`` group is the authority when there
is one; otherwise the variables that ``torchrun`` sets (``WORLD_SIZE``, ``RANK``,
``LOCAL_RANK``) are, and a process without them is a job of one.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch.utils.data import get_worker_info

from ._errors import MixtureDensityError

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "TIMEOUT_ENV",
    "dist_timeout_s",
    "local_rank",
    "missing_launcher_variables",
    "rank",
    "resolve_device",
    "shard",
    "world_size",
]

#: Environment variable with the process-group timeout in seconds. A collective that waits
#: longer than this for a peer (for example one that was killed) raises instead of hanging.
TIMEOUT_ENV = "MIXTURE_DENSITY_DIST_TIMEOUT"
#: Default timeout: long enough for a slow first step (``torch.compile`` on one rank while the
#: others wait at the first all-reduce), short enough that a dead peer is noticed.
DEFAULT_TIMEOUT_S = 600.0

#: What ``torch.distributed.init_process_group`` reads when it creates a group from the
#: environment (``init_method="env://"``).
_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _group() -> bool:
    """Whether this process belongs to an initialized ``torch.distributed`` group."""
    return dist.is_available() and dist.is_initialized()


def _int_variable(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        return int(raw)
    except ValueError:
        raise MixtureDensityError(
            f"the environment variable {name} must be an integer, got {raw!r}; "
            "torchrun sets it, so unset it when running without torchrun"
        ) from None


def world_size() -> int:
    """Processes in the job: the initialized group's size, else ``WORLD_SIZE`` (default 1).

    Raises:
        MixtureDensityError: ``WORLD_SIZE`` is set but is not an integer.

    Example:
        >>> world_size() >= 1
        True
    """
    if _group():
        return dist.get_world_size()
    return _int_variable("WORLD_SIZE", 1)


def rank() -> int:
    """This process's rank: the initialized group's, else ``RANK`` (default 0).

    Raises:
        MixtureDensityError: ``RANK`` is set but is not an integer.
    """
    if _group():
        return dist.get_rank()
    return _int_variable("RANK", 0)


def local_rank() -> int:
    """This process's rank on its node, ``LOCAL_RANK`` (default 0): which GPU it drives.

    Raises:
        MixtureDensityError: ``LOCAL_RANK`` is set but is not an integer.
    """
    return _int_variable("LOCAL_RANK", 0)


def missing_launcher_variables() -> list[str]:
    """The variables a new process group needs from its launcher that are not set."""
    return [name for name in _LAUNCHER_VARIABLES if name not in os.environ]


def shard() -> tuple[int, int]:
    """``(worker, n_workers)`` of this process and DataLoader worker across the job.

    ``n_workers`` counts the ranks times each rank's DataLoader workers; worker
    ``rank * workers_per_rank + worker_id`` reads chunk ``i`` when ``i mod n_workers`` equals it.

    Example:
        >>> shard()  # one process, no DataLoader workers
        (0, 1)
    """
    info = get_worker_info()
    worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
    if _group():
        return dist.get_rank() * n_workers + worker, dist.get_world_size() * n_workers
    return worker, n_workers


def resolve_device(device: str | torch.device, local_rank: int | None = None) -> torch.device:
    """The ``torch.device`` that a ``device`` argument names.

    ``"auto"`` is CUDA device ``local_rank`` when CUDA is available, else the CPU. A bare
    ``"cuda"`` also becomes ``cuda:local_rank``, so that each process of a node drives its own
    GPU. A CUDA device when CUDA is not available is an error, never a silent CPU run.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:1"``, ... or a ``torch.device``.
        local_rank: the GPU of a bare ``"cuda"``; default :func:`local_rank`.

    Raises:
        ValueError: ``device`` is a CUDA device and this torch has no usable CUDA.

    Example:
        >>> resolve_device("cpu")
        device(type='cpu')
        >>> resolve_device("auto") == (torch.device("cuda", 0) if torch.cuda.is_available()
        ...                            else torch.device("cpu"))
        True
    """
    index = _int_variable("LOCAL_RANK", 0) if local_rank is None else local_rank
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda", index) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(
                f"device={str(device)!r} but CUDA is not available on this machine; "
                "pass device='cpu', or device='auto' to use a GPU only when there is one"
            )
        if dev.index is None:
            dev = torch.device("cuda", index)
    return dev


def dist_timeout_s() -> float:
    """Seconds a collective may wait for a peer: ``MIXTURE_DENSITY_DIST_TIMEOUT`` or 600.

    Raises:
        ValueError: the variable is set but is not a positive number.
    """
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
