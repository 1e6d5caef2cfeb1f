"""mixture_density.export.to_onnx on modules that return a GaussianMixture: onnxruntime's
outputs rebuild the module's own mixture (log_prob to 1e-4 nats, float32 graph against the
module in float64), for networks, a custom module around a head and a recurrent model.

Needs the extra ``onnx`` (onnx, onnxscript, onnxruntime); skipped without it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from mixture_density import (
    GaussianMixture,
    MixtureDensityHead,
    MixtureDensityNetwork,
    MixtureDensityRNN,
)
from mixture_density.export import to_onnx

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")


def _run(path: Path, x: Tensor) -> dict[str, Tensor]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"x": x.numpy()})
    names = [o.name for o in session.get_outputs()]
    return {n: torch.as_tensor(v, dtype=torch.float64) for n, v in zip(names, outputs)}


def _rebuilt(out: dict[str, Tensor]) -> GaussianMixture:
    spread = "scale_tril" if "scale_tril" in out else "scale"
    return GaussianMixture(out["logits"], out["loc"], **{spread: out[spread]})


def _reference(module: nn.Module, x: Tensor) -> GaussianMixture:
    """The module's own mixture, evaluated in float64 (a copy of the float32 weights)."""
    copy = type(module)(**module.config) if hasattr(module, "config") else None
    assert copy is not None
    copy.load_state_dict(module.state_dict())
    with torch.no_grad():
        result = copy.double().eval()(x.double())
    return result[0] if isinstance(result, tuple) else result


def _check_file(path: Path, names: list[str], K: int, D: int, kind: str) -> None:
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporary left
    model = onnx.load(str(path))
    meta = {p.key: json.loads(p.value) for p in model.metadata_props}
    assert meta["mixture_density.outputs"] == names
    assert meta["mixture_density.n_components"] == K
    assert meta["mixture_density.dim_out"] == D
    assert meta["mixture_density.kind"] == kind
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch


