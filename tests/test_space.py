"""Search spaces: the shipped files resolve against their model families; resolution semantics."""

from __future__ import annotations

import dataclasses
import functools
import os
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torch import nn

import autoprune
from autoprune.engine import analyze
from autoprune.errors import ConfigError
from autoprune.space import Param, ResolvedSpace, SearchSpace, builtin_spaces, load_space
from autoprune.tasks.models import cifar_resnet, vgg_small, vit_small

RGB = (1, 3, 64, 64)
GREY = (1, 1, 28, 28)

# name -> (builder, example input shape)
MODELS: dict[str, tuple[Callable[[], nn.Module], tuple[int, ...]]] = {
    "resnet18": (lambda: tvm.resnet18(weights=None, num_classes=10), RGB),
    "resnet50": (lambda: tvm.resnet50(weights=None, num_classes=10), RGB),
    "cifar_resnet8": (lambda: cifar_resnet(depth=8), GREY),
    "cifar_resnet20": (lambda: cifar_resnet(depth=20, in_channels=1), GREY),
    "mobilenet_v2": (lambda: tvm.mobilenet_v2(weights=None, num_classes=10), RGB),
    # four stages, last conv features.10.0 (the benchmarks' Fashion-MNIST MobileNetV2)
    "mobilenet_v2_small": (lambda: tvm.MobileNetV2(num_classes=10, inverted_residual_setting=[
        [1, 16, 1, 1], [4, 24, 2, 2], [4, 32, 3, 2], [4, 64, 2, 1], [4, 96, 1, 1]]), RGB),
    "vgg11_bn": (lambda: tvm.vgg11_bn(weights=None, num_classes=10), RGB),
    "vgg_small": (lambda: vgg_small(), GREY),
    "vit_small": (lambda: vit_small(), GREY),
}

# Every shipped space file and the models of its family it must resolve against.
# mobilenet_v3_small is not listed: its groups are named features.N.block.*, so the
# non-optional `features.*.conv.1.0` / `features.*.conv.2` rules of mobilenet.yaml match nothing.
FAMILIES: dict[str, tuple[str, ...]] = {
    "default": ("resnet18", "cifar_resnet8"),
    "resnet": ("resnet18", "resnet50", "cifar_resnet20"),
    "mobilenet": ("mobilenet_v2", "mobilenet_v2_small"),
    "plain": ("vgg11_bn", "vgg_small"),
    "vit": ("vit_small",),
}


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.cache
def group_names(model: str) -> tuple[str, ...]:
    build, shape = MODELS[model]
    torch.manual_seed(0)
    names = tuple(g.name for g in analyze(build(), torch.randn(*shape)).groups)
    assert names and len(set(names)) == len(names)
    return names


def by_name(resolved: ResolvedSpace) -> dict[str, Param]:
    return {p.name: p for p in resolved.params}


def test_every_shipped_space_has_a_family_test() -> None:
    assert set(builtin_spaces()) == set(FAMILIES)


@pytest.mark.parametrize(
    ("space", "model"), [(s, m) for s, models in FAMILIES.items() for m in models]
)
def test_shipped_space_resolves_against_its_family(space: str, model: str) -> None:
    spec = load_space(space)
    names = group_names(model)
    resolved = spec.resolve(names)
    assert resolved.group_names == names
    covered = [g for p in resolved.params for g in p.groups]
    assert sorted(covered) == sorted(names)  # a partition: each group in exactly one param
    assert len({p.name for p in resolved.params}) == len(resolved.params)
    for p in resolved.params:
        assert 0.0 <= p.low <= p.high < 1.0
    caps = resolved.caps()
    assert caps.shape == (len(names),) and np.all((caps > 0) & (caps < 1))
    uniform = resolved.uniform()
    assert set(uniform) == {p.name for p in resolved.params}
    assert np.all(resolved.allocation(uniform) <= caps + 1e-12)
    if space == "default":
        assert len(resolved.params) == len(names)
        assert np.allclose(caps, spec.high)


def _residual(name: str) -> bool:
    return name == "conv1" or name.endswith("downsample.0")


