"""Tests for mixture_density.training.fit (streaming CSV input: tests/test_data.py)."""

from __future__ import annotations

import math
import os
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from mixture_density._loss import LossModule
from mixture_density._options import noise_stds as _noise_stds
from mixture_density.training import FitResult, fit

D = torch.distributions


class Gauss(nn.Module):
    """Heteroscedastic Gaussian: forward returns Independent(Normal) over D outputs."""

    def __init__(self, dim_in: int = 1, dim_out: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(dim_in, 16), nn.Tanh(), nn.Dropout(dropout), nn.Linear(16, 2 * dim_out)
        )

    def forward(self, x: torch.Tensor) -> D.Distribution:
        loc, raw = self.net(x).chunk(2, dim=-1)
        return D.Independent(D.Normal(loc, nn.functional.softplus(raw) + 1e-3), 1)


class GaussWithLoss(Gauss):
    """Same model with a ``loss`` method, the path fit prefers."""

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self(x).log_prob(y)


class NaNAfter(GaussWithLoss):
    """Training loss turns NaN after ``after`` training-mode calls (forever)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after, self.calls = after, 0

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = super().loss(x, y)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return out * math.nan
        return out


def make_data(n: int = 512, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, generator=g, dtype=torch.float64) * 4 - 2
    noise = torch.randn(n, 1, generator=g, dtype=torch.float64)
    return x, torch.sin(2 * x) + (0.1 + 0.3 * x.abs()) * noise


def new_model(cls: type[nn.Module] = Gauss, **kw: Any) -> nn.Module:
    torch.manual_seed(1)
    return cls(**kw).double()


def params(model: nn.Module) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.state_dict().values()]


def same(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))


def mean_nll(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float(-model(x).log_prob(y).mean())


QUIET: dict[str, Any] = {"verbose": False, "seed": 0}


# --------------------------------------------------------------------------- basics


def test_loss_falls_on_heteroscedastic_problem() -> None:
    x, y = make_data()
    xv, yv = make_data(256, seed=1)
    model = new_model()
    before = mean_nll(model, xv, yv)
    result = fit(model, x, y, val_data=(xv, yv), epochs=40, lr=1e-2, **QUIET)
    after = mean_nll(model, xv, yv)
    # The true conditional NLL is about 0.1 here; an untrained model is above 1.
    assert before > 1.0
    assert after < 0.45
    assert result.history[-1]["train_nll"] < result.history[0]["train_nll"] - 0.5


def test_history_shape_and_fields() -> None:
    x, y = make_data(128)
    result = fit(new_model(), x, y, epochs=4, lr_schedule="cosine", **QUIET)
    assert isinstance(result, FitResult)
    assert result.epochs_run == len(result.history) == 4
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    for h in result.history:
        assert set(h) == {"epoch", "train_nll", "val_nll", "lr", "seconds"}
        assert math.isfinite(h["train_nll"]) and math.isfinite(h["val_nll"]) and h["seconds"] >= 0
    # Cosine annealing over 4 epochs: lr_e = lr0 * (1 + cos(pi * (e - 1) / 4)) / 2.
    expected = [1e-3 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]
    assert [h["lr"] for h in result.history] == pytest.approx(expected, rel=1e-12)
    assert result.stop_reason == "max_epochs"


def test_early_stopping_restores_best_weights() -> None:
    # Few noisy points and a high learning rate: validation NLL rises after a few epochs.
    x, y = make_data(48, seed=2)
    xv, yv = make_data(200, seed=3)
    last: dict[str, list[torch.Tensor]] = {}
    model = new_model()

    def keep_last(epoch: int, record: dict[str, float]) -> None:
        last["w"] = params(model)

    result = fit(
        model,
        x,
        y,
        val_data=(xv, yv),
        epochs=300,
        batch_size=16,
        lr=3e-2,
        patience=5,
        lr_schedule="none",
        callbacks=[keep_last],
        **QUIET,
    )
    assert result.stop_reason == "early_stopping"
    assert result.epochs_run == result.best_epoch + 5
    vals = [h["val_nll"] for h in result.history]
    assert result.best_val_nll == min(vals) == vals[result.best_epoch - 1]
    # The returned model is the best one, not the last one, to float64 round-off.
    assert mean_nll(model, xv, yv) == pytest.approx(result.best_val_nll, abs=1e-12)
    assert not same(params(model), last["w"])


def test_val_fraction_zero_keeps_last_weights() -> None:
    x, y = make_data(128)
    last: dict[str, list[torch.Tensor]] = {}
    model = new_model()
    result = fit(
        model,
        x,
        y,
        val_fraction=0,
        epochs=3,
        callbacks=[lambda e, r: last.__setitem__("w", params(model))],
        **QUIET,
    )
    assert math.isnan(result.best_val_nll)
    assert all(math.isnan(h["val_nll"]) for h in result.history)
    assert result.best_epoch == 3
    assert same(params(model), last["w"])


def test_dataloader_and_dataset_inputs() -> None:
    x, y = make_data(256)
    xv, yv = make_data(128, seed=1)
    loader = DataLoader(TensorDataset(x, y[:, 0]), batch_size=32, shuffle=True)
    model = new_model(GaussWithLoss)
    r1 = fit(
        model,
        train_data=loader,
        val_data=DataLoader(TensorDataset(xv, yv)),
        epochs=8,
        lr=1e-2,
        **QUIET,
    )
    assert r1.history[-1]["val_nll"] < r1.history[0]["val_nll"]
    model = new_model()
    r2 = fit(model, train_data=TensorDataset(x, y), val_fraction=0.25, epochs=8, lr=1e-2, **QUIET)
    assert math.isfinite(r2.best_val_nll)
    assert r2.history[-1]["train_nll"] < r2.history[0]["train_nll"]


class Rows(IterableDataset[tuple[torch.Tensor, torch.Tensor]]):
    def __init__(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x, self.y = x, y

    def __iter__(self) -> Any:
        return zip(self.x, self.y)


def test_iterable_dataset_input() -> None:
    x, y = make_data(256)
    xv, yv = make_data(128, seed=1)
    model = new_model()
    r = fit(model, train_data=Rows(x, y), epochs=6, lr=1e-2, batch_size=32, **QUIET)
    assert r.stop_reason == "max_epochs" and math.isnan(r.best_val_nll)
    assert r.history[-1]["train_nll"] < r.history[0]["train_nll"]
    r = fit(new_model(), train_data=Rows(x, y), val_data=(xv, yv), epochs=3, **QUIET)
    assert math.isfinite(r.best_val_nll)
    with pytest.raises(ValueError, match="auto"):
        fit(new_model(), train_data=Rows(x, y), epochs=1, noise_regularization="auto", **QUIET)


def test_seeded_fit_is_reproducible_and_leaves_global_rng_alone() -> None:
    x, y = make_data(128)
    kw: dict[str, Any] = {"epochs": 3, "noise_regularization": 0.1, "verbose": False}
    state = torch.get_rng_state()
    a, b, c = (new_model(Gauss, dropout=0.1) for _ in range(3))
    torch.set_rng_state(state)
    fit(a, x, y, seed=5, **kw)
    assert torch.equal(torch.get_rng_state(), state)
    fit(b, x, y, seed=5, **kw)
    fit(c, x, y, seed=6, **kw)
    assert same(params(a), params(b))
    assert not same(params(a), params(c))


def test_callback_stops_and_mode_is_restored() -> None:
    x, y = make_data(64)
    model = new_model().eval()
    r = fit(model, x, y, epochs=10, callbacks=[lambda e, rec: e >= 2], **QUIET)
    assert r.stop_reason == "callback" and r.epochs_run == 2
    assert not model.training


def test_verbose_progress_bar(capsys: pytest.CaptureFixture[str]) -> None:
    x, y = make_data(64)
    fit(new_model(), x, y, epochs=2, verbose=True, seed=0)
    assert "fit" in capsys.readouterr().err
    fit(new_model(), x, y, epochs=2, verbose=False, seed=0)
    assert capsys.readouterr().err == ""


# --------------------------------------------------------------------------- robustness


def test_nan_loss_rolls_back_to_last_good_weights() -> None:
    x, y = make_data(256)
    model = NaNAfter(after=2 * 8 + 3).double()  # 8 batches per epoch: NaN from epoch 3
    snaps: dict[int, list[torch.Tensor]] = {}
    with pytest.warns(RuntimeWarning, match="non-finite"):
        r = fit(
            model,
            x,
            y,
            val_fraction=0,
            batch_size=32,
            epochs=10,
            max_nonfinite_batches=4,
            callbacks=[lambda e, rec: snaps.__setitem__(e, params(model))],
            **QUIET,
        )
    assert r.stop_reason == "non_finite" and "epoch 3" in r.detail
    assert r.best_epoch == 2 and r.epochs_run == 3
    assert all(torch.isfinite(p).all() for p in params(model))
    assert same(params(model), snaps[2])


def test_nan_loss_skipped_batches_do_not_move_weights() -> None:
    x, y = make_data(64)
    model = NaNAfter(after=0).double()
    before = params(model)
    with pytest.warns(RuntimeWarning):
        r = fit(
            model, x, y, val_fraction=0, epochs=2, batch_size=16, max_nonfinite_batches=100, **QUIET
        )
    # Every step skipped: the weights are the initial ones and no epoch is "good".
    assert same(params(model), before)
    assert r.best_epoch == 0 and math.isnan(r.history[0]["train_nll"])


def test_bad_inputs_raise_clear_errors() -> None:
    x, y = make_data(32)
    m = new_model()
    with pytest.raises(ValueError, match="same number of rows"):
        fit(m, x, y[:-1], **QUIET)
    x_nan = x.clone()
    x_nan[3, 0] = math.nan
    with pytest.raises(ValueError, match=r"^X contains NaN or inf .* row 3"):
        fit(m, x_nan, y, **QUIET)
    with pytest.raises(ValueError, match=r"^y contains NaN or inf"):
        fit(m, x, np.where(np.arange(32)[:, None] == 5, np.inf, y.numpy()), **QUIET)
    with pytest.raises(ValueError, match="val_data\\[1\\]"):
        fit(m, x, y, val_data=(x, y * math.nan), **QUIET)
    with pytest.raises(ValueError, match="empty"):
        fit(m, x[:0], y[:0], **QUIET)
    with pytest.raises(ValueError, match="either X and y or train_data"):
        fit(m, x, y, train_data=TensorDataset(x, y), **QUIET)
    with pytest.raises(ValueError, match="no training data"):
        fit(m, **QUIET)
    with pytest.raises(ValueError, match="lr_schedule"):
        fit(m, x, y, lr_schedule="step", **QUIET)
    with pytest.raises(ValueError, match="resume=True needs checkpoint_path"):
        fit(m, x, y, resume=True, **QUIET)
    with pytest.raises(ValueError, match="val_fraction"):
        fit(m, x, y, val_fraction=1.0, **QUIET)
    with pytest.raises(ValueError, match="noise_regularization"):
        fit(m, x, y, noise_regularization="silverman", **QUIET)
    with pytest.raises(TypeError, match="train_data"):
        fit(m, train_data=[(x, y)], **QUIET)


# --------------------------------------------------------------------------- checkpoints


def _resume_kwargs(path: str) -> dict[str, Any]:
    return {
        "epochs": 6,
        "batch_size": 32,
        "lr": 1e-2,
        "lr_schedule": "cosine",
        "patience": 3,
        "noise_regularization": (0.05, 0.1),
        "checkpoint_path": path,
        "checkpoint_every": 2,
        "seed": 11,
        "verbose": False,
    }


class InterruptAt:
    """Raises KeyboardInterrupt from the model's forward on its ``n``-th training call."""

    def __init__(self, model: nn.Module, n: int) -> None:
        self.count, self.n = 0, n
        model.register_forward_pre_hook(self)

    def __call__(self, module: nn.Module, args: Any) -> None:
        if module.training:
            self.count += 1
            if self.count == self.n:
                raise KeyboardInterrupt


