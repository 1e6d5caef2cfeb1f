"""Speed of the mixture density head against other implementations of the same model.

Every peer maps head features ``h (B, H)`` through one linear layer to a mixture of ``K``
Gaussians over ``D`` outputs and we time one training step of that layer: forward, mean
negative log-likelihood, backward. All peers run in this one process, on one thread, with
interleaved repetitions (so that drift from other load hits them alike); the table shows the
median milliseconds per step and each peer's time relative to ours (``x`` > 1: we are faster).

Peers (one row per noise model and D):

* ``ours``: :class:`mixture_density.nn.MixtureDensityHead` (diagonal: ``scale``; full:
  ``precision_tril``).
* ``torch``: ``torch.distributions.MixtureSameFamily`` built from the output of an
  ``nn.Linear`` of the same size: ``Independent(Normal)`` with ``softplus + min_scale`` scales
  for diagonal, ``MultivariateNormal(scale_tril=L)`` with the same diagonal map for full.
* ``zuko``: ``zuko.mixtures.GMM`` with ``hidden_features=()`` (a single linear layer).
* ``pyknos``: ``pyknos.mdn.mdn.MultivariateGaussianMDN`` (full covariance only).

Sections (``--sections``; each is a function ``section_<name>`` returning table rows, so more
can be added): ``loss`` (the table above), ``sample`` (drawing ``--n-draws`` samples from a
fixed mixture, ours against ``MixtureSameFamily``), ``epoch`` (one epoch over ``--epoch-rows``
rows of a 2x50 tanh MLP + head with Adam, batch 256), ``memory`` (peak memory of one training
step, CUDA only).

``torch.distributions`` argument validation is switched off for every peer (it is a debugging
aid that costs synchronizing checks, and each peer would pay it differently).

Usage::

    python benchmarks/speed.py            # B=8192, H=64, K=10, D in {1, 8}
    python benchmarks/speed.py --quick    # tiny sizes, a few seconds (CI smoke test)
    python benchmarks/speed.py --dims 1 8 32 --sections loss sample epoch
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
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


def time_steps(steps: dict[str, Step], reps: int, warmup: int, device: torch.device) -> dict:
    """Median milliseconds per call of each step, repetitions interleaved across steps."""
    for step in steps.values():
        for _ in range(warmup):
            step()
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(reps):
        for name, step in steps.items():
            _sync(device)
            start = time.perf_counter()
            step()
            _sync(device)
            times[name].append(1e3 * (time.perf_counter() - start))
    return {name: statistics.median(t) for name, t in times.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def training_step(name: str, module: nn.Module, h: Tensor, y: Tensor) -> Step:
    def step() -> None:
        module.zero_grad(set_to_none=True)
        nll(name, module, h, y).backward()

    return step


# ----------------------------------------------------------------------------- sections


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
            rows.append(
                {
                    "noise": noise_type,
                    "D": D,
                    **time_steps(steps, s.reps, s.warmup, s.device),
                }
            )
    return rows


def section_sample(s: Settings) -> list[dict]:
    rows = []
    for noise_type in s.noise_types:
        for D in s.dims:
            h = torch.randn(1, s.hidden, device=s.device)
            ours = make_peer("ours", s.hidden, D, s.components, noise_type)
            peer = make_peer("torch", s.hidden, D, s.components, noise_type)
            assert ours is not None and peer is not None
            with torch.no_grad():
                mixtures = {"ours": ours.to(s.device)(h), "torch": peer.to(s.device)(h)}
            shape = torch.Size((s.n_draws,))
            steps = {name: _sampler(m, shape) for name, m in mixtures.items()}
            rows.append(
                {
                    "noise": noise_type,
                    "D": D,
                    **time_steps(steps, max(3, s.reps // 4), 1, s.device),
                }
            )
    return rows


def _sampler(mixture: Distribution, shape: torch.Size) -> Step:
    def step() -> None:
        mixture.sample(shape)

    return step


def section_epoch(s: Settings) -> list[dict]:
    """One epoch (batch 256, Adam) of a 2 x 50 tanh MLP with each head on ``epoch_rows``."""
    rows = []
    dim_in, batch_size = 8, 256
    for noise_type in s.noise_types:
        for D in s.dims:
            x = torch.randn(s.epoch_rows, dim_in, device=s.device)
            y = torch.randn(s.epoch_rows, D, device=s.device)
            steps = {}
            for peer in ("ours", "torch"):
                model = MixtureDensityNetwork(dim_in, D, s.components, noise_type=noise_type)
                head = make_peer(peer, 50, D, s.components, noise_type)
                assert head is not None
                model.head = head  # type: ignore[assignment]
                model.to(s.device)
                steps[peer] = _epoch(model, x, y, batch_size)
            rows.append(
                {
                    "noise": noise_type,
                    "D": D,
                    **time_steps(steps, max(1, s.reps // 10), 0, s.device),
                }
            )
    return rows


def _epoch(model: MixtureDensityNetwork, x: Tensor, y: Tensor, batch_size: int) -> Step:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step() -> None:
        for start in range(0, x.shape[0], batch_size):
            xb, yb = x[start : start + batch_size], y[start : start + batch_size]
            optimizer.zero_grad(set_to_none=True)
            (-model.head(model.backbone(xb)).log_prob(yb).mean()).backward()
            optimizer.step()

    return step


def section_memory(s: Settings) -> list[dict]:
    """Peak CUDA memory (MiB) above the inputs, of one training step."""
    if s.device.type != "cuda":
        print("memory: needs --device cuda; skipped")
        return []
    rows = []
    for noise_type in s.noise_types:
        for D in s.dims:
            h = torch.randn(s.batch, s.hidden, device=s.device)
            y = torch.randn(s.batch, D, device=s.device)
            row: dict = {"noise": noise_type, "D": D}
            for peer in s.peers:
                module = make_peer(peer, s.hidden, D, s.components, noise_type)
                if module is None:
                    continue
                step = training_step(peer, module.to(s.device), h, y)
                step()
                torch.cuda.synchronize(s.device)
                base = torch.cuda.memory_allocated(s.device)
                torch.cuda.reset_peak_memory_stats(s.device)
                step()
                peak = torch.cuda.max_memory_allocated(s.device)
                row[peer] = (peak - base) / 2**20
                del module, step
            rows.append(row)
    return rows


SECTIONS = {
    "loss": (section_loss, "ms per forward+backward of the mean NLL"),
    "sample": (section_sample, "ms to draw the samples"),
    "epoch": (section_epoch, "ms per epoch"),
    "memory": (section_memory, "peak MiB of one training step"),
}


# ----------------------------------------------------------------------------- output


def print_table(title: str, rows: list[dict], peers: list[str], lower_is_better: str) -> None:
    if not rows:
        return
    present = [p for p in peers if any(p in r for r in rows)]
    others = [p for p in present if p != "ours"]
    header = f"{'noise':<10} {'D':>3} " + " ".join(f"{p:>9}" for p in present)
    header += "".join(f" {p + '/ours':>12}" for p in others)
    print(f"\n{title} ({lower_is_better}; 'x/ours' > 1: ours is faster/smaller)")
    print(header)
    print("-" * len(header))
    for r in rows:
        line = f"{r['noise']:<10} {r['D']:>3} "
        line += " ".join(f"{r[p]:>9.3f}" if p in r else f"{'-':>9}" for p in present)
        for p in others:
            ratio = r[p] / r["ours"] if p in r and "ours" in r else None
            line += f" {ratio:>11.2f}x" if ratio is not None else f" {'-':>12}"
        print(line)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--batch", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=64)
    parser.add_argument("--components", type=int, default=10)
    parser.add_argument("--dims", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--noise", nargs="+", default=["diagonal", "full"])
    parser.add_argument("--reps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--n-draws", type=int, default=1_000_000)
    parser.add_argument("--epoch-rows", type=int, default=100_000)
    parser.add_argument("--sections", nargs="+", default=["loss"], choices=sorted(SECTIONS))
    parser.add_argument("--peers", nargs="+", default=["ours", "torch", "zuko", "pyknos"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    if args.quick:
        args.batch, args.reps, args.warmup = 256, 5, 1
        args.n_draws, args.epoch_rows = 10_000, 2_048
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
    )
    torch.set_num_threads(args.threads)
    # zuko's full GMM at D = 1 has an empty off-diagonal layer; nn.Linear warns about it.
    warnings.filterwarnings("ignore", "Initializing zero-element tensors")
    Distribution.set_default_validate_args(False)
    torch.manual_seed(0)
    print(
        f"torch {torch.__version__}, device {settings.device}, threads {args.threads}, "
        f"B={settings.batch}, H={settings.hidden}, K={settings.components}, "
        f"median of {settings.reps} reps"
    )
    for name in args.sections:
        function, unit = SECTIONS[name]
        print_table(name, function(settings), peers, unit)


if __name__ == "__main__":
    main()
