"""Data plumbing for :func:`mixture_density.training.fit` (private).

Converts user inputs to tensors with errors that name the argument, batches in-memory
tensors with a seeded generator (sharded like ``DistributedSampler`` under DDP), and computes
the column moments of data streamed chunk by chunk (:func:`streaming_moments`), e.g. from a
:class:`CSVChunkDataset` (defined in ``_csv``, the CSV reader, and re-exported here).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import (
    DataLoader,
    Dataset,
    DistributedSampler,
    IterableDataset,
    RandomSampler,
    Sampler,
    Subset,
    random_split,
)

from ._csv import CSVChunkDataset
from ._distributed import DistContext

__all__ = ["CSVChunkDataset", "Moments", "streaming_moments"]

#: In-memory data smaller than this is copied to the GPU once, instead of per batch.
DEVICE_RESIDENT_BYTES = 1 << 30
#: Rows per validation batch; validation keeps no graph, so it can use large batches.
EVAL_BATCH = 4096
#: A column whose standard deviation is below this many ulps of its magnitude is constant up
#: to rounding: :meth:`Moments.standardize` centres it and leaves it unscaled (scale 1) instead
#: of blowing rounding noise up to unit variance; the estimator's in-memory standardization uses
#: the same rule (:func:`guarded_scale`), as sklearn's StandardScaler does.
CONSTANT_SPREAD_ULPS = 10.0


def as_tensor(
    value: Any,
    name: str,
    dtype: torch.dtype,
    *,
    check_finite: bool = True,
    allow_inf: bool = False,
) -> torch.Tensor:
    """Converts an array-like to a floating tensor and checks it is non-empty and finite.

    Args:
        value: numpy array, tensor or nested sequence, shape ``(n, ...)``.
        name: argument name used in error messages.
        dtype: floating dtype of the result (the model's parameter dtype).
        check_finite: refuse NaN and inf (the caller checks the observed entries itself).
        allow_inf: accept ``-inf`` and ``inf`` (still not NaN): the encoded ends of censored
            or missing targets (a model with ``infinite_targets = True``).

    Returns:
        Tensor of shape ``(n, ...)`` (a 0-d input is rejected), on the input's device.
    """
    if isinstance(value, torch.Tensor):
        tensor = value.detach()
    else:
        try:
            tensor = torch.as_tensor(np.asarray(value, dtype=np.float64))
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name} must be a numeric array or tensor of shape (n, ...), got "
                f"{type(value).__name__} that numpy cannot convert to float: {exc}"
            ) from exc
    if tensor.is_complex():
        raise TypeError(f"{name} must be real-valued, got dtype {tensor.dtype}")
    tensor = tensor.to(dtype)
    if tensor.ndim == 0:
        raise ValueError(f"{name} must have shape (n, ...), got a scalar")
    if tensor.shape[0] == 0:
        raise ValueError(f"{name} is empty (shape {tuple(tensor.shape)}); need at least one row")
    if check_finite:
        finite = ~torch.isnan(tensor) if allow_inf else torch.isfinite(tensor)
        _check_finite(tensor, finite, name, nan_only=allow_inf)
    return tensor


def _check_finite(
    tensor: torch.Tensor, finite: torch.Tensor, name: str, nan_only: bool = False
) -> None:
    if not bool(finite.all()):
        bad = (~finite).reshape(tensor.shape[0], -1).any(dim=1).nonzero().flatten()
        raise ValueError(
            f"{name} contains {'NaN' if nan_only else 'NaN or inf'} in {bad.numel()} row(s), "
            f"first at row {int(bad[0])}; "
            "drop or impute them before fitting"
        )


def prepare_xy(
    X: Any,
    y: Any,
    dtype: torch.dtype,
    *,
    mask: Any = None,
    names: tuple[str, str] = ("X", "y"),
    mask_name: str = "mask",
    infinite_targets: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Validates ``X (n,)|(n, ...)``, ``y (n,)|(n, D)|(n, T, D)`` and an optional mask.

    With ``mask (n, T)`` (bool, or 0/1), ``y`` is ``(n, T, D)`` or ``(n, T)`` (one output);
    its entries where the mask is False may hold anything, NaN included (padding), and are
    replaced by 0 so that no loss ever computes on them. Every observed entry must be finite
    (or, with ``infinite_targets``, may be ``-inf``/``inf``: encoded censored or missing ends).

    Returns:
        ``X`` as ``(n, d)`` (1-D input becomes one column) or ``(n, ...)``, ``y`` as
        ``(n, D)`` or ``(n, ..., D)`` (sequences: ``(n, T, D)``), and the mask as a bool
        tensor of shape ``y.shape[:-1]`` (None without a mask).
    """
    name_x, name_y = names
    if X is None or y is None:
        missing = name_x if X is None else name_y
        raise ValueError(f"{missing} is None; pass both {name_x} and {name_y}")
    Xt = as_tensor(X, name_x, dtype)
    yt = as_tensor(y, name_y, dtype, check_finite=mask is None, allow_inf=infinite_targets)
    if Xt.ndim == 1:
        Xt = Xt.unsqueeze(-1)
    mt = None
    if mask is not None:
        mt = _as_mask(mask, mask_name, yt, name_y)
        if yt.shape == mt.shape:  # (n, T): one output
            yt = yt.unsqueeze(-1)
        observed = mt.unsqueeze(-1).expand_as(yt)
        finite = ~torch.isnan(yt) if infinite_targets else torch.isfinite(yt)
        where = f"{name_y} (where {mask_name} is True)"
        _check_finite(yt, finite | ~observed, where, nan_only=infinite_targets)
        yt = torch.where(observed, yt, torch.zeros((), dtype=yt.dtype, device=yt.device))
    elif yt.ndim == 1:
        yt = yt.unsqueeze(-1)
    if Xt.shape[0] != yt.shape[0]:
        raise ValueError(
            f"{name_x} and {name_y} must have the same number of rows, got "
            f"{Xt.shape[0]} and {yt.shape[0]}"
        )
    return Xt, yt, mt


def _as_mask(mask: Any, name: str, y: torch.Tensor, name_y: str) -> torch.Tensor:
    """``mask`` as a bool tensor of shape ``y.shape[:-1]`` (or ``y.shape`` for one output)."""
    if isinstance(mask, torch.Tensor):
        mt = mask.detach()
    else:
        try:
            mt = torch.as_tensor(np.asarray(mask))
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{name} must be a bool array of shape (n, T), got {exc}") from exc
    if mt.dtype != torch.bool:
        if mt.is_floating_point() or mt.is_complex() or not bool(((mt == 0) | (mt == 1)).all()):
            raise TypeError(f"{name} must hold booleans (or 0/1 integers), got dtype {mt.dtype}")
        mt = mt.to(torch.bool)
    if mt.ndim < 1 or y.shape not in (mt.shape, (*mt.shape, y.shape[-1])):
        raise ValueError(
            f"{name} must have the shape of {name_y} without its last axis: {name_y} "
            f"{tuple(y.shape)} needs {name} {tuple(y.shape[:-1])} (or {name_y} "
            f"{tuple(mt.shape)} for one output), got {name} {tuple(mt.shape)}"
        )
    return mt.to(y.device)


def split_batch(batch: Any, source: str) -> tuple[torch.Tensor, ...]:
    """Unpacks a DataLoader item ``(x, y)`` or ``(x, y, mask)``; ``y (B,)`` becomes ``(B, 1)``
    and, with a mask ``(B, T)``, ``y (B, T)`` becomes ``(B, T, 1)``."""
    if not isinstance(batch, (tuple, list)) or len(batch) not in (2, 3):
        raise TypeError(
            f"{source} must yield (x, y) pairs or (x, y, mask) triples, got "
            f"{type(batch).__name__}"
            + (f" of length {len(batch)}" if isinstance(batch, (tuple, list)) else "")
        )
    xb, yb = (
        b if isinstance(b, torch.Tensor) else torch.as_tensor(np.asarray(b)) for b in batch[:2]
    )
    if xb.ndim == 1:
        xb = xb.unsqueeze(-1)
    if len(batch) == 2:
        return xb, yb.unsqueeze(-1) if yb.ndim == 1 else yb
    mb = _as_mask(batch[2], f"the mask of {source}", yb, f"the y of {source}")
    if yb.shape == mb.shape:
        yb = yb.unsqueeze(-1)
    # Padding may be NaN: zero it here, as prepare_xy does for in-memory data.
    return xb, torch.where(mb.unsqueeze(-1), yb, torch.zeros((), dtype=yb.dtype)), mb


class TensorBatches:
    """Seeded minibatches over in-memory tensors, sharded across ranks like DDP's sampler.

    Every rank draws the same permutation from an identically seeded generator, pads it to a
    multiple of ``world_size`` by repeating its head (as ``DistributedSampler`` does, so all
    ranks run the same number of steps) and keeps every ``world_size``-th index.

    With ``members = M > 1`` (a batched ensemble) every member draws its own permutation and
    the batches are ``(M, B, ...)``: row ``m`` holds member ``m``'s minibatch.

    Args:
        X: inputs ``(n, ...)``.
        y: targets ``(n, D)`` or ``(n, ..., D)``.
        mask: None, or ``(n, ...)`` bool, the observed entries of ``y``; batches are then
            ``(xb, yb, mb)`` triples.
        batch_size: rows per rank and step.
        shuffle: draw a fresh permutation from ``generator`` at each :meth:`batches` call.
        rank, world_size: this process's shard.
        pad: repeat the head of the order so that every rank gets as many rows.
        members: number of independent orders (ensemble members).
    """

    def __init__(
        self,
        X: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool,
        rank: int = 0,
        world_size: int = 1,
        pad: bool = True,
        members: int = 1,
        mask: torch.Tensor | None = None,
    ) -> None:
        self.X, self.y, self.mask = X, y, mask
        self.members = members
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.rank, self.world_size = rank, world_size
        self.pad = pad

    def __len__(self) -> int:
        return math.ceil(self._indices(None).shape[-1] / self.batch_size)

    @property
    def n_rows(self) -> int:
        return int(self.X.shape[0])

    def _indices(self, generator: torch.Generator | None) -> torch.Tensor:
        """``(n,)`` order, or ``(M, n)`` orders for ``members = M > 1``."""
        n, M = self.n_rows, self.members
        if self.shuffle and generator is not None:
            if M > 1:
                order = torch.argsort(torch.rand(M, n, generator=generator), dim=1)
            else:
                order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n) if M == 1 else torch.arange(n).expand(M, n)
        if self.world_size > 1:
            if self.pad:
                total = math.ceil(n / self.world_size) * self.world_size
                if total > n:
                    order = torch.cat([order, order[..., : total - n]], dim=-1)
            order = order[..., self.rank :: self.world_size]
        return order

    def batches(
        self, generator: torch.Generator | None = None
    ) -> Iterator[tuple[torch.Tensor, ...]]:
        """Yields ``(xb (B, ...), yb (B, D))`` (with members: ``(M, B, ...)``), plus the
        mask's ``mb (B, ...)`` with a mask; consumes ``generator`` once when shuffling."""
        order = self._indices(generator).to(self.X.device)
        mask = self.mask
        for start in range(0, order.shape[-1], self.batch_size):
            idx = order[..., start : start + self.batch_size]
            if mask is None:
                yield self.X[idx], self.y[idx]
            else:
                yield self.X[idx], self.y[idx], mask[idx]


