"""Mixture density head and network: modules whose ``forward`` returns a ``GaussianMixture``.

``MixtureDensityHead`` maps features ``h (*batch, in_features)`` to a mixture of ``K``
Gaussians over ``D`` outputs through a single ``nn.Linear``; ``MixtureDensityNetwork`` puts an
MLP in front of it. Training is ``model.loss(x, y).mean().backward()``, i.e. the negative
log-likelihood ``-model(x).log_prob(y)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mixture_density._activations import resolve_activation
from mixture_density._kmeans import kmeans
from mixture_density._validation import exporting
from mixture_density.distribution import GaussianMixture
from mixture_density.noise import (
    HeadLayout,
    NoiseType,
    inverse_bounded_scale,
    inverse_precision_diagonal,
    precision_diagonal,
)

__all__ = ["MixtureDensityHead", "MixtureDensityNetwork"]

# initialize(): the within-cluster variance of every output gets (this * its overall standard
# deviation)^2 added, so that a cluster of one point, or of repeated values, does not start
# with zero width (and a singular covariance for the full noise model).
_INIT_RELATIVE_SPREAD_FLOOR = 1e-3

# forward() of the non-full noise models: at most this many feature numbers (batch x
# in_features) go through one GEMM whose output is sliced; larger batches use one GEMM per
# output block, whose contiguous outputs the elementwise kernels need (see forward).
_ONE_GEMM_MAX_INPUTS = 2**16


class MixtureDensityHead(nn.Module):
    """Linear map from features to the parameters of a Gaussian mixture.

    One ``nn.Linear(in_features, K + K * D + S)`` produces, per input, ``K`` mixture logits,
    ``K * D`` component means and ``S = n_scale_outputs(noise_type, K, D)`` raw scale numbers,
    laid out as :class:`~mixture_density.noise.HeadLayout` describes and turned into standard
    deviations (or a precision Cholesky factor for ``noise_type="full"``) by
    :mod:`mixture_density.noise`, with the floor ``min_scale``.

    At construction the mixture weights are uniform (zero logit weights and bias), every
    component has unit standard deviation whatever the input (zero scale weights, bias with
    ``softplus(b) + min_scale = 1``) and the component means are spread by a standard-normal
    bias, which suits standardized targets. :meth:`initialize` adapts all of this to the data.

    Args:
        in_features: size of the last axis of the features ``h``.
        dim_out: output dimension ``D``.
        n_components: number of mixture components ``K``.
        noise_type: a :class:`~mixture_density.noise.NoiseType` or its name.
        fixed_noise_level: the constant standard deviation for ``noise_type="fixed"``
            (required there, refused for other noise types).
        min_scale: floor of every learned standard deviation, in the units of the targets.

    Attributes:
        linear: the ``nn.Linear`` producing all raw outputs.
        layout: the :class:`~mixture_density.noise.HeadLayout` of those outputs.
        fixed_scale: 0-d buffer holding ``fixed_noise_level`` (``None`` unless fixed), so
            that it follows ``.to(dtype/device)`` and is saved in ``state_dict``.

    Example:
        >>> head = MixtureDensityHead(16, dim_out=2, n_components=3)
        >>> mixture = head(torch.randn(8, 16))
        >>> mixture.batch_shape, mixture.event_shape
        (torch.Size([8]), torch.Size([2]))
        >>> mixture.log_prob(torch.randn(8, 2)).shape
        torch.Size([8])
    """

    fixed_scale: Tensor | None

    def __init__(
        self,
        in_features: int,
        dim_out: int,
        n_components: int,
        noise_type: NoiseType | str = NoiseType.DIAGONAL,
        fixed_noise_level: float | None = None,
        min_scale: float = 1e-3,
    ) -> None:
        super().__init__()
        self.in_features = _check_int("in_features", in_features)
        self.dim_out = _check_int("dim_out", dim_out)
        self.n_components = _check_int("n_components", n_components)
        self.noise_type = NoiseType.parse(noise_type)
        self.min_scale = _check_positive_float("min_scale", min_scale)
        self.fixed_noise_level = _check_fixed_noise_level(fixed_noise_level, self.noise_type)

        self.layout = HeadLayout(self.noise_type, self.n_components, self.dim_out)
        self.n_scale_outputs = self.layout.n_scale
        self.linear = nn.Linear(self.in_features, self.layout.n_outputs)
        if self.fixed_noise_level is None:
            self.register_buffer("fixed_scale", None)
        else:
            # float64 keeps the user's value exact after a later `.double()`; forward casts it
            # to the dtype of the head's outputs.
            self.register_buffer(
                "fixed_scale", torch.tensor(self.fixed_noise_level, dtype=torch.float64)
            )
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Uniform weights, unit scales, spread means (see the class docstring)."""
        self.linear.reset_parameters()
        # The mean weights keep nn.Linear's default (Kaiming-uniform) initialization.
        weight_logits, _, weight_scale = self.layout.split(self.linear.weight, dim=0)
        bias_logits, bias_loc, bias_scale = self.layout.split(self.linear.bias)
        weight_logits.zero_()
        bias_logits.zero_()
        bias_loc.normal_()
        weight_scale.zero_()
        # A CPU scalar whatever the default device, so that a head built on the "meta" device
        # (shapes only, no memory: how a model file's shapes are checked) can read it.
        one = torch.ones((), device="cpu")
        if self.noise_type is NoiseType.FULL:
            diagonal, off_diagonal = self.layout.split_packed(bias_scale)  # P_ii = 1, P_ij = 0
            diagonal.fill_(inverse_precision_diagonal(one, self.min_scale).item())
            off_diagonal.zero_()
        else:
            bias_scale.fill_(inverse_bounded_scale(one, self.min_scale).item())

    def forward(self, h: Tensor) -> GaussianMixture:
        """Mixture for each row of features.

        Args:
            h: ``(*batch, in_features)``.

        Returns:
            ``GaussianMixture`` with ``batch_shape = (*batch)``, ``event_shape = (D,)``.

        Raises:
            ValueError: if the last axis of ``h`` is not ``in_features``.
        """
        if h.dim() == 0 or h.shape[-1] != self.in_features:
            raise ValueError(
                f"h must have shape (*batch, in_features={self.in_features}), got {tuple(h.shape)}."
            )
        layout = self.layout
        # One GEMM per block of rows of the single weight matrix, rather than one GEMM and
        # slices of its output: every block comes out contiguous, which the elementwise
        # kernels downstream need (softplus on a strided slice is much slower on the CPU),
        # and the backward does not zero-fill the whole output once per slice.
        weight, bias = self.linear.weight, self.linear.bias  # (K + K D + S, H), (K + K D + S,)
        # A traced graph (ONNX export) must hold for every batch size: one path, no guard on it.
        one_gemm = exporting() or h.numel() <= _ONE_GEMM_MAX_INPUTS
        if self.noise_type is NoiseType.FULL and self.dim_out > 1 and not one_gemm:
            return self._full_mixture(h, weight, bias)
        if one_gemm:
            # Small batches: kernel and autograd-node count dominate, so one GEMM and views
            # (one split: its backward is one concatenation).
            logits, loc, scale_raw = layout.split(F.linear(h, weight, bias))
            # softplus on a strided view is slower than a copy plus softplus.
            scale_raw = scale_raw.contiguous()  # (*batch, S)
        else:
            rows = layout.logits_rows
            logits = F.linear(h, weight[rows], bias[rows])  # (*batch, K)
            rows = layout.loc_rows
            loc = F.linear(h, weight[rows], bias[rows])  # (*batch, K D)
            loc = loc.unflatten(-1, (self.n_components, self.dim_out))  # (*batch, K, D)
            # FIXED has no scale rows: the empty (*batch, 0) output only carries the batch
            # shape, dtype and device.
            rows = layout.scale_rows
            scale_raw = F.linear(h, weight[rows], bias[rows])  # (*batch, S)
        # Full covariance here: small batches, or D == 1 (the packed factor is its diagonal).
        return layout.mixture(
            logits, loc, scale_raw, min_scale=self.min_scale, fixed_scale=self.fixed_scale
        )

    def _full_mixture(self, h: Tensor, weight: Tensor, bias: Tensor) -> GaussianMixture:
        """Full-covariance mixture with packed precision factors, laid out batch-last.

        The means and the packed factor entries come from GEMMs computed transposed,
        ``W @ h^T``: (outputs, N) with the flattened batch innermost. That is the layout the
        packed log-density kernel works in (long contiguous rows), so it needs no copy, and
        the gradients flow back into the GEMMs without one either.
        """
        K, D, H = self.n_components, self.dim_out, self.in_features
        layout = self.layout
        batch = h.shape[:-1]
        h2 = h.reshape(-1, H)  # (N, H)
        n = h2.shape[0]
        # The bias rides along as one more weight column against a row of ones: the GEMM
        # adds it without a separate pass over its (large) output, and the weight-gradient
        # GEMM returns its gradient.
        h_aug = torch.cat([h2, h2.new_ones(n, 1)], 1).T  # (H + 1, N), a transposed view
        rows = layout.logits_rows
        logits = F.linear(h, weight[rows], bias[rows])  # (*batch, K)

        def rows_t(w: Tensor, b: Tensor) -> Tensor:
            # (K * E, N) = [W | b] @ [h^T; 1]
            return torch.cat([w, b.unsqueeze(-1)], 1) @ h_aug

        def batch_first(t: Tensor, per_component: int) -> Tensor:
            # (K * E, N) -> (*batch, K, E), a view (N is split back into the batch dims).
            return t.view(K, per_component, n).permute(2, 0, 1).reshape(*batch, K, per_component)

        rows = layout.loc_rows
        loc = batch_first(rows_t(weight[rows], bias[rows]), D)
        # Scale rows by kind (HeadLayout.split_packed): diagonal rows, strictly-lower rows.
        # Gathering the weight rows by kind (a small copy of W) gives one GEMM per kind, each
        # with its own output: slices of one shared output would each cost a zero-filled
        # gradient of the whole output in the backward.
        rows = layout.scale_rows
        w_diag, w_off = layout.split_packed(weight[rows], dim=0)  # (K, D, H), (K, D(D-1)/2, H)
        b_diag, b_off = layout.split_packed(bias[rows])  # (K, D), (K, D (D - 1) / 2)
        n_off = D * (D - 1) // 2
        diag_t = rows_t(w_diag.reshape(K * D, H), b_diag.reshape(K * D))
        # On contiguous numbers (softplus on a strided view is slow).
        diagonal = batch_first(precision_diagonal(diag_t, self.min_scale), D)
        off_t = rows_t(w_off.reshape(K * n_off, H), b_off.reshape(K * n_off))
        off_diagonal = batch_first(off_t, n_off)  # (*batch, K, D (D - 1) / 2)
        return GaussianMixture.from_packed_precision_tril(logits, loc, diagonal, off_diagonal)

    @torch.no_grad()
    def initialize(
        self,
        y: Tensor,
        *,
        n_iter: int = 20,
        seed: int = 0,
        max_samples: int = 10_000,
        weight_scale: float = 0.1,
    ) -> None:
        """Start from a mixture fitted to the targets alone, ignoring the inputs.

        Clusters the targets with k-means (seeded at the ``(k + 1/2) / K`` quantiles when
        ``D == 1``, by k-means++ otherwise; then up to ``n_iter`` Lloyd iterations), and sets
        the output bias so that, at ``h = 0``, component ``k`` has the mean of cluster ``k``,
        the within-cluster spread (per noise model: per dimension, averaged over dimensions,
        pooled over clusters, or the full covariance) and the log of the cluster fraction
        (smoothed, ``(n_k + 1) / (n + K)``, so no weight is zero). The logit and scale weights
        are zeroed and the mean weights redrawn with standard deviation about
        ``weight_scale * spread / sqrt(3 * in_features)``, so the initial conditional mixture
        stays close to this unconditional one while still depending on ``h``. Nothing changes
        for the fixed noise level. Overwrites the head's parameters; the computations run in
        float64 on the CPU and the results are cast to the parameters' dtype and device.

        Args:
            y: ``(n, D)`` training targets (``(n,)`` accepted when ``D == 1``), ``n >= K``.
            n_iter: maximum number of Lloyd iterations.
            seed: seed of the private ``torch.Generator`` used for subsampling, k-means++ and
                the mean weights; the global random state is left alone.
            max_samples: at most this many targets (drawn at random) are clustered.
            weight_scale: size of the mean weights relative to the within-cluster spread.

        Raises:
            ValueError: if ``y`` has the wrong shape, fewer than ``K`` rows, or non-finite
                values.
        """
        K, D = self.n_components, self.dim_out
        y = _targets_2d(y, D, name="y")
        if y.shape[0] < K:
            raise ValueError(
                f"y must have at least n_components={K} rows to initialize from, got {y.shape[0]}."
            )
        generator = torch.Generator().manual_seed(seed)
        data = y.detach().to(device="cpu", dtype=torch.float64)
        if not bool(torch.isfinite(data).all()):
            raise ValueError("y must be finite to initialize from; it contains nan or inf.")
        if data.shape[0] > max_samples:
            data = data[torch.randperm(data.shape[0], generator=generator)[:max_samples]]
        n = data.shape[0]

        centers, labels = kmeans(data, K, n_iter, generator)  # (K, D), (n,)
        onehot = torch.nn.functional.one_hot(labels, K).to(data.dtype)  # (n, K)
        counts = onehot.sum(0)  # (K,)
        # Variance floor relative to the overall spread of each output (see the constant).
        floor = (_INIT_RELATIVE_SPREAD_FLOOR * data.std(0, correction=0)).square()  # (D,)
        floor = floor.clamp_min(torch.finfo(data.dtype).tiny)
        diff = data.unsqueeze(1) - centers  # (n, K, D)
        weights = onehot / counts.clamp_min(1.0)  # (n, K), each column sums to 1 (or 0)
        variance = torch.einsum("nk,nkd->kd", weights, diff.square()) + floor  # (K, D)

        bias_logits, bias_loc, bias_scale = self.layout.split(self.linear.bias)
        weight_logits, weight_loc, weight_scale_raw = self.layout.split(self.linear.weight.T)
        dtype, device = self.linear.bias.dtype, self.linear.bias.device

        bias_logits.copy_(torch.log((counts + 1.0) / (n + K)).to(dtype=dtype, device=device))
        bias_loc.copy_(centers.to(dtype=dtype, device=device))
        weight_logits.zero_()
        bound = weight_scale * variance.sqrt() / math.sqrt(self.in_features)  # (K, D)
        uniform = torch.rand(self.in_features, K, D, generator=generator, dtype=data.dtype)
        weight_loc.copy_(((2.0 * uniform - 1.0) * bound).to(dtype=dtype, device=device))

        if self.noise_type is NoiseType.FIXED:
            return
        weight_scale_raw.zero_()
        # Leave the scales strictly above the floor, where the inverse of the softplus exists.
        lowest = 2.0 * self.min_scale
        if self.noise_type is NoiseType.FULL:
            covariance = torch.einsum("nk,nki,nkj->kij", weights, diff, diff)  # (K, D, D)
            covariance = covariance + torch.diag_embed(floor)
            # Sigma^-1 = P P^T: P is the (lower) Cholesky factor of the precision.
            precision = torch.cholesky_inverse(torch.linalg.cholesky(covariance))
            P = torch.linalg.cholesky(precision)  # (K, D, D)
            diagonal = inverse_precision_diagonal(
                P.diagonal(dim1=-2, dim2=-1).clamp_max(1.0 / lowest), self.min_scale
            )  # (K, D)
            rows, cols = torch.tril_indices(D, D, offset=-1)
            bias_diagonal, bias_off_diagonal = self.layout.split_packed(bias_scale)
            bias_diagonal.copy_(diagonal.to(dtype=dtype, device=device))
            bias_off_diagonal.copy_(P[:, rows, cols].to(dtype=dtype, device=device))
            return
        if self.noise_type is NoiseType.DIAGONAL:
            scale = variance.sqrt()  # (K, D)
        elif self.noise_type is NoiseType.ISOTROPIC:
            scale = variance.mean(-1).sqrt()  # (K,)
        else:  # ISOTROPIC_ACROSS_CLUSTERS: pooled within-cluster variance
            scale = ((counts / n) @ variance.mean(-1)).sqrt().reshape(1)
        raw = inverse_bounded_scale(scale.clamp_min(lowest), self.min_scale)
        bias_scale.copy_(raw.reshape(-1).to(dtype=dtype, device=device))

    def extra_repr(self) -> str:
        text = (
            f"in_features={self.in_features}, dim_out={self.dim_out}, "
            f"n_components={self.n_components}, noise_type={self.noise_type.value!r}, "
            f"min_scale={self.min_scale}"
        )
        if self.fixed_noise_level is not None:
            text += f", fixed_noise_level={self.fixed_noise_level}"
        return text


