"""Operations that derive a new mixture from mixtures: marginals, conditionals, temperature,
affine maps, broadcasting and joining.

:class:`MixtureTransforms` is the base of :class:`~mixture_density.GaussianMixture` that holds
its state, the (unnormalized) logits and one components object, and every operation that
builds a new mixture from them. Each operation checks its arguments, lets the components do
what depends on the parameterization, and puts the weights back in front.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, TypeVar

import torch
from torch import Tensor
from torch.distributions import Distribution

from . import _math, _validation
from ._components import Axis, Components

__all__ = ["MixtureTransforms"]

T = TypeVar("T", bound="MixtureTransforms")


class MixtureTransforms(Distribution):
    """Mixture state (logits and components) and the operations that derive new mixtures."""

    _logits: Tensor  # (*batch, K) unnormalized, as given
    _components: Components

    @classmethod
    def _from_components(
        cls: type[T], logits: Tensor, components: Components, validate_args: bool | None = False
    ) -> T:
        """Mixture of settled components; ``logits`` (*B, K) broadcast to their batch."""
        self = cls.__new__(cls)
        batch_shape = components.loc.shape[:-2]
        self._logits = _math.expand_to(logits, (*batch_shape, logits.shape[-1]))
        self._components = components
        Distribution.__init__(
            self, batch_shape, components.loc.shape[-1:], validate_args=validate_args
        )
        if _validation.checks_values(self._validate_args):
            _validation.check_finite(("logits", logits), ("loc", components.loc))
            components.validate()
        return self

    def marginal(self: T, dims: Sequence[int] | int) -> T:
        """Marginal mixture over the output dims ``dims`` (in the order given).

        Args:
            dims: output dims to keep.

        Returns:
            GaussianMixture over ``len(dims)`` dims, same weights. Diagonal mixtures stay
            diagonal; full ones get the Cholesky factor of the covariance sub-block.

        Example:
            >>> from mixture_density import GaussianMixture
            >>> gm = GaussianMixture(torch.zeros(1), torch.zeros(1, 3),
            ...                      scale_tril=torch.eye(3).expand(1, 3, 3))
            >>> gm.marginal([2, 0]).event_shape
            torch.Size([2])
        """
        dims = _validation.normalize_dims(dims, self.event_shape[0], "dims")
        return self._from_components(self._logits, self._components.marginal(dims))

    def condition(self: T, dims: Sequence[int] | int, values: Tensor) -> T:
        """Conditional mixture of the remaining dims given ``y[dims] = values``.

        Each component is conditioned in closed form,
        ``mu_{a|b} = mu_a + S_ab S_bb^{-1} (y_b - mu_b)``,
        ``S_{a|b} = S_aa - S_ab S_bb^{-1} S_ba``, both read off one Cholesky factor of the
        covariance with the ``b`` dims ordered first; the weights become
        ``log pi_k + log N(y_b | mu_kb, S_kbb)``. Diagonal mixtures stay diagonal and only
        re-weight.

        Args:
            dims: conditioned output dims ``b``.
            values: (*batch, len(dims)) observed values (broadcast against the batch).

        Returns:
            GaussianMixture over the remaining dims, in increasing order.

        Raises:
            ValueError: no dims left, or ``values`` of the wrong shape.

        Example:
            >>> from mixture_density import GaussianMixture
            >>> gm = GaussianMixture(torch.zeros(1), torch.zeros(1, 2),
            ...                      scale=torch.ones(1, 2))
            >>> gm.condition([1], torch.tensor([0.5])).event_shape
            torch.Size([1])
        """
        D = self.event_shape[0]
        b = _validation.normalize_dims(dims, D, "dims")
        a = [d for d in range(D) if d not in b]
        if not a:
            raise ValueError(f"dims {list(b)} leave no output dim to condition on them")
        yb = _validation.conditioning_values(values, len(b), self.batch_shape, self._logits)
        log_nb, components = self._components.condition(b, a, yb)  # (*B, K), over a
        return self._from_components(_math.log_softmax(self._logits) + log_nb, components)

    def tempered(
        self: T, temperature: float | Tensor, scale_temperature: float | Tensor | None = None
    ) -> T:
        """Sampling heuristic: logits divided by ``temperature``, scales multiplied by
        ``sqrt(scale_temperature)`` (covariances by ``scale_temperature``).

        With one argument both temperatures are ``tau``: logits ``/ tau`` and ``sigma *
        sqrt(tau)``, the temperature knob of sketch-rnn (Ha & Eck, 2017) and of the world
        models' MDN-RNN (Ha & Schmidhuber, 2018): ``tau < 1`` sharpens, ``tau > 1``
        flattens. A separate ``scale_temperature`` sets the spread within components
        apart from the choice between them (``scale_temperature=1`` only re-weights). This
        is *not* the exact tempered density ``p(y)^(1/tau)`` normalized.

        Args:
            temperature: positive float or (*batch) tensor dividing the logits.
            scale_temperature: positive float or (*batch) tensor multiplying each
                covariance; defaults to ``temperature``.

        Returns:
            GaussianMixture with the same parameterization.

        Raises:
            ValueError: a temperature that is not positive.

        Example:
            >>> from mixture_density import GaussianMixture
            >>> gm = GaussianMixture(torch.zeros(2), torch.zeros(2, 1), scale=torch.ones(2, 1))
            >>> gm.tempered(0.25).component_stddev.squeeze(-1)
            tensor([0.5000, 0.5000])
            >>> gm.tempered(0.25, 1.0).component_stddev.squeeze(-1)
            tensor([1., 1.])
        """
        tau = _validation.positive(temperature, self._logits, "temperature")
        st = tau
        if scale_temperature is not None:
            st = _validation.positive(scale_temperature, self._logits, "scale_temperature")
        base = self._with_batch("temperature", tau.shape, st.shape)
        root = st.sqrt()[..., None, None]  # (*B, 1, 1)
        components = base._components.tempered(root)
        return self._from_components(
            _math.log_softmax(base._logits) / tau.unsqueeze(-1), components, None
        )

    def affine(self: T, scale: float | Tensor, shift: float | Tensor = 0.0) -> T:
        """Distribution of ``scale * y + shift`` (elementwise), same parameterization.

        For triangular factors a negative ``scale`` entry keeps a valid Cholesky factor:
        ``L' = diag(s) L diag(sign s)`` and ``P' = diag(1/s) P diag(sign s)``.

        Args:
            scale: nonzero, broadcastable to (*batch, D).
            shift: broadcastable to (*batch, D).

        Returns:
            GaussianMixture.

        Example:
            >>> from mixture_density import GaussianMixture
            >>> gm = GaussianMixture(torch.zeros(1), torch.ones(1, 1), scale=torch.ones(1, 1))
            >>> gm.affine(2.0, 1.0).mean
            tensor([3.])
        """
        s, t = _validation.scale_and_shift(scale, shift, self.event_shape[0], self._logits)
        base = self._with_batch("scale and shift", s.shape[:-1], t.shape[:-1])
        components = base._components.affine(s.unsqueeze(-2), t.unsqueeze(-2))  # (*B, 1, D)
        return self._from_components(base._logits, components, None)

    def _with_batch(self: T, name: str, *shapes: torch.Size) -> T:
        """This mixture expanded to the batch shape it broadcasts to with ``shapes``."""
        try:
            batch = torch.broadcast_shapes(self.batch_shape, *shapes)
        except RuntimeError:
            raise ValueError(
                f"{name} batch shapes {[tuple(s) for s in shapes]} do not broadcast with "
                f"batch_shape {tuple(self.batch_shape)}"
            ) from None
        return self if batch == self.batch_shape else self.expand(batch)

    def expand(self: T, batch_shape: torch.Size | Sequence[int], _instance: Any = None) -> T:
        """Same mixture broadcast to ``batch_shape`` (views, no copies)."""
        components = self._components.expand(torch.Size(batch_shape))
        return self._from_components(self._logits, components)

    @classmethod
    def cat(
        cls: type[T],
        mixtures: Sequence[T],
        dim: Axis = "components",
        weights: Sequence[float] | None = None,
    ) -> T:
        """Join mixtures of one parameterization into one.

        ``dim="components"``: the average of ``M`` mixtures of equal batch shape, a mixture
        of ``K_1 + ... + K_M`` components with log-weights ``log pi_k + log w_m`` (an
        ensemble's predictive distribution); ``w_m = 1 / M`` unless ``weights`` are given
        (positive, normalized to sum to one). ``dim="batch"``: the
        mixtures' batches concatenated along batch dim 0 (equal ``K`` and other dims).
        Each keeps its parameterization: precision factors stay precision factors (packed
        ones stay packed), so the result has the density kernels of its parts.

        Args:
            mixtures: at least one mixture; all of one parameterization and event shape.
            dim: ``"components"`` or ``"batch"``.
            weights: ``M`` positive weights of the mixtures (``dim="components"`` only).

        Returns:
            GaussianMixture (the mixture itself when there is one).

        Raises:
            ValueError: no mixtures, an unknown ``dim``, different parameterizations,
                shapes that do not join, or weights that are not ``M`` positive numbers.

        Example:
            >>> from mixture_density import GaussianMixture
            >>> a = GaussianMixture(torch.zeros(4, 2), torch.zeros(4, 2, 1), scale=torch.ones(1))
            >>> GaussianMixture.cat([a, a, a], dim="components").n_components
            6
            >>> GaussianMixture.cat([a, a], dim="batch").batch_shape
            torch.Size([8])
        """
        _validation.check_joinable(mixtures, dim)
        log_w = _log_weights(weights, len(mixtures), dim)
        if len(mixtures) == 1:
            return mixtures[0]
        parts = [m._components for m in mixtures]
        components = type(parts[0]).cat(parts, dim)
        if dim == "components":
            logits = torch.cat(
                [_math.log_softmax(m._logits) + lw for m, lw in zip(mixtures, log_w)], -1
            )  # (*B, K_1 + ... + K_M)
        else:
            logits = torch.cat([_math.log_softmax(m._logits) for m in mixtures], 0)
        return cls._from_components(logits, components)


def _log_weights(weights: Sequence[float] | None, m: int, dim: str) -> list[float]:
    """Normalized log-weights of ``m`` joined mixtures (equal when ``weights`` is None)."""
    if weights is None:
        return [-math.log(m)] * m
    w = [float(v) for v in weights]
    if dim != "components":
        raise ValueError(f"weights apply to dim='components' only, got dim={dim!r}")
    if len(w) != m or not all(math.isfinite(v) and v > 0 for v in w):
        raise ValueError(f"weights must be {m} positive finite numbers (one per mixture), got {w}")
    total = sum(w)
    return [math.log(v / total) for v in w]
