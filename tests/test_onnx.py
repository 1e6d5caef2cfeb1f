"""ONNX export: onnxruntime's outputs rebuild the estimator's mixture (log_prob to 1e-4 nats).

Needs the extra ``onnx`` (onnx, onnxscript, onnxruntime); skipped without it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from mixture_density import GaussianMixture, MDNRegressor
from mixture_density._onnx import MixtureOutputs, MixtureParameters, covariance_tril
from mixture_density.cli import main

sklearn_exceptions = pytest.importorskip("sklearn.exceptions")
onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
ort = pytest.importorskip("onnxruntime")


def _data(D: int, n: int = 240, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Inputs on very different scales and a correlated, shifted target: the folded
    standardization must be exact in every column."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 3)) * [1.0, 30.0, 0.01] + [0.0, 100.0, -2.0]
    base = np.sin(X[:, 0]) + X[:, 1] / 30 + 0.3 * rng.normal(size=n)
    Y = np.stack([(d + 1) * base + 0.2 * rng.normal(size=n) for d in range(D)], 1)
    return X, Y * [5.0, 0.1, 2.0][:D] + 4.0


def _run(path: Path, X: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {"x": X.astype(np.float32)})
    return {o.name: v for o, v in zip(session.get_outputs(), outputs)}


CASES = [  # noise, D, n_estimators: one network, an ensemble, full covariance (an ensemble)
    ("diagonal", 1, 1),
    ("isotropic", 2, 3),
    ("full", 3, 2),
]


@pytest.mark.parametrize(("noise", "D", "M"), CASES)
def test_onnxruntime_matches_log_prob(tmp_path: Path, noise: str, D: int, M: int) -> None:
    X, Y = _data(D)
    y = Y[:, 0] if D == 1 else Y
    est = MDNRegressor(
        n_components=3, hidden_dims=(16,), noise_type=noise, n_estimators=M, epochs=8,
        random_state=0,
    ).fit(X, y)  # fmt: skip
    path = tmp_path / "model.onnx"
    est.to_onnx(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no temporary left

    X_test, Y_test = _data(D, n=37, seed=1)  # a batch size the export never saw
    out = _run(path, X_test)
    K = 3 * M
    spread = "scale_tril" if noise == "full" else "scale"
    assert list(out) == ["logits", "loc", spread]
    assert out["logits"].shape == (37, K) and out["loc"].shape == (37, K, D)
    assert out[spread].shape == ((37, K, D, D) if noise == "full" else (37, K, D))
    np.testing.assert_allclose(np.logaddexp.reduce(out["logits"], axis=1), 0.0, atol=1e-5)

    t = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in out.items()}
    gm = GaussianMixture(t["logits"], t["loc"], **{spread: t[spread]})
    y_test = Y_test[:, 0] if D == 1 else Y_test
    Y64 = torch.as_tensor(Y_test, dtype=torch.float64)
    lp = gm.log_prob(Y64).numpy()
    np.testing.assert_allclose(lp, est.log_prob(X_test, y_test), rtol=0, atol=1e-4)
    # The estimator's own (float32) parameters evaluated in float64: no float32 log_prob;
    # what is left is the float32 rounding of the graph's outputs (up to ~3e-5 nats).
    ref = est.predict_distribution(X_test)
    kind = {"full": "precision_tril", "diagonal": "scale", "isotropic": "scale"}[noise]
    ref64 = GaussianMixture(
        ref.logits.double(), ref.loc.double(), **{kind: getattr(ref, kind).double()}
    )
    np.testing.assert_allclose(lp, ref64.log_prob(Y64).numpy(), rtol=0, atol=5e-5)
    np.testing.assert_allclose(gm.mean.numpy(), ref.mean.double().numpy(), rtol=1e-4, atol=1e-4)

    model = onnx.load(str(path))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["mixture_density.noise_type"]) == noise
    assert json.loads(meta["mixture_density.n_components"]) == K
    assert json.loads(meta["mixture_density.outputs"]) == ["logits", "loc", spread]
    assert json.loads(meta["mixture_density.target_transform"]) == est.target_transform_
    assert json.loads(meta["mixture_density.calibration"]) is None
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch


def test_auto_ensemble_with_member_weights_and_bounded_target(tmp_path: Path) -> None:
    """Defaults on a small set mix members of different K with stacked (unequal) weights;
    a bounded target exports the mixture of g(y) = log(y - lo), recorded in the metadata;
    a recalibrated model records its PIT map. Rebuilt from onnxruntime's outputs, the
    mixture equals the estimator's base mixture (``predict_distribution(X).base``)."""
    X, Y = _data(1, n=150)
    y = np.exp(Y[:, 0] / 5.0)  # positive, skewed
    est = MDNRegressor(hidden_dims=(8,), epochs=4, random_state=0, target_bounds=(0.0, None))
    est.fit(X[:100], y[:100]).calibrate(X[100:], y[100:])
    assert len({m.n_components for m in est.models_}) > 1  # members of different K
    assert len(set(est.member_weights_)) > 1  # stacked, not equal
    path = tmp_path / "model.onnx"
    est.to_onnx(path)
    X_test = _data(1, n=11, seed=2)[0]
    out = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in _run(path, X_test).items()}
    assert out["logits"].shape[1] == sum(m.n_components for m in est.models_)
    base = est.predict_distribution(X_test).base.base  # recalibrated -> target -> mixture
    gm = GaussianMixture(out["logits"], out["loc"], scale=out["scale"])
    z = base.sample((5,)).double()
    np.testing.assert_allclose(
        gm.log_prob(z).numpy(), base.log_prob(z.float()).double().numpy(), atol=1e-4
    )
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    transform = json.loads(meta["mixture_density.target_transform"])
    assert transform == est.target_transform_ and transform[0]["map"] == "log_lower"
    assert json.loads(meta["mixture_density.calibration"]) == est.calibrator_.to_config()


