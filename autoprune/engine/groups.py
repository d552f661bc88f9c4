"""Coupled channel groups: torch-pruning's groups as typed records.

torch-pruning's :class:`DependencyGraph` finds which channels must go together (residual adds,
concats, depthwise/grouped convs, flatten into linear). :class:`CoupledGroup` keeps what the
engine needs of one such group (its root layer and handler, the layers it touches and by how
much); :class:`Group` is the public, plain-data face of it, named by the root layer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch_pruning as tp
from torch import nn

from autoprune.engine.attention import HeadLayout
from autoprune.engine.costmodel import CostModel
from autoprune.engine.trace import ROOT_TYPES, UNSUPPORTED, check_supported
from autoprune.errors import UnsupportedModelError
from autoprune.interrupts import raise_if_pressed

__all__ = ["CoupledGroup", "FrozenGroup", "Group", "collect_groups", "describe_groups",
           "fixed_index_mappings", "head_groups", "removal_of"]

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
    kind: str = "channels"  # "heads": the attention heads of one block; "glu": a gated MLP's
    unit_width: int = 1  # layer channels per counted unit: a head's width for heads

    @property
    def quantum(self) -> int:
        """Channels can only be removed in multiples of this (grouped convs)."""
        return self.channel_groups


@dataclass(frozen=True)
class FrozenGroup:
    """A group autoprune leaves at full width, and why (one line)."""

    name: str
    reason: str


@dataclass(frozen=True)
class CoupledGroup:
    """One group of the traced model, as the engine uses it: a torch-pruning channel group, or
    the heads of one attention block (``heads`` set; ``channels`` counts its units)."""

    name: str  # named_modules() name of the root layer (the attention module for heads)
    root: nn.Module
    handler: Callable[..., Any] | None  # the root's pruning function (None for heads)
    channels: int
    channel_groups: int
    members: dict[MemberKey, float]
    layers: tuple[str, ...]  # root-type layers whose output channels the group prunes
    heads: HeadLayout | None = field(default=None, compare=False)

    @property
    def kind(self) -> str:
        return "channels" if self.heads is None else self.heads.kind

    @property
    def unit_width(self) -> int:
        """Layer channels per unit: 1, or the inner width of one unit of heads."""
        return 1 if self.heads is None else self.heads.heads_per_unit * self.heads.head_dim


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


class _Deadline(Exception):
    """Raised inside torch-pruning when grouping runs past the trace time limit."""


class _RootTimeout(Exception):
    """Raised inside torch-pruning when one root's group takes longer than ``ROOT_SECONDS``."""


ROOT_SECONDS = 10.0  # one root's grouping; a healthy group takes well under a second


@dataclass
class _Clock:
    deadline: float
    root_deadline: float = float("inf")


@dataclass
class _Guard:
    """Wraps an index mapping: an exploding index set or the deadline stops grouping there."""

    mapping: Callable[[Any], Any]
    limit: int
    clock: _Clock

    def __call__(self, idxs: Any) -> Any:
        now = time.monotonic()
        if now > self.clock.deadline:
            raise _Deadline
        if now > self.clock.root_deadline:
            raise _RootTimeout
        out = self.mapping(idxs)
        if len(out) > self.limit:
            raise IndexError(f"index mapping {type(self.mapping).__name__} expands "
                             f"{len(idxs)} channels to {len(out)}")
        return out


def _index_limit(model: nn.Module) -> int:
    widths = [max(getattr(m, a, 0) or 0 for a in ("in_channels", "out_channels", "in_features",
                                                   "out_features")) for m in model.modules()]
    return 4 * max([4096, *widths])


@contextmanager
def fixed_index_mappings() -> Iterator[None]:
    """Keep torch-pruning from recomputing every index mapping on every ``get_pruning_group``
    (``build_dependency`` computed them; they only change once channels are removed). The
    recomputation dominates grouping on token-reshaping models (0.8 s per group on Swin-T)."""
    imap = tp.dependency.index_mapping
    saved = imap.update_index_mapping
    imap.update_index_mapping = lambda graph: None
    try:
        yield
    finally:
        imap.update_index_mapping = saved


@contextmanager
def _guarded(dg: tp.DependencyGraph, limit: int, clock: _Clock) -> Iterator[None]:
    """Guard every index mapping (with the mappings fixed: recomputing would unguard them)."""
    wrapped: list[tuple[Any, int, Any]] = []
    for node in dg.module2node.values():
        for dep in node.dependencies:
            for i, mapping in enumerate(dep.index_mapping):
                if mapping is not None:
                    wrapped.append((dep, i, mapping))
                    dep.index_mapping[i] = _Guard(mapping, limit, clock)
    try:
        with fixed_index_mappings():
            yield
    finally:
        for dep, i, mapping in wrapped:
            dep.index_mapping[i] = mapping


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:160] if text else ''}".rstrip(": ")


