"""Sequences of different lengths with a mixture density RNN: masks, and sampling with temperature
===============================================================================================

Each sequence walks around the unit circle, ``y_t = r_t (cos a_t, sin a_t)`` with
``a_t = a_{t-1} + s (0.25 + 0.05 eps)``, ``r_t = 1 + 0.03 eps'``: a random start and a random
direction ``s = +-1`` kept for the whole sequence, and a random length of 8 to 40 steps. An
LSTM reads ``x_t = y_{t-1}`` and predicts ``p(y_t | y_<t)`` as a mixture of K = 4 Gaussians.
Given only the first point the direction is unknown and the next point has two modes, one on
each side; after two points the direction is known and one mode remains. Padding past each
sequence's end is marked by the ``mask`` given to ``fit``, so it is never scored.

The figure shows training sequences, draws from the predictive distribution after one and
after three points of a new sequence, and continuations drawn by ``MixtureDensityRNN.generate`` at
temperature 1 and 0.2 (``pi_temperature = scale_temperature = tau``: logits / tau,
sigma * sqrt(tau), as ``GaussianMixture.tempered``). The mask matters: the same network fitted
without it, on zero padding, learns that a walk may jump to the origin and stay there; its
held-out NLL per observed step is worse and its continuations jump to the padding value
(the last panel). Both NLLs are printed.

Run: ``python examples/sequences.py [--out examples/figures/sequences.png]`` (about a minute,
two fits; ``MIXTURE_DENSITY_QUICK=1``: a few seconds, rough fits).
"""

from __future__ import annotations

import argparse
import math
import os
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from mixture_density import FitResult, MixtureDensityRNN, fit

QUICK = os.environ.get("MIXTURE_DENSITY_QUICK") == "1"