# --------------------------------------------------------------------------- fit's sources


@dataclass
class Source:
    """One side (train or validation) of fit's data: in-memory batches or a DataLoader."""

    tensors: TensorBatches | None = None
    loader: Iterable[Any] | None = None
    n_rows: int | None = None
    name: str = "train_data"
    #: every rank gets the same number of batches (no DDP join needed)
    even: bool = True

    def batches(self, generator: torch.Generator, epoch: int) -> Iterator[Any]:
        """Yields ``(x, y)`` pairs (or ``(x, y, mask)`` triples) for one epoch; ``y`` is
        ``(B, D)`` or ``(B, ..., D)``."""
        if self.tensors is not None:
            return self.tensors.batches(generator)
        if self.loader is None:
            raise RuntimeError("Source has neither tensors nor a loader")
        for obj in (getattr(self.loader, "sampler", None), getattr(self.loader, "dataset", None)):
            set_epoch = getattr(obj, "set_epoch", None)
            if callable(set_epoch):  # DistributedSampler / CSVChunkDataset reshuffle per epoch
                set_epoch(epoch)
        return (split_batch(b, self.name) for b in self.loader)


def _tensor_source(
    X: torch.Tensor,
    y: torch.Tensor,
    batch: int,
    ctx: DistContext,
    device: torch.device,
    *,
    train: bool,
    name: str,
    members: int = 1,
    mask: torch.Tensor | None = None,
) -> Source:
    if device.type == "cuda" and X.nbytes + y.nbytes < DEVICE_RESIDENT_BYTES:
        X, y = X.to(device), y.to(device)
        mask = None if mask is None else mask.to(device)
    # Validation shards are disjoint and unpadded, so the summed NLL counts each row once;
    # validation rows are shared by all members (one batch scores every member).
    tb = TensorBatches(
        X,
        y,
        batch,
        shuffle=train,
        rank=ctx.rank,
        world_size=ctx.world_size,
        pad=train,
        members=members if train else 1,
        mask=mask,
    )
    return Source(tb, n_rows=int(X.shape[0]), name=name)


