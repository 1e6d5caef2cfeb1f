"""What a fitted ``MDNRegressor`` answers: the predictive distribution and its questions
(private; the estimator's methods document them).

The mixture of the networks (``distribution``), with the targets' maps (``_likelihood``)
and the recalibration (``_calibration``) on top, in the original units of ``y``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted
from torch import Tensor

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - scikit-learn 1.3 to 1.5

    def _validate_data(estimator: Any, /, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)


from ._calibration import MIN_CALIBRATION_ROWS, PITCalibrator
from ._likelihood import TargetDistribution
from ._targets import check_observed, row_list, upper_ends
from .distribution import GaussianMixture

__all__ = [
    "check_targets",
    "distribution",
    "draws",
    "features",
    "has_nan",
    "log_density",
    "output",
    "quantiles",
    "recalibration",
]

#: Rows per forward pass at prediction time: bounds the activation memory for large inputs.
PREDICT_CHUNK_ROWS = 65536


def recalibration(est: Any, X: Any, y: Any, cv: int | None = None) -> PITCalibrator:
    """The PIT map of ``MDNRegressor.calibrate``: from held-out rows ``(X, y)``, or with
    ``cv = k`` from the out-of-fold PIT values of ``k`` copies of ``est`` (same parameters)
    fitted on the other folds of ``(X, y)``."""
    check_is_fitted(est)
    if est.n_outputs_ != 1 or any(o.resolution for o in est._targets.outputs):
        raise ValueError(
            "calibrate supports one continuous output; this model has "
            f"{est.n_outputs_} output(s)"
            + (", on a grid" if est.n_outputs_ == 1 else "")
            + " (recalibrate each output's quantiles with one model per output)"
        )
    if cv is not None and (isinstance(cv, bool) or not isinstance(cv, (int, np.integer))):
        raise TypeError(f"cv must be None or an integer number of folds, got {cv!r}")
    if cv is not None and cv < 2:
        raise ValueError(f"cv must be at least 2 folds, got {cv}")
    X = features(est, X, reset=False)
    needed = max(MIN_CALIBRATION_ROWS, cv or 0)
    if X.shape[0] < needed:
        raise ValueError(
            f"calibrate needs at least {needed} rows to learn the PIT "
            f"distribution, got {X.shape[0]}"
        )
    Y = check_targets(est, y, X.shape[0])
    if cv is None:
        est.calibrator_ = None  # score the model itself
        pit = _pit_values(est, X, Y, np.arange(X.shape[0]))
    else:
        from sklearn.base import clone
        from sklearn.model_selection import KFold

        seed = check_random_state(est.random_state).randint(0, 2**31 - 1)
        pit = np.empty(X.shape[0])
        for train, held_out in KFold(int(cv), shuffle=True, random_state=seed).split(X):
            fold_model = clone(est).fit(X[train], Y[train])
            pit[held_out] = _pit_values(fold_model, X[held_out], Y[held_out], held_out)
    return PITCalibrator.fit(pit)


def _pit_values(est: Any, X: np.ndarray, Y: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """PIT values ``F(y | x)`` of validated rows under ``est`` without recalibration;
    ``rows``: their numbers in the caller's data, for the error."""
    dist = est.predict_distribution(X)
    with torch.no_grad():
        value = torch.as_tensor(Y, dtype=dist.base.dtype if hasattr(dist, "spec") else dist.dtype)
        log_density = dist.log_prob(value).double().cpu().numpy()
        pit = dist.cdf(value).double().cpu().numpy()
    outside = rows[~np.isfinite(log_density)]
    if outside.size:
        raise ValueError(
            f"y of rows {outside[:10].tolist()} has zero density under the fitted model "
            "(outside its support); calibrate on rows the model can score"
        )
    return pit


def log_density(est: Any, X: Any, y: Any, y_upper: Any) -> np.ndarray:
    """``MDNRegressor.log_prob``."""
    gm = est._mixture(X)
    Y = check_targets(est, y, gm.batch_shape[0])
    if est.calibrator_ is not None:
        if y_upper is not None or not np.isfinite(Y).all():
            raise ValueError("a recalibrated model scores exact, finite y only")
        dist = est.predict_distribution(X)
        with torch.no_grad():
            return dist.log_prob(torch.as_tensor(Y, dtype=gm.dtype)).double().numpy()
    if y_upper is None and est._targets.plain and np.isfinite(Y).all():
        with torch.no_grad():
            values = gm.log_prob(torch.as_tensor(Y, dtype=gm.dtype, device=gm.loc.device))
        return values.cpu().double().numpy()
    check_observed(Y)
    upper = None if y_upper is None else upper_ends(y_upper, Y)
    return TargetDistribution(gm, est._targets).log_prob(Y, upper).numpy()


