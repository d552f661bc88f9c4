"""Custom layers (issue 12, item 3): ``ap.register_layer`` and the built-in handlers.

A layer holding per-channel state that torch-pruning does not know is left at its dense width:
the pruned copy fails (or the group is frozen). Registered, it prunes with the rest, and the
pruned model computes what the dense model computes with the removed channels zeroed.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch_pruning as tp
from torch import nn

import autoprune as ap
from autoprune.engine import count_macs_params, custom
from autoprune.engine.custom import register_layer, registered_pruners, unregister_layer
from autoprune.errors import ConfigError, UnsupportedModelError

C = 32  # channels of Net's convs


class ChannelScale(nn.Module):
    """A learnable per-channel scale that reshapes with its stored channel count."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.scale = nn.Parameter(torch.linspace(0.5, 1.5, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(1, self.channels, 1, 1)


class ChannelShift(nn.Module):
    """A frozen per-channel buffer and a non-trainable parameter along dim 1."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.num_features = channels
        self.shape = (1, channels, 1, 1)
        self.register_buffer("shift", torch.arange(channels, dtype=torch.float32).view(1, -1))
        self.gain = nn.Parameter(torch.ones(1, channels), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gain.view(self.shape) + self.shift.view(self.shape)


class Net(nn.Module):
    def __init__(self, layer: type[nn.Module] = ChannelScale) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, C, 3, padding=1)
        self.scale = layer(C)
        self.conv2 = nn.Conv2d(C, C, 3, padding=1)
        self.fc = nn.Linear(C, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.scale(self.conv1(x)))
        x = torch.relu(self.conv2(x))
        return self.fc(x.mean((2, 3)))


@pytest.fixture
def registry() -> Iterator[None]:
    """Each test starts from the built-in registry and leaves it so."""
    saved = dict(custom.CUSTOM_PRUNERS)
    yield
    custom.CUSTOM_PRUNERS.clear()
    custom.CUSTOM_PRUNERS.update(saved)


def _x() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(2, 3, 16, 16)


def _prune_tp(model: nn.Module, x: torch.Tensor, root: nn.Module, idxs: list[int]) -> None:
    """Prune ``root``'s output channels ``idxs`` with torch-pruning directly, as the engine does."""
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=x, verbose=False,
                                               customized_pruners=registered_pruners(model))
    dg.get_pruning_group(root, dg.get_pruner_of_module(root).prune_out_channels, idxs).prune()


def _zeroed(model: nn.Module, removed: dict[str, list[int]]) -> nn.Module:
    """A dense copy whose convs' outputs ``removed[name]`` are zero (weights and bias)."""
    dense = copy.deepcopy(model)
    layers = dict(dense.named_modules())
    with torch.no_grad():
        for name, idxs in removed.items():
            layers[name].weight[idxs] = 0
            if layers[name].bias is not None:
                layers[name].bias[idxs] = 0
    return dense


def test_unregistered_layer_breaks_the_pruned_copy(registry: None) -> None:
    x = _x()
    model = Net().eval()
    _prune_tp(model, x, model.conv1, [1, 4, 9])
    with pytest.raises(RuntimeError):  # the stored channel count no longer fits
        model(x)


