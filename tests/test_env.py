"""Tests for mixture_density._env: the process environment and device resolution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mixture_density import _env
from mixture_density._errors import MixtureDensityError

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def test_one_process_without_launcher(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert (_env.world_size(), _env.rank(), _env.local_rank()) == (1, 0, 0)
    assert _env.shard() == (0, 1)


def test_torchrun_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert (_env.world_size(), _env.rank(), _env.local_rank()) == (4, 3, 1)


@pytest.mark.parametrize("name", ["WORLD_SIZE", "RANK", "LOCAL_RANK"])
def test_non_integer_variable_is_one_clear_error(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(name, "two")
    read = {"WORLD_SIZE": _env.world_size, "RANK": _env.rank, "LOCAL_RANK": _env.local_rank}
    with pytest.raises(MixtureDensityError, match=f"{name} must be an integer, got 'two'"):
        read[name]()


def test_dist_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_env.TIMEOUT_ENV, raising=False)
    assert _env.dist_timeout_s() == _env.DEFAULT_TIMEOUT_S
    monkeypatch.setenv(_env.TIMEOUT_ENV, "2.5")
    assert _env.dist_timeout_s() == 2.5
    for bad in ("0", "soon"):
        monkeypatch.setenv(_env.TIMEOUT_ENV, bad)
        with pytest.raises(ValueError, match=_env.TIMEOUT_ENV):
            _env.dist_timeout_s()


def test_missing_launcher_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RANK", "0")
    assert _env.missing_launcher_variables() == ["WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"]


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert _env.resolve_device("cpu") == torch.device("cpu")
    assert _env.resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = torch.device("cuda", 1) if torch.cuda.is_available() else torch.device("cpu")
    assert _env.resolve_device("auto") == expected
    if torch.cuda.is_available():
        assert _env.resolve_device("cuda") == torch.device("cuda", 1)
        assert _env.resolve_device("cuda", 0) == torch.device("cuda", 0)
        assert _env.resolve_device("cuda:0") == torch.device("cuda", 0)


@no_cuda
@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_cuda_without_cuda_is_an_error_not_a_cpu_run(device: str | torch.device) -> None:
    with pytest.raises(ValueError, match=r"device='cuda.*not available.*device='cpu'"):
        _env.resolve_device(device)


@no_cuda
def test_estimator_refuses_cuda_without_cuda_but_load_falls_back(tmp_path: Path) -> None:
    from mixture_density.estimator import MDNRegressor

    X, y = np.linspace(-1, 1, 40)[:, None], np.linspace(0, 1, 40)
    with pytest.raises(ValueError, match="CUDA is not available"):
        MDNRegressor(n_estimators=2, epochs=1, device="cuda").fit(X, y)
    est = MDNRegressor(n_estimators=2, hidden_dims=(4,), epochs=1, random_state=0).fit(X, y)
    est.set_params(device="cuda")  # as if saved on a GPU machine
    est.save(tmp_path / "m.pt")
    # Documented: the saved device, or the CPU where it is not available ...
    loaded = MDNRegressor.load(tmp_path / "m.pt")
    np.testing.assert_array_equal(loaded.predict(X), est.predict(X))
    # ... but a device asked for explicitly is never replaced silently.
    with pytest.raises(ValueError, match="CUDA is not available"):
        MDNRegressor.load(tmp_path / "m.pt", device="cuda")
