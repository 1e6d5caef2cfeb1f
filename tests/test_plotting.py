"""Tests for mixture_density.plotting on the Agg backend: the artists hold the right numbers."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from types import SimpleNamespace

import matplotlib
import numpy as np
import pytest
import torch

matplotlib.use("Agg")  # before pyplot; headless and deterministic

import matplotlib.pyplot as plt
from matplotlib.collections import QuadMesh

from mixture_density import GaussianMixture, MixtureDensityNetwork
from mixture_density.metrics import coverage_from_pit, pit
from mixture_density.plotting import (
    plot_conditional_density,
    plot_pit_histogram,
    plot_reliability,
    plot_samples_vs_data,
    plot_training_curves,
)

F64 = torch.float64


@pytest.fixture(autouse=True)
def _close_figures() -> Iterator[None]:
    yield
    plt.close("all")


def _two_branches(x: torch.Tensor) -> GaussianMixture:
    """p(y | x) = 0.7 N(y; x, 0.2^2) + 0.3 N(y; -x, 0.3^2), float64."""
    x = x.to(F64)
    n = x.shape[0]
    logits = torch.tensor([0.7, 0.3], dtype=F64).log().expand(n, 2)
    loc = torch.stack([x, -x], dim=-2)  # (n, 2, 1)
    scale = torch.tensor([[0.2], [0.3]], dtype=F64).expand(n, 2, 1)
    return GaussianMixture(logits, loc, scale=scale)


def test_conditional_density_image_matches_log_prob() -> None:
    x_grid = np.linspace(-1, 1, 30)
    y_grid = np.linspace(-2, 2, 40)
    ax = plot_conditional_density(_two_branches, x_grid, y_grid, data=([0.1, 0.2], [0.3, 0.4]))
    mesh = ax.collections[0]
    assert isinstance(mesh, QuadMesh)
    # Plain callables get inputs in the default dtype (float32 here).
    dist = _two_branches(torch.as_tensor(x_grid, dtype=torch.float32).reshape(-1, 1))
    expected = dist.log_prob(torch.as_tensor(y_grid).reshape(-1, 1, 1)).exp().numpy()
    np.testing.assert_allclose(np.asarray(mesh.get_array()), expected, rtol=1e-12)
    lines = {line.get_label(): line for line in ax.lines}
    np.testing.assert_allclose(lines["mean"].get_ydata(), 0.4 * x_grid, atol=1e-12)
    # Global mode is the heavier branch y = x (up to the small pull of the other one).
    np.testing.assert_allclose(
        lines["mode"].get_ydata()[np.abs(x_grid) > 0.5], x_grid[np.abs(x_grid) > 0.5], atol=1e-3
    )
    scatter = ax.collections[1]
    np.testing.assert_allclose(scatter.get_offsets(), [[0.1, 0.3], [0.2, 0.4]])
    assert len(ax.figure.axes) == 2  # the heat map and its colour bar


def test_conditional_density_all_local_modes_find_both_branches() -> None:
    ax = plot_conditional_density(
        _two_branches, (0.6, 1.0), (-2, 2), resolution=101, show_modes="all", show_mean=False
    )
    local = {line.get_label(): line for line in ax.lines}["local modes"]
    x, y = local.get_xdata(), local.get_ydata()
    for xi in np.unique(x):
        found = np.sort(y[x == xi])
        assert found.shape == (2,)
        np.testing.assert_allclose(found, [-xi, xi], atol=0.05)  # grid step 0.04


def test_conditional_density_log_scale_and_no_extras() -> None:
    ax = plot_conditional_density(
        _two_branches, (-1, 1), (-2, 2), resolution=20, show_mean=False, show_modes=False,
        log_density=True, colorbar=False,
    )  # fmt: skip
    x = torch.as_tensor(np.linspace(-1, 1, 20), dtype=torch.float32)  # what the plot passes
    dist = _two_branches(x.reshape(-1, 1))
    expected = dist.log_prob(torch.linspace(-2, 2, 20, dtype=F64).reshape(-1, 1, 1)).numpy()
    np.testing.assert_allclose(np.asarray(ax.collections[0].get_array()), expected, rtol=1e-12)
    assert len(ax.lines) == 0 and ax.get_legend() is None
    assert len(ax.figure.axes) == 1


def test_conditional_density_accepts_modules_and_estimators() -> None:
    torch.manual_seed(0)
    net = MixtureDensityNetwork(1, 1, 3, hidden_dim=8, dropout=0.5)
    net.train()
    ax = plot_conditional_density(net, (-1, 1), (-3, 3), resolution=16, colorbar=False)
    assert net.training  # mode restored
    net.eval()
    with torch.no_grad():
        dist = net(torch.linspace(-1, 1, 16).reshape(-1, 1))
        expected = dist.log_prob(torch.linspace(-3, 3, 16).reshape(-1, 1, 1)).exp()
    # Eval mode while plotting: no dropout noise, so the picture matches the eval densities.
    np.testing.assert_allclose(
        np.asarray(ax.collections[0].get_array()), expected.double().numpy(), rtol=1e-5
    )

    estimator = SimpleNamespace(
        predict_distribution=lambda X: _two_branches(torch.as_tensor(X, dtype=F64))
    )
    ax = plot_conditional_density(estimator, (-1, 1), (-2, 2), resolution=10, colorbar=False)
    assert np.asarray(ax.collections[0].get_array()).shape == (10, 10)


def test_conditional_density_rejects_bad_input() -> None:
    with pytest.raises(TypeError, match="model must be"):
        plot_conditional_density(42, (-1, 1), (-1, 1))
    with pytest.raises(ValueError, match="y_range must be"):
        plot_conditional_density(_two_branches, (-1, 1), (1, -1))

    def two_targets(x: torch.Tensor) -> GaussianMixture:
        return GaussianMixture(
            torch.zeros(len(x), 1), torch.zeros(len(x), 1, 2), scale=torch.tensor(1.0)
        )

    with pytest.raises(ValueError, match=r"event_shape \(1,\), got .* event_shape \(2,\)"):
        plot_conditional_density(two_targets, (-1, 1), (-1, 1), resolution=5)


def test_samples_vs_data_share_bins_and_scale() -> None:
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, 400)
    y = x**2 + 0.1 * rng.normal(size=400)
    y_samp = x[:, None] ** 2 + 0.1 * rng.normal(size=(3, 400, 1))  # (S, n, 1) as from model.sample
    ax_data, ax_samp = plot_samples_vs_data(x, y, torch.as_tensor(x), y_samp, bins=12)
    mesh_data, mesh_samp = ax_data.collections[0], ax_samp.collections[0]
    x_edges, y_edges = np.histogram_bin_edges(x, 12), np.histogram_bin_edges(y, 12)
    expected = np.histogram2d(x, y, (x_edges, y_edges), density=True)[0].T
    np.testing.assert_allclose(np.asarray(mesh_data.get_array()).reshape(12, 12), expected)
    expected_samp = np.histogram2d(np.tile(x, 3), y_samp.ravel(), (x_edges, y_edges), density=True)[
        0
    ].T
    np.testing.assert_allclose(np.asarray(mesh_samp.get_array()).reshape(12, 12), expected_samp)
    assert mesh_data.get_clim() == mesh_samp.get_clim()
    assert (ax_data.get_title(), ax_samp.get_title()) == ("data", "model samples")
    with pytest.raises(ValueError, match="x_samples"):
        plot_samples_vs_data(x, y, x[:10], y_samp)


def test_pit_histogram_bars_match_numpy() -> None:
    u = np.random.default_rng(1).uniform(size=500)
    ax = plot_pit_histogram(torch.as_tensor(u).reshape(50, 10), bins=8)
    bars = ax.containers[0]
    assert len(bars) == 8
    expected = np.histogram(u, bins=8, range=(0, 1), density=True)[0]
    np.testing.assert_allclose([bar.get_height() for bar in bars], expected)
    with pytest.raises(ValueError, match=r"pit_values must lie in \[0, 1\]"):
        plot_pit_histogram([0.5, 1.5])
    with pytest.raises(ValueError, match="bins"):
        plot_pit_histogram([0.5], bins=0)


def test_reliability_from_distribution_and_from_pit_agree() -> None:
    torch.manual_seed(2)
    x = torch.rand(300, 1, dtype=F64)
    dist = _two_branches(x)
    y = dist.sample()
    levels = (0.2, 0.5, 0.9)
    _fig, (left, right) = plt.subplots(1, 2)
    plot_reliability(dist, y, levels=levels, ax=left)
    plot_reliability(pit(dist, y).numpy(), levels=levels, ax=right, label="model")
    expected = list(coverage_from_pit(pit(dist, y), levels).values())
    for ax in (left, right):
        assert list(ax.lines[-1].get_xdata()) == list(levels)
        np.testing.assert_allclose(ax.lines[-1].get_ydata(), expected)
    # A second model on the same Axes adds one curve and no second reference line.
    plot_reliability(dist, y + 0.5, levels=levels, ax=right, label="shifted")
    assert [line.get_label() for line in right.lines] == ["ideal", "model", "shifted"]
    with pytest.raises(ValueError, match="no y"):
        plot_reliability(dist)


def test_training_curves_from_records_and_fit_result() -> None:
    history = [
        {"epoch": 1, "train_nll": 2.0, "val_nll": 2.1},
        {"epoch": 2, "train_nll": 1.5, "val_nll": float("nan")},
        {"epoch": 3, "train_nll": 1.2, "val_nll": 1.4},
    ]
    ax = plot_training_curves(history)
    train, val = ax.lines
    assert list(train.get_xdata()) == [1, 2, 3] and list(val.get_xdata()) == [1, 3]
    result = SimpleNamespace(history=history, best_epoch=3)
    ax = plot_training_curves(result, log_scale=True)
    assert ax.lines[-1].get_label() == "best epoch (3)" and ax.get_yscale() == "log"
    no_val = [{"epoch": 1, "train_nll": 1.0, "val_nll": float("nan")}]
    assert [line.get_label() for line in plot_training_curves(no_val).lines] == ["train"]
    with pytest.raises(ValueError, match="at least one"):
        plot_training_curves([])


def test_missing_matplotlib_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install mixture-density\[plot\]"):
        plot_pit_histogram([0.5])


def test_importing_the_package_leaves_optional_dependencies_out() -> None:
    code = (
        "import sys, mixture_density, mixture_density.metrics, mixture_density.plotting\n"
        "mixture_density.GaussianMixture\n"
        "bad = sorted({'matplotlib', 'sklearn', 'scipy'} & set(sys.modules))\n"
        "assert not bad, bad\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
