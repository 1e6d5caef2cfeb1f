"""How :func:`mixture_density.training.fit` scales with data, processes and accelerators.

Model and data (every section): a default :class:`~mixture_density.nn.MixtureDensityNetwork`
with ``dim_in=8``, ``dim_out=2``, ``K=5`` diagonal components and two tanh hidden layers of 64,
trained in float32 with AdamW on a synthetic heteroscedastic problem, global batch 1024,
no validation split (so an epoch is pure training), ``torch.distributions`` validation at
its default (on). An epoch's time is the ``seconds`` that fit records for it, measured
inside the training process; each number is the fastest of the epochs after the first
(the first pays for allocation, and ``torch.compile``'s tracing when compiling), because on
a shared machine the minimum is the least disturbed estimate.

Sections (``--sections``):

* ``rows``: epoch time against the number of rows (1e4 ... 1e6), one process, one thread;
  with the linear model ``seconds = c * rows`` (``c`` the median cost per row), each size's
  ratio to it (1.00 = on the line) and the log-log slope (1 = linear growth).
* ``ddp``: CPU throughput (rows/s) of one process against two processes under
  ``torchrun --standalone --nproc-per-node 2`` (gloo), for the same data and global batch
  (two ranks of 512 rows each step); every process has one thread. ``--threads-row`` adds one
  process with two threads (the second core without DDP; on a loaded machine its spinning
  OpenMP threads can be very slow, which is why it is not on by default). Each configuration
  runs in a fresh
  subprocess of this script (``--worker``), twice, alternating; rank 0 reports its epoch
  times.
* ``gpu``: when CUDA is available, epoch time and rows/s at 1e5 and 1e6 rows in float32,
  bf16 autocast (backbone only, see ``fit``), ``torch.compile`` and both; otherwise one line saying
  it was skipped.

One process (this one) drives everything and prints Markdown tables; ``--results FILE``
also writes them, with the command, machine and date, into the ``## Scale`` section of
``FILE`` (other sections are left alone).

Usage::

    python benchmarks/scale.py                 # full run, a few minutes on 2 cores
    python benchmarks/scale.py --quick         # tiny sizes, seconds (CI smoke test)
    python benchmarks/scale.py --results benchmarks/RESULTS.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from mixture_density.nn import MixtureDensityNetwork
from mixture_density.training import fit

DIM_IN, DIM_OUT, K, HIDDEN, BATCH = 8, 2, 5, 64, 1024


@dataclass
class Settings:
    rows: list[int]  # sizes of the ``rows`` section
    ddp_rows: int
    ddp_threads_row: bool  # also time one process with two threads
    ddp_repeats: int
    gpu_rows: list[int]
    epochs: int  # epochs per measurement; the first is discarded
    gpu_device: str


# ----------------------------------------------------------------------------- workload


def make_data(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``x (n, 8)`` standard normal; ``y (n, 2)`` a nonlinear mean plus x-dependent noise."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, DIM_IN, generator=g)
    mean = torch.stack([torch.sin(x[:, 0]) + 0.5 * x[:, 1], x[:, 2] * x[:, 3]], dim=-1)
    scale = 0.1 + 0.4 * torch.sigmoid(x[:, 4:6])
    return x, mean + scale * torch.randn(n, DIM_OUT, generator=g)


def make_model() -> MixtureDensityNetwork:
    torch.manual_seed(0)
    return MixtureDensityNetwork(DIM_IN, DIM_OUT, K, hidden_dim=HIDDEN, n_hidden_layers=2)


def epoch_seconds(
    n: int, epochs: int, device: str = "cpu", precision: str = "32", compile: bool = False
) -> list[float]:
    """Times ``epochs`` epochs of fit on ``n`` rows; under torchrun, this rank's times."""
    x, y = make_data(n)
    result = fit(
        make_model(),
        x,
        y,
        val_fraction=0.0,
        epochs=epochs,
        batch_size=BATCH,
        lr_schedule="none",
        patience=None,
        seed=0,
        verbose=False,
        device=device,
        precision=precision,
        compile=compile,
    )
    return [h["seconds"] for h in result.history]


def steady(seconds: list[float]) -> float:
    """The fastest epoch after the first (warm-up) one."""
    return min(seconds[1:]) if len(seconds) > 1 else seconds[0]