class MixtureDensityNetwork(nn.Module):
    """Multilayer perceptron followed by a :class:`MixtureDensityHead`.

    The backbone is ``[Linear -> activation -> Dropout] * n_hidden_layers`` with
    ``hidden_dim`` units per layer, or one layer per entry of ``hidden_dims`` when given
    (``hidden_dims`` then takes precedence over ``hidden_dim`` and ``n_hidden_layers``). With no
    hidden layer the head sees ``x`` directly (a linear mixture-of-experts model).

    Targets on very different scales train badly with any MDN: standardize ``y`` (and ``x``),
    and remember that ``min_scale`` is in the units of ``y``.

    Args:
        dim_in: size of the last axis of ``x``.
        dim_out: output dimension ``D``.
        n_components: number of mixture components ``K``.
        hidden_dim: units per hidden layer.
        noise_type: a :class:`~mixture_density.noise.NoiseType` or its name.
        fixed_noise_level: constant standard deviation for ``noise_type="fixed"``.
        n_hidden_layers: number of hidden layers (``0`` allowed).
        activation: name (``"tanh"``, ``"relu"``, ``"gelu"``, ``"silu"``, ... or any
            ``torch.nn`` activation class name) or an ``nn.Module`` subclass called with no
            arguments.
        hidden_dims: explicit width of every hidden layer.
        min_scale: floor of every learned standard deviation, in the units of ``y``.
        dropout: dropout probability after each hidden activation.

    Attributes:
        backbone: the MLP (``nn.Identity`` without hidden layers).
        head: the :class:`MixtureDensityHead`.

    Example:
        >>> model = MixtureDensityNetwork(1, 1, n_components=3, hidden_dim=50)
        >>> x, y = torch.randn(5, 1), torch.randn(5, 1)
        >>> model.loss(x, y).shape
        torch.Size([5])
        >>> model.sample(x).shape
        torch.Size([5, 1])
        >>> model.sample(x, (100,)).shape
        torch.Size([100, 5, 1])
    """

    def __init__(
        self,
        dim_in: int,
        dim_out: int,
        n_components: int,
        hidden_dim: int = 50,
        noise_type: NoiseType | str = NoiseType.DIAGONAL,
        fixed_noise_level: float | None = None,
        n_hidden_layers: int = 2,
        activation: str | type[nn.Module] = "tanh",
        hidden_dims: Sequence[int] | None = None,
        min_scale: float = 1e-3,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        self.dim_in = _check_int("dim_in", dim_in)
        self.dim_out = _check_int("dim_out", dim_out)
        self.n_components = _check_int("n_components", n_components)
        self.noise_type = NoiseType.parse(noise_type)
        activation_class, self._activation_name = resolve_activation(activation)
        if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
            raise ValueError(f"dropout must be a float in [0, 1), got {dropout!r}.")
        if hidden_dims is None:
            width = _check_int("hidden_dim", hidden_dim)
            depth = _check_int("n_hidden_layers", n_hidden_layers, minimum=0)
            widths = [width] * depth
        else:
            if isinstance(hidden_dims, (str, bytes)) or not isinstance(hidden_dims, Sequence):
                raise TypeError(
                    f"hidden_dims must be a sequence of ints or None, got {hidden_dims!r}."
                )
            widths = [_check_int(f"hidden_dims[{i}]", w) for i, w in enumerate(hidden_dims)]
        self._config: dict[str, Any] = {
            "dim_in": self.dim_in,
            "dim_out": self.dim_out,
            "n_components": self.n_components,
            "hidden_dim": hidden_dim,
            "noise_type": self.noise_type.value,
            "fixed_noise_level": None if fixed_noise_level is None else float(fixed_noise_level),
            "n_hidden_layers": n_hidden_layers,
            "activation": self._activation_name,
            "hidden_dims": None if hidden_dims is None else list(widths),
            "min_scale": float(min_scale),
            "dropout": float(dropout),
        }

        layers: list[nn.Module] = []
        features = self.dim_in
        for width in widths:
            layers += [nn.Linear(features, width), activation_class()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            features = width
        self.backbone: nn.Module = nn.Sequential(*layers) if layers else nn.Identity()
        self.head = MixtureDensityHead(
            features,
            self.dim_out,
            self.n_components,
            noise_type=self.noise_type,
            fixed_noise_level=fixed_noise_level,
            min_scale=min_scale,
        )

    @property
    def config(self) -> dict[str, Any]:
        """Constructor arguments as a JSON-serializable dict; ``type(model)(**config)`` rebuilds.

        ``activation`` is stored by name. An activation class from outside ``torch.nn`` is
        stored as ``"module.QualifiedName"``, which the constructor cannot resolve again.
        """
        return dict(self._config)

    def _check_x(self, x: Tensor) -> None:
        if not isinstance(x, Tensor):
            raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}.")
        if x.dim() == 0 or x.shape[-1] != self.dim_in:
            raise ValueError(
                f"x must have shape (*batch, dim_in={self.dim_in}), got {tuple(x.shape)}."
            )

    def forward(self, x: Tensor) -> GaussianMixture:
        """Conditional mixture ``p(y | x)``.

        Args:
            x: ``(*batch, dim_in)``.

        Returns:
            ``GaussianMixture`` with ``batch_shape = (*batch)`` and ``event_shape = (dim_out,)``.

        Raises:
            ValueError: if the last axis of ``x`` is not ``dim_in``.
        """
        self._check_x(x)
        return self.head(self.backbone(x))

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """Negative log-likelihood ``-log p(y | x)`` of every row.

        Args:
            x: ``(*batch, dim_in)``.
            y: ``(*batch, dim_out)``; when ``dim_out == 1``, ``(*batch)`` is accepted as well
                and gets a trailing axis of size 1.

        Returns:
            ``(*batch)``; average it (``.mean()``) for a training loss.

        Raises:
            ValueError: if ``x`` or ``y`` has the wrong shape.
        """
        self._check_x(x)
        batch = tuple(x.shape[:-1])
        if not isinstance(y, Tensor):
            raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}.")
        if self.dim_out == 1 and tuple(y.shape) == batch:
            y = y.unsqueeze(-1)  # (*batch) -> (*batch, 1)
        if tuple(y.shape) != (*batch, self.dim_out):
            accepted = f"{(*batch, self.dim_out)}"
            if self.dim_out == 1:
                accepted += f" or {batch}"
            raise ValueError(
                f"y must have shape {accepted} to match x of shape {tuple(x.shape)}, "
                f"got {tuple(y.shape)}."
            )
        return -self.head(self.backbone(x)).log_prob(y)  # x is checked above, not again

    def sample(self, x: Tensor, sample_shape: int | Sequence[int] = ()) -> Tensor:
        """Draws from ``p(y | x)`` (no gradient).

        Args:
            x: ``(*batch, dim_in)``.
            sample_shape: leading shape of the draws (an int ``n`` means ``(n,)``).

        Returns:
            ``(*sample_shape, *batch, dim_out)``.
        """
        shape = torch.Size([sample_shape] if isinstance(sample_shape, int) else sample_shape)
        with torch.no_grad():
            return self(x).sample(shape)

    def initialize(self, y: Tensor, **kwargs: Any) -> None:
        """Data-driven start for the head: see :meth:`MixtureDensityHead.initialize`."""
        self.head.initialize(y, **kwargs)


