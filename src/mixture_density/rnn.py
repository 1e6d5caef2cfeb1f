"""A recurrent mixture density network: an LSTM or GRU followed by a mixture density head.

``MixtureDensityRNN`` models a sequence one step at a time, ``p(y_t | x_1, ..., x_t)``, as a
Gaussian mixture whose parameters are read off the recurrent state (Graves, 2013,
"Generating sequences with recurrent neural networks"; sketch-rnn, Ha & Eck, 2017; the
MDN-RNN of world models, Ha & Schmidhuber, 2018). ``forward`` returns the mixture of every
step together with the final recurrent state, so that a caller can continue a sequence;
``loss`` returns the negative log-likelihood of every (row, step) entry, which
:func:`mixture_density.training.fit` averages over the observed entries of a ``mask``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from ._validation import require_tensor
from .distribution import GaussianMixture
from .nn import MixtureDensityHead, _check_int, _check_positive_float
from .noise import NoiseType

__all__ = ["MixtureDensityRNN", "RNNState"]

#: The recurrent state, ``h (layers, B, H)`` for a GRU and ``(h, c)`` for an LSTM.
RNNState = Tensor | tuple[Tensor, Tensor]

_CELLS: dict[str, Callable[..., nn.Module]] = {"lstm": nn.LSTM, "gru": nn.GRU}


class MixtureDensityRNN(nn.Module):
    """``nn.LSTM`` or ``nn.GRU`` (``batch_first``) followed by a :class:`MixtureDensityHead`.

    Step ``t`` of a sequence ``x (B, T, dim_in)`` gives the mixture ``p(y_t | x_1..t)`` from
    the top layer's hidden state ``h_t``. For autoregressive modelling feed the previous
    target as input, ``x_t = y_{t-1}`` (:meth:`generate` does that when sampling), optionally
    followed by exogenous features (``dim_in > dim_out``).

    Args:
        dim_in: size of the last axis of ``x``.
        dim_out: output dimension ``D``.
        n_components: number of mixture components ``K``.
        hidden_dim: units of the recurrent state.
        n_layers: stacked recurrent layers.
        cell: ``"lstm"`` or ``"gru"``.
        noise_type: a :class:`~mixture_density.noise.NoiseType` or its name.
        fixed_noise_level: constant standard deviation for ``noise_type="fixed"``.
        min_scale: floor of every learned standard deviation, in the units of ``y``.
        dropout: dropout between stacked recurrent layers (``n_layers > 1``).

    Attributes:
        rnn: the recurrent network.
        head: the :class:`MixtureDensityHead` applied to every step's hidden state.

    Example:
        >>> model = MixtureDensityRNN(2, 2, n_components=3, hidden_dim=16)
        >>> x = torch.randn(4, 10, 2)
        >>> mixture, state = model(x)
        >>> mixture.batch_shape, mixture.event_shape
        (torch.Size([4, 10]), torch.Size([2]))
        >>> model.loss(x, torch.randn(4, 10, 2)).shape
        torch.Size([4, 10])
        >>> _, state = model(x[:, :3])  # continue after 3 steps, x_4 = y_3 = x[:, 3]
        >>> model.generate(x[:, 3], steps=5, state=state, pi_temperature=0.5).shape
        torch.Size([4, 5, 2])
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        n_components: int,
        hidden_dim: int = 64,
        n_layers: int = 1,
        cell: str = "lstm",
        noise_type: NoiseType | str = "diagonal",
        fixed_noise_level: float | None = None,
        min_scale: float = 1e-3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim_in = _check_int("dim_in", dim_in)
        self.dim_out = _check_int("dim_out", dim_out)
        self.n_components = _check_int("n_components", n_components)
        self.hidden_dim = _check_int("hidden_dim", hidden_dim)
        self.n_layers = _check_int("n_layers", n_layers)
        if cell not in _CELLS:
            raise ValueError(f"cell must be one of {sorted(_CELLS)}, got {cell!r}.")
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}.")
        self.cell = cell
        self.noise_type = NoiseType.parse(noise_type)
        self._config: dict[str, Any] = {
            "dim_in": self.dim_in,
            "dim_out": self.dim_out,
            "n_components": self.n_components,
            "hidden_dim": self.hidden_dim,
            "n_layers": self.n_layers,
            "cell": cell,
            "noise_type": self.noise_type.value,
            "fixed_noise_level": None if fixed_noise_level is None else float(fixed_noise_level),
            "min_scale": float(min_scale),
            "dropout": float(dropout),
        }
        self.rnn = _CELLS[cell](
            dim_in,
            hidden_dim,
            num_layers=n_layers,
            batch_first=True,
            dropout=float(dropout) if n_layers > 1 else 0.0,
        )
        self.head = MixtureDensityHead(
            hidden_dim,
            dim_out,
            n_components,
            noise_type=self.noise_type,
            fixed_noise_level=fixed_noise_level,
            min_scale=min_scale,
        )

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serializable dict; ``type(model)(**config)`` rebuilds."""
        return dict(self._config)

    def _check_x(self, x: Tensor) -> None:
        require_tensor("x", x)
        if x.dim() != 3 or x.shape[-1] != self.dim_in:
            raise ValueError(
                f"x must have shape (B, T, dim_in={self.dim_in}), got {tuple(x.shape)}."
            )

    def forward(self, x: Tensor, state: RNNState | None = None) -> tuple[GaussianMixture, RNNState]:
        """Mixtures of every step, and the state after the last one.

        The state carries over: ``model(x[:, :t])`` then ``model(x[:, t:], state)`` gives
        the mixtures (and final state) of ``model(x)``.

        Args:
            x: ``(B, T, dim_in)``.
            state: the state to start from (``None``: zeros), as returned by an earlier call:
                ``h (n_layers, B, hidden_dim)`` for a GRU, ``(h, c)`` for an LSTM.

        Returns:
            ``(mixture, state)``: a ``GaussianMixture`` with ``batch_shape = (B, T)`` and
            ``event_shape = (dim_out,)``, and the recurrent state after step ``T``.

        Raises:
            ValueError: if ``x`` is not ``(B, T, dim_in)`` or ``state`` does not match it.
        """
        self._check_x(x)
        self._check_state(state, x.shape[0])
        h, state = self.rnn(x, state)  # (B, T, H)
        return self.head(h), state

    def loss(self, x: Tensor, y: Tensor, mask: Tensor | None = None) -> Tensor:
        """Negative log-likelihood of every (row, step) entry.

        Args:
            x: ``(B, T, dim_in)``.
            y: ``(B, T, dim_out)``; ``(B, T)`` is accepted when ``dim_out == 1``.
            mask: None or ``(B, T)`` bool, True where ``y`` is observed. Unobserved entries
                of ``y`` may hold anything (NaN too): they are replaced by 0 before the
                density is evaluated and their loss is 0.

        Returns:
            ``(B, T)``; its mean over the observed entries is the training loss.

        Raises:
            ValueError: if ``x``, ``y`` or ``mask`` has the wrong shape.
        """
        self._check_x(x)
        steps = tuple(x.shape[:-1])
        require_tensor("y", y)
        if self.dim_out == 1 and tuple(y.shape) == steps:
            y = y.unsqueeze(-1)
        if tuple(y.shape) != (*steps, self.dim_out):
            raise ValueError(
                f"y must have shape {(*steps, self.dim_out)} to match x of shape "
                f"{tuple(x.shape)}, got {tuple(y.shape)}."
            )
        mixture, _ = self(x)
        if mask is None:
            return -mixture.log_prob(y)
        require_tensor("mask", mask)
        if tuple(mask.shape) != steps:
            raise ValueError(
                f"mask must have shape (B, T) = {steps} to match x of shape "
                f"{tuple(x.shape)}, got {tuple(mask.shape)}."
            )
        mask = mask.to(torch.bool)
        zero = torch.zeros((), dtype=y.dtype, device=y.device)
        nll = -mixture.log_prob(torch.where(mask.unsqueeze(-1), y, zero))
        return torch.where(mask, nll, zero)

    @torch.no_grad()
    def generate(
        self,
        y0: Tensor,
        steps: int,
        state: RNNState | None = None,
        pi_temperature: float = 1.0,
        scale_temperature: float = 1.0,
        inputs: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Continues sequences by sampling, each step's draw being the next step's input.

        Step ``t = 1..steps`` feeds ``x_t`` to the network (from ``state``) and draws ``y_t``
        from its mixture :meth:`~mixture_density.GaussianMixture.tempered` by
        ``(pi_temperature, scale_temperature)``: logits divided by ``pi_temperature``,
        scales multiplied by ``sqrt(scale_temperature)`` (sketch-rnn, world models). The
        input is the previous output, ``x_1 = y0`` and ``x_t = y_{t-1}``, when ``dim_in ==
        dim_out`` (autoregressive); otherwise it is the previous output followed by the
        exogenous inputs of the step, ``x_t = [y_{t-1}, inputs[:, t - 1]]``.

        To continue observed sequences ``y_1..y_T0`` of a model trained on ``x_t =
        y_{t-1}``: ``_, state = model(x[:, :T0])`` then ``generate(y[:, T0 - 1], steps,
        state)``. For several sample paths per sequence, repeat the rows of ``y0`` (and of
        ``state``, along its batch axis 1). The network runs in its current mode: call
        ``eval()`` first when it has dropout.

        Args:
            y0: ``(B, dim_out)``, the output before the first generated step.
            steps: number of steps to draw, ``>= 1``.
            state: the recurrent state to start from (``None``: zeros), as returned by
                :meth:`forward`: ``h (n_layers, B, hidden_dim)`` for a GRU, ``(h, c)`` for an
                LSTM.
            pi_temperature: positive; divides the logits (``< 1``: a sharper choice of
                component, ``-> 0``: the heaviest component).
            scale_temperature: positive; multiplies each covariance (``< 1``: draws closer to
                the components' means).
            inputs: ``(B, steps, dim_in - dim_out)`` exogenous inputs when ``dim_in >
                dim_out``; must be None when ``dim_in == dim_out``.
            generator: source of randomness (``None``: the global generator).

        Returns:
            ``(B, steps, dim_out)`` draws ``y_1..y_steps``.

        Raises:
            ValueError: if ``y0``, ``state`` or ``inputs`` has the wrong shape, ``steps < 1``,
                a temperature is not positive, or ``dim_in < dim_out``.

        Example:
            >>> model = MixtureDensityRNN(3, 2, n_components=2, hidden_dim=8)
            >>> _, state = model(torch.randn(4, 6, 3))
            >>> model.generate(torch.zeros(4, 2), 5, state, pi_temperature=0.5,
            ...                inputs=torch.randn(4, 5, 1)).shape
            torch.Size([4, 5, 2])
        """
        if isinstance(steps, int) and not isinstance(steps, bool) and steps < 1:
            raise ValueError(
                f"steps must be >= 1 (generate returns (B, steps, dim_out={self.dim_out})), "
                f"got {steps}."
            )
        steps = _check_int("steps", steps)
        pi_temperature = _check_positive_float("pi_temperature", pi_temperature)
        scale_temperature = _check_positive_float("scale_temperature", scale_temperature)
        require_tensor("y0", y0)
        if y0.dim() != 2 or y0.shape[1] != self.dim_out:
            raise ValueError(
                f"y0 must have shape (B, dim_out={self.dim_out}), got {tuple(y0.shape)}."
            )
        B = y0.shape[0]
        extra = self._check_inputs(inputs, B, steps)  # (B, steps, dim_in - dim_out) or None
        self._check_state(state, B)
        y, draws = y0, []
        for step in range(steps):
            x = y if extra is None else torch.cat([y, extra[:, step].to(y.dtype)], -1)
            h, state = self.rnn(x.unsqueeze(1), state)  # (B, 1, H)
            mixture = self.head(h[:, 0])  # batch (B,)
            tempered = mixture.tempered(pi_temperature, scale_temperature)
            y = tempered.sample(generator=generator)  # (B, D)
            draws.append(y)
        return torch.stack(draws, dim=1)

    def _check_inputs(self, inputs: Tensor | None, B: int, steps: int) -> Tensor | None:
        n_extra = self.dim_in - self.dim_out
        if n_extra < 0:
            raise ValueError(
                "generate feeds each step's output back as (part of) the next input, which "
                f"needs dim_in >= dim_out; got dim_in={self.dim_in}, dim_out={self.dim_out}."
            )
        if n_extra == 0:
            if inputs is not None:
                raise ValueError(
                    f"inputs must be None when dim_in == dim_out (= {self.dim_in}): each "
                    "step's input is the previous output."
                )
            return None
        expected = (B, steps, n_extra)
        if inputs is None:
            raise ValueError(
                f"inputs (B, steps, dim_in - dim_out) = {expected} are required: dim_in="
                f"{self.dim_in} is the previous output (dim_out={self.dim_out}) followed by "
                f"{n_extra} exogenous features per step."
            )
        require_tensor("inputs", inputs)
        if tuple(inputs.shape) != expected:
            raise ValueError(
                f"inputs must have shape (B, steps, dim_in - dim_out) = {expected}, got "
                f"{tuple(inputs.shape)}."
            )
        return inputs

    def _check_state(self, state: RNNState | None, B: int) -> None:
        if state is None:
            return
        expected = (self.n_layers, B, self.hidden_dim)
        parts = state if isinstance(state, tuple) else (state,)
        n_parts = 2 if self.cell == "lstm" else 1
        form = "(h, c)" if n_parts == 2 else "h"
        if len(parts) != n_parts or any(
            not isinstance(p, Tensor) or tuple(p.shape) != expected for p in parts
        ):
            shapes = [tuple(p.shape) if isinstance(p, Tensor) else type(p).__name__ for p in parts]
            raise ValueError(
                f"state must be {form} of shape (n_layers, B, hidden_dim) = {expected} for "
                f"this {self.cell.upper()}, got {shapes}."
            )

    def initialize(self, y: Tensor, mask: Tensor | None = None, **kwargs: Any) -> None:
        """Start the head from a k-means mixture of the (observed) targets.

        Args:
            y: ``(B, T, dim_out)`` or ``(n, dim_out)`` targets.
            mask: None or ``(B, T)`` bool: only the observed entries are clustered.
            **kwargs: passed to :meth:`MixtureDensityHead.initialize`.
        """
        if mask is not None:
            y = y[mask.to(torch.bool)]
        self.head.initialize(y.reshape(-1, self.dim_out), **kwargs)
