"""mixture-density: mixture density networks on PyTorch."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public name -> submodule. Resolved lazily so that optional pieces (scikit-learn,
# matplotlib) are imported only when used.
_LAZY = {
    "GaussianMixture": "distribution",
    "NoiseType": "noise",
    "MixtureDensityHead": "nn",
    "MixtureDensityNetwork": "nn",
    "fit": "training",
    "FitResult": "training",
    "MDNRegressor": "estimator",
}

__all__ = ["__version__", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        return getattr(module, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