def draws(est: Any, X: Any, n_samples: int, random_state: Any) -> np.ndarray:
    """``MDNRegressor.sample``."""
    if isinstance(n_samples, bool) or not isinstance(n_samples, (int, np.integer)):
        raise TypeError(f"n_samples must be an integer, got {n_samples!r}")
    if n_samples < 1:
        raise ValueError(f"n_samples must be at least 1, got {n_samples}")
    dist = est.predict_distribution(X)
    with torch.no_grad():
        if random_state is None:
            draws = dist.sample((int(n_samples),))
        else:
            seed = int(check_random_state(random_state).randint(0, 2**31 - 1))
            device = next(est.models_[0].parameters()).device
            devices = [device] if device.type == "cuda" else []
            with torch.random.fork_rng(devices=devices):
                torch.manual_seed(seed)
                draws = dist.sample((int(n_samples),))
    return output(est, draws)


def quantiles(est: Any, X: Any, q: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """``MDNRegressor.predict_quantiles``."""
    levels = np.atleast_1d(np.asarray(q, dtype=np.float64))
    if levels.ndim != 1 or levels.size == 0:
        raise ValueError(
            f"q must be a scalar or a non-empty 1-D sequence, got shape {levels.shape}"
        )
    if not np.all((levels > 0.0) & (levels < 1.0)):
        raise ValueError(f"q must lie strictly between 0 and 1, got {levels.tolist()}")
    dist = est._mixture(X)
    n = dist.batch_shape[0]
    qq = torch.as_tensor(levels, dtype=dist.loc.dtype, device=dist.loc.device)
    if est.calibrator_ is not None:  # quantiles of R(F): F's at the levels R^-1(q)
        qq = est.calibrator_.inverse(qq)
    qq = qq.unsqueeze(-1).expand(len(levels), n)  # (Q, n)
    with torch.no_grad():
        per_dim = [
            dist.marginal([d]).icdf(qq).squeeze(-1).T  # (n, Q)
            for d in range(est.n_outputs_)
        ]
    z = torch.stack(per_dim, dim=1).cpu().double()  # (n, D, Q)
    out = est._targets.to_y(z.transpose(1, 2)).transpose(1, 2).numpy()
    return out[:, 0, :] if est._y_1d else out


def has_nan(y: Any) -> bool:
    """Whether ``y`` is a real floating array holding a NaN (missing targets); anything
    else is left to the standard validation and its errors."""
    try:
        A = np.asarray(y)
    except (TypeError, ValueError):
        return False
    return A.dtype.kind == "f" and bool(np.isnan(A).any())


def features(est: Any, X: Any, *args: Any, **kwargs: Any) -> Any:
    """``_validate_data(est, X, *args, **kwargs)`` (float64 ``X`` by default), where a NaN in
    ``X`` is an error naming its column and rows."""
    try:
        return _validate_data(est, X, *args, **{"dtype": np.float64, **kwargs})
    except ValueError as err:
        try:
            A = np.asarray(X)
        except (TypeError, ValueError):
            raise err from None
        if A.ndim != 2 or A.dtype.kind != "f" or not np.isnan(A).any():
            raise
        col = int(np.argmax(np.isnan(A).any(0)))
        names = getattr(X, "columns", None)
        name = f" ({names[col]!r})" if names is not None else ""
        raise ValueError(
            f"X contains NaN in column {col}{name}, {row_list(np.isnan(A[:, col]))}: missing "
            "features are not supported; impute them (e.g. sklearn's SimpleImputer with "
            "add_indicator=True in a Pipeline) or drop those rows"
        ) from None


def distribution(est: Any, X: np.ndarray) -> GaussianMixture:
    """Mixture over ``g(y)`` in its original units for validated ``(n, d)`` float64 inputs."""
    device = next(est.models_[0].parameters()).device
    Xs = torch.as_tensor((X - est.x_mean_) / est.x_scale_, dtype=torch.float32)
    chunks = []
    with torch.no_grad():
        for start in range(0, max(len(Xs), 1), PREDICT_CHUNK_ROWS):
            xb = Xs[start : start + PREDICT_CHUNK_ROWS].to(device)
            members = [m(xb) for m in est.models_]
            chunks.append(GaussianMixture.cat(members, "components", est.member_weights_))
        dist = GaussianMixture.cat(chunks, dim="batch")
        scale = torch.as_tensor(est.y_scale_, dtype=dist.loc.dtype, device=device)
        shift = torch.as_tensor(est.y_mean_, dtype=dist.loc.dtype, device=device)
        return dist.affine(scale, shift)


def output(est: Any, values: Tensor) -> np.ndarray:
    """``(..., D)`` tensor -> float64 array, dropping ``D`` when ``y`` was 1-D."""
    out = values.detach().cpu().double().numpy()
    return out[..., 0] if est._y_1d else out


def check_targets(est: Any, y: Any, n: int) -> np.ndarray:
    """``(n, D)`` float64 targets for ``log_prob`` (NaN and inf allowed)."""
    Y = check_array(y, ensure_2d=False, dtype=np.float64, input_name="y", ensure_all_finite=False)
    if Y.ndim == 1:
        Y = Y.reshape(-1, 1)
    if Y.ndim != 2 or Y.shape != (n, est.n_outputs_):
        expected = f"({n},)" if est.n_outputs_ == 1 else f"({n}, {est.n_outputs_})"
        raise ValueError(
            f"y must have shape {expected} to match X and the fitted targets, got {np.shape(y)}"
        )
    return Y
