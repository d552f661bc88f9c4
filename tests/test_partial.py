"""Partial pruning: a model with awkward blocks is pruned everywhere else, and says what it froze.

Oracles: torch-pruning's counter and FlopCounterMode on the pruned copy; the frozen list names
each group with a reason.
"""

from __future__ import annotations

import pytest
import torch

import autoprune as ap
from autoprune.engine import count_macs_params
from autoprune.engine.count import count_matmul_macs

timm = pytest.importorskip("timm")


def _prune(name: str, flops: float, unreachable: float | None = None):
    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    a = ap.analyze(model, x, trace_timeout=300)  # what is frozen, not how fast (CI shares CPUs)
    if unreachable is not None:  # below what the unfrozen groups can remove: the named error
        with pytest.raises(ap.BudgetError, match="smallest reachable"):
            ap.fit_budget(model, x, 1.0, flops=unreachable, analysis=a)
    plan = ap.fit_budget(model, x, 1.0, flops=flops, analysis=a)
    pruned = a.apply(plan)
    kept, cm = a.kept(plan), a.cost_model
    assert abs(a.macs(plan) / cm.dense_macs() - flops) <= 0.01 * flops
    assert cm.counter_macs(kept) == pytest.approx(count_macs_params(pruned, x)[0], rel=0.005)
    assert cm.matmul_macs(kept) == pytest.approx(count_matmul_macs(pruned, x), rel=0.005)
    with torch.no_grad():
        assert pruned(x).shape == (1, 10)
    assert a.frozen and all(f.name and f.reason for f in a.frozen)
    return a


@pytest.mark.slow
def test_ghostnet_freezes_the_ghost_groups_it_cannot_cost_and_says_so():
    # a ghost module concatenates a conv and a cheap copy of it, then slices: pruning one
    # channel removes two, and torch-pruning's count disagrees with the cost model there
    a = _prune("ghostnet_100", 0.7, unreachable=0.5)
    assert any("counted MACs" in f.reason for f in a.frozen)


@pytest.mark.slow
def test_cspresnet_prunes_around_its_split_blocks():
    a = _prune("cspresnet50", 0.5)
    assert any("pruned copy fails" in f.reason for f in a.frozen)


@pytest.mark.slow
def test_mixnet_freezes_its_split_convs_and_prunes_the_rest():
    a = _prune("mixnet_s", 0.8)
    assert any("split_with_sizes" in f.reason for f in a.frozen)
