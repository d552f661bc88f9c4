"""The engine: groups, apply_plan, the analytic cost model (an oracle each), input helpers."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch
import torch_pruning as tp
from conftest import Concat, DepthwiseGrouped, DictInput, FlattenHead, Residual, TwoBranches
from torch import nn

import autoprune as ap
from autoprune import engine
from autoprune.engine import inputs
from autoprune.errors import ConfigError, UnsupportedModelError
from autoprune.plan import FitRequest, fit_plan


def counted(model: nn.Module, inputs) -> tuple[float, float]:
    macs, params = tp.utils.count_ops_and_params(model, inputs)
    return float(macs), float(params)


def by_name(groups):
    return {g.name: g for g in groups}


def test_residual_add_couples_both_convs(image):
    groups = ap.prunable_groups(Residual(), image)
    g = next(g for g in groups if "a" in g.layers)
    assert set(g.layers) >= {"a", "b"}, g.layers
    assert "head" not in {n for gr in groups for n in gr.layers}  # classifier ignored


def test_concat_groups_stay_separate_and_fuse_input_shrinks(image):
    model = Concat()
    groups = by_name(ap.prunable_groups(model, image))
    assert {"left", "right"} <= set(groups)
    plan = ap.PruningPlan({"left": 0.5, "right": 0.25})
    pruned = ap.apply_plan(model, image, plan)
    assert pruned.left.out_channels == 6 and pruned.right.out_channels == 15
    assert pruned.fuse.in_channels == 21


def test_depthwise_and_grouped(image):
    model = DepthwiseGrouped()
    a = ap.analyze(model, image)
    groups = by_name(a.groups)
    # expand -> dw is coupled (depthwise): one group holds both; the grouped conv reading it
    # makes the removal even across its 4 input groups
    coupled = next(g for g in a.groups if "expand" in g.layers)
    assert "dw" in coupled.layers and coupled.channel_groups == 4
    assert groups["grouped"].channel_groups == 4
    plan = ap.PruningPlan({coupled.name: 0.5, "grouped": 0.5})
    pruned = a.apply(plan)
    assert pruned.dw.groups == pruned.dw.in_channels == pruned.dw.out_channels == 16
    assert pruned.grouped.out_channels == 32 and pruned.grouped.groups == 4
    assert pruned(image).shape == (1, 3)
    macs, params = counted(pruned, image)
    assert a.macs(plan) == pytest.approx(macs)
    assert a.params(plan) == pytest.approx(params)


def test_one_conv_feeding_two_branches(image):
    model = TwoBranches()
    pruned = ap.apply_plan(model, image, ap.PruningPlan({"shared": 0.5}))
    assert pruned.up.in_channels == 8 and pruned.down.in_channels == 8
    pruned = ap.apply_plan(model, image, ap.PruningPlan({"up": 0.5}))
    assert pruned.head.in_features == 4 + 8


def test_flatten_into_linear(image):
    model = FlattenHead()
    a = ap.analyze(model, image)
    plan = ap.PruningPlan({"conv": 0.5})
    pruned = a.apply(plan)
    assert pruned.head.in_features == 4 * 16  # one channel = 4x4 linear inputs
    assert a.macs(plan) == pytest.approx(counted(pruned, image)[0])


def test_broken_prune_is_an_unsupported_model_error_not_a_runtime_error(image):
    # torch-pruning 1.6 couples both inputs of a concat that is later flattened, and maps the
    # linear's inputs wrongly; the probe freezes that group, and with nothing else left the
    # analysis names the group and the problem.
    model = FlattenHead(concat=True)
    with pytest.raises(UnsupportedModelError, match=r"conv: the pruned copy fails.*no longer runs"):
        ap.analyze(model, image)


def test_dict_forward(image):
    model = DictInput()
    inputs = ({"image": image},)
    a = ap.analyze(model, inputs)
    plan = ap.PruningPlan({"conv": 0.5})
    pruned = a.apply(plan)
    assert pruned({"image": image}).shape == (1, 3)
    assert a.macs(plan) == pytest.approx(counted(pruned, inputs)[0])


@pytest.mark.parametrize("model_cls", [Residual, Concat, DepthwiseGrouped, TwoBranches])
@pytest.mark.parametrize("importance", ["l1", "l2", "bn", "random", "taylor"])
def test_analytic_cost_matches_counter_for_every_criterion(model_cls, importance, image):
    torch.manual_seed(1)
    model = model_cls().eval()
    a = ap.analyze(model, image)
    ratios = {g.name: 0.1 + 0.15 * (i % 4) for i, g in enumerate(a.groups)}
    plan = ap.PruningPlan(ratios, importance=importance)
    kwargs = {}
    if importance == "taylor":
        n_out = model(image).shape[1]
        kwargs["taylor_batch"] = (image.repeat(4, 1, 1, 1), torch.arange(4) % n_out)
    pruned = a.apply(plan, **kwargs)
    macs, params = counted(pruned, image)
    assert a.macs(plan) == pytest.approx(macs, rel=1e-9)
    assert a.params(plan) == pytest.approx(params, rel=1e-9)
    assert pruned(image).shape == model(image).shape


def test_apply_plan_leaves_input_untouched(image):
    model = Residual().eval()
    before = copy.deepcopy(model.state_dict())
    grads = [p.requires_grad for p in model.parameters()]
    ap.apply_plan(model, image, ap.PruningPlan({"a": 0.5, "mid": 0.5}))
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert grads == [p.requires_grad for p in model.parameters()]


def test_keeps_least_important_out(image):
    model = Residual().eval()
    with torch.no_grad():
        model.mid.weight.mul_(0.0)
        model.mid.weight[5].fill_(1.0)  # the only non-zero filter must survive
    pruned = ap.apply_plan(model, image, ap.PruningPlan({"mid": 0.9}))
    assert pruned.mid.out_channels == 2
    assert pruned.mid.weight.abs().sum((1, 2, 3)).max() > 0


def test_unknown_group_lists_close_names(image):
    with pytest.raises(ConfigError, match=r"'layer_a'.*available groups: .*left"):
        a = ap.analyze(Concat(), image)
        a.apply(ap.PruningPlan({"layer_a": 0.5, "lefft": 0.1}))
    with pytest.raises(ConfigError, match=r"'lefft'.*did you mean left"):
        ap.apply_plan(Concat(), image, ap.PruningPlan({"lefft": 0.1}))


def test_ignore_patterns(image):
    groups = ap.prunable_groups(Concat(), image, ignore=["left*"])
    assert "left" not in by_name(groups)
    with pytest.raises(ConfigError, match="matches no layer"):
        ap.prunable_groups(Concat(), image, ignore=["nothing*"])


def test_taylor_needs_a_batch(image):
    with pytest.raises(ConfigError, match="taylor_batch"):
        ap.apply_plan(Residual(), image, ap.PruningPlan({"a": 0.5}, importance="taylor"))


class Untraceable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.detach().numpy())  # leaves autograd: no graph to trace


def test_tracing_failure_is_named(image):
    with pytest.raises(UnsupportedModelError, match="Untraceable"):
        ap.analyze(Untraceable(), image)


def test_recurrent_layers_are_unsupported():
    model = nn.Sequential(nn.Linear(8, 8))
    model.add_module("rnn", nn.LSTM(8, 8))
    with pytest.raises(UnsupportedModelError, match=r"'rnn'.*LSTM"):
        ap.analyze(model, torch.randn(2, 8))


def test_group_shares(image):
    groups = ap.prunable_groups(Residual(), image)
    assert all(0 < g.macs_share < 1 for g in groups)
    assert all(g.channels > 1 for g in groups)


def test_inplace_taylor_without_batch_leaves_the_model_alone(image):
    model = Residual().train()
    a = ap.analyze(model, image)
    with pytest.raises(ConfigError, match="taylor_batch"):
        a.apply(ap.PruningPlan({"a": 0.5}, importance="taylor"), inplace=True)
    assert model.training and model.a.out_channels == 16
    assert not hasattr(model, "autoprune_history")


def test_analysis_pickles_to_the_same_groups_and_costs(image):
    a = ap.analyze(Concat(), image, ignore=["right"])
    b = pickle.loads(pickle.dumps(a))
    assert b.groups == a.groups and b.ignore == ("right",)
    plan = ap.PruningPlan({"left": 0.5})
    assert (b.macs(plan), b.params(plan)) == (a.macs(plan), a.params(plan))


def test_fit_budget_is_the_engine_front_door_of_the_pure_fit_plan(image):
    model = Residual().eval()
    a = ap.analyze(model, image)
    assert ap.fit_budget is engine.fit_budget
    plan = ap.fit_budget(model, image, {"mid": 2.0, "a": 1.0}, flops=0.6, analysis=a)
    assert plan == fit_plan(a, FitRequest({"mid": 2.0, "a": 1.0}, flops=0.6))
    assert plan == ap.fit_budget(model, image, {"mid": 2.0, "a": 1.0}, flops=0.6)  # traces
    assert a.macs(plan) <= 0.6 * a.cost_model.dense_macs()
    from importlib.metadata import version

    # the package metadata, not tp.__version__ (the 1.6.1 wheel's says 1.6.0)
    assert engine.torch_pruning_version() == version("torch-pruning")


def test_input_helpers(image):
    pair = (image, {"mask": torch.ones(1, 2, dtype=torch.long)})
    assert inputs.counter_batch(pair) == 1 and inputs.counter_batch({"x": image}) == 1
    assert inputs.batch_size_of(inputs.batched(pair, 3)) == 3
    assert inputs.batch_size_of({"x": image.repeat(2, 1, 1, 1)}) == 2
    moved = inputs.to_device(pair, "cpu", torch.float16)
    assert moved[0].dtype == torch.float16 and moved[1]["mask"].dtype == torch.long
    assert inputs.split_inputs(image) == ((image,), {})
    assert inputs.split_inputs({"x": image}) == ((), {"x": image})
    assert inputs.as_args(image) == (image,) and inputs.as_args(pair) is pair
    model = DictInput()
    assert inputs.call_model(model, ({"image": image},)).shape == (1, 3)
