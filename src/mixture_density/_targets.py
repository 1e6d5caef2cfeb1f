"""Targets that are not continuous on all of R (private): grids, bounds, censoring, gaps.

:class:`TargetSpec` settles, per output, a grid resolution ``h`` (or none) and bounds
``(lo, hi)`` (``-inf``/``inf`` where open), with the checks and messages users see. The
bounds choose a monotone increasing map ``z = g(y)`` onto R, under which the mixture lives:

===========  ===========================  =====================================
bounds       ``z = g(y)``                 ``y = g^{-1}(z)``
===========  ===========================  =====================================
none         ``y``                        ``z``
``lo``       ``log(y - lo)``              ``lo + exp(z)``
``hi``       ``-log(hi - y)``             ``hi - exp(-z)``
both         ``log(y - lo) - log(hi - y)``  ``lo + (hi - lo) sigmoid(z)``
===========  ===========================  =====================================

(``-log(hi - y)`` is ``log(hi - y)`` negated so that every map increases: intervals keep
their order and quantiles map to quantiles.) :func:`encode` turns observations into
lower and upper ends in ``z``: equal ends for an exact value, a mapped bin
``[y - h/2, y + h/2]`` clipped to the bounds on a grid, ``[y, y_upper]`` for an interval
(``-inf``/``inf`` ends for censoring) and ``(-inf, inf)`` for a missing entry. The
likelihood of such ends is in ``_likelihood``. :func:`tie_warning` finds targets with point
masses (few distinct values, a heavy value, a coarse grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "Encoded",
    "OutputTarget",
    "TargetSpec",
    "check_observed",
    "check_training",
    "encode",
    "grid_spacing",
    "point_masses",
    "row_list",
    "tie_warning",
    "upper_ends",
]

#: Tie detection (``tie_warning``), chosen so that no continuous UCI target warns (measured:
#: at most 2.9 rows per distinct value, 2.2 rows per grid point and 3.2% of the rows on one
#: value) while wine (266 rows per value) and naval (234) do:
#: at most this share of distinct values among the rows (20 rows per value on average),
TIE_DISTINCT_SHARE = 0.05
#: or more than this share of the rows on one value (and at least ``TIE_MIN_ROWS`` rows),
TIE_POINT_MASS_SHARE = 0.05
TIE_MIN_ROWS = 10
#: or a grid with at least this many rows per grid point over the range of the values.
TIE_ROWS_PER_GRID_POINT = 5.0
#: Values on a grid agree with ``origin + k h`` to this fraction of ``h`` (decimal data such
#: as 0.951 are off by a few ulps); a spacing below ``GRID_MIN_SHARE`` of the range is no
#: grid that matters (and is what Euclid's algorithm ends at on continuous data).
GRID_RTOL = 1e-6
GRID_MIN_SHARE = 1e-6
#: Significant digits of a detected spacing (0.0010000000000000009 is reported as 0.001).
GRID_DIGITS = 12


def row_list(mask: np.ndarray, limit: int = 5) -> str:
    """``"rows 3, 17 and 20"`` or ``"rows 3, 17, 20, 21, 40 and 12 more"`` for a boolean mask."""
    rows = np.flatnonzero(mask)
    shown = ", ".join(str(int(r)) for r in rows[:limit])
    if len(rows) > limit:
        return f"rows {shown} and {len(rows) - limit} more"
    return f"row {shown}" if len(rows) == 1 else f"rows {shown}"


# ------------------------------------------------------------------------------ the spec


@dataclass(frozen=True)
class OutputTarget:
    """One output: grid resolution, bounds and (after fitting) the grid origin.

    Attributes:
        resolution: grid spacing ``h > 0``, or ``None`` for a continuous output.
        lower, upper: bounds, ``-inf``/``inf`` where open; ``lower < upper``.
        origin: a grid point (the smallest training value), set when fitted with a grid.
    """

    resolution: float | None = None
    lower: float = -math.inf
    upper: float = math.inf
    origin: float | None = None

    @property
    def map(self) -> str:
        """``"identity"``, ``"log_lower"``, ``"log_upper"`` or ``"logit"``."""
        lo, hi = math.isfinite(self.lower), math.isfinite(self.upper)
        return ("logit" if hi else "log_lower") if lo else ("log_upper" if hi else "identity")


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number or None, got {value!r}")
    return float(value)


def _per_output(value: Any, D: int, name: str, is_one: Any) -> list[Any]:
    """``value`` for every output: one shared setting, or a sequence of length ``D``."""
    if is_one(value):
        return [value] * D
    if not isinstance(value, (Sequence, np.ndarray)) or isinstance(value, str):
        raise ValueError(f"{name} must be one setting or one per output, got {value!r}")
    if len(value) != D:
        raise ValueError(
            f"{name} has {len(value)} entries, expected one per output: D = {D} (or one "
            f"setting for all), got {list(value)!r}"
        )
    return list(value)


def _length(v: Any) -> int:
    ok = isinstance(v, (Sequence, np.ndarray)) and not isinstance(v, str)
    return len(v) if ok else 1


def _is_end(v: Any) -> bool:
    return v is None or isinstance(v, (int, float, np.integer, np.floating))


def _is_pair(v: Any) -> bool:
    return isinstance(v, (Sequence, np.ndarray)) and len(v) == 2 and all(map(_is_end, v))


@dataclass(frozen=True)
class TargetSpec:
    """The targets' grid and bounds, one :class:`OutputTarget` per output.

    Example:
        >>> spec = TargetSpec.from_params(1.0, (0, None), 2)
        >>> [o.map for o in spec.outputs], spec.outputs[1].resolution
        (['log_lower', 'log_lower'], 1.0)
        >>> TargetSpec.from_params(None, None, 1).plain
        True
    """

    outputs: tuple[OutputTarget, ...]

    @classmethod
    def from_params(cls, resolution: Any, bounds: Any, D: int) -> TargetSpec:
        """Validated spec of ``target_resolution`` and ``target_bounds`` for ``D`` outputs.

        Raises:
            ValueError: naming the argument and the offending value: a resolution that is
                not a positive finite number, bounds with ``lo >= hi`` or NaN, or a list whose
                length is not ``D``.
        """
        res = _per_output(resolution, D, "target_resolution", _is_end)
        pairs = _per_output(bounds, D, "target_bounds", lambda v: v is None or _is_pair(v))
        outputs = []
        for d, (h, pair) in enumerate(zip(res, pairs)):
            where = f" (output {d})" if D > 1 else ""
            if h is not None:
                h = _number(h, f"target_resolution{where}")
                if not (math.isfinite(h) and h > 0):
                    raise ValueError(f"target_resolution{where} must be > 0 and finite, got {h}")
            if not (pair is None or _is_pair(pair)):
                raise ValueError(f"target_bounds{where} must be (lo, hi) or None, got {pair!r}")
            lo, hi = (-math.inf, math.inf) if pair is None else pair
            lo = -math.inf if lo is None else _number(lo, f"target_bounds{where} lo")
            hi = math.inf if hi is None else _number(hi, f"target_bounds{where} hi")
            if not lo < hi or lo == math.inf or hi == -math.inf:
                raise ValueError(f"target_bounds{where} must have lo < hi, got ({lo}, {hi})")
            outputs.append(OutputTarget(h, lo, hi))
        return cls(tuple(outputs))

    @staticmethod
    def check_types(resolution: Any, bounds: Any) -> None:
        """Checks what can be checked before the number of outputs is known."""
        n_res = 1 if _is_end(resolution) else _length(resolution)
        n_bounds = 1 if bounds is None or _is_pair(bounds) else _length(bounds)
        if n_res > 1 and n_bounds > 1 and n_res != n_bounds:
            raise ValueError(
                f"target_resolution has {n_res} entries and target_bounds {n_bounds}: give "
                "one setting for all outputs or one per output in each"
            )
        TargetSpec.from_params(resolution, bounds, max(n_res, n_bounds))

    @property
    def plain(self) -> bool:
        """No grid and no bounds: the mixture models ``y`` itself."""
        return all(o.map == "identity" and o.resolution is None for o in self.outputs)

    @property
    def lower(self) -> np.ndarray:
        return np.array([o.lower for o in self.outputs])

    @property
    def upper(self) -> np.ndarray:
        return np.array([o.upper for o in self.outputs])

    def with_origins(self, Y: np.ndarray) -> TargetSpec:
        """The spec with each grid output's origin: its smallest observed value in ``Y``."""
        outs = []
        for d, o in enumerate(self.outputs):
            col = Y[:, d][np.isfinite(Y[:, d])]
            origin = float(col.min()) if o.resolution is not None and col.size else None
            outs.append(OutputTarget(o.resolution, o.lower, o.upper, origin))
        return TargetSpec(tuple(outs))

    def to_json(self) -> list[dict[str, Any]]:
        """One JSON-able dict per output (open ends as ``None``)."""
        return [
            {
                "map": o.map,
                "lower": o.lower if math.isfinite(o.lower) else None,
                "upper": o.upper if math.isfinite(o.upper) else None,
                "resolution": o.resolution,
                "origin": o.origin,
            }
            for o in self.outputs
        ]

    @classmethod
    def from_json(cls, data: Sequence[dict[str, Any]]) -> TargetSpec:
        """Inverse of :meth:`to_json`; ``ValueError``/``KeyError``/``TypeError`` if damaged."""
        spec = cls.from_params(
            [d["resolution"] for d in data], [(d["lower"], d["upper"]) for d in data], len(data)
        )
        origins = [None if d["origin"] is None else float(d["origin"]) for d in data]
        outs = [
            OutputTarget(o.resolution, o.lower, o.upper, g) for o, g in zip(spec.outputs, origins)
        ]
        return cls(tuple(outs))

    # ---------------------------------------------------------------- the maps (float64)

    def _ends(self, like: Tensor) -> tuple[Tensor, Tensor]:
        lo = torch.tensor(self.lower, dtype=like.dtype, device=like.device)
        return lo, torch.tensor(self.upper, dtype=like.dtype, device=like.device)

    def forward(self, y: Tensor) -> Tensor:
        """``z = g(y)`` per output, (..., D); ``g(lo) = -inf``, ``g(hi) = inf``, NaN outside."""
        lo, hi = self._ends(y)
        lo_f, hi_f = torch.isfinite(lo), torch.isfinite(hi)
        z = torch.where(lo_f, torch.log(y - lo), 0.0) - torch.where(hi_f, torch.log(hi - y), 0.0)
        return torch.where(lo_f | hi_f, z, y)

    def log_det_jacobian(self, y: Tensor) -> Tensor:
        """``log g'(y)`` per output, (..., D), for ``y`` inside the bounds."""
        lo, hi = self._ends(y)
        lo_f, hi_f = torch.isfinite(lo), torch.isfinite(hi)
        width = torch.where(lo_f & hi_f, torch.log(hi - lo), 0.0)
        return (
            width
            - torch.where(lo_f, torch.log(y - lo), 0.0)
            - torch.where(hi_f, torch.log(hi - y), 0.0)
        )

    def inverse(self, z: Tensor) -> Tensor:
        """``y = g^{-1}(z)`` per output, strictly inside the bounds (ends excluded by one ulp:
        ``exp`` and ``sigmoid`` round to the end itself far out in the tails)."""
        lo, hi = self._ends(z)
        lo_f, hi_f = torch.isfinite(lo), torch.isfinite(hi)
        w = torch.where(lo_f & hi_f, hi - lo, 1.0)
        # sigmoid from the nearer end keeps the precision of values close to that end.
        logit = torch.where(z < 0, lo + w * torch.sigmoid(z), hi - w * torch.sigmoid(-z))
        y = torch.where(
            lo_f,
            torch.where(hi_f, logit, lo + torch.exp(z)),
            torch.where(hi_f, hi - torch.exp(-z), z),
        )
        inside_lo = torch.nextafter(lo, torch.full_like(lo, math.inf))
        inside_hi = torch.nextafter(hi, torch.full_like(hi, -math.inf))
        return torch.minimum(torch.maximum(y, inside_lo), inside_hi)

    def to_y(self, z: Tensor) -> Tensor:
        """Values or quantiles in ``z`` (..., D) to ``y`` (float64): the maps increase, so
        quantiles map to quantiles exactly; grid outputs are rounded to the grid."""
        return self.snap(self.inverse(z.double()))

    def snap(self, y: Tensor) -> Tensor:
        """Grid outputs rounded to the nearest grid point ``origin + k h`` inside the bounds."""
        out = []
        for d, o in enumerate(self.outputs):
            v = y[..., d]
            if o.resolution is not None:
                h, g = o.resolution, o.origin or 0.0
                v = torch.round((v - g) / h) * h + g
                v = torch.where(v < o.lower, v + h, torch.where(v > o.upper, v - h, v))
            out.append(v)
        return torch.stack(out, -1)


