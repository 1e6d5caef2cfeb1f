"""MixtureDensityRNN: shapes, the recurrence against a step-by-step reference, masked loss,
generation with temperature, and a fit on variable-length AR(1) sequences."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mixture_density import GaussianMixture, MixtureDensityHead, MixtureDensityRNN
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
    with pytest.raises(ValueError, match=r"mask must have shape \(3, 5\)"):
        model.loss(x, y, mask[:, :4])
    with pytest.raises(ValueError, match=r"x must have shape \(batch, steps, dim_in=1\)"):
        model(torch.randn(5, 1))


def test_generate_feeds_tempered_draws_back() -> None:
    """generate equals a hand-written loop: tempered head mixture, draw, feed back."""
    model = MixtureDensityRNN(2, 2, 3, hidden_dim=6, cell="gru").double()
    prefix = torch.randn(4, 3, 2, dtype=torch.float64)
    draws = model.generate(
        prefix, 5, temperature=0.3, scale_temperature=0.5,
        generator=torch.Generator().manual_seed(7),
    )  # fmt: skip
    g = torch.Generator().manual_seed(7)
    h, state = model.rnn(prefix)
    h = h[:, -1]
    expected = []
    with torch.no_grad():
        for _ in range(5):
            y = model.head(h).tempered(0.3, 0.5).sample(generator=g)
            expected.append(y)
            out, state = model.rnn(y[:, None], state)
            h = out[:, 0]
    torch.testing.assert_close(draws, torch.stack(expected, 1))
    assert draws.shape == (4, 5, 2)
    with pytest.raises(ValueError, match="dim_in == dim_out"):
        MixtureDensityRNN(3, 2, 2).generate(torch.randn(1, 2, 3), 2)
    with pytest.raises(ValueError, match="cell must be one of"):
        MixtureDensityRNN(1, 1, 2, cell="rnn")


def test_generate_at_low_temperature_follows_the_dominant_component() -> None:
    """tau -> 0: logits / tau pick the heaviest component and sigma * sqrt(tau) -> 0, so a
    draw lands on that component's mean (sketch-rnn's greedy limit)."""
    model = MixtureDensityRNN(1, 1, 3, hidden_dim=4).double()
    with torch.no_grad():  # distinct weights (a new head starts uniform)
        model.head.linear.weight.normal_(0.0, 3.0)
    prefix = torch.randn(6, 2, 1, dtype=torch.float64)
    h, _ = model.rnn(prefix)
    mixture: GaussianMixture = model.head(h[:, -1])
    top = mixture.logits.argmax(-1)  # (6,)
    assert bool((mixture.logits.topk(2).values.diff().abs() > 1e-3).all())  # a clear winner
    expected = mixture.loc[torch.arange(6), top]  # (6, 1)
    draws = model.generate(prefix, 1, temperature=1e-6, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(draws[:, 0], expected, rtol=0, atol=1e-2)


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
