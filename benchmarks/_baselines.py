"""Baselines for the UCI benchmark: NGBoost and a deep ensemble of Gaussian MLPs.

Both take standardized inputs and targets and return a :class:`Predictive`: a per-row mixture of
Gaussians (one component for NGBoost, five for the ensemble) in the standardized units; the
harness in ``uci.py`` maps it back to the original units of y and scores it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

__all__ = [
    "Predictive",
    "fit_mlp_ensemble",
    "fit_ngboost",
    "fit_zuko_gmm",
    "inner_validation_split",
]


@dataclass(frozen=True)
class Predictive:
    """A 1-D Gaussian mixture per test row, as float64 arrays of shape ``(n, K)``.

    Attributes:
        weights: mixture weights, rows sum to one.
        loc: component means.
        scale: component standard deviations (> 0).
    """

    weights: np.ndarray
    loc: np.ndarray
    scale: np.ndarray

    def affine(self, scale: float, shift: float) -> Predictive:
        """Distribution of ``scale * y + shift`` (e.g. standardized -> original units)."""
        return Predictive(self.weights, self.loc * scale + shift, self.scale * abs(scale))

    @property
    def mean(self) -> np.ndarray:
        """Mixture mean, shape ``(n,)``."""
        return np.sum(self.weights * self.loc, axis=-1)


def inner_validation_split(
    n: int, fraction: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Random (fit, validation) row indices of a training split; validation gets >= 1 row."""
    perm = rng.permutation(n)
    n_val = max(1, round(fraction * n))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def fit_ngboost(
    X: np.ndarray,
    y: np.ndarray,
    X_test: np.ndarray,
    *,
    seed: int,
    n_estimators: int = 2000,
    learning_rate: float = 0.01,
    early_stopping_rounds: int = 50,
    val_fraction: float = 0.1,
) -> tuple[Predictive, dict[str, float]]:
    """NGBoost with a Normal distribution, the number of stages chosen on validation NLL.

    Duan et al. (2020) choose the number of boosting stages on a held-out part of the training
    split; here the model is fit on 90% of it, stops ``early_stopping_rounds`` stages after the
    best validation NLL, and predicts with the stages up to the best one (no refit on the full
    training split).

    Returns:
        The predictive distribution of the test rows and ``{"n_stages": best stage count}``.
    """
    from ngboost import NGBRegressor  # optional dependency, imported when used

    rng = np.random.default_rng(seed)
    fit_idx, val_idx = inner_validation_split(len(y), val_fraction, rng)
    model = NGBRegressor(
        n_estimators=n_estimators,
        learning_rate=learning_rate,
        verbose=False,
        random_state=seed,
    )
    model.fit(
        X[fit_idx],
        y[fit_idx],
        X_val=X[val_idx],
        Y_val=y[val_idx],
        early_stopping_rounds=early_stopping_rounds,
    )
    # best_val_loss_itr is the 0-based index of the best stage; pred_dist(max_iter=m) uses the
    # first m stages, so the best stage needs m = index + 1 (m = 0 would mean "all stages").
    n_stages = int(model.best_val_loss_itr) + 1
    dist = model.pred_dist(X_test, max_iter=n_stages)
    loc = np.asarray(dist.loc, dtype=np.float64)[:, None]
    scale = np.asarray(dist.scale, dtype=np.float64)[:, None]
    return Predictive(np.ones_like(loc), loc, scale), {"n_stages": float(n_stages)}


# Lower bound on the predicted variance in standardized units: keeps the NLL finite when a net
# overfits a training point, far below any real noise level of these data sets (>= 1e-3 SD).
_MIN_VARIANCE = 1e-6