def test_registered_layer_prunes_through_the_public_api(registry: None) -> None:
    """Acceptance check 3: a model with a custom per-channel layer prunes after register_layer
    (fit_budget + apply), and computes the dense model's outputs with the removed channels
    zeroed."""
    x = _x()
    model = Net().eval()
    dense_macs = ap.analyze(model, x).cost_model.dense_macs()
    ap.register_layer(ChannelScale, channel_param="scale")
    analysis = ap.analyze(model, x)
    assert "conv1" in {g.name for g in analysis.groups}
    plan = ap.fit_budget(model, x, 1.0, flops=0.5, analysis=analysis)
    pruned = analysis.apply(plan)  # checks counted MACs/params == analytic, and that it runs

    kept = pruned.conv1.out_channels
    assert kept < C
    assert pruned.scale.scale.shape == (kept,) and pruned.scale.channels == kept
    assert isinstance(pruned.scale.scale, nn.Parameter) and pruned.scale.scale.requires_grad
    assert 0.45 * dense_macs <= analysis.macs(plan) <= 0.5 * dense_macs * (1 + 1e-9)
    macs, params = count_macs_params(pruned, x)  # the scale's parameters are costed too
    assert (analysis.macs(plan), analysis.params(plan)) == pytest.approx((macs, params))

    removed = {name: sorted(idxs) for name, out, idxs in pruned.autoprune_history if out}
    assert sorted(removed) == ["conv1", "conv2"] and len(removed["conv1"]) == C - kept
    keep = [i for i in range(C) if i not in removed["conv1"]]
    assert torch.equal(pruned.scale.scale.detach(), model.scale.scale.detach()[keep])
    with torch.no_grad():
        assert torch.allclose(pruned(x), _zeroed(model, removed)(x), atol=1e-5)


def test_unregistered_layer_is_frozen_or_named(registry: None) -> None:
    """Without registration the engine never hands back a broken copy: the group is frozen,
    or applying a plan that prunes it raises the named error."""
    x = _x()
    model = Net().eval()
    analysis = ap.analyze(model, x)
    if "conv1" not in {g.name for g in analysis.groups}:
        assert "conv1" in {f.name for f in getattr(analysis, "frozen", [])}
        return
    with pytest.raises(UnsupportedModelError):
        analysis.apply(ap.PruningPlan({"conv1": 0.5}))


def test_channel_param_prunes_buffers_dims_and_counts(registry: None) -> None:
    x = _x()
    model = Net(ChannelShift).eval()
    register_layer(ChannelShift, channel_param=("shift", "gain"), channel_dim=1)
    _prune_tp(model, x, model.conv1, [0, 2, C - 1])
    layer = model.scale
    assert layer.num_features == C - 3 and layer.shape == (1, C - 3, 1, 1)
    assert torch.equal(layer.shift, torch.tensor([[1.0, *range(3, C - 1)]]))
    assert "shift" in dict(layer.named_buffers())  # still a buffer, saved in the state dict
    assert isinstance(layer.gain, nn.Parameter) and not layer.gain.requires_grad
    assert set(layer.state_dict()) == {"shift", "gain"}
    assert model(x).shape == (2, 10)


def test_custom_pruner_instance_and_subclasses(registry: None) -> None:
    class Sub(ChannelScale):
        pass

    pruner = custom.ChannelParamPruner(("scale",))
    assert register_layer(ChannelScale, pruner) is pruner
    model = Net(Sub).eval()
    assert Sub not in registered_pruners()
    assert registered_pruners(model)[Sub] is pruner  # torch-pruning matches exact types
    _prune_tp(model, _x(), model.conv1, [3])
    assert model.scale.scale.shape == (C - 1,)
    unregister_layer(ChannelScale)
    unregister_layer(ChannelScale)  # a no-op the second time
    assert ChannelScale not in registered_pruners()


def test_registered_pruners_is_a_copy(registry: None) -> None:
    register_layer(ChannelScale, channel_param="scale")
    copied = registered_pruners()
    copied.clear()
    assert ChannelScale in registered_pruners()


