"""How an ``MDNRegressor`` is fitted (private).

The estimator validates its inputs and hands the arrays to :func:`fit_arrays`: standardize,
split off the validation rows, build ``n_estimators`` seeded networks started from k-means
mixtures of the targets, train them with :func:`mixture_density.training.fit` (several at once
as one :class:`~mixture_density._ensemble.StackedMDN`), and record the result with
:func:`set_fitted`, the one place that sets the fitted attributes (also used by the streamed
fit and by loading). Targets on a grid, within bounds, censored or partly missing train the
same networks on their encoded ends (``_targets``) through ``_likelihood.TargetLikelihood``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array
from torch import Tensor

from ._calibration import PITCalibrator
from ._csv import MAX_ABS_VALUE
from ._data import guarded_scale
from ._defaults import AUTO, SMALL_N, Plan, resolve
from ._ensemble import StackedMDN, member_results
from ._env import world_size
from ._errors import MixtureDensityError
from ._likelihood import TargetLikelihood
from ._options import FitResult
from ._prediction import features, has_nan
from ._targets import TargetSpec, check_training, encode, tie_warning, upper_ends
from .nn import MixtureDensityNetwork
from .noise import NoiseType
from .training import fit as train

#: Symmetric Dirichlet prior of :func:`group_weights`: 2 adds one pseudo-row per group.
GROUP_PRIOR = 2.0
#: EM iterations of :func:`group_weights` (it converges in a few dozen).
GROUP_EM_STEPS = 200

__all__ = [
    "build_network",
    "check_distributable",
    "check_params",
    "fit_arrays",
    "fit_estimator",
    "group_weights",
    "new_network",
    "set_fitted",
    "standardization",
    "training_kwargs",
]


def check_params(est: Any) -> None:
    """Refuses invalid hyperparameters of ``est`` before any data is read."""
    for name in ("n_components", "n_estimators", "epochs", "batch_size", "patience"):
        value = getattr(est, name)
        if (name == "patience" and value is None) or (isinstance(value, str) and value == AUTO):
            continue  # no early stopping, or a rule of _defaults
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer or 'auto', got {value!r}")
    if not (est.lr == AUTO or (isinstance(est.lr, (int, float)) and est.lr > 0)):
        raise ValueError(f"lr must be a positive number or 'auto', got {est.lr!r}")
    if not 0.0 <= float(est.val_fraction) < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {est.val_fraction!r}")
    if not float(est.min_scale) > 0.0:
        raise ValueError(f"min_scale must be positive, got {est.min_scale!r}")
    NoiseType.parse(est.noise_type)  # raises ValueError listing the options
    TargetSpec.check_types(est.target_resolution, est.target_bounds)


def check_distributable(est: Any) -> None:
    """Refuses what a data-parallel (``torchrun``) or streamed fit cannot do."""
    if est.n_estimators != 1:
        raise MixtureDensityError(
            f"n_estimators must be 1 for a distributed or streamed fit, got "
            f"{est.n_estimators}: several networks are trained as one batched model in "
            "one process"
        )
    if est.random_state is None and world_size() > 1:
        # Each rank would draw its own split and seeds from the OS's entropy.
        raise MixtureDensityError(
            "random_state=None under torchrun: every rank must draw the same validation "
            "split and seeds; pass an integer random_state"
        )
    if est.target_resolution is not None or est.target_bounds is not None:
        raise MixtureDensityError(
            "target_resolution and target_bounds need an in-memory fit in one process "
            "(not --stream, --memory-budget or torchrun)"
        )


def training_kwargs(est: Any, plan: Plan) -> dict[str, Any]:
    """The keywords of ``training.fit`` for ``est``'s parameters and its resolved ``plan``."""
    return {
        "epochs": plan.epochs,
        "batch_size": plan.batch_size,
        "lr": plan.lr,
        "weight_decay": est.weight_decay,
        "patience": plan.patience,
        "noise_regularization": (
            plan.noise if est.noise_regularization == SMALL_N else est.noise_regularization
        ),
        "verbose": bool(est.verbose),
        "device": est.device,
    }


