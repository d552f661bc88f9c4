"""autoprune.budget: one resolution of the budget that the search, the report and export share."""

from __future__ import annotations

import pytest

from autoprune.budget import ResolvedBudget
from autoprune.errors import BudgetError, ConfigError
from autoprune.plan import Budget
from autoprune.trial import TrialRecord, TrialState


def rec(flops: float | None = None, params: float | None = None,
        latency: float | None = None) -> TrialRecord:
    return TrialRecord(0, TrialState.COMPLETE, flops, params, latency_ms=latency, val_acc=0.5,
                       fidelity=1.0)


def test_flops_budget_fits_and_fronts_on_flops():
    b = ResolvedBudget(Budget(flops=0.4, params=0.6), 1e6, 2e4, 3.0)
    assert (b.metric, b.fraction, b.axis, b.dense_metric) == ("macs", 0.4, "flops_ratio", 1e6)
    assert b.cost_of(rec(0.3, 0.9, 1.0)) == 0.3
    assert b.limits() == {"flops_ratio": 0.4, "params_ratio": 0.6}
    assert b.within(rec(0.4, 0.6)) and not b.within(rec(0.41, 0.5))
    assert b.violations(rec(0.3, 0.66)) == {"params_ratio": pytest.approx(0.1)}
    assert b.level_range(0.6, 3) == pytest.approx((0.24, 0.4))
    assert b.level_range(0.6, 1) == (0.4, 0.4)


def test_params_only_budget_fits_and_fronts_on_params():
    b = ResolvedBudget(Budget(params=0.5), 1e6, 2e4)
    assert (b.metric, b.fraction, b.axis, b.dense_metric) == ("params", 0.5, "params_ratio", 2e4)
    assert b.cost_of(rec(0.9, 0.45)) == 0.45


def test_latency_only_budget_fronts_on_the_latency_ratio():
    b = ResolvedBudget(Budget(latency=0.5), 1e6, 2e4, dense_latency_ms=4.0)
    assert b.latency_limit_ms == 2.0 and b.axis == "latency_ratio"
    assert b.metric == "macs" and b.fraction == 0.5  # FLOPs levels at most the latency fraction
    assert b.level_range(0.9, 3) == pytest.approx((0.25, 0.5))  # down to at least L^2
    # FLOPs order and latency order disagree: the cost is the latency ratio, never FLOPs
    assert b.cost_of(rec(0.2, 0.3, 3.0)) == pytest.approx(0.75)
    assert b.cost_of(rec(0.2, 0.3, None)) is None
    assert not b.within(rec(0.2, 0.3, 2.5)) and b.within(rec(0.9, 0.9, 2.0))
    assert b.violations(rec(0.2)) == {"latency_ms": float("inf")}  # unmeasured counts as over


def test_absolute_latency_and_retiming():
    b = ResolvedBudget(Budget(latency_ms=3.0), 1e6, 2e4, dense_latency_ms=6.0)
    assert b.latency_limit_ms == 3.0 and b.fraction == 0.5
    again = b.with_dense_latency(5.0)
    assert again.latency_limit_ms == 3.0 and again.fraction == pytest.approx(0.6)
    assert ResolvedBudget(Budget(latency=0.5), 1, 1, 6.0).with_dense_latency(4.0) \
        .latency_limit_ms == 2.0  # a fraction follows the final dense timing
    assert b.with_dense_latency(None) is b


def test_round_trips_through_its_file_form():
    for b in (ResolvedBudget(Budget(flops=0.4, latency_ms=2.5), 1e6, 2e4, 3.0),
              ResolvedBudget(Budget(params=0.3), 5.0, 7.0)):
        data = b.to_dict()
        assert ResolvedBudget.from_dict(data) == b
        assert data["axis"] == b.axis and data["limits"] == b.limits()


def test_errors_name_the_fix():
    with pytest.raises(BudgetError, match="--budget-flops"):
        ResolvedBudget(Budget(), 1.0, 1.0)
    with pytest.raises(ConfigError, match="latency could not be measured"):
        ResolvedBudget(Budget(latency=0.5), 1.0, 1.0, None)