def _check_int(name: str, value: object, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}: {value!r}.")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}.")
    return value


def _check_positive_float(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a float, got {type(value).__name__}: {value!r}.")
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be positive and finite, got {value}.")
    return float(value)


def _check_fixed_noise_level(value: object, noise_type: NoiseType) -> float | None:
    if noise_type is not NoiseType.FIXED:
        if value is not None:
            raise ValueError(
                f"fixed_noise_level is only used with noise_type='fixed', got "
                f"fixed_noise_level={value!r} with noise_type={noise_type.value!r}; "
                "drop it or use noise_type='fixed'."
            )
        return None
    if value is None:
        raise ValueError(
            "noise_type='fixed' needs fixed_noise_level, the standard deviation of the noise "
            "(a positive float), got None."
        )
    return _check_positive_float("fixed_noise_level", value)


def _targets_2d(y: Tensor, dim_out: int, name: str) -> Tensor:
    """``(n, D)`` view of targets; ``(n,)`` accepted when ``D == 1``."""
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}.")
    if y.dim() == 1 and dim_out == 1:
        return y.unsqueeze(-1)
    if y.dim() != 2 or y.shape[1] != dim_out:
        accepted = f"(n, {dim_out})" + (" or (n,)" if dim_out == 1 else "")
        raise ValueError(f"{name} must have shape {accepted}, got {tuple(y.shape)}.")
    return y