@pytest.mark.parametrize("where", ["callback_epoch_3", "mid_epoch_4"])
def test_resume_after_interruption_equals_uninterrupted(tmp_path: Any, where: str) -> None:
    x, y = make_data(200)
    ref_model = new_model(Gauss, dropout=0.2)
    ref = fit(ref_model, x, y, **_resume_kwargs(str(tmp_path / "ref.pt")))

    path = str(tmp_path / "run.pt")
    model = new_model(Gauss, dropout=0.2)
    callbacks: list[Any] = []
    if where == "callback_epoch_3":

        def stop(epoch: int, record: dict[str, float]) -> None:
            if epoch == 3:
                raise KeyboardInterrupt

        callbacks = [stop]
    else:
        InterruptAt(model, n=3 * 6 + 2)  # 180 train rows / 32 = 6 batches per epoch
    with pytest.warns(RuntimeWarning, match="interrupted"):
        r1 = fit(model, x, y, callbacks=callbacks, **_resume_kwargs(path))
    assert r1.stop_reason == "interrupted"
    saved = torch.load(path, weights_only=True)["epoch"]
    assert saved == (3 if where == "callback_epoch_3" else 2)

    fresh = new_model(Gauss, dropout=0.2)
    r2 = fit(fresh, x, y, resume=True, **_resume_kwargs(path))
    assert same(params(fresh), params(ref_model))
    assert r2.best_epoch == ref.best_epoch and r2.stop_reason == ref.stop_reason
    strip = [{k: v for k, v in h.items() if k != "seconds"} for h in r2.history]
    assert strip == [{k: v for k, v in h.items() if k != "seconds"} for h in ref.history]

    # Resuming a finished run trains nothing and returns the same weights.
    again = new_model(Gauss, dropout=0.2)
    r3 = fit(again, x, y, resume=True, **_resume_kwargs(path))
    assert same(params(again), params(ref_model)) and r3.epochs_run == r2.epochs_run