# ----------------------------------------------------------------------------- sections


def section_rows(s: Settings) -> list[str]:
    # Small sizes get more epochs (their epochs are short and the machine is noisy), so every
    # size is timed over at least ~3e5 rows of steady epochs.
    times = [steady(epoch_seconds(n, max(s.epochs, min(20, 1 + -(-300_000 // n))))) for n in s.rows]
    rows = np.asarray(s.rows, dtype=float)
    per_row = np.asarray(times) / rows
    # Linear growth means a constant cost per row: the median is that cost, robust to one
    # disturbed size; the log-log slope is the growth exponent (1 = linear).
    cost = float(np.median(per_row))
    exponent = float(np.polyfit(np.log(rows), np.log(times), 1)[0])
    lines = [
        "Epoch time against rows (1 process, 1 thread). Linear model seconds = c * rows with "
        f"c = median cost per row = {cost * 1e5:.3f} s per 1e5 rows; "
        f"log-log slope (growth exponent) = {exponent:.2f}",
        "",
        "| rows | seconds | s per 1e5 rows | rows/s | c * rows | ratio to linear |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for n, t in zip(s.rows, times):
        pred = cost * n
        lines.append(
            f"| {n:,} | {t:.3f} | {t / n * 1e5:.3f} | {n / t:,.0f} | {pred:.3f} | {t / pred:.2f} |"
        )
    return lines


def _run_worker(n: int, epochs: int, nproc: int, threads: int) -> list[float]:
    """Runs ``--worker`` in a fresh interpreter (under torchrun when ``nproc > 1``)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "times.json")
        worker = [
            os.path.abspath(__file__),
            "--worker",
            out,
            "--worker-rows",
            str(n),
            "--worker-epochs",
            str(epochs),
            "--worker-threads",
            str(threads),
        ]
        if nproc > 1:
            launch = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
            cmd = [sys.executable, *launch, *worker]
        else:
            cmd = [sys.executable, *worker]
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
            env.pop(key, None)  # the 1-process run must not join a group by accident
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
        with open(out) as f:
            return list(json.load(f)["seconds"])


def worker_main(out: str, n: int, epochs: int, threads: int) -> None:
    torch.set_num_threads(threads)
    seconds = epoch_seconds(n, epochs)
    if int(os.environ.get("RANK", "0")) == 0:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        with open(out, "w") as f:
            json.dump({"seconds": seconds, "rows": n, "world_size": world}, f)
    # With torch 2.13 on CPU, a process that used DDP over gloo sometimes aborts during
    # interpreter shutdown ("terminate called without an active exception", SIGABRT) after
    # everything, destroy_process_group included, has finished; a bare DDP script shows it
    # too. fit has torn its group down by now, so skip the shutdown that can crash.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def section_ddp(s: Settings) -> list[str]:
    n = s.ddp_rows
    configs = [
        ("1 process x 1 thread", 1, 1),
        ("2 processes x 1 thread (DDP, gloo)", 2, 1),
    ]
    if s.ddp_threads_row:
        configs.append(("1 process x 2 threads", 1, 2))
    # Configurations alternate over the repeats so that load drifting on a shared machine
    # hits them alike; each keeps its fastest epoch.
    times = [float("inf")] * len(configs)
    for _ in range(s.ddp_repeats):
        for i, (_, nproc, threads) in enumerate(configs):
            times[i] = min(times[i], steady(_run_worker(n, s.epochs, nproc, threads)))
    lines = [
        f"CPU data parallelism ({n:,} rows, global batch {BATCH}; rank 0's epoch time)",
        "",
        "| configuration | epoch seconds | rows/s | speed-up |",
        "|---|---:|---:|---:|",
    ]
    for (name, _, _), t in zip(configs, times):
        lines.append(f"| {name} | {t:.3f} | {n / t:,.0f} | {times[0] / t:.2f}x |")
    return lines


def section_gpu(s: Settings) -> list[str]:
    device = s.gpu_device
    if device.startswith("cuda") and not torch.cuda.is_available():
        return ["GPU section skipped: torch.cuda.is_available() is False"]
    name = torch.cuda.get_device_name(device) if device.startswith("cuda") else device
    modes = [
        ("fp32", "32", False),
        ("bf16 autocast", "bf16", False),
        ("fp32 compile", "32", True),
        ("bf16 compile", "bf16", True),
    ]
    lines = [
        f"{name}: epoch time by precision and compilation (batch {BATCH})",
        "",
        "| rows | mode | epoch seconds | rows/s | vs fp32 |",
        "|---:|---|---:|---:|---:|",
    ]
    for n in s.gpu_rows:
        base = None
        for label, precision, compile in modes:
            t = steady(epoch_seconds(n, s.epochs, device, precision, compile))
            base = base or t
            lines.append(f"| {n:,} | {label} | {t:.3f} | {n / t:,.0f} | {base / t:.2f}x |")
    return lines


SECTIONS: dict[str, Callable[[Settings], list[str]]] = {
    "rows": section_rows,
    "ddp": section_ddp,
    "gpu": section_gpu,
}


# ----------------------------------------------------------------------------- output


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        found = re.search(r"^Model name:\s*(.+)$", out, re.MULTILINE)
        model = found.group(1).strip() if found else model
    except (OSError, subprocess.SubprocessError):
        pass
    return f"{model}, {os.cpu_count()} logical CPUs"


def write_section(path: Path, body: str) -> None:
    """Replaces (or appends) the ``## Scale`` section of ``path``; other sections stay."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    section = f"## Scale\n\n{body.strip()}\n"
    pattern = re.compile(r"^## Scale\n.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section + "\n", text, count=1).rstrip() + "\n"
    else:
        text = text.rstrip() + "\n\n" + section
    path.write_text(text)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--sections", nargs="+", default=list(SECTIONS), choices=list(SECTIONS))
    parser.add_argument("--epochs", type=int, default=4, help="epochs per timing (>= 2)")
    parser.add_argument(
        "--threads-row", action="store_true", help="ddp: also time 1 process x 2 threads"
    )
    parser.add_argument("--results", type=Path, help="write the tables into this Markdown file")
    parser.add_argument(
        "--gpu-device", default="cuda", help="device of the gpu section (cpu: test its code)"
    )
    parser.add_argument("--worker", metavar="OUT", help=argparse.SUPPRESS)
    parser.add_argument("--worker-rows", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-epochs", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker-threads", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.worker, args.worker_rows, args.worker_epochs, args.worker_threads)
        return

    torch.set_num_threads(1)
    if args.quick:
        settings = Settings([2_000, 4_000, 8_000], 8_000, False, 1, [4_000], 2, args.gpu_device)
    else:
        settings = Settings(
            [10_000, 30_000, 100_000, 300_000, 1_000_000],
            300_000,
            args.threads_row,
            2,
            [100_000, 1_000_000],
            args.epochs,
            args.gpu_device,
        )
    command = "python benchmarks/scale.py " + " ".join(argv if argv is not None else sys.argv[1:])
    header = [
        f"Command: `{command.strip()}`",
        f"Machine: {machine()}; torch {torch.__version__}; {datetime.date.today().isoformat()}",
        f"Model: MDN {DIM_IN} -> 2x{HIDDEN} tanh -> {K} diagonal components over {DIM_OUT} "
        f"outputs, float32, batch {BATCH}, fastest of epochs 2..{settings.epochs}",
    ]
    print("\n".join(header), flush=True)
    load0 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    blocks: list[str] = []
    for name in args.sections:
        t0 = time.perf_counter()
        lines = SECTIONS[name](settings)
        took = f"({name}: {time.perf_counter() - t0:.0f} s)"
        print("\n" + "\n".join(lines) + "\n\n" + took, flush=True)
        blocks.append("\n".join(lines))
    load1 = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    note = (
        f"Load average {load0:.1f} at the start and {load1:.1f} at the end of the run on "
        f"{os.cpu_count()} CPUs: when it exceeds the CPU count, other work shared the machine "
        "and the numbers are noisy."
    )
    print("\n" + note)
    header.append(note)
    if args.results is not None:
        blocks = ["\n\n".join(header), *blocks]
        write_section(args.results, "\n\n".join(blocks))
        print(f"\nwrote the Scale section of {args.results}")


if __name__ == "__main__":
    main()