@pytest.mark.parametrize(
    ("noise", "spread"), [("diagonal", "scale"), ("isotropic", "scale"), ("full", "scale_tril")]
)
def test_network_matches_torch_in_onnxruntime(tmp_path: Path, noise: str, spread: str) -> None:
    torch.manual_seed(0)
    net = MixtureDensityNetwork(4, 3, 5, hidden_dims=(16, 16), noise_type=noise)
    with torch.no_grad():  # weights far from the initial ones: unequal, correlated components
        for p in net.parameters():
            p.add_(0.3 * torch.randn_like(p))
    path = tmp_path / "net.onnx"
    to_onnx(net, path, torch.zeros(8, 4))
    _check_file(path, ["logits", "loc", spread], 5, 3, "MixtureDensityNetwork")

    g = torch.Generator().manual_seed(1)
    x = torch.randn(37, 4, generator=g)  # a batch size the export never saw
    out = _run(path, x)
    assert list(out) == ["logits", "loc", spread]
    assert out[spread].shape == ((37, 5, 3, 3) if spread == "scale_tril" else (37, 5, 3))
    ref = _reference(net, x)
    y = ref.sample(generator=g)  # (37, 3): points where the density matters
    lp = _rebuilt(out).log_prob(y)
    np.testing.assert_allclose(lp.numpy(), ref.log_prob(y).numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(_rebuilt(out).mean.numpy(), ref.mean.numpy(), atol=1e-4)


class Regressor(nn.Module):
    """A user's module: its own feature extractor (with dropout) and a full-covariance head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Linear(6, 32), nn.GELU(), nn.Dropout(0.5))
        self.head = MixtureDensityHead(32, 2, 3, noise_type="full")

    def forward(self, x: Tensor) -> GaussianMixture:
        return self.head(self.features(x * 2.0 - 1.0))


class ScaleTril(nn.Module):
    """Builds its mixture by hand with ``scale_tril`` (no head): any parameterization goes."""

    lower: Tensor

    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(3, 2 * 6)  # K = 2: logit, loc (2), off-diagonal, diagonal (2)
        self.register_buffer("lower", torch.tensor([[0.0, 0.0], [1.0, 0.0]]))

    def forward(self, x: Tensor) -> GaussianMixture:
        raw = self.linear(x).unflatten(-1, (2, 6))  # (N, K, 6)
        diagonal = nn.functional.softplus(raw[..., 4:]) + 0.1  # (N, K, 2)
        tril = torch.diag_embed(diagonal) + raw[..., 3, None, None] * self.lower  # (N, K, 2, 2)
        return GaussianMixture(raw[..., 0], raw[..., 1:3], scale_tril=tril)


@pytest.mark.parametrize("cls", [Regressor, ScaleTril])
def test_custom_module_matches_torch_in_onnxruntime(tmp_path: Path, cls: type[nn.Module]) -> None:
    torch.manual_seed(0)
    module = cls()
    module.train()
    path = tmp_path / "custom.onnx"
    n_in = 6 if cls is Regressor else 3
    to_onnx(module, path, torch.zeros(4, n_in))
    assert module.training  # the export ran in eval mode and restored the mode
    K = 3 if cls is Regressor else 2
    _check_file(path, ["logits", "loc", "scale_tril"], K, 2, cls.__name__)
    x = torch.randn(11, n_in, generator=torch.Generator().manual_seed(1))
    module.eval()
    with torch.no_grad():
        ref = module(x)  # float32 in torch: the same computation as the graph
    out = _run(path, x)
    assert out["logits"].shape == (11, K)
    y = ref.sample(generator=torch.Generator().manual_seed(2)).double()
    ref64 = GaussianMixture(
        ref.logits.double(), ref.loc.double(), scale_tril=ref.scale_tril.double()
    )
    np.testing.assert_allclose(
        _rebuilt(out).log_prob(y).numpy(), ref64.log_prob(y).numpy(), rtol=0, atol=1e-4
    )


def test_recurrent_model_exports_the_mixture_of_every_step(tmp_path: Path) -> None:
    """MixtureDensityRNN returns (mixture, state): the mixture of every step is exported, for
    any batch size and the example's number of steps."""
    torch.manual_seed(0)
    model = MixtureDensityRNN(2, 2, 3, hidden_dim=8, cell="gru", noise_type="full")
    path = tmp_path / "rnn.onnx"
    to_onnx(model, path, torch.zeros(2, 6, 2))
    _check_file(path, ["logits", "loc", "scale_tril"], 3, 2, "MixtureDensityRNN")
    x = torch.randn(5, 6, 2, generator=torch.Generator().manual_seed(1))
    out = _run(path, x)
    assert out["loc"].shape == (5, 6, 3, 2)
    ref = _reference(model, x)  # batch (5, 6)
    y = ref.sample(generator=torch.Generator().manual_seed(2))
    np.testing.assert_allclose(
        _rebuilt(out).log_prob(y).numpy(), ref.log_prob(y).numpy(), rtol=0, atol=1e-4
    )


class NotAMixture(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x


@pytest.mark.parametrize(
    ("args", "error", "match"),
    [
        ((NotAMixture(), torch.zeros(2, 3)), TypeError, r"must return a GaussianMixture.*Tensor"),
        (("net", torch.zeros(2, 3)), TypeError, r"module must be a torch.nn.Module, got str"),
        ((None, [[0.0] * 3] * 2), TypeError, r"example_input must be a torch.Tensor, got list"),
        ((None, torch.zeros(1, 3)), ValueError, r"example_input must have shape \(N, \.\.\.\) "
         r"with N >= 2 rows .* got \(1, 3\)"),
    ],
)  # fmt: skip
def test_bad_arguments(tmp_path: Path, args: tuple, error: type, match: str) -> None:
    module = args[0] if args[0] is not None else MixtureDensityNetwork(3, 1, 2, hidden_dims=(4,))
    with pytest.raises(error, match=match):
        to_onnx(module, tmp_path / "m.onnx", args[1])
    assert not any(tmp_path.iterdir())


def test_without_the_extra_names_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    net = MixtureDensityNetwork(3, 1, 2, hidden_dims=(4,))
    with pytest.raises(ModuleNotFoundError, match=r"pip install 'mixture-density\[onnx\]'"):
        to_onnx(net, tmp_path / "m.onnx", torch.zeros(2, 3))
    assert not any(tmp_path.iterdir())
