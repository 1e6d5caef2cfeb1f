"""The one training loop behind :func:`mixture_density.training.fit` (private).

:class:`FitOptions` is the typed, validated form of ``fit``'s keyword arguments;
:class:`Trainer` runs one call: set-up (seed, data sources, optimizer, schedule, checkpoint
resume), then epochs of minibatch steps with validation, early stopping, best-weights
restore, NaN rollback and checkpoints.

The same loop trains one network or a batched ensemble. A model with an integer attribute
``n_members = M > 1`` (:class:`~mixture_density._ensemble.StackedMDN`) holds ``M`` members whose
every parameter has a leading member axis; its ``loss`` returns ``(M, B)``. Each member then
gets its own minibatch order, its own mean NLL in the summed loss (so its gradient is exactly
its own), its own gradient clipping, and a non-finite gradient zeroes only that member's step.
Validation scores the *combined* mixture (the mean of the members' densities), which decides
early stopping, the learning-rate schedule and which epoch's weights are kept. A plain model
is the case ``M = 1`` of the same rules.
"""

from __future__ import annotations

import contextlib
import math
import secrets
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from . import _checkpoint as _ckpt
from . import _distributed as _dist
from ._data import Source, build_sources
from ._loss import FallbackLoss, LossModule, entries, masked_mean, masked_sums
from ._options import (
    LR_FACTOR,
    MIN_LR_FACTOR,
    STOP_CODES,
    STOP_EARLY,
    STOP_INTERRUPTED,
    STOP_MAX_EPOCHS,
    STOP_NON_FINITE,
    FitOptions,
    FitResult,
    noise_stds,
    plateau_patience,
)

__all__ = ["Trainer"]

#: Added to a member's gradient norm before dividing, as ``clip_grad_norm_`` does, so that a
#: zero gradient gives a finite clipping factor.
_NORM_EPS = 1e-6


@dataclass
class _Progress:
    """What the loop has decided so far; saved in checkpoints (see ``_checkpoint``)."""

    history: list[dict[str, Any]]
    best_state: dict[str, torch.Tensor]
    best_epoch: int = 0
    best_val: float = math.inf
    bad_epochs: int = 0
    finished: str | None = None
    noise: tuple[float, float] | None = None


