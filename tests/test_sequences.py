"""fit on sequences with a mask of observed (row, step) entries (the RNN itself: test_rnn.py).

The reference for a masked fit is an ordinary fit of the same per-step model on the observed
entries alone, flattened into rows: with full-batch steps both minimize the same mean, so
they follow the same path up to float64 summation order.
"""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from mixture_density._loss import LossModule, masked_sums
from mixture_density.training import fit

Dist = torch.distributions


class PerStep(nn.Module):
    """A per-step heteroscedastic Gaussian: any leading axes, ``(B, T, 1) -> (B, T)``."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(1, 8), nn.Tanh(), nn.Linear(8, 2))

    def forward(self, x: torch.Tensor) -> Dist.Distribution:
        loc, raw = self.net(x).chunk(2, dim=-1)
        return Dist.Independent(Dist.Normal(loc, nn.functional.softplus(raw) + 1e-3), 1)


class PerStepWithMaskedLoss(PerStep):
    """The same model answering ``loss(x, y, mask)``; records the masks it was given."""

    def __init__(self) -> None:
        super().__init__()
        self.masks: list[torch.Tensor] = []

    def loss(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        self.masks.append(mask)
        return -self(x).log_prob(y)


class TwoMembers(nn.Module):
    """A batched ensemble of two per-step Gaussians (``n_members = 2``): every parameter has
    the leading member axis; ``loss`` maps ``(M, B, T, 1)`` or ``(B, T, 1)`` to ``(M, B, T)``."""

    n_members = 2

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.w = nn.Parameter(torch.randn(2, 3, generator=g, dtype=torch.float64))

    def member(self, m: int, x: torch.Tensor) -> Dist.Distribution:
        a, b, c = self.w[m]
        x = x[..., 0]
        return Dist.Normal(a * x + b, nn.functional.softplus(c + 0.5 * x) + 1e-3)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        xs = x if x.dim() == 4 else x.expand(2, *x.shape)
        ys = y if y.dim() == 4 else y.expand(2, *y.shape)
        return -torch.stack([self.member(m, xs[m]).log_prob(ys[m, ..., 0]) for m in range(2)])


def sequences(
    n: int = 48, T: int = 12, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``x (n, T, 1)``, ``y (n, T, 1)`` and a mask of random lengths ``1..T`` (padding NaN)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, T, 1, generator=g, dtype=torch.float64) * 4 - 2
    y = torch.sin(2 * x) + (0.1 + 0.3 * x.abs()) * torch.randn(
        n, T, 1, generator=g, dtype=torch.float64
    )
    lengths = torch.randint(1, T + 1, (n,), generator=g)
    mask = torch.arange(T) < lengths[:, None]  # (n, T)
    y = y.masked_fill(~mask[..., None], math.nan)
    return x, y, mask


def new(cls: type[nn.Module] = PerStep) -> nn.Module:
    torch.manual_seed(1)
    return cls().double()


def weights(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.state_dict().values()]


FULL_BATCH: dict[str, Any] = {
    "batch_size": 10_000,
    "lr": 2e-2,
    "lr_schedule": "none",
    "verbose": False,
    "seed": 0,
}


def _strip(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{k: v for k, v in h.items() if k not in ("seconds",)} for h in history]


def test_masked_fit_equals_fit_on_observed_entries() -> None:
    x, y, mask = sequences()
    xv, yv, mv = sequences(20, seed=1)
    masked = new()
    r1 = fit(masked, x, y, mask, val_data=(xv, yv, mv), epochs=15, patience=3, **FULL_BATCH)
    flat = new()
    r2 = fit(flat, x[mask], y[mask], val_data=(xv[mv], yv[mv]), epochs=15, patience=3, **FULL_BATCH)
    for a, b in zip(weights(masked), weights(flat)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    assert len(r1.history) == len(r2.history) and r1.stop_reason == r2.stop_reason
    for h1, h2 in zip(r1.history, r2.history):  # per observed entry, not per row
        assert h1["train_nll"] == pytest.approx(h2["train_nll"], abs=1e-10)
        assert h1["val_nll"] == pytest.approx(h2["val_nll"], abs=1e-10)
    assert r1.best_epoch == r2.best_epoch
    # The records are means over the observed entries: recompute the last one.
    masked.eval()
    with torch.no_grad():
        nll = -masked(xv).log_prob(torch.nan_to_num(yv))  # (n, T)
    best = r1.history[r1.best_epoch - 1]["val_nll"]
    assert float(nll[mv].mean()) == pytest.approx(best, abs=1e-10)


def test_padding_values_do_not_matter() -> None:
    """NaN, zeros or garbage where the mask is False: the same fit, finite weights."""
    x, y, mask = sequences(32, 8)
    results = []
    for fill in (math.nan, 0.0, 1e6):
        model = new()
        fit(model, x, y.masked_fill(~mask[..., None], fill), mask, epochs=3, **FULL_BATCH)
        results.append(weights(model))
    for other in results[1:]:
        for a, b in zip(results[0], other):
            assert torch.isfinite(a).all()
            torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_validation_split_carries_the_mask_and_minibatches_train() -> None:
    x, y, mask = sequences(60, 10)
    model = new()
    result = fit(model, x, y, mask, epochs=20, batch_size=16, lr=1e-2, verbose=False, seed=0)
    hist = result.history
    assert all(math.isfinite(h["val_nll"]) for h in hist)
    assert hist[-1]["train_nll"] < hist[0]["train_nll"] - 0.3
    # One output: y may be (n, T) with a mask (n, T).
    fit(new(), x, y[..., 0], mask, epochs=1, verbose=False, seed=0)


def test_loss_protocol_passes_the_mask_and_loader_triples() -> None:
    x, y, mask = sequences(24, 6)
    model = new(PerStepWithMaskedLoss)
    fit(model, x, y, mask, epochs=1, val_fraction=0.0, **FULL_BATCH)
    assert len(model.masks) == 1 and torch.equal(model.masks[0].sum(), mask.sum())
    # A Dataset of (x, y, mask) triples (full batch, random order) trains the same way.
    in_memory, from_loader = new(), new()
    fit(in_memory, x, y, mask, epochs=4, val_fraction=0.0, **FULL_BATCH)
    loader = DataLoader(TensorDataset(x, y, mask), batch_size=1000, shuffle=True)
    kwargs = {k: v for k, v in FULL_BATCH.items() if k != "batch_size"}
    fit(from_loader, train_data=loader, epochs=4, **kwargs)
    for a, b in zip(weights(in_memory), weights(from_loader)):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    # A two-argument loss is called without the mask.
    assert not LossModule(new(), None, "cpu").loss_takes_mask
    assert LossModule(model, None, "cpu").loss_takes_mask


def test_ensemble_members_follow_their_own_masked_fits() -> None:
    """M = 2 members, each its own masked mean; the combined validation NLL per entry."""
    x, y, mask = sequences(30, 7)
    xv, yv, mv = sequences(12, 7, seed=2)
    ens = TwoMembers()
    fit(ens, x, y, mask, val_fraction=0.0, epochs=5, **FULL_BATCH)
    start = TwoMembers()
    for m in range(2):
        # Member m alone, as a one-member model trained on the observed entries.
        single = _OneMember(start.w[m].detach().clone())
        fit(single, x[mask], y[mask], val_fraction=0.0, epochs=5, **FULL_BATCH)
        torch.testing.assert_close(ens.w[m].detach(), single.w.detach(), rtol=0, atol=1e-10)

    checked = []

    def check(epoch: int, record: dict[str, Any]) -> None:
        with torch.no_grad():
            lp = -ens.loss(xv, torch.nan_to_num(yv))  # (2, n, T)
            mix = -(torch.logsumexp(lp, 0) - math.log(2))[mv].mean()
            members = [float(-lp[m][mv].mean()) for m in range(2)]
        assert record["val_nll"] == pytest.approx(float(mix), abs=1e-10)
        assert record["members_val_nll"] == pytest.approx(members, abs=1e-10)
        checked.append(epoch)

    ens = TwoMembers()
    fit(ens, x, y, mask, val_data=(xv, yv, mv), epochs=3, callbacks=[check], **FULL_BATCH)
    assert checked == [1, 2, 3]


class _OneMember(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> Dist.Distribution:
        a, b, c = self.w
        x = x[..., 0]
        return Dist.Independent(
            Dist.Normal(
                (a * x + b)[..., None], (nn.functional.softplus(c + 0.5 * x) + 1e-3)[..., None]
            ),
            1,
        )


def test_resume_of_a_masked_fit_equals_the_uninterrupted_one(tmp_path: Any) -> None:
    x, y, mask = sequences(40, 6)
    kwargs: dict[str, Any] = {
        "epochs": 6,
        "batch_size": 8,
        "lr": 1e-2,
        "patience": 3,
        "checkpoint_every": 1,
        "seed": 5,
        "verbose": False,
    }
    ref = new()
    ref_result = fit(ref, x, y, mask, checkpoint_path=str(tmp_path / "ref.pt"), **kwargs)

    def stop(epoch: int, record: dict[str, float]) -> None:
        if epoch == 3:
            raise KeyboardInterrupt

    path = str(tmp_path / "run.pt")
    with pytest.warns(RuntimeWarning, match="interrupted"):
        fit(new(), x, y, mask, checkpoint_path=path, callbacks=[stop], **kwargs)
    resumed = new()
    result = fit(resumed, x, y, mask, checkpoint_path=path, resume=True, **kwargs)
    for a, b in zip(weights(resumed), weights(ref)):
        assert torch.equal(a, b)
    assert _strip(result.history) == _strip(ref_result.history)


def test_nonfinite_rollback_with_a_mask() -> None:
    class Breaks(PerStepWithMaskedLoss):
        def loss(self, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            out = super().loss(x, y, mask)
            return out * math.nan if self.training and len(self.masks) > 8 else out

    x, y, mask = sequences(40, 6)
    with pytest.warns(RuntimeWarning, match="consecutive minibatches"):
        result = fit(
            new(Breaks),
            x,
            y,
            mask,
            epochs=10,
            batch_size=8,
            max_nonfinite_batches=3,
            verbose=False,
            seed=0,
        )
    assert result.stop_reason == "non_finite" and result.best_epoch >= 1


@pytest.mark.parametrize(
    ("mask", "match"),
    [
        (torch.ones(48, 11, dtype=torch.bool), r"mask must have the shape of y without"),
        (torch.ones(48, 12), "mask must hold booleans"),
        (torch.full((48, 12), 2), "mask must hold booleans"),
    ],
)
def test_mask_errors_name_the_argument(mask: torch.Tensor, match: str) -> None:
    x, y, _ = sequences()
    with pytest.raises((ValueError, TypeError), match=match):
        fit(new(), x, y, mask, epochs=1, verbose=False)


def test_observed_nan_and_mask_with_train_data_are_refused() -> None:
    x, y, mask = sequences()
    with pytest.raises(ValueError, match=r"y \(where mask is True\) contains NaN"):
        fit(new(), x, y, torch.ones_like(mask), epochs=1, verbose=False)
    with pytest.raises(ValueError, match="mask goes with X and y"):
        fit(new(), train_data=TensorDataset(x, y), mask=mask, epochs=1, verbose=False)


def test_masked_sums_against_a_loop() -> None:
    g = torch.Generator().manual_seed(0)
    nll = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    mask = torch.rand(3, 4, 5, generator=g) < 0.6
    sums, counts = masked_sums(nll, mask, 3)
    for m in range(3):
        expected = sum(float(v) for v, o in zip(nll[m].flatten(), mask[m].flatten()) if o)
        assert float(sums[m]) == pytest.approx(expected, abs=1e-12)
        assert int(counts[m]) == int(mask[m].sum())
    # Shared mask (B, T) for all members, and a loss already reduced to its mean.
    sums, counts = masked_sums(nll, mask[0], 3)
    assert counts.tolist() == [float(mask[0].sum())] * 3
    s, c = masked_sums(torch.tensor(2.0, dtype=torch.float64), mask[0], 1)
    assert float(s) == 2.0 * float(c)
