"""Diagnostic figures for mixture density models (matplotlib, an optional extra).

matplotlib is imported inside the functions, so importing this module costs nothing and works
without it; calling a function without matplotlib raises :class:`ImportError` with the install
hint ``pip install mixture-density[plot]``.

Every function draws into ``ax`` (or ``axes``) when given, otherwise into a new figure made
with :func:`matplotlib.pyplot.subplots`, and returns the Axes. Nothing here calls
``plt.show()`` or changes matplotlib's global settings.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch
from torch import Tensor

from .metrics import coverage_from_pit, pit

if TYPE_CHECKING:
    from matplotlib.axes import Axes

    from .distribution import GaussianMixture

__all__ = [
    "plot_conditional_density",
    "plot_pit_histogram",
    "plot_reliability",
    "plot_samples_vs_data",
    "plot_training_curves",
]

_INSTALL_HINT = "plotting needs matplotlib; install it with `pip install mixture-density[plot]`"

# Grid points per axis when a range (lo, hi) is given instead of explicit grid values.
_DEFAULT_RESOLUTION = 200

# A grid local maximum counts as a mode only above this fraction of the column's peak
# density: the log-density of far tails is smooth but tiny ripples of round-off there would
# otherwise show up as spurious "modes".
_LOCAL_MODE_MIN_RELATIVE_DENSITY = 1e-3

# Two-sided 95% normal quantile for the sampling bands under perfect calibration.
_Z_95 = 1.959963984540054

# Nominal levels drawn by plot_reliability by default: 0.05, 0.10, ..., 0.95.
_RELIABILITY_LEVELS: tuple[float, ...] = tuple(round(0.05 * i, 2) for i in range(1, 20))


def plot_conditional_density(
    model: Any,
    x_range: tuple[float, float] | Sequence[float] | np.ndarray | Tensor,
    y_range: tuple[float, float] | Sequence[float] | np.ndarray | Tensor,
    *,
    data: tuple[Any, Any] | None = None,
    show_mean: bool = True,
    show_modes: bool | Literal["all"] = True,
    resolution: int = _DEFAULT_RESOLUTION,
    log_density: bool = False,
    colorbar: bool = True,
    cmap: str = "viridis",
    ax: Axes | None = None,
) -> Axes:
    """Heat map of ``p(y | x)`` over a grid, for 1-D inputs and 1-D targets.

    Args:
        model: what maps inputs to a predicted mixture: an ``nn.Module`` such as
            ``MixtureDensityNetwork`` (called on an ``(n, 1)`` tensor of its parameters' dtype
            and device, in eval mode and without gradients; its train/eval mode is restored),
            an object with ``predict_distribution(X)`` taking an ``(n, 1)`` numpy array (e.g.
            ``MDNRegressor``), or any callable taking an ``(n, 1)`` tensor. The result must
            have ``batch_shape (n,)`` and ``event_shape (1,)``.
        x_range: ``(lo, hi)`` for ``resolution`` evenly spaced inputs, or the grid values.
        y_range: ``(lo, hi)`` for ``resolution`` evenly spaced targets, or the grid values.
        data: optional observed ``(x, y)`` drawn as points (any array-likes of ``n`` values).
        show_mean: draw the conditional mean ``E[y | x]``.
        show_modes: draw the highest-density point ``dist.mode``; ``"all"`` also marks every
            local maximum of the density along each grid column (resolution-limited).
        resolution: grid points per axis for ranges.
        log_density: colour by ``log p(y | x)`` instead of ``p(y | x)``.
        colorbar: add a colour bar to the figure.
        cmap: matplotlib colour map name.
        ax: Axes to draw into; a new figure when ``None``.

    Returns:
        The Axes. Its first collection is the ``QuadMesh`` whose array holds the plotted
        values, shape ``(n_y, n_x)``.

    Raises:
        ImportError: without matplotlib.
        TypeError: ``model`` is neither callable nor has ``predict_distribution``.
        ValueError: a bad range, or the model's output is not a 1-D mixture over the grid.

    Example:
        >>> import torch
        >>> from mixture_density import GaussianMixture
        >>> from mixture_density.plotting import plot_conditional_density
        >>> def model(x):  # two branches, y = +-x
        ...     loc = torch.stack([x, -x], dim=-2)  # (n, 2, 1)
        ...     return GaussianMixture(torch.zeros(len(x), 2), loc, scale=torch.tensor(0.2))
        >>> ax = plot_conditional_density(model, (-1, 1), (-2, 2), resolution=50)
        >>> ax.collections[0].get_array().shape
        (50, 50)
    """
    x_grid = _grid(x_range, resolution, "x_range")
    y_grid = _grid(y_range, resolution, "y_range")
    if data is not None and (len(data) != 2 or len(data[0]) != len(data[1])):
        raise ValueError("data must be a pair (x, y) of equally long array-likes")
    dist = _predict(model, x_grid)
    n_x, n_y = len(x_grid), len(y_grid)
    if tuple(dist.batch_shape) != (n_x,) or tuple(dist.event_shape) != (1,):
        raise ValueError(
            "plot_conditional_density needs a model with 1-D inputs and 1-D targets: for an "
            f"({n_x}, 1) input it must return batch_shape ({n_x},) and event_shape (1,), got "
            f"batch_shape {tuple(dist.batch_shape)} and event_shape {tuple(dist.event_shape)}"
        )
    with torch.no_grad():
        y_eval = torch.as_tensor(y_grid, dtype=dist.loc.dtype, device=dist.loc.device)
        log_p = dist.log_prob(y_eval.reshape(n_y, 1, 1))  # (n_y, n_x)
        log_p_np = log_p.double().cpu().numpy()
        mean = dist.mean[:, 0].double().cpu().numpy() if show_mean else None
        mode = dist.mode[:, 0].double().cpu().numpy() if show_modes else None

    ax = _axes(ax)
    values = log_p_np if log_density else np.exp(log_p_np)
    mesh = ax.pcolormesh(x_grid, y_grid, values, shading="nearest", cmap=cmap)
    if colorbar:
        ax.figure.colorbar(mesh, ax=ax, label="log p(y | x)" if log_density else "p(y | x)")
    if data is not None:
        x_obs, y_obs = _as_flat_array(data[0], "data[0]"), _as_flat_array(data[1], "data[1]")
        ax.scatter(x_obs, y_obs, s=4, color="white", alpha=0.4, edgecolors="none", label="data")
    if mean is not None:
        ax.plot(x_grid, mean, color="tab:orange", lw=1.5, label="mean")
    if show_modes == "all":
        cols, rows = _grid_local_maxima(np.exp(log_p_np))
        ax.plot(x_grid[cols], y_grid[rows], ".", ms=2, color="tab:pink", label="local modes")
    if mode is not None:
        # Markers, not a line: the global mode jumps between branches.
        ax.plot(x_grid, mode, ".", ms=3, color="tab:red", label="mode")
    ax.set_xlim(x_grid[0], x_grid[-1])
    ax.set_ylim(y_grid[0], y_grid[-1])
    ax.set_xlabel("x")
    ax.set_ylabel("y")
    if data is not None or show_mean or show_modes:
        ax.legend(loc="upper right", fontsize="small")
    return ax


def plot_samples_vs_data(
    x: Any,
    y: Any,
    x_samples: Any,
    y_samples: Any,
    *,
    bins: int = 50,
    cmap: str = "viridis",
    axes: Sequence[Axes] | None = None,
) -> tuple[Axes, Axes]:
    """Side-by-side 2-D histograms of the data ``(x, y)`` and of model samples.

    The classic MDN check: if the model is right, samples drawn at the observed inputs look
    like the data. Both panels use the same bin edges (from the data's range) and the same
    colour scale of densities, so they compare directly even with different sample counts.

    Args:
        x: ``(n,)`` observed inputs.
        y: ``(n,)`` observed targets.
        x_samples: inputs of the samples, broadcastable to ``y_samples`` (e.g. ``x`` itself for
            ``y_samples`` of shape ``(S, n)`` from ``model.sample(x, (S,))``).
        y_samples: sampled targets; trailing size-1 dims are dropped.
        bins: bins per axis.
        cmap: matplotlib colour map name.
        axes: two Axes to draw into; a new 1 x 2 figure when ``None``.

    Returns:
        ``(data_axes, samples_axes)``.

    Raises:
        ImportError: without matplotlib.
        ValueError: mismatched lengths or not two Axes.

    Example:
        >>> import numpy as np
        >>> from mixture_density.plotting import plot_samples_vs_data
        >>> rng = np.random.default_rng(0)
        >>> x = rng.uniform(-1, 1, 500)
        >>> y = np.sin(3 * x) + 0.1 * rng.normal(size=500)
        >>> y_samp = np.sin(3 * x) + 0.1 * rng.normal(size=(4, 500))  # 4 draws per input
        >>> ax_data, ax_samples = plot_samples_vs_data(x, y, x, y_samp, bins=20)
        >>> ax_samples.get_title()
        'model samples'
    """
    x_obs, y_obs = _as_flat_array(x, "x"), _as_flat_array(y, "y")
    if x_obs.shape != y_obs.shape:
        raise ValueError(f"x and y must have the same length, got {len(x_obs)} and {len(y_obs)}")
    y_s = _drop_trailing_ones(_as_array(y_samples))
    x_s = _drop_trailing_ones(_as_array(x_samples))
    try:
        x_s = np.broadcast_to(x_s, y_s.shape)
    except ValueError as err:
        raise ValueError(
            f"x_samples (shape {x_s.shape}) must broadcast to y_samples (shape {y_s.shape})"
        ) from err
    if axes is None:
        plt = _pyplot()
        _, created = plt.subplots(1, 2, figsize=(10, 4), sharex=True, sharey=True)
        axes = tuple(created)
    if len(axes) != 2:
        raise ValueError(f"axes must hold 2 Axes, got {len(axes)}")
    x_edges = np.histogram_bin_edges(x_obs, bins)
    y_edges = np.histogram_bin_edges(y_obs, bins)
    h_obs = np.histogram2d(x_obs, y_obs, (x_edges, y_edges), density=True)[0]
    h_s = np.histogram2d(x_s.ravel(), y_s.ravel(), (x_edges, y_edges), density=True)[0]
    vmax = max(h_obs.max(), h_s.max())
    for ax, h, title in zip(axes, (h_obs, h_s), ("data", "model samples")):
        ax.pcolormesh(x_edges, y_edges, h.T, vmin=0.0, vmax=vmax, cmap=cmap)
        ax.set_title(title)
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    return axes[0], axes[1]


def plot_pit_histogram(
    pit_values: Any,
    *,
    bins: int = 10,
    band: bool = True,
    ax: Axes | None = None,
) -> Axes:
    """Histogram of PIT values (density scale), with the uniform reference.

    A calibrated forecast gives a flat histogram at 1; a U shape means too narrow predictions,
    a hump too wide ones, a slope a biased location.

    Args:
        pit_values: PIT values in ``[0, 1]`` of any shape (pooled), e.g. from
            :func:`mixture_density.metrics.pit`.
        bins: number of equal-width bins on ``[0, 1]``.
        band: shade the central 95% range of a bin's height under perfect calibration (normal
            approximation to the binomial bin count, i.i.d. values assumed).
        ax: Axes to draw into; a new figure when ``None``.

    Returns:
        The Axes; ``ax.containers[0]`` holds the ``bins`` bars.

    Raises:
        ImportError: without matplotlib.
        ValueError: empty input, values outside ``[0, 1]`` or ``bins < 1``.

    Example:
        >>> import numpy as np
        >>> from mixture_density.plotting import plot_pit_histogram
        >>> ax = plot_pit_histogram(np.random.default_rng(0).uniform(size=1000), bins=20)
        >>> len(ax.containers[0])
        20
    """
    u = _as_flat_array(pit_values, "pit_values")
    if u.size == 0:
        raise ValueError("pit_values must not be empty")
    if not np.all((u >= 0.0) & (u <= 1.0)):
        raise ValueError(
            f"pit_values must lie in [0, 1], got values in [{np.nanmin(u)}, {np.nanmax(u)}]"
        )
    if isinstance(bins, bool) or not isinstance(bins, int) or bins < 1:
        raise ValueError(f"bins must be a positive integer, got {bins!r}")
    ax = _axes(ax)
    if band:
        p = 1.0 / bins
        half = _Z_95 * math.sqrt((1.0 - p) / (u.size * p))
        # Translucent and above the bars, so that it shows where a bar leaves it.
        lo, hi = max(0.0, 1.0 - half), 1.0 + half
        ax.axhspan(lo, hi, color="0.5", alpha=0.3, zorder=3, label="95% band")
    ax.hist(u, bins=bins, range=(0.0, 1.0), density=True, color="tab:blue", ec="white", alpha=0.8)
    ax.axhline(1.0, color="0.2", ls="--", lw=1, zorder=4, label="uniform")
    ax.set_xlim(0.0, 1.0)
    ax.set_xlabel("PIT value")
    ax.set_ylabel("density")
    ax.legend(loc="lower right", fontsize="small")
    return ax


def plot_reliability(
    dist_or_pit: GaussianMixture | Any,
    y: Any = None,
    *,
    levels: Iterable[float] = _RELIABILITY_LEVELS,
    band: bool = True,
    ax: Axes | None = None,
    label: str | None = None,
) -> Axes:
    """Reliability diagram: observed vs nominal coverage of central prediction intervals.

    Args:
        dist_or_pit: a predicted ``GaussianMixture`` (then give ``y``), or PIT values in
            ``[0, 1]`` of any shape.
        y: observations for the distribution, as in :func:`mixture_density.metrics.pit`.
        levels: nominal levels in ``(0, 1)`` (default 0.05, 0.10, ..., 0.95).
        band: shade ``level +- 1.96 sqrt(level (1 - level) / n)``, the 95% range of observed
            coverage under perfect calibration for ``n`` independent values (for ``D > 1`` the
            dims of one row are pooled and need not be independent: read it as a guide).
        ax: Axes to draw into; a new figure when ``None``. Call again with the same ``ax`` and
            a ``label`` to compare models.
        label: legend label of the curve.

    Returns:
        The Axes; its last line holds ``(levels, observed coverage)``.

    Raises:
        ImportError: without matplotlib.
        ValueError: bad levels, PIT values outside ``[0, 1]``, or a badly shaped ``y``.

    Example:
        >>> import numpy as np
        >>> from mixture_density.plotting import plot_reliability
        >>> ax = plot_reliability(np.random.default_rng(0).uniform(size=1000), levels=(0.5, 0.9))
        >>> ax.lines[-1].get_xdata().tolist()
        [0.5, 0.9]
    """
    if y is not None:
        u = pit(dist_or_pit, y).detach().double().cpu()
    elif hasattr(dist_or_pit, "log_prob"):
        raise ValueError("plot_reliability got a distribution but no y: pass the observations")
    else:
        u = torch.as_tensor(_as_flat_array(dist_or_pit, "dist_or_pit"))
        if not bool(((u >= 0) & (u <= 1)).all()):
            raise ValueError("PIT values passed as dist_or_pit must lie in [0, 1]")
    coverage = coverage_from_pit(u, levels)
    nominal = np.array(list(coverage))
    observed = np.array(list(coverage.values()))
    ax = _axes(ax)
    # Reference artists once per Axes, so that several models can share one diagram.
    if not any(line.get_label() == "ideal" for line in ax.lines):
        if band:
            half = _Z_95 * np.sqrt(nominal * (1 - nominal) / u.numel())
            ax.fill_between(nominal, nominal - half, nominal + half, color="0.88", label="95% band")
        ax.plot([0, 1], [0, 1], color="0.3", ls="--", lw=1, label="ideal")
    ax.plot(nominal, observed, marker="o", ms=3, label=label or "observed")
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.0)
    ax.set_aspect("equal")
    ax.set_xlabel("nominal central-interval level")
    ax.set_ylabel("observed coverage")
    ax.legend(loc="upper left", fontsize="small")
    return ax


def plot_training_curves(
    history: Sequence[Mapping[str, float]] | Any,
    *,
    log_scale: bool = False,
    ax: Axes | None = None,
) -> Axes:
    """Training and validation NLL per epoch.

    Args:
        history: a list of records with keys ``epoch``, ``train_nll`` and optionally
            ``val_nll`` (missing or NaN values are skipped), or a ``FitResult``, whose
            ``best_epoch`` is then marked.
        log_scale: logarithmic y axis (only sensible while every NLL is positive).
        ax: Axes to draw into; a new figure when ``None``.

    Returns:
        The Axes, with one line per curve that has values.

    Raises:
        ImportError: without matplotlib.
        ValueError: an empty history or records without ``epoch``.

    Example:
        >>> from mixture_density.plotting import plot_training_curves
        >>> history = [{"epoch": e, "train_nll": 1 / e, "val_nll": 1.2 / e} for e in (1, 2, 3)]
        >>> [line.get_label() for line in plot_training_curves(history).lines]
        ['train', 'validation']
    """
    records = getattr(history, "history", history)
    best_epoch = getattr(history, "best_epoch", None)
    if not records:
        raise ValueError("history must hold at least one epoch record, got none")
    if any("epoch" not in record for record in records):
        raise ValueError("every history record needs an 'epoch' key")
    ax = _axes(ax)
    drawn = False
    for key, name in (("train_nll", "train"), ("val_nll", "validation")):
        points = [
            (float(r["epoch"]), float(r[key]))
            for r in records
            if r.get(key) is not None and math.isfinite(float(r[key]))
        ]
        if points:
            epochs, values = zip(*points)
            ax.plot(epochs, values, marker="." if len(points) < 50 else None, label=name)
            drawn = True
    if best_epoch is not None and drawn:
        ax.axvline(best_epoch, color="0.4", ls=":", lw=1, label=f"best epoch ({best_epoch})")
    if log_scale:
        ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("NLL per sample")
    if drawn:
        ax.legend(fontsize="small")
    return ax


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as err:
        raise ImportError(_INSTALL_HINT) from err
    return plt


def _axes(ax: Axes | None) -> Axes:
    if ax is not None:
        return ax
    _, new = _pyplot().subplots()
    return new


def _as_array(values: Any) -> np.ndarray:
    if isinstance(values, Tensor):
        values = values.detach().cpu().double().numpy()
    return np.asarray(values, dtype=np.float64)


def _drop_trailing_ones(values: np.ndarray) -> np.ndarray:
    while values.ndim > 1 and values.shape[-1] == 1:
        values = values[..., 0]
    return values


def _as_flat_array(values: Any, name: str) -> np.ndarray:
    try:
        return _as_array(values).reshape(-1)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be numeric array-like, got {type(values).__name__}") from err


def _grid(spec: Any, resolution: int, name: str) -> np.ndarray:
    """``(lo, hi)`` -> ``resolution`` evenly spaced values; longer sequences are the grid."""
    values = _as_flat_array(spec, name)
    if len(values) == 2:
        if isinstance(resolution, bool) or not isinstance(resolution, int) or resolution < 2:
            raise ValueError(f"resolution must be an integer >= 2, got {resolution!r}")
        values = np.linspace(values[0], values[1], resolution)
    if len(values) < 2 or not np.all(np.isfinite(values)) or not np.all(np.diff(values) > 0):
        raise ValueError(
            f"{name} must be (lo, hi) with lo < hi, or increasing finite grid values; got {spec!r}"
        )
    return values


def _predict(model: Any, x_grid: np.ndarray) -> GaussianMixture:
    """Evaluate ``model`` on the ``(n, 1)`` input grid without gradients."""
    if isinstance(model, torch.nn.Module):
        param = next(model.parameters(), None)
        dtype = param.dtype if param is not None else torch.get_default_dtype()
        device = param.device if param is not None else None
        x = torch.as_tensor(x_grid, dtype=dtype, device=device).reshape(-1, 1)
        was_training = model.training
        model.eval()  # no dropout in the picture
        try:
            with torch.no_grad():
                return model(x)
        finally:
            model.train(was_training)
    predict_distribution: Callable[[np.ndarray], GaussianMixture] | None = getattr(
        model, "predict_distribution", None
    )
    if callable(predict_distribution):
        return predict_distribution(x_grid.reshape(-1, 1))
    if callable(model):
        x = torch.as_tensor(x_grid, dtype=torch.get_default_dtype()).reshape(-1, 1)
        with torch.no_grad():
            return model(x)
    raise TypeError(
        "model must be an nn.Module, an object with predict_distribution(X) or a callable "
        f"mapping an (n, 1) tensor to a GaussianMixture; got {type(model).__name__}"
    )


def _grid_local_maxima(density: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Column and row indices of local maxima along axis 0 of ``density`` ``(n_y, n_x)``."""
    padded = np.pad(density, ((1, 1), (0, 0)), constant_values=-np.inf)
    inner = padded[1:-1]
    peak = (inner > padded[:-2]) & (inner >= padded[2:])
    peak &= density >= _LOCAL_MODE_MIN_RELATIVE_DENSITY * density.max(axis=0, keepdims=True)
    rows, cols = np.nonzero(peak)
    return cols, rows
