"""Worker for tests/test_distributed.py: one rank of a CPU/gloo DDP fit.

Launched by ``torchrun`` (or by hand with RANK/WORLD_SIZE/MASTER_* set). Usage:
``python _ddp_script.py OUT_DIR``. Writes ``OUT_DIR/rank{r}.pt`` (this rank's final weights
and history, for the test to compare) and, through fit, ``OUT_DIR/ckpt.pt`` (rank 0 only).
With ``MDN_TEST_MASK=1`` the data are sequences ``(n, T, 1)`` with a mask of random
lengths (``masked_data``). With ``MDN_TEST_KILL_RANK=r`` set, rank ``r`` dies abruptly after
epoch 1; with ``MDN_TEST_STALL_RANK=r`` it freezes there instead (a hung node).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch
from torch import nn

from mixture_density.training import fit

torch.set_num_threads(1)


class Gauss(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 16), nn.Tanh(), nn.Linear(16, 2))

    def forward(self, x: torch.Tensor) -> torch.distributions.Distribution:
        loc, raw = self.net(x).chunk(2, dim=-1)
        scale = nn.functional.softplus(raw) + 1e-3
        return torch.distributions.Independent(torch.distributions.Normal(loc, scale), 1)


def data(n: int = 320) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(n, 1, generator=g, dtype=torch.float64) * 4 - 2
    return x, torch.sin(2 * x) + (0.1 + 0.3 * x.abs()) * torch.randn(
        n, 1, generator=g, dtype=torch.float64
    )


def masked_data(n: int = 320, T: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sequences ``x, y (n, T, 1)`` and a mask ``(n, T)`` of random lengths 1..T."""
    g = torch.Generator().manual_seed(1)
    x, y = data(n * T)
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    return x.reshape(n, T, 1), y.reshape(n, T, 1), torch.arange(T) < lengths[:, None]


def model() -> nn.Module:
    torch.manual_seed(1)
    return Gauss().double()


KWARGS: dict[str, Any] = {
    "epochs": 15,
    "batch_size": 64,
    "lr": 2e-2,
    "seed": 0,
    "lr_schedule": "none",
}


def main() -> None:
    out = sys.argv[1]
    rank = int(os.environ["RANK"])
    kill = os.environ.get("MDN_TEST_KILL_RANK")
    stall = os.environ.get("MDN_TEST_STALL_RANK")

    def maybe_die(epoch: int, record: dict[str, float]) -> None:
        if kill is not None and rank == int(kill) and epoch == 1:
            os._exit(1)
        if stall is not None and rank == int(stall) and epoch == 1:
            time.sleep(600)

    m = model()
    if os.environ.get("MDN_TEST_MASK") == "1":
        x, y, mask = masked_data()
    else:
        (x, y), mask = data(), None
    result = fit(
        m,
        x,
        y,
        mask,
        checkpoint_path=os.path.join(out, "ckpt.pt"),
        verbose=True,
        callbacks=[maybe_die],
        **KWARGS,
    )
    torch.save(
        {"state": m.state_dict(), "history": result.history, "best_epoch": result.best_epoch},
        os.path.join(out, f"rank{rank}.pt"),
    )
    # torch 2.13 (CPU, gloo): a process that used DDP sometimes aborts during interpreter
    # shutdown ("terminate called without an active exception") after destroy_process_group
    # has returned; a bare DDP script shows it too (about 1 run in 10 here). fit is done and
    # the results are on disk, so skip that shutdown rather than make the test flaky.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