@pytest.mark.parametrize(("args", "kwargs", "words"), [
    ((int,), {"channel_param": "scale"}, ["layer_type", "int", "nn.Module subclass"]),
    ((ChannelScale(4),), {"channel_param": "scale"}, ["layer_type", "not an instance"]),
    ((nn.BatchNorm2d,), {"channel_param": "weight"}, ["BatchNorm2d", "already prunes"]),
    ((ChannelScale,), {}, ["neither", "channel_param=", "pruner="]),
    ((ChannelScale, custom.ChannelParamPruner(("scale",))), {"channel_param": "scale"},
     ["both", "exactly one"]),
    ((ChannelScale,), {"channel_param": 3}, ["channel_param=3", "attribute name"]),
    ((ChannelScale,), {"channel_param": ("scale", "a.b")}, ["channel_param=", "a.b"]),
    ((ChannelScale,), {"channel_param": ()}, ["channel_param=()"]),
    ((ChannelScale,), {"channel_param": "scale", "channel_dim": "0"}, ["channel_dim='0'"]),
    ((ChannelScale, custom.ChannelParamPruner), {},
     ["pruner=", "instance", "ChannelParamPruner()"]),
    ((ChannelScale, lambda m, i: m), {}, ["pruner=", "BasePruningFunc"]),
])
def test_register_layer_validates(registry: None, args: tuple, kwargs: dict,
                                  words: list[str]) -> None:
    with pytest.raises(ConfigError) as err:
        register_layer(*args, **kwargs)
    for word in words:
        assert word in str(err.value)
    assert ChannelScale not in custom.CUSTOM_PRUNERS


def test_missing_channel_param_is_named_at_prune_time(registry: None) -> None:
    register_layer(ChannelScale, channel_param="gain")
    pruner = registered_pruners()[ChannelScale]
    with pytest.raises(ConfigError) as err:
        pruner.prune_out_channels(ChannelScale(4), [0])
    for word in ("channel_param='gain'", "no tensor 'gain'", "scale"):
        assert word in str(err.value)
    register_layer(ChannelScale, channel_param="scale", channel_dim=2)
    with pytest.raises(ConfigError, match="channel_dim=2"):
        registered_pruners()[ChannelScale].get_out_channels(ChannelScale(4))


def test_missing_channel_param_through_analyze(registry: None) -> None:
    register_layer(ChannelScale, channel_param="gain")
    with pytest.raises(ConfigError, match="no tensor 'gain'"):
        ap.analyze(Net().eval(), _x())


def test_custom_magnitude_ranks_registered_layers(registry: None) -> None:
    """torch-pruning's importance skips layers it does not know; the engine falls back on this."""
    register_layer(ChannelScale, channel_param="scale")
    model = Net().eval()
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=_x(), verbose=False,
                                               customized_pruners=registered_pruners())
    group = dg.get_pruning_group(model.conv1, tp.prune_conv_out_channels, list(range(C)))
    assert torch.allclose(custom.custom_magnitude(group), model.scale.scale.detach() ** 2)
    assert custom.channel_params(model.scale) == [(model.scale.scale, 0)]
    assert custom.channel_params(model.conv1) == []


# ---- built-in handlers (timm) ---------------------------------------------------------------

def _timm(module: str) -> object:
    pytest.importorskip("timm")
    return pytest.importorskip(module)


