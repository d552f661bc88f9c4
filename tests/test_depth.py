"""Depth: residual blocks found from the autograd graph, removed whole by a plan, priced by the
analysis and the latency table, and searched (``--depth``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import steady_clock
from torch import nn

import autoprune as ap
from autoprune.budget import ResolvedBudget
from autoprune.engine.count import count_macs_params
from autoprune.engine.depth import drop_blocks, residual_blocks
from autoprune.errors import ConfigError
from autoprune.latency.layer_table import TableGrid, build_table
from autoprune.latency.predictor import fit_latency
from autoprune.neighbours import perturb
from autoprune.plan import Budget, PruningPlan
from autoprune.problem import DROP, Problem
from autoprune.trial import LEVEL, ParamSpec

pytestmark = pytest.mark.usefixtures("one_thread")


class Inverted(nn.Module):
    """``x + f(x)``: an inverted residual (expand, depthwise, project)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(c, 4 * c, 1, bias=False), nn.BatchNorm2d(4 * c),
                                    nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(4 * c, 4 * c, 3, padding=1, groups=4 * c, bias=False),
                                nn.BatchNorm2d(4 * c), nn.ReLU6())
        self.project = nn.Conv2d(4 * c, c, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.project(self.dw(self.expand(x)))


class Basic(nn.Module):
    """``relu(x + f(x))``: a ResNet basic block."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(c, c, 3, padding=1), nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.conv2(torch.relu(self.conv1(x))))


class Net(nn.Module):
    """Stem; an inverted residual; a basic block after a ReLU (removable); a basic block fed
    a signed input (its identity would differ: not removable); a plain same-shape conv (no
    sum: not removable); a widening conv; a head."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.inv = Inverted(8)
        self.post = nn.ReLU()
        self.basic = Basic(8)
        self.signed = nn.Conv2d(8, 8, 1)
        self.basic_signed = Basic(8)
        self.plain = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU())
        self.widen = nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.head = nn.Linear(16, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.post(self.inv(self.stem(x)))
        x = self.signed(self.basic(x))
        x = torch.relu(self.widen(self.plain(self.basic_signed(x))))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def net() -> tuple[Net, torch.Tensor]:
    torch.manual_seed(0)
    return Net().eval(), torch.randn(2, 3, 16, 16)


@pytest.fixture(scope="module")
def analysis(net: tuple[Net, torch.Tensor]) -> ap.PrunableModel:
    return ap.analyze(*net)


def test_residual_blocks_are_the_sums_of_the_input_and_a_branch(net):
    model, x = net
    assert residual_blocks(model, x) == ["inv", "basic"]


def test_a_removed_block_computes_what_the_block_does_with_its_branch_silenced(net):
    model, x = net
    for name, last in (("inv", "inv.project"), ("basic", "basic.conv2")):
        silenced = drop_blocks(model, [])  # a copy whose branch adds nothing
        layer = silenced.get_submodule(last)
        with torch.no_grad():
            layer.weight.zero_()
            if layer.bias is not None:
                layer.bias.zero_()
        removed = drop_blocks(model, [name])
        assert isinstance(removed.get_submodule(name), nn.Identity)
        assert not isinstance(model.get_submodule(name), nn.Identity)  # a copy
        with torch.no_grad():
            assert torch.allclose(removed(x), silenced(x), rtol=0, atol=1e-7)
            assert (removed(x) - model(x)).abs().max() > 1e-5  # the block did something


def test_drop_blocks_names_the_unknown_block():
    with pytest.raises(ConfigError, match="'nope'"):
        drop_blocks(Net(), ["nope"])


def test_plan_serialises_drop_only_when_it_removes_blocks():
    plain = PruningPlan({"a": 0.5})
    assert "drop" not in plain.to_dict()
    deep = PruningPlan({"a": 0.5}, drop=("inv", "basic", "inv"))
    assert deep.drop == ("basic", "inv")
    assert PruningPlan.from_json(deep.to_json()) == deep
    with pytest.raises(ConfigError, match="drop="):
        PruningPlan({}, drop="inv")  # type: ignore[arg-type]


def test_a_plan_that_removes_blocks_costs_what_the_pruned_model_counts(net, analysis):
    _, x = net
    assert analysis.removable == ["inv", "basic"]
    plan = PruningPlan({g.name: 0.5 for g in analysis.groups}, round_to=2,
                       drop=("inv", "basic"))
    pruned = analysis.apply(plan)
    assert isinstance(pruned.inv, nn.Identity) and isinstance(pruned.basic, nn.Identity)
    macs, params = count_macs_params(pruned, x)
    assert analysis.macs(plan) == pytest.approx(macs)
    assert analysis.params(plan) == pytest.approx(params)
    assert analysis.macs(plan) < analysis.macs(PruningPlan(plan.ratios, round_to=2))
    # the stem's group is named by a layer of a removed block (its root in the dense model):
    # it keeps that name and its ratio, and its layers left are pruned to it
    stream = next(g.name for g in analysis.groups if "stem" in g.layers)
    assert stream == "basic.conv2"
    kept = dict(zip((g.name for g in analysis.groups), analysis.kept(plan)))
    assert pruned.stem.out_channels == kept[stream] == 4
    assert kept["inv.dw.0"] == 0  # inside a removed block


def test_removing_a_block_that_is_not_removable_names_the_removable_ones(analysis):
    with pytest.raises(ConfigError, match=r"'plain'.*removable: inv, basic"):
        analysis.macs(PruningPlan({}, drop=("plain",)))
    with pytest.raises(ConfigError, match="in place"):
        analysis.apply(PruningPlan({}, drop=("inv",)), inplace=True)


@pytest.fixture
def steady_table(monkeypatch):
    """Latency tables from a steady clock: the refit tests script the candidates' timings."""
    steady_clock(monkeypatch)


def test_the_latency_table_prices_removed_blocks_from_a_measured_model(analysis, steady_table):
    table = build_table(analysis, grid=TableGrid(fractions=(0.5, 1.0), calibration=(0.5,)))
    drop = ("basic", "inv")
    assert table.info["calibration_drop"] == [list(drop)]
    # exact on the two models the rest is fitted on exactly: dense, and every block removed
    assert table.predict(PruningPlan({})) == pytest.approx(table.dense_ms)
    assert table.predict(PruningPlan({}, drop=drop)) == pytest.approx(
        table.info["calibration_drop_ms"][0])
    live = table.live(drop)
    assert [n for n, on in zip(table.layer_names, live) if not on] == [
        n for n in table.layer_names if n.startswith(("inv.", "basic."))]
    idle = dict(zip(table.group_names, table.idle_groups(live)))
    assert idle["inv.dw.0"] and idle["basic.conv1"] and not idle["basic.conv2"]
    target = 0.8 * table.predict(PruningPlan({}, drop=drop))
    plan = fit_latency(table.without(drop), target, 1.0, 0.9)
    assert plan.drop == drop and "inv.dw.0" not in plan.ratios
    assert target * 0.98 <= table.predict(plan) <= target
    assert table.without(drop).predict(PruningPlan(plan.ratios)) == table.predict(plan)
    assert type(table).from_json(table.without(drop).to_json()).drop == drop


def _problem(analysis: ap.PrunableModel, depth: str) -> Problem:
    cm = analysis.cost_model
    return Problem(analysis, ap.SearchSpace(), ResolvedBudget(
        Budget(flops=0.5), cm.dense_macs(), cm.dense_params()), ap.SearchSettings(depth=depth))


def test_depth_adds_a_removal_switch_per_block_and_a_uniform_baseline_without_them(analysis):
    assert [s.name for s in _problem(analysis, "off").specs() if s.name.startswith(DROP)] == []
    assert _problem(analysis, "latency").removable == []  # a FLOPs budget: no table
    problem = _problem(analysis, "on")
    specs = problem.specs()
    assert [s.name for s in specs if s.name.startswith(DROP)] == [DROP + "inv", DROP + "basic"]
    assert specs[-1].name == LEVEL
    baselines = {a["baseline"]: p for p, a in problem.baseline_params()}
    assert baselines["uniform-l2"][DROP + "inv"] == 0.0
    deep = problem.plan_for(baselines["uniform-l2-depth"])
    assert deep.drop == ("basic", "inv")
    # fitted onto the budget on the model without them, within the fit's tolerance
    dense = analysis.cost_model.dense_macs()
    assert 0.5 * 0.98 <= analysis.macs(deep) / dense <= 0.5
    assert set(deep.ratios) <= {g.name for g in analysis.groups}


def test_perturb_flips_a_yes_no_parameter_with_probability_sigma():
    spec = ParamSpec(DROP + "inv", 0.0, 1.0, 1.0)
    rng = np.random.default_rng(0)
    flips = [perturb({DROP + "inv": 0.0}, [spec], rng, sigma=0.2)[spec.name] for _ in range(2000)]
    assert set(flips) == {0.0, 1.0}
    assert np.mean(flips) == pytest.approx(0.2, abs=0.03)
    assert perturb({}, [spec], np.random.default_rng(1), sigma=0.0)[spec.name] == 0.0


def test_depth_setting_refuses_unknown_values():
    with pytest.raises(ConfigError, match="depth"):
        ap.SearchSettings(depth="all")  # type: ignore[arg-type]


class _Scripted:
    """A timer that answers the figures it is given, in turn."""

    def __init__(self, *ms: float) -> None:
        self.ms, self.calls = list(ms), 0

    def __call__(self, model: nn.Module, *args, **kwargs):
        from autoprune.latency.guard import Timed

        self.calls += 1
        return Timed(self.ms.pop(0), 0.0)


def _stages(analysis: ap.PrunableModel, tmp_path, timer: _Scripted):
    from autoprune.results import RunDir
    from autoprune.stages import Stages

    table = build_table(analysis, grid=TableGrid(fractions=(0.5, 1.0), calibration=(0.5,)))
    cm = analysis.cost_model
    budget = ResolvedBudget(Budget(latency=0.7), cm.dense_macs(), cm.dense_params(),
                            table.dense_ms)
    problem = Problem(analysis, ap.SearchSpace(), budget, ap.SearchSettings(depth="latency"),
                      latency_table=table)
    return Stages(problem, RunDir.create(tmp_path / "run"), timer, lambda m, s: None,
                  (None, ap.FinetuneSettings(), None)), problem


def test_a_candidate_timed_over_the_latency_budget_is_fitted_lower_and_timed_again(
        analysis, tmp_path, steady_table):
    from autoprune.stages import REFITS
    from autoprune.trial import TrialState

    params = {**{s.name: s.high for s in _stages(analysis, tmp_path / "a", _Scripted())[1]
                 .specs()[:-1]}, LEVEL: 0.7}
    stages, problem = _stages(analysis, tmp_path / "b", _Scripted())
    limit = problem.budget.latency_limit_ms
    first = problem.plan_for(params)
    stages.timer = _Scripted(limit * 1.10, limit * 0.97)
    prep = stages.prepare(params, 0, {})
    assert prep.outcome is None and stages.timer.calls == 2
    assert prep.rec["latency_ms"] == pytest.approx(limit * 0.97)
    assert prep.rec["refits"] == 1 and prep.rec["refit_from_ms"] == pytest.approx(limit * 1.1)
    import optuna

    from autoprune.backends.optuna import to_record

    trial = optuna.trial.create_trial(value=0.0, params={}, distributions={},
                                      user_attrs=prep.rec)
    assert to_record(trial).refits == 1  # and so into trials.csv
    # fitted onto 0.96 / 1.10 of the level: a faster plan, and the one the run keeps
    assert problem.latency_table.predict(prep.plan) < problem.latency_table.predict(first)
    assert stages.run.read_plan(0) == prep.plan.to_dict()
    # over every time: INFEASIBLE after REFITS more timings; within at once: timed once
    stages.timer = _Scripted(*[limit * 1.2] * (REFITS + 1))
    prep = stages.prepare(params, 1, {})
    assert prep.outcome.state is TrialState.INFEASIBLE and prep.rec["refits"] == REFITS
    stages.timer = _Scripted(limit * 0.95)
    assert stages.prepare(params, 2, {}).outcome is None and stages.timer.calls == 1


def test_a_candidate_within_the_budget_but_over_its_margin_is_fitted_lower(
        analysis, tmp_path, steady_table):
    """Sampled candidates keep the baselines' margin: one measured within the budget but over
    MATCH[1] of it is fitted lower; when no timing lands under MATCH[1], the fastest is kept
    (the first here, within the budget, not the refit that measured over it)."""
    from autoprune.stages import MATCH, REFITS

    stages, problem = _stages(analysis, tmp_path, _Scripted())
    params = {**{s.name: s.high for s in problem.specs()[:-1]}, LEVEL: 0.7}
    limit, table = problem.budget.latency_limit_ms, problem.latency_table
    first = problem.plan_for(params)
    stages.timer = _Scripted(limit * 0.99, limit * 0.95)
    prep = stages.prepare(params, 0, {})
    assert prep.outcome is None and stages.timer.calls == 2 and prep.rec["refits"] == 1
    assert prep.rec["latency_ms"] == pytest.approx(limit * 0.95) and MATCH[1] > 0.95
    assert table.predict(prep.plan) < table.predict(first)
    timings = [0.99, 1.01, 1.02]
    assert len(timings) == REFITS + 1
    stages.timer = _Scripted(*[limit * t for t in timings])
    prep = stages.prepare(params, 1, {})
    assert prep.outcome is None and stages.timer.calls == REFITS + 1
    assert prep.rec["latency_ms"] == pytest.approx(limit * 0.99) and "refits" not in prep.rec
    assert stages.run.read_plan(1) == prep.plan.to_dict()


def test_a_candidate_measured_well_under_its_level_is_fitted_higher(
        analysis, tmp_path, steady_table):
    """As a baseline is: a candidate measured under MATCH[0] of its level is fitted higher,
    toward the middle of MATCH of that level (the budget's for one at the budget, its own for
    one at a lower level), and the slowest timing under MATCH[1] of the budget is kept; a refit
    that lands over it is not (the earlier, faster plan stays)."""
    from autoprune.stages import MATCH, REFITS

    stages, problem = _stages(analysis, tmp_path, _Scripted())
    allocation = {s.name: 0.0 if s.name.startswith(DROP) else s.high
                  for s in problem.specs()[:-1]}  # every block kept: widths to fit
    limit, table = problem.budget.latency_limit_ms, problem.latency_table
    dense = problem.budget.dense_latency_ms
    at_budget = {**allocation, LEVEL: 0.7}
    first = problem.plan_for(at_budget)
    stages.timer = _Scripted(limit * 0.80, limit * 0.96)
    prep = stages.prepare(at_budget, 0, {})
    assert prep.outcome is None and stages.timer.calls == 2 and prep.rec["refits"] == 1
    assert prep.rec["latency_ms"] == pytest.approx(limit * 0.96)
    assert prep.rec["refit_from_ms"] == pytest.approx(limit * 0.80)
    assert table.predict(prep.plan) > table.predict(first)  # fewer channels go
    assert stages.run.read_plan(0) == prep.plan.to_dict()
    # a candidate at a lower level is matched to that level, not to the budget
    low = {**allocation, LEVEL: 0.5}
    stages.timer = _Scripted(0.5 * dense * 0.96)
    assert stages.prepare(low, 1, {}).outcome is None and stages.timer.calls == 1
    stages.timer = _Scripted(0.5 * dense * 0.85, 0.5 * dense * 0.95)
    prep = stages.prepare(low, 2, {})
    assert stages.timer.calls == 2 and prep.rec["latency_ms"] == pytest.approx(0.475 * dense)
    assert 0.5 * dense < MATCH[0] * limit  # the budget's window would have lifted it further
    # fitted higher but landing over MATCH[1] of the budget: the first plan is kept
    timings = [0.80, 1.01, 0.99]
    assert len(timings) == REFITS + 1
    stages.timer = _Scripted(*[limit * t for t in timings])
    first = problem.plan_for(at_budget)  # the timings so far calibrated the table's fits
    prep = stages.prepare(at_budget, 3, {})
    assert prep.outcome is None and stages.timer.calls == REFITS + 1
    assert prep.rec["latency_ms"] == pytest.approx(limit * 0.80) and "refits" not in prep.rec
    assert stages.run.read_plan(3) == first.to_dict()


def test_a_baseline_is_matched_on_measured_latency_from_below_and_above(
        analysis, tmp_path, steady_table):
    """A baseline measured well under the budget is fitted higher (the table over-predicted),
    one over MATCH[1] of it lower, within a bracket, until it measures within MATCH x the
    budget; when no timing lands there, the slowest plan under MATCH[1] of it is kept."""
    from autoprune.stages import BASELINE_REFITS, MATCH

    stages, problem = _stages(analysis, tmp_path, _Scripted())
    baseline = {a["baseline"]: p for p, a in problem.baseline_params()}["uniform-l2"]
    limit, table = problem.budget.latency_limit_ms, problem.latency_table
    first = problem.plan_for(baseline, "uniform-l2")
    assert MATCH == (0.94, 0.98)
    stages.timer = _Scripted(limit * 0.80, limit * 0.90, limit * 0.99, limit * 0.96)
    prep = stages.prepare(baseline, 0, {"baseline": "uniform-l2"})
    assert prep.outcome is None and stages.timer.calls == 4
    assert prep.rec["latency_ms"] == pytest.approx(limit * 0.96) and prep.rec["refits"] == 3
    assert table.predict(prep.plan) > table.predict(first)  # fitted upward: fewer channels go
    assert stages.run.read_plan(0) == prep.plan.to_dict()
    # never within the window: the slowest under MATCH[1] (the first, 0.90) is kept, not the
    # last, within the budget but too close to it to survive the end-of-run re-timing
    timings = [0.90, 1.05, 1.02, 1.01, 1.03, 0.99]
    assert len(timings) == BASELINE_REFITS + 1
    stages.timer = _Scripted(*[limit * t for t in timings])
    prep = stages.prepare(baseline, 1, {"baseline": "uniform-l2"})
    assert prep.outcome is None and stages.timer.calls == BASELINE_REFITS + 1
    assert prep.rec["latency_ms"] == pytest.approx(limit * 0.90)
    assert "refits" not in prep.rec  # the first timing's record and plan
    assert stages.run.read_plan(1) == prep.plan.to_dict()


def test_a_latency_budget_out_of_reach_without_depth_names_depth_and_what_it_predicts(analysis):
    from autoprune.errors import BudgetError

    table = build_table(analysis, grid=TableGrid(fractions=(0.5, 1.0), calibration=(0.5,)))
    cm = analysis.cost_model

    def problem(depth: str, fraction: float) -> Problem:
        budget = ResolvedBudget(Budget(latency=fraction), cm.dense_macs(), cm.dense_params(),
                                table.dense_ms)
        return Problem(analysis, ap.SearchSpace(), budget, ap.SearchSettings(depth=depth),
                       latency_table=table)

    with pytest.raises(BudgetError, match=r"--depth latency may also remove its 2 residual") as e:
        problem("off", 0.01)
    with pytest.raises(BudgetError) as deep:
        problem("latency", 0.01)
    assert "--depth" not in str(deep.value)  # already searched: nothing to suggest
    # the figure it names is the floor the depth search itself reports
    predicted = float(str(e.value).split("all removed: ")[1].split(" predicted")[0])
    assert predicted == pytest.approx(float(str(deep.value).split("predicts ")[1].split()[0]),
                                      rel=1e-2)


def test_a_ratio_prior_naming_some_groups_fits_on_the_table_with_the_rest_unpruned(
        analysis, steady_table):
    """A prior around a baseline carries ratios for the groups the space prunes only; fitted on
    the latency table the others stay dense, and one the table cannot bring to its level is
    over the budget (a BudgetError the stages record), not a crash."""
    from autoprune.errors import BudgetError

    table = build_table(analysis, grid=TableGrid(fractions=(0.5, 1.0), calibration=(0.5,)))
    cm = analysis.cost_model
    budget = ResolvedBudget(Budget(latency=0.9), cm.dense_macs(), cm.dense_params(),
                            table.dense_ms)
    problem = Problem(analysis, ap.SearchSpace(), budget, ap.SearchSettings(),
                      latency_table=table)
    names = [g.name for g in analysis.groups]
    plan = problem.plan_for({LEVEL: 0.9}, None, dict.fromkeys(names[:-1], 0.5))
    assert plan.ratios and set(plan.ratios) <= set(names[:-1])  # the last one is left dense
    assert table.predict(plan) <= 0.9 * table.dense_ms * 1.001
    try:  # one group alone cannot bring the model to 0.78 of dense
        plan = problem.plan_for({LEVEL: 0.78}, None, {names[0]: 0.5})
    except BudgetError:
        return
    assert set(plan.ratios) <= {names[0]}