class Trainer:
    """One call of :func:`~mixture_density.training.fit`; methods are the loop's phases."""

    def __init__(
        self, model: nn.Module, device: torch.device, ctx: _dist.DistContext, opts: FitOptions
    ) -> None:
        self.model, self.device, self.ctx, self.opts = model, device, ctx, opts
        self.members = int(getattr(model, "n_members", 1))
        self.was_training = model.training
        self.skipped = 0  # steps skipped for a non-finite loss or gradient

    @property
    def _cdev(self) -> torch.device:
        # Collectives run on the device the backend expects: nccl needs CUDA tensors.
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def run(self, X: Any, y: Any, train_data: Any, val_data: Any, mask: Any = None) -> FitResult:
        opts, ctx = self.opts, self.ctx
        model = self.model.to(self.device)
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        ckpt = None
        if opts.resume and opts.checkpoint_path:
            ckpt = _ckpt.load(opts.checkpoint_path, ctx, self._cdev)
        seed = opts.seed
        if ckpt is not None:
            if seed is not None and seed != ckpt["seed"]:
                warnings.warn(
                    f"resume: using the checkpoint's seed {ckpt['seed']}, not seed={seed}",
                    stacklevel=4,
                )
            seed = ckpt["seed"]
        elif seed is None:
            seed = _dist.broadcast_int(ctx, secrets.randbits(62), self._cdev)
        self.seed = int(seed)
        self.gen = torch.Generator().manual_seed(self.seed)
        # The global RNG (dropout) is seeded inside fit's fork_rng, which restores it on return;
        # ranks get different streams so that their dropout masks differ.
        torch.default_generator.manual_seed(self.seed + 1 + ctx.rank)
        if self.device.type == "cuda":
            with torch.cuda.device(self.device):
                torch.cuda.manual_seed(self.seed + 1 + ctx.rank)
        self.noise_gen = torch.Generator(device=self.device).manual_seed(self.seed + 2)

        per_rank = opts.batch_size // ctx.world_size
        if per_rank < 1:
            raise ValueError(
                f"batch_size={opts.batch_size} is smaller than the world size {ctx.world_size}"
            )
        self.train: Source
        self.val: Source | None
        self.train, self.val = build_sources(
            X,
            y,
            train_data,
            val_data,
            opts.val_fraction,
            per_rank,
            ctx,
            self.seed,
            self.gen,
            self.dtype,
            self.device,
            members=self.members,
            mask=mask,
            # A model that declares it (``_likelihood.TargetLikelihood``) takes infinite ends.
            infinite_targets=bool(getattr(model, "infinite_targets", False)),
        )
        self.opt = _adamw(self.params, opts.lr, opts.weight_decay, self.device)
        self.sched: Any = None
        if opts.lr_schedule == "plateau":
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.opt,
                mode="min",
                factor=LR_FACTOR,
                patience=plateau_patience(opts.patience),
                min_lr=opts.lr * MIN_LR_FACTOR,
            )
        elif opts.lr_schedule == "cosine":
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=opts.epochs)
        amp = opts.amp_dtype
        self.scaler = torch.amp.GradScaler(self.device.type) if amp is torch.float16 else None
        self.objects = _ckpt.Checkpointable(
            model, self.opt, self.sched, self.scaler, self.gen, self.noise_gen, self.device
        )
        self.state = _Progress(history=[], best_state=_ckpt.cpu_state(model))
        self.start_epoch = 0
        if ckpt is not None:
            self._restore(ckpt)

        loss_module = LossModule(model, amp, self.device.type)
        self.eval_loss: Callable[..., torch.Tensor] = loss_module
        wrapped: nn.Module = loss_module
        self.ddp: Any = None
        if ctx.enabled:
            wrapped = self.ddp = nn.parallel.DistributedDataParallel(
                loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        # Plain eager training calls the model's loss directly (no module-call overhead).
        plain = amp is None and self.ddp is None
        self.train_loss: Callable[..., torch.Tensor] = loss_module.plain if plain else wrapped
        if opts.compile:
            self.train_loss = FallbackLoss(torch.compile(wrapped, dynamic=False), wrapped)
        return self._loop()

    def _restore(self, ckpt: dict[str, Any]) -> None:
        n_val = self.val and self.val.n_rows
        _ckpt.check_same_data(ckpt, str(self.opts.checkpoint_path), self.train.n_rows, n_val)
        self.objects.load_state_dict(ckpt)
        self.start_epoch = int(ckpt["epoch"])
        self.state = _Progress(
            history=list(ckpt["history"]),
            best_state=ckpt["best_state"],
            best_epoch=int(ckpt["best_epoch"]),
            best_val=float(ckpt["best_val_nll"]),
            bad_epochs=int(ckpt["bad_epochs"]),
            finished=ckpt.get("finished"),
            noise=ckpt.get("noise"),
        )

    def _save(self, epoch: int, finished: str | None = None) -> None:
        path = self.opts.checkpoint_path
        if not (path and self.ctx.is_main):
            return
        s = self.state
        progress = {
            "epoch": epoch,
            "best_state": s.best_state,
            "best_epoch": s.best_epoch,
            "best_val_nll": s.best_val,
            "bad_epochs": s.bad_epochs,
            "history": s.history,
            "seed": self.seed,
            "n_train": self.train.n_rows,
            "n_val": self.val.n_rows if self.val else None,
            "noise": s.noise,
            "finished": finished,
        }
        _ckpt.save(path, self.objects, progress)

    # -- one epoch ------------------------------------------------------------------------
    def _to_device(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if xb.device == yb.device == self.device and xb.dtype == yb.dtype == self.dtype:
            return xb, yb  # in-memory sources are already there
        xb = xb.to(self.device, non_blocking=True)
        if xb.is_floating_point():
            xb = xb.to(self.dtype)
        return xb, yb.to(self.device, dtype=self.dtype, non_blocking=True)

    def _add_noise(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.state.noise is None:
            row_dims = 2 if self.members > 1 else 1  # (M, B, ...) or (B, ...)
            d = int(np.prod(xb.shape[row_dims:])) + int(yb.shape[-1])
            self.state.noise = noise_stds(self.opts.noise_regularization, self.train.n_rows, d)
        sx, sy = self.state.noise
        if sx > 0 and xb.is_floating_point():
            xb = xb + sx * torch.randn(
                xb.shape, generator=self.noise_gen, device=xb.device, dtype=xb.dtype
            )
        if sy > 0:
            yb = yb + sy * torch.randn(
                yb.shape, generator=self.noise_gen, device=yb.device, dtype=yb.dtype
            )
        return xb, yb

    def _row_sums(self, nll: torch.Tensor, rows: int) -> torch.Tensor:
        """(M,) float64 summed NLL of each member over a minibatch of ``rows`` entries."""
        if nll.ndim == 0:  # a loss already reduced to its mean counts as that for each row
            return (nll.detach() * rows).to(torch.float64).reshape(1)
        return nll.detach().reshape(self.members, -1).sum(1).to(torch.float64)

    def _train_epoch(self, epoch: int) -> tuple[list[float], bool]:
        """Returns (mean train NLL of each member, whether the non-finite limit was hit).

        Every skip decision depends only on the gradient norms, which DDP has averaged over
        ranks, so all ranks skip the same steps without an extra collective. A non-finite
        loss on one rank is turned into NaN gradients (times NaN instead of 1) to make that so.
        """
        self.model.train()
        M = self.members
        total = torch.zeros(M, dtype=torch.float64, device=self.device)
        count = torch.zeros(M, dtype=torch.float64, device=self.device)
        streak = 0
        uneven = self.ddp is not None and not self.train.even
        # Ranks with fewer batches shadow DDP's all-reduces instead of hanging (uneven inputs).
        join = self.ddp.join() if uneven else contextlib.nullcontext()
        with join:
            for xb, yb, *rest in self.train.batches(self.gen, epoch):
                xb, yb = self._to_device(xb, yb)
                mb = rest[0].to(self.device, non_blocking=True) if rest else None
                if self.opts.noise_regularization is not None:
                    xb, yb = self._add_noise(xb, yb)
                for p in self.params:  # opt.zero_grad(set_to_none=True) minus its profiler hooks
                    p.grad = None
                if mb is None:
                    nll = self.train_loss(xb, yb)  # (B,), (M, B), (B, T) or a mean already
                    member_loss = nll.reshape(M, -1).mean(1)  # (M,)
                else:  # the mean over the observed (row, step) entries
                    nll = self.train_loss(xb, yb, mb)  # (B, T) or (M, B, T)
                    ranks = self.ctx if self.ddp is not None and not uneven else None
                    member_loss, obs_sums, obs_counts = masked_mean(nll, mb, M, ranks, self._cdev)
                loss = member_loss.sum()  # each member's gradient is its own
                if self.ddp is not None:  # a non-finite loss on any rank: NaN gradients on all
                    guard = torch.where(torch.isfinite(loss.detach()), 1.0, math.nan)
                    loss = loss * guard.to(loss.dtype)
                (self.scaler.scale(loss) if self.scaler else loss).backward()
                if self.scaler is not None:
                    self.scaler.unscale_(self.opt)
                clip = self.opts.clip_grad_norm or math.inf
                loss_ok = torch.isfinite(member_loss.detach())
                finite, n_finite = clip_members(self.params, M, clip, loss_ok)  # (M,)
                any_finite = n_finite > 0
                if self.scaler is not None:
                    # The scaler skips overflowing steps itself and halves its scale; only a
                    # streak that has already driven the scale below 1 counts as divergence.
                    self.scaler.step(self.opt)
                    self.scaler.update()
                    bad = not any_finite and self.scaler.get_scale() < 1.0
                    streak = streak + 1 if bad else 0
                elif not any_finite:
                    streak += 1
                    self.skipped += 1
                else:
                    streak = 0
                    self.opt.step()
                if streak >= self.opts.max_nonfinite_batches:
                    return (total / count).tolist(), True
                if mb is None:
                    rows: Any = entries(nll, xb.shape[0], M)
                    batch_sums = self._row_sums(nll, rows)
                else:
                    batch_sums = obs_sums.detach().to(torch.float64)
                    rows = obs_counts.to(torch.float64)
                if n_finite == M:
                    total += batch_sums
                    count += rows
                else:
                    total += torch.where(finite, batch_sums, 0.0)
                    count += finite * rows
        sums = _dist.all_sum(self.ctx, [*total.tolist(), *count.tolist()], self._cdev)
        return [s / c if c else math.nan for s, c in zip(sums[:M], sums[M:])], False

    @torch.no_grad()
    def _validate(self) -> tuple[float, list[float]]:
        """(NLL of the combined mixture, NLL of each member), per validation row (per
        observed entry with a mask)."""
        M = self.members
        if self.val is None:
            return math.nan, [math.nan] * M
        self.model.eval()
        mix = torch.zeros((), dtype=torch.float64, device=self.device)
        members = torch.zeros(M, dtype=torch.float64, device=self.device)
        count = 0
        for xb, yb, *rest in self.val.batches(self.gen, 0):
            xb, yb = self._to_device(xb, yb)
            mb = rest[0].to(self.device, non_blocking=True) if rest else None
            if mb is None:
                nll = self.eval_loss(xb, yb)  # (B,) or (M, B); inputs are shared by the members
                rows = entries(nll, xb.shape[0], M)
                member_sums = self._row_sums(nll, rows)
            else:  # sums and counts over the observed (row, step) entries
                nll = self.eval_loss(xb, yb, mb)  # (B, T) or (M, B, T)
                member_sums, counts = masked_sums(nll.to(torch.float64), mb, M)
                rows = int(counts[0])
            members += member_sums
            if M == 1:
                mix += member_sums[0]
            else:  # -log of the mean member density, entry by entry
                lp = -nll.to(torch.float64)  # (M, B, ...)
                mix_nll = -(torch.logsumexp(lp, 0) - math.log(M))  # (B, ...)
                mix += mix_nll.sum() if mb is None else masked_sums(mix_nll, mb, 1)[0][0]
            count += rows
        sums = _dist.all_sum(self.ctx, [float(mix), *members.tolist(), float(count)], self._cdev)
        c = sums[-1]
        return (sums[0] / c if c else math.nan), [s / c if c else math.nan for s in sums[1:-1]]

    # -- the loop ---------------------------------------------------------------------------
    def _result(self, reason: str, detail: str = "") -> FitResult:
        s = self.state
        best_val = s.best_val if self.val is not None else math.nan
        return FitResult(s.history, s.best_epoch, best_val, reason, len(s.history), detail)

    def _finish(self, interrupted: bool = False) -> None:
        self.model.load_state_dict(self.state.best_state)
        if not interrupted:
            # After Ctrl-C the other ranks may be in any collective (or gone): no waiting.
            # Their best states are equal anyway: they were taken at the same epochs.
            _dist.broadcast_module(self.ctx, self.model)
        self.model.train(self.was_training)

    def _record(
        self, epoch: int, train: list[float], val: tuple[float, list[float]], lr: float, t0: float
    ) -> dict[str, Any]:
        record: dict[str, Any] = {
            "epoch": float(epoch),
            "train_nll": float(np.mean(train)),
            "val_nll": val[0],
            "lr": lr,
            "seconds": time.perf_counter() - t0,
        }
        if self.members > 1:
            record["members_train_nll"] = train
            record["members_val_nll"] = val[1]
        return record

    def _loop(self) -> FitResult:
        opts, s = self.opts, self.state
        if s.finished is not None and (
            s.finished != STOP_MAX_EPOCHS or self.start_epoch >= opts.epochs
        ):
            self._finish()
            return self._result(s.finished)
        if self._patience_exhausted():  # interrupted after the epoch that exhausted patience
            self._finish()
            return self._result(STOP_EARLY)
        bar = _progress_bar(self.opts, self.start_epoch, self.ctx.is_main)
        reason, detail = STOP_MAX_EPOCHS, ""
        epoch = self.complete = self.start_epoch
        every = opts.checkpoint_every or 1
        try:
            while epoch < opts.epochs:
                epoch += 1
                t0 = time.perf_counter()
                lr = float(self.opt.param_groups[0]["lr"])
                train_nll, nonfinite = self._train_epoch(epoch)
                val = (math.nan, [math.nan] * self.members) if nonfinite else self._validate()
                record = self._record(epoch, train_nll, val, lr, t0)
                s.history.append(record)
                code = 3 if nonfinite else self._end_epoch(epoch, record)
                code = _dist.broadcast_int(self.ctx, code, self._cdev)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(
                        train=f"{record['train_nll']:.4g}", val=f"{val[0]:.4g}", lr=f"{lr:.2g}"
                    )
                if code == 3:
                    reason = STOP_NON_FINITE
                    detail = (
                        f"{opts.max_nonfinite_batches} consecutive minibatches gave a non-finite "
                        f"loss or gradient in epoch {epoch}; restored the weights of epoch "
                        f"{s.best_epoch}. Try a lower lr or clip_grad_norm, or a model with a "
                        "larger min_scale."
                    )
                    warnings.warn(detail, RuntimeWarning, stacklevel=5)
                    break
                if code:
                    reason = STOP_CODES[code]
                    break
                if epoch % every == 0 and epoch < opts.epochs:
                    self._save(epoch)
            self._save(epoch, finished=reason)
        except KeyboardInterrupt:
            reason = STOP_INTERRUPTED
            detail = f"interrupted in epoch {epoch}; restored the weights of epoch {s.best_epoch}"
            if self.complete == epoch:  # between epochs: the state is consistent, keep it
                self._save(epoch)
            warnings.warn(detail, RuntimeWarning, stacklevel=5)
        finally:
            if bar is not None:
                bar.close()
        if self.skipped and reason != STOP_NON_FINITE:
            warnings.warn(
                f"skipped {self.skipped} minibatch(es) with a non-finite loss or gradient",
                RuntimeWarning,
                stacklevel=5,
            )
        self._finish(interrupted=reason == STOP_INTERRUPTED)
        return self._result(reason, detail)

    def _patience_exhausted(self) -> bool:
        patience = self.opts.patience
        return bool(self.val is not None and patience and self.state.bad_epochs >= patience)

    def _end_epoch(self, epoch: int, record: dict[str, Any]) -> int:
        """Updates best weights, scheduler and callbacks; returns a stop code (0 = go on)."""
        s = self.state
        if self.val is not None:
            metric = record["val_nll"]
            improved = metric < s.best_val
        else:  # no validation: the latest weights with a finite training loss are the best
            metric = record["train_nll"]
            improved = math.isfinite(metric)
        if improved:
            s.best_state = _ckpt.cpu_state(self.model)
            s.best_epoch, s.bad_epochs = epoch, 0
            if self.val is not None:
                s.best_val = metric
        else:
            s.bad_epochs += 1
        if isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.sched.step(metric if math.isfinite(metric) else math.inf)
        elif self.sched is not None:
            self.sched.step()
        # From here on the epoch's state is complete: an interrupt in a callback can checkpoint.
        self.complete = epoch
        stop = 1 if self._patience_exhausted() else 0
        for cb in self.opts.callbacks:
            if cb(epoch, dict(record)):
                stop = stop or 2
        return stop


def _adamw(
    params: list[nn.Parameter], lr: float, weight_decay: float, device: torch.device
) -> torch.optim.AdamW:
    """AdamW, with torch's fused kernel where it has one for the device.

    One kernel for all tensors instead of a loop over them, which matters for the small
    networks this library trains (RESULTS.md, "Speed").
    """
    if device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params):
        with contextlib.suppress(RuntimeError, ValueError):  # older torch, unsupported dtype
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def clip_members(
    params: list[nn.Parameter], members: int, max_norm: float, loss_ok: torch.Tensor
) -> tuple[torch.Tensor, int]:
    """Clips each member's gradient to ``max_norm``; returns which members may step.

    A member may step when its loss and its gradient norm are finite; any other member of a
    batched ensemble (every parameter has the leading member axis) gets a zero gradient (the
    optimizer step then leaves it alone but for weight decay), and the caller skips the step
    when no member may.

    Args:
        params: the trained parameters.
        members: ``M``.
        max_norm: the bound on each member's gradient norm (``inf``: none).
        loss_ok: (M,) whether each member's minibatch loss is finite.

    Returns:
        (M,) bool, and how many are true (the step's one host synchronization).
    """
    if members == 1:
        ok = torch.isfinite(nn.utils.clip_grad_norm_(params, max_norm)) & loss_ok
        return ok, int(ok)
    M = members
    grads = [p.grad for p in params if p.grad is not None]
    with torch.no_grad():
        sq = torch.stack([g.reshape(M, -1).square().sum(1) for g in grads]).sum(0)
        norm = sq.sqrt()  # (M,)
        ok = torch.isfinite(norm) & loss_ok
        factor = torch.where(ok, (max_norm / (norm + _NORM_EPS)).clamp(max=1.0), 0.0)
        for g in grads:
            g.mul_(factor.view(M, *([1] * (g.dim() - 1))))
        n_ok = int(ok.sum())
        if n_ok < M:  # 0 * inf is NaN: zero what is left of the members that may not step
            for g in grads:
                torch.nan_to_num_(g, nan=0.0, posinf=0.0, neginf=0.0)
    return ok, n_ok


def _progress_bar(opts: FitOptions, start_epoch: int, is_main: bool) -> Any:
    """A tqdm bar over epochs on stderr (rank 0 only), or None."""
    show = (sys.stderr.isatty() if opts.verbose is None else bool(opts.verbose)) and is_main
    if not show:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # tqdm is an optional extra: no bar without it
        return None
    return tqdm(
        total=opts.epochs,
        initial=start_epoch,
        desc="fit",
        unit="epoch",
        file=sys.stderr,
        dynamic_ncols=True,
    )
