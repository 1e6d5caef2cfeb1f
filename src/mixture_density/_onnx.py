"""ONNX export machinery (private): :func:`mixture_density.export.to_onnx`,
``MDNRegressor.to_onnx`` and ``mdn export`` all write through :func:`write_onnx`.

A ``torch.distributions`` object cannot cross into ONNX, so the exported graph is
:class:`MixtureOutputs`: the module wrapped so that ``forward(x)`` returns the parameters of
the ``GaussianMixture`` it produced, as tensors:

* ``logits (*batch, K)``: normalized log-weights (``logsumexp`` over ``K`` is 0);
* ``loc (*batch, K, D)``: component means;
* ``scale (*batch, K, D)``: per-dimension standard deviations, for mixtures parameterized by
  ``scale`` (diagonal, isotropic, shared and fixed noise), or
* ``scale_tril (*batch, K, D, D)``: the lower Cholesky factor of each covariance, for
  ``scale_tril`` and ``precision_tril`` mixtures (full covariance).

The network's full-covariance head produces precision factors ``P`` (``Sigma^-1 = P P^T``).
ONNX has no Cholesky or triangular-solve operator, so the graph computes ``P^-1`` by forward
substitution and the Cholesky factor of ``Sigma = P^-T P^-1`` entry by entry, both unrolled
over ``D`` (small), in float64 inside the graph. The batch axis is dynamic.

For an estimator, :class:`MixtureParameters` is the module: its networks on standardized
inputs, the members' mixtures concatenated (``K' = M * K``, each weight divided by ``M``) and
mapped to the original units of ``y`` by ``GaussianMixture.affine``, as
``predict_distribution`` does.

Needs the optional packages ``onnx`` and ``onnxscript`` (torch's exporter), extra ``onnx``.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import logging
import os
import warnings
from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor, nn

from . import __version__
from ._files import atomic_path
from .distribution import GaussianMixture
from .nn import MixtureDensityNetwork
from .noise import NoiseType

__all__ = [
    "MixtureOutputs",
    "MixtureParameters",
    "covariance_tril",
    "export_estimator",
    "output_names",
    "write_onnx",
]


def output_names(parameterization: str) -> tuple[str, str, str]:
    """``("logits", "loc", "scale")`` for a ``scale`` mixture, else ``("logits", "loc",
    "scale_tril")`` (``scale_tril`` and ``precision_tril`` mixtures)."""
    return "logits", "loc", "scale" if parameterization == "scale" else "scale_tril"


def mixture_of(output: Any, module: nn.Module) -> GaussianMixture:
    """The ``GaussianMixture`` a module returned: the output itself, or the first element of a
    tuple (``MixtureDensityRNN`` returns ``(mixture, state)``)."""
    first = output[0] if isinstance(output, tuple) and output else output
    if not isinstance(first, GaussianMixture):
        raise TypeError(
            f"module ({type(module).__name__}) must return a GaussianMixture, or a tuple whose "
            f"first element is one; got {type(output).__name__}"
            + (f" starting with {type(first).__name__}" if first is not output else "")
            + "."
        )
    return first


class MixtureOutputs(nn.Module):
    """``module`` with its ``GaussianMixture`` output replaced by the mixture's parameters.

    Args:
        module: ``forward(x)`` returns a ``GaussianMixture`` (or a tuple starting with one).

    Example:
        >>> net = MixtureDensityNetwork(2, 3, 4, hidden_dims=(8,), noise_type="full")
        >>> [t.shape for t in MixtureOutputs(net)(torch.zeros(5, 2))]
        [torch.Size([5, 4]), torch.Size([5, 4, 3]), torch.Size([5, 4, 3, 3])]
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``x`` -> ``logits (*B, K)``, ``loc (*B, K, D)`` and ``scale (*B, K, D)`` or
        ``scale_tril (*B, K, D, D)``."""
        mixture = mixture_of(self.module(x), self.module)
        if mixture.parameterization == "scale":
            scale = mixture.scale
            assert scale is not None  # a scale mixture has one
            spread = scale.expand(mixture.loc.shape)  # isotropic / shared: broadcast
        elif mixture.parameterization == "scale_tril":
            spread = mixture.scale_tril
        else:  # precision_tril: no Cholesky or triangular solve in ONNX
            spread = covariance_tril(mixture.precision_tril)
        return mixture.logits, mixture.loc, spread


class MixtureParameters(nn.Module):
    """A fitted estimator's networks as one module returning its mixture in original units.

    ``forward(x)`` on ``x (batch, n_features)`` in the original units returns the
    mixture over the modelled target of ``MDNRegressor.predict_distribution``: the networks
    on the standardized inputs, the members concatenated with their ``member_weights_``
    (``K'`` = the members' components together), ``affine`` to the original units of ``y``
    (of ``g(y)`` for bounded targets: the transform is the metadata's, not in the graph).

    Args:
        est: a fitted ``MDNRegressor``; its networks are copied (float32, CPU, eval mode).

    Example:
        >>> import numpy as np
        >>> from mixture_density import MDNRegressor
        >>> X = np.random.default_rng(0).normal(size=(64, 2)); y = X[:, 0] + 1.0
        >>> est = MDNRegressor(n_components=2, hidden_dims=(8,), n_estimators=2, epochs=2,
        ...                    random_state=0).fit(X, y)
        >>> MixtureParameters(est)(torch.zeros(3, 2)).loc.shape
        torch.Size([3, 4, 1])
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
        self.weights = tuple(float(w) for w in est.member_weights_)
        for name in ("x_mean", "x_scale", "y_mean", "y_scale"):
            value = torch.as_tensor(getattr(est, f"{name}_"), dtype=torch.float32)
            self.register_buffer(name, value.clone())

    def forward(self, x: Tensor) -> GaussianMixture:
        """``x (batch, n_features)`` -> the mixture of batch ``(batch,)`` in original units."""
        xs = (x - self.x_mean) / self.x_scale
        members = [net(xs) for net in self._nets]
        mixture = GaussianMixture.cat(members, "components", self.weights)
        return mixture.affine(self.y_scale, self.y_mean)


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


def _target_transform(est: Any) -> Any:
    """The per-output transform between the exported mixture and ``y`` (JSON-able).

    The outputs describe the mixture of ``g(y)``, the target the networks model, in its own
    units (the standardization ``shift``/``scale`` is already folded in): per output the map
    ``g`` (``identity``, ``log_lower``, ``log_upper``, ``logit``) with its bounds and the grid
    (``resolution``, ``origin``), as ``MDNRegressor.target_transform_`` records them.
    """
    return [dict(t) for t in est.target_transform_]


def _calibration(est: Any) -> Any:
    """The PIT recalibration of a calibrated estimator (its knots), or None: not in the graph."""
    calibrator = getattr(est, "calibrator_", None)
    return None if calibrator is None else calibrator.to_config()


def estimator_metadata(est: Any) -> dict[str, Any]:
    """What a consumer of an estimator's file needs: noise model, sizes, column names."""
    features = getattr(est, "feature_names_in_", None)
    meta = getattr(est, "metadata_", {}) or {}
    if features is None:
        features = meta.get("features")
    return {
        "kind": "MDNRegressor",
        "noise_type": NoiseType.parse(est.noise_type).value,
        "n_estimators": len(est.models_),
        "n_features": int(est.n_features_in_),
        "n_outputs": int(est.n_outputs_),
        "features": None if features is None else [str(f) for f in features],
        "targets": meta.get("targets"),
        "target_transform": _target_transform(est),
        "calibration": _calibration(est),
    }


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """torch's exporter prints progress, logs warnings about optional packages (torchvision)
    and triggers deprecation warnings of torch's own code (pytree, size checks), none of which
    concern this graph: keep the command's output to its line."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*LeafSpec", category=FutureWarning)
            warnings.filterwarnings("ignore", message=r"_check_is_size", category=FutureWarning)
            # nn.LSTM/GRU re-point their flat weight list while traced: same parameters.
            warnings.filterwarnings("ignore", message=r".*were assigned during export")
            yield
    finally:
        logger.setLevel(level)


def _require_onnx() -> Any:
    try:
        import onnx
        import onnxscript  # noqa: F401  (torch's exporter needs it)
    except ImportError as err:
        raise ModuleNotFoundError(
            f"ONNX export needs onnx and onnxscript ({err.name} is missing): "
            "pip install 'mixture-density[onnx]'",
            name=err.name,
        ) from err
    return onnx


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """``module`` in eval mode (dropout off, batch norm frozen), its mode restored after."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def write_onnx(
    module: nn.Module,
    path: str | os.PathLike[str],
    example: Tensor,
    *,
    metadata: dict[str, Any] | None = None,
    opset: int | None = None,
) -> None:
    """Traces ``MixtureOutputs(module)`` on ``example`` and writes it to ``path`` atomically.

    Input ``x`` (the example's shape and dtype, axis 0 dynamic, named ``batch``); outputs
    ``logits, loc, scale | scale_tril``; ``metadata_props`` hold the producer, the output
    names, ``n_components``, ``dim_out`` and the entries of ``metadata`` (JSON values under
    ``mixture_density.<key>``).
    """
    onnx = _require_onnx()
    with _eval_mode(module), torch.no_grad():
        wrapped = MixtureOutputs(module).eval()
        mixture = mixture_of(module(example), module)  # the eager run names the outputs
        names = output_names(mixture.parameterization)
        with _quiet_exporter():
            program = torch.onnx.export(
                wrapped,
                (example,),
                dynamo=True,
                input_names=["x"],
                output_names=list(names),
                dynamic_shapes={"x": {0: torch.export.Dim("batch")}},
                opset_version=opset,
                verbose=False,
            )
    if program is None:  # pragma: no cover - the dynamo exporter returns its program
        raise RuntimeError("torch.onnx.export returned no program")
    model = program.model_proto
    K, D = mixture.n_components, mixture.event_shape[0]
    model.doc_string = (
        "mixture-density: p(y | x) = sum_k exp(logits_k) N(y | loc_k, Sigma_k), outputs "
        f"{', '.join(names)}"
    )
    info: dict[str, Any] = {
        "producer": "mixture-density",
        "library_version": __version__,
        "kind": type(module).__name__,
        "inputs": "x",
        "outputs": list(names),
        "n_components": K,
        "dim_out": D,
        **(metadata or {}),
    }
    for key, value in info.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = f"mixture_density.{key}", json.dumps(value)
    onnx.checker.check_model(model)
    with atomic_path(path) as tmp:
        onnx.save(model, os.fspath(tmp))


def export_estimator(est: Any, path: str | os.PathLike[str], opset: int | None = None) -> None:
    """Writes ``est`` (fitted) as an ONNX graph to ``path``, atomically.

    Input ``x (batch, n_features)`` float32 in original units; outputs as in the module
    docstring, in the original units of ``y``; the metadata (``metadata_props``) name the
    outputs, the noise model, sizes, column names and the target transform.
    """
    _require_onnx()  # before copying the networks
    example = torch.zeros(2, int(est.n_features_in_), dtype=torch.float32)
    write_onnx(MixtureParameters(est), path, example, metadata=estimator_metadata(est), opset=opset)
