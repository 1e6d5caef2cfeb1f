"""MixtureDensityRNN: shapes, the recurrence against a step-by-step reference, state carry-over,
masked loss, generation (autoregressive and with exogenous inputs) with its two temperatures,
bad input, and a fit on variable-length AR(1) sequences."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
from torch import nn

from mixture_density import MixtureDensityHead, MixtureDensityRNN
from mixture_density.training import fit


@pytest.mark.parametrize("cell", ["lstm", "gru"])
@pytest.mark.parametrize("noise", ["diagonal", "full", "isotropic"])
def test_forward_equals_a_step_by_step_reference(cell: str, noise: str) -> None:
    """The mixture of step t is the head of the hidden state of torch's own cell run step by
    step (LSTMCell/GRUCell with the same weights), and forward continues from a state."""
    model = MixtureDensityRNN(3, 2, 4, hidden_dim=8, cell=cell, noise_type=noise).double()
    x = torch.randn(5, 7, 3, dtype=torch.float64)
    y = torch.randn(5, 7, 2, dtype=torch.float64)
    mixture, _ = model(x)
    assert mixture.batch_shape == (5, 7) and mixture.event_shape == (2,)
    step_cls = nn.LSTMCell if cell == "lstm" else nn.GRUCell
    step = step_cls(3, 8).double()
    with torch.no_grad():
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(step, name).copy_(getattr(model.rnn, f"{name}_l0"))
    h = torch.zeros(5, 8, dtype=torch.float64)
    c = torch.zeros_like(h)
    expected = []
    for t in range(7):
        if cell == "lstm":
            h, c = step(x[:, t], (h, c))
        else:
            h = step(x[:, t], h)
        expected.append(model.head(h).log_prob(y[:, t]))
    torch.testing.assert_close(
        mixture.log_prob(y), torch.stack(expected, 1), rtol=1e-10, atol=1e-10
    )
    torch.testing.assert_close(model.loss(x, y), -mixture.log_prob(y))
    # Continuing from the state after 4 steps gives the last 3 steps' mixtures.
    _, state = model(x[:, :4])
    rest, _ = model(x[:, 4:], state)
    torch.testing.assert_close(rest.log_prob(y[:, 4:]), mixture.log_prob(y)[:, 4:])


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_state_carries_over_two_halves_equal_one_pass(cell: str) -> None:
    """Two layers: running a sequence in two halves, the second from the first's state, gives
    the densities and the final state of one pass (float64, 1e-12)."""
    model = MixtureDensityRNN(2, 3, 2, hidden_dim=5, n_layers=2, cell=cell).double().eval()
    x = torch.randn(3, 9, 2, dtype=torch.float64)
    y = torch.randn(3, 9, 3, dtype=torch.float64)
    whole, state = model(x)
    first, mid = model(x[:, :4])
    second, end = model(x[:, 4:], mid)
    halves = torch.cat([first.log_prob(y[:, :4]), second.log_prob(y[:, 4:])], 1)
    torch.testing.assert_close(halves, whole.log_prob(y), rtol=0, atol=1e-12)
    for a, b in zip(end if cell == "lstm" else (end,), state if cell == "lstm" else (state,)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_masked_loss_is_zero_and_nan_safe_where_unobserved() -> None:
    model = MixtureDensityRNN(1, 1, 2, hidden_dim=4).double()
    x = torch.randn(3, 5, 1, dtype=torch.float64)
    y = torch.randn(3, 5, dtype=torch.float64)  # (B, T) for one output
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], dtype=torch.bool)
    full = model.loss(x, y)
    y_padded = y.masked_fill(~mask, math.nan)
    nll = model.loss(x, y_padded, mask)
    torch.testing.assert_close(nll[mask], full[mask])
    assert bool((nll[~mask] == 0).all())
    nll.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    with pytest.raises(ValueError, match=r"y must have shape \(3, 5, 1\)"):
        model.loss(x, torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"mask must have shape \(B, T\) = \(3, 5\)"):
        model.loss(x, y, mask[:, :4])


def _reference_rollout(
    model: MixtureDensityRNN,
    y0: torch.Tensor,
    steps: int,
    state: object,
    pi_t: float,
    scale_t: float,
    g: torch.Generator,
    inputs: torch.Tensor | None = None,
) -> torch.Tensor:
    """generate written out with the public forward: tempered mixture of the step, draw, feed
    the draw back (followed by the step's exogenous inputs)."""
    y, out = y0, []
    with torch.no_grad():
        for t in range(steps):
            x = y if inputs is None else torch.cat([y, inputs[:, t]], -1)
            mixture, state = model(x[:, None], state)  # batch (B, 1)
            y = mixture.tempered(pi_t, scale_t).sample(generator=g)[:, 0]
            out.append(y)
    return torch.stack(out, 1)


@pytest.mark.parametrize("cell", ["lstm", "gru"])
def test_generate_autoregressive_continues_from_the_state(cell: str) -> None:
    """dim_in == dim_out: each step's input is the previous draw, starting from y0 and the
    state after an observed prefix."""
    model = MixtureDensityRNN(2, 2, 3, hidden_dim=6, cell=cell, noise_type="full").double()
    prefix = torch.randn(4, 3, 2, dtype=torch.float64)
    _, state = model(prefix)
    y0 = torch.randn(4, 2, dtype=torch.float64)
    draws = model.generate(
        y0, 5, state, pi_temperature=0.3, scale_temperature=0.5,
        generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    assert draws.shape == (4, 5, 2)
    g = torch.Generator().manual_seed(7)
    expected = _reference_rollout(model, y0, 5, state, 0.3, 0.5, g)
    torch.testing.assert_close(draws, expected)
    # The state matters: from zeros the same noise gives other draws.
    other = model.generate(y0, 5, generator=torch.Generator().manual_seed(7))
    assert not torch.allclose(other, draws)


def test_generate_concatenates_exogenous_inputs() -> None:
    """dim_in > dim_out: x_t = [y_{t-1}, inputs[:, t - 1]]."""
    model = MixtureDensityRNN(5, 2, 3, hidden_dim=6).double()
    y0 = torch.randn(3, 2, dtype=torch.float64)
    inputs = torch.randn(3, 4, 3, dtype=torch.float64)
    draws = model.generate(y0, 4, inputs=inputs, generator=torch.Generator().manual_seed(1))
    assert draws.shape == (3, 4, 2)
    g = torch.Generator().manual_seed(1)
    expected = _reference_rollout(model, y0, 4, None, 1.0, 1.0, g, inputs)
    torch.testing.assert_close(draws, expected)
    shifted = model.generate(y0, 4, inputs=inputs + 1, generator=torch.Generator().manual_seed(1))
    assert not torch.allclose(shifted, draws)  # the inputs are used


@pytest.mark.parametrize(("pi_t", "scale_t"), [(1.0, 1.0), (0.3, 1.0), (1.0, 0.2), (2.0, 0.5)])
def test_generate_temperatures_against_an_independent_mixture(pi_t: float, scale_t: float) -> None:
    """The first draw's distribution, from the head's raw parameters by hand: weights
    softmax(log w / pi_t), standard deviations sigma * sqrt(scale_t). KS test of 4000 draws
    against that mixture's cdf (scipy), at level 1e-3."""
    stats = pytest.importorskip("scipy.stats")
    model = MixtureDensityRNN(1, 1, 3, hidden_dim=4).double()
    with torch.no_grad():  # distinct weights and means (a new head starts uniform)
        model.head.linear.weight.normal_(0.0, 2.0, generator=torch.Generator().manual_seed(0))
        model.head.linear.bias.normal_(0.0, 1.0, generator=torch.Generator().manual_seed(1))
    n = 4000
    y0 = torch.full((n, 1), 0.5, dtype=torch.float64)
    draws = model.generate(
        y0, 1, pi_temperature=pi_t, scale_temperature=scale_t,
        generator=torch.Generator().manual_seed(2),
    )[:, 0, 0].numpy()  # fmt: skip
    with torch.no_grad():
        mixture, _ = model(y0[:1, None])
    log_w = torch.log_softmax(mixture.logits[0, 0], -1).numpy()  # (K,)
    loc = mixture.loc[0, 0, :, 0].numpy()
    sd = mixture.component_stddev[0, 0, :, 0].numpy()

    def cdf(log_w: np.ndarray, sd: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
        w = np.exp(log_w - log_w.max())
        w /= w.sum()
        return lambda v: (w * stats.norm.cdf((np.asarray(v)[..., None] - loc) / sd)).sum(-1)

    tempered = cdf(log_w / pi_t, sd * math.sqrt(scale_t))
    assert stats.kstest(draws, tempered).pvalue > 1e-3
    # The test has power: the untempered mixture is rejected when the temperatures differ.
    if (pi_t, scale_t) != (1.0, 1.0):
        assert stats.kstest(draws, cdf(log_w, sd)).pvalue < 1e-3


def test_generate_at_low_temperature_follows_the_dominant_component() -> None:
    """Both temperatures -> 0: logits / tau pick the heaviest component and sigma * sqrt(tau)
    -> 0, so a draw lands on that component's mean (sketch-rnn's greedy limit)."""
    model = MixtureDensityRNN(1, 1, 3, hidden_dim=4).double()
    with torch.no_grad():  # distinct weights (a new head starts uniform)
        model.head.linear.weight.normal_(0.0, 3.0)
    prefix = torch.randn(6, 2, 1, dtype=torch.float64)
    y0 = torch.randn(6, 1, dtype=torch.float64)
    _, state = model(prefix)
    mixture, _ = model(y0[:, None], state)
    logits = mixture.logits[:, 0]  # (6, K)
    assert bool((logits.topk(2).values.diff().abs() > 1e-3).all())  # a clear winner
    expected = mixture.loc[torch.arange(6), 0, logits.argmax(-1)]  # (6, 1)
    draws = model.generate(
        y0, 1, state, pi_temperature=1e-6, scale_temperature=1e-6,
        generator=torch.Generator().manual_seed(0),
    )  # fmt: skip
    torch.testing.assert_close(draws[:, 0], expected.detach(), rtol=0, atol=1e-2)


Y2, Y3 = torch.zeros(3, 2), torch.zeros(3, 3)
BAD_INPUT: dict[str, tuple[tuple[int, int], Callable[[MixtureDensityRNN], object], str]] = {
    "y0 feature count": (
        (2, 2), lambda m: m.generate(torch.zeros(3, 1), 2),
        r"y0 must have shape \(B, dim_out=2\), got \(3, 1\)",
    ),
    "y0 rank": (
        (2, 2), lambda m: m.generate(torch.zeros(3, 2, 1), 2),
        r"y0 must have shape \(B, dim_out=2\), got \(3, 2, 1\)",
    ),
    "steps < 1": (
        (2, 2), lambda m: m.generate(Y2, 0),
        r"steps must be >= 1 \(generate returns \(B, steps, dim_out=2\)\), got 0",
    ),
    "inputs when autoregressive": (
        (2, 2), lambda m: m.generate(Y2, 2, inputs=torch.zeros(3, 2, 1)),
        r"inputs must be None when dim_in == dim_out",
    ),
    "inputs missing": (
        (3, 2), lambda m: m.generate(Y2, 4),
        r"inputs \(B, steps, dim_in - dim_out\) = \(3, 4, 1\) are required",
    ),
    "inputs shape": (
        (3, 2), lambda m: m.generate(Y2, 4, inputs=torch.zeros(3, 3, 1)),
        r"inputs must have shape \(B, steps, dim_in - dim_out\) = \(3, 4, 1\), "
        r"got \(3, 3, 1\)",
    ),
    "dim_in < dim_out": (
        (2, 3), lambda m: m.generate(Y3, 2), r"needs dim_in >= dim_out; got dim_in=2, dim_out=3"
    ),
    "pi_temperature": (
        (2, 2), lambda m: m.generate(Y2, 2, pi_temperature=0.0),
        r"pi_temperature must be positive",
    ),
    "scale_temperature": (
        (2, 2), lambda m: m.generate(Y2, 2, scale_temperature=-1.0),
        r"scale_temperature must be positive",
    ),
    "generate state": (
        (2, 2), lambda m: m.generate(Y2, 2, torch.zeros(1, 3, 8)),
        r"state must be \(h, c\) of shape \(n_layers, B, hidden_dim\) = \(1, 3, 8\) for "
        r"this LSTM, got \[\(1, 3, 8\)\]",
    ),
    "forward state": (
        (2, 2), lambda m: m(torch.zeros(3, 4, 2), (torch.zeros(1, 2, 8),) * 2),
        r"state must be \(h, c\) .* = \(1, 3, 8\) .* got \[\(1, 2, 8\), \(1, 2, 8\)\]",
    ),
    "x rank": (
        (2, 2), lambda m: m(torch.zeros(3, 2)),
        r"x must have shape \(B, T, dim_in=2\), got \(3, 2\)",
    ),
    "x feature count": (
        (2, 2), lambda m: m(torch.zeros(3, 4, 3)),
        r"x must have shape \(B, T, dim_in=2\), got \(3, 4, 3\)",
    ),
    "mask shape": (
        (2, 2),
        lambda m: m.loss(torch.zeros(3, 4, 2), torch.zeros(3, 4, 2), torch.ones(3, 5) > 0),
        r"mask must have shape \(B, T\) = \(3, 4\) to match x of shape \(3, 4, 2\), "
        r"got \(3, 5\)",
    ),
}  # fmt: skip


@pytest.mark.parametrize(("dims", "call", "match"), BAD_INPUT.values(), ids=BAD_INPUT.keys())
def test_bad_input_names_the_expected_shape(
    dims: tuple[int, int], call: Callable[[MixtureDensityRNN], object], match: str
) -> None:
    model = MixtureDensityRNN(*dims, 2, hidden_dim=8)
    with pytest.raises(ValueError, match=match):
        call(model)


def test_cell_must_be_lstm_or_gru() -> None:
    with pytest.raises(ValueError, match="cell must be one of"):
        MixtureDensityRNN(1, 1, 2, cell="rnn")


def test_fit_learns_variable_length_ar1_sequences() -> None:
    """y_t = 0.8 y_{t-1} + 0.5 e_t with inputs x_t = y_{t-1}: the learned one-step NLL per
    observed step approaches the true conditional NLL 0.5 log(2 pi 0.25) + 0.5."""
    g = torch.Generator().manual_seed(0)
    n, T, phi, sigma = 160, 24, 0.8, 0.5
    series = torch.zeros(n, T + 1, dtype=torch.float64)
    series[:, 0] = torch.randn(n, generator=g, dtype=torch.float64) * sigma / math.sqrt(1 - phi**2)
    for t in range(1, T + 1):
        series[:, t] = phi * series[:, t - 1] + sigma * torch.randn(
            n, generator=g, dtype=torch.float64
        )
    x, y = series[:, :-1, None], series[:, 1:, None]
    lengths = torch.randint(4, T + 1, (n,), generator=g)
    mask = torch.arange(T) < lengths[:, None]
    torch.manual_seed(0)
    model = MixtureDensityRNN(1, 1, 2, hidden_dim=16).double()
    model.initialize(y, mask)
    result = fit(model, x, y, mask, epochs=60, lr=1e-2, batch_size=32, verbose=False, seed=0)
    true_nll = 0.5 * math.log(2 * math.pi * sigma**2) + 0.5
    assert result.best_val_nll < true_nll + 0.1
    model.eval()
    with torch.no_grad():
        mixture, _ = model(x)
        # The learned predictive mean follows phi * y_{t-1}.
        err = (mixture.mean[..., 0] - phi * x[..., 0])[mask]
    assert float(err.abs().mean()) < 0.1


def test_config_rebuilds_the_model_and_head_is_shared_type() -> None:
    model = MixtureDensityRNN(2, 1, 3, hidden_dim=5, n_layers=2, cell="gru", dropout=0.1)
    clone = MixtureDensityRNN(**model.config)
    assert {k: v.shape for k, v in clone.state_dict().items()} == {
        k: v.shape for k, v in model.state_dict().items()
    }
    assert isinstance(model.head, MixtureDensityHead)
