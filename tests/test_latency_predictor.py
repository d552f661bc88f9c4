"""The latency model: per-layer lookup tables, their calibration, JSON, and fitting on them."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import DepthwiseGrouped, FlattenHead, Residual, steady_clock
from torch import nn

import autoprune as ap
from autoprune.errors import BudgetError, ConfigError
from autoprune.latency import LatencyTarget, measure
from autoprune.latency.layer_table import TableGrid, build_table
from autoprune.latency.predictor import LatencyTable, LayerLut, fit_latency

pytestmark = pytest.mark.usefixtures("one_thread")

FAST = TableGrid(fractions=(0.25, 0.5, 1.0), calibration=(0.5,))


class Wide(nn.Module):
    """Three wide 3x3 convs at 32 px: pruning them is clearly faster."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, padding=1)
        self.a = nn.Conv2d(64, 64, 3, padding=1)
        self.b = nn.Conv2d(64, 64, 3, padding=1)
        self.head = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.relu(self.a(x))
        x = torch.relu(self.b(x))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def wide() -> tuple[ap.PrunableModel, LatencyTable, torch.Tensor]:
    """The table from `conftest.steady_clock`: these tests check the predictor's and the fit's
    logic, not a measured table's accuracy."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 32)
    analysis = ap.analyze(Wide().eval(), x)
    with pytest.MonkeyPatch.context() as mp:
        steady_clock(mp)
        return analysis, build_table(analysis, grid=FAST), x


def _plan(analysis: ap.PrunableModel, ratio: float, round_to: int | None = None):
    return ap.PruningPlan({g.name: ratio for g in analysis.groups}, round_to=round_to)


def test_interpolation_is_exact_at_grid_points_and_bilinear_between():
    ms = np.array([[1.0, 2.0, 4.0], [3.0, 5.0, 9.0]])
    lut = LayerLut({}, (8, 16), (4, 8, 16), ms)
    for i, kin in enumerate(lut.in_grid):
        for o, kout in enumerate(lut.out_grid):
            assert lut.predict(kin, kout) == pytest.approx(ms[i, o])
    assert lut.predict(12, 6) == pytest.approx((1.0 + 2.0 + 3.0 + 5.0) / 4)
    assert lut.predict(16, 12) == pytest.approx((5.0 + 9.0) / 2)
    assert lut.predict(4, 4) == pytest.approx(0.0)  # extrapolated linearly, floored at 0
    one = LayerLut({}, (0,), (8, 16), np.array([[1.0, 3.0]]))  # depthwise: out axis only
    assert one.predict(0, 12) == pytest.approx(2.0)


def test_widths_off_the_alignment_read_the_odd_table():
    """ONNX Runtime: ``odd[i, o]`` was timed at ``in_grid[i] - 1`` (depthwise: channels - 1)."""
    ms = np.array([[1.0, 2.0], [3.0, 4.0]])
    lut = LayerLut({}, (8, 16), (8, 16), ms, ms + 10, 8)
    assert lut.predict(16, 16) == pytest.approx(4.0)
    assert lut.predict(15, 16) == pytest.approx(14.0)
    assert lut.predict(7, 8) == pytest.approx(11.0)
    assert lut.predict(16, 15) == pytest.approx(3.875)  # only the input width matters
    dw = LayerLut({}, (0,), (8, 16), np.array([[1.0, 2.0]]), np.array([[5.0, 6.0]]), 8)
    assert dw.predict(15, 15) == pytest.approx(6.0) and dw.predict(16, 16) == pytest.approx(2.0)


@pytest.mark.parametrize("model", [Residual, DepthwiseGrouped, FlattenHead])
def test_layer_widths_are_the_pruned_models(model, image):
    """Oracle: the widths the table reads off a plan are those of the model the plan builds."""
    analysis = ap.analyze(model().eval(), image)
    table = build_table(analysis, grid=TableGrid(fractions=(0.5, 1.0), calibration=()))
    rng = np.random.default_rng(0)
    for round_to in (None, 4):
        plan = ap.PruningPlan({g.name: float(rng.uniform(0.1, 0.7)) for g in analysis.groups},
                              round_to=round_to)
        modules = dict(analysis.apply(plan).named_modules())
        widths = table.layer_widths(table.kept(plan))
        assert table.kept(plan) == analysis.kept(plan)
        for name, (kin, kout) in zip(table.layer_names, widths):
            m = modules[name]
            want = (m.in_channels, m.out_channels) if isinstance(m, nn.Conv2d) \
                else (m.in_features, m.out_features)
            assert (kin, kout) == want, name
    assert np.isfinite(table.predict(plan)) and table.predict(plan) > 0


def test_dense_prediction_is_the_calibration_measurement(wide):
    analysis, table, _ = wide
    dense = table.info["calibration"][1][0]
    assert table.dense_ms == dense
    assert table.predict(ap.PruningPlan({})) == pytest.approx(dense, rel=1e-9)
    assert table.predict_kept([g.channels for g in analysis.groups]) == pytest.approx(dense)
    assert table.rest[1] >= 0.0


def test_prediction_is_monotone_in_width(wide):
    analysis, table, _ = wide
    predicted = [table.predict(_plan(analysis, r)) for r in (0.0, 0.2, 0.4, 0.6, 0.8, 0.9)]
    assert np.all(np.diff(predicted) <= 0), predicted
    assert predicted[-1] < 0.5 * predicted[0]  # 3 convs at 10 % width: far faster
    for lut in table.luts:  # each table never drops as a layer widens
        assert np.all(np.diff(lut.ms, axis=0) >= 0) and np.all(np.diff(lut.ms, axis=1) >= 0)


def test_json_round_trip(wide):
    analysis, table, _ = wide
    again = LatencyTable.from_json(table.to_json())
    assert again.key == table.key and again.key["runtime"] == "eager"
    assert again.key["signature"] and again.key["batch"] == 1
    rng = np.random.default_rng(1)
    for _ in range(5):
        plan = ap.PruningPlan({g.name: float(rng.uniform(0, 0.8)) for g in analysis.groups})
        assert again.predict(plan) == table.predict(plan)
    with pytest.raises(ConfigError, match="format"):
        LatencyTable.from_dict({**table.to_dict(), "format": 99})


@pytest.mark.parametrize("round_to", [None, 8])
def test_fit_latency_lands_on_the_predicted_target(wide, round_to):
    analysis, table, _ = wide
    for fraction in (0.6, 0.35):
        target = fraction * table.dense_ms
        plan = fit_latency(table, target, round_to=round_to)
        predicted = table.predict(plan)
        assert predicted <= target * (1 + 1e-9)
        assert predicted >= target * 0.9  # rounding to 8 of 64 channels: coarse steps
        if round_to is None:
            assert predicted >= target * 0.98
        kept = analysis.kept(plan)
        assert plan.round_to == round_to
        if round_to:
            assert all(k % round_to == 0 for k in kept), kept


def test_fit_latency_allocation_and_errors(wide):
    analysis, table, _ = wide
    first = analysis.groups[0].name
    plan = fit_latency(table, 0.7 * table.dense_ms, allocation={first: 1.0})
    assert set(plan.ratios) == {first}
    with pytest.raises(BudgetError, match="fastest reachable"):
        fit_latency(table, 0.01 * table.dense_ms, caps=0.5)
    with pytest.raises(ConfigError, match="does not have"):
        fit_latency(table, 0.5 * table.dense_ms, allocation={"nope": 1.0})
    with pytest.raises(ConfigError, match="groups"):
        table.predict_kept([1])


def test_predicted_order_of_two_plans_matches_measurement(wide):
    analysis, table, x = wide
    light, heavy = _plan(analysis, 0.1), _plan(analysis, 0.75)
    assert table.predict(light) > 1.5 * table.predict(heavy)
    measured = [measure(analysis.apply(p), x, repeats=7, warmup=2).latency_ms
                for p in (light, heavy)]
    assert measured[0] > measured[1]


def test_onnxruntime_table(image):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    analysis = ap.analyze(DepthwiseGrouped().eval(), image)
    table = build_table(analysis, LatencyTarget(runtime="onnxruntime"),
                        TableGrid(fractions=(0.5, 1.0), calibration=()))
    assert table.key["runtime"] == "onnxruntime"
    assert table.predict(ap.PruningPlan({})) == pytest.approx(table.dense_ms)
    assert any(t.odd is not None and t.align == 8 for t in table.luts)
    assert all(t.odd is None for t in table.luts if t.config.get("groups", 1) > 1
               and not t.config.get("depthwise"))  # grouped convs keep their group alignment
    again = LatencyTable.from_json(table.to_json())
    plan = ap.PruningPlan({g.name: 0.3 for g in analysis.groups})
    assert again.predict(plan) == table.predict(plan)


def test_a_latency_only_problem_fits_candidates_on_the_table(wide):
    """Problem with a table: every plan's *predicted* latency lands on its level of the
    table's dense latency (within the fit's 1 %), levels span level_low..the budget, and a
    FLOPs budget ignores the table."""
    from autoprune.budget import ResolvedBudget
    from autoprune.problem import Problem
    from autoprune.trial import LEVEL

    analysis, table, _ = wide
    cm = analysis.cost_model
    budget = ResolvedBudget(ap.Budget(latency=0.6), cm.dense_macs(), cm.dense_params(), 2.0)
    problem = Problem(analysis, ap.SearchSpace(round_to=1), budget, ap.SearchSettings(), table)
    level = next(s for s in problem.specs() if s.name == LEVEL)
    assert (level.low, level.high) == pytest.approx((0.6 * 0.6, 0.6))  # level_low 0.6
    names = [p.name for p in problem.resolved.params]
    rng = np.random.default_rng(0)
    for _ in range(5):
        params = {n: float(rng.uniform(0.1, 1.0)) for n in names}
        params[LEVEL] = float(rng.uniform(level.low, level.high))
        plan = problem.plan_for(params)
        predicted = table.predict(plan)
        assert predicted <= params[LEVEL] * table.dense_ms * (1 + 1e-9)
        assert predicted >= params[LEVEL] * table.dense_ms * 0.98
        assert plan.importance == problem.settings.importance
    flops = ResolvedBudget(ap.Budget(flops=0.5), cm.dense_macs(), cm.dense_params(), 2.0)
    plain = Problem(analysis, ap.SearchSpace(round_to=1), flops, ap.SearchSettings())
    assert plain.latency_table is None


def test_the_sensitivity_baseline_is_fitted_on_the_table_from_its_own_allocation(wide):
    """Under a latency budget the sensitivity plan is fitted on the table from its per-group
    allocation (not the parameters' rounding of it), capped at 0.95 only like a one-liner."""
    from autoprune.budget import ResolvedBudget
    from autoprune.problem import Problem

    analysis, table, _ = wide
    cm = analysis.cost_model
    budget = ResolvedBudget(ap.Budget(latency=0.4), cm.dense_macs(), cm.dense_params(), 2.0)
    problem = Problem(analysis, ap.SearchSpace(round_to=1, high=0.5), budget,
                      ap.SearchSettings(), table)
    assert problem.wants_sensitivity  # the default, "latency", with a table
    problem.sensitivity = {"stem": 0.0, "a": 0.3, "b": 0.01}
    by_name = {a["baseline"]: p for p, a in problem.baseline_params()}
    plan = problem.plan_for(by_name["sensitivity-l2"], "sensitivity-l2")
    ratios = {g: plan.ratios.get(g, 0.0) for g in ("stem", "a", "b")}
    assert ratios["a"] < ratios["b"] < ratios["stem"]
    assert ratios["stem"] > 0.5  # past the space's caps
    assert table.predict(plan) <= 0.4 * table.dense_ms * (1 + 1e-9)
    assert table.predict(plan) >= 0.4 * table.dense_ms * 0.98
    uniform = problem.plan_for(by_name["uniform-l2"], "uniform-l2")
    assert uniform.ratios != plan.ratios


@pytest.mark.slow
def test_a_latency_budget_search_builds_the_table_once_and_reuses_it(tmp_path, monkeypatch):
    """End to end: the run measures latency_table.json and the groups' sensitivity before its
    first candidate, fits every candidate on the table, starts from the sensitivity plan too,
    and a resumed run reads both files instead of measuring again."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    loader = [(x, torch.tensor([0, 1]))]
    kwargs = dict(evaluate=lambda m, split: 0.5, finetune=lambda m, steps: None,
                  train_loader=loader, budget=ap.Budget(latency=0.7),
                  run_dir=tmp_path / "run", space=ap.SearchSpace(round_to=1),
                  finetune_settings=ap.FinetuneSettings(steps=1, bn_batches=1))
    settings = ap.SearchSettings(progress=False, screen=1, short_fidelity=0, promote=1,
                                 generation=2)
    result = ap.search(Wide(), x[:1], trials=2, settings=settings, **kwargs)
    path = tmp_path / "run" / "latency_table.json"
    table = LatencyTable.from_json(path.read_text())
    stamp = path.stat().st_mtime_ns
    baselines = sorted((r for r in result.trials if r.plan and r.baseline),
                       key=lambda r: r.trial)
    assert baselines
    # the first baseline is fitted before any candidate is timed: latency-matched on the table
    # itself (later fits aim by the measured/predicted ratio so far, which load moves either way)
    first = ap.PruningPlan.from_dict(baselines[0].plan)
    assert table.predict(first) <= 0.7 * table.dense_ms * (1 + 1e-9)
    drops = json.loads((tmp_path / "run" / "baseline.json").read_text())["sensitivity"]
    assert drops == {"stem": 0.0, "a": 0.0, "b": 0.0}  # a constant score loses nothing
    assert "sensitivity-l2" in {r.baseline for r in result.trials}

    def measured_again(*args: object, **kw: object) -> None:
        raise AssertionError("the drops in baseline.json were measured again")

    monkeypatch.setattr("autoprune.sensitivity.group_drops", measured_again)
    ap.search(Wide(), x[:1], trials=4, settings=settings, resume=True, **kwargs)
    assert path.stat().st_mtime_ns == stamp  # read back, not built again


def test_fits_aim_lower_once_candidates_measure_slower_than_predicted(wide):
    """Measured 10 % slower than predicted (as fractions of dense) -> the next fits aim at
    level / 1.1 of the table's dense latency; the median ignores one wild timing."""
    from autoprune.budget import ResolvedBudget
    from autoprune.problem import Problem
    from autoprune.trial import LEVEL

    analysis, table, _ = wide
    cm = analysis.cost_model
    dense = 2.0
    budget = ResolvedBudget(ap.Budget(latency=0.6), cm.dense_macs(), cm.dense_params(), dense)
    problem = Problem(analysis, ap.SearchSpace(round_to=1), budget, ap.SearchSettings(), table)
    params = {p.name: 1.0 for p in problem.resolved.params} | {LEVEL: 0.6}
    assert problem.latency_scale == 1.0
    first = problem.plan_for(params)
    fraction = table.predict(first) / table.dense_ms
    for measured in (1.1, 1.1, 1.1, 5.0):  # x the predicted fraction; one wild figure
        problem.observe_latency(first, measured * fraction * dense)
    assert problem.latency_scale == pytest.approx(1.1)
    again = problem.plan_for(params)
    assert table.predict(again) == pytest.approx(0.6 / 1.1 * table.dense_ms, rel=0.02)
    assert table.predict(again) <= 0.6 / 1.1 * table.dense_ms * (1 + 1e-9)


def test_latency_levels_stop_at_the_fastest_model_and_a_lower_budget_is_refused(wide):
    from autoprune.budget import ResolvedBudget
    from autoprune.problem import Problem
    from autoprune.trial import LEVEL

    analysis, table, _ = wide
    cm = analysis.cost_model
    space = ap.SearchSpace(round_to=1, high=0.5)  # caps at 0.5, lifted to 0.95 if need be

    def problem(fraction: float) -> Problem:
        budget = ResolvedBudget(ap.Budget(latency=fraction), cm.dense_macs(),
                                cm.dense_params(), 2.0)
        return Problem(analysis, space, budget, ap.SearchSettings(), table)

    floor = table.predict(ap.PruningPlan(dict.fromkeys(  # as a FLOPs fit, caps rise to 0.95
        [g.name for g in analysis.groups], 0.95))) / table.dense_ms
    assert 0 < floor < 0.9
    level = next(s for s in problem(min(1.0, floor * 1.3)).specs() if s.name == LEVEL)
    assert level.low == pytest.approx(floor * 1.02) and level.high == pytest.approx(floor * 1.3)
    with pytest.raises(ap.BudgetError, match="no-latency-table"):
        problem(floor * 0.9)
    capped = table.predict(ap.PruningPlan(dict.fromkeys(
        [g.name for g in analysis.groups], 0.5))) / table.dense_ms
    tight = problem(min(1.0, (floor + capped) / 2))  # out of the caps' reach, not of 0.95's
    names = [p.name for p in tight.resolved.params]
    plan = tight.plan_for({**dict.fromkeys(names, 1.0), LEVEL: tight.budget.fraction})
    assert max(plan.ratios.values()) > 0.5  # the caps were lifted to get there
    assert table.predict(plan) <= tight.budget.fraction * table.dense_ms * (1 + 1e-9)


def test_the_rest_is_not_extrapolated_below_zero_or_its_dense_value(wide):
    """A steep slope fitted on noisy timings once predicted a negative latency for a plan
    pruning every group 0.95 (CI); the rest now stops at ``min(0, its dense value)``."""
    from dataclasses import replace

    analysis, table, _ = wide
    dense_kept = table.kept(_plan(analysis, 0.0))
    thin = table.kept(_plan(analysis, 0.95))
    act0, act = table.activations(dense_kept), table.activations(thin)
    layers = float(np.sum(table.layer_ms(thin)))
    for dense_rest, floor in ((0.05, 0.0), (-0.02, -0.02)):
        steep = replace(table, rest=(dense_rest - 5.0 * act0, 5.0))
        assert steep.predict_kept(dense_kept) == pytest.approx(
            float(np.sum(table.layer_ms(dense_kept))) + dense_rest)
        assert dense_rest - 5.0 * (act0 - act) < floor  # the line alone goes below the floor
        assert steep.predict_kept(thin) == pytest.approx(layers + floor)
    gentle = replace(table, rest=(0.05, 0.1))  # above its floor: the line as fitted
    assert gentle.predict_kept(thin) == pytest.approx(layers + 0.05 + 0.1 * act)
