"""mixture-density: mixture density networks on PyTorch.

Every public name is imported on first use (PEP 562), so ``import mixture_density`` itself is
instant and loads neither torch nor the optional scikit-learn and matplotlib: the ``mdn``
command installs its signal handling before torch is imported, and ``MDNRegressor`` (which
needs scikit-learn) costs nothing until it is used. ``from mixture_density import
GaussianMixture`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from ._csv import CSVChunkDataset
    from ._data import Moments, streaming_moments
    from .distribution import GaussianMixture
    from .estimator import MDNRegressor
    from .nn import MixtureDensityHead, MixtureDensityNetwork
    from .noise import NoiseType
    from .rnn import MixtureDensityRNN
    from .training import FitResult, fit

#: Public name -> the module that defines it.
_HOME = {
    "CSVChunkDataset": "_csv",
    "FitResult": "training",
    "GaussianMixture": "distribution",
    "MDNRegressor": "estimator",
    "MixtureDensityHead": "nn",
    "MixtureDensityNetwork": "nn",
    "MixtureDensityRNN": "rnn",
    "Moments": "_data",
    "NoiseType": "noise",
    "fit": "training",
    "streaming_moments": "_data",
}

__all__ = [
    "CSVChunkDataset",
    "FitResult",
    "GaussianMixture",
    "MDNRegressor",
    "MixtureDensityHead",
    "MixtureDensityNetwork",
    "MixtureDensityRNN",
    "Moments",
    "NoiseType",
    "__version__",
    "fit",
    "streaming_moments",
]


def __getattr__(name: str) -> Any:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{home}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
