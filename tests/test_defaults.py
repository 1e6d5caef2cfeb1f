"""Defaults that follow the data (``_defaults``): the plan's rules, ensembles of members with
different ``K`` weighted by their validation likelihood, and fits on the smallest inputs."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from mixture_density import MDNRegressor, MixtureDensityNetwork
from mixture_density._defaults import (
    MAX_STEPS,
    MIXED_ROWS,
    PATIENCE_STEPS,
    Plan,
    member_components,
    resolve,
)
from mixture_density._ensemble import StackedMDN
from mixture_density._fitting import GROUP_PRIOR, group_weights


@pytest.mark.parametrize(
    "n", [1, 2, 15, 30, 80, 199, 200, 255, 256, 500, 511, 512, 999, 1000, 1023, 1024, 2048, 10**6]
)
def test_plan_rules_in_n(n: int) -> None:
    plan = resolve(MDNRegressor(), n)
    B = plan.batch_size
    assert min(128, max(16, 2 ** math.floor(math.log2(max(n / 8, 1))))) == B
    steps = math.ceil(n / min(B, n))
    # At least MAX_STEPS optimizer steps up to 500 rows (fewer as 1/n above) and 200 passes;
    # at least PATIENCE_STEPS steps and 30 passes of patience.
    budget = MAX_STEPS * min(1.0, 500 / n)
    assert plan.epochs == max(200, math.ceil(budget / steps))
    assert plan.epochs * steps >= budget
    assert plan.patience == max(30, math.ceil(PATIENCE_STEPS / steps))
    assert plan.lr == 1e-2  # the default rate is fixed; "auto" scales it with B
    assert plan.noise == (None if n >= 200 else min(0.3, 0.3 * (50 / n) ** 2))
    if n < 200:
        assert plan.member_components == (1,) * 5 + (5,) * 5
    elif n < MIXED_ROWS:
        assert plan.member_components == (1,) * 3 + (5,) * 3
    else:
        assert plan.member_components == (5,) * 5


def test_large_data_keep_the_uci_defaults() -> None:
    # From 2,049 training rows (17 steps of 128 per epoch: 30 epochs hold 500 steps) the
    # plan is the former fixed defaults: batch 128, 200 epochs, patience 30, five
    # 5-component networks; the step count (and time) is linear in n.
    assert resolve(MDNRegressor(), 2048).patience == 32  # 16 steps per epoch
    for n in (2049, 3073, 10**5, 10**6):
        plan = resolve(MDNRegressor(), n)
        assert (plan.batch_size, plan.epochs, plan.patience) == (128, 200, 30)
        assert plan.member_components == (5,) * 5


def test_given_values_are_used_as_given() -> None:
    est = MDNRegressor(
        n_components=3, n_estimators=2, epochs=7, batch_size=50, patience=None, lr=0.5
    )
    plan = resolve(est, 100)
    assert (plan.batch_size, plan.epochs, plan.patience, plan.lr) == (50, 7, None, 0.5)
    assert plan.member_components == (3, 3)
    assert resolve(MDNRegressor(lr="auto"), 100).lr == pytest.approx(1e-2 * 16 / 128)
    assert member_components(100, 5, 5) == (1, 1, 5, 5, 5)  # n_estimators given, K auto
    assert member_components(100, None, 1) == (1,) * 5


def test_plan_round_trips_and_reads() -> None:
    plan = resolve(MDNRegressor(), 90)
    assert Plan.from_config(plan.to_config()) == plan
    assert plan.summary().startswith("10 networks (K = 1/5), batch 16, lr 0.01")


def test_stacked_members_of_different_k_match_the_members() -> None:
    # A K = 1 head embedded in a K = 3 one: its absent components have zero weight, so the
    # stacked log-density and the gradient are the member's own (float64).
    torch.manual_seed(0)
    members = [MixtureDensityNetwork(2, 1, k, hidden_dims=(6,)).double() for k in (1, 3, 2)]
    stacked = StackedMDN(members)
    x = torch.randn(3, 9, 2, dtype=torch.float64)
    y = torch.randn(3, 9, 1, dtype=torch.float64)
    lp = stacked(x).log_prob(y)
    lp.sum().backward()
    for m, member in enumerate(members):
        own = member(x[m]).log_prob(y[m])
        torch.testing.assert_close(lp[m], own, rtol=1e-12, atol=1e-12)
    stacked.copy_into(members)  # and back: the members compute what they computed before
    for m, member in enumerate(members):
        torch.testing.assert_close(member(x[m]).log_prob(y[m]), lp[m].detach(), rtol=1e-12,
                                   atol=1e-12)  # fmt: skip


class _Fixed(torch.nn.Module):
    """A stand-in member predicting N(loc, scale^2) whatever x: ``loss`` is its NLL."""

    def __init__(self, loc: float, scale: float) -> None:
        super().__init__()
        self.dist = torch.distributions.Normal(
            torch.tensor(loc, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64)
        )
        self.dummy = torch.nn.Parameter(torch.zeros(1))

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.dist.log_prob(y[:, 0])


def test_group_weights_follow_the_validation_likelihood() -> None:
    # Group 1 predicts the data's distribution, group 5 is far off: the stacking weight of
    # group 1 is the Dirichlet posterior mode, near (n + prior - 1) / (n + 2 (prior - 1)).
    g = torch.Generator().manual_seed(0)
    n = 200
    Y = torch.randn(n, 1, generator=g, dtype=torch.float64)
    X = torch.zeros(n, 1, dtype=torch.float64)
    good = [_Fixed(0.0, 1.0) for _ in range(2)]
    bad = [_Fixed(8.0, 0.5) for _ in range(3)]
    weights = group_weights([*good, *bad], [1, 1, 5, 5, 5], X, Y)  # type: ignore[list-item]
    assert sum(weights) == pytest.approx(1.0, abs=1e-12)
    assert weights[0] == weights[1] and weights[2] == weights[3] == weights[4]
    expected_good = (n + GROUP_PRIOR - 1) / (n + 2 * (GROUP_PRIOR - 1))
    assert 2 * weights[0] == pytest.approx(expected_good, abs=1e-3)
    # Two identical groups: equal weights (the prior and the data agree).
    same = group_weights([*good, _Fixed(0.0, 1.0)], [1, 1, 5], X, Y)  # type: ignore[list-item]
    assert 2 * same[0] == pytest.approx(0.5, abs=1e-9) and same[2] == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("n", "d", "constant"), [(2, 1, False), (3, 1, False), (12, 2, True), (40, 1, True)]
)
def test_smallest_inputs_fit_with_the_automatic_choices(n: int, d: int, constant: bool) -> None:
    # Everything the fit chooses on its own (batch, members, K, patience, validation split)
    # must work on 2 rows, one feature and a constant column; epochs is capped for speed.
    rng = np.random.default_rng(n)
    X = rng.normal(size=(n, d))
    if constant:
        X[:, -1] = 3.0
    y = X[:, 0] + 0.1 * rng.normal(size=n)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny sets: no validation rows, tie warnings
        est = MDNRegressor(epochs=20, random_state=0).fit(X, y)
    assert est.plan_.n_estimators == len(est.models_) == len(est.member_weights_)
    assert sum(est.member_weights_) == pytest.approx(1.0)
    lp = est.log_prob(X, y)
    assert lp.shape == (n,) and np.isfinite(lp).all()
    lo, hi = est.predict_interval(X, 0.9)
    assert np.all(lo < hi)


def test_plan_is_saved_and_printed(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 2))
    y = X[:, 0] + 0.2 * rng.normal(size=60)
    est = MDNRegressor(epochs=15, random_state=0).fit(X, y)
    assert est.plan_ == resolve(est, est.plan_.n_train)
    assert est.plan_.n_train == 54  # 10% held out for validation
    est.save(tmp_path / "m.pt")
    loaded = MDNRegressor.load(tmp_path / "m.pt")
    assert loaded.plan_ == est.plan_ and loaded.member_weights_ == est.member_weights_
    np.testing.assert_array_equal(loaded.log_prob(X, y), est.log_prob(X, y))
