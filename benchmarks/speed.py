"""Speed of the mixture density head against other implementations of the same model.

Every peer maps head features ``h (B, H)`` through one linear layer to a mixture of ``K``
Gaussians over ``D`` outputs. All peers run in this one process, on one thread, with
interleaved repetitions (so that drift from other load hits them alike); the tables show the
median milliseconds and each peer's time relative to ours (``x`` > 1: we are faster), and
``best/ours``, the fastest peer's time over ours.

Peers (one row per noise model and D):

* ``ours``: :class:`mixture_density.nn.MixtureDensityHead` (diagonal: ``scale``; full:
  packed precision Cholesky factors).
* ``torch``: ``torch.distributions.MixtureSameFamily`` built from the output of an
  ``nn.Linear`` of the same size: ``Independent(Normal)`` with ``softplus + min_scale`` scales
  for diagonal, ``MultivariateNormal(scale_tril=L)`` with the same diagonal map for full.
* ``zuko``: ``zuko.mixtures.GMM`` with ``hidden_features=()`` (a single linear layer).
* ``pyknos``: ``pyknos.mdn.mdn.MultivariateGaussianMDN`` (full covariance only).

Sections (``--sections``; each is a function ``section_<name>`` returning table rows):

* ``loss``: forward + backward of the mean negative log-likelihood from ``h`` (B=8192, H=64).
* ``sample``: drawing ``--n-draws`` samples from one fixed mixture (batch of one). A peer
  whose sampler would need more than ``--max-sample-gb`` of memory (torch and zuko sample
  every component for every draw and broadcast the ``D x D`` factor, ``n K D^2`` numbers;
  pyknos gathers one factor per draw) is skipped and the estimate printed.
* ``epoch``: one epoch over ``--epoch-rows`` rows, batch 256, Adam, of the same 2 x 50 tanh
  MLP followed by each head. Ours is the library's own path, ``model.loss(x, y).mean()`` of a
  ``MixtureDensityNetwork``; the peers get an identical backbone and their head on top.
* ``memory``: at D=32, the peak memory of one training step of the loss section. On CUDA,
  ``torch.cuda.max_memory_allocated`` above the memory held before the step. On CPU, each
  peer runs in a fresh subprocess and we report the peak resident set size during one
  full-size step (``VmHWM``, reset just before it) minus the resident size just before it:
  memory the step really touched, allocator overheads included (tracemalloc does not see
  torch's allocations). Linux only.

Repetitions adapt to the cost of a row: each row runs ``--reps`` interleaved repetitions,
or fewer (never below ``--min-reps``) when one repetition of all peers together takes
longer than ``--row-seconds / --reps``.

``torch.distributions`` argument validation is switched off for every peer (it is a debugging
aid that costs synchronizing checks, and each peer would pay it differently).

Usage::

    python benchmarks/speed.py            # every section, D in {1, 8, 32}
    python benchmarks/speed.py --quick    # tiny sizes, ~10 s, no memory section (CI smoke)
    python benchmarks/speed.py --dims 8 32 --sections loss
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from mixture_density.nn import MixtureDensityHead, MixtureDensityNetwork

MIN_SCALE = 1e-3  # the head's default floor, used by the hand-built peers too

Step = Callable[[], None]


@dataclass
class Settings:
    batch: int
    hidden: int
    components: int
    dims: list[int]
    noise_types: list[str]
    reps: int
    warmup: int
    n_draws: int
    epoch_rows: int
    device: torch.device
    peers: list[str]
    min_reps: int = 3
    row_seconds: float = 40.0
    max_sample_gb: float = 6.0
    memory_dim: int = 32


# ----------------------------------------------------------------------------- peers


class TorchMixtureHead(nn.Module):
    """Same layout and maps as our head, density from ``torch.distributions``."""

    def __init__(self, in_features: int, dim_out: int, n_components: int, noise_type: str):
        super().__init__()
        K, D = n_components, dim_out
        n_scale = K * D * (D + 1) // 2 if noise_type == "full" else K * D
        self.K, self.D, self.full = K, D, noise_type == "full"
        self.linear = nn.Linear(in_features, K + K * D + n_scale)
        self.rows, self.cols = torch.tril_indices(D, D, offset=-1)

    def forward(self, h: Tensor) -> Distribution:
        K, D = self.K, self.D
        raw = self.linear(h)
        logits = raw[..., :K]
        loc = raw[..., K : K + K * D].unflatten(-1, (K, D))
        rest = raw[..., K + K * D :]
        mixing = Categorical(logits=logits)
        if not self.full:
            scale = F.softplus(rest.unflatten(-1, (K, D))) + MIN_SCALE
            return MixtureSameFamily(mixing, Independent(Normal(loc, scale), 1))
        rest = rest.unflatten(-1, (K, -1))
        L = torch.diag_embed(F.softplus(rest[..., :D]) + MIN_SCALE)
        L[..., self.rows, self.cols] = rest[..., D:]  # L is fresh: in place is safe
        return MixtureSameFamily(mixing, MultivariateNormal(loc, scale_tril=L))


def make_peer(name: str, H: int, D: int, K: int, noise_type: str) -> nn.Module | None:
    """The peer's module, or ``None`` where it does not offer this noise model."""
    if name == "ours":
        return MixtureDensityHead(H, D, K, noise_type=noise_type, min_scale=MIN_SCALE)
    if name == "torch":
        return TorchMixtureHead(H, D, K, noise_type)
    if name == "zuko":
        from zuko.mixtures import GMM

        return GMM(D, H, components=K, covariance_type=noise_type, hidden_features=())
    if name == "pyknos":
        if noise_type != "full":
            return None
        from pyknos.mdn.mdn import MultivariateGaussianMDN

        return MultivariateGaussianMDN(D, H, hidden_net=None, num_components=K)
    raise ValueError(f"unknown peer {name!r}")


