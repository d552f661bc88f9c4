"""One traced analysis of a dense model (:class:`PrunableModel`) and the public entry points.

The rest of autoprune speaks in group *names* (``named_modules()`` names of the root layer),
kept-channel counts and plain data: torch-pruning's module-keyed dicts and many-argument pruner
stay inside the engine. One traced pass (:func:`analyze`) yields the groups and a
:class:`~autoprune.engine.costmodel.CostModel`; :meth:`PrunableModel.apply` prunes a deep copy
to a :class:`~autoprune.plan.PruningPlan`.
"""

from __future__ import annotations

import copy
import difflib
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.engine.adapters import adapt_attention
from autoprune.engine.attention import find_attention
from autoprune.engine.count import count_macs_params, count_matmul_macs
from autoprune.engine.depth import drop_blocks, residual_blocks
from autoprune.engine.groups import (
    CoupledGroup,
    FrozenGroup,
    Group,
    collect_groups,
    describe_groups,
    head_groups,
)
from autoprune.engine.inputs import counter_batch
from autoprune.engine.probe import TOLERANCE, ProbeLimits, probe_groups
from autoprune.engine.prune import Ranking, group_scores, prune_groups
from autoprune.engine.terms import LayerDims, build_cost_model, layer_dims
from autoprune.engine.trace import Trace, check_supported, resolve_ignore, trace
from autoprune.errors import AutopruneError, ConfigError, UnsupportedModelError
from autoprune.interrupts import raise_if_pressed
from autoprune.plan import FitRequest, PruningPlan, fit_plan, kept_channels

__all__ = ["PrunableModel", "analyze", "apply_plan", "fit_budget", "prunable_groups"]


