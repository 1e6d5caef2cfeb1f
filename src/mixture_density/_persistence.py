"""Saving and loading a fitted ``MDNRegressor`` (private).

A model file holds a JSON configuration (the estimator's parameters, shapes, training
history, user metadata) and a flat ``name -> tensor`` mapping (scalers and every network's
weights), written and read by ``_serialization`` without pickled code. A model of targets on a
grid or within bounds records them (``"targets"``: the parameters as given and the fitted
spec) and is a version-2 file, which older readers refuse rather than misread; other models
stay version 1, as before.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from sklearn.utils.validation import check_is_fitted

from . import __version__
from ._calibration import PITCalibrator
from ._defaults import Plan, resolve
from ._env import resolve_device
from ._errors import MixtureDensityError
from ._fitting import build_network, check_params, set_fitted
from ._options import FitResult
from ._serialization import read_checkpoint, write_checkpoint
from ._targets import TargetSpec

_REMEDY = "write it again with 'mdn fit' or MDNRegressor.save"

__all__ = ["load_estimator", "save_estimator"]

#: What a model file says it holds, and the layout version of its configuration: 2 records
#: the plan, member weights, calibration and targets (files of version 1 load as before).
KIND = "MDNRegressor"
VERSION = 2
#: Estimator parameters stored under ``"targets"`` rather than ``"params"``.
TARGET_PARAMS = ("target_resolution", "target_bounds")
_SCALERS = ("x_mean", "x_scale", "y_mean", "y_scale")


def save_estimator(
    est: Any, path: str | os.PathLike[str], metadata: Mapping[str, Any] | None
) -> None:
    """Writes ``est`` to ``path`` atomically (see ``MDNRegressor.save``)."""
    check_is_fitted(est)
    params = est.get_params()
    params["hidden_dims"] = [int(h) for h in est.hidden_dims]
    if not isinstance(params["random_state"], (int, type(None))):
        params["random_state"] = None  # a RandomState object has no JSON form
    given = {name: _jsonable(_plain(params.pop(name))) for name in TARGET_PARAMS}
    spec: TargetSpec = est._targets
    config: dict[str, Any] = {
        "kind": KIND,
        "version": VERSION,
        "library_version": __version__,
        "params": params,
        "n_features_in": int(est.n_features_in_),
        "n_outputs": int(est.n_outputs_),
        "y_1d": bool(est._y_1d),
        "fit_results": [_jsonable(dataclasses.asdict(r)) for r in est.fit_results_],
        "val_nll": None if math.isnan(est.val_nll_) else est.val_nll_,
        "metadata": dict(metadata) if metadata is not None else {},
    }
    config["plan"] = est.plan_.to_config()
    config["member_weights"] = list(est.member_weights_)
    if getattr(est, "calibrator_", None) is not None:
        config["calibrator"] = est.calibrator_.to_config()
    if not spec.plain:
        config["targets"] = {"params": given, "spec": spec.to_json()}
    if hasattr(est, "feature_names_in_"):
        config["feature_names_in"] = [str(c) for c in est.feature_names_in_]
    tensors = {
        name: torch.as_tensor(getattr(est, f"{name}_"), dtype=torch.float64) for name in _SCALERS
    }
    for i, model in enumerate(est.models_):
        for key, value in model.state_dict().items():
            tensors[f"models.{i}.{key}"] = value
    write_checkpoint(path, config, tensors)


def load_estimator(cls: type[Any], path: str | os.PathLike[str], device: str | None) -> Any:
    """Reads an estimator written by :func:`save_estimator` (see ``MDNRegressor.load``).

    Everything is checked before any network is built: the checksum (``_serialization``),
    the configuration's entries and the shape of every tensor, against a network built on
    the ``meta`` device (shapes only, no memory), so that a damaged configuration cannot make
    the load allocate memory it describes. The networks then take the file's tensors
    themselves (``load_state_dict(assign=True)``).
    """
    config, tensors = read_checkpoint(path)
    name = repr(os.fspath(path))
    if config.get("kind") != KIND:
        raise MixtureDensityError(f"{name} does not hold an {KIND}")
    if not isinstance(config.get("version"), int) or config["version"] > VERSION:
        raise MixtureDensityError(
            f"{name} was written by a newer mixture-density "
            f"({config.get('library_version')}); upgrade to read it"
        )
    try:
        est, n_features, n_outputs = _configured(cls, config, device)
        spec = None
        if "targets" in config:
            spec = TargetSpec.from_json(config["targets"]["spec"])
            est.set_params(**config["targets"]["params"])
            if len(spec.outputs) != n_outputs:
                raise ValueError(f"{len(spec.outputs)} target specs for {n_outputs} outputs")
        results = [FitResult(**_from_jsonable(r)) for r in config["fit_results"]]
        y_1d, val_nll = bool(config["y_1d"]), config["val_nll"]
        feature_names = config.get("feature_names_in")
        metadata = dict(config.get("metadata", {}))
        calibrator = config.get("calibrator")
        calibrator = None if calibrator is None else PITCalibrator.from_config(calibrator)
        # Files from before the plan was recorded hold integer parameters: those are it.
        plan = Plan.from_config(config["plan"]) if "plan" in config else resolve(est, 1)
        if len(plan.member_components) < 1:
            raise ValueError("the plan has no networks")
        weights = config.get("member_weights")
        if weights is not None and (
            len(weights) != plan.n_estimators or not all(w > 0 for w in weights)
        ):
            raise ValueError("member_weights must be one positive weight per network")
    except (KeyError, TypeError, ValueError) as err:
        raise MixtureDensityError(
            f"model file {name} is corrupted: its configuration is incomplete or invalid "
            f"({type(err).__name__}: {err}); {_REMEDY}"
        ) from None
    expected = {key: (n_features,) for key in ("x_mean", "x_scale")}
    expected |= {key: (n_outputs,) for key in ("y_mean", "y_scale")}
    for i, k in enumerate(plan.member_components):
        with torch.device("meta"):
            reference = build_network(est, n_features, n_outputs, k).state_dict()
        expected |= {f"models.{i}.{key}": tuple(v.shape) for key, v in reference.items()}
    found = {key: tuple(t.shape) for key, t in tensors.items()}
    if found != expected:
        wrong = sorted(set(found) ^ set(expected)) or sorted(
            k for k in expected if found[k] != expected[k]
        )
        raise MixtureDensityError(
            f"model file {name} is corrupted: its weights do not match its configuration "
            f"(first mismatch: {wrong[0]}); {_REMEDY}"
        )
    try:
        target = resolve_device(est.device)
    except ValueError:  # a CUDA device where there is none
        if device is not None:
            raise
        target = torch.device("cpu")  # documented: the saved device, or cpu without it
    models = []
    for i, k in enumerate(plan.member_components):
        prefix = f"models.{i}."
        state = {key[len(prefix) :]: v for key, v in tensors.items() if key.startswith(prefix)}
        with torch.device("meta"):
            model = build_network(est, n_features, n_outputs, k)
        model.load_state_dict(state, strict=True, assign=True)
        models.append(model.to(target))
    set_fitted(
        est,
        plan,
        models,
        results,
        (tensors["x_mean"].numpy(), tensors["x_scale"].numpy()),
        (tensors["y_mean"].numpy(), tensors["y_scale"].numpy()),
        y_1d,
        val_nll=val_nll,
        calibrator=calibrator,
        weights=weights,
        targets=spec,
    )
    if feature_names is not None:
        est.feature_names_in_ = np.asarray(feature_names, dtype=object)
    est.metadata_ = metadata
    return est


def _configured(cls: type[Any], config: dict[str, Any], device: str | None) -> tuple[Any, int, int]:
    """The unfitted estimator a configuration describes, with its input and output sizes.

    Raises:
        KeyError, TypeError, ValueError: an entry is missing or invalid.
    """
    params = dict(config["params"])
    params["hidden_dims"] = tuple(params["hidden_dims"])
    if device is not None:
        params["device"] = device
    est = cls(**params)
    check_params(est)
    widths = [int(w) for w in est.hidden_dims]
    n_features, n_outputs = config["n_features_in"], config["n_outputs"]
    if not all(isinstance(v, int) and v >= 1 for v in (n_features, n_outputs, *widths)):
        raise ValueError("sizes must be positive integers")
    return est, n_features, n_outputs


def _plain(value: Any) -> Any:
    """Tuples and numpy scalars of a parameter as JSON-able lists and floats; open ends as
    ``None``."""
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        value = float(value)
    if isinstance(value, float) and math.isinf(value):
        return None
    return value


def _from_jsonable(value: Any) -> Any:
    """Undo :func:`_jsonable` for training records: ``None`` back to ``nan``."""
    if value is None:
        return float("nan")
    if isinstance(value, dict):
        return {k: v if isinstance(v, str) else _from_jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value]
    return value


def _jsonable(value: Any) -> Any:
    """Replace non-finite floats (not valid JSON) by ``None``, recursively."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value
