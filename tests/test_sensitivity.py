"""Per-group sensitivity: the drops against a scoring oracle, the allocation against numbers
worked by hand, and the sensitivity baseline a problem gets once the drops are set."""

from __future__ import annotations

import math

import pytest
import torch
from test_problem import Net

import autoprune as ap
from autoprune.budget import ResolvedBudget
from autoprune.plan import Budget, PruningPlan
from autoprune.problem import Problem
from autoprune.sensitivity import RATIO, group_drops, group_savings, sensitivity_allocation


def test_the_allocation_is_one_over_drop_plus_the_median_drop():
    # median 0.01: weights 1/0.01, 1/0.02, 1/0.11, scaled to a largest value of 1
    alloc = sensitivity_allocation({"a": 0.0, "b": 0.01, "c": 0.1})
    assert alloc == pytest.approx({"a": 1.0, "b": 0.5, "c": 0.01 / 0.11})
    # nothing loses anything: tau is the floor, every group alike
    assert sensitivity_allocation({"a": 0.0, "b": 0.0}) == {"a": 1.0, "b": 1.0}
    assert sensitivity_allocation({}) == {}
    with pytest.raises(ValueError, match="floor"):
        sensitivity_allocation({"a": 0.1}, floor=0.0)


def test_savings_weigh_the_allocation_by_cost_saved_per_drop():
    # median drop 0.01: saving / (drop + 0.01) = 4/0.01, 1/0.02, 10/0.11, scaled to max 1
    drops, savings = {"a": 0.0, "b": 0.01, "c": 0.1}, {"a": 4.0, "b": 1.0, "c": 10.0}
    alloc = sensitivity_allocation(drops, savings=savings)
    assert alloc == pytest.approx({"a": 1.0, "b": 50 / 400, "c": 10 / 0.11 / 400})
    # a group that saves nothing is left alone, whatever its drop
    assert sensitivity_allocation(drops, savings={**savings, "a": 0.0})["a"] == 0.0
    assert sensitivity_allocation({"a": 0.1}, savings={"a": 0.0}) == {"a": 0.0}
    with pytest.raises(ValueError, match=r"\['b'\]"):
        sensitivity_allocation({"a": 0.1, "b": 0.2}, savings={"a": 1.0})


def test_savings_price_one_group_at_a_time_against_the_empty_plan():
    cost = {"a": 3.0, "b": 0.5}
    seen: list[PruningPlan] = []

    def price(plan: PruningPlan) -> float:
        seen.append(plan)
        return 10.0 - sum(cost[g] * r for g, r in plan.ratios.items())

    assert group_savings(["a", "b"], price, "l1") == pytest.approx({"a": 1.5, "b": 0.25})
    assert [(p.ratios, p.importance) for p in seen] == [
        ({}, "l1"), ({"a": RATIO}, "l1"), ({"b": RATIO}, "l1")]


def test_drops_prune_one_group_at_a_time_against_the_dense_score():
    cost = {"a": 0.02, "b": 0.30, "c": -0.01}  # c scores *better* pruned: its drop is 0
    seen: list[PruningPlan] = []

    def score(plan: PruningPlan) -> float:
        seen.append(plan)
        return 0.9 - sum(cost[g] for g in plan.ratios)

    drops = group_drops(["a", "b", "c"], score, importance="l1")
    assert drops == pytest.approx({"a": 0.02, "b": 0.30, "c": 0.0})
    assert [p.ratios for p in seen] == [{}, {"a": RATIO}, {"b": RATIO}, {"c": RATIO}]
    assert {p.importance for p in seen} == {"l1"}


def test_a_score_that_is_not_a_number_stops_the_analysis_naming_the_group():
    def score(plan: PruningPlan) -> float:
        return math.nan if "b" in plan.ratios else 0.5

    with pytest.raises(ValueError, match="for b: "):
        group_drops(["a", "b"], score)
    with pytest.raises(ValueError, match="ratio"):
        group_drops(["a"], score, ratio=1.0)


def _problem(settings: ap.SearchSettings, flops: float = 0.4) -> Problem:
    torch.manual_seed(0)
    analysis = ap.analyze(Net().eval(), torch.zeros(1, 1, 12, 12))
    cm = analysis.cost_model
    return Problem(analysis, ap.SearchSpace(round_to=1, high=0.6), ResolvedBudget(
        Budget(flops=flops), cm.dense_macs(), cm.dense_params()), settings)


def test_the_sensitivity_baseline_spares_the_sensitive_group_within_the_budget():
    problem = _problem(ap.SearchSettings(sensitivity="on"))
    assert problem.wants_sensitivity
    assert {a["baseline"] for _, a in problem.baseline_params()} == {"uniform-l2", "global-l2"}
    problem = _problem(ap.SearchSettings(sensitivity="on"))  # baselines are computed once
    problem.sensitivity = {"c1": 0.0, "c2": 0.20, "c3": 0.01}
    by_name = {a["baseline"]: p for p, a in problem.baseline_params()}
    assert set(by_name) == {"uniform-l2", "global-l2", "sensitivity-l2"}
    plan = problem.plan_for(by_name["sensitivity-l2"], "sensitivity-l2")
    ratios = {g: plan.ratios.get(g, 0.0) for g in ("c1", "c2", "c3")}
    assert ratios["c2"] < ratios["c3"] < ratios["c1"]  # the sensitive group is pruned least
    assert max(ratios.values()) > 0.6  # the exact plan goes past the space's caps, to 0.95
    flops = problem.costs(plan)["flops_ratio"]
    assert 0.36 < flops <= 0.4 + 1e-9
    # the sampler's parameters point the same way (the priors' centre)
    searched = by_name["sensitivity-l2"]
    assert searched["c2"] < searched["c3"] <= searched["c1"]


@pytest.mark.parametrize("settings,wanted", [
    (ap.SearchSettings(), False),  # default "latency": a FLOPs budget does not measure them
    (ap.SearchSettings(sensitivity="on", priors=False), False),  # no baselines at all
    (ap.SearchSettings(sensitivity="off"), False),
])
def test_when_the_drops_are_wanted(settings, wanted):
    assert _problem(settings).wants_sensitivity is wanted
