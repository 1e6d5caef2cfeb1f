"""Maximum-likelihood training loop for conditional density models.

:func:`fit` trains any ``nn.Module`` whose ``forward(x)`` returns a
``torch.distributions.Distribution`` (or that has ``loss(x, y) -> (B,)`` negative
log-likelihoods), such as :class:`~mixture_density.nn.MixtureDensityNetwork`, with AdamW,
early stopping on validation NLL, atomic checkpoints with exact resume, noise regularization,
mixed precision, ``torch.compile`` and DistributedDataParallel.

The pieces live in private modules: the loss and its mixed-precision/compile wrappers in
``_loss``, checkpoints in ``_checkpoint``, process groups in ``_distributed`` and data sources
(in-memory, DataLoader, streaming CSV) in ``_data``.
"""

from __future__ import annotations

import contextlib
import math
import os
import secrets
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from . import _checkpoint as _ckpt
from . import _distributed as _dist
from ._data import build_sources
from ._loss import FallbackLoss, LossModule, batch_sum

__all__ = ["FitResult", "fit"]

Callback = Callable[[int, dict[str, float]], "bool | None"]

#: Stop reasons reported in :attr:`FitResult.stop_reason`.
STOP_MAX_EPOCHS = "max_epochs"
STOP_EARLY = "early_stopping"
STOP_CALLBACK = "callback"
STOP_INTERRUPTED = "interrupted"
STOP_NON_FINITE = "non_finite"
_STOP_CODES = {1: STOP_EARLY, 2: STOP_CALLBACK, 3: STOP_NON_FINITE}

# The "plateau" schedule (shared with the batched ensemble in ``_ensemble``): multiply the rate
# by LR_FACTOR after ``plateau_patience(patience)`` epochs without a better validation NLL,
# never below ``lr * MIN_LR_FACTOR``.
LR_FACTOR = 0.5
MIN_LR_FACTOR = 1e-3
# Gradient-norm bound by default: it tames the large gradients of components whose variance
# collapses onto a few targets.
DEFAULT_CLIP_GRAD_NORM = 10.0


