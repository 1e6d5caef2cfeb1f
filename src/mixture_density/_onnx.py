"""ONNX export of a fitted ``MDNRegressor`` (private; ``MDNRegressor.to_onnx``, ``mdn export``).

A ``torch.distributions`` object cannot cross into ONNX, so the exported graph is
:class:`MixtureParameters`: a module whose ``forward(x)`` returns the mixture's parameters
as tensors, in the original units of ``x`` and ``y`` (the estimator's standardization is
folded in) and with the ensemble's members concatenated into one mixture of ``K' = M * K``
components (each member's log-weights minus ``log M``):

* ``logits (batch, K')``: normalized log-weights (``logsumexp`` over ``K'`` is 0);
* ``loc (batch, K', D)``: component means;
* ``scale (batch, K', D)``: per-dimension standard deviations (``diagonal``, ``isotropic``,
  ``isotropic_across_clusters`` and ``fixed``: the isotropic ones become per-dimension here
  because each output has its own standardization scale), or
* ``scale_tril (batch, K', D, D)``: the lower Cholesky factor of each covariance (``full``).

The network's full-covariance head produces precision factors ``P`` (``Sigma^-1 = P P^T``).
ONNX has no Cholesky or triangular-solve operator, so the graph computes ``P^-1`` by forward
substitution and the Cholesky factor of ``Sigma = P^-T P^-1`` column by column, both unrolled
over ``D`` (small), in float64 inside the graph. The batch axis is dynamic.

Needs the optional packages ``onnx`` and ``onnxscript`` (torch's exporter), extra ``onnx``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import math
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from . import __version__
from ._files import atomic_path
from .nn import MixtureDensityNetwork
from .noise import HeadLayout, NoiseType, scale_parameters

__all__ = ["MixtureParameters", "export_estimator", "output_names"]

#: Metadata key for a transform of the target (bounds, resolution); see
#: :func:`_target_transform`.
TARGET_TRANSFORM_KEY = "mixture_density.target_transform"


def output_names(noise_type: NoiseType | str) -> tuple[str, str, str]:
    """``("logits", "loc", "scale_tril")`` for ``full``, else ``("logits", "loc", "scale")``."""
    full = NoiseType.parse(noise_type) is NoiseType.FULL
    return "logits", "loc", "scale_tril" if full else "scale"


class MixtureParameters(nn.Module):
    """A fitted estimator's networks as one module returning the mixture's parameters.

    Args:
        est: a fitted ``MDNRegressor``; its networks are copied (float32, CPU, eval mode).

    Example:
        >>> import numpy as np
        >>> from mixture_density import MDNRegressor
        >>> X = np.random.default_rng(0).normal(size=(64, 2)); y = X[:, 0] + 1.0
        >>> est = MDNRegressor(n_components=2, hidden_dims=(8,), n_estimators=2, epochs=2,
        ...                    random_state=0).fit(X, y)
        >>> logits, loc, scale = MixtureParameters(est)(torch.zeros(3, 2))
        >>> logits.shape, loc.shape, scale.shape
        (torch.Size([3, 4]), torch.Size([3, 4, 1]), torch.Size([3, 4, 1]))
    """

    x_mean: Tensor
    x_scale: Tensor
    y_mean: Tensor
    y_scale: Tensor

    def __init__(self, est: Any) -> None:
        super().__init__()
        members: list[MixtureDensityNetwork] = [
            copy.deepcopy(m).to(device="cpu", dtype=torch.float32).eval() for m in est.models_
        ]
        self.members = nn.ModuleList(members)
        self._nets = tuple(members)  # the same modules, typed
        head = members[0].head
        self.layout: HeadLayout = head.layout
        self.min_scale: float = head.min_scale
        self.noise_type: NoiseType = head.noise_type
        self.log_members = math.log(len(members))
        for name in ("x_mean", "x_scale", "y_mean", "y_scale"):
            value = torch.as_tensor(getattr(est, f"{name}_"), dtype=torch.float32)
            self.register_buffer(name, value.clone())

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x (batch, n_features)`` float32 -> ``logits (batch, K')``, ``loc (batch, K',
        D)`` and ``scale (batch, K', D)`` or ``scale_tril (batch, K', D, D)``."""
        xs = (x - self.x_mean) / self.x_scale
        logits_, locs, scales = [], [], []
        for member in self._nets:
            raw = member.head.linear(member.backbone(xs))  # (B, n_outputs)
            logits, loc, scale_raw = self.layout.split(raw)  # (B, K), (B, K, D), (B, S)
            logits_.append(torch.log_softmax(logits, -1) - self.log_members)
            locs.append(loc * self.y_scale + self.y_mean)
            params = scale_parameters(
                self.noise_type,
                scale_raw.contiguous(),
                self.layout.n_components,
                self.layout.dim_out,
                self.min_scale,
                fixed_scale=member.head.fixed_scale,
            )
            if self.noise_type is NoiseType.FULL:
                tril = covariance_tril(params["precision_tril"])  # (B, K, D, D)
                scales.append(self.y_scale.unsqueeze(-1) * tril)  # diag(s) L
            else:
                scale = params["scale"].expand(*loc.shape)  # (B, K, D)
                scales.append(scale * self.y_scale)
        return torch.cat(logits_, 1), torch.cat(locs, 1), torch.cat(scales, 1)  # along K


