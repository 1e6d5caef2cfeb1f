"""``MDNRegressor``: a mixture density network behind the scikit-learn estimator API.

The estimator standardizes ``X`` and ``y``, trains ``n_estimators`` networks (one with
:func:`mixture_density.training.fit`, several at once as one batched model), and answers
every question through one :class:`~mixture_density.GaussianMixture` in the original units
of ``y``:
``predict`` (conditional mean, so ``score`` is the usual R^2), ``predict_distribution``,
``log_prob``, ``sample``, ``predict_quantiles``, ``predict_interval`` and ``predict_mode``.
Targets on a grid, within bounds, censored or partly missing are modelled through ``_targets``
and ``_likelihood`` (``target_resolution``, ``target_bounds``, ``y_upper``, NaN in ``y``).

scikit-learn is an optional dependency; this module imports it at the top, and the package
namespace resolves ``MDNRegressor`` lazily, so ``import mixture_density`` does not need it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

try:
    from sklearn.base import BaseEstimator, RegressorMixin
    from sklearn.utils.validation import check_is_fitted
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(
        "MDNRegressor needs scikit-learn: pip install 'mixture-density[sklearn]'"
    ) from err

try:  # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data as _validate_data
except ImportError:  # pragma: no cover - scikit-learn 1.3 to 1.5

    def _validate_data(estimator: Any, /, *args: Any, **kwargs: Any) -> Any:
        return estimator._validate_data(*args, **kwargs)


from ._calibration import RecalibratedDistribution
from ._fitting import fit_estimator
from ._likelihood import TargetDistribution
from ._persistence import load_estimator, save_estimator
from ._prediction import (
    distribution,
    draws,
    features,
    log_density,
    output,
    quantiles,
    recalibration,
)
from .distribution import GaussianMixture

__all__ = ["DEFAULTS", "MDNRegressor"]

#: Defaults of the parameters that the benchmarks vary. ``"auto"`` resolves from the number of
#: training rows when the estimator fits (``_defaults``: batch size, the step budget in epochs,
#: patience, the members and their components; recorded in ``plan_``). The others were chosen
#: on the UCI regression sets (benchmarks/uci.py; the ablation is in benchmarks/RESULTS.md):
#:
#: * ``lr=1e-2`` (Adam on standardized data) with the plateau schedule: faster than 3e-3 to a
#:   better optimum before early stopping (Energy -0.5, Yacht -1.0 nats).
#: * ``noise_regularization="small_n"``: noise of ``0.3 * (50 / n)^2`` standard deviations
#:   below 200 training rows, none above (``_defaults.noise_level``). On the UCI sets noise
#:   helped one set (Energy) and hurt others (Yacht +1.2 nats even at std 0.05; ``"auto"``
#:   costs 0.6 nats on Boston and Concrete); on 30-50 rows it is what stops the collapse.
#: * an ensemble: the averaged density of several networks (one mixture), trained at once as
#:   one batched model (``_ensemble``), so it costs little more than one network on small
#:   data; the largest single gain on the UCI sets (Boston -0.15, Concrete -0.18 nats against
#:   one network).
DEFAULTS: Mapping[str, Any] = {
    "n_components": "auto",
    "n_estimators": "auto",
    "epochs": "auto",
    "batch_size": "auto",
    "lr": 1e-2,
    "weight_decay": 0.0,
    "patience": "auto",
    "noise_regularization": "small_n",
}


class MDNRegressor(RegressorMixin, BaseEstimator):
    """Mixture density network regressor with the scikit-learn estimator API.

    Models ``p(y | x)`` as a Gaussian mixture whose weights, means and scales are the outputs
    of a neural network. ``X`` and ``y`` are standardized internally; all predictions are in
    the original units of ``y``.

    With ``n_estimators = M > 1`` it trains ``M`` networks at once as one batched model
    (different initializations and mini-batch orders, each member its own loss) and predicts
    with their weighted average, itself one ``GaussianMixture`` of all members' components.
    Training stops on the combined mixture's validation NLL; every member keeps its weights
    from that epoch. The training loop is :func:`mixture_density.training.fit`.

    The parameters set to ``"auto"`` follow the number of training rows ``n`` (rules in
    ``mixture_density._defaults``): the training budget counts optimizer steps, with smaller
    batches and more passes on small data, and the ensemble's composition adapts to ``n``.
    What a fit chose is in ``plan_``.

    Args:
        n_components: Number of mixture components ``K`` of every network, or ``"auto"``.
        hidden_dims: Widths of the hidden layers.
        noise_type: Component covariance model: ``"full"``, ``"diagonal"``, ``"isotropic"``,
            ``"isotropic_across_clusters"`` or ``"fixed"``.
        activation: Hidden-layer activation name (see ``MixtureDensityNetwork``).
        n_estimators: Number of networks whose densities are averaged (trained as one
            batched model when above 1), or ``"auto"``.
        epochs: Maximum number of passes over the training rows, or ``"auto"``: 200, or
            more when that is under 5,000 optimizer steps (on up to 500 rows; fewer steps
            above).
        batch_size: Mini-batch size, or ``"auto"``: 16 to 128 rows, growing with ``n``.
        lr: Adam learning rate, or ``"auto"``: ``1e-2 * batch_size / 128``.
        weight_decay: Weight decay (L2) coefficient.
        noise_regularization: Gaussian noise added to the standardized inputs and targets
            of every training mini-batch (Rothfuss et al., 2019): ``"small_n"`` (standard
            deviation ``0.3 * (50 / n)^2`` below 200 training rows, none above; off for
            transformed targets), ``"auto"`` (``n^(-1/(4 + d))`` for ``d`` inputs plus
            outputs), a float, a pair ``(std_x, std_y)``, or ``None`` (off).
        val_fraction: Fraction of the rows held out for early stopping (0 disables it; it is
            also disabled when the fraction would hold out no row).
        patience: Epochs without a better validation NLL before training stops, ``"auto"``
            (30, or more when that is under 500 optimizer steps), or ``None`` (run all
            ``epochs``; the weights with the best validation NLL are kept either way).
        min_scale: Floor on every component standard deviation, in units of the
            standardized targets (each target scaled to unit variance).
        fixed_noise_level: Component standard deviation for ``noise_type="fixed"``, in
            standardized target units.
        device: Torch device to train and predict on (``"cpu"``, ``"cuda"``, ``"auto"``).
        verbose: Show a progress bar over the epochs during training.
        random_state: Seed (int), ``numpy.random.RandomState`` or ``None`` for the
            initializations, the validation split and the mini-batch order.
        target_resolution: Grid spacing ``h`` of ``y``: ``None`` (continuous), a float, or one
            per output (``None`` entries continuous). Training and ``log_prob`` use the
            probability of the bin ``[y - h/2, y + h/2]`` (a log mass, <= 0); samples and
            quantiles are grid values. Fitting heavily tied ``y`` without it warns.
        target_bounds: ``(lo, hi)`` for all outputs, or one pair (or ``None``) per output;
            ``None`` or an infinite end is open. The mixture models ``log(y - lo)``,
            ``-log(hi - y)`` or ``logit((y - lo) / (hi - lo))``; densities include the
            Jacobian and are ``-inf`` outside; samples and quantiles stay inside.

    Attributes:
        plan_: What the fit used: batch size, learning rate, epochs, patience, each
            network's ``K`` (:class:`mixture_density._defaults.Plan`).
        member_weights_: Each network's weight in the predictive mixture (equal, or from
            the validation likelihood of networks of different ``K``).
        calibrator_: The recalibration of :meth:`calibrate`, or ``None``.
        models_: The trained networks, one per member of the plan, in evaluation mode.
        model_: The first (with ``n_estimators=1`` the only) network.
        x_mean_, x_scale_: ``(n_features_in_,)`` standardization of the inputs.
        y_mean_, y_scale_: ``(n_outputs_,)`` standardization of the targets.
        n_features_in_: Number of input features.
        feature_names_in_: Column names, when ``X`` was a data frame with string columns.
        n_outputs_: Number of targets ``D``.
        fit_results_: One ``FitResult`` per network (history, best epoch, stop reason).
        history_: Per-epoch training history of the first network (a list of dicts).
        val_nll_: Mean held-out negative log-likelihood of the combined model in nats per
            row, in the original units of ``y``; ``nan`` without a validation split.
        target_transform_: Per output, the map ``g`` and standardization the networks see,
            ``z = (g(y) - shift) / scale`` (JSON-able dicts; see ``_fitting.set_fitted``).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(0)
        >>> X = rng.uniform(-1, 1, size=(200, 1))
        >>> y = np.sin(3 * X[:, 0]) + 0.1 * rng.standard_normal(200)
        >>> model = MDNRegressor(n_components=2, hidden_dims=(16,), epochs=20, random_state=0)
        >>> model.fit(X, y).predict(X[:3]).shape
        (3,)
        >>> model.predict_distribution(X[:3]).batch_shape
        torch.Size([3])
        >>> lower, upper = model.predict_interval(X[:3], level=0.9)
        >>> bool(np.all(lower < upper))
        True
    """

    def __init__(
        self,
        n_components: int | str = DEFAULTS["n_components"],
        hidden_dims: Sequence[int] = (64, 64),
        noise_type: str = "diagonal",
        activation: str = "relu",
        n_estimators: int | str = DEFAULTS["n_estimators"],
        epochs: int | str = DEFAULTS["epochs"],
        batch_size: int | str = DEFAULTS["batch_size"],
        lr: float = DEFAULTS["lr"],
        weight_decay: float = DEFAULTS["weight_decay"],
        noise_regularization: Any = DEFAULTS["noise_regularization"],
        val_fraction: float = 0.1,
        patience: int | str | None = DEFAULTS["patience"],
        min_scale: float = 1e-3,
        fixed_noise_level: float | None = None,
        device: str = "cpu",
        verbose: bool = False,
        random_state: int | np.random.RandomState | None = None,
        target_resolution: float | Sequence[float | None] | None = None,
        target_bounds: Any = None,
    ) -> None:
        self.n_components = n_components
        self.hidden_dims = hidden_dims
        self.noise_type = noise_type
        self.activation = activation
        self.n_estimators = n_estimators
        self.epochs = epochs
        self.batch_size = batch_size
        self.lr = lr
        self.weight_decay = weight_decay
        self.noise_regularization = noise_regularization
        self.val_fraction = val_fraction
        self.patience = patience
        self.min_scale = min_scale
        self.fixed_noise_level = fixed_noise_level
        self.device = device
        self.verbose = verbose
        self.random_state = random_state
        self.target_resolution = target_resolution
        self.target_bounds = target_bounds

    # ------------------------------------------------------------------------------------
    # scikit-learn plumbing
    # ------------------------------------------------------------------------------------

    def __sklearn_tags__(self) -> Any:  # scikit-learn >= 1.6
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        return tags

    def _more_tags(self) -> dict[str, Any]:  # scikit-learn < 1.6
        return {"multioutput": True}

    # ------------------------------------------------------------------------------------
    # Fitting
    # ------------------------------------------------------------------------------------

    def fit(self, X: Any, y: Any, y_upper: Any = None) -> MDNRegressor:
        """Train the network(s) on ``X`` and ``y``.

        Args:
            X: ``(n, n_features)`` array-like of inputs.
            y: ``(n,)`` or ``(n, D)`` array-like of targets. With ``(n,)``, predictions
                drop the output axis (``predict`` returns ``(n,)``). NaN marks a missing
                entry (``D > 1``): its row's likelihood is the marginal of the others.
            y_upper: ``(n,)`` upper ends (``D == 1``): NaN or ``y`` for an exact value, above
                ``y`` the interval ``[y, y_upper]``; ``inf`` is right-censored at ``y``,
                ``y = -inf`` left-censored at ``y_upper``.

        Returns:
            ``self``.

        Raises:
            ValueError: If the data or a hyperparameter is invalid.
        """
        return self._fit(X, y, distributed=False, y_upper=y_upper)

    def _fit(
        self, X: Any, y: Any, *, distributed: bool | None, y_upper: Any = None
    ) -> MDNRegressor:
        """``fit`` with ``training.fit``'s ``distributed`` switch (``mdn fit`` passes None:
        a ``torchrun`` launch trains one network data-parallel); see ``_fitting.fit_estimator``."""
        return fit_estimator(self, X, y, distributed, y_upper)

    # ------------------------------------------------------------------------------------
    # Prediction
    # ------------------------------------------------------------------------------------

    def predict_distribution(self, X: Any) -> Any:
        """Conditional distribution of ``y`` given each row of ``X``, in original units.

        Args:
            X: ``(n, n_features)`` array-like.

        Returns:
            A ``GaussianMixture`` with ``batch_shape (n,)``, ``event_shape (D,)`` and
            ``n_estimators * n_components`` components, on the model's device (float32).
            With ``target_resolution`` or ``target_bounds``: a ``TargetDistribution`` over
            ``y`` (float64) whose ``base`` is that mixture over the transformed target.
            After :meth:`calibrate`: that distribution recalibrated (a
            ``RecalibratedDistribution`` with ``log_prob``, ``cdf``, ``icdf``, ``sample``,
            ``mean``).
        """
        gm = self._mixture(X)
        dist = gm if self._targets.plain else TargetDistribution(gm, self._targets)
        return (
            dist if self.calibrator_ is None else RecalibratedDistribution(dist, self.calibrator_)
        )

    def _mixture(self, X: Any) -> GaussianMixture:
        """The mixture over ``g(y)`` (``y`` itself without bounds) for array-like ``X``."""
        check_is_fitted(self)
        return distribution(self, features(self, X, reset=False))

    def calibrate(self, X: Any, y: Any, cv: int | None = None) -> MDNRegressor:
        """Recalibrate the fitted model on held-out rows (quantile recalibration).

        Learns a monotone map ``R`` of ``[0, 1]`` that makes the PIT values ``F(y | x)`` of
        ``(X, y)`` (rows the model was not trained on) uniform and forecasts ``R(F)`` from
        then on: every prediction method uses it but :meth:`predict_mode`, which stays the
        model's. ``R`` is piecewise linear through the PIT values' quantiles at plotting
        positions ``q (n + 1)``, so the recalibrated intervals cover their level in
        expectation even on few rows, and its slope stays bounded
        (``mixture_density._calibration``). One continuous output only (bounds allowed, not
        a grid). Calling it again replaces the previous recalibration. With ``cv=k``, ``R``
        comes from the out-of-fold PIT values of ``k`` copies (same parameters) fitted on the
        other folds of ``(X, y)``: for data too small to hold rows out (``k`` more fits; the
        model is not refitted; intervals err wide, as the copies saw fewer rows).

        Args:
            X: ``(n, n_features)`` array-like, at least 20 rows.
            y: ``(n,)`` or ``(n, 1)`` targets.
            cv: None (``X, y`` are held-out rows) or the number of folds ``k >= 2`` of
                cross-fitting on ``X, y`` (the rows the model was trained on).

        Returns: ``self``.

        Raises:
            ValueError: more than one output, a grid target, fewer than 20 rows (or ``cv``),
                ``cv < 2``, or rows whose ``y`` has zero density (they are listed).
            TypeError: ``cv`` is not an integer.

        Example:
            >>> import numpy as np
            >>> rng = np.random.default_rng(0)
            >>> X = rng.uniform(-1, 1, size=(300, 1))
            >>> y = X[:, 0] + 0.3 * rng.standard_t(3, size=300)  # heavy tails
            >>> model = MDNRegressor(n_components=1, hidden_dims=(8,), epochs=30).fit(X, y)
            >>> model.calibrate(X, y, cv=3).calibrator_.n  # or held-out rows, without cv
            300
        """
        self.calibrator_ = recalibration(self, X, y, cv)
        return self

    def predict(self, X: Any) -> np.ndarray:
        """Conditional mean ``E[y | x]`` in original units.

        Returns:
            ``(n,)`` if ``y`` was fitted as a 1-D array, else ``(n, D)`` (float64).
        """
        return output(self, self.predict_distribution(X).mean)

    def predict_mode(self, X: Any) -> np.ndarray:
        """Highest-density point of the conditional distribution (see ``GaussianMixture.mode``);
        a ``ValueError`` with ``target_bounds`` or ``target_resolution`` (use the median).

        Returns:
            ``(n,)`` if ``y`` was fitted as a 1-D array, else ``(n, D)`` (float64).
        """
        gm = self._mixture(X)
        dist = gm if self._targets.plain else TargetDistribution(gm, self._targets)
        return output(self, dist.mode)  # the model's, recalibrated or not

    def log_prob(self, X: Any, y: Any, y_upper: Any = None) -> np.ndarray:
        """Log density ``log p(y_i | x_i)`` per row, in the original units of ``y``.

        On a grid the log probability mass of ``y``'s bin; for an interval row (``y_upper``
        as in :meth:`fit`) its log probability; NaN entries of ``y`` are marginalized; values
        outside ``target_bounds`` give ``-inf``.

        Args:
            X: ``(n, n_features)`` array-like.
            y: ``(n,)`` or ``(n, D)`` array-like.
            y_upper: ``(n,)`` upper ends, ``D == 1`` (see :meth:`fit`), or ``None``.

        Returns:
            ``(n,)`` float64 array, in nats.
        """
        return log_density(self, X, y, y_upper)

    def sample(
        self, X: Any, n_samples: int = 1, random_state: int | np.random.RandomState | None = None
    ) -> np.ndarray:
        """Draw from the conditional distribution of each row.

        Args:
            X: ``(n, n_features)`` array-like.
            n_samples: Draws per row.
            random_state: Seed or ``RandomState`` for reproducible draws; ``None`` uses
                torch's global generator. A seed leaves the global generator untouched.

        Returns:
            ``(n_samples, n)`` if ``y`` was fitted as a 1-D array, else ``(n_samples, n, D)``.
        """
        return draws(self, X, n_samples, random_state)

    def predict_quantiles(self, X: Any, q: float | Sequence[float] | np.ndarray) -> np.ndarray:
        """Exact quantiles of the conditional distribution (per output dimension for ``D > 1``).

        Computed by inverting the mixture CDF of each marginal (``GaussianMixture.icdf``).

        Args:
            X: ``(n, n_features)`` array-like.
            q: Probability levels in ``(0, 1)``, a scalar or a 1-D sequence of length ``Q``.

        Returns:
            ``(n, Q)`` if ``y`` was fitted as a 1-D array, else ``(n, D, Q)`` (float64).
        """
        return quantiles(self, X, q)

    def predict_interval(self, X: Any, level: float = 0.9) -> tuple[np.ndarray, np.ndarray]:
        """Central prediction interval ``[F^-1((1 - level) / 2), F^-1((1 + level) / 2)]``.

        Args:
            X: ``(n, n_features)`` array-like.
            level: Nominal coverage in ``(0, 1)``, per output dimension.

        Returns:
            ``(lower, upper)``, each ``(n,)`` if ``y`` was fitted as a 1-D array, else
            ``(n, D)``.
        """
        if not 0.0 < float(level) < 1.0:
            raise ValueError(f"level must lie strictly between 0 and 1, got {level!r}")
        bounds = self.predict_quantiles(X, [(1.0 - level) / 2.0, (1.0 + level) / 2.0])
        return bounds[..., 0], bounds[..., 1]

    # ------------------------------------------------------------------------------------
    # Persistence
    # ------------------------------------------------------------------------------------

    def save(
        self, path: str | os.PathLike[str], *, metadata: Mapping[str, Any] | None = None
    ) -> None:
        """Write the fitted estimator to one file, atomically.

        The file holds a JSON configuration (hyperparameters, scalers' shapes, training
        history, ``metadata``) and the network weights and scalers as tensors. It is read
        back by :meth:`load` without executing pickled code. A path ending in
        ``.safetensors`` uses the safetensors container (optional dependency); any other
        path a ``torch.save`` archive of plain tensors.

        Args:
            path: Destination file.
            metadata: Extra JSON-serializable information to store (for example the column
                names used by the ``mdn`` command); returned by :meth:`load` as
                ``metadata_``.
        """
        save_estimator(self, path, metadata)

    @classmethod
    def load(cls, path: str | os.PathLike[str], *, device: str | None = None) -> MDNRegressor:
        """Read an estimator written by :meth:`save`.

        Args:
            path: File written by :meth:`save`.
            device: Device to put the networks on; default: the saved ``device`` parameter
                (``"cpu"`` when that is not available).

        Returns:
            A fitted ``MDNRegressor`` that predicts exactly what the saved one did, with
            ``metadata_`` holding the ``metadata`` given to :meth:`save`.

        Raises:
            OSError: The file cannot be read.
            MixtureDensityError: The file is not a saved ``MDNRegressor``.
            ValueError: ``device`` is a CUDA device and CUDA is not available.
        """
        return load_estimator(cls, path, device)

    def to_onnx(self, path: str | os.PathLike[str], *, opset: int | None = None) -> None:
        """Write the fitted model as an ONNX graph (for onnxruntime and other runtimes).

        Input ``x (batch, n_features)`` float32 in original units (dynamic batch); outputs
        ``logits (batch, K')``, ``loc (batch, K', D)`` and ``scale (batch, K', D)``, or
        ``scale_tril (batch, K', D, D)`` for ``noise_type="full"``, in the original units of
        ``y``: ``K'`` counts all members' components, weighted by ``member_weights_``, and
        ``GaussianMixture(logits, loc, scale=scale)`` rebuilds :meth:`predict_distribution`.
        With ``target_bounds`` or ``target_resolution`` the outputs are the mixture of the
        modelled ``g(y)`` and the metadata records ``target_transform_``; a recalibrated
        model exports the uncalibrated mixture and records the PIT map (``calibration``).
        Written atomically; needs the extra ``onnx``. See :mod:`mixture_density.export`.

        Args:
            path: destination, e.g. ``"model.onnx"``.
            opset: ONNX opset version (default: the exporter's).

        Raises:
            sklearn.exceptions.NotFittedError: the estimator is not fitted.
            ModuleNotFoundError: onnx or onnxscript is not installed.
        """
        check_is_fitted(self)
        from ._onnx import export_estimator

        export_estimator(self, path, opset)