def test_covariance_tril_against_torch_linalg() -> None:
    """The unrolled forward substitution and Cholesky equal torch.linalg's, float64."""
    g = torch.Generator().manual_seed(0)
    for D in (1, 2, 5):
        P = torch.randn(4, 3, D, D, generator=g, dtype=torch.float64).tril(-1)
        P = P + torch.diag_embed(torch.rand(4, 3, D, generator=g, dtype=torch.float64) + 0.5)
        expected = torch.linalg.cholesky(torch.cholesky_inverse(P))
        torch.testing.assert_close(covariance_tril(P), expected, rtol=1e-10, atol=1e-12)


def test_unfitted_estimator_raises_not_fitted(tmp_path: Path) -> None:
    with pytest.raises(sklearn_exceptions.NotFittedError):
        MDNRegressor().to_onnx(tmp_path / "m.onnx")
    assert not any(tmp_path.iterdir())


def _fitted_model_file(tmp_path: Path) -> Path:
    X, Y = _data(1, n=120)
    est = MDNRegressor(n_components=2, hidden_dims=(8,), n_estimators=2, epochs=3, random_state=0)
    path = tmp_path / "model.pt"
    est.fit(X, Y[:, 0]).save(path, metadata={"features": ["a", "b", "c"], "targets": ["y"]})
    return path


def test_cli_export(tmp_path: Path, capsys: Any) -> None:
    model = _fitted_model_file(tmp_path)
    out = tmp_path / "model.onnx"
    assert main(["export", str(model), str(out)]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    assert captured.out.count("\n") == 1 and f"wrote {out}" in captured.out
    meta = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
    assert json.loads(meta["mixture_density.features"]) == ["a", "b", "c"]
    X, Y = _data(1, n=9, seed=3)
    est = MDNRegressor.load(model)
    t = {k: torch.as_tensor(v, dtype=torch.float64) for k, v in _run(out, X).items()}
    lp = GaussianMixture(t["logits"], t["loc"], scale=t["scale"]).log_prob(
        torch.as_tensor(Y, dtype=torch.float64)
    )
    np.testing.assert_allclose(lp.numpy(), est.log_prob(X, Y[:, 0]), atol=1e-4)


@pytest.mark.parametrize("case", ["missing", "foreign", "suffix", "directory"])
def test_cli_export_errors_are_one_line_and_leave_no_file(
    tmp_path: Path, capsys: Any, case: str
) -> None:
    out = tmp_path / "out.onnx"
    model = tmp_path / "model.pt"
    if case == "foreign":
        torch.save({"weights": torch.zeros(3)}, model)
    elif case in ("suffix", "directory"):
        model = _fitted_model_file(tmp_path)
        out = tmp_path / ("out.pt" if case == "suffix" else "no/such/dir/out.onnx")
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["export", str(model), str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mdn: error: ") and err.count("\n") == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    expected = {
        "missing": "model.pt",
        "foreign": "model.pt",
        "suffix": "must end in .onnx",
        "directory": "does not exist",
    }[case]
    assert expected in err


def test_exported_module_is_the_estimators_distribution() -> None:
    """Before any ONNX: the graph's module gives predict_distribution's tensors."""
    X, Y = _data(2, n=150)
    est = MDNRegressor(
        n_components=2, hidden_dims=(8,), noise_type="full", n_estimators=2, epochs=3,
        random_state=0,
    ).fit(X, Y)  # fmt: skip
    module = MixtureOutputs(MixtureParameters(est)).eval()
    with torch.no_grad():
        logits, loc, tril = module(torch.as_tensor(X[:20], dtype=torch.float32))
    ref = est.predict_distribution(X[:20])
    torch.testing.assert_close(logits, ref.logits, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loc, ref.loc, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(tril, ref.scale_tril, rtol=1e-4, atol=1e-4)


def test_cli_export_without_the_extra_is_one_line(
    tmp_path: Path, capsys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = _fitted_model_file(tmp_path)
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    assert main(["export", str(model), str(tmp_path / "out.onnx")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "pip install 'mixture-density[onnx]'" in err
    assert not (tmp_path / "out.onnx").exists()