def build_network(est: Any, dim_in: int, dim_out: int, n_components: int) -> MixtureDensityNetwork:
    """An untrained network with the estimator's architecture and ``n_components``."""
    return MixtureDensityNetwork(
        dim_in,
        dim_out,
        int(n_components),
        noise_type=est.noise_type,
        fixed_noise_level=est.fixed_noise_level,
        hidden_dims=tuple(int(h) for h in est.hidden_dims),
        activation=est.activation,
        min_scale=float(est.min_scale),
    )


def new_network(
    est: Any, dim_in: int, dim_out: int, n_components: int, y_train: Tensor, seed: int
) -> MixtureDensityNetwork:
    """A seeded network started from a k-means mixture of ``y_train`` ``(m, D)``."""
    # fork_rng: weight initialization draws from torch's global RNG; seeding it inside a
    # fork keeps the caller's RNG state untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_network(est, dim_in, dim_out, n_components)
        if y_train.shape[0] >= n_components:  # k-means needs K rows
            model.initialize(y_train, seed=seed)
    return model


def standardization(A: np.ndarray, name: str = "X") -> tuple[np.ndarray, np.ndarray]:
    """Column means and standard deviations of ``(n, p)`` data; near-constant columns get 1.

    Raises:
        ValueError: a value of magnitude above ``_csv.MAX_ABS_VALUE`` (its square would
            overflow the standard deviation), naming the first such row and column.
    """
    too_large = np.abs(A) > MAX_ABS_VALUE
    if too_large.any():
        row, col = np.argwhere(too_large)[0]
        raise ValueError(
            f"{name} has {A[row, col]:g} in row {row}, column {col}: magnitudes above "
            f"{MAX_ABS_VALUE:g} overflow when squared for the standardization; rescale it"
        )
    mean = A.mean(axis=0)
    return mean, guarded_scale(mean, A.std(axis=0))


def fit_estimator(est: Any, X: Any, y: Any, distributed: bool | None, y_upper: Any) -> Any:
    """``MDNRegressor.fit``: validate ``X``, ``y`` (and ``y_upper``), then :func:`fit_arrays`.

    ``fit`` trains in this process only (``distributed=False``), also under ``torchrun``;
    the ``mdn fit`` command passes ``distributed=None`` so that a ``torchrun`` launch trains
    one network data-parallel; every rank must then pass the same data and an integer
    ``random_state`` (same split, same seeds).
    """
    check_params(est)
    if distributed is not False:
        check_distributable(est)
    if y_upper is None and not has_nan(y):
        X, y = features(est, X, y, multi_output=True, y_numeric=True, reset=True)
    else:  # NaN (missing) and infinite (censored) ends are allowed in y
        X = features(est, X, reset=True)
        y = check_array(y, ensure_2d=False, dtype=np.float64, ensure_all_finite=False)
        if len(y) != len(X):
            raise ValueError(f"X and y have {len(X)} and {len(y)} rows; they must match")
        if y_upper is not None:
            y_upper = upper_ends(y_upper, y.reshape(len(y), -1))
    fit_arrays(est, X, y, distributed, y_upper)
    return est


