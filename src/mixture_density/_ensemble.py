"""Train an ensemble of mixture density networks as one batched model (private).

``MDNRegressor(n_estimators=M)`` averages the densities of ``M`` networks. Trained one after
the other, ``M`` small networks cost ``M`` times the per-step overhead (Python, optimizer,
kernel launches), which dominates on small data. Here the ``M`` members' weights are stacked
into ``(M, out, in)`` tensors and every step runs all members at once with batched matrix
products (``torch.baddbmm``): one forward, one backward, one optimizer step.

The members stay independent: the loss is the *sum* of the members' mean NLLs, so each
member's gradient is exactly its own; AdamW is elementwise, so one optimizer over the stacked
tensors is ``M`` independent optimizers; gradients are clipped per member; and each member
draws its own minibatch order and its own noise. Only the learning-rate schedule is shared
(halved when the members' mean validation NLL stops improving), since one tensor has one rate.

Early stopping is per member: each member keeps the weights of its own best validation epoch
(the classic deep-ensemble recipe), and training stops once every member has gone
``patience`` epochs without improving. At the end the weights are copied back into the
ordinary :class:`~mixture_density.nn.MixtureDensityNetwork` members, so prediction and
save/load are those of independently trained networks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from .distribution import GaussianMixture
from .nn import MixtureDensityNetwork
from .noise import scale_parameters
from .training import (
    DEFAULT_CLIP_GRAD_NORM,
    LR_FACTOR,
    MIN_LR_FACTOR,
    FitResult,
    _noise_stds,
    plateau_patience,
)

__all__ = ["fit_members"]

# Which weights each member keeps: "member" (its own best validation epoch, the classic
# deep-ensemble recipe) or "mixture" (all members at the epoch of the best combined mixture).
SELECTION = "mixture"
# Added to the gradient norm before dividing, so a zero gradient gives a finite factor.
_NORM_EPS = 1e-6


def _linear_layers(member: MixtureDensityNetwork) -> list[nn.Module]:
    """The member's layers in order: backbone modules, then the head's ``nn.Linear``."""
    backbone = member.backbone
    layers = list(backbone) if isinstance(backbone, nn.Sequential) else []
    return [*layers, member.head.linear]


def _linears(member: MixtureDensityNetwork) -> list[nn.Linear]:
    """The member's ``nn.Linear`` layers in order (the head's last)."""
    return [layer for layer in _linear_layers(member) if isinstance(layer, nn.Linear)]


class _Stacked(nn.Module):
    """``M`` networks of one architecture as stacked parameters ``(M, out, in)``, ``(M, out)``.

    ``forward(x)`` maps ``x (M, B, in)`` (or ``(B, in)``, shared by the members) to a
    ``GaussianMixture`` of batch shape ``(M, B)``, computing exactly what each member's own
    ``forward`` would.
    """

    def __init__(self, members: Sequence[MixtureDensityNetwork]) -> None:
        super().__init__()
        first = members[0]
        # Configuration only: a plain reference, not a submodule (its weights are member 0's).
        self._head = (first.head,)
        self.layers = _linear_layers(first)  # activations are shared, Linears are stacked
        per_member = [_linears(m) for m in members]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for j in range(len(per_member[0])):
            w = torch.stack([linears[j].weight.detach() for linears in per_member])
            b = torch.stack([linears[j].bias.detach() for linears in per_member])
            self.weights.append(nn.Parameter(w.clone()))  # (M, out, in)
            self.biases.append(nn.Parameter(b.clone()))  # (M, out)

    def forward(self, x: Tensor) -> GaussianMixture:
        h = x
        j = 0
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                w, b = self.weights[j], self.biases[j]
                if h.dim() == 2:  # inputs shared by all members
                    h = h.expand(w.shape[0], *h.shape)
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))  # (M, B, out)
                j += 1
            else:
                h = layer(h)  # elementwise activation or dropout
        head = self._head[0]
        K, D = head.n_components, head.dim_out
        logits = h[..., :K]  # (M, B, K)
        loc = h[..., K : K + K * D].unflatten(-1, (K, D))  # (M, B, K, D)
        params = scale_parameters(
            head.noise_type,
            h[..., K + K * D :].contiguous(),
            K,
            D,
            head.min_scale,
            fixed_scale=head.fixed_scale,
        )
        # No argument checks: they cost a sync and several kernels per step, and the hot loop
        # already zeroes non-finite gradients (``_clip_per_member``).
        return GaussianMixture(logits.contiguous(), loc.contiguous(), **params, validate_args=False)

    @torch.no_grad()
    def copy_into(self, members: Sequence[MixtureDensityNetwork]) -> None:
        """Write the stacked weights back into the members' own ``nn.Linear`` layers."""
        for m, member in enumerate(members):
            for j, linear in enumerate(_linears(member)):
                linear.weight.copy_(self.weights[j][m])
                linear.bias.copy_(self.biases[j][m])