@pytest.mark.parametrize("model", FAMILIES["resnet"])
def test_resnet_space_ties_stages(model: str) -> None:
    names = group_names(model)
    resolved = load_space("resnet").resolve(names)
    params = by_name(resolved)
    stages = sorted({int(m.group(1)) for n in names if (m := re.match(r"layer(\d+)\.", n))})
    assert stages == ([1, 2, 3] if model.startswith("cifar") else [1, 2, 3, 4])
    for k in stages:
        inside = {n for n in names if n.startswith(f"layer{k}.") and not _residual(n)}
        assert len(inside) >= 2
        assert f"stage{k}" in params
        assert set(params[f"stage{k}"].groups) == inside
        assert params[f"stage{k}"].high == pytest.approx(0.8)
    assert "stage4" not in params or 4 in stages
    caps = dict(zip(resolved.group_names, resolved.caps()))
    assert params["conv1"].groups == ("conv1",)
    assert caps["conv1"] == pytest.approx(0.5)
    for n in names:
        if n.endswith("downsample.0"):
            assert params[n].groups == (n,) and caps[n] == pytest.approx(0.5)
    # one shared value moves every block group of a stage together
    values = {p.name: 0.0 for p in resolved.params} | {"stage2": 0.3}
    alloc = dict(zip(resolved.group_names, resolved.allocation(values)))
    assert {n for n, a in alloc.items() if a == pytest.approx(0.3)} == set(params["stage2"].groups)


@pytest.mark.parametrize(("model", "head"), [("mobilenet_v2", "features.18.0"),
                                           ("mobilenet_v2_small", "features.10.0")])
def test_mobilenet_space_caps(model: str, head: str) -> None:
    names = group_names(model)
    caps = dict(zip(names, load_space("mobilenet").resolve(names).caps()))
    assert caps["features.3.conv.1.0"] == pytest.approx(0.75)
    assert caps["features.3.conv.2"] == pytest.approx(0.4)
    assert caps["features.1.conv.0.0"] == pytest.approx(0.6)
    # the last 1x1 conv, whatever the depth, and no other group
    assert names[-1] == head
    assert {n for n, c in caps.items() if c == pytest.approx(0.9)} == {head}


@pytest.mark.parametrize("model", FAMILIES["plain"])
def test_plain_space_caps_first_conv(model: str) -> None:
    names = group_names(model)
    resolved = load_space("plain").resolve(names)
    caps = dict(zip(names, resolved.caps()))
    assert caps["features.0"] == pytest.approx(0.5)
    assert len(resolved.params) == len(names)  # nothing shared: one parameter per conv
    for n in names:
        if n.startswith("classifier."):
            assert caps[n] == pytest.approx(0.7)
        elif n != "features.0":
            assert caps[n] == pytest.approx(0.85)


# -- resolution semantics on a hand-made group list ----------------------------------------

GROUPS = ("stem", "a.0", "a.1", "a.2", "b.0", "b.1", "head")


def hand_space() -> ResolvedSpace:
    space = SearchSpace.from_dict({
        "ratio": {"low": 0.0, "high": 0.8, "step": 0.1},
        "rules": [
            {"pattern": "stem", "high": 0.5},
            {"pattern": "a.*", "shared": True, "name": "stage_a", "low": 0.1, "high": 0.7},
            {"pattern": "b.*", "shared": True, "step": 0.25},  # unnamed: named by its pattern
        ],
    })
    return space.resolve(GROUPS)


def test_resolved_params_on_hand_made_groups() -> None:
    params = by_name(hand_space())
    assert set(params) == {"stem", "stage_a", "b.*", "head"}
    assert params["stage_a"].groups == ("a.0", "a.1", "a.2")
    assert (params["stage_a"].low, params["stage_a"].high) == (0.1, 0.7)
    assert params["b.*"].groups == ("b.0", "b.1") and params["b.*"].step == 0.25
    assert (params["head"].low, params["head"].high, params["head"].step) == (0.0, 0.8, 0.1)


def test_allocation_and_caps() -> None:
    space = hand_space()
    alloc = space.allocation({"stem": 0.2, "stage_a": 0.4, "b.*": 0.5, "head": 0.0})
    assert alloc.tolist() == [0.2, 0.4, 0.4, 0.4, 0.5, 0.5, 0.0]
    assert space.caps().tolist() == [0.5, 0.7, 0.7, 0.7, 0.8, 0.8, 0.8]
    with pytest.raises(ConfigError, match="stage_a"):
        space.allocation({"stem": 0.2, "b.*": 0.5, "head": 0.0})


