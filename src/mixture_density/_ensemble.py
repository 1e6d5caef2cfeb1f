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
from typing import Any

import torch
from torch import Tensor, nn

from ._options import FitResult
from .distribution import GaussianMixture
from .nn import MixtureDensityNetwork
from .noise import HeadLayout

__all__ = ["StackedMDN", "member_results"]


def _linear_layers(member: MixtureDensityNetwork) -> list[nn.Module]:
    """The member's layers in order: backbone modules, then the head's ``nn.Linear``."""
    backbone = member.backbone
    layers = list(backbone) if isinstance(backbone, nn.Sequential) else []
    return [*layers, member.head.linear]


def _linears(member: MixtureDensityNetwork) -> list[nn.Linear]:
    """The member's ``nn.Linear`` layers in order (the head's last)."""
    return [layer for layer in _linear_layers(member) if isinstance(layer, nn.Linear)]


def _embedded_rows(big: HeadLayout, small: HeadLayout) -> list[int]:
    """Positions in ``big``'s raw output of the outputs of a head with fewer components
    (same noise type and ``D``), in that head's order: its components are ``big``'s first.

    Example:
        >>> big = HeadLayout("diagonal", n_components=3, dim_out=2)
        >>> _embedded_rows(big, HeadLayout("diagonal", n_components=1, dim_out=2))
        [0, 3, 4, 9, 10]
    """
    if (small.noise_type, small.dim_out) != (big.noise_type, big.dim_out) or (
        small.n_components > big.n_components
    ):
        raise ValueError(f"{small} is not a smaller layout of {big}")
    k, K = small.n_components, big.n_components
    per_scale = 0 if big.n_scale in (0, 1) else big.n_scale // K  # per component
    shared_scale = big.n_scale if per_scale == 0 else 0  # one shared number, or none
    scale0 = big.scale_rows.start
    return [
        *range(k),
        *range(big.loc_rows.start, big.loc_rows.start + k * big.dim_out),
        *range(scale0, scale0 + k * per_scale + shared_scale),
    ]


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

    Members may differ in their number of components (and only in that): each head is then
    embedded in one of the largest ``K`` (:func:`_embedded_rows`); the rows a smaller
    head does not have start at zero and its extra components get a logit of ``-inf``, so
    they have zero weight and receive no gradient.

    Args:
        members: ``M >= 1`` networks built with the same arguments but for
            ``n_components``; their current weights are copied in.

    Attributes:
        n_members: ``M``; every parameter has this leading axis.
        flat: ``(M, P)`` all weights of every member.
    """

    def __init__(self, members: Sequence[MixtureDensityNetwork]) -> None:
        super().__init__()

        def arch(m: MixtureDensityNetwork) -> dict[str, Any]:
            return {k: v for k, v in m.config.items() if k != "n_components"}

        if any(arch(m) != arch(members[0]) for m in members):
            raise ValueError("StackedMDN needs members that differ in n_components only")
        widest = max(members, key=lambda m: m.n_components)
        self.n_members = len(members)
        # Configuration only: a plain reference, not a submodule (its weights are member 0's).
        self._head = (widest.head,)
        self.layers = _linear_layers(widest)  # activations are shared, Linears are stacked
        self._shapes = [
            shape for lin in _linears(widest) for shape in (lin.weight.shape, lin.bias.shape)
        ]
        # Per member: the rows of the widest head that its own head's rows go to.
        self._rows = [_embedded_rows(widest.head.layout, m.head.layout) for m in members]
        rows = [self._flat_row(m, r) for m, r in zip(members, self._rows)]
        self.flat = nn.Parameter(torch.stack(rows))  # (M, P)
        K = widest.n_components
        mask = torch.zeros(self.n_members, 1, K)  # (M, 1, K): 0, or -inf for absent components
        for i, m in enumerate(members):
            mask[i, :, m.n_components :] = -math.inf
        self.register_buffer("logit_mask", mask if bool(mask.isinf().any()) else None)

    def _flat_row(self, member: MixtureDensityNetwork, head_rows: list[int]) -> Tensor:
        """Member's weights as one row of ``flat``, its head embedded in the widest one."""
        parts = []
        linears = _linears(member)
        shapes = iter(self._shapes)
        for j, lin in enumerate(linears):
            w_shape, b_shape = next(shapes), next(shapes)
            w, b = lin.weight.detach(), lin.bias.detach()
            if j == len(linears) - 1 and w.shape != w_shape:  # a head with fewer components
                w = w.new_zeros(w_shape).index_copy(0, torch.tensor(head_rows), w)
                b = b.new_zeros(b_shape).index_copy(0, torch.tensor(head_rows), b)
            parts += [w.reshape(-1), b.reshape(-1)]
        return torch.cat(parts)

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
        mask = self.logit_mask
        if isinstance(mask, Tensor):
            logits = logits + mask  # (M, B, K): absent components weigh nothing
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
            linears = _linears(member)
            for j, linear in enumerate(linears):
                w, b = params[2 * j][m], params[2 * j + 1][m]
                if j == len(linears) - 1 and w.shape != linear.weight.shape:
                    rows = torch.tensor(self._rows[m], device=w.device)
                    w, b = w.index_select(0, rows), b.index_select(0, rows)
                linear.weight.copy_(w)
                linear.bias.copy_(b)


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