def fit_members(
    members: Sequence[MixtureDensityNetwork],
    train_data: tuple[Tensor, Tensor],
    val_data: tuple[Tensor, Tensor] | None,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    patience: int | None,
    noise_regularization: object,
    seed: int,
    device: torch.device,
) -> list[FitResult]:
    """Train ``members`` (same architecture, already initialized) at once; in place.

    Args:
        members: ``M`` networks; on return each holds the weights of its best validation
            epoch (without validation data: its last epoch) and sits on ``device``.
        train_data: standardized ``X (n, d)`` and ``Y (n, D)``.
        val_data: standardized validation ``X``, ``Y`` or ``None``.
        epochs, batch_size, lr, weight_decay, patience, noise_regularization: as in
            :class:`~mixture_density.MDNRegressor`.
        seed: seed of the private generator for minibatch orders and noise.
        device: where to train.

    Returns:
        One ``FitResult`` per member (its own train/val NLL history and best epoch).
    """
    M = len(members)
    X, Y = (t.to(device) for t in train_data)
    n, d = X.shape
    D = Y.shape[1]
    std_x, std_y = _noise_stds(noise_regularization, n, d + D)
    for member in members:
        member.to(device).train()
    model = _Stacked(members).to(device)
    params = list(model.parameters())
    opt = _adamw(params, lr, weight_decay, device)
    gen = torch.Generator(device=device).manual_seed(seed)
    Xv = Yv = None
    if val_data is not None and len(val_data[0]):
        Xv, Yv = (t.to(device) for t in val_data)

    best_val = torch.full((M,), math.inf, dtype=torch.float64)
    best_epoch = torch.zeros(M, dtype=torch.long)
    best_state = [p.detach().clone() for p in params]
    histories: list[list[dict[str, float]]] = [[] for _ in range(M)]
    plateau = plateau_patience(patience)  # the same schedule as training.fit's "plateau"
    # The combined mixture (mean density of the members) decides when to stop and when to
    # lower the rate; per-member criteria would let one slowly improving member keep all M
    # training (it did on wine, whose integer targets reward ever sharper spikes).
    best_mix, best_mix_epoch, bad_mix, current_lr = math.inf, 0, 0, lr
    mix_state = [p.detach().clone() for p in params] if SELECTION == "mixture" else []
    stop_reason, epoch = "max_epochs", 0
    batch = min(batch_size, n)
    for epoch in range(1, epochs + 1):
        start = time.perf_counter()
        model.train()
        order = torch.argsort(torch.rand(M, n, generator=gen, device=device), dim=1)  # (M, n)
        total = torch.zeros(M, dtype=torch.float64, device=device)
        for s in range(0, n, batch):
            rows = order[:, s : s + batch]  # (M, B)
            xb, yb = X[rows], Y[rows]  # (M, B, d), (M, B, D)
            if std_x > 0:
                xb = xb + std_x * torch.randn(xb.shape, generator=gen, device=device)
            if std_y > 0:
                yb = yb + std_y * torch.randn(yb.shape, generator=gen, device=device)
            nll = -model(xb).log_prob(yb)  # (M, B)
            loss_m = nll.mean(1)  # (M,)
            for p in params:  # as opt.zero_grad(set_to_none=True), without its profiler hooks
                p.grad = None
            loss_m.sum().backward()
            _clip_per_member(params, M)
            _adamw_step(opt, params)
            total += nll.detach().sum(1).double()
        train_nll = (total / n).tolist()

        val, mix = [math.nan] * M, math.nan
        if Xv is not None and Yv is not None:
            model.eval()
            with torch.no_grad():
                lp = model(Xv).log_prob(Yv).double()  # (M, n_val)
                val_t = -lp.mean(1).cpu()  # (M,)
                mix = -float((torch.logsumexp(lp, 0) - math.log(M)).mean())
            val = val_t.tolist()
            improved = val_t < best_val  # nan never improves
            if bool(improved.any()):
                mask = improved.to(device)
                for p, b in zip(params, best_state, strict=True):
                    keep = mask.view(M, *([1] * (p.dim() - 1)))
                    b.copy_(torch.where(keep, p.detach(), b))
                best_val = torch.where(improved, val_t, best_val)
                best_epoch = torch.where(improved, torch.full_like(best_epoch, epoch), best_epoch)
            if mix < best_mix:
                best_mix, best_mix_epoch, bad_mix = mix, epoch, 0
                for p, b in zip(params, mix_state):
                    b.copy_(p.detach())
            else:
                bad_mix += 1
                if bad_mix > plateau and current_lr > lr * MIN_LR_FACTOR:
                    current_lr = max(current_lr * LR_FACTOR, lr * MIN_LR_FACTOR)
                    for group in opt.param_groups:
                        group["lr"] = current_lr
                    bad_mix = 0
        seconds = time.perf_counter() - start
        for m in range(M):
            histories[m].append(
                {
                    "epoch": float(epoch),
                    "train_nll": train_nll[m],
                    "val_nll": val[m],
                    "val_nll_mixture": mix,
                    "lr": current_lr,
                    "seconds": seconds,
                }
            )
        if Xv is not None and patience and epoch - best_mix_epoch >= patience:
            stop_reason = "early_stopping"
            break

    with torch.no_grad():
        if Xv is not None and SELECTION == "mixture":
            for p, b in zip(params, mix_state, strict=True):
                p.copy_(b)
            best_epoch.fill_(best_mix_epoch)
            best_val = torch.tensor(
                [h[best_mix_epoch - 1]["val_nll"] for h in histories], dtype=torch.float64
            )
        elif Xv is not None:
            for p, b in zip(params, best_state, strict=True):
                p.copy_(b)
        else:
            best_epoch.fill_(epoch)
    model.copy_into(members)
    return [
        FitResult(
            history=histories[m],
            best_epoch=int(best_epoch[m]),
            best_val_nll=float(best_val[m]) if Xv is not None else math.nan,
            stop_reason=stop_reason,
            epochs_run=epoch,
        )
        for m in range(M)
    ]


