"""Every torchvision family: fit a 50 % FLOPs budget, prune, and check against the counter."""

from __future__ import annotations

import pytest
import torch
import torch_pruning as tp
import torchvision

import autoprune as ap
from autoprune.errors import UnsupportedModelError

ZOO = [
    "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2",
    "mobilenet_v3_small", "vgg11_bn", "densenet121", "efficientnet_b0", "regnet_x_400mf",
    "squeezenet1_1", "convnext_tiny", "googlenet", "mnasnet0_5",
]
UNSUPPORTED = {
    # torch-pruning 1.6 fails on the channel shuffle (view/transpose across channels)
    "shufflenet_v2_x1_0": "ViewBackward0",
}


def build(name: str) -> torch.nn.Module:
    kwargs = {"aux_logits": False, "init_weights": False} if name == "googlenet" else {}
    return torchvision.models.get_model(name, weights=None, num_classes=10, **kwargs).eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_zoo_lands_on_half_the_flops(name):
    torch.manual_seed(0)
    model = build(name)
    x = torch.randn(1, 3, 64, 64)
    dense_macs, _ = tp.utils.count_ops_and_params(model, x)
    analysis = ap.analyze(model, x)
    plan = ap.fit_budget(model, x, 1.0, flops=0.5, analysis=analysis)
    pruned = analysis.apply(plan)
    macs, params = tp.utils.count_ops_and_params(pruned, x)
    assert abs(macs / dense_macs - 0.5) <= 0.005, macs / dense_macs  # within 1 % of 50 %
    assert macs <= 0.5 * dense_macs * 1.0001  # "at most" the budget
    with torch.no_grad():
        assert pruned(x).shape == model(x).shape
    kept = analysis.kept(plan)
    assert min(kept) >= 1
    modules = dict(pruned.named_modules())
    for g in analysis.groups:
        assert modules[g.name].weight.shape[0] >= 1
    assert abs(analysis.macs(plan) - macs) / macs <= 0.005
    assert abs(analysis.params(plan) - params) / params <= 0.005


@pytest.mark.parametrize("name,op", sorted(UNSUPPORTED.items()))
def test_unsupported_models_name_the_op(name, op):
    with pytest.raises(UnsupportedModelError, match=op):
        ap.analyze(build(name), torch.randn(1, 3, 64, 64))


@pytest.mark.slow
def test_vit_is_refused_cleanly():
    model = torchvision.models.vit_b_16(weights=None, num_classes=10, image_size=32).eval()
    with pytest.raises(UnsupportedModelError, match="MultiheadAttention"):
        ap.analyze(model, torch.randn(1, 3, 32, 32))