class PrunableModel:
    """One traced analysis of a dense model: its groups, cost model, and how to prune it.

    Build it once (:func:`analyze`) and reuse it for every candidate of a search: costs of plans
    are analytic, and :meth:`apply` prunes a fresh deep copy each time. Groups that cannot be
    pruned safely (torch-pruning cannot group them, the pruned copy fails, the counters disagree
    with the cost model, or the embedding width an attention block reads) stay at full width:
    :attr:`frozen` lists them with the reason, and the rest is searched.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, ignore: Sequence[str] | None = None,
                 ignore_head: bool = True, trace_timeout: float = 60.0,
                 known_frozen: Sequence[tuple[str, str]] | None = None) -> None:
        check_supported(model)
        if not trace_timeout > 0:
            raise ConfigError(f"trace_timeout={trace_timeout!r} must be a positive number of "
                              "seconds (default 60)")
        self._source = model
        # nn.MultiheadAttention / torchvision Swin: an equivalent copy whose heads can go
        self.model = adapt_attention(model)
        self.example_inputs = example_inputs
        self.ignore = tuple(ignore or ())
        self.ignore_head = ignore_head
        self.trace_timeout = float(trace_timeout)
        tr, groups, frozen = self._candidates(time.monotonic() + self.trace_timeout)
        self._dg, self._trace = tr.graph, tr
        batch = counter_batch(example_inputs)
        cost_model = build_cost_model(tr.graph, groups, tr, batch)
        counted = _counted_matmuls(self.model, example_inputs)
        if known_frozen is None:
            check_matmuls = _unmodelled(counted, cost_model) > 0 or any(
                g.heads is not None for g in groups)
            probed = probe_groups(self.model, example_inputs, groups, cost_model, ProbeLimits(
                check_matmuls, time.monotonic() + 4 * self.trace_timeout))
        else:
            probed = [FrozenGroup(n, r) for n, r in known_frozen if n in {g.name for g in groups}]
        gone = {f.name for f in probed}
        groups = [g for g in groups if g.name not in gone]
        cost_model = build_cost_model(tr.graph, groups, tr, batch)
        if counted is not None:  # frozen head groups' attention is now unmodelled too
            cost_model = build_cost_model(tr.graph, groups, tr, batch,
                                          constant_matmuls=_unmodelled(counted, cost_model))
        self.frozen: list[FrozenGroup] = frozen + probed
        if not groups:
            raise UnsupportedModelError(_nothing_left(model, self.frozen))
        self._coupled: list[CoupledGroup] = groups
        self.cost_model = cost_model
        self.groups: list[Group] = describe_groups(groups, cost_model)
        self._by_name = {g.name: g for g in self.groups}
        # drop -> its analysis and {its group name: the dense group's}
        self._parts: dict[tuple[str, ...], tuple[PrunableModel, dict[str, str]]] = {}

    def _candidates(self, deadline: float
                    ) -> tuple[Trace, list[CoupledGroup], list[FrozenGroup]]:
        """Trace a copy: the candidate groups (channels and heads, in model order), and the
        groups frozen before any probe (ungroupable roots, embedding width, fixed heads)."""
        traced = copy.deepcopy(self.model).eval()
        traced.requires_grad_(True)
        modules = dict(traced.named_modules())
        layouts, fixed = find_attention(traced)
        attention = [modules[n] for n in [*(lay.name for lay in layouts), *fixed]]
        tr = trace(traced, self.example_inputs, attention=attention)
        if time.monotonic() > deadline:
            raise UnsupportedModelError(
                f"tracing {type(self.model).__name__} took longer than trace_timeout="
                f"{self.trace_timeout:g} s; raise it or move the slow block to `ignore=`")
        names = {m: n for n, m in traced.named_modules()}
        ignored = resolve_ignore(traced, self.ignore)
        self.head: str | None = None
        if self.ignore_head and tr.roots_called:
            self.head = names.get(tr.roots_called[-1])
            ignored.add(self.head or "")
        ignored_modules = [s for n, m in traced.named_modules() if n in ignored
                           for s in m.modules()]
        projections = [modules[p] for lay in layouts
                       for p in (*(q.name for q in lay.inputs), lay.output)]
        # inside attention whose heads stay, no layer is a root either: torch-pruning maps its
        # qkv channels through the head reshapes wrongly (or searches without end)
        projections += [s for n in fixed for s in modules[n].modules() if s is not modules[n]]
        channel, frozen = collect_groups(tr.graph, names, ignored_modules,
                                         not_roots=projections, deadline=deadline)
        heads, frozen_heads = head_groups(
            tr.graph, [lay for lay in layouts if lay.name not in ignored], traced)
        channel, embedding = _embedding_groups(channel, tr, [*projections, *attention])
        order = {n: i for i, n in enumerate(modules)}
        groups = sorted([*channel, *heads], key=lambda g: order.get(g.name, 0))
        frozen += frozen_heads + embedding
        frozen += [FrozenGroup(n, f"attention heads stay: {why}") for n, why in fixed.items()]
        return tr, groups, frozen

    def __reduce__(self) -> tuple[Any, ...]:
        # the traced graph holds autograd nodes, which do not pickle: ship the inputs and
        # trace again on unpickling (a Ray worker gets the same groups and cost model; the
        # probe's verdicts travel along instead of being probed again)
        known = tuple((f.name, f.reason) for f in self.frozen)
        return (type(self), (self.model, self.example_inputs, self.ignore, self.ignore_head,
                             self.trace_timeout, known))

    def check_plan(self, plan: PruningPlan) -> None:
        """Raise :class:`ConfigError` naming the closest groups if ``plan`` names an unknown one."""
        unknown = [n for n in plan.ratios if n not in self._by_name]
        if unknown:
            name = unknown[0]
            close = difflib.get_close_matches(name, list(self._by_name), n=3, cutoff=0.4)
            names = list(self._by_name)
            hint = (f"did you mean {', '.join(close)}?" if close else
                    f"available groups: {', '.join(names[:8])}{', ...' if len(names) > 8 else ''}")
            raise ConfigError(f"plan names group {name!r}, which this model does not have; {hint}")

    @functools.cached_property
    def removable(self) -> list[str]:
        """Blocks a plan may remove whole (``drop``): see :mod:`autoprune.engine.depth`."""
        return residual_blocks(self.model, self.example_inputs)

    def part(self, plan: PruningPlan) -> tuple[PrunableModel, PruningPlan]:
        """The analysis that prices and prunes ``plan`` and the plan as it reads it: ``self`` and
        ``plan`` when no block goes, else the analysis of the model with ``plan.drop`` removed
        (traced once per drop set) and the plan in its group names (a group whose root layer was
        in a removed block is named by another of its layers there)."""
        self.check_plan(plan)
        if not plan.drop:
            return self, plan
        part, names = self.without(plan.drop)
        return part, PruningPlan({p: plan.ratios[d] for p, d in names.items() if d in plan.ratios},
                                 plan.importance, plan.round_to)

    def without(self, drop: tuple[str, ...]) -> tuple[PrunableModel, dict[str, str]]:
        """The analysis without the blocks ``drop`` and {its group: the dense group it is}."""
        unknown = sorted(set(drop) - set(self.removable))
        if unknown:
            raise ConfigError(
                f"plan drops {unknown[0]!r}, which is not a removable block of "
                f"{type(self._source).__name__}; removable: {', '.join(self.removable) or 'none'}")
        if drop not in self._parts:
            part = PrunableModel(drop_blocks(self.model, drop), self.example_inputs, self.ignore,
                                 self.ignore_head, self.trace_timeout)
            owner = {layer: g.name for g in self.groups for layer in (*g.layers, g.name)}
            names = {g.name: owner[g.name] for g in part.groups if g.name in owner}
            self._parts[drop] = part, names
        return self._parts[drop]

    def kept(self, plan: PruningPlan) -> list[int]:
        """Kept root channels per group (in ``self.groups`` order) under ``plan``; 0 for the
        groups of the blocks it removes."""
        part, inner = self.part(plan)
        names = self.without(plan.drop)[1] if plan.drop else {g.name: g.name for g in part.groups}
        kept = {names.get(g.name): kept_channels(g.channels, inner.ratios.get(g.name, 0.0),
                                                 inner.round_to, g.quantum, g.unit_width)
                for g in part.groups}
        return [kept.get(g.name, 0) for g in self.groups]

    def macs(self, plan: PruningPlan) -> float:
        part, inner = self.part(plan)
        return part.cost_model.macs(part.kept(inner))

    def layer_dims(self) -> tuple[list[LayerDims], np.ndarray, np.ndarray]:
        """Each traced conv/linear call with the channel dims its widths follow, and the dims'
        dense sizes and removal per group (see :func:`autoprune.engine.terms.layer_dims`)."""
        return layer_dims(self._dg, self._coupled, self._trace)

    def params(self, plan: PruningPlan) -> float:
        part, inner = self.part(plan)
        return part.cost_model.params(part.kept(inner))

    def importance_scores(self, criterion: str = "l2") -> list[np.ndarray]:
        """Per-channel importance of each group's root channels on the dense weights.

        Normalised by the group's mean (torch-pruning's default), so scores compare across groups:
        this is what global ranking thresholds. Grouped convs get one score per channel group.
        """
        return group_scores(self._dg, self._coupled, criterion)

    def apply(self, plan: PruningPlan, taylor_batch: tuple[Any, Any] | None = None,
              loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
              inplace: bool = False) -> nn.Module:
        """A pruned deep copy of the dense model (``.autoprune_history`` holds its history).

        ``inplace=True`` prunes the analysed model itself (for hooks in a training loop); its
        pruned parameters become new tensors. Blocks the plan drops are removed first.
        """
        if plan.drop:
            if inplace:
                raise ConfigError(f"plan drops blocks {list(plan.drop)}; removing blocks in place "
                                  "(inplace=True, training hooks) is not supported: prune a copy")
            part, inner = self.part(plan)
            return part.apply(inner, taylor_batch, loss_fn)
        kept = self.kept(plan)
        ranking = Ranking(plan.importance, taylor_batch, loss_fn)
        if inplace:  # the caller's own model, its attention adapted like the analysed copy
            pruned = adapt_attention(self._source, inplace=True)
        else:
            pruned = copy.deepcopy(self.model)
        try:
            pruned = prune_groups(pruned, self.example_inputs, list(zip(self._coupled, kept)),
                                  ranking)
        except AutopruneError:
            raise
        except Exception as exc:  # torch-pruning's raw errors end as the named error
            raise UnsupportedModelError(
                f"pruning {type(self.model).__name__} to the plan failed: {type(exc).__name__}: "
                f"{exc}") from exc
        self._check_counted(pruned, kept)
        return pruned

    def _check_counted(self, pruned: nn.Module, kept: Sequence[int]) -> None:
        """Never silently off budget: the pruned model's counted costs must be the analytic ones."""
        macs, params = count_macs_params(pruned, self.example_inputs)
        want_macs, want_params = self.cost_model.counter_macs(kept), self.cost_model.params(kept)
        for what, got, want in (("MACs", macs, want_macs), ("params", params, want_params)):
            if abs(got - want) > TOLERANCE * max(want, 1.0):
                raise UnsupportedModelError(
                    f"the pruned {type(self.model).__name__} has {got:.6g} counted {what}, the "
                    f"cost model says {want:.6g}: its budget would be wrong. Please report this "
                    "model; `ignore=` the groups involved to go on.")