def _adamw(
    params: list[nn.Parameter], lr: float, weight_decay: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW, fused where torch has a fused kernel (one kernel for all tensors: on small
    networks the per-tensor loop of the default CPU implementation costs more than the step)."""
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, ValueError):  # pragma: no cover - older torch / other dtypes
            pass
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


@torch.no_grad()
def _adamw_step(opt: torch.optim.AdamW, params: list[nn.Parameter]) -> None:
    """``opt.step()``; for fused AdamW, the fused kernel called directly.

    ``Optimizer.step`` wraps the kernel in hooks, profiler records and per-step state
    gathering that cost about as much as the kernel itself on these small tensors. Once
    ``opt.step()`` has created the state (first step), this does exactly what torch's
    ``_fused_adam`` does for one CPU/CUDA parameter group without gradient scaling:
    increment the step counters, then one ``torch._fused_adamw_`` call.
    """
    group = opt.param_groups[0]
    state = [opt.state.get(p) for p in params]
    direct = (
        group.get("fused")
        and len(opt.param_groups) == 1
        and not group["amsgrad"]
        and not group["maximize"]
        and not isinstance(group["lr"], Tensor)
        and all(st for st in state)
        and all(p.grad is not None for p in params)
    )
    if not direct:
        opt.step()
        return
    steps = [st["step"] for st in state if st is not None]
    torch._foreach_add_(steps, 1)
    beta1, beta2 = group["betas"]
    tensors: list[Tensor] = list(params)
    torch._fused_adamw_(
        tensors,
        [p.grad for p in params if p.grad is not None],
        [st["exp_avg"] for st in state if st is not None],
        [st["exp_avg_sq"] for st in state if st is not None],
        [],
        steps,
        amsgrad=False,
        lr=float(group["lr"]),
        beta1=float(beta1),
        beta2=float(beta2),
        weight_decay=float(group["weight_decay"]),
        eps=float(group["eps"]),
        maximize=False,
        grad_scale=None,
        found_inf=None,
    )


@torch.no_grad()
def _clip_per_member(params: Sequence[Tensor], M: int) -> None:
    """Scale each member's gradient to norm <= ``DEFAULT_CLIP_GRAD_NORM``; zero non-finite ones."""
    grads = [p.grad for p in params if p.grad is not None]
    sq = torch.stack([g.reshape(M, -1).square().sum(1) for g in grads]).sum(0)  # (M,)
    norm = sq.sqrt()
    finite = torch.isfinite(norm)
    factor = (DEFAULT_CLIP_GRAD_NORM / (norm + _NORM_EPS)).clamp(max=1.0)
    factor = torch.where(finite, factor, torch.zeros_like(factor))
    # One multi-tensor kernel for all layers, and one host sync per step (not per layer).
    torch._foreach_mul_(grads, [factor.view(M, *([1] * (g.dim() - 1))) for g in grads])
    if not bool(finite.all()):
        for g in grads:
            torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