def test_resume_without_file_starts_fresh_and_checks_data(tmp_path: Any) -> None:
    x, y = make_data(64)
    path = str(tmp_path / "sub" / "c.pt")
    fit(new_model(), x, y, epochs=2, checkpoint_path=path, resume=True, **QUIET)
    assert os.path.exists(path)
    with pytest.raises(ValueError, match="n_train"):
        fit(new_model(), x[:40], y[:40], epochs=4, checkpoint_path=path, resume=True, **QUIET)


def test_checkpoint_write_is_atomic(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    x, y = make_data(64)
    path = tmp_path / "c.pt"
    fit(new_model(), x, y, epochs=2, checkpoint_path=str(path), **QUIET)
    good = path.read_bytes()

    def broken_save(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        f.write(b"partial garbage")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        fit(new_model(), x, y, epochs=2, checkpoint_path=str(path), **QUIET)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.pt"]  # no temporary left over
    monkeypatch.undo()
    assert torch.load(path, weights_only=True)["epoch"] == 2


# --------------------------------------------------------------------------- options


def test_noise_regularization_changes_training_but_converges() -> None:
    x, y = make_data(512)
    xv, yv = make_data(256, seed=1)
    # Standardized, as fit assumes (the estimator standardizes before calling fit).
    mx, sx, my, sy = x.mean(), x.std(), y.mean(), y.std()
    x, xv, y, yv = (x - mx) / sx, (xv - mx) / sx, (y - my) / sy, (yv - my) / sy
    kw = {"val_data": (xv, yv), "epochs": 30, "lr": 1e-2, "batch_size": 32, **QUIET}
    runs = {}
    for spec in (None, 0.1, "auto"):
        model = new_model()
        runs[spec] = (fit(model, x, y, noise_regularization=spec, **kw), params(model))
    assert not same(runs[None][1], runs[0.1][1])
    assert not same(runs[0.1][1], runs["auto"][1])
    plain = runs[None][0].best_val_nll
    # Small noise costs little; the rule of thumb (h = 512^(-1/6) ~ 0.35) smooths more
    # (about +0.4 nats on this nearly noise-free problem) but still learns.
    assert runs[0.1][0].best_val_nll < plain + 0.1
    auto = runs["auto"][0]
    assert auto.best_val_nll < auto.history[0]["val_nll"] - 0.3
    assert auto.best_val_nll < plain + 0.6
    assert _noise_stds("auto", 512, 2) == (512 ** (-1 / 6), 512 ** (-1 / 6))
    assert _noise_stds((0.1, 0.2), None, 3) == (0.1, 0.2)
    assert _noise_stds(0.3, None, 3) == (0.3, 0.3)


def test_mixed_precision_keeps_likelihood_in_model_dtype() -> None:
    mdn = pytest.importorskip("mixture_density.nn")
    torch.manual_seed(0)
    model = mdn.MixtureDensityNetwork(2, 2, 3, noise_type="full")
    x, y = torch.randn(8, 2), torch.randn(8, 2)
    module = LossModule(model, torch.bfloat16, "cpu")
    assert module.split
    nll = module(x, y)
    assert nll.dtype == torch.float32 and nll.shape == (8,)
    assert not torch.equal(nll, model.loss(x, y))  # autocast did lower the backbone
    # Only the backbone ran in bf16: the result is within bf16 round-off of the fp32 loss.
    # bf16 epsilon is 2**-7 ~ 7.8e-3; measured difference here ~8e-4.
    assert torch.allclose(nll, model.loss(x, y), rtol=1e-2, atol=1e-2)
    other = LossModule(Gauss(2, 2), torch.bfloat16, "cpu")
    assert not other.split and other(x, y).dtype == torch.float32


def test_fit_mixture_density_network_bf16() -> None:
    mdn = pytest.importorskip("mixture_density.nn")
    x, y = make_data(256)
    torch.manual_seed(0)
    model = mdn.MixtureDensityNetwork(1, 1, 3, hidden_dim=16)
    r = fit(model, x.float(), y.float(), epochs=10, lr=1e-2, precision="bf16", **QUIET)
    assert r.history[-1]["val_nll"] < r.history[0]["val_nll"]
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_fit_mixture_density_network_with_loss_method() -> None:
    mdn = pytest.importorskip("mixture_density.nn")
    x, y = make_data(256)
    torch.manual_seed(0)
    model = mdn.MixtureDensityNetwork(1, 1, 3, hidden_dim=16).double()
    before = mean_nll(model, x, y)
    r = fit(model, x, y[:, 0], epochs=15, lr=1e-2, val_fraction=0.2, **QUIET)
    assert r.best_val_nll < before - 0.5


def test_compile_failure_falls_back_to_eager(monkeypatch: pytest.MonkeyPatch) -> None:
    def bad_compile(module: Any, **kwargs: Any) -> Any:
        def run(*args: Any) -> Any:
            raise RuntimeError("backend exploded")

        return run

    monkeypatch.setattr(torch, "compile", bad_compile)
    x, y = make_data(64)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        r = fit(new_model(), x, y, epochs=2, compile=True, **QUIET)
    assert r.epochs_run == 2
    assert sum("torch.compile failed" in str(w.message) for w in caught) == 1


def test_compile_sees_only_full_batches(monkeypatch: pytest.MonkeyPatch) -> None:
    rows: list[int] = []

    def recording_compile(module: Any, **kwargs: Any) -> Any:
        assert kwargs.get("dynamic") is False

        def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            rows.append(x.shape[0])
            return module(x, y)

        return run

    monkeypatch.setattr(torch, "compile", recording_compile)
    x, y = make_data(100)
    r = fit(new_model(), x, y, epochs=2, batch_size=32, val_fraction=0.1, compile=True, **QUIET)
    # 90 training rows: two full batches per epoch compiled, the ragged 26 rows run eagerly.
    assert rows == [32, 32, 32, 32] and r.epochs_run == 2