class _GaussianMLPEnsemble(nn.Module):
    """``M`` one-hidden-layer ReLU nets held as batched weights, trained in one pass.

    Adam(W) is elementwise and the loss is a sum over members, so this is exactly ``M``
    independent trainings, each with its own initialization and minibatch order.
    """

    def __init__(self, n_members: int, dim_in: int, hidden: int, generator: torch.Generator):
        super().__init__()

        def uniform(*shape: int, fan_in: int) -> nn.Parameter:
            bound = 1.0 / math.sqrt(fan_in)  # torch.nn.Linear's default initialization
            return nn.Parameter((torch.rand(*shape, generator=generator) * 2 - 1) * bound)

        self.w1 = uniform(n_members, dim_in, hidden, fan_in=dim_in)
        self.b1 = uniform(n_members, 1, hidden, fan_in=dim_in)
        self.w2 = uniform(n_members, hidden, 2, fan_in=hidden)
        self.b2 = uniform(n_members, 1, 2, fan_in=hidden)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x (M, B, dim_in)`` -> mean and variance, each ``(M, B)``."""
        h = torch.relu(torch.baddbmm(self.b1, x, self.w1))  # (M, B, hidden)
        out = torch.baddbmm(self.b2, h, self.w2)  # (M, B, 2)
        return out[..., 0], F.softplus(out[..., 1]) + _MIN_VARIANCE


def _gaussian_nll(mean: torch.Tensor, var: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (torch.log(2 * math.pi * var) + (y - mean) ** 2 / var)


def fit_mlp_ensemble(
    X: np.ndarray,
    y: np.ndarray,
    X_test: np.ndarray,
    *,
    seed: int,
    n_members: int = 5,
    hidden: int | None = None,
    lr: float = 1e-3,
    weight_decay: float = 1e-4,
    batch_size: int | None = None,
    max_epochs: int = 1000,
    patience: int = 30,
    val_fraction: float = 0.1,
) -> tuple[Predictive, dict[str, float]]:
    """Deep ensemble (Lakshminarayanan et al. 2017) of Gaussian MLPs, without adversarial training.

    Each member has one hidden layer of 50 ReLU units (100 when there are more than 20000
    training rows, as in the paper), outputs a mean and a softplus variance, and is trained with
    the Gaussian NLL by AdamW; each member keeps the weights of its best epoch on a validation
    part of the training split, and training ends when no member has improved for ``patience``
    epochs. The predictive is the uniform mixture of the members' Gaussians.

    Returns:
        The predictive distribution of the test rows and ``{"epochs": epochs run}``.
    """
    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    fit_idx, val_idx = inner_validation_split(len(y), val_fraction, rng)
    dtype = torch.float32
    x_fit = torch.as_tensor(X[fit_idx], dtype=dtype)
    y_fit = torch.as_tensor(y[fit_idx], dtype=dtype)
    x_val = torch.as_tensor(X[val_idx], dtype=dtype).expand(n_members, -1, -1)
    y_val = torch.as_tensor(y[val_idx], dtype=dtype)
    n_fit = len(fit_idx)
    hidden = hidden or (100 if len(y) > 20000 else 50)
    batch_size = batch_size or (32 if n_fit < 5000 else 128)

    model = _GaussianMLPEnsemble(n_members, X.shape[1], hidden, generator)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    best_state = [p.detach().clone() for p in model.parameters()]
    best_nll = torch.full((n_members,), math.inf)
    best_epoch = torch.zeros(n_members, dtype=torch.long)
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        model.train()
        order = torch.argsort(torch.rand(n_members, n_fit, generator=generator), dim=1)
        for start in range(0, n_fit, batch_size):
            idx = order[:, start : start + batch_size]  # (M, B)
            mean, var = model(x_fit[idx])
            loss = _gaussian_nll(mean, var, y_fit[idx]).mean(dim=1).sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            mean, var = model(x_val)
            val_nll = _gaussian_nll(mean, var, y_val).mean(dim=1)  # (M,)
            improved = val_nll < best_nll
            best_nll = torch.where(improved, val_nll, best_nll)
            best_epoch = torch.where(improved, epoch, best_epoch)
            for p, best in zip(model.parameters(), best_state):
                best[improved] = p[improved]
        if bool((epoch - best_epoch >= patience).all()):
            break

    with torch.no_grad():
        for p, best in zip(model.parameters(), best_state):
            p.copy_(best)
        x_test = torch.as_tensor(X_test, dtype=dtype).expand(n_members, -1, -1)
        mean, var = model(x_test)
    loc = mean.T.double().numpy()  # (n_test, M)
    scale = var.T.double().sqrt().numpy()
    weights = np.full_like(loc, 1.0 / n_members)
    return Predictive(weights, loc, scale), {"epochs": float(epoch)}


def fit_zuko_gmm(
    X: np.ndarray,
    y: np.ndarray,
    X_test: np.ndarray,
    *,
    seed: int,
    components: int = 5,
    lr: float = 1e-3,
    batch_size: int | None = None,
    max_epochs: int = 1000,
    patience: int = 30,
    val_fraction: float = 0.1,
) -> tuple[Predictive, dict[str, float]]:
    """zuko's conditional Gaussian mixture (``zuko.mixtures.GMM``), trained as zuko documents.

    ``GMM(features=1, context=d, components=5)`` with zuko's default MLP (two hidden layers of
    64), diagonal covariance, zuko's default initialization, Adam on the NLL with
    minibatches (32 rows below 5000 training rows, else 128), and the weights of the best epoch
    on a 10% validation part (stop after ``patience`` epochs without improvement).

    Returns:
        The predictive distribution of the test rows and ``{"epochs": epochs run}``.
    """
    from zuko.mixtures import GMM  # optional dependency (the bench extra)

    rng = np.random.default_rng(seed)
    generator = torch.Generator().manual_seed(seed)
    fit_idx, val_idx = inner_validation_split(len(y), val_fraction, rng)
    x_fit = torch.as_tensor(X[fit_idx], dtype=torch.float32)
    y_fit = torch.as_tensor(y[fit_idx, None], dtype=torch.float32)
    x_val = torch.as_tensor(X[val_idx], dtype=torch.float32)
    y_val = torch.as_tensor(y[val_idx, None], dtype=torch.float32)
    n_fit = len(fit_idx)
    batch_size = batch_size or (32 if n_fit < 5000 else 128)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        # zuko's default start (no `initialize`): its k-means start gives a cluster of tied
        # targets a zero spread, and the NLL is NaN from the first epoch on small data.
        model = GMM(
            features=1, context=X.shape[1], components=components, covariance_type="diagonal"
        )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    best_nll, best_epoch, epoch = math.inf, 0, 0
    best_state = {key: v.detach().clone() for key, v in model.state_dict().items()}
    for epoch in range(1, max_epochs + 1):
        order = torch.randperm(n_fit, generator=generator)
        for start in range(0, n_fit, batch_size):
            idx = order[start : start + batch_size]
            loss = -model(x_fit[idx]).log_prob(y_fit[idx]).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            val_nll = float(-model(x_val).log_prob(y_val).mean())
        if val_nll < best_nll:
            best_nll, best_epoch = val_nll, epoch
            best_state = {key: v.detach().clone() for key, v in model.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    model.load_state_dict(best_state)
    with torch.no_grad():
        dist = model(torch.as_tensor(X_test, dtype=torch.float32))
        logits = dist.logits  # (n, K)
        normal = dist.base.base_dist  # DiagNormal = Independent(Normal), event dim 1
        loc, scale = normal.loc[..., 0], normal.scale[..., 0]  # (n, K)
    weights = torch.softmax(logits.double(), dim=-1).numpy()
    pred = Predictive(weights, loc.double().numpy(), scale.double().numpy())
    return pred, {"epochs": float(epoch)}
