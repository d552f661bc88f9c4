"""Pruned-model archives: exact reload in a fresh process, and refusal of crafted files."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch
import torchvision

import autoprune as ap
from autoprune.errors import ConfigError


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_reload_in_new_process_reproduces_outputs(name, tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.get_model(name, weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    plan = ap.fit_budget(model, x[:1], 1.0, flops=0.4)
    pruned = ap.apply_plan(model, x[:1], plan).eval()
    with torch.no_grad():
        for m in pruned.modules():  # non-trivial BN statistics, so a wrong reload would show
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
        expected = pruned(x)
    archive = ap.save_pruned(pruned, tmp_path / "m.pt", x[:1], f"torchvision.models:{name}",
                             {"num_classes": 10}, plan=plan)
    torch.save({"x": x, "y": expected}, tmp_path / "ref.pt")
    script = textwrap.dedent(f"""
        import torch, autoprune as ap
        model = ap.load_pruned({str(archive)!r})
        ref = torch.load({str(tmp_path / "ref.pt")!r})
        with torch.no_grad():
            print((model(ref["x"]) - ref["y"]).abs().max().item())
        print(model.autoprune_plan == ap.PruningPlan.from_json({plan.to_json()!r}))
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         check=True).stdout.split()
    assert float(out[0]) <= 1e-6
    assert out[1] == "True"


def _tiny_archive(tmp_path, builder: str):
    model = torchvision.models.get_model("resnet18", weights=None, num_classes=10).eval()
    x = torch.randn(1, 3, 32, 32)
    pruned = ap.apply_plan(model, x, ap.PruningPlan({"conv1": 0.5}))
    path = ap.save_pruned(pruned, tmp_path / "a.pt", x, "torchvision.models:resnet18",
                          {"num_classes": 10})
    archive = torch.load(path, weights_only=True)
    archive["builder"] = builder
    torch.save(archive, path)
    return path


def test_constructor_reference_to_os_system_is_refused(tmp_path):
    path = _tiny_archive(tmp_path, "os:system")
    with pytest.raises(ConfigError, match=r"'os:system'.*refusing"):
        ap.load_pruned(path)


def test_pickled_object_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"format": "autoprune.pruned/1", "payload": Evil()}, path)
    with pytest.raises(ConfigError, match="refusing to load"):
        ap.load_pruned(path)


def test_caller_supplied_builder_is_used(tmp_path):
    path = _tiny_archive(tmp_path, "mypkg.models:make")
    calls = []

    def make(**kwargs):
        calls.append(kwargs)
        return torchvision.models.resnet18(**kwargs)

    model = ap.load_pruned(path, builders={"mypkg.models:make": make})
    assert calls == [{"num_classes": 10}]
    assert model.conv1.out_channels == 32


def test_save_needs_history_and_plain_kwargs(tmp_path):
    model = torchvision.models.resnet18(num_classes=10)
    with pytest.raises(ConfigError, match="no pruning history"):
        ap.save_pruned(model, tmp_path / "x.pt", torch.randn(1, 3, 32, 32),
                       "torchvision.models:resnet18")
    with pytest.raises(ConfigError, match="local function or lambda"):
        ap.save_pruned(model, tmp_path / "x.pt", torch.randn(1, 3, 32, 32), lambda: model,
                       history=[])
    with pytest.raises(ConfigError, match="builder_kwargs holds"):
        ap.save_pruned(model, tmp_path / "x.pt", torch.randn(1, 3, 32, 32),
                       torchvision.models.resnet18, {"norm_layer": torch.nn.BatchNorm2d},
                       history=[])
    with pytest.raises(ConfigError, match="no pruned-model archive"):
        ap.load_pruned(tmp_path / "missing.pt")