def plateau_patience(patience: int | None) -> int:
    """Epochs without improvement before the plateau schedule lowers the rate."""
    return max(1, patience // 4) if patience else 5


@dataclass
class FitResult:
    """What :func:`fit` did.

    Attributes:
        history: one record per epoch with keys ``epoch`` (1-based), ``train_nll`` (mean
            per-sample NLL over the epoch's minibatches, with noise regularization and dropout
            active), ``val_nll`` (NaN without validation data), ``lr`` (learning rate used
            during the epoch) and ``seconds`` (wall time).
        best_epoch: epoch whose weights the model holds on return (0 = the initial weights).
        best_val_nll: validation NLL of those weights (NaN without validation data).
        stop_reason: ``"max_epochs"``, ``"early_stopping"``, ``"callback"``,
            ``"interrupted"`` (KeyboardInterrupt) or ``"non_finite"`` (see ``detail``).
        epochs_run: epochs completed in total, including those before a resume.
        detail: human-readable explanation for ``"non_finite"`` and ``"interrupted"``.
    """

    history: list[dict[str, float]]
    best_epoch: int
    best_val_nll: float
    stop_reason: str
    epochs_run: int
    detail: str = field(default="")


# --------------------------------------------------------------------------- argument checks


def _noise_stds(spec: Any, n: int | None, d: int) -> tuple[float, float]:
    """``(std_x, std_y)`` for ``noise_regularization``; ``"auto"`` is h = n^(-1/(4+d))."""
    if spec is None:
        return 0.0, 0.0
    if isinstance(spec, str):
        if spec != "auto":
            raise ValueError(
                f"noise_regularization must be None, a float, a pair or 'auto', got {spec!r}"
            )
        if n is None:
            raise ValueError(
                "noise_regularization='auto' needs the number of training rows, but train_data "
                "has no len(); pass explicit (std_x, std_y)"
            )
        h = float(n) ** (-1.0 / (4 + d))
        return h, h
    if isinstance(spec, (int, float)):
        stds = (float(spec), float(spec))
    elif isinstance(spec, Sequence) and len(spec) == 2:
        stds = (float(spec[0]), float(spec[1]))
    else:
        raise ValueError(
            f"noise_regularization must be None, a float, a pair or 'auto', got {spec!r}"
        )
    if not all(math.isfinite(s) and s >= 0 for s in stds):
        raise ValueError(f"noise_regularization stds must be finite and >= 0, got {stds}")
    return stds


def _check_args(**kw: Any) -> None:
    def positive_int(name: str, allow_none: bool = False) -> None:
        v = kw[name]
        if v is None and allow_none:
            return
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")

    positive_int("epochs")
    positive_int("batch_size")
    positive_int("patience", allow_none=True)
    positive_int("checkpoint_every", allow_none=True)
    positive_int("max_nonfinite_batches")
    if not (isinstance(kw["lr"], (int, float)) and kw["lr"] > 0):
        raise ValueError(f"lr must be a positive number, got {kw['lr']!r}")
    if not (isinstance(kw["weight_decay"], (int, float)) and kw["weight_decay"] >= 0):
        raise ValueError(f"weight_decay must be >= 0, got {kw['weight_decay']!r}")
    if not (isinstance(kw["val_fraction"], (int, float)) and 0 <= kw["val_fraction"] < 1):
        raise ValueError(f"val_fraction must be in [0, 1), got {kw['val_fraction']!r}")
    clip = kw["clip_grad_norm"]
    if clip is not None and not (isinstance(clip, (int, float)) and clip > 0):
        raise ValueError(f"clip_grad_norm must be None or > 0, got {clip!r}")
    if kw["lr_schedule"] not in ("plateau", "cosine", "none"):
        raise ValueError(
            f"lr_schedule must be 'plateau', 'cosine' or 'none', got {kw['lr_schedule']!r}"
        )
    if kw["precision"] not in ("32", "bf16", "fp16"):
        raise ValueError(f"precision must be '32', 'bf16' or 'fp16', got {kw['precision']!r}")
    if kw["resume"] and kw["checkpoint_path"] is None:
        raise ValueError("resume=True needs checkpoint_path")
    for cb in kw["callbacks"] or ():
        if not callable(cb):
            raise TypeError(
                f"callbacks must be callables (epoch, record) -> bool | None, got {cb!r}"
            )


# --------------------------------------------------------------------------- fit


def fit(
    model: nn.Module,
    X: Any = None,
    y: Any = None,
    *,
    train_data: Any = None,
    val_data: Any = None,
    val_fraction: float = 0.1,
    epochs: int = 200,
    batch_size: int = 128,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    lr_schedule: str = "plateau",
    clip_grad_norm: float | None = DEFAULT_CLIP_GRAD_NORM,
    patience: int | None = 20,
    noise_regularization: float | tuple[float, float] | str | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    checkpoint_every: int | None = None,
    resume: bool = False,
    seed: int | None = None,
    verbose: bool | None = None,
    device: str | torch.device = "auto",
    distributed: bool | None = None,
    precision: str = "32",
    compile: bool = False,
    callbacks: Sequence[Callback] | None = None,
    max_nonfinite_batches: int = 20,
) -> FitResult:
    """Trains ``model`` by minimizing the mean negative log-likelihood; in place.

    The loss of a minibatch is ``model.loss(xb, yb).mean()`` when the model has ``loss``,
    otherwise ``-model(xb).log_prob(yb).mean()``, with ``xb (B, ...)`` and ``yb (B, D)``.
    On return the model holds the weights with the best validation NLL (or, without
    validation data, those of the last epoch with a finite training loss), stays on the
    training device, and has its original train/eval mode.

    Args:
        model: the conditional density model.
        X: inputs ``(n, d)`` or ``(n,)`` (numpy or tensor); use with ``y``. Inputs and targets
            are assumed standardized (:class:`~mixture_density.MDNRegressor` does this).
        y: targets ``(n, D)`` or ``(n,)``.
        train_data: instead of ``X, y``: a ``DataLoader`` (used as is), a map-style
            ``Dataset`` or an ``IterableDataset`` (e.g. ``CSVChunkDataset``) of ``(x, y)``.
        val_data: ``(X_val, y_val)``, a ``Dataset`` or a ``DataLoader``. Without it, a
            random ``val_fraction`` of ``X, y`` (or of a map-style ``train_data``) is held out;
            a ``DataLoader``/``IterableDataset`` gets no validation.
        val_fraction: share held out for validation; 0 disables validation, early stopping
            and best-weight selection (the last good weights are kept).
        epochs: maximum number of passes over the training data.
        batch_size: global minibatch size (under DDP each rank uses
            ``batch_size // world_size`` rows; a user ``DataLoader`` keeps its own size).
        lr: AdamW learning rate.
        weight_decay: AdamW decoupled weight decay. 0 by default: it shrinks the head's
            scale parameters too, and Rothfuss et al. (2019) found it weaker than noise.
        lr_schedule: ``"plateau"`` (halve the rate after ``max(1, patience // 4)`` epochs,
            or 5 without patience, of no improvement in validation NLL, or training NLL
            without validation), ``"cosine"`` (anneal to 0 over ``epochs``) or ``"none"``.
        clip_grad_norm: maximum global gradient norm (None: no clipping). The default 10
            tames the large gradients of components with collapsing variances.
        patience: stop after this many epochs without a lower validation NLL (None: never).
        noise_regularization: Gaussian noise added to every training minibatch (Rothfuss et
            al., 2019): ``None`` (off), ``s`` (std ``s`` for x and y), ``(std_x, std_y)``, or
            ``"auto"``: ``h = n^(-1/(4 + d))`` for both, ``n`` training rows and
            ``d = dim_x + dim_y``, the Scott/Silverman-type rule of thumb that the paper
            evaluates among its noise schedules; it shrinks as ``n`` grows, as the paper's
            consistency result requires. Stds are in the units of the data, which are
            assumed standardized; validation data get no noise.
        checkpoint_path: file for checkpoints (model, optimizer, scheduler, RNG states,
            early-stopping state, history). Written atomically by rank 0 only.
        checkpoint_every: epochs between checkpoints (None: every epoch when
            ``checkpoint_path`` is set). A checkpoint is also written when training ends and
            when a KeyboardInterrupt arrives between epochs.
        resume: continue from ``checkpoint_path`` if the file exists (otherwise start fresh).
            With the same arguments the result equals an uninterrupted run bit for bit (in
            one process; under DDP, the dropout RNG of ranks > 0 is reseeded).
        seed: seed of the validation split, shuffling, noise and dropout (None: a random
            seed, stored in checkpoints so that ``resume`` reproduces the split). The global
            RNG state is restored on return.
        verbose: tqdm progress bar over epochs (tqdm is optional). None: only when stderr
            is a terminal. Only rank 0 shows progress.
        device: ``"auto"`` (CUDA if available, else CPU), or any torch device. The model and
            each batch are moved there.
        distributed: None: DistributedDataParallel when launched by ``torchrun`` with
            ``WORLD_SIZE > 1`` (or a process group is initialized); True: required; False: off.
            A new group uses gloo on CPU and nccl on CUDA with a timeout of
            ``MIXTURE_DENSITY_DIST_TIMEOUT`` seconds (default 600), so a dead peer raises
            rather than hangs. Losses are averaged over ranks, so all ranks take the same
            early-stopping decisions and end with identical weights. A group created here is
            destroyed on return.
        precision: ``"32"``, ``"bf16"`` or ``"fp16"`` (autocast; fp16 adds a gradient
            scaler). A model with ``backbone`` and ``head`` runs only its backbone under
            autocast; the head and the log-likelihood stay in the model's dtype. Other models
            run entirely under autocast and only their loss is cast back.
        compile: wrap the loss computation in ``torch.compile``; if compiling fails, warn
            once and continue eagerly.
        callbacks: callables ``(epoch, record) -> bool | None`` run after each epoch on
            every rank; returning True stops training (rank 0 decides under DDP).
        max_nonfinite_batches: after this many consecutive minibatches with a non-finite loss
            or gradient (each is skipped), restore the last good weights and stop with
            ``stop_reason="non_finite"``.

    Returns:
        :class:`FitResult`. A KeyboardInterrupt does not propagate: the best weights so far
        are restored, ``stop_reason`` is ``"interrupted"`` and a warning is issued.

    Raises:
        ValueError: invalid arguments or data (mismatched lengths, NaN/inf, empty data).
        TypeError: unsupported data types.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> class Gauss(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.net = nn.Linear(1, 2)
        ...     def forward(self, x):
        ...         loc, log_scale = self.net(x).chunk(2, dim=-1)
        ...         return torch.distributions.Independent(
        ...             torch.distributions.Normal(loc, log_scale.exp()), 1)
        >>> x = torch.randn(256, 1)
        >>> result = fit(Gauss(), x, 2 * x + 0.1 * torch.randn(256, 1), epochs=5, seed=0,
        ...              verbose=False)
        >>> len(result.history), result.stop_reason
        (5, 'max_epochs')
    """
    _check_args(
        epochs=epochs,
        batch_size=batch_size,
        patience=patience,
        checkpoint_every=checkpoint_every,
        max_nonfinite_batches=max_nonfinite_batches,
        lr=lr,
        weight_decay=weight_decay,
        val_fraction=val_fraction,
        clip_grad_norm=clip_grad_norm,
        lr_schedule=lr_schedule,
        precision=precision,
        resume=resume,
        checkpoint_path=checkpoint_path,
        callbacks=callbacks,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _dist.resolve_device(device, local_rank)
    ctx = _dist.setup(distributed, use_cuda=dev.type == "cuda")
    try:
        if ctx.enabled and dev.type == "cuda":
            torch.cuda.set_device(dev)
        fork_devices = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            return _Run(model, dev, ctx, locals()).run(X, y, train_data, val_data)
    except RuntimeError as exc:
        if not ctx.enabled:
            raise
        # Collective failures (gloo's "Connection reset by peer", timeouts) are RuntimeErrors
        # whose text does not say where to look; name this rank and the likely cause.
        raise RuntimeError(
            f"fit failed on rank {ctx.rank} of {ctx.world_size} during distributed training: "
            f"{type(exc).__name__}: {exc}\nIf another rank died or stalled, this error is the "
            f"consequence: check that rank's log. Collectives time out after {ctx.timeout_s:g} s "
            f"(set {_dist.TIMEOUT_ENV} to change it)."
        ) from exc
    finally:
        _dist.teardown(ctx)


class _Run:
    """State of one :func:`fit` call; methods are the phases of the loop."""

    def __init__(
        self, model: nn.Module, device: torch.device, ctx: _dist.DistContext, args: dict[str, Any]
    ) -> None:
        self.model, self.device, self.ctx, self.a = model, device, ctx, args
        self.ckpt_path = os.fspath(args["checkpoint_path"]) if args["checkpoint_path"] else None
        self.ckpt_every = args["checkpoint_every"] or 1
        self.callbacks = list(args["callbacks"] or ())
        self.was_training = model.training

    # -- set-up ---------------------------------------------------------------------------
    def _load_checkpoint(self) -> dict[str, Any] | None:
        if not (self.a["resume"] and self.ckpt_path):
            return None
        return _ckpt.load(self.ckpt_path, self.ctx, self._cdev)

    @property
    def _cdev(self) -> torch.device:
        # Collectives run on the device the backend expects: nccl needs CUDA tensors.
        return self.device if self.device.type == "cuda" else torch.device("cpu")

    def run(self, X: Any, y: Any, train_data: Any, val_data: Any) -> FitResult:
        a, ctx = self.a, self.ctx
        model = self.model.to(self.device)
        self.dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
        ckpt = self._load_checkpoint()
        seed = a["seed"]
        if ckpt is not None:
            if seed is not None and seed != ckpt["seed"]:
                warnings.warn(
                    f"resume: using the checkpoint's seed {ckpt['seed']}, not seed={seed}",
                    stacklevel=3,
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

        per_rank = a["batch_size"] // ctx.world_size
        if per_rank < 1:
            raise ValueError(
                f"batch_size={a['batch_size']} is smaller than the world size {ctx.world_size}"
            )
        self.train, self.val = build_sources(
            X,
            y,
            train_data,
            val_data,
            a["val_fraction"],
            per_rank,
            ctx,
            self.seed,
            self.gen,
            self.dtype,
            self.device,
        )
        self.noise_spec = a["noise_regularization"]
        self.noise: tuple[float, float] | None = None
        if self.noise_spec is not None:
            _noise_stds(self.noise_spec, 1, 1)  # validate the spec before any training

        self.opt = torch.optim.AdamW(model.parameters(), lr=a["lr"], weight_decay=a["weight_decay"])
        self.sched: Any = None
        if a["lr_schedule"] == "plateau":
            self.sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
                self.opt,
                mode="min",
                factor=LR_FACTOR,
                patience=plateau_patience(a["patience"]),
                min_lr=a["lr"] * MIN_LR_FACTOR,
            )
        elif a["lr_schedule"] == "cosine":
            self.sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.opt, T_max=a["epochs"])
        amp = {"32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[a["precision"]]
        self.scaler = torch.amp.GradScaler(self.device.type) if amp is torch.float16 else None
        self.objects = _ckpt.Checkpointable(
            model, self.opt, self.sched, self.scaler, self.gen, self.noise_gen, self.device
        )

        self.history: list[dict[str, float]] = []
        self.start_epoch = 0
        self.best_state = _ckpt.cpu_state(model)
        self.best_epoch, self.best_val, self.bad_epochs = 0, math.inf, 0
        self.finished: str | None = None
        self.skipped = 0  # minibatches skipped for a non-finite loss or gradient
        if ckpt is not None:
            self._restore(ckpt)

        loss_module = LossModule(model, amp, self.device.type)
        self.eval_loss: Callable[..., torch.Tensor] = loss_module
        wrapped: nn.Module = loss_module
        if ctx.enabled:
            wrapped = nn.parallel.DistributedDataParallel(
                loss_module, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        self.ddp = wrapped if ctx.enabled else None
        self.train_loss: Callable[..., torch.Tensor] = wrapped
        if a["compile"]:
            self.train_loss = FallbackLoss(torch.compile(wrapped, dynamic=False), wrapped)
        return self._loop()

    def _restore(self, ckpt: dict[str, Any]) -> None:
        n_val = self.val and self.val.n_rows
        _ckpt.check_same_data(ckpt, str(self.ckpt_path), self.train.n_rows, n_val)
        self.objects.load_state_dict(ckpt)
        self.history = list(ckpt["history"])
        self.start_epoch = int(ckpt["epoch"])
        self.best_state = ckpt["best_state"]
        self.best_epoch, self.best_val = int(ckpt["best_epoch"]), float(ckpt["best_val_nll"])
        self.bad_epochs = int(ckpt["bad_epochs"])
        self.finished = ckpt.get("finished")
        self.noise = ckpt.get("noise")

    def _save(self, epoch: int, finished: str | None = None) -> None:
        if not (self.ckpt_path and self.ctx.is_main):
            return
        progress = {
            "epoch": epoch,
            "best_state": self.best_state,
            "best_epoch": self.best_epoch,
            "best_val_nll": self.best_val,
            "bad_epochs": self.bad_epochs,
            "history": self.history,
            "seed": self.seed,
            "n_train": self.train.n_rows,
            "n_val": self.val.n_rows if self.val else None,
            "noise": self.noise,
            "finished": finished,
        }
        _ckpt.save(self.ckpt_path, self.objects, progress)

    # -- one epoch ------------------------------------------------------------------------
    def _to_device(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        xb = xb.to(self.device, non_blocking=True)
        if xb.is_floating_point():
            xb = xb.to(self.dtype)
        return xb, yb.to(self.device, dtype=self.dtype, non_blocking=True)

    def _add_noise(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.noise is None:
            d = int(np.prod(xb.shape[1:])) + int(yb.shape[-1])
            self.noise = _noise_stds(self.noise_spec, self.train.n_rows, d)
        sx, sy = self.noise
        if sx > 0 and xb.is_floating_point():
            xb = xb + sx * torch.randn(
                xb.shape, generator=self.noise_gen, device=xb.device, dtype=xb.dtype
            )
        if sy > 0:
            yb = yb + sy * torch.randn(
                yb.shape, generator=self.noise_gen, device=yb.device, dtype=yb.dtype
            )
        return xb, yb

    def _train_epoch(self, epoch: int) -> tuple[float, bool]:
        """Returns (mean train NLL, whether the non-finite limit was hit).

        Every skip decision depends only on the gradient norm, which DDP has averaged over
        ranks, so all ranks skip the same steps without an extra collective. A non-finite
        loss on one rank is turned into NaN gradients (times NaN instead of 1) to make that so.
        """
        self.model.train()
        clip = self.a["clip_grad_norm"] or math.inf
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        count, streak = 0, 0
        uneven = self.ddp is not None and not self.train.even
        # Ranks with fewer batches shadow DDP's all-reduces instead of hanging (uneven inputs).
        join = self.ddp.join() if uneven else contextlib.nullcontext()  # type: ignore[union-attr,operator]
        with join:
            for xb, yb in self.train.batches(self.gen, epoch):
                xb, yb = self._to_device(xb, yb)
                if self.noise_spec is not None:
                    xb, yb = self._add_noise(xb, yb)
                self.opt.zero_grad(set_to_none=True)
                nll = self.train_loss(xb, yb)
                loss = nll.mean()
                guard = torch.where(torch.isfinite(loss.detach()), 1.0, math.nan).to(loss.dtype)
                guarded = loss * guard
                (self.scaler.scale(guarded) if self.scaler else guarded).backward()
                if self.scaler is not None:
                    self.scaler.unscale_(self.opt)
                norm = nn.utils.clip_grad_norm_(self.model.parameters(), clip)
                bad = not bool(torch.isfinite(norm))
                if self.scaler is not None:
                    # The scaler skips overflowing steps itself and halves its scale; only a
                    # streak that has already driven the scale below 1 counts as divergence.
                    self.scaler.step(self.opt)
                    self.scaler.update()
                    streak = streak + 1 if bad and self.scaler.get_scale() < 1.0 else 0
                elif bad:
                    streak += 1
                    self.skipped += 1
                else:
                    streak = 0
                    self.opt.step()
                if streak >= self.a["max_nonfinite_batches"]:
                    return (total.item() / count if count else math.nan), True
                if not bad:
                    total += batch_sum(nll.detach(), xb.shape[0]).to(torch.float64)
                    count += xb.shape[0]
        s, c = _dist.all_sum(self.ctx, [total.item(), float(count)], self._cdev)
        return (s / c if c else math.nan), False

    @torch.no_grad()
    def _validate(self) -> float:
        if self.val is None:
            return math.nan
        self.model.eval()
        total, count = 0.0, 0
        for xb, yb in self.val.batches(self.gen, 0):
            xb, yb = self._to_device(xb, yb)
            total += float(batch_sum(self.eval_loss(xb, yb), xb.shape[0]).to(torch.float64))
            count += xb.shape[0]
        s, c = _dist.all_sum(self.ctx, [total, float(count)], self._cdev)
        return s / c if c else math.nan

    # -- the loop ---------------------------------------------------------------------------
    def _progress(self) -> Any:
        verbose = self.a["verbose"]
        show = (sys.stderr.isatty() if verbose is None else bool(verbose)) and self.ctx.is_main
        if not show:
            return None
        try:
            from tqdm.auto import tqdm
        except ImportError:  # tqdm is an optional extra: no bar without it
            return None
        return tqdm(
            total=self.a["epochs"],
            initial=self.start_epoch,
            desc="fit",
            unit="epoch",
            file=sys.stderr,
            dynamic_ncols=True,
        )

    def _result(self, reason: str, detail: str = "") -> FitResult:
        return FitResult(
            self.history,
            self.best_epoch,
            self.best_val if self.val is not None else math.nan,
            reason,
            len(self.history),
            detail,
        )

    def _finish(self) -> None:
        self.model.load_state_dict(self.best_state)
        _dist.broadcast_module(self.ctx, self.model)
        self.model.train(self.was_training)

    def _loop(self) -> FitResult:
        a = self.a
        if self.finished is not None and (
            self.finished != STOP_MAX_EPOCHS or self.start_epoch >= a["epochs"]
        ):
            self._finish()
            return self._result(self.finished)
        if self._patience_exhausted():  # interrupted after the epoch that exhausted patience
            self._finish()
            return self._result(STOP_EARLY)
        bar = self._progress()
        reason, detail = STOP_MAX_EPOCHS, ""
        epoch = self.complete = self.start_epoch
        try:
            while epoch < a["epochs"]:
                epoch += 1
                t0 = time.perf_counter()
                lr = float(self.opt.param_groups[0]["lr"])
                train_nll, nonfinite = self._train_epoch(epoch)
                val_nll = math.nan if nonfinite else self._validate()
                record = {
                    "epoch": float(epoch),
                    "train_nll": train_nll,
                    "val_nll": val_nll,
                    "lr": lr,
                    "seconds": time.perf_counter() - t0,
                }
                self.history.append(record)
                code = 3 if nonfinite else self._end_epoch(epoch, record)
                code = _dist.broadcast_int(self.ctx, code, self._cdev)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(train=f"{train_nll:.4g}", val=f"{val_nll:.4g}", lr=f"{lr:.2g}")
                if code == 3:
                    reason = STOP_NON_FINITE
                    detail = (
                        f"{a['max_nonfinite_batches']} consecutive minibatches gave a non-finite "
                        f"loss or gradient in epoch {epoch}; restored the weights of epoch "
                        f"{self.best_epoch}. Try a lower lr or clip_grad_norm, or a model with a "
                        "larger min_scale."
                    )
                    warnings.warn(detail, RuntimeWarning, stacklevel=4)
                    break
                if code:
                    reason = _STOP_CODES[code]
                    break
                if epoch % self.ckpt_every == 0 and epoch < a["epochs"]:
                    self._save(epoch)
            self._save(epoch, finished=reason)
        except KeyboardInterrupt:
            reason = STOP_INTERRUPTED
            detail = (
                f"interrupted in epoch {epoch}; restored the weights of epoch {self.best_epoch}"
            )
            if self.complete == epoch:  # between epochs: the state is consistent, keep it
                self._save(epoch)
            warnings.warn(detail, RuntimeWarning, stacklevel=4)
        finally:
            if bar is not None:
                bar.close()
        if self.skipped and reason != STOP_NON_FINITE:
            warnings.warn(
                f"skipped {self.skipped} minibatch(es) with a non-finite loss or gradient",
                RuntimeWarning,
                stacklevel=4,
            )
        self._finish()
        return self._result(reason, detail)

    def _patience_exhausted(self) -> bool:
        patience = self.a["patience"]
        return bool(self.val is not None and patience and self.bad_epochs >= patience)

    def _end_epoch(self, epoch: int, record: dict[str, float]) -> int:
        """Updates best weights, scheduler and callbacks; returns a stop code (0 = go on)."""
        if self.val is not None:
            metric = record["val_nll"]
            improved = metric < self.best_val
        else:  # no validation: the latest weights with a finite training loss are the best
            metric = record["train_nll"]
            improved = math.isfinite(metric)
        if improved:
            self.best_state = _ckpt.cpu_state(self.model)
            self.best_epoch, self.bad_epochs = epoch, 0
            if self.val is not None:
                self.best_val = metric
        else:
            self.bad_epochs += 1
        if isinstance(self.sched, torch.optim.lr_scheduler.ReduceLROnPlateau):
            self.sched.step(metric if math.isfinite(metric) else math.inf)
        elif self.sched is not None:
            self.sched.step()
        # From here on the epoch's state is complete: an interrupt in a callback can checkpoint.
        self.complete = epoch
        stop = 1 if self._patience_exhausted() else 0
        for cb in self.callbacks:
            if cb(epoch, dict(record)):
                stop = stop or 2
        return stop