def nll(name: str, module: nn.Module, h: Tensor, y: Tensor) -> Tensor:
    if name == "pyknos":
        return -module.log_prob(y, h).mean()  # type: ignore[operator]
    return -module(h).log_prob(y).mean()


# ----------------------------------------------------------------------------- timing


def time_steps(
    steps: dict[str, Step],
    reps: int,
    warmup: int,
    device: torch.device,
    min_reps: int = 1,
    row_seconds: float = math.inf,
) -> dict:
    """Median milliseconds per call of each step, repetitions interleaved across steps.

    After the warm-up calls, the number of repetitions is ``reps``, reduced (down to
    ``min_reps``) so that the row takes about ``row_seconds`` in all.
    """
    first: dict[str, float] = {}
    for name, step in steps.items():
        for _ in range(max(1, warmup)):
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            first[name] = time.perf_counter() - start
    per_rep = sum(first.values())
    if math.isfinite(row_seconds):
        reps = max(min_reps, min(reps, int(row_seconds / max(per_rep, 1e-9))))
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(1e3 * (time.perf_counter() - start))
    out: dict = {name: statistics.median(t) for name, t in times.items()}
    out["reps"] = reps
    return out


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(name: str, module: nn.Module, h: Tensor, y: Tensor) -> Step:
    def step() -> None:
        module.zero_grad(set_to_none=True)
        nll(name, module, h, y).backward()

    return step


# ----------------------------------------------------------------------------- sections


def _timed(s: Settings, steps: dict[str, Step], reps: int, warmup: int) -> dict:
    return time_steps(steps, reps, warmup, s.device, s.min_reps, s.row_seconds)


def section_loss(s: Settings) -> list[dict]:
    rows = []
    for noise_type in s.noise_types:
        for D in s.dims:
            h = torch.randn(s.batch, s.hidden, device=s.device)
            y = torch.randn(s.batch, D, device=s.device)
            steps = {}
            for peer in s.peers:
                module = make_peer(peer, s.hidden, D, s.components, noise_type)
                if module is not None:
                    steps[peer] = training_step(peer, module.to(s.device), h, y)
            rows.append({"noise": noise_type, "D": D, **_timed(s, steps, s.reps, s.warmup)})
    return rows