# ------------------------------------------------------------------------------ encoding


@dataclass
class Encoded:
    """Observations as ends in ``z = g(y)``; every array is float64 numpy.

    Attributes:
        low, high: (n, D) ends; equal for an exact value, ``(-inf, inf)`` where missing.
        log_jacobian: (n,) ``sum_d log g'(y_d)`` over the exactly observed outputs (the
            density in ``y`` is the density in ``z`` times ``g'``; bins and intervals are
            probabilities and need none).
        impossible: (n,) rows with zero probability: an exact value outside the open bounds,
            or an interval that misses them.
        points: (n, D) a representative ``z`` per entry (the value, the centre of a bin or of
            a finite interval, the finite end of a censored one; NaN where missing).
    """

    low: np.ndarray
    high: np.ndarray
    log_jacobian: np.ndarray
    impossible: np.ndarray
    points: np.ndarray

    def standardized(self, mean: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """(n, 2D) ends ``(z - mean) / scale``: lower ends, then upper ends (the training
        target of ``_likelihood.TargetLikelihood``)."""
        return np.concatenate([(self.low - mean) / scale, (self.high - mean) / scale], 1)


def encode(spec: TargetSpec, Y: np.ndarray, Y_upper: np.ndarray | None = None) -> Encoded:
    """Ends in ``z`` of observations ``Y (n, D)`` (NaN: missing) and optional ``Y_upper (n, D)``.

    ``Y_upper`` NaN or equal to ``Y``: observed exactly; above ``Y``: the interval
    ``[Y, Y_upper]`` (``Y = -inf`` left-, ``Y_upper = inf`` right-censored). On a grid an exact
    value ``y`` is its bin ``[y - h/2, y + h/2]`` and an interval's finite ends widen by
    ``h/2`` (grid values at both ends included). Bins and intervals are clipped to the
    bounds. ``Y_upper < Y`` is not checked here (see :func:`check_training`).
    """
    Y = np.asarray(Y, dtype=np.float64)
    upper = Y if Y_upper is None else np.asarray(Y_upper, dtype=np.float64)
    missing = np.isnan(Y)
    exact = ~missing & (np.isnan(upper) | (upper == Y))
    a = Y.copy()
    b = np.where(exact, Y, upper)
    h = np.array([o.resolution or 0.0 for o in spec.outputs])
    grid = h > 0
    a = np.where(grid & np.isfinite(a), a - h / 2, a)
    b = np.where(grid & np.isfinite(b), b + h / 2, b)
    lo, hi = spec.lower, spec.upper
    a, b = np.maximum(a, lo), np.minimum(b, hi)
    point = exact & ~grid
    with np.errstate(invalid="ignore"):
        impossible = np.where(point, (lo >= Y) | (hi <= Y), ~(a < b)) & ~missing
    fill = np.where(impossible | missing, np.nan, 0.0)
    a, b = a + fill, b + fill  # NaN where no ends are defined
    finite = np.isfinite(a) & np.isfinite(b)
    with np.errstate(invalid="ignore", divide="ignore"):
        centre = np.where(finite, 0.5 * (a + b), np.where(np.isfinite(a), a, b))
    with torch.no_grad():
        g = spec.forward
        za, zb = g(torch.from_numpy(a)).numpy(), g(torch.from_numpy(b)).numpy()
        points = g(torch.from_numpy(centre)).numpy()
        points = np.where(np.isfinite(points), points, np.nan)  # an end on a bound: no point
        jac = spec.log_det_jacobian(torch.from_numpy(np.where(point & ~impossible, Y, np.nan)))
    low = np.where(missing, -math.inf, np.where(impossible, 0.0, za))
    high = np.where(missing, math.inf, np.where(impossible, 0.0, zb))
    log_jac = np.nansum(jac.numpy(), axis=1)
    return Encoded(low, high, log_jac, impossible.any(1), points)


def upper_ends(y_upper: Any, Y: np.ndarray) -> np.ndarray:
    """``y_upper`` as ``(n, 1)`` float64 for targets ``Y (n, 1)``, checked against ``Y``.

    Raises:
        ValueError: ``D > 1``, a shape other than ``(n,)``/``(n, 1)``, ``y_upper < y``, or
            ``y = inf`` / ``y_upper = -inf`` (no interval holds them).
    """
    n, D = Y.shape
    if D != 1:
        raise ValueError(
            f"y_upper (censored or interval targets) needs one target, D = 1; y has D = {D} "
            "outputs (a missing entry of a multi-output target is NaN in y instead)"
        )
    U = np.asarray(y_upper, dtype=np.float64)
    if U.shape not in ((n,), (n, 1)):
        raise ValueError(f"y_upper must have shape ({n},) like y, got {U.shape}")
    U = U.reshape(n, 1)
    with np.errstate(invalid="ignore"):
        below = np.asarray((U < Y).any(1))
    if below.any():
        r = int(np.argmax(below))
        raise ValueError(
            f"y_upper must be >= y (NaN or equal: observed exactly); {row_list(below)} have "
            f"y_upper < y (row {r}: y = {Y[r, 0]:g}, y_upper = {U[r, 0]:g})"
        )
    bad = np.asarray(np.isposinf(Y).any(1) | np.isneginf(U).any(1))
    if bad.any():
        raise ValueError(
            f"y = inf or y_upper = -inf in {row_list(bad)}: y is finite or -inf (left-censored), "
            "y_upper finite, inf (right-censored) or NaN (observed exactly)"
        )
    return U


def check_observed(Y: np.ndarray) -> None:
    """A ``ValueError`` naming the rows of ``Y (n, D)`` that are all NaN (nothing to score)."""
    empty = np.isnan(Y).all(1)
    if empty.any():
        raise ValueError(
            f"y has no observed entry in {row_list(empty)}: every target row needs at least "
            "one non-NaN value (drop those rows)"
        )


def check_training(
    spec: TargetSpec, Y: np.ndarray, Y_upper: np.ndarray | None, enc: Encoded | None = None
) -> None:
    """Training targets the likelihood can use, else a ``ValueError`` naming the rows
    (``Y_upper`` is checked by :func:`upper_ends`)."""
    check_observed(Y)
    unseen = np.isnan(Y).all(0)
    if unseen.any():
        raise ValueError(f"y output {int(np.argmax(unseen))} has no observed value (all NaN)")
    enc = enc or encode(spec, Y, Y_upper)
    if enc.impossible.any():
        r = int(np.argmax(enc.impossible))
        lo, hi = spec.lower, spec.upper
        d = int(np.argmax(~np.isnan(Y[r]) & np.isnan(enc.points[r])))
        value = f"y = {Y[r, d]:g}" + (
            f", y_upper = {Y_upper[r, d]:g}" if Y_upper is not None else ""
        )
        raise ValueError(
            f"y lies outside target_bounds ({lo[d]:g}, {hi[d]:g}) in {row_list(enc.impossible)} "
            f"(row {r}: {value}); a continuous target must lie strictly inside its bounds "
            "(values on a bound need target_resolution), and an interval must overlap them"
        )


# ------------------------------------------------------------------------------ ties


def grid_spacing(values: np.ndarray) -> float | None:
    """The spacing ``h`` of a grid ``origin + k h`` holding every value, or ``None``.

    Euclid's algorithm on the gaps between distinct values, with remainders below
    ``GRID_RTOL`` of the candidate spacing taken as zero (decimal data are off by ulps).

    Example:
        >>> grid_spacing(np.array([0.95, 0.951, 0.953, 0.96]))
        0.001
        >>> grid_spacing(np.array([0.1, 0.25, 0.7]))  # 0.1 + (0, 1, 4) * 0.15
        0.15
        >>> grid_spacing(np.random.default_rng(0).normal(size=100)) is None
        True
    """
    u = np.unique(values[np.isfinite(values)])
    if u.size < 2:
        return None
    span = float(u[-1] - u[0])
    gaps = np.unique(np.diff(u))
    h = float(gaps[0])
    for gap in gaps[1:]:
        a, b = float(gap), h
        while b > GRID_MIN_SHARE * span:
            r = math.fmod(a, b)
            if r <= GRID_RTOL * b or b - r <= GRID_RTOL * b:
                break
            a, b = b, r
        else:
            return None
        h = b
    h = span / round(span / h)  # the whole range: a spacing accurate to an ulp of the range
    return float(f"{h:.{GRID_DIGITS}g}")


def point_masses(Y: np.ndarray, resolution: Any = None) -> list[tuple[int, str, float | None]]:
    """The outputs of ``Y (n, D)`` with point masses: ``(output, description, grid spacing)``.

    An output has point masses when its values are few (at most ``TIE_DISTINCT_SHARE`` of
    its rows), one value holds more than ``TIE_POINT_MASS_SHARE`` of the rows (and at least
    ``TIE_MIN_ROWS``), or the values lie on a grid with at least ``TIE_ROWS_PER_GRID_POINT``
    rows per grid point over their range. NaN entries are ignored, and so are outputs given
    a ``resolution`` (as ``target_resolution``).

    Example:
        >>> point_masses(np.arange(100.0)[:, None] % 4)
        [(0, '4 distinct values in 100 rows, 0 on 25.0% of them; on a grid of spacing 1', 1.0)]
    """
    D = Y.shape[1]
    given = [False] * D
    if resolution is not None:
        per = resolution if isinstance(resolution, (Sequence, np.ndarray)) else [resolution] * D
        given = [r is not None for r in per]
    found = []
    for d in range(D):
        col = Y[:, d][np.isfinite(Y[:, d])]
        if given[d] or col.size < TIE_MIN_ROWS:
            continue
        values, counts = np.unique(col, return_counts=True)
        n, top = col.size, int(np.argmax(counts))
        h = grid_spacing(values)
        per_point = n / ((values[-1] - values[0]) / h + 1) if h else 0.0
        heavy = counts[top] > max(TIE_POINT_MASS_SHARE * n, TIE_MIN_ROWS - 1)
        if values.size <= TIE_DISTINCT_SHARE * n or heavy or per_point >= TIE_ROWS_PER_GRID_POINT:
            grid = f"on a grid of spacing {h:g}" if h else "not on a common grid"
            text = (
                f"{values.size} distinct values in {n} rows, {values[top]:g} on "
                f"{counts[top] / n:.1%} of them; {grid}"
            )
            found.append((d, text, h))
    return found


def tie_warning(Y: np.ndarray, resolution: Any = None) -> str | None:
    """The warning of a fit on targets with point masses (:func:`point_masses`), or ``None``."""
    found = point_masses(Y, resolution)
    if not found:
        return None
    D = Y.shape[1]
    parts = [f"{'y' if D == 1 else f'y output {d}'} has point masses ({t})" for d, t, _ in found]
    h = found[0][2] if len(found) == 1 else None
    hint = f"target_resolution={h:g} (mdn fit: --resolution {h:g})" if h else "target_resolution"
    return (
        f"{'; '.join(parts)}: a mixture can put narrow spikes on such values and report a "
        f"log-likelihood that says nothing about the fit; pass {hint} to train and score "
        "the probability of each grid bin"
    )
