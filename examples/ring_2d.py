"""A 2-D response with correlated noise: two arcs of a ring that rotate with the input
===================================================================================

``x ~ U(-1, 1)``; ``y = s r (cos phi, sin phi)`` with angle ``phi = pi x + 0.15 eps1``, radius
``r = 1 + 0.03 eps2`` and a random sign ``s = +-1``. Given ``x``, ``y`` lies on two short arcs
on opposite sides of the unit circle: each is long along the circle and thin across it, and
its orientation turns with ``x``. A full-covariance component can tilt to match an arc;
a diagonal one cannot and needs more components or wider spread (higher NLL).

Run: ``python examples/ring_2d.py [--out examples/figures/ring_2d.png]`` (about 30 s;
``MIXTURE_DENSITY_QUICK=1``: a few seconds, rough fits).
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from mixture_density.estimator import MDNRegressor

QUICK = os.environ.get("MIXTURE_DENSITY_QUICK") == "1"  # the docs build in CI sets it
X_SLICE = 0.3  # input at which the last panel shows the conditional density


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``X`` of shape ``(n, 1)`` and ``Y`` of shape ``(n, 2)``."""
    x = rng.uniform(-1.0, 1.0, size=n)
    phi = np.pi * x + 0.15 * rng.standard_normal(n)
    r = 1.0 + 0.03 * rng.standard_normal(n)
    sign = rng.choice([-1.0, 1.0], size=n)
    return x[:, None], sign[:, None] * r[:, None] * np.column_stack([np.cos(phi), np.sin(phi)])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--out", default="examples/figures/ring_2d.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # small networks: one thread is fastest and leaves cores free

    rng = np.random.default_rng(args.seed)
    X, Y = make_data(1500 if QUICK else 4000, rng)
    X_test, Y_test = make_data(2000, rng)

    models = {}
    for noise_type in ("full", "diagonal"):
        start = time.perf_counter()
        model = MDNRegressor(
            n_components=2,
            noise_type=noise_type,
            patience=40,
            noise_regularization=None,
            random_state=args.seed,
            **({"epochs": 25} if QUICK else {}),
        ).fit(X, Y)
        nll = -model.log_prob(X_test, Y_test).mean()
        print(
            f"K=2, {noise_type:8s}: held-out NLL {nll:.3f} nats "
            f"({time.perf_counter() - start:.1f} s)"
        )
        models[noise_type] = (model, nll)

    fig = Figure(figsize=(17, 4.4), layout="constrained")
    axes = fig.subplots(1, 4)
    scatter = {"s": 2, "c": X[:, 0], "cmap": "coolwarm", "vmin": -1, "vmax": 1}
    axes[0].scatter(Y[:, 0], Y[:, 1], **scatter)
    axes[0].set_title("data (colour: x)")
    for ax, (noise_type, (model, nll)) in zip(axes[1:3], models.items()):
        samples = model.sample(X, random_state=args.seed)[0]  # (n, 2)
        ax.scatter(samples[:, 0], samples[:, 1], **scatter)
        ax.set_title(f"samples, {noise_type} covariance (NLL {nll:.2f})")

    # Conditional density at one input, on a grid, with the data from a thin slice of x.
    grid = np.linspace(-1.4, 1.4, 200)
    g1, g2 = np.meshgrid(grid, grid)
    points = np.column_stack([g1.ravel(), g2.ravel()])
    near = np.abs(X[:, 0] - X_SLICE) < 0.03
    axes[3].scatter(
        Y[near, 0], Y[near, 1], s=4, color="black", label=f"data, |x - {X_SLICE}| < 0.03"
    )
    for (noise_type, (model, _)), color in zip(models.items(), ("tab:blue", "tab:orange")):
        log_p = model.log_prob(np.full((len(points), 1), X_SLICE), points).reshape(g1.shape)
        axes[3].contour(g1, g2, np.exp(log_p), levels=4, colors=color, linewidths=1)
        axes[3].plot([], [], color=color, label=f"p(y | x={X_SLICE}), {noise_type}")
    axes[3].legend(fontsize="small", loc="lower left")
    axes[3].set_title("conditional density at one input")
    for ax in axes:
        ax.set_aspect("equal")
        ax.set_xlim(-1.4, 1.4)
        ax.set_ylim(-1.4, 1.4)
        ax.set_xlabel("y1")
        ax.set_ylabel("y2")

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
