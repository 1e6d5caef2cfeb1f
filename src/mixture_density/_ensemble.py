"""An ensemble of mixture density networks as one batched model (private).

``MDNRegressor(n_estimators=M)`` averages the densities of ``M`` networks. Trained one after
the other, ``M`` small networks cost ``M`` times the per-step overhead (Python, optimizer,
kernel launches), which dominates on small data. :class:`StackedMDN` stacks the members'
weights into ``(M, out, in)`` tensors, so that every step runs all members at once with
batched matrix products (``torch.baddbmm``): one forward, one backward, one optimizer step.
It is trained by the ordinary loop, :func:`mixture_density.training.fit`, which recognizes
``n_members`` (see ``_loop``): each member its own minibatch order, loss and gradient
clipping; the combined mixture decides early stopping and which epoch's weights are kept.
Afterwards :meth:`StackedMDN.copy_into` writes the weights back into the ordinary
:class:`~mixture_density.nn.MixtureDensityNetwork` members, so that prediction and
save/load are those of independently trained networks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from ._options import FitResult
from .distribution import GaussianMixture
from .nn import MixtureDensityNetwork

__all__ = ["StackedMDN", "member_results"]


def _linear_layers(member: MixtureDensityNetwork) -> list[nn.Module]:
    """The member's layers in order: backbone modules, then the head's ``nn.Linear``."""
    backbone = member.backbone
    layers = list(backbone) if isinstance(backbone, nn.Sequential) else []
    return [*layers, member.head.linear]


def _linears(member: MixtureDensityNetwork) -> list[nn.Linear]:
    """The member's ``nn.Linear`` layers in order (the head's last)."""
    return [layer for layer in _linear_layers(member) if isinstance(layer, nn.Linear)]


class StackedMDN(nn.Module):
    """``M`` networks of one architecture trained as one batched model.

    All weights and biases of member ``m`` sit in row ``m`` of one parameter ``flat``
    ``(M, P)``, layer after layer; the layers are views of it, ``(M, out, in)`` and
    ``(M, out)``. One tensor keeps the per-step work of the optimizer, the per-member
    gradient clipping and ``zero_grad`` at one kernel each, whatever the depth.
    ``forward(x)`` maps ``x (M, B, in)`` (each member its own rows) or ``(B, in)`` (shared by
    the members) to a ``GaussianMixture`` of batch shape ``(M, B)``, computing exactly what
    each member's own ``forward`` would. ``loss(x, y)`` is the ``(M, B)`` negative
    log-likelihood; summing the members' mean losses gives each member exactly its own
    gradient.

    Args:
        members: ``M >= 1`` networks built with the same arguments; their current weights
            are copied in.

    Attributes:
        n_members: ``M``; every parameter has this leading axis.
        flat: ``(M, P)`` all weights of every member.
    """

    def __init__(self, members: Sequence[MixtureDensityNetwork]) -> None:
        super().__init__()
        first = members[0]
        if any(m.config != first.config for m in members):
            raise ValueError("StackedMDN needs members built with the same arguments")
        self.n_members = len(members)
        # Configuration only: a plain reference, not a submodule (its weights are member 0's).
        self._head = (first.head,)
        self.layers = _linear_layers(first)  # activations are shared, Linears are stacked
        self._shapes = [
            shape for lin in _linears(first) for shape in (lin.weight.shape, lin.bias.shape)
        ]
        rows = [
            torch.cat(
                [t.detach().reshape(-1) for lin in _linears(m) for t in (lin.weight, lin.bias)]
            )
            for m in members
        ]
        self.flat = nn.Parameter(torch.stack(rows))  # (M, P)

    def unflatten(self, flat: Tensor) -> list[Tensor]:
        """Views of ``flat (M, P)`` (the parameter or its gradient) per layer: weight
        ``(M, out, in)``, bias ``(M, out)``, weight, bias, ... (the head's last)."""
        M = flat.shape[0]
        # split, not slices: its backward is one concatenation, not a zero-filled full-size
        # gradient per slice.
        parts = flat.split([math.prod(s) for s in self._shapes], dim=1)
        return [p.view(M, *s) for p, s in zip(parts, self._shapes)]

    def forward(self, x: Tensor) -> GaussianMixture:
        params = self.unflatten(self.flat)
        h = x
        j = 0
        for layer in self.layers:
            if isinstance(layer, nn.Linear):
                w, b = params[j], params[j + 1]
                if h.dim() == 2:  # inputs shared by all members
                    h = h.expand(w.shape[0], *h.shape)
                h = torch.baddbmm(b.unsqueeze(1), h, w.transpose(1, 2))  # (M, B, out)
                j += 2
            else:
                h = layer(h)  # elementwise activation or dropout
        head = self._head[0]
        logits, loc, scale_raw = head.layout.split(h)
        # No argument checks: they cost a sync and several kernels per step, and the loop
        # already zeroes non-finite gradients member by member.
        return head.layout.mixture(
            logits.contiguous(),  # (M, B, K)
            loc.contiguous(),  # (M, B, K, D)
            scale_raw.contiguous(),
            min_scale=head.min_scale,
            fixed_scale=head.fixed_scale,
            validate_args=False,
        )

    def loss(self, x: Tensor, y: Tensor) -> Tensor:
        """``(M, B)`` negative log-likelihoods of ``y (M, B, D)`` or ``(B, D)``."""
        return -self(x).log_prob(y)

    @torch.no_grad()
    def copy_into(self, members: Sequence[MixtureDensityNetwork]) -> None:
        """Write the stacked weights back into the members' own ``nn.Linear`` layers."""
        params = self.unflatten(self.flat)
        for m, member in enumerate(members):
            for j, linear in enumerate(_linears(member)):
                linear.weight.copy_(params[2 * j][m])
                linear.bias.copy_(params[2 * j + 1][m])


def member_results(result: FitResult, n_members: int) -> list[FitResult]:
    """One ``FitResult`` per member of a stacked fit, in the form of a one-network fit.

    Each record gets the member's own ``train_nll`` and ``val_nll`` and the combined
    mixture's validation NLL as ``val_nll_mixture``; every member holds the weights of the
    same (best combined) epoch.
    """
    out = []
    for m in range(n_members):
        history = [
            {
                "epoch": r["epoch"],
                "train_nll": r["members_train_nll"][m],
                "val_nll": r["members_val_nll"][m],
                "val_nll_mixture": r["val_nll"],
                "lr": r["lr"],
                "seconds": r["seconds"],
            }
            for r in result.history
        ]
        best = result.best_epoch
        best_val = history[best - 1]["val_nll"] if best >= 1 else math.nan
        if math.isnan(result.best_val_nll):
            best_val = math.nan
        out.append(
            FitResult(
                history=history,
                best_epoch=best,
                best_val_nll=best_val,
                stop_reason=result.stop_reason,
                epochs_run=result.epochs_run,
                detail=result.detail,
            )
        )
    return out