def make_sequences(n: int, T: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Points ``(n, T + 1, 2)`` (NaN past each end) and the mask of observed steps ``(n, T)``."""
    start = rng.uniform(0, 2 * np.pi, size=(n, 1))
    direction = rng.choice([-1.0, 1.0], size=(n, 1))
    steps = direction * (0.25 + 0.05 * rng.standard_normal((n, T)))
    angle = np.concatenate([start, start + np.cumsum(steps, axis=1)], axis=1)  # (n, T + 1)
    radius = 1.0 + 0.03 * rng.standard_normal((n, T + 1))
    points = radius[..., None] * np.stack([np.cos(angle), np.sin(angle)], axis=-1)
    lengths = rng.integers(8, T + 1, size=n)
    mask = np.arange(T) < lengths[:, None]
    points[:, 1:][~mask] = np.nan  # padding: fit never looks at it
    return points, mask


def train(
    x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None, epochs: int, seed: int
) -> tuple[MixtureDensityRNN, float, FitResult]:
    """An LSTM with K = 4 components fitted by ``fit`` (with or without the mask)."""
    torch.manual_seed(seed)
    model = MixtureDensityRNN(2, 2, n_components=4, hidden_dim=32).double()
    model.initialize(y, mask)
    start = time.perf_counter()
    result = fit(model, x, y, mask, epochs=epochs, lr=1e-2, seed=seed, verbose=False)
    return model, time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--out", default="examples/figures/sequences.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # small networks: one thread is fastest and leaves cores free
    rng = np.random.default_rng(args.seed)
    points, mask = make_sequences(150 if QUICK else 600, 40, rng)
    x = torch.as_tensor(np.nan_to_num(points[:, :-1]))  # x_t = y_{t-1}: observed up to the end
    y = torch.as_tensor(points[:, 1:])
    m = torch.as_tensor(mask)

    epochs = 5 if QUICK else 150
    model, seconds, result = train(x, y, m, epochs, args.seed)
    print(
        f"{len(y)} sequences, {int(m.sum())} observed steps: {result.epochs_run} epochs "
        f"({result.stop_reason}) in {seconds:.1f} s; validation NLL "
        f"{result.best_val_nll:.3f} nats per step"
    )
    # The same fit without the mask: the padding (zeros) is scored as if it were data.
    unmasked, _, _ = train(x, torch.nan_to_num(y), None, epochs, args.seed)
    test_points, test_mask = make_sequences(400, 40, rng)
    xt = torch.as_tensor(np.nan_to_num(test_points[:, :-1]))
    yt, mt = torch.as_tensor(test_points[:, 1:]), torch.as_tensor(test_mask)
    with torch.no_grad():
        nll = {
            name: float(net.eval().loss(xt, yt, mt).sum() / mt.sum())
            for name, net in (("with the mask", model), ("without (zeros scored)", unmasked))
        }
    print(
        "held-out NLL per observed step (400 new sequences): "
        + ", ".join(f"{name} {value:.3f}" for name, value in nll.items())
    )

    fig = Figure(figsize=(20, 4.8), layout="constrained")
    axes = fig.subplots(1, 4)
    for seq, obs in zip(points[:25], mask[:25]):
        n_obs = int(obs.sum()) + 1
        axes[0].plot(seq[:n_obs, 0], seq[:n_obs, 1], lw=0.8, marker=".", ms=2)
    axes[0].set_title("training sequences (lengths 8 to 40)")

    # A new sequence of the same process; the next point after 1 and after 3 points.
    new = torch.as_tensor(make_sequences(1, 40, rng)[0][:, :4])  # (1, 4, 2)
    model.eval()
    with torch.no_grad():
        mixture, _ = model(new[:, :3])  # batch (1, 3): after 1, 2 and 3 points
        draws = mixture.sample((400,), generator=torch.Generator().manual_seed(args.seed))
    for step, color in ((0, "tab:red"), (2, "tab:blue")):
        axes[1].scatter(
            draws[:, 0, step, 0], draws[:, 0, step, 1], s=3, color=color, alpha=0.5,
            label=f"draws of p(y | first {step + 1} point(s))",
        )  # fmt: skip
    axes[1].plot(new[0, :3, 0], new[0, :3, 1], "ko-", ms=4, label="observed")
    axes[1].legend(fontsize="small", loc="lower left")
    axes[1].set_title("next point: two modes, then one")

    generator = torch.Generator().manual_seed(args.seed)
    with torch.no_grad():  # the state after the first two points; the third is y0
        _, (h, c) = model(new[:, :2])
    state = (h.expand(-1, 12, -1).contiguous(), c.expand(-1, 12, -1).contiguous())
    y0 = new[:, 2].expand(12, 2)  # 12 paths from the same prefix
    for tau, color in ((1.0, "tab:orange"), (0.2, "tab:green")):
        paths = model.generate(
            y0, 20, state, pi_temperature=tau, scale_temperature=tau, generator=generator
        )
        for path in paths.numpy():
            axes[2].plot(path[:, 0], path[:, 1], color=color, lw=0.8, alpha=0.8)
        axes[2].plot([], [], color=color, label=f"temperature {tau:g}")
    axes[2].set_title("20 generated steps, 12 paths each")
    with torch.no_grad():
        _, (h, c) = unmasked(new[:, :2])
    state = (h.expand(-1, 12, -1).contiguous(), c.expand(-1, 12, -1).contiguous())
    paths = unmasked.generate(y0, 20, state, generator=generator)  # temperature 1
    for path in paths.numpy():
        axes[3].plot(path[:, 0], path[:, 1], color="tab:red", lw=0.8, alpha=0.8, marker=".", ms=3)
    axes[3].plot([], [], color="tab:red", marker=".", label="temperature 1")
    axes[3].set_title(
        f"without the mask: the padding is learned as data\n(held-out NLL per step "
        f"{nll['without (zeros scored)']:.2f}, with the mask {nll['with the mask']:.2f})"
    )
    for ax in axes[2:]:
        ax.plot(new[0, :3, 0], new[0, :3, 1], "ko-", ms=4, label="prefix")
        ax.legend(fontsize="small", loc="lower left")
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xlim(-1.5, 1.5)
        ax.set_ylim(-1.5, 1.5)
        circle = np.linspace(0, 2 * math.pi, 200)
        ax.plot(np.cos(circle), np.sin(circle), color="0.85", lw=0.6, zorder=0)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
