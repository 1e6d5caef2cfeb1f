"""Argument checks of :class:`~mixture_density.GaussianMixture`, with the messages users see.

Types, dtypes and shapes are always checked; values (finiteness, supports) where the caller
says so (``validate_args``). Every error names the argument, what was expected and what
came.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ._components import all_finite
from ._math import expand_to

__all__ = [
    "as_tensor_like",
    "batch_shape",
    "check_finite",
    "check_joinable",
    "check_value",
    "checks_values",
    "conditioning_values",
    "exporting",
    "float_tensors",
    "interval_ends",
    "logits_and_loc",
    "normalize_dims",
    "one_factor",
    "packed_parameters",
    "positive",
    "probabilities",
    "require_tensor",
    "scale_and_shift",
]

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def as_tensor_like(x: Any, like: Tensor, name: str) -> Tensor:
    """``x`` as a real tensor of the dtype and device of ``like``."""
    if isinstance(x, Tensor):
        if x.is_complex():
            raise TypeError(f"{name} must be a real tensor, got dtype {x.dtype}")
        return x.to(dtype=like.dtype, device=like.device)
    return torch.as_tensor(x, dtype=like.dtype, device=like.device)


def one_factor(**factors: Tensor | None) -> tuple[str, Tensor]:
    """The one covariance factor given, as ``(keyword, tensor)``."""
    given = [(k, v) for k, v in factors.items() if v is not None]
    if len(given) != 1:
        raise ValueError(
            "give exactly one of scale, scale_tril, precision_tril; "
            f"got {sorted(k for k, _ in given) or 'none'}"
        )
    return given[0]


def require_tensor(name: str, value: Any) -> Tensor:
    """``value`` itself if it is a tensor, else a ``TypeError`` naming ``name``."""
    if not isinstance(value, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(value).__name__}")
    return value


def float_tensors(*named: tuple[str, Any]) -> list[Tensor]:
    """Check that every argument is a floating-point tensor; cast all to one dtype.

    The dtype is the promoted one, float32 in place of a 16-bit dtype (documented upcast:
    16-bit log-densities are not usable).
    """
    dtype = None
    for name, t in named:
        require_tensor(name, t)
        if not t.is_floating_point():
            raise TypeError(f"{name} must have a floating-point dtype, got {t.dtype}")
        dtype = t.dtype if dtype is None else torch.promote_types(dtype, t.dtype)
    if dtype in _HALF_DTYPES:
        dtype = torch.float32
    return [t.to(dtype) for _, t in named]


def logits_and_loc(logits: Tensor, loc: Tensor) -> tuple[int, int]:
    """``(K, D)`` of logits (*batch, K) and loc (*batch, K, D)."""
    if logits.dim() < 1:
        raise ValueError(f"logits must have shape (*batch, K), got {tuple(logits.shape)}")
    if loc.dim() < 2:
        raise ValueError(f"loc must have shape (*batch, K, D), got {tuple(loc.shape)}")
    K, D = logits.shape[-1], loc.shape[-1]
    if loc.shape[-2] != K:
        raise ValueError(
            f"loc must have shape (*batch, K, D) with K = logits.shape[-1] = {K}, "
            f"got {tuple(loc.shape)}"
        )
    return K, D


def packed_parameters(
    logits: Any, loc: Any, diagonal: Any, off_diagonal: Any
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``GaussianMixture.from_packed_precision_tril`` arguments, loc broadcast to the batch."""
    logits, loc, diagonal, off_diagonal = float_tensors(
        ("logits", logits), ("loc", loc), ("diagonal", diagonal), ("off_diagonal", off_diagonal)
    )
    if logits.dim() < 1 or loc.dim() < 2 or loc.shape[-2] != logits.shape[-1]:
        raise ValueError(
            "logits must have shape (*batch, K) and loc (*batch, K, D) with the same K, "
            f"got {tuple(logits.shape)} and {tuple(loc.shape)}"
        )
    K, D = loc.shape[-2:]
    M = D * (D - 1) // 2
    for name, t, size in (("diagonal", diagonal, D), ("off_diagonal", off_diagonal, M)):
        if t.dim() < 2 or t.shape[-1] != size or t.shape[-2] not in (1, K):
            raise ValueError(
                f"{name} must have shape (*batch, K, {size}) = (..., {K}, {size}) for "
                f"D = {D}, got {tuple(t.shape)}"
            )
    batch = batch_shape(
        logits.shape[:-1],
        loc.shape[:-2],
        diagonal.shape[:-2],
        off_diagonal.shape[:-2],
        given=lambda: (
            f"logits {tuple(logits.shape)}, loc {tuple(loc.shape)}, diagonal "
            f"{tuple(diagonal.shape)}, off_diagonal {tuple(off_diagonal.shape)}"
        ),
    )
    return logits, expand_to(loc, (*batch, K, D)), diagonal, off_diagonal