def fit_arrays(
    est: Any,
    X: np.ndarray,
    y: np.ndarray,
    distributed: bool | None,
    y_upper: np.ndarray | None = None,
) -> None:
    """Fits ``est`` on validated float64 ``X (n, d)`` and ``y (n,)`` or ``(n, D)`` (NaN:
    missing), with optional interval ends ``y_upper (n, 1)`` (see ``MDNRegressor.fit``)."""
    y_1d = y.ndim == 1
    Y = y.reshape(-1, 1) if y_1d else y  # (n, D)
    n = X.shape[0]
    spec = TargetSpec.from_params(est.target_resolution, est.target_bounds, Y.shape[1])
    plain = spec.plain and y_upper is None and not np.isnan(Y).any()
    x_stats = standardization(X, "X")
    if plain:
        y_stats = standardization(Y, "y")
        Ys = torch.as_tensor((Y - y_stats[0]) / y_stats[1], dtype=torch.float32)
        init = Ys
    else:
        spec = spec.with_origins(Y)
        y_stats, Ys, init = encoded_targets(est, spec, Y, y_upper)
    message = tie_warning(Y, est.target_resolution)  # once the data have passed every check
    if message:
        warnings.warn(message, UserWarning, stacklevel=4)
    rng = check_random_state(est.random_state)
    n_val = math.floor(est.val_fraction * n)
    if n_val >= 1 and n - n_val >= 1:
        perm = rng.permutation(n)
        val_rows, train_rows = perm[:n_val], perm[n_val:]
    else:  # too few rows to hold any out: train on everything, no early stopping
        val_rows, train_rows = np.arange(0), np.arange(n)
    plan = resolve(est, len(train_rows), plain)
    seeds = [int(s) for s in rng.randint(0, 2**31 - 1, size=plan.n_estimators)]

    Xs = torch.as_tensor((X - x_stats[0]) / x_stats[1], dtype=torch.float32)
    train_data = (Xs[train_rows], Ys[train_rows])
    val_data = (Xs[val_rows], Ys[val_rows]) if len(val_rows) else None
    y_init = init[train_rows][torch.isfinite(init[train_rows]).all(1)]  # k-means points
    members = [
        new_network(est, X.shape[1], Y.shape[1], k, y_init, s)
        for k, s in zip(plan.member_components, seeds)
    ]
    # Several networks train at once as one batched model: about the cost of one network on
    # small data (the loop gives each member its own minibatches and gradient).
    model = members[0] if len(members) == 1 else StackedMDN(members)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seeds[0])
        result = train(
            model if plain else TargetLikelihood(model),
            *train_data,
            val_data=val_data,
            val_fraction=0.0,  # the split is ours (shared with val_nll_ below)
            seed=seeds[0],
            distributed=distributed,
            **training_kwargs(est, plan),
        )
    results = [result]
    weights = None
    if isinstance(model, StackedMDN):
        model.copy_into(members)
        device = next(model.parameters()).device
        members = [m.to(device) for m in members]
        results = member_results(result, len(members))
        if val_data is not None and len(set(plan.member_components)) > 1:
            weights = group_weights(members, plan.member_components, *val_data, plain=plain)
    val: tuple[np.ndarray, ...] | None = None
    if len(val_rows):
        val = (X[val_rows], y[val_rows]) + (() if y_upper is None else (y_upper[val_rows],))
    set_fitted(
        est, plan, members, results, x_stats, y_stats, y_1d,
        val_data=val, targets=spec, weights=weights,
    )  # fmt: skip


def group_weights(
    members: Sequence[MixtureDensityNetwork],
    groups: Sequence[int],
    X: Tensor,
    Y: Tensor,
    *,
    plain: bool = True,
) -> tuple[float, ...]:
    """Weights of the members from the validation likelihood of their groups.

    Members of one group (here: one number of components) share their group's weight
    equally. The group weights ``w`` maximize ``sum_i log sum_g w_g p_g(y_i | x_i)`` plus a
    symmetric Dirichlet(``GROUP_PRIOR``) log-prior, by EM, where ``p_g`` is the average
    density of group ``g``'s members: the stacking of density forecasts (Yao et al., 2018),
    held near equal weights when there are few validation rows.

    Args:
        members: the trained networks.
        groups: each member's group (its number of components).
        X, Y: standardized validation inputs and targets (``Y`` encoded as for
            :class:`TargetLikelihood` unless ``plain``).
        plain: ``Y`` holds plain targets.

    Returns:
        One weight per member, summing to one.
    """
    keys = sorted(set(groups))
    device = next(members[0].parameters()).device
    X, Y = X.to(device), Y.to(device)
    with torch.no_grad():
        member_lp = torch.stack(
            [-(m if plain else TargetLikelihood(m)).loss(X, Y).double().cpu() for m in members]
        )  # (M, n)
    index = torch.tensor(groups)
    group_lp = torch.stack(
        [
            torch.logsumexp(member_lp[index == k], 0) - math.log(int((index == k).sum()))
            for k in keys
        ]
    )  # (G, n): log of each group's average density
    G, n = group_lp.shape
    log_w = torch.full((G,), -math.log(G), dtype=torch.float64)
    for _ in range(GROUP_EM_STEPS):
        resp = torch.softmax(log_w[:, None] + group_lp, 0)  # (G, n)
        w = (resp.sum(1) + GROUP_PRIOR - 1) / (n + G * (GROUP_PRIOR - 1))
        log_w = w.clamp_min(torch.finfo(w.dtype).tiny).log()
    per_group = dict(zip(keys, log_w.exp().tolist()))
    sizes = {k: groups.count(k) for k in keys}
    return tuple(per_group[k] / sizes[k] for k in groups)


