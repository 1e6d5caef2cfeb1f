"""Fitting an ``MDNRegressor`` under ``torchrun`` and on CSV files larger than memory (private).

:meth:`MDNRegressor.fit <mixture_density.MDNRegressor.fit>` trains on in-memory arrays in one
process (it calls :func:`~mixture_density.training.fit` with ``distributed=False``). Under
``torchrun``, ``mdn fit`` calls the estimator's private ``_fit(X, y, distributed=None)``,
the same fit with data-parallel training. For files larger than memory it uses this module,
which sets exactly the fitted attributes that ``MDNRegressor.fit`` sets, so that the result
saves, loads and predicts like any other:

* :func:`scan_csv` + :func:`fit_streamed`: one streaming pass over the file for the column
  means and standard deviations (:func:`~mixture_density._data.streaming_moments`, equal to the
  in-memory estimator's to rounding), the first ``val_rows`` rows read into memory as the
  validation set, and the remaining rows streamed into training chunk by chunk, standardized on
  the way in and sharded over ranks under ``torchrun``.

Distributed and streamed fits train a single network (``n_estimators=1``): the estimator
trains several networks as one batched model in one process, which has no distributed or
streamed counterpart.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch.utils.data import DataLoader

from . import _env
from ._csv import CSVChunkDataset
from ._data import Moments, streaming_moments
from ._errors import MixtureDensityError

if TYPE_CHECKING:
    from .estimator import MDNRegressor

__all__ = ["StreamedCSV", "fit_streamed", "scan_csv"]

#: Default validation set of a streamed fit: this fraction of the rows (as the estimator's
#: ``val_fraction``), but at most :data:`MAX_DEFAULT_VAL_ROWS` rows, which are held in memory
#: and evaluated after every epoch.
DEFAULT_VAL_FRACTION = 0.1
#: 10,000 rows give the validation NLL a standard error of about 0.01 nats (a per-row NLL
#: spread of ~1 nat), enough for early stopping, at the cost of one small in-memory array.
MAX_DEFAULT_VAL_ROWS = 10_000


@dataclass
class StreamedCSV:
    """What one pass over a CSV file found, and the rows a streamed fit keeps in memory.

    Attributes:
        path: the CSV file.
        features, targets: column names of the inputs and the targets.
        chunk_rows: rows per chunk of the training stream.
        n_rows: data rows in the file.
        moments: column means and standard deviations over all ``n_rows`` rows.
        x_val, y_val: ``(n_val, d)`` and ``(n_val, D)`` float64: the first ``n_val`` rows,
            the validation set (``n_val`` may be 0: no validation).
        y_init: ``(m, D)`` float64 targets of the first training chunk, for the k-means start.
    """

    path: str
    features: list[str]
    targets: list[str]
    chunk_rows: int
    n_rows: int
    moments: Moments
    x_val: np.ndarray
    y_val: np.ndarray
    y_init: np.ndarray

    @property
    def n_val(self) -> int:
        return int(self.x_val.shape[0])


def scan_csv(
    path: str,
    features: Sequence[str],
    targets: Sequence[str],
    *,
    chunk_rows: int = 10_000,
    val_rows: int | None = None,
) -> StreamedCSV:
    """Reads a CSV file once for its moments, then its validation rows and first chunk.

    Every cell of the feature and target columns is parsed and checked here (finite numbers,
    the header's number of fields), so a bad file fails before any training starts.

    Args:
        path: CSV file with a header row.
        features: input column names.
        targets: target column names.
        chunk_rows: rows parsed at a time; memory use is about ``chunk_rows`` rows.
        val_rows: validation rows taken from the top of the file; ``None``: 10% of the rows,
            at most 10,000; 0: no validation (training runs all epochs).

    Returns:
        A :class:`StreamedCSV`.

    Raises:
        MixtureDensityError: missing columns, bad cells, or no rows left to train on.

    Example:
        >>> import os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "d.csv")
        >>> _ = open(path, "w").write("x,y\\n" + "".join(f"{i},{i % 3}\\n" for i in range(20)))
        >>> data = scan_csv(path, ["x"], ["y"], chunk_rows=8)
        >>> data.n_rows, data.n_val, data.moments.mean_x.tolist(), data.y_init.shape
        (20, 2, [9.5], (8, 1))
    """
    if chunk_rows < 1:
        raise MixtureDensityError(f"chunk_rows must be a positive integer, got {chunk_rows}")
    path = str(path)
    everything = CSVChunkDataset(path, list(features), list(targets), chunk_rows)
    try:
        moments = streaming_moments(everything)
    except MixtureDensityError:  # a bad file or column
        raise
    except ValueError:  # streaming_moments got no rows
        raise MixtureDensityError(f"{path}: no data rows after the header") from None
    n = moments.n
    if val_rows is None:
        val_rows = min(MAX_DEFAULT_VAL_ROWS, math.floor(DEFAULT_VAL_FRACTION * n))
    if val_rows < 0:
        raise MixtureDensityError(f"val_rows must be >= 0, got {val_rows}")
    if val_rows >= n:
        raise MixtureDensityError(
            f"--val-rows {val_rows} leaves no training rows: {path} has {n} data rows"
        )
    d, D = len(features), len(targets)
    x_val, y_val = np.empty((0, d)), np.empty((0, D))
    if val_rows:
        _, x_val, y_val = _first_chunk(CSVChunkDataset(path, features, targets, val_rows))
    first_training_chunk = CSVChunkDataset(path, features, targets, chunk_rows, skip_rows=val_rows)
    _, _, y_init = _first_chunk(first_training_chunk)
    return StreamedCSV(
        path, list(features), list(targets), chunk_rows, n, moments, x_val, y_val, y_init
    )


def _first_chunk(data: CSVChunkDataset) -> tuple[int, np.ndarray, np.ndarray]:
    with contextlib.closing(data.iter_chunks()) as chunks:  # closes the file at once
        return next(chunks)


def fit_streamed(est: MDNRegressor, data: StreamedCSV) -> MDNRegressor:
    """Trains ``est``'s network on a CSV file streamed from disk; sets its fitted attributes.

    The training rows (all but the first ``data.n_val``) are read ``data.chunk_rows`` at a
    time, standardized with ``data.moments`` and shuffled within each chunk (differently each
    epoch); under ``torchrun`` chunk ``i`` goes to rank ``i mod world_size``. The network is
    initialized from the targets of the first training chunk, and early stopping watches the
    validation rows, as ``MDNRegressor.fit`` watches its random 10%.

    Args:
        est: an unfitted estimator with ``n_estimators=1``; its hyperparameters are used.
        data: from :func:`scan_csv`.

    Returns:
        ``est``, fitted: its ``x_mean_``, ``x_scale_``, ``y_mean_``, ``y_scale_`` are the
        streamed moments (the in-memory estimator's standardization on the same rows, to
        rounding), and ``save``/``load``/``predict`` work as after ``MDNRegressor.fit``.

    Example:
        >>> import os, tempfile
        >>> from mixture_density.estimator import MDNRegressor
        >>> path = os.path.join(tempfile.mkdtemp(), "d.csv")
        >>> rows = "".join(f"{i / 10},{(i * 7) % 11}\\n" for i in range(60))
        >>> _ = open(path, "w").write("x,y\\n" + rows)
        >>> est = MDNRegressor(n_components=2, hidden_dims=(8,), n_estimators=1, epochs=2)
        >>> est = fit_streamed(est, scan_csv(path, ["x"], ["y"], chunk_rows=16))
        >>> est.predict([[0.5], [1.5]]).shape
        (2,)
    """
    from sklearn.utils import check_random_state

    from ._defaults import resolve
    from ._fitting import (
        check_distributable,
        check_params,
        new_network,
        set_fitted,
        training_kwargs,
    )
    from .training import fit as train

    check_params(est)
    check_distributable(est)
    plan = resolve(est, data.n_rows - data.n_val)
    seed = int(check_random_state(est.random_state).randint(0, 2**31 - 1))
    scale_x, scale_y = data.moments.scales()
    # fit's batch_size is global: each rank takes its share, as fit does for in-memory data.
    stream = CSVChunkDataset(
        data.path,
        data.features,
        data.targets,
        data.chunk_rows,
        skip_rows=data.n_val,
        shuffle=True,
        seed=seed,
        transform=data.moments.standardize,
        batch_rows=max(1, plan.batch_size // _env.world_size()),
    )
    mean_x, mean_y = data.moments.mean_x, data.moments.mean_y
    val_data = None
    if data.n_val:
        val_data = (
            torch.as_tensor((data.x_val - mean_x) / scale_x, dtype=torch.float32),
            torch.as_tensor((data.y_val - mean_y) / scale_y, dtype=torch.float32),
        )
    y_init = torch.as_tensor((data.y_init - mean_y) / scale_y, dtype=torch.float32)
    n_components = plan.member_components[0]
    model = new_network(est, len(data.features), len(data.targets), n_components, y_init, seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        result = train(
            model,
            # batch_size=None: the stream yields whole batches (fit sets its epoch for the
            # shuffle through loader.dataset, and under DDP the ranks' shares are uneven).
            train_data=DataLoader(stream, batch_size=None),
            val_data=val_data,
            seed=seed,
            distributed=None,  # DDP under torchrun; the stream shards itself over ranks
            **training_kwargs(est, plan),
        )
    y_1d = len(data.targets) == 1
    val = None
    if data.n_val:
        val = (data.x_val, data.y_val[:, 0] if y_1d else data.y_val)
    stats = (mean_x, scale_x), (mean_y, scale_y)
    set_fitted(est, plan, [model], [result], *stats, y_1d, val_data=val)
    return est
