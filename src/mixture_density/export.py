"""Export to ONNX: any module whose ``forward`` returns a ``GaussianMixture``.

``torch.distributions`` objects cannot be scripted or exported, and a mixture is what these
modules return; :func:`to_onnx` writes a graph whose outputs are the mixture's parameters,
from which ``GaussianMixture(logits, loc, scale=scale)`` (or ``scale_tril=``) rebuilds it in
any runtime. ``MDNRegressor.to_onnx`` and ``mdn export`` write the same outputs for a fitted
estimator, in the original units of its data.

Needs the extra ``onnx`` (onnx, onnxscript; onnxruntime to run the file), imported only when
:func:`to_onnx` is called.
"""

from __future__ import annotations

import os

from torch import Tensor, nn

from ._onnx import write_onnx

__all__ = ["to_onnx"]


def to_onnx(
    module: nn.Module,
    path: str | os.PathLike[str],
    example_input: Tensor,
    *,
    opset: int | None = None,
) -> None:
    """Writes ``module`` as an ONNX graph from its input to its mixture's parameters.

    The graph has one input ``x``, of the example's shape and dtype, and three outputs:

    * ``logits (*batch, K)``: normalized log-weights;
    * ``loc (*batch, K, D)``: component means;
    * ``scale (*batch, K, D)``: per-dimension standard deviations, for mixtures parameterized
      by ``scale`` (diagonal, isotropic and fixed noise), or ``scale_tril (*batch, K, D, D)``:
      lower Cholesky factors of the covariances, for ``scale_tril`` and ``precision_tril``
      mixtures (full covariance).

    ``*batch`` is the mixture's batch shape (``(N,)`` for a ``MixtureDensityNetwork``,
    ``(N, T)`` for a ``MixtureDensityRNN``). The batch axis ``N`` (axis 0 of ``x``) is
    dynamic; every other axis keeps the example's size (a ``MixtureDensityRNN``'s graph reads
    sequences of the example's length ``T``). The module runs in eval mode during the export
    (its mode is restored after); value checks of the distribution (``validate_args``) are
    not part of the graph. The file's ``metadata_props`` hold the output names, ``K``, ``D``
    and the module's class name (JSON values under ``mixture_density.*``). Written
    atomically: a temporary file in the destination's folder, renamed when complete.

    Args:
        module: ``forward(x)`` returns a ``GaussianMixture``, or a tuple whose first element
            is one (``MixtureDensityRNN``: ``(mixture, state)``; the state is not exported).
        path: destination, e.g. ``"model.onnx"``.
        example_input: a tensor ``forward`` accepts, ``(N, ...)`` with ``N >= 2`` (torch's
            exporter fixes an axis of size 1); it fixes the input's rank, dtype and the sizes
            of its axes after the first.
        opset: ONNX opset version (default: the exporter's).

    Raises:
        TypeError: ``module`` is not an ``nn.Module``, ``example_input`` not a tensor, or the
            module does not return a ``GaussianMixture``.
        ValueError: ``example_input`` without an axis 0 of size >= 2.
        ModuleNotFoundError: onnx or onnxscript is not installed.

    Example:
        >>> import tempfile, pathlib, torch
        >>> from mixture_density import MixtureDensityNetwork
        >>> net = MixtureDensityNetwork(3, 2, 4, hidden_dims=(16,))
        >>> with tempfile.TemporaryDirectory() as tmp:
        ...     path = pathlib.Path(tmp) / "net.onnx"
        ...     to_onnx(net, path, torch.zeros(8, 3))
        ...     print(path.stat().st_size > 0)
        True
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be a torch.nn.Module, got {type(module).__name__}.")
    if not isinstance(example_input, Tensor):
        raise TypeError(
            f"example_input must be a torch.Tensor, got {type(example_input).__name__}."
        )
    if example_input.dim() == 0 or example_input.shape[0] < 2:
        raise ValueError(
            "example_input must have shape (N, ...) with N >= 2 rows (the exporter would fix "
            f"a batch axis of size 1), got {tuple(example_input.shape)}."
        )
    write_onnx(module, path, example_input, opset=opset)