def _on_grid(value: float, p: Param) -> bool:
    n = (value - p.low) / p.step
    return abs(n - round(n)) < 1e-9 and p.low - 1e-12 <= value <= p.high + 1e-12


def test_uniform_is_the_smallest_cap_on_each_grid() -> None:
    space = hand_space()
    params = by_name(space)
    uniform = space.uniform()
    assert uniform == pytest.approx({"stem": 0.5, "stage_a": 0.5, "b.*": 0.5, "head": 0.5})
    for name, value in uniform.items():
        assert _on_grid(value, params[name])
    # off-grid smallest cap: snapped to the nearest grid point of each parameter
    odd = SearchSpace.from_dict({
        "ratio": {"high": 0.8, "step": 0.25},
        "rules": [{"pattern": "stem", "high": 0.33, "step": 0.1}],
    }).resolve(("stem", "x"))
    assert odd.uniform() == pytest.approx({"stem": 0.3, "x": 0.25})


def test_from_group_ratios_takes_the_mean_and_snaps() -> None:
    space = hand_space()
    params = by_name(space)
    ratios = {"stem": 0.93, "a.0": 0.2, "a.1": 0.4, "a.2": 0.35, "b.0": 0.1, "b.1": 0.5,
              "head": 0.04}
    values = space.from_group_ratios(ratios)
    assert values == pytest.approx({
        "stem": 0.5,        # clipped to the cap
        "stage_a": 0.3,     # mean 0.3167 -> nearest 0.1 step from low 0.1
        "b.*": 0.25,        # mean 0.3 -> nearest 0.25 step
        "head": 0.0,        # 0.04 -> 0.0
    })
    for name, value in values.items():
        assert _on_grid(value, params[name])
    # missing groups count as 0; shared low is the floor
    assert space.from_group_ratios({})["stage_a"] == pytest.approx(0.1)
    # round trip: the allocation of on-grid values maps back to themselves
    on_grid = {"stem": 0.4, "stage_a": 0.6, "b.*": 0.75, "head": 0.7}
    back = space.from_group_ratios(dict(zip(GROUPS, space.allocation(on_grid))))
    assert back == pytest.approx(on_grid)


def test_step_none_keeps_values_continuous() -> None:
    space = SearchSpace.from_dict({"ratio": {"high": 0.8, "step": None}}).resolve(("x", "y"))
    assert space.from_group_ratios({"x": 0.123, "y": 0.95}) == pytest.approx(
        {"x": 0.123, "y": 0.8})


# -- errors --------------------------------------------------------------------------------


def test_pattern_matching_nothing_names_pattern_and_groups() -> None:
    space = SearchSpace.from_dict({"rules": [{"pattern": "layer9.*", "shared": True}]})
    with pytest.raises(ConfigError) as info:
        space.resolve(("layer1.0.conv1", "layer2.0.conv1", "conv1"))
    msg = str(info.value)
    assert "'layer9.*'" in msg
    assert any(g in msg for g in ("layer1.0.conv1", "layer2.0.conv1", "conv1"))
    assert "optional" in msg
    with pytest.raises(ConfigError) as info:  # nothing similar: still lists groups
        SearchSpace.from_dict({"rules": [{"pattern": "zzz"}]}).resolve(("features.0", "fc"))
    assert "'zzz'" in str(info.value) and "features.0" in str(info.value)


def test_optional_rule_matching_nothing_is_fine() -> None:
    space = SearchSpace.from_dict({
        "rules": [{"pattern": "layer4.*", "shared": True, "name": "stage4", "optional": True}],
    })
    resolved = space.resolve(("conv1", "layer1.0.conv1"))
    assert [p.name for p in resolved.params] == ["conv1", "layer1.0.conv1"]