class Wrap(nn.Module):
    """conv -> layer -> relu -> conv -> head, for layers built by ``make(channels)``."""

    def __init__(self, make: object) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.mid = make(16)  # type: ignore[operator]
        self.conv2 = nn.Conv2d(16, 8, 3, padding=1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.mid(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


@pytest.mark.parametrize(("module", "name", "make"), [
    ("timm.models.metaformer", "Scale", lambda cls: lambda c: cls(c, init_value=0.5)),
    ("timm.layers.blur_pool", "BlurPool2d", lambda cls: lambda c: cls(c, stride=2)),
])
def test_builtin_per_channel_layers(registry: None, module: str, name: str, make: object) -> None:
    cls = getattr(_timm(module), name)
    assert cls in custom.CUSTOM_PRUNERS
    x, removed = _x(), [2, 3, 11]
    model = Wrap(make(cls)).eval()  # type: ignore[operator]
    if hasattr(model.mid, "scale"):
        with torch.no_grad():
            model.mid.scale.copy_(torch.linspace(0.5, 1.5, 16))
    pruned = copy.deepcopy(model)
    _prune_tp(pruned, x, pruned.conv1, removed)
    with torch.no_grad():
        assert torch.allclose(pruned(x), _zeroed(model, {"conv1": removed})(x), atol=1e-5)
    unregister_layer(cls)  # the failure the built-in handler fixes
    broken = copy.deepcopy(model)
    _prune_tp(broken, x, broken.conv1, removed)
    with pytest.raises(RuntimeError):
        broken(x)


def test_builtin_scaled_std_conv_gain(registry: None) -> None:
    std_conv = _timm("timm.layers.std_conv")
    conv = std_conv.ScaledStdConv2d
    model = nn.Sequential(conv(3, 16, 3), nn.ReLU(), conv(16, 8, 3)).eval()
    with torch.no_grad():
        model[0].gain.copy_(torch.linspace(0.5, 1.5, 16).view(-1, 1, 1, 1))
    x, removed = _x(), [0, 5, 6]
    pruned = copy.deepcopy(model)
    _prune_tp(pruned, x, pruned[0], removed)
    keep = [i for i in range(16) if i not in removed]
    assert torch.equal(pruned[0].gain, model[0].gain[keep])
    assert pruned[2].in_channels == 13 and pruned(x).shape[1] == 8
    unregister_layer(conv)
    broken = copy.deepcopy(model)
    _prune_tp(broken, x, broken[0], removed)
    with pytest.raises(RuntimeError, match="weight should contain"):
        broken(x)


def test_builtin_selective_kernel_attention(registry: None) -> None:
    """torch-pruning maps SK attention logits (viewed as paths x C) as if interleaved: the
    pruned copy runs but mixes the paths. Registered, pruning a path channel equals zeroing it."""
    sk = _timm("timm.layers.selective_kernel")
    assert sk.SelectiveKernelAttn in custom.CUSTOM_PRUNERS
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1),
                          sk.SelectiveKernel(16, 16, split_input=False),
                          nn.Conv2d(16, 8, 1)).eval()
    for bn in model[1].modules():
        if isinstance(bn, nn.BatchNorm2d):  # random statistics: the oracle must see them
            with torch.no_grad():
                bn.running_mean.uniform_(-0.5, 0.5)
                bn.weight.uniform_(0.5, 1.5)
                bn.bias.uniform_(-0.5, 0.5)
    x, removed = _x(), [1, 4, 9]
    dense = copy.deepcopy(model)
    with torch.no_grad():  # zero the removed path channels after their BatchNorms
        for path in dense[1].paths:
            path.bn.weight[removed] = 0
            path.bn.bias[removed] = 0
    for registered in (True, False):
        if not registered:
            unregister_layer(sk.SelectiveKernelAttn)
        pruned = copy.deepcopy(model)
        _prune_tp(pruned, x, pruned[1].paths[0].conv, removed)
        with torch.no_grad():
            same = torch.allclose(pruned(x), dense(x), atol=1e-5)
        assert same is registered


def test_selective_kernel_costs_follow_its_attention(registry: None) -> None:
    """The attention's convs sit inside a registered layer (no graph node of their own): the
    analytic cost model still shrinks them with the path channels (``custom.linked_dims``)."""
    sk = _timm("timm.layers.selective_kernel")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1),
                          sk.SelectiveKernel(16, 32, split_input=False),
                          nn.Conv2d(32, 8, 1), nn.Flatten(), nn.Linear(8 * 16 * 16, 10)).eval()
    x = _x()
    analysis = ap.analyze(model, x)
    names = {g.name for g in analysis.groups}
    paths = next(n for n in names if n.startswith("1.paths."))  # the two paths are one group
    assert "0" in names
    plan = ap.PruningPlan({"0": 0.25, paths: 0.5})
    pruned = analysis.apply(plan)
    assert pruned[1].attn.fc_select.out_channels == 2 * 16
    macs, params = count_macs_params(pruned, x)
    assert (analysis.macs(plan), analysis.params(plan)) == pytest.approx((macs, params))


def test_example_runs(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(root / "examples" / "custom_layer.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "gate1 keeps" in proc.stdout and "output: (1, 10)" in proc.stdout
