"""Bishop's inverse problem: one Gaussian versus a mixture of three
================================================================

``y ~ U(-1, 1)``, ``x = 7 sin(5y) + 0.5y + 0.5 eps``. Predicting ``y`` from ``x`` is an inverse
problem: up to five values of ``y`` give the same ``x``. A single Gaussian (K=1, what a
regression network with a Gaussian likelihood fits) spreads over all branches; a mixture of
K=3 components puts a narrow component on each branch.

Run: ``python examples/inverse_problem.py [--out examples/figures/inverse_problem.png]``
(about 15 s on one CPU thread; ``MIXTURE_DENSITY_QUICK=1``: a few seconds, rough fits).
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
from mixture_density.plotting import plot_conditional_density, plot_training_curves

QUICK = os.environ.get("MIXTURE_DENSITY_QUICK") == "1"  # the docs build in CI sets it


def make_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``X`` of shape ``(n, 1)`` and ``y`` of shape ``(n,)``."""
    y = rng.uniform(-1.0, 1.0, size=n)
    x = 7.0 * np.sin(5.0 * y) + 0.5 * y + 0.5 * rng.standard_normal(n)
    return x[:, None], y


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.partition("\n")[0])
    parser.add_argument("--out", default="examples/figures/inverse_problem.png")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)  # small networks: one thread is fastest and leaves cores free

    rng = np.random.default_rng(args.seed)
    X, y = make_data(1000 if QUICK else 3000, rng)
    X_test, y_test = make_data(2000, rng)

    fig = Figure(figsize=(15, 4.5), layout="constrained")
    axes = fig.subplots(1, 3)
    models = {}
    for ax, k in zip(axes[:2], (1, 3)):
        start = time.perf_counter()
        # No noise regularization: the branches are narrow compared with the spread of x.
        model = MDNRegressor(
            n_components=k,
            patience=60,
            noise_regularization=None,
            random_state=args.seed,
            **({"epochs": 25} if QUICK else {}),
        ).fit(X, y)
        nll = -model.log_prob(X_test, y_test).mean()
        print(f"K={k}: held-out NLL {nll:.3f} nats ({time.perf_counter() - start:.1f} s)")
        plot_conditional_density(
            model, (X[:, 0].min(), X[:, 0].max()), (-1.3, 1.3), data=(X[:800, 0], y[:800]), ax=ax
        )
        ax.set_title(f"K = {k}: held-out NLL {nll:.2f}")
        models[k] = model
    plot_training_curves(models[3].fit_results_[0], ax=axes[2])
    axes[2].set_title("K = 3: training curves (standardized units)")

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
