"""``mdn demo``: Bishop's inverse problem, fitted, scored against the truth and plotted.

``y ~ U(-1, 1)``, ``x = 7 sin(5y) + 0.5y + 0.5 eps``: the forward map ``y -> x`` is single
valued, but ``x -> y`` has up to five branches, so the conditional mean is a poor summary and
a unimodal model fails. The command prints the held-out NLL next to the true conditional
density's (by quadrature), the errors of the mean, the mode and the nearest branch, and the
coverage of central intervals, and writes a figure.
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

from ._files import check_output_path, figure_suffixes, save_figure
from .estimator import MDNRegressor

__all__ = ["inverse_problem_data", "run_demo", "true_conditional_log_prob"]

# The demo: Bishop's inverse problem. Forward map y -> x is single valued, but x -> y has up
# to five branches, so the conditional mean is a poor summary and a unimodal model fails.
_DEMO_NOISE = 0.5  # standard deviation of the noise on x
_DEMO_LEVELS = (0.5, 0.9)
# Components below this weight are not counted as branches by the nearest-branch error.
_BRANCH_MIN_WEIGHT = 0.05


def _forward(y: np.ndarray) -> np.ndarray:
    return 7.0 * np.sin(5.0 * y) + 0.5 * y


def inverse_problem_data(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Bishop's inverse problem: ``y ~ U(-1, 1)``, ``x = 7 sin(5 y) + 0.5 y + 0.5 eps``.

    Returns:
        ``X`` of shape ``(n, 1)`` and ``y`` of shape ``(n,)``.
    """
    y = rng.uniform(-1.0, 1.0, size=n)
    x = _forward(y) + _DEMO_NOISE * rng.standard_normal(n)
    return x[:, None], y


def true_conditional_log_prob(x: np.ndarray, y: np.ndarray, grid_size: int = 8001) -> np.ndarray:
    """Exact ``log p(y | x)`` of the inverse problem, normalized by quadrature over ``y``.

    ``p(y | x) = N(x; f(y), 0.5^2) 1[|y| <= 1] / Z(x)`` with ``Z(x) = int_{-1}^{1} N(x; f(u),
    0.5^2) du`` by the trapezoid rule. The integrand has width about
    ``0.5 / max|f'| = 0.014`` in ``u``; the default grid step ``2.5e-4`` resolves it well.

    Args:
        x: ``(n,)`` inputs.
        y: ``(n,)`` targets.
        grid_size: quadrature points on ``[-1, 1]``.

    Returns:
        ``(n,)`` log densities (``-inf`` outside ``[-1, 1]``).
    """
    u = np.linspace(-1.0, 1.0, grid_size)
    log_norm = -0.5 * math.log(2 * math.pi) - math.log(_DEMO_NOISE)
    x = np.asarray(x, dtype=np.float64).reshape(-1)
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    log_z = np.empty_like(x)
    for start in range(0, len(x), 256):  # bounded (256, grid_size) blocks
        r = (x[start : start + 256, None] - _forward(u)[None, :]) / _DEMO_NOISE
        log_kernel = log_norm - 0.5 * r**2  # (b, grid)
        peak = log_kernel.max(axis=1, keepdims=True)
        integral = np.trapezoid(np.exp(log_kernel - peak), u, axis=1)
        log_z[start : start + 256] = peak[:, 0] + np.log(integral)
    log_lik = log_norm - 0.5 * ((x - _forward(y)) / _DEMO_NOISE) ** 2
    return np.where(np.abs(y) <= 1.0, log_lik - log_z, -np.inf)


def run_demo(args: argparse.Namespace) -> int:
    """Runs ``mdn demo`` with the parsed arguments; returns the exit status."""
    import torch

    from .metrics import interval_coverage

    check_output_path(args.out, option="--out", suffixes=figure_suffixes())
    n_train = args.n if args.n is not None else (600 if args.quick else 3000)
    rng = np.random.default_rng(args.seed)
    X, y = inverse_problem_data(n_train, rng)
    X_test, y_test = inverse_problem_data(2000, rng)

    # No noise regularization: the rule of thumb (std n^(-1/6) ~ 0.27 of a standard deviation)
    # blurs the branches, which are only 0.1 standard deviations of x wide.
    model = MDNRegressor(
        n_components=3,
        epochs=40 if args.quick else 400,
        patience=60,
        noise_regularization=None,
        random_state=args.seed,
    )
    print(
        "inverse problem: y ~ U(-1, 1), x = 7 sin(5y) + 0.5y + 0.5 eps; fit p(y | x) with "
        "K=3 components per network"
    )
    start = time.perf_counter()
    model.fit(X, y)
    seconds = time.perf_counter() - start
    result = model.fit_results_[0]
    print(
        f"trained on {n_train} rows: {model.plan_.summary()}; {result.epochs_run} epochs "
        f"({result.stop_reason}), {seconds:.1f} s"
    )

    dist = model._mixture(X_test)  # a plain target: the GaussianMixture itself
    nll = float(-model.log_prob(X_test, y_test).mean())
    true_nll = float(-true_conditional_log_prob(X_test[:, 0], y_test).mean())
    mean_err = np.abs(model.predict(X_test) - y_test).mean()
    mode_err = np.abs(model.predict_mode(X_test) - y_test).mean()
    with torch.no_grad():
        branch = dist.loc[..., 0].double().numpy()  # (n, K)
        weight = dist.probs.double().numpy()  # (n, K)
    gap = np.where(weight >= _BRANCH_MIN_WEIGHT, np.abs(branch - y_test[:, None]), np.inf)
    branch_err = gap.min(axis=1).mean()
    coverage = interval_coverage(dist, torch.as_tensor(y_test, dtype=dist.loc.dtype), _DEMO_LEVELS)

    print(f"held-out NLL: {nll:.3f} nats (true conditional density: {true_nll:.3f})")
    print(f"mean absolute error of the conditional mean: {mean_err:.3f}")
    print(f"mean absolute error of the conditional mode: {mode_err:.3f}")
    print(f"mean absolute error of the nearest branch:   {branch_err:.3f}")
    print("  (the mean averages the branches; the nearest component mean finds the right one)")
    for level, value in coverage.items():
        print(f"coverage of the central {level:.0%} interval: {value:.1%}")
    _demo_figure(model, X, y, args.out, seed=args.seed)
    print(f"wrote {args.out}")
    return 0


def _demo_figure(model: MDNRegressor, X: np.ndarray, y: np.ndarray, path: str, seed: int) -> None:
    from matplotlib.figure import Figure

    from .plotting import plot_conditional_density, plot_samples_vs_data

    # A bare Figure (no pyplot): no GUI backend, no global figure registry to clean up.
    fig = Figure(figsize=(16, 4.8), layout="constrained")
    ax_density, ax_data, ax_samples = fig.subplots(1, 3)
    x_lo, x_hi = float(X.min()), float(X.max())
    plot_conditional_density(
        model, (x_lo, x_hi), (-1.3, 1.3), data=(X[:1000, 0], y[:1000]), ax=ax_density
    )
    ax_density.set_title("model p(y | x), data, mean and mode")
    samples = model.sample(X, n_samples=1, random_state=seed)  # (1, n)
    plot_samples_vs_data(X[:, 0], y, X[:, 0], samples, bins=60, axes=(ax_data, ax_samples))
    ax_samples.sharey(ax_data)
    fig.suptitle("Inverse problem x = 7 sin(5y) + 0.5y + noise: one x, several y")
    save_figure(fig, path)