def covariance_tril(precision_tril: Tensor) -> Tensor:
    """Lower Cholesky factor of ``Sigma = (P P^T)^-1`` with elementwise ops that ONNX has.

    Entry by entry: forward substitution gives ``Q = P^-1``, ``Sigma = Q^T Q``, then the
    Cholesky-Banachiewicz recursion; every quantity is one tensor of shape ``(...)``, so the
    traced graph is O(D^3) elementwise nodes over contiguous batches (fast for the small
    ``D`` of a mixture's output: for D = 3 five times faster than batched 3x3 matrix products
    and stacks, and twice as fast as torch.linalg.cholesky(cholesky_inverse(P))). Computed in
    float64, returned in the input's dtype.

    Args:
        precision_tril: ``(..., D, D)`` lower triangular with a positive diagonal.

    Returns:
        ``(..., D, D)`` lower triangular ``L`` with ``L L^T = Sigma``.

    Example:
        >>> P = torch.tensor([[2.0, 0.0], [1.0, 4.0]])
        >>> L = covariance_tril(P)
        >>> torch.allclose(L @ L.T, torch.linalg.inv(P @ P.T))
        True
    """
    P = precision_tril.to(torch.float64)
    D = P.shape[-1]
    p = [[P[..., i, j] for j in range(i + 1)] for i in range(D)]  # p[i][j], j <= i
    q: list[list[Tensor]] = []  # Q = P^-1, lower: row i solves sum_k P_ik Q_kj = delta_ij
    for i in range(D):
        inv = 1.0 / p[i][i]
        row = []
        for j in range(i):
            acc = p[i][j] * q[j][j]
            for k in range(j + 1, i):
                acc = acc + p[i][k] * q[k][j]
            row.append(-acc * inv)
        q.append([*row, inv])
    # Sigma_ij = sum_{k >= i} Q_ki Q_kj for j <= i (Q is lower, so Q_ki = 0 for k < i).
    sigma = [
        [sum_terms([q[k][i] * q[k][j] for k in range(i, D)]) for j in range(i + 1)]
        for i in range(D)
    ]
    L: list[list[Tensor]] = []
    for i in range(D):
        row = []
        for j in range(i + 1):
            acc = sigma[i][j]
            for k in range(j):
                acc = acc - row[k] * L[j][k] if j < i else acc - row[k] * row[k]
            row.append(acc.sqrt() if j == i else acc / L[j][j])
        L.append(row)
    zero = torch.zeros_like(p[0][0])
    rows = [torch.stack([*L[i], *([zero] * (D - i - 1))], -1) for i in range(D)]
    return torch.stack(rows, -2).to(precision_tril.dtype)


def sum_terms(terms: list[Tensor]) -> Tensor:
    """The sum of a non-empty list of tensors (``sum()`` would start from the int 0)."""
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _target_transform(est: Any) -> str | None:
    """JSON of the transform between the modelled and the observed target, or None.

    MERGE(target types): the outputs describe the mixture of the standardized target path
    the estimator models. When the estimator gains target transforms (bounds, resolution,
    censoring; ``_targets``), record the transform here (its kind and parameters, as the model
    file records it) so that a consumer of the ONNX file can map the mixture to ``y``.
    """
    transform = getattr(est, "target_transform_", None)
    return None if transform is None else json.dumps(transform)


def _metadata(est: Any, names: tuple[str, str, str]) -> dict[str, str]:
    features = getattr(est, "feature_names_in_", None)
    meta = getattr(est, "metadata_", {}) or {}
    if features is None:
        features = meta.get("features")
    info: dict[str, Any] = {
        "producer": "mixture-density",
        "library_version": __version__,
        "kind": "MDNRegressor",
        "noise_type": NoiseType.parse(est.noise_type).value,
        "n_components": int(est.n_components) * len(est.models_),
        "n_estimators": len(est.models_),
        "n_features": int(est.n_features_in_),
        "n_outputs": int(est.n_outputs_),
        "inputs": "x",
        "outputs": list(names),
        "features": None if features is None else [str(f) for f in features],
        "targets": meta.get("targets"),
    }
    props = {f"mixture_density.{k}": json.dumps(v) for k, v in info.items()}
    transform = _target_transform(est)
    props[TARGET_TRANSFORM_KEY] = "null" if transform is None else transform
    return props


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch's exporter prints progress, logs warnings about optional packages (torchvision)
    and triggers a deprecation warning of torch's own pytree code, none of which concern this
    graph: keep the command's output to its line."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
            yield
    finally:
        logger.setLevel(level)


def export_estimator(est: Any, path: str | os.PathLike[str], opset: int | None = None) -> None:
    """Writes ``est`` (fitted) as an ONNX graph to ``path``, atomically.

    Input ``x (batch, n_features)`` float32; outputs as in the module docstring; the
    metadata (``metadata_props``) name the outputs, the noise model, sizes, column names and
    the target transform.
    """
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError as err:
        raise ModuleNotFoundError(
            f"ONNX export needs onnx and onnxscript ({err.name} is missing): "
            "pip install 'mixture-density[onnx]'",
            name=err.name,
        ) from err
    module = MixtureParameters(est).eval()
    names = output_names(est.noise_type)
    example = torch.zeros(2, int(est.n_features_in_), dtype=torch.float32)
    batch = torch.export.Dim("batch")
    with _quiet_exporter(), torch.no_grad():
        program = torch.onnx.export(
            module,
            (example,),
            dynamo=True,
            input_names=["x"],
            output_names=list(names),
            dynamic_shapes={"x": {0: batch}},
            opset_version=opset,
            verbose=False,
        )
    if program is None:  # pragma: no cover - the dynamo exporter returns its program
        raise RuntimeError("torch.onnx.export returned no program")
    model = program.model_proto
    model.doc_string = (
        "mixture-density MDNRegressor: p(y | x) = sum_k exp(logits_k) N(y | loc_k, Sigma_k), "
        f"outputs {', '.join(names)}; in the original units of x and y"
    )
    for key, value in _metadata(est, names).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, os.fspath(tmp))