def _embedding_groups(groups: Sequence[CoupledGroup], tr: Trace, attention: Sequence[nn.Module],
                      ) -> tuple[list[CoupledGroup], list[FrozenGroup]]:
    """Split off the channel groups that reach into attention: the embedding width (frozen)."""
    inside = {id(s) for m in attention for s in m.modules()}
    node_ids = {id(n) for m, n in tr.graph.module2node.items() if id(m) in inside}
    keep, frozen = [], []
    for g in groups:
        if any(node in node_ids for node, _ in g.members):
            frozen.append(FrozenGroup(g.name, "embedding width: these channels feed attention "
                                              "(heads and MLP widths are searched instead)"))
        else:
            keep.append(g)
    return keep, frozen


def _counted_matmuls(model: nn.Module, example_inputs: Any) -> float | None:
    """``FlopCounterMode``'s matmul MACs per image of the dense model (None if it cannot run)."""
    try:
        return count_matmul_macs(model, example_inputs)
    except Exception as exc:  # a model FlopCounterMode cannot run under: nothing to add
        raise_if_pressed(exc)
        return None


def _unmodelled(counted: float | None, cost_model: Any) -> float:
    """Matmul MACs per image seen outside any layer call the cost model knows (functional
    projections, attention it does not recognise or froze): kept as a constant, which the probe
    checks no searched group changes."""
    if counted is None:
        return 0.0
    extra = counted - cost_model.matmul_macs(cost_model.group_channels)
    return extra if extra > 1e-6 * max(counted, 1.0) else 0.0  # float noise is no matmul