def encoded_targets(
    est: Any, spec: TargetSpec, Y: np.ndarray, y_upper: np.ndarray | None
) -> tuple[tuple[np.ndarray, np.ndarray], Tensor, Tensor]:
    """Standardization, training targets ``(n, 2D)`` and k-means points ``(n, D)`` (NaN where
    there is no point) of targets with a grid, bounds, intervals or missing entries.

    The map comes first (bounds take ``y`` onto R), then the standardization of the mapped
    values, from one representative point per entry (``_targets.Encoded.points``).
    """
    if est.noise_regularization not in (None, SMALL_N):  # the default rule stays off here
        raise ValueError(
            "noise_regularization cannot be combined with target_resolution, target_bounds, "
            "y_upper or missing targets (noise would blur exact values into intervals); "
            f"got noise_regularization={est.noise_regularization!r}"
        )
    enc = encode(spec, Y, y_upper)
    check_training(spec, Y, y_upper, enc)
    standardization(np.nan_to_num(enc.points, nan=0.0), "y")  # refuses overflowing values
    mean = np.nanmean(enc.points, axis=0)
    stats = (mean, guarded_scale(mean, np.nanstd(enc.points, axis=0)))
    Ys = torch.as_tensor(enc.standardized(*stats), dtype=torch.float32)
    init = torch.as_tensor((enc.points - stats[0]) / stats[1], dtype=torch.float32)
    return stats, Ys, init


def set_fitted(
    est: Any,
    plan: Plan,
    models: Sequence[MixtureDensityNetwork],
    results: Sequence[FitResult],
    x_stats: tuple[np.ndarray, np.ndarray],
    y_stats: tuple[np.ndarray, np.ndarray],
    y_1d: bool,
    *,
    val_data: tuple[np.ndarray, ...] | None = None,
    val_nll: float | None = None,
    calibrator: PITCalibrator | None = None,
    weights: Sequence[float] | None = None,
    targets: TargetSpec | None = None,
) -> None:
    """Sets every fitted attribute; the one place that does (fit, streamed fit, load).

    ``val_nll_`` is scored on ``val_data`` (original units; ``(X, y)`` or ``(X, y, y_upper)``)
    when given, else taken from ``val_nll`` (``None``: no validation, ``nan``).
    ``calibrator_`` is ``calibrator`` (a fit starts uncalibrated; ``MDNRegressor.calibrate``
    sets it afterwards); ``member_weights_`` are ``weights`` (default: equal). ``targets``:
    the grid and bounds (``None``: plain). ``target_transform_`` describes, per output, what
    the networks model: ``z = (g(y) - shift) / scale`` with ``g`` the map of ``_targets``
    (``"identity"``, ``"log_lower"``: ``log(y - lower)``, ``"log_upper"``:
    ``-log(upper - y)``, ``"logit"``: ``log(y - lower) - log(upper - y)``), and the grid
    (``resolution``, ``origin``: samples are ``origin + k resolution``).
    """
    est.calibrator_ = calibrator
    est.plan_ = plan
    n = len(models)
    est.member_weights_ = tuple(float(w) for w in weights) if weights else (1.0 / n,) * n
    est.n_features_in_ = int(x_stats[0].shape[0])
    est.x_mean_, est.x_scale_ = (np.asarray(v, dtype=np.float64) for v in x_stats)
    est.y_mean_, est.y_scale_ = (np.asarray(v, dtype=np.float64) for v in y_stats)
    est.n_outputs_ = int(y_stats[0].shape[0])
    est._targets = targets or TargetSpec.from_params(None, None, est.n_outputs_)
    est.target_transform_ = [
        {**out, "shift": float(m), "scale": float(s)}
        for out, m, s in zip(est._targets.to_json(), est.y_mean_, est.y_scale_)
    ]
    est._y_1d = bool(y_1d)
    est.models_ = [m.eval() for m in models]
    est.model_ = est.models_[0]
    est.fit_results_ = list(results)
    est.history_ = list(est.fit_results_[0].history)
    if val_data is not None:
        val_nll = float(-np.mean(est.log_prob(*val_data)))
    est.val_nll_ = math.nan if val_nll is None else float(val_nll)
