"""Coupled channel groups: torch-pruning's groups as typed records.

torch-pruning's :class:`DependencyGraph` finds which channels must go together (residual adds,
concats, depthwise/grouped convs, flatten into linear). :class:`CoupledGroup` keeps what the
engine needs of one such group (its root layer and handler, the layers it touches and by how
much); :class:`Group` is the public, plain-data face of it, named by the root layer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch_pruning as tp
from torch import nn

from autoprune.engine.costmodel import CostModel
from autoprune.engine.trace import ROOT_TYPES, UNSUPPORTED, check_supported

__all__ = ["CoupledGroup", "Group", "collect_groups", "describe_groups", "removal_of"]

# (id of a dependency-graph node, "out" | "in") -> channels removed there per root channel
MemberKey = tuple[int, str]


@dataclass(frozen=True)
class Group:
    """A set of channels that must be removed together, named by its root layer.

    ``macs_share`` is the fraction of the dense model's MACs that disappears if this group alone
    loses all its channels: how much a ratio on this group can buy.
    """

    name: str
    channels: int
    macs_share: float
    params_share: float
    channel_groups: int = 1
    layers: tuple[str, ...] = ()

    @property
    def quantum(self) -> int:
        """Channels can only be removed in multiples of this (grouped convs)."""
        return self.channel_groups


@dataclass(frozen=True)
class CoupledGroup:
    """One torch-pruning group of the traced model, as the engine uses it."""

    name: str  # named_modules() name of the root layer
    root: nn.Module
    handler: Callable[..., Any]  # the root's pruning function (out or in channels)
    channels: int
    channel_groups: int
    members: dict[MemberKey, float]
    layers: tuple[str, ...]  # root-type layers whose output channels the group prunes


def _channel_groups(dg: tp.DependencyGraph, group: Any) -> int:
    counts = [1]
    for dep, _ in group:
        m = dep.target.module
        if not isinstance(m, nn.Module) or (
            isinstance(m, nn.modules.conv._ConvNd) and m.groups == m.out_channels
        ):
            continue
        pruner = dg.get_pruner_of_module(m)
        if pruner is None:
            continue
        out_fn = dg.is_out_channel_pruning_fn(dep.handler)
        fn = pruner.get_out_channel_groups if out_fn else pruner.get_in_channel_groups
        counts.append(int(fn(m) or 1))
    return max(counts)


def _coupled(dg: tp.DependencyGraph, group: Any, names: dict[nn.Module, str],
             model: nn.Module) -> CoupledGroup | None:
    root = group[0].dep.target.module
    channels = len(group[0].idxs)
    if channels <= 1:
        return None
    members: dict[MemberKey, float] = {}
    for dep, idxs in group:
        direction = "out" if dg.is_out_channel_pruning_fn(dep.handler) else "in"
        members[(id(dep.target), direction)] = len(idxs) / channels
        if isinstance(dep.target.module, UNSUPPORTED):
            check_supported(model)
    layers = tuple(
        names[dep.target.module] for dep, _ in group
        if dep.target.module in names
        and dg.is_out_channel_pruning_fn(dep.handler)
        and isinstance(dep.target.module, ROOT_TYPES)
    )
    return CoupledGroup(name=names[root], root=root, handler=group[0].dep.handler,
                        channels=channels, channel_groups=_channel_groups(dg, group),
                        members=members, layers=layers)


def collect_groups(dg: tp.DependencyGraph, names: dict[nn.Module, str],
                   ignored_modules: list[nn.Module], model: nn.Module) -> list[CoupledGroup]:
    """Every group of more than one channel rooted at a conv/linear layer not ignored."""
    found = (_coupled(dg, group, names, model)
             for group in dg.get_all_groups(ignored_layers=ignored_modules,
                                            root_module_types=ROOT_TYPES))
    return [g for g in found if g is not None]


def removal_of(groups: Sequence[CoupledGroup], node: Any,
               directions: tuple[str, ...]) -> dict[int, float]:
    """``{group index: channels removed from node per root channel}`` (first direction found)."""
    out: dict[int, float] = {}
    for g, group in enumerate(groups):
        for d in directions:
            scale = group.members.get((id(node), d))
            if scale is not None:
                out[g] = scale
                break
    return out


def describe_groups(groups: Sequence[CoupledGroup], cm: CostModel) -> list[Group]:
    """The public records, with the MACs/params share each group can remove on its own."""
    dense_kept = cm.group_channels
    macs0, params0 = cm.dense_macs(), cm.dense_params()
    described = []
    for g, group in enumerate(groups):
        kept = dense_kept.copy()
        kept[g] = 0
        described.append(Group(
            name=group.name, channels=group.channels,
            macs_share=(macs0 - cm.macs(kept)) / macs0 if macs0 else 0.0,
            params_share=(params0 - cm.params(kept)) / params0 if params0 else 0.0,
            channel_groups=group.channel_groups, layers=group.layers,
        ))
    return described