def _nothing_left(model: nn.Module, frozen: Sequence[FrozenGroup]) -> str:
    shown = "; ".join(f"{f.name}: {f.reason}" for f in frozen[:4])
    more = f" (and {len(frozen) - 4} more)" if len(frozen) > 4 else ""
    return (f"{type(model).__name__} has no group autoprune can prune safely"
            + (f": {shown}{more}" if frozen else " (no conv/linear channels outside the head)")
            + ". See `autoprune inspect`; layers that need a custom pruner can be registered "
              "with ap.register_layer.")


def analyze(model: nn.Module, example_inputs: Any, ignore: Sequence[str] | None = None,
            ignore_head: bool = True, trace_timeout: float = 60.0) -> PrunableModel:
    """Trace ``model`` once: its groups, analytic cost model, and a pruner for plans.

    Groups that cannot be pruned safely are left at full width and listed in ``.frozen``;
    tracing and grouping past ``trace_timeout`` seconds (probing the groups past four times
    that) raise :class:`~autoprune.errors.UnsupportedModelError`.
    """
    return PrunableModel(model, example_inputs, ignore=ignore, ignore_head=ignore_head,
                         trace_timeout=trace_timeout)


def prunable_groups(model: nn.Module, example_inputs: Any, ignore: Sequence[str] | None = None,
                    ignore_head: bool = True) -> list[Group]:
    """Every coupled channel group of ``model``; the classifier head is ignored by default."""
    return analyze(model, example_inputs, ignore=ignore, ignore_head=ignore_head).groups


def apply_plan(model: nn.Module, example_inputs: Any, plan: PruningPlan,
               ignore: Sequence[str] | None = None, **kwargs: Any) -> nn.Module:
    """A pruned copy of ``model`` under ``plan``; ``model`` itself is untouched."""
    return analyze(model, example_inputs, ignore=ignore).apply(plan, **kwargs)


def fit_budget(model: nn.Module, example_inputs: Any,  # public API: keeps its 11 arguments
               allocation: Mapping[str, float] | float = 1.0,
               flops: float | None = None, params: float | None = None,
               caps: Mapping[str, float] | float = 0.95, importance: str = "l2",
               round_to: int | None = None, ignore: Sequence[str] | None = None,
               tol: float = 0.01, analysis: PrunableModel | None = None) -> PruningPlan:
    """Scale a relative per-group ``allocation`` so the pruned model lands on the budget.

    ``allocation`` maps group names to relative weights (a float = the same for all: uniform);
    groups it omits are not pruned. ``flops=0.4`` keeps at most 40 % of the dense FLOPs and lands
    within ``tol`` (relative) of it. ``caps`` bound each group's ratio. Raises
    :class:`~autoprune.errors.BudgetError` if the budget is below the smallest reachable model.
    Pass ``analysis`` (from :func:`analyze`) to skip re-tracing; the fitting itself is the pure
    :func:`autoprune.plan.fit_plan`.
    """
    request = FitRequest(allocation, flops, params, caps, importance, round_to, tol)  # validates
    if analysis is None:
        analysis = analyze(model, example_inputs, ignore=ignore)
    return fit_plan(analysis, request)