def batch_shape(*shapes: torch.Size, given: Callable[[], str]) -> torch.Size:
    """The broadcast of ``shapes``; ``ValueError`` naming the ``given()`` shapes otherwise.

    When every shape is a trailing part of the longest (e.g. all equal), that is the
    result; ``torch.broadcast_shapes`` runs Python reference code, a noticeable part of a
    small training step.
    """
    longest = max(shapes, key=len)
    if all(s == longest[len(longest) - len(s) :] for s in shapes):
        return torch.Size(longest)
    try:
        return torch.broadcast_shapes(*shapes)
    except RuntimeError:
        raise ValueError(f"batch shapes do not broadcast: {given()}") from None


def checks_values(validate_args: bool | None) -> bool:
    """Whether to run the value checks: ``validate_args``, except while ``torch.export`` traces
    a module (as ONNX export does). The checks branch on the data, which a traced graph cannot
    hold; the exported graph computes the same parameters without them."""
    return bool(validate_args) and not exporting()


def exporting() -> bool:
    """Whether ``torch.export`` is tracing (ONNX export): no branching on data or sizes."""
    is_exporting = getattr(torch.compiler, "is_exporting", None)  # torch >= 2.5
    return bool(is_exporting()) if is_exporting is not None else False


def check_finite(*named: tuple[str, Tensor]) -> None:
    for name, t in named:
        if not all_finite(t):
            raise ValueError(f"{name} must be finite, found NaN or inf")


def check_value(
    value: Any, batch: torch.Size, D: int, like: Tensor, validate: bool, name: str = "value"
) -> Tensor:
    """``value`` of shape (*sample, *batch, D), cast to the dtype of ``like``."""
    if not isinstance(value, Tensor):
        value = torch.as_tensor(value, dtype=like.dtype, device=like.device)

    def expected() -> str:  # built only for an error: log_prob is the training hot path
        return f"(*sample, *batch, D) = (..., {', '.join(map(str, (*batch, D)))})"

    if value.dim() < 1 or value.shape[-1] != D:
        hint = (
            "; for D == 1 add the event dim, e.g. value.unsqueeze(-1)"
            if D == 1 and value.dim() >= 1
            else ""
        )
        raise ValueError(
            f"{name} must have shape {expected()}, got {tuple(value.shape)}: its last dim "
            f"must be the event dim D = {D}{hint}"
        )
    n = len(batch)
    if n:
        vb = value.shape[:-1][-n:]
        vb = torch.Size((1,) * (n - len(vb))) + vb
        if any(a not in (1, b) for a, b in zip(vb, batch)):
            raise ValueError(
                f"{name} must have shape {expected()}, got {tuple(value.shape)}: its batch "
                f"dims {tuple(vb)} do not broadcast to batch_shape {tuple(batch)}"
            )
    value = value.to(dtype=like.dtype)
    if validate and not all_finite(value):
        raise ValueError(f"{name} must be finite, found NaN or inf")
    return value


def interval_ends(low: Any, high: Any, dist: Any) -> tuple[Tensor, Tensor]:
    """The ends of ``GaussianMixture.log_interval_prob``, (*sample, *batch, D) each."""
    D = dist.event_shape[0]
    if dist.scale is None and D > 1:
        raise ValueError(
            f"log_interval_prob needs D == 1 or elementwise scales; this mixture has D = {D} "
            f"with {dist.parameterization}: take .marginal([d]) first"
        )
    lo = check_value(low, dist.batch_shape, D, dist.logits, False, "low")
    hi = check_value(high, dist.batch_shape, D, dist.logits, False, "high")
    bad = torch.isnan(lo) | torch.isnan(hi) | (lo > hi)
    if bool(bad.any()):
        raise ValueError(
            f"low and high must not be NaN, with low <= high; {int(bad.sum())} entries are not"
        )
    return lo, hi


