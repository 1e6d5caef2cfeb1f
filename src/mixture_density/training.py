"""Maximum-likelihood training loop for conditional density models.

:func:`fit` trains any ``nn.Module`` that has ``loss(x, y[, mask])`` returning the negative
log-likelihood of every entry (preferred when present), or whose ``forward(x)`` returns a
``torch.distributions.Distribution``, such as :class:`~mixture_density.nn.MixtureDensityNetwork`
and the sequence model :class:`~mixture_density.rnn.MixtureDensityRNN`, with AdamW,
early stopping on validation NLL, atomic checkpoints with exact resume, noise regularization,
mixed precision, ``torch.compile`` and DistributedDataParallel. The same loop trains a batched
ensemble (a model with ``n_members``, see ``_ensemble.StackedMDN``).

The pieces live in private modules: the loop and its typed options in ``_loop``, the loss and
its mixed-precision/compile wrappers in ``_loss``, checkpoints in ``_checkpoint``, process groups
in ``_distributed`` and data sources (in-memory, DataLoader, streaming CSV) in ``_data``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from . import _distributed as _dist
from . import _env

# The constants are re-exported: callers name them through this module.
from ._loop import Trainer
from ._options import DEFAULT_CLIP_GRAD_NORM as DEFAULT_CLIP_GRAD_NORM
from ._options import LR_FACTOR as LR_FACTOR
from ._options import MIN_LR_FACTOR as MIN_LR_FACTOR
from ._options import STOP_CALLBACK as STOP_CALLBACK
from ._options import STOP_EARLY as STOP_EARLY
from ._options import STOP_INTERRUPTED as STOP_INTERRUPTED
from ._options import STOP_MAX_EPOCHS as STOP_MAX_EPOCHS
from ._options import STOP_NON_FINITE as STOP_NON_FINITE
from ._options import Callback, FitOptions, FitResult
from ._options import plateau_patience as plateau_patience

__all__ = ["FitResult", "fit"]


def fit(
    model: nn.Module,
    X: Any = None,
    y: Any = None,
    mask: Any = None,
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

    The loss of a minibatch is the mean NLL of its entries: ``model.loss(xb, yb).mean()``
    when the model has ``loss``, otherwise ``-model(xb).log_prob(yb).mean()``, with
    ``xb (B, ...)`` and ``yb (B, D)`` (sequences: ``(B, T, d)`` and ``(B, T, D)``, one entry
    per row and time step). With a ``mask``, the loss is the mean over the observed (row,
    step) entries only, and the model is asked for ``loss(xb, yb, mb)`` if its ``loss``
    takes a third argument (a model whose ``forward`` returns more than a distribution,
    such as an RNN's ``(mixture, state)``, must have ``loss``). On return the model holds the
    weights with the best validation NLL (or, without validation data, those of the last
    epoch with a finite training loss), stays on the training device, and has its original
    train/eval mode.

    Args:
        model: the conditional density model.
        X: inputs ``(n, d)`` or ``(n,)``, or sequences ``(n, T, d)`` (numpy or tensor); use
            with ``y``. Inputs and targets are assumed standardized
            (:class:`~mixture_density.MDNRegressor` does this).
        y: targets ``(n, D)`` or ``(n,)``, or sequences ``(n, T, D)``.
        mask: None (every entry observed) or ``(n, T)`` bool: which (row, step) entries of
            ``y`` are observed (padding of sequences of different lengths, missing values).
            ``y`` may then be ``(n, T)`` for one output, and hold anything (NaN included)
            where the mask is False; those entries are set to 0 and never scored. Training and
            validation NLLs in the history are per observed entry. A row without an observed
            entry adds nothing.
        train_data: instead of ``X, y``: a ``DataLoader`` (used as is), a map-style
            ``Dataset`` or an ``IterableDataset`` (e.g. ``CSVChunkDataset``) of ``(x, y)``
            pairs or ``(x, y, mask)`` triples.
        val_data: ``(X_val, y_val)``, ``(X_val, y_val, mask_val)``, a ``Dataset`` or a
            ``DataLoader``. Without it, a random ``val_fraction`` of the rows of ``X, y`` (and
            ``mask``), or of a map-style ``train_data``, is held out; a
            ``DataLoader``/``IterableDataset`` gets no validation.
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
    opts = FitOptions(
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        weight_decay=weight_decay,
        lr_schedule=lr_schedule,
        clip_grad_norm=clip_grad_norm,
        patience=patience,
        noise_regularization=noise_regularization,
        val_fraction=val_fraction,
        checkpoint_path=os.fspath(checkpoint_path) if checkpoint_path else None,
        checkpoint_every=checkpoint_every,
        resume=resume,
        seed=seed,
        verbose=verbose,
        precision=precision,
        compile=compile,
        callbacks=tuple(callbacks or ()),
        max_nonfinite_batches=max_nonfinite_batches,
    )
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("model has no trainable parameters")
    dev = _env.resolve_device(device)
    ctx = _dist.setup(distributed, use_cuda=dev.type == "cuda")
    try:
        if ctx.enabled and dev.type == "cuda":
            torch.cuda.set_device(dev)
        fork_devices = [dev.index or 0] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=fork_devices):
            result: FitResult = Trainer(model, dev, ctx, opts).run(X, y, train_data, val_data, mask)
            return result
    except RuntimeError as exc:
        if not ctx.enabled:
            raise
        # Collective failures (gloo's "Connection reset by peer", timeouts) are RuntimeErrors
        # whose text does not say where to look; name this rank and the likely cause.
        raise RuntimeError(
            f"fit failed on rank {ctx.rank} of {ctx.world_size} during distributed training: "
            f"{type(exc).__name__}: {exc}\nIf another rank died or stalled, this error is the "
            f"consequence: check that rank's log. Collectives time out after {ctx.timeout_s:g} s "
            f"(set {_env.TIMEOUT_ENV} to change it)."
        ) from exc
    finally:
        _dist.teardown(ctx)