def _dataset_loader(
    ds: Dataset[Any], batch: int, ctx: DistContext, seed: int, gen: torch.Generator, train: bool
) -> DataLoader[Any]:
    if isinstance(ds, IterableDataset):
        return DataLoader(ds, batch_size=batch)
    if not train:
        if ctx.enabled:  # disjoint shards without padding, so the summed NLL counts each row once
            ds = Subset(ds, range(ctx.rank, len(ds), ctx.world_size))  # type: ignore[arg-type]
        return DataLoader(ds, batch_size=batch, shuffle=False)
    sampler: Sampler[int]
    if ctx.enabled:
        sampler = DistributedSampler(ds, shuffle=True, seed=seed)
    else:
        sampler = RandomSampler(ds, generator=gen)  # type: ignore[arg-type]
    return DataLoader(ds, batch_size=batch, sampler=sampler)


def _n_val(val_fraction: float, n: int) -> int:
    n_val = max(1, round(val_fraction * n))
    if n - n_val < 1:
        raise ValueError(f"val_fraction={val_fraction} leaves no training rows out of {n}")
    return n_val


def build_sources(
    X: Any,
    y: Any,
    train_data: Any,
    val_data: Any,
    val_fraction: float,
    batch: int,
    ctx: DistContext,
    seed: int,
    gen: torch.Generator,
    dtype: torch.dtype,
    device: torch.device,
    *,
    members: int = 1,
    mask: Any = None,
    infinite_targets: bool = False,
) -> tuple[Source, Source | None]:
    """Turns fit's data arguments into training and validation sources.

    ``val_fraction`` splits ``X, y`` (and ``mask``) or a map-style ``train_data`` with
    ``gen`` (identically seeded on every rank); it is ignored for DataLoaders and
    IterableDatasets. With ``members > 1``, in-memory training rows come in one independent
    order per member (``(M, B, ...)`` batches); other sources give every member the same
    ``(B, ...)`` batch. A mask makes every batch an ``(x, y, mask)`` triple.
    ``infinite_targets``: in-memory targets may hold ``-inf``/``inf`` (see ``as_tensor``).
    """
    if train_data is not None and (X is not None or y is not None):
        raise ValueError("pass either X and y or train_data, not both")
    if train_data is None and X is None and y is None:
        raise ValueError("no training data: pass X and y, or train_data")
    if mask is not None and train_data is not None:
        raise ValueError(
            "mask goes with X and y; a train_data Dataset or DataLoader yields "
            "(x, y, mask) triples instead"
        )
    val: Source | None = None
    if isinstance(val_data, (tuple, list)):
        if len(val_data) not in (2, 3):
            raise ValueError(
                "val_data as a tuple must be (X_val, y_val) or (X_val, y_val, mask_val), got "
                f"{len(val_data)} items"
            )
        Xv, yv, mv = prepare_xy(
            val_data[0],
            val_data[1],
            dtype,
            mask=val_data[2] if len(val_data) == 3 else None,
            names=("val_data[0]", "val_data[1]"),
            mask_name="val_data[2]",
            infinite_targets=infinite_targets,
        )
        val = _tensor_source(Xv, yv, EVAL_BATCH, ctx, device, train=False, name="val_data", mask=mv)
    elif isinstance(val_data, DataLoader):
        val = Source(loader=val_data, name="val_data")
    elif isinstance(val_data, Dataset):
        loader = _dataset_loader(val_data, EVAL_BATCH, ctx, seed, gen, False)
        n_rows = len(val_data) if hasattr(val_data, "__len__") else None
        val = Source(loader=loader, n_rows=n_rows, name="val_data")
    elif val_data is not None:
        raise TypeError(
            "val_data must be an (X, y) tuple, a Dataset or a DataLoader, got "
            f"{type(val_data).__name__}"
        )

    if train_data is None:
        Xt, yt, mt = prepare_xy(X, y, dtype, mask=mask, infinite_targets=infinite_targets)
        if val is None and val_fraction > 0:
            n_val = _n_val(val_fraction, Xt.shape[0])
            perm = torch.randperm(Xt.shape[0], generator=gen)
            Xv, yv = Xt[perm[:n_val]], yt[perm[:n_val]]
            Xt, yt = Xt[perm[n_val:]], yt[perm[n_val:]]
            mv = None
            if mt is not None:
                mv, mt = mt[perm[:n_val]], mt[perm[n_val:]]
            val = _tensor_source(
                Xv, yv, EVAL_BATCH, ctx, device, train=False, name="val split", mask=mv
            )
        train = _tensor_source(
            Xt, yt, batch, ctx, device, train=True, name="X, y", members=members, mask=mt
        )
        return train, val

    if isinstance(train_data, DataLoader):
        ds_len = getattr(train_data.dataset, "__len__", None)
        n_rows = ds_len() if callable(ds_len) else None
        return Source(loader=train_data, n_rows=n_rows, even=False), val
    if not isinstance(train_data, Dataset):
        raise TypeError(
            "train_data must be a Dataset, IterableDataset or DataLoader, got "
            f"{type(train_data).__name__}"
        )
    if isinstance(train_data, IterableDataset):
        loader = _dataset_loader(train_data, batch, ctx, seed, gen, True)
        return Source(loader=loader, even=False), val
    ds: Dataset[Any] = train_data
    n = len(ds)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError("train_data is empty")
    if val is None and val_fraction > 0:
        n_val = _n_val(val_fraction, n)
        ds, vds = random_split(ds, [n - n_val, n_val], generator=gen)
        loader = _dataset_loader(vds, EVAL_BATCH, ctx, seed, gen, False)
        val = Source(loader=loader, n_rows=n_val, name="val split")
    loader = _dataset_loader(ds, batch, ctx, seed, gen, True)
    return Source(loader=loader, n_rows=len(ds)), val  # type: ignore[arg-type]


