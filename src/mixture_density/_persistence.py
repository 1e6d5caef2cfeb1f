"""Saving and loading a fitted ``MDNRegressor`` (private).

A model file holds a JSON configuration (the estimator's parameters, shapes, training
history, user metadata) and a flat ``name -> tensor`` mapping (scalers and every network's
weights), written and read by ``_serialization`` without pickled code.
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
from ._env import resolve_device
from ._errors import MixtureDensityError
from ._fitting import build_network, set_fitted
from ._options import FitResult
from ._serialization import read_checkpoint, write_checkpoint

__all__ = ["load_estimator", "save_estimator"]

#: What a model file says it holds, and the layout version of its configuration.
KIND = "MDNRegressor"
VERSION = 1
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
    """Reads an estimator written by :func:`save_estimator` (see ``MDNRegressor.load``)."""
    config, tensors = read_checkpoint(path)
    if config.get("kind") != KIND:
        raise MixtureDensityError(f"{os.fspath(path)!r} does not hold an {KIND}")
    if config.get("version", 0) > VERSION:
        raise MixtureDensityError(
            f"{os.fspath(path)!r} was written by a newer mixture-density "
            f"({config.get('library_version')}); upgrade to read it"
        )
    params = dict(config["params"])
    params["hidden_dims"] = tuple(params["hidden_dims"])
    if device is not None:
        params["device"] = device
    est = cls(**params)
    try:
        target = resolve_device(est.device)
    except ValueError:  # a CUDA device where there is none
        if device is not None:
            raise
        target = torch.device("cpu")  # documented: the saved device, or cpu without it
    n_features, n_outputs = int(config["n_features_in"]), int(config["n_outputs"])
    models = []
    for i in range(int(params["n_estimators"])):
        prefix = f"models.{i}."
        state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
        model = build_network(est, n_features, n_outputs)
        try:
            model.load_state_dict(state, strict=True)
        except RuntimeError as err:
            raise MixtureDensityError(f"{os.fspath(path)!r}: weights do not fit: {err}") from err
        models.append(model.to(target))
    set_fitted(
        est,
        models,
        [FitResult(**_from_jsonable(r)) for r in config["fit_results"]],
        (tensors["x_mean"].numpy(), tensors["x_scale"].numpy()),
        (tensors["y_mean"].numpy(), tensors["y_scale"].numpy()),
        bool(config["y_1d"]),
        val_nll=config["val_nll"],
    )
    if "feature_names_in" in config:
        est.feature_names_in_ = np.asarray(config["feature_names_in"], dtype=object)
    est.metadata_ = dict(config.get("metadata", {}))
    return est


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