def probabilities(value: Any, batch: torch.Size, like: Tensor) -> Tensor:
    """Probabilities in ``[0, 1]`` of shape (*sample, *batch), expanded to it."""
    q = as_tensor_like(value, like, "value")
    n = len(batch)
    try:
        shape = torch.broadcast_shapes(q.shape, batch)
    except RuntimeError:
        shape = None
    if shape is None or shape[len(shape) - n :] != batch:
        raise ValueError(
            f"value must have shape (*sample, *batch) = (..., "
            f"{', '.join(map(str, batch))}), got {tuple(q.shape)}"
        )
    if bool(((q < 0) | (q > 1) | torch.isnan(q)).any()):
        raise ValueError("value must hold probabilities in [0, 1]")
    return q.expand(shape)


def normalize_dims(dims: Sequence[int] | int, D: int, name: str) -> list[int]:
    """Distinct output dims in ``[0, D)`` (negative ones counted from the end)."""
    if isinstance(dims, int):
        dims = [dims]
    out = []
    for d in dims:
        if not -D <= int(d) < D:
            raise ValueError(f"{name} entries must lie in [-{D}, {D}), got {list(dims)}")
        out.append(int(d) % D)
    if len(set(out)) != len(out) or not out:
        raise ValueError(f"{name} must be a non-empty list of distinct dims, got {list(dims)}")
    return out


def conditioning_values(values: Any, n_dims: int, batch: torch.Size, like: Tensor) -> Tensor:
    """Observed values (*batch', n_dims) -> (*B, 1, n_dims), ``B`` broadcast with ``batch``."""
    values = as_tensor_like(values, like, "values")
    if values.dim() < 1 or values.shape[-1] != n_dims:
        raise ValueError(
            f"values must have shape (*batch, len(dims)) = (..., {n_dims}), "
            f"got {tuple(values.shape)}"
        )
    try:
        shape = torch.broadcast_shapes(values.shape[:-1], batch)
    except RuntimeError:
        raise ValueError(
            f"values batch shape {tuple(values.shape[:-1])} does not broadcast with "
            f"batch_shape {tuple(batch)}"
        ) from None
    return values.expand((*shape, n_dims)).unsqueeze(-2)


def positive(x: Any, like: Tensor, name: str) -> Tensor:
    t = as_tensor_like(x, like, name)
    if not exporting() and not bool((t > 0).all()):
        raise ValueError(f"{name} must be positive, got {x}")
    return t


def scale_and_shift(scale: Any, shift: Any, D: int, like: Tensor) -> tuple[Tensor, Tensor]:
    """Nonzero ``scale`` and ``shift`` broadcastable to (*batch, D), expanded to (..., D)."""
    s = as_tensor_like(scale, like, "scale")
    t = as_tensor_like(shift, like, "shift")
    if not exporting() and bool((s == 0).any()):  # a traced graph cannot branch on it
        raise ValueError("scale must be nonzero everywhere (the result would be degenerate)")
    for name, v in (("scale", s), ("shift", t)):
        if v.dim() > 0 and v.shape[-1] not in (1, D):
            raise ValueError(
                f"{name} must be broadcastable to (*batch, D) = (..., {D}), "
                f"got shape {tuple(v.shape)}"
            )
    return s.expand((*s.shape[:-1], D)), t.expand((*t.shape[:-1], D))


def check_joinable(mixtures: Sequence[Any], dim: str) -> None:
    """``GaussianMixture.cat`` arguments: one parameterization, shapes that join."""
    if dim not in ("components", "batch"):
        raise ValueError(f"dim must be 'components' or 'batch', got {dim!r}")
    if not mixtures:
        raise ValueError("mixtures must hold at least one GaussianMixture, got none")
    kinds = sorted({m.parameterization for m in mixtures})
    if len(kinds) > 1:
        raise ValueError(f"mixtures must share one parameterization, got {kinds}")
    keys: list[tuple[Any, ...]]  # compared, not hashed: traced sizes are unhashable
    if dim == "components":  # equal batch and event shapes
        keys = [(m.batch_shape, m.event_shape) for m in mixtures]
    else:  # equal K and shapes but for batch dim 0
        keys = [(m.batch_shape[1:], m.n_components, m.event_shape) for m in mixtures]
    if any(k != keys[0] for k in keys) or (dim == "batch" and not mixtures[0].batch_shape):
        raise ValueError(
            f"mixtures do not join along {dim}: batch shapes "
            f"{[tuple(m.batch_shape) for m in mixtures]}, K "
            f"{[m.n_components for m in mixtures]}, event shapes "
            f"{[tuple(m.event_shape) for m in mixtures]}"
        )