# --------------------------------------------------------------------------- streaming moments


def guarded_scale(mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """``std`` with 1 for columns constant up to rounding (see ``CONSTANT_SPREAD_ULPS``)."""
    eps = float(np.finfo(np.float64).eps)
    tiny = CONSTANT_SPREAD_ULPS * eps * np.maximum(np.abs(mean), 1.0)
    return np.where(std > tiny, std, 1.0)


@dataclass
class Moments:
    """Column means and standard deviations (``ddof=0``, as numpy's default), float64."""

    n: int
    mean_x: np.ndarray
    std_x: np.ndarray
    mean_y: np.ndarray
    std_y: np.ndarray

    def scales(self) -> tuple[np.ndarray, np.ndarray]:
        """``(scale_x, scale_y)``: the stds, with 1 for columns constant up to rounding."""

        return guarded_scale(self.mean_x, self.std_x), guarded_scale(self.mean_y, self.std_y)

    def standardize(self, x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """``((x - mean_x) / scale_x, (y - mean_y) / scale_y)`` for ``x (m, d)``, ``y (m, D)``.

        Usable as the ``transform`` of a :class:`CSVChunkDataset`.
        """
        scale_x, scale_y = self.scales()
        return (x - self.mean_x) / scale_x, (y - self.mean_y) / scale_y


def _merge(
    n_a: int, mean_a: np.ndarray, m2_a: np.ndarray, block: np.ndarray
) -> tuple[int, np.ndarray, np.ndarray]:
    """Chan et al.'s parallel update of (count, mean, sum of squared deviations) by a block."""
    n_b = block.shape[0]
    if n_b == 0:
        return n_a, mean_a, m2_a
    mean_b = block.mean(axis=0)
    m2_b = ((block - mean_b) ** 2).sum(axis=0)
    n = n_a + n_b
    delta = mean_b - mean_a
    mean = mean_a + delta * (n_b / n)
    m2 = m2_a + m2_b + delta**2 * (n_a * n_b / n)
    return n, mean, m2


def streaming_moments(
    data: CSVChunkDataset | Iterable[tuple[Any, Any]],
) -> Moments:
    """Means and standard deviations of features and targets in one streaming pass.

    Blocks are combined with the pairwise update of Chan, Golub & LeVeque (1979) in float64,
    which avoids the cancellation of the naive ``E[x^2] - E[x]^2``.

    Args:
        data: a :class:`CSVChunkDataset` (all chunks are read, ignoring sharding) or any
            iterable of ``(x (m, d) | (d,), y (m, D) | (D,))`` pairs (chunks or single rows).

    Returns:
        :class:`Moments` with ``std = sqrt(M2 / n)``.

    Example:
        >>> m = streaming_moments([(np.ones((2, 1)), np.array([[0.0], [2.0]]))])
        >>> m.n, m.mean_y.tolist(), m.std_y.tolist()
        (2, [1.0], [1.0])
    """
    pairs: Iterable[tuple[Any, Any]]
    if isinstance(data, CSVChunkDataset):
        pairs = ((x, y) for _, x, y in data.iter_chunks())
    else:
        pairs = data
    n = 0
    stats_x: tuple[np.ndarray, np.ndarray] | None = None
    stats_y: tuple[np.ndarray, np.ndarray] | None = None
    for x, y in pairs:
        xa = np.asarray(x.detach().cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float64)
        ya = np.asarray(y.detach().cpu() if isinstance(y, torch.Tensor) else y, dtype=np.float64)
        xa = xa.reshape(1, -1) if xa.ndim <= 1 else xa.reshape(xa.shape[0], -1)
        ya = ya.reshape(1, -1) if ya.ndim <= 1 else ya.reshape(ya.shape[0], -1)
        if stats_x is None or stats_y is None:
            stats_x = (np.zeros(xa.shape[1]), np.zeros(xa.shape[1]))
            stats_y = (np.zeros(ya.shape[1]), np.zeros(ya.shape[1]))
        _, mx, m2x = _merge(n, stats_x[0], stats_x[1], xa)
        n_new, my, m2y = _merge(n, stats_y[0], stats_y[1], ya)
        stats_x, stats_y, n = (mx, m2x), (my, m2y), n_new
    if n == 0 or stats_x is None or stats_y is None:
        raise ValueError("streaming_moments got no rows")
    return Moments(n, stats_x[0], np.sqrt(stats_x[1] / n), stats_y[0], np.sqrt(stats_y[1] / n))
