"""The search problem's baselines are torch-pruning's one-liners themselves: the global-ranking
candidate is one threshold across groups, the uniform one one ratio everywhere, neither bent by the
space's caps nor approximated by the nearest point in the space's parameters. Sampled candidates
keep the caps (the space's prior)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import autoprune as ap
from autoprune.budget import ResolvedBudget
from autoprune.plan import Budget, PruningPlan, kept_channels
from autoprune.problem import Problem
from autoprune.space import Rule
from autoprune.trial import LEVEL


class Net(nn.Module):
    """Three convs whose channel norms are spread very differently: a global threshold prunes
    the spread-out layer far more than the even ones."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2, self.c3 = nn.Conv2d(1, 16, 3), nn.Conv2d(16, 24, 3), nn.Conv2d(24, 32, 3)
        self.fc = nn.Linear(32, 4)
        gen = torch.Generator().manual_seed(0)
        spreads = {"c1": 0.05, "c2": 1.5, "c3": 0.3}  # log-normal sigma of the channel norms
        with torch.no_grad():
            for name, sigma in spreads.items():
                conv = getattr(self, name)
                scale = torch.exp(sigma * torch.randn(conv.out_channels, generator=gen))
                weight = torch.randn(conv.weight.shape, generator=gen) * 0.1
                conv.weight.copy_(weight * scale.view(-1, 1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c3(torch.relu(self.c2(torch.relu(self.c1(x))))))
        return self.fc(x.mean((2, 3)))


def _problem(flops: float, round_to: int, high: float, cap: tuple[str, float] | None = None
             ) -> Problem:
    torch.manual_seed(0)  # the biases
    analysis = ap.analyze(Net().eval(), torch.zeros(1, 1, 12, 12))
    cm = analysis.cost_model
    rules = () if cap is None else (Rule(cap[0], high=cap[1]),)
    space = ap.SearchSpace(round_to=round_to, high=high, rules=rules)
    return Problem(analysis, space, ResolvedBudget(Budget(flops=flops), cm.dense_macs(),
                                                   cm.dense_params()), ap.SearchSettings())


def _global_plan(problem: Problem) -> tuple[dict[str, float], PruningPlan]:
    by_name = {a["baseline"]: p for p, a in problem.baseline_params()}
    assert set(by_name) == {"uniform-l2", "global-l2"}
    searched = by_name["global-l2"]
    return searched, problem.plan_for(searched, "global-l2")


@pytest.mark.parametrize("high", [0.8, 0.4])  # 0.4: the budget is out of the caps' reach
def test_the_global_baseline_is_one_threshold_across_groups(high):
    problem = _problem(0.2, 1, high)
    _, plan = _global_plan(problem)
    scores = problem.analysis.importance_scores("l2")
    groups = problem.analysis.groups
    caps = {g.name: 0.95 for g in groups}  # torch-pruning's, whatever the space's caps
    largest_pruned, smallest_kept = [], []
    for group, s in zip(groups, scores):
        ratio = plan.ratios.get(group.name, 0.0)
        if kept_channels(group.channels, ratio) == kept_channels(group.channels,
                                                                 caps[group.name]):
            continue  # at its cap: the threshold would take more
        pruned = group.channels - kept_channels(group.channels, ratio)
        ordered = np.sort(s)
        if pruned:
            largest_pruned.append(ordered[pruned - 1])
        smallest_kept.append(ordered[pruned])
    assert len(smallest_kept) >= 2 and largest_pruned
    assert max(largest_pruned) <= min(smallest_kept)  # the oracle: global ranking, by hand
    flops = problem.costs(plan)["flops_ratio"]
    assert 0.18 <= flops <= 0.2
    ratios = sorted(plan.ratios.values())
    assert ratios[-1] - ratios[0] > 0.2  # uneven, unlike the uniform plan


def test_the_searched_params_alone_would_not_give_the_global_plan():
    problem = _problem(0.2, 1, 0.4)
    searched, plan = _global_plan(problem)
    approx = problem.plan_for(searched)
    assert approx.ratios != plan.ratios  # why the candidate carries its exact plan
    assert searched[LEVEL] == pytest.approx(0.2)


def test_a_rounded_global_baseline_stays_within_the_budget():
    problem = _problem(0.3, 4, 0.8)
    _, plan = _global_plan(problem)
    assert plan.round_to == 4
    kept = problem.analysis.kept(plan)
    assert all(k % 4 == 0 for k in kept)
    assert problem.costs(plan)["flops_ratio"] <= 0.3


def test_a_budget_no_threshold_reaches_skips_the_global_baseline(caplog):
    problem = _problem(0.001, 1, 0.8)
    assert [a["baseline"] for _, a in problem.baseline_params()] == ["uniform-l2"]
    assert "global-ranking baseline skipped" in caplog.text


def test_the_global_baseline_is_not_bent_by_the_space_caps():
    capped = _global_plan(_problem(0.3, 1, 0.8, cap=("c2", 0.1)))[1]
    free = _global_plan(_problem(0.3, 1, 0.8))[1]
    assert capped.ratios == free.ratios
    assert capped.ratios["c2"] > 0.5  # the spread-out layer, far through the space's cap


def _kept(problem: Problem, plan: PruningPlan) -> list[int]:
    return problem.analysis.kept(plan)


@pytest.mark.parametrize("round_to", [1, 4])
def test_the_uniform_baseline_is_the_uniform_one_liner_whatever_the_caps(round_to):
    problem = _problem(0.2, round_to, 0.8, cap=("c1", 0.3))  # uniform at 20 % FLOPs prunes ~0.55
    params = {a["baseline"]: p for p, a in problem.baseline_params()}["uniform-l2"]
    plan = problem.plan_for(params, "uniform-l2")
    oracle = ap.fit_budget(Net().eval(), torch.zeros(1, 1, 12, 12), allocation=1.0, flops=0.2,
                           caps=0.95, round_to=round_to, analysis=problem.analysis)
    assert _kept(problem, plan) == _kept(problem, oracle)
    assert plan.ratios["c1"] > 0.3  # through the space's cap
    assert problem.costs(plan)["flops_ratio"] <= 0.2


def test_sampled_candidates_keep_the_space_caps_the_baselines_go_past():
    problem = _problem(0.2, 1, 0.8, cap=("c1", 0.3))  # uniform at 20 % FLOPs prunes ~0.55
    uniform = problem.plan_for({a["baseline"]: p for p, a in problem.baseline_params()}
                               ["uniform-l2"], "uniform-l2")
    assert uniform.ratios["c1"] > 0.5
    # the caps are the space's prior: a candidate that leans on c1 stops at its cap
    leaning = problem.plan_for({"c1": 0.8, "c2": 0.05, "c3": 0.05, LEVEL: 0.2})
    assert leaning.ratios["c1"] == pytest.approx(0.3, abs=1 / 16)
    equal = problem.plan_for({"c1": 0.3, "c2": 0.3, "c3": 0.3, LEVEL: 0.2})
    assert equal.ratios["c1"] == pytest.approx(0.3, abs=1 / 16)
    assert problem.costs(equal)["flops_ratio"] <= 0.2


def test_priors_around_a_baseline_step_in_its_ratios_not_in_its_bent_parameters():
    """Under a FLOPs budget the caps bend a baseline's nearest searched values far from its
    plan; the first generation's priors are steps around the plan itself, within the budget."""
    problem = _problem(0.2, 1, 0.8, cap=("c1", 0.3))
    baselines = {a["baseline"]: (p, problem.plan_for(p, a["baseline"]))
                 for p, a in problem.baseline_params()}
    priors = problem.prior_params([], 0.2, 6)
    assert len(priors) == 6 and all("allocation" in attrs for _, attrs in priors)

    def distance(plan, other):
        return np.mean([abs(plan.ratios.get(g, 0.0) - other.ratios.get(g, 0.0))
                        for g in ("c1", "c2")])

    uniform = baselines["uniform-l2"][1]
    assert uniform.ratios["c1"] > 0.5  # past c1's cap of 0.3: the caps bend its parameters
    for params, attrs in priors[0::2]:  # the centres alternate: uniform first
        plan = problem.plan_for(params, None, attrs["allocation"])
        assert problem.costs(plan)["flops_ratio"] <= 0.2
        assert plan.ratios["c1"] > 0.3  # a step around the uniform plan, through the cap
        bent = problem.plan_for(params)  # what its searched values alone would give
        assert distance(plan, uniform) < distance(bent, uniform)