@pytest.mark.parametrize(("data", "needle"), [
    ({"ratios": {"high": 0.5}}, "ratios"),
    ({"budget": 0.4}, "budget"),
    ({"rules": [{"pattern": "x", "cap": 0.5}]}, "cap"),
    ({"rules": [{"shared": True}]}, "pattern"),
])
def test_unknown_keys_are_config_errors(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        SearchSpace.from_dict(data)


@pytest.mark.parametrize("data", [
    {"ratio": {"high": 1.0}},
    {"ratio": {"high": 1.5}},
    {"ratio": {"low": 0.6, "high": 0.4}},
    {"ratio": {"low": -0.1}},
    {"ratio": {"step": 0}},
    {"rules": [{"pattern": "x", "high": 1.0}]},
    {"rules": [{"pattern": "x", "low": 0.5, "high": 0.3}]},
    {"rules": [{"pattern": "x", "low": 0.9}]},  # above the default high 0.8
])
def test_bad_ranges_are_config_errors(data: dict) -> None:
    with pytest.raises(ConfigError, match=r"range|step"):
        SearchSpace.from_dict(data)


def test_unknown_space_lists_builtins() -> None:
    with pytest.raises(ConfigError) as info:
        load_space("nosuch")
    msg = str(info.value)
    assert "'nosuch'" in msg
    for name in builtin_spaces():
        assert name in msg


def test_load_space_defaults_to_default() -> None:
    assert load_space() == load_space("default")
    assert load_space(None).high == pytest.approx(0.8)


def test_yaml_file_path(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "ignore: [fc]\n"
        "round_to: 8\n"
        "ratio: {low: 0.1, high: 0.6, step: 0.1}\n"
        "rules:\n"
        "  - {pattern: 'layer1.*', shared: true, name: s1, high: 0.4}\n"
    )
    for spec in (path, str(path)):
        space = load_space(spec)
        assert space.ignore == ("fc",) and space.round_to == 8
        assert (space.low, space.high, space.step) == (0.1, 0.6, 0.1)
        resolved = space.resolve(("conv1", "layer1.0.conv1", "layer1.1.conv1"))
        assert resolved.round_to == 8
        assert by_name(resolved)["s1"].groups == ("layer1.0.conv1", "layer1.1.conv1")
        assert resolved.caps().tolist() == [0.6, 0.4, 0.4]
    # the dict form round-trips
    assert SearchSpace.from_dict(space.to_dict(), source=str(path)) == space


@pytest.mark.parametrize(("text", "needle"), [
    ("ratio: [unclosed\n", "invalid YAML"),
    ("- a\n- b\n", "mapping"),
])
def test_bad_yaml_files(tmp_path, text: str, needle: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_space(path)


def test_empty_yaml_file_is_the_default_space(tmp_path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("")
    space = load_space(path)
    assert (space.low, space.high, space.step, space.rules) == (0.0, 0.8, 0.05, ())


def test_to_dict_round_trip_keeps_zero_rule_bounds() -> None:
    space = SearchSpace.from_dict({
        "ratio": {"low": 0.2, "high": 0.8, "step": 0.1},
        "rules": [{"pattern": "stem", "low": 0.0, "high": 0.5}],
    })
    again = SearchSpace.from_dict(space.to_dict())
    assert by_name(again.resolve(("stem",)))["stem"].low == 0.0
    assert again == space


REPO = Path(__file__).resolve().parent.parent


def test_shipped_spaces_are_package_data() -> None:
    # Read through importlib.resources from inside the package, so a wheel carries them
    # (pyproject's package-data glob must match every file).
    package_dir = Path(autoprune.__file__).resolve().parent
    shipped = builtin_spaces()
    assert shipped
    for name, ref in shipped.items():
        path = Path(str(ref)).resolve()
        assert path.parent == package_dir / "search_spaces", (name, path)
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "search_spaces/*.yaml" in pyproject["tool"]["setuptools"]["package-data"]["autoprune"]


def test_top_level_search_spaces_is_a_relative_symlink_into_the_package() -> None:
    link = REPO / "search_spaces"
    if not (REPO / ".git").exists():
        pytest.skip("not a source checkout")
    assert link.is_symlink(), "search_spaces/ must be a symlink to autoprune/search_spaces"
    target = os.readlink(link)
    assert not os.path.isabs(target) and target.rstrip("/") == "autoprune/search_spaces"
    assert sorted(p.stem for p in link.glob("*.yaml")) == sorted(builtin_spaces())


def test_an_open_space_rounds_to_8_unless_the_space_says():
    from autoprune.space import TARGET_ROUND_TO, with_target_rounding

    open_space, fixed = load_space("default"), dataclasses.replace(load_space("default"),
                                                                     round_to=4)
    assert open_space.round_to is None and TARGET_ROUND_TO == 8
    assert with_target_rounding(open_space).round_to == 8
    assert with_target_rounding(fixed) is fixed  # the space wins
    no_rounding = dataclasses.replace(open_space, round_to=1)  # what --round-to 1 gives
    assert with_target_rounding(no_rounding) is no_rounding
