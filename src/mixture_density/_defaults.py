"""What a fit uses when the estimator's parameters say ``"auto"``: rules in the data size.

``MDNRegressor()`` must work from 30 rows to millions. Its training budget is counted in
optimizer steps, not epochs, and its model follows the number of training rows ``n``:

* **Batch size** ``B = clip(2^floor(log2(n / 8)), 16, 128)``: 16 rows up to 255 training
  rows, then 32, 64 and from 1,024 rows 128. A small set still gets 8 to 16 steps per pass
  over it; a large one keeps the batch that the UCI defaults were chosen with. (On this
  library's networks a step costs about the same from 16 to 64 rows, so on a few hundred
  rows a batch of 32-64 halves the time of a batch of 16 for the same NLL, RESULTS.md.)
* **Epochs** ``max(200, ceil(S / steps_per_epoch))``: at least 200 passes and at least
  ``S = MAX_STEPS * min(1, STEP_ROWS / n)`` optimizer steps, with ``MAX_STEPS = 5000`` and
  ``STEP_ROWS = 500``: 5,000 steps up to 500 rows (an 80-row set would otherwise stop after
  a few hundred), fewer above, where every step averages more rows and 200 passes hold
  enough steps (from about 900 rows the 200 passes decide).
* **Learning rate** 1e-2 (Adam) at every batch size. ``lr="auto"`` scales it with the batch,
  ``1e-2 * B / 128`` (the linear rule of Goyal et al., 2017); on the four small tuning sets
  of ``benchmarks/sizes.py`` that scaled rate was worse (5 networks of ``K = 5``, batch 16:
  0.29 against 0.15 nats above the best baseline on average), so it is an option only.
* **Patience** ``max(30, ceil(PATIENCE_STEPS / steps_per_epoch))`` epochs with
  ``PATIENCE_STEPS = 500``: early stopping waits at least 500 steps, and at least 30 passes.
* **Validation rows** ``floor(val_fraction * n)`` (10%, the estimator's ``val_fraction``):
  they drive early stopping and the members' weights. With few of them (``n < 50``) the
  stopping is noisy but the step budget bounds it; with none (``n < 10``) every epoch runs
  and the members are weighted equally.
* **Noise regularization** (the default ``noise_regularization="small_n"``): Gaussian noise
  of standard deviation ``0.3 * (50 / n)^2`` on the standardized inputs and targets of
  every batch (Rothfuss et al., 2019), at most 0.3 and none from ``NOISE_ROWS = 200``
  training rows on (where the validation split has 20 rows or more); off for grid,
  bounded, censored or partly missing targets. On 30 to 50 rows the validation split is a
  handful of rows and cannot stop a fit before its components collapse onto the training
  points (kin8nm, 30 rows: test NLL 6.2 without, 0.15 with noise 0.3); from a few hundred
  rows on, noise blurs sharp functions (UCI Yacht, 249 training rows: +0.27 nats at std
  0.012, +1.2 at 0.05), hence the fast decay and the cut.
* **Members and components.** See :func:`member_components`: below 2,049 training rows the
  default ensemble has single-Gaussian networks next to the 5-component ones, weighted by
  their validation likelihood: five of each below 200 rows, three of each from 200 rows.

From 2,049 training rows on (17 steps of 128 per epoch) the plan is the former fixed
defaults: batch 128, 200 epochs, patience 30, five networks of ``K = 5``; the number of
steps, and so the time, stays linear in ``n``.

Each number that a fit resolved is recorded in the estimator's ``plan_`` (a :class:`Plan`)
and printed by ``mdn fit``. An integer parameter is used as given.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "AUTO",
    "SMALL_N",
    "Plan",
    "member_components",
    "noise_level",
    "resolve",
    "step_budget",
]

AUTO = "auto"
#: The estimator's default ``noise_regularization``: the rule of :func:`noise_level`.
SMALL_N = "small_n"
#: Noise standard deviation (standardized units) at ``NOISE_REF_ROWS`` rows and below; it
#: decays as ``(NOISE_REF_ROWS / n)^2`` and is zero from ``NOISE_ROWS`` training rows on.
NOISE_STD, NOISE_REF_ROWS, NOISE_ROWS = 0.3, 50, 200
#: Batch size bounds of the rule (rows per optimizer step).
MIN_BATCH, MAX_BATCH = 16, 128
#: Rows per step at which the rule reaches each batch size: ``B = n / BATCH_DIVISOR``.
BATCH_DIVISOR = 8
#: Training budget in optimizer steps up to ``STEP_ROWS`` training rows (it falls as
#: ``1 / n`` above), and the epoch count it never goes below.
MAX_STEPS, STEP_ROWS, MIN_EPOCHS = 5000, 500, 200
#: Early stopping waits at least this many steps and this many epochs.
PATIENCE_STEPS, PATIENCE_EPOCHS = 500, 30
#: The learning rate at the largest batch size; smaller batches scale it down linearly.
LEARNING_RATE = 1e-2
#: Components of a member in the default ensemble.
COMPONENTS = 5
#: Networks in the default ensemble (of each kind below ``MIXED_ROWS`` training rows; of each
#: kind ``MID_MEMBERS`` from ``NOISE_ROWS`` rows, where the validation split holds 20 rows
#: or more and the spread between fits is smaller).
MEMBERS, MID_MEMBERS = 5, 3
#: Below this many training rows the default ensemble mixes single Gaussians in; from here
#: on (17 steps of 128 per epoch, so patience is 30 epochs) the plan is the former defaults.
MIXED_ROWS = 2049


@dataclass(frozen=True)
class Plan:
    """The numbers one fit used (see the module docstring for the rules).

    Attributes:
        n_train: training rows (after the validation split).
        batch_size: rows per optimizer step.
        epochs: the maximum number of passes over the training rows.
        patience: epochs without a better validation NLL before stopping (None: never).
        member_components: ``K`` of each network of the ensemble.
        lr: the learning rate.
        noise: noise regularization standard deviation of the ``"small_n"`` rule (None:
            the rule is not in use or gives none).
    """

    n_train: int
    batch_size: int
    epochs: int
    patience: int | None
    member_components: tuple[int, ...]
    lr: float = LEARNING_RATE
    noise: float | None = None

    @property
    def n_estimators(self) -> int:
        return len(self.member_components)

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.batch_size)

    def to_config(self) -> dict[str, Any]:
        config = asdict(self)
        config["member_components"] = list(self.member_components)
        return config

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> Plan:
        return cls(
            n_train=int(config["n_train"]),
            batch_size=int(config["batch_size"]),
            epochs=int(config["epochs"]),
            patience=None if config["patience"] is None else int(config["patience"]),
            member_components=tuple(int(k) for k in config["member_components"]),
            lr=float(config.get("lr", LEARNING_RATE)),
            noise=None if config.get("noise") is None else float(config["noise"]),
        )

    def summary(self) -> str:
        """One line for reports: ``5 networks (K = 5), batch 16, <= 1667 epochs, ...``."""
        ks = sorted(set(self.member_components))
        k_text = "/".join(map(str, ks))
        patience = "off" if self.patience is None else f"{self.patience} epochs"
        noise = "" if self.noise is None else f", noise {self.noise:.3g}"
        return (
            f"{self.n_estimators} networks (K = {k_text}), batch {self.batch_size}, "
            f"lr {self.lr:.3g}, <= {self.epochs} epochs of {self.steps_per_epoch} steps, "
            f"patience {patience}{noise}"
        )


def batch_size(n_train: int) -> int:
    """``clip(2^floor(log2(n_train / 8)), 16, 128)``.

    Example:
        >>> [batch_size(n) for n in (30, 255, 256, 700, 1000, 1024, 10**6)]
        [16, 16, 32, 64, 64, 128, 128]
    """
    target = max(n_train / BATCH_DIVISOR, 1.0)
    return int(min(MAX_BATCH, max(MIN_BATCH, 2 ** math.floor(math.log2(target)))))


def step_budget(n_train: int) -> float:
    """``MAX_STEPS * min(1, STEP_ROWS / n_train)``: the fewest optimizer steps of a fit.

    Example:
        >>> [step_budget(n) for n in (30, 500, 1000, 5000)]
        [5000.0, 5000.0, 2500.0, 500.0]
    """
    return MAX_STEPS * min(1.0, STEP_ROWS / max(n_train, 1))


def noise_level(n_train: int) -> float | None:
    """``min(0.3, 0.3 * (50 / n)^2)`` below 200 training rows, else None (no noise).

    Example:
        >>> [noise_level(n) for n in (30, 50, 100, 200)]
        [0.3, 0.3, 0.075, None]
    """
    if n_train >= NOISE_ROWS:
        return None
    return NOISE_STD * min(1.0, NOISE_REF_ROWS / max(n_train, 1)) ** 2


def member_components(n_train: int, n_members: int | None, n_components: int) -> tuple[int, ...]:
    """``K`` of each ensemble member.

    From ``MIXED_ROWS`` training rows on, every member has ``n_components``. Below, half of
    the members (rounded down) are single Gaussians: on little data a mixture's narrow
    components follow single points, while one Gaussian per network cannot show several
    modes; the average of both kinds hedges, and the fit then weights the two groups by
    their validation likelihood (``_fitting.group_weights``). ``n_members=None`` (the
    default ensemble) means ``MEMBERS`` networks of each kind below ``NOISE_ROWS`` and
    ``MID_MEMBERS`` of each kind from there to ``MIXED_ROWS``: on 200 to 1,000 rows six
    networks scored within 0.03 nats of ten on average (UCI Boston, Concrete, Energy,
    Yacht) in about 70% of the time. The single Gaussians also bound what a test value costs
    when the mixtures put narrow components on tied target values (UCI wine, 1,295
    training rows: the worst of 20 splits 2.4 nats per row with them, 11.0 without).

    Example:
        >>> member_components(100, None, 5), member_components(100, 5, 5)
        ((1, 1, 1, 1, 1, 5, 5, 5, 5, 5), (1, 1, 5, 5, 5))
        >>> member_components(500, None, 5), member_components(5000, None, 5)
        ((1, 1, 1, 5, 5, 5), (5, 5, 5, 5, 5))
    """
    if n_train >= MIXED_ROWS or n_components == 1:
        return (n_components,) * (n_members or MEMBERS)
    if n_members is None:
        each = MEMBERS if n_train < NOISE_ROWS else MID_MEMBERS
        return (1,) * each + (n_components,) * each
    single = n_members // 2
    return (1,) * single + (n_components,) * (n_members - single)


def resolve(est: Any, n_train: int, plain: bool = True) -> Plan:
    """The plan of one fit of ``est`` on ``n_train`` training rows (``plain``: continuous,
    fully observed targets, the only ones noise regularization applies to)."""
    n_train = max(int(n_train), 1)
    batch = batch_size(n_train) if est.batch_size == AUTO else int(est.batch_size)
    steps = math.ceil(n_train / min(batch, n_train))
    if est.epochs == AUTO:
        epochs = max(MIN_EPOCHS, math.ceil(step_budget(n_train) / steps))
    else:
        epochs = int(est.epochs)
    if est.patience == AUTO:
        patience: int | None = max(PATIENCE_EPOCHS, math.ceil(PATIENCE_STEPS / steps))
    else:
        patience = None if est.patience is None else int(est.patience)
    lr = LEARNING_RATE * batch / MAX_BATCH if est.lr == AUTO else float(est.lr)
    members = None if est.n_estimators == AUTO else int(est.n_estimators)
    if est.n_components == AUTO:
        components = member_components(n_train, members, COMPONENTS)
    else:
        components = (int(est.n_components),) * (members or MEMBERS)
    noise = noise_level(n_train) if est.noise_regularization == SMALL_N and plain else None
    return Plan(n_train, batch, epochs, patience, components, lr, noise)
