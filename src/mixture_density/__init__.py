"""mixture-density: mixture density networks on PyTorch.

The core (``GaussianMixture``, ``NoiseType``, ``MixtureDensityHead``,
``MixtureDensityNetwork``, ``fit``, and the streaming helpers ``CSVChunkDataset`` and
``streaming_moments``) needs only torch and numpy and is imported eagerly.
``MDNRegressor`` needs scikit-learn and is resolved lazily on first access, so importing the
package never imports scikit-learn or matplotlib.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from ._csv import CSVChunkDataset
from ._data import Moments, streaming_moments
from .distribution import GaussianMixture
from .nn import MixtureDensityHead, MixtureDensityNetwork
from .noise import NoiseType
from .training import FitResult, fit

if TYPE_CHECKING:
    from .estimator import MDNRegressor

__all__ = [
    "CSVChunkDataset",
    "FitResult",
    "GaussianMixture",
    "MDNRegressor",
    "MixtureDensityHead",
    "MixtureDensityNetwork",
    "Moments",
    "NoiseType",
    "__version__",
    "fit",
    "streaming_moments",
]


def __getattr__(name: str) -> Any:
    if name == "MDNRegressor":
        return importlib.import_module(f"{__name__}.estimator").MDNRegressor
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