def collect_groups(dg: tp.DependencyGraph, names: dict[nn.Module, str],
                   ignored_modules: Collection[nn.Module],
                   not_roots: Collection[nn.Module] = (), deadline: float = float("inf"),
                   ) -> tuple[list[CoupledGroup], list[FrozenGroup]]:
    """Every group of more than one channel rooted at a conv/linear layer not ignored, and the
    roots whose grouping failed (frozen, with the reason).

    torch-pruning's ``get_all_groups`` with three changes: a root whose grouping raises, whose
    index mapping explodes or that takes over ``ROOT_SECONDS`` is frozen instead of ending the
    analysis; index mappings are computed
    once (torch-pruning recomputes them for every group); grouping past ``deadline``
    (``time.monotonic()``) raises :class:`UnsupportedModelError`.
    """
    model = dg.model
    ignored = {id(m) for m in [*ignored_modules, *dg.IGNORED_LAYERS_IN_TRACING]}
    skip = ignored | {id(m) for m in not_roots}
    visited: set[int] = set()
    groups: list[CoupledGroup] = []
    frozen: list[FrozenGroup] = []
    clock = _Clock(deadline)
    with _guarded(dg, _index_limit(model), clock):
        for m in list(dg.module2node):
            if not isinstance(m, ROOT_TYPES) or id(m) in skip or id(m) in visited:
                continue
            pruner = dg.get_pruner_of_module(m)
            if pruner is None or pruner.get_out_channels(m) is None:
                continue
            clock.root_deadline = time.monotonic() + ROOT_SECONDS
            try:
                group = dg.get_pruning_group(m, pruner.prune_out_channels,
                                             list(range(pruner.get_out_channels(m))))
            except _RootTimeout:
                visited.add(id(m))
                frozen.append(FrozenGroup(names.get(m, "?"), "torch-pruning's grouping took "
                                          f"over {ROOT_SECONDS:g} s here (a runaway search)"))
                continue
            except _Deadline:
                raise UnsupportedModelError(
                    f"grouping the channels of {type(model).__name__} ran past the trace time "
                    f"limit at layer {names.get(m, '?')!r}; raise trace_timeout or move that "
                    "block to `ignore=`") from None
            except Exception as exc:  # torch-pruning's own errors: freeze this root, go on
                raise_if_pressed(exc)  # unless it was a Ctrl-C that torch swallowed
                visited.add(id(m))
                frozen.append(FrozenGroup(names.get(m, "?"),
                                          f"torch-pruning cannot group it ({_first_line(exc)})"))
                continue
            prunable = True
            for dep, _ in group:
                if dg.is_out_channel_pruning_fn(dep.handler):
                    visited.add(id(dep.target.module))
                    if id(dep.target.module) in ignored:
                        prunable = False
            if prunable:
                coupled = _coupled(dg, group, names, model)
                if coupled is not None:
                    groups.append(coupled)
    return groups, frozen


def head_groups(dg: tp.DependencyGraph, layouts: Sequence[HeadLayout], model: nn.Module,
                ) -> tuple[list[CoupledGroup], list[FrozenGroup]]:
    """One group per attention block whose projections the traced graph holds."""
    modules = dict(model.named_modules())
    groups, frozen = [], []
    for layout in layouts:
        projs = [(modules[p.name], "out", p.slices * layout.rows_per_unit(p))
                 for p in layout.inputs]
        projs.append((modules[layout.output], "in", layout.heads_per_unit * layout.head_dim))
        nodes = [dg.module2node.get(m) for m, _, _ in projs]
        if any(n is None for n in nodes):
            frozen.append(FrozenGroup(layout.name, "its projections are not called as layers"))
            continue
        members = {(id(n), d): float(per) for n, (_, d, per) in zip(nodes, projs)}
        groups.append(CoupledGroup(
            name=layout.name, root=modules[layout.name], handler=None, channels=layout.units,
            channel_groups=1, members=members, layers=tuple(p.name for p in layout.inputs),
            heads=layout))
    return groups, frozen


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
            channel_groups=group.channel_groups, layers=group.layers, kind=group.kind,
            unit_width=group.unit_width,
        ))
    return described