def sample_bytes(peer: str, n: int, K: int, D: int, noise_type: str) -> float:
    """Rough peak bytes of a peer's sampler for ``n`` draws from one mixture (float32)."""
    if noise_type != "full" or peer == "ours":
        return 4.0 * n * (K + 4) * D  # per-component or gathered vectors only
    if peer in ("torch", "zuko"):
        return 4.0 * n * K * D * D  # MultivariateNormal.rsample broadcasts L to every draw
    return 2 * 4.0 * n * D * D  # pyknos: one gathered factor per draw, and the solve's copy


def section_sample(s: Settings) -> list[dict]:
    rows = []
    for noise_type in s.noise_types:
        for D in s.dims:
            h = torch.randn(1, s.hidden, device=s.device)
            steps: dict[str, Step] = {}
            row: dict = {"noise": noise_type, "D": D}
            for peer in s.peers:
                module = make_peer(peer, s.hidden, D, s.components, noise_type)
                if module is None:
                    continue
                need = sample_bytes(peer, s.n_draws, s.components, D, noise_type) / 2**30
                if need > s.max_sample_gb:
                    row.setdefault("skipped", []).append(f"{peer} ~{need:.0f} GB")
                    continue
                steps[peer] = _sampler(peer, module.to(s.device), h, s.n_draws)
            row.update(_timed(s, steps, max(3, s.reps // 4), 1))
            rows.append(row)
    return rows


def _sampler(peer: str, module: nn.Module, h: Tensor, n: int) -> Step:
    if peer == "pyknos":
        # Its sampler recomputes the mixture from the features on every call; the cost of one
        # small forward pass is negligible next to 10^6 draws.
        def step() -> None:
            with torch.no_grad():
                module.sample(n, h)  # type: ignore[operator]

        return step
    with torch.no_grad():
        mixture = module(h)
    shape = torch.Size((n,))

    def draw() -> None:
        mixture.sample(shape)

    return draw


def _backbone(dim_in: int, width: int) -> nn.Module:
    return nn.Sequential(nn.Linear(dim_in, width), nn.Tanh(), nn.Linear(width, width), nn.Tanh())


def section_epoch(s: Settings) -> list[dict]:
    """One epoch (batch 256, Adam) of a 2 x 50 tanh MLP with each head on ``epoch_rows``."""
    rows = []
    dim_in, width, batch_size = 8, 50, 256
    for noise_type in s.noise_types:
        for D in s.dims:
            x = torch.randn(s.epoch_rows, dim_in, device=s.device)
            y = torch.randn(s.epoch_rows, D, device=s.device)
            steps = {}
            for peer in s.peers:
                model: nn.Module
                loss: Callable[[Tensor, Tensor], Tensor]
                if peer == "ours":
                    network = MixtureDensityNetwork(
                        dim_in, D, s.components, hidden_dim=width, noise_type=noise_type
                    )
                    model, loss = network, network.loss  # the library's own training loss
                else:
                    head = make_peer(peer, width, D, s.components, noise_type)
                    if head is None:
                        continue
                    model = nn.ModuleDict({"backbone": _backbone(dim_in, width), "head": head})
                    loss = _peer_loss(peer, model)
                steps[peer] = _epoch(model.to(s.device), loss, x, y, batch_size)
            rows.append({"noise": noise_type, "D": D, **_timed(s, steps, max(1, s.reps // 10), 1)})
    return rows


def _peer_loss(peer: str, model: nn.Module) -> Callable[[Tensor, Tensor], Tensor]:
    def loss(x: Tensor, y: Tensor) -> Tensor:
        features = model["backbone"](x)  # type: ignore[index]
        head = model["head"]  # type: ignore[index]
        if peer == "pyknos":
            return -head.log_prob(y, features)
        return -head(features).log_prob(y)

    return loss


def _epoch(
    model: nn.Module, loss: Callable[[Tensor, Tensor], Tensor], x: Tensor, y: Tensor, batch: int
) -> Step:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        for start in range(0, x.shape[0], batch):
            xb, yb = x[start : start + batch], y[start : start + batch]
            optimizer.zero_grad(set_to_none=True)
            loss(xb, yb).mean().backward()
            optimizer.step()

    return step


def section_memory(s: Settings) -> list[dict]:
    """Peak memory (MiB) of one training step of the loss section at D = memory_dim."""
    rows = []
    D = s.memory_dim
    for noise_type in s.noise_types:
        row: dict = {"noise": noise_type, "D": D}
        for peer in s.peers:
            if peer == "pyknos" and noise_type != "full":
                continue
            if s.device.type == "cuda":
                row[peer] = _cuda_step_memory(s, peer, D, noise_type)
            else:
                row[peer] = _subprocess_step_memory(s, peer, D, noise_type)
        rows.append(row)
    return rows


def _cuda_step_memory(s: Settings, peer: str, D: int, noise_type: str) -> float:
    h = torch.randn(s.batch, s.hidden, device=s.device)
    y = torch.randn(s.batch, D, device=s.device)
    module = make_peer(peer, s.hidden, D, s.components, noise_type)
    assert module is not None
    step = training_step(peer, module.to(s.device), h, y)
    step()
    torch.cuda.synchronize(s.device)
    base = torch.cuda.memory_allocated(s.device)
    torch.cuda.reset_peak_memory_stats(s.device)
    step()
    return (torch.cuda.max_memory_allocated(s.device) - base) / 2**20


def _subprocess_step_memory(s: Settings, peer: str, D: int, noise_type: str) -> float:
    """Peak RSS growth (MiB) of one step, measured in a fresh interpreter."""
    spec = json.dumps(
        {
            "peer": peer,
            "D": D,
            "noise": noise_type,
            "batch": s.batch,
            "hidden": s.hidden,
            "K": s.components,
        }
    )
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--memory-child", spec],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


def _status_bytes(field: str) -> int:
    """``VmRSS`` or ``VmHWM`` (peak RSS of this address space) from /proc/self/status."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024  # kB
    raise RuntimeError(f"{field} not in /proc/self/status")


def _memory_child(spec_json: str) -> None:
    spec = json.loads(spec_json)
    torch.set_num_threads(1)
    Distribution.set_default_validate_args(False)
    warnings.filterwarnings("ignore", "Initializing zero-element tensors")
    torch.manual_seed(0)
    module = make_peer(spec["peer"], spec["hidden"], spec["D"], spec["K"], spec["noise"])
    assert module is not None
    h = torch.randn(spec["batch"], spec["hidden"])
    y = torch.randn(spec["batch"], spec["D"])
    # Warm up the code paths on a tiny batch (lazy imports, kernels' one-time buffers), so
    # the measured step's growth is the step itself.
    training_step(spec["peer"], module, h[:2], y[:2])()
    # Not getrusage's ru_maxrss: Linux carries it over execve from the parent, so a child of
    # a big benchmark process would report the parent's peak. VmHWM belongs to this address
    # space; writing 5 to clear_refs resets it to the current RSS (Linux >= 4.0).
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    before = _status_bytes("VmRSS")
    training_step(spec["peer"], module, h, y)()
    print((_status_bytes("VmHWM") - before) / 2**20)


SECTIONS = {
    "loss": (section_loss, "ms per forward+backward of the mean NLL"),
    "sample": (section_sample, "ms to draw the samples"),
    "epoch": (section_epoch, "ms per epoch"),
    "memory": (section_memory, "peak MiB of one loss step; CPU: RSS growth, fresh process"),
}


# ----------------------------------------------------------------------------- output


def print_table(title: str, rows: list[dict], peers: list[str], lower_is_better: str) -> None:
    if not rows:
        return
    present = [p for p in peers if any(p in r for r in rows)]
    others = [p for p in present if p != "ours"]
    header = f"{'noise':<10} {'D':>3} " + " ".join(f"{p:>9}" for p in present)
    header += "".join(f" {p + '/ours':>12}" for p in others)
    header += f" {'best/ours':>10}"
    if any("reps" in r for r in rows):
        header += f" {'reps':>5}"
    print(f"\n{title} ({lower_is_better}; 'x/ours' > 1: ours is faster/smaller)")
    print(header)
    print("-" * len(header))
    notes = []
    for r in rows:
        line = f"{r['noise']:<10} {r['D']:>3} "
        line += " ".join(f"{r[p]:>9.3f}" if p in r else f"{'-':>9}" for p in present)
        ratios = []
        for p in others:
            ratio = r[p] / r["ours"] if p in r and "ours" in r else None
            line += f" {ratio:>11.2f}x" if ratio is not None else f" {'-':>12}"
            if ratio is not None:
                ratios.append(ratio)
        line += f" {min(ratios):>9.2f}x" if ratios else f" {'-':>10}"
        if "reps" in r:
            line += f" {r['reps']:>5}"
        print(line)
        if r.get("skipped"):
            notes.append(f"  {r['noise']} D={r['D']}: skipped (memory) {', '.join(r['skipped'])}")
    for note in notes:
        print(note)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--dims", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--noise", nargs="+", default=["diagonal", "full"])
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--n-draws", type=int, default=1_000_000)
    parser.add_argument("--epoch-rows", type=int, default=100_000)
    parser.add_argument(
        "--sections",
        nargs="+",
        choices=list(SECTIONS),
        help="default: all; with --quick all but memory (its fresh interpreters take seconds)",
    )
    parser.add_argument("--min-reps", type=int, default=3)
    parser.add_argument("--row-seconds", type=float, default=40.0)
    parser.add_argument("--max-sample-gb", type=float, default=6.0)
    parser.add_argument("--memory-dim", type=int, default=32)
    parser.add_argument("--memory-child", help=argparse.SUPPRESS)
    parser.add_argument("--peers", nargs="+", default=["ours", "torch", "zuko", "pyknos"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    if args.memory_child:
        _memory_child(args.memory_child)
        return

    if args.quick:
        args.batch, args.reps, args.warmup, args.min_reps = 256, 3, 1, 1
        args.n_draws, args.epoch_rows, args.memory_dim = 10_000, 1_024, 4
        args.dims = [d for d in args.dims if d <= 8]
    if args.sections is None:
        args.sections = [name for name in SECTIONS if not (args.quick and name == "memory")]
    peers = ["ours"] + [
        p
        for p in args.peers
        if p != "ours" and (p == "torch" or importlib.util.find_spec(p) is not None)
    ]
    settings = Settings(
        batch=args.batch,
        hidden=args.hidden,
        components=args.components,
        dims=args.dims,
        noise_types=args.noise,
        reps=args.reps,
        warmup=args.warmup,
        n_draws=args.n_draws,
        epoch_rows=args.epoch_rows,
        device=torch.device(args.device),
        peers=peers,
        min_reps=args.min_reps,
        row_seconds=args.row_seconds,
        max_sample_gb=args.max_sample_gb,
        memory_dim=args.memory_dim,
    )
    torch.set_num_threads(args.threads)
    # zuko's full GMM at D = 1 has an empty off-diagonal layer; nn.Linear warns about it.
    warnings.filterwarnings("ignore", "Initializing zero-element tensors")
    Distribution.set_default_validate_args(False)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, device {settings.device}, threads {args.threads}, "
        f"B={settings.batch}, H={settings.hidden}, K={settings.components}, "
        f"median of up to {settings.reps} reps ({settings.row_seconds:g} s per row)"
    )
    for name in args.sections:
        function, unit = SECTIONS[name]
        print_table(name, function(settings), peers, unit)


if __name__ == "__main__":
    main()
