"""Pruning: channel importance, removing the least important channels, replaying a history.

The importance criteria are torch-pruning's; channels of every group are ranked on the dense
weights first, then all groups are pruned. Attention heads are ranked by the L2 norm of their
projection weights (:mod:`~autoprune.engine.attention`) whatever the criterion. The pruned model
carries its pruning history (``.autoprune_history``) so that an archive can rebuild its
architecture by replay: torch-pruning's steps, and head steps named ``heads:<attention module>``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch_pruning as tp
from torch import nn

from autoprune.engine.adapters import adapt_attention
from autoprune.engine.attention import HeadLayout, find_attention, head_scores, prune_heads
from autoprune.engine.custom import custom_magnitude
from autoprune.engine.groups import CoupledGroup, fixed_index_mappings
from autoprune.engine.inputs import call_model
from autoprune.engine.trace import trace
from autoprune.errors import ConfigError, UnsupportedModelError

__all__ = ["Ranking", "group_scores", "prune_groups", "replay_history"]

_IMPORTANCE: dict[str, Callable[[], Any]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn": lambda: tp.importance.BNScaleImportance(),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "random": lambda: tp.importance.RandomImportance(),
}

# one history step: (module name, pruned output channels?, channel indices); for attention heads
# ("heads:<attention module>", True, head unit indices)
HistoryStep = tuple[str, bool, list[int]]
HEADS = "heads:"


@dataclass(frozen=True)
class Ranking:
    """How channels are ranked: a criterion, and for ``'taylor'`` the batch (and loss) whose
    gradients rank them."""

    criterion: str = "l2"
    taylor_batch: tuple[Any, Any] | None = None
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.criterion == "taylor" and self.taylor_batch is None:
            raise ConfigError("importance='taylor' needs a batch: pass taylor_batch=(inputs, "
                              "targets) (and loss_fn, default cross-entropy)")


def group_scores(dg: tp.DependencyGraph, groups: Sequence[CoupledGroup],
                 criterion: str) -> list[np.ndarray]:
    """Per-channel importance of each group's root channels, normalised by the group's mean."""
    if criterion == "taylor":
        raise ConfigError("importance_scores(): 'taylor' needs gradients; use l1/l2/bn")
    importance = _IMPORTANCE[criterion]()
    scores = []
    for group in groups:
        if group.heads is not None:
            scores.append(head_scores(dg.model, group.heads).numpy())
            continue
        full = dg.get_pruning_group(group.root, group.handler, list(range(group.channels)))
        with torch.no_grad():
            imp = importance(full)
        if imp is None:  # only layers torch-pruning's importance does not know (custom layers)
            imp = custom_magnitude(full)
        if imp is None:
            imp = torch.ones(group.channels)
        imp = imp.detach().float().cpu()
        if group.channel_groups > 1:
            imp = imp.view(group.channel_groups, -1).mean(0)
        scores.append((imp / imp.mean().clamp_min(1e-12)).numpy())
    return scores


def _pick(importance: Any, full: Any, group: CoupledGroup, remove: int) -> list[int]:
    """Indices of the ``remove`` least important root channels (equal per channel group)."""
    with torch.no_grad():
        imp = importance(full)
    if imp is None:  # e.g. bn criterion on a group without BatchNorm: fall back to L2
        with torch.no_grad():
            imp = tp.importance.GroupMagnitudeImportance(p=2)(full)
    if imp is None:  # only layers torch-pruning's importance does not know (custom layers)
        imp = custom_magnitude(full)
    if imp is None:
        imp = torch.ones(group.channels)
    imp = imp.detach().float().cpu()
    ch_groups = group.channel_groups
    if ch_groups > 1:
        size = group.channels // ch_groups
        order = torch.argsort(imp.view(ch_groups, -1).mean(0))[: remove // ch_groups]
        return sorted(int(i) + g * size for g in range(ch_groups) for i in order)
    return sorted(int(i) for i in torch.argsort(imp)[:remove])


def _verify(model: nn.Module, example_inputs: Any) -> None:
    try:
        with torch.no_grad():
            was = model.training
            model.eval()
            call_model(model, example_inputs)
            model.train(was)
    except Exception as exc:
        raise UnsupportedModelError(
            f"the pruned {type(model).__name__} no longer runs ({type(exc).__name__}: {exc}); "
            "an op outside torch-pruning's coverage depends on a channel count. Add the layer "
            "feeding it to `ignore=`."
        ) from exc


def _prune_traced(model: nn.Module, dg: tp.DependencyGraph,
                  targets: Sequence[tuple[CoupledGroup, int]], importance: Any,
                  ) -> list[HistoryStep]:
    """Rank every group on the dense weights first, then prune them all; the head steps."""
    name_to_module = dict(model.named_modules())
    work: list[tuple[nn.Module, list[int]]] = []
    heads: list[tuple[HeadLayout, list[int]]] = []
    with fixed_index_mappings():  # ranking removes nothing: the mappings stay valid
        for group, keep in targets:
            remove = group.channels - keep
            if remove <= 0:
                continue
            if group.heads is not None:
                order = torch.argsort(head_scores(model, group.heads))[:remove]
                heads.append((group.heads, sorted(int(i) for i in order)))
                continue
            root = name_to_module[group.name]
            pruner = dg.get_pruner_of_module(root)
            handler = group.handler.__func__.__get__(pruner)  # type: ignore[union-attr]
            full = dg.get_pruning_group(root, handler, list(range(group.channels)))
            work.append((root, _pick(importance, full, group, remove)))
    for root, idxs in work:
        pruner = dg.get_pruner_of_module(root)
        dg.get_pruning_group(root, pruner.prune_out_channels, idxs).prune()
    steps: list[HistoryStep] = []
    for layout, units in heads:
        prune_heads(model, layout, units)
        steps.append((HEADS + layout.name, True, units))
    return steps


def prune_groups(model: nn.Module, example_inputs: Any,
                 targets: Sequence[tuple[CoupledGroup, int]], ranking: Ranking) -> nn.Module:
    """Prune ``model`` in place to the kept root channels of each ``(group, kept)``.

    ``.autoprune_history`` gets the steps appended (a model pruned before keeps its earlier
    steps: replay needs them all).
    """
    was_training = model.training
    model.eval()
    grad_flags = [p.requires_grad for p in model.parameters()]
    model.requires_grad_(True)
    dg = trace(model, example_inputs).graph
    if ranking.taylor_batch is not None and ranking.criterion == "taylor":
        inputs, labels = ranking.taylor_batch
        model.zero_grad()
        loss_fn = ranking.loss_fn or nn.functional.cross_entropy
        loss_fn(call_model(model, inputs), labels).backward()
    head_steps = _prune_traced(model, dg, targets, _IMPORTANCE[ranking.criterion]())
    model.zero_grad(set_to_none=True)
    for p, flag in zip(model.parameters(), grad_flags):
        p.requires_grad_(flag)
    model.train(was_training)
    history = [(n, bool(o), [int(i) for i in idx]) for n, o, idx in dg.pruning_history()]
    history += head_steps
    model.__dict__["autoprune_history"] = [*model.__dict__.get("autoprune_history", []),
                                           *history]
    _verify(model, example_inputs)
    return model


def replay_history(model: nn.Module, example_inputs: Any,
                   history: Sequence[HistoryStep]) -> nn.Module:
    """Prune ``model`` in place by replaying a recorded pruning history (for loading archives):
    each run of torch-pruning steps on a fresh trace, head steps on the attention they name."""
    was = model.training
    model.eval()
    adapt_attention(model, inplace=True)  # as the analysed model was
    i = 0
    while i < len(history):
        if str(history[i][0]).startswith(HEADS):
            name = str(history[i][0])[len(HEADS):]
            layouts = {lay.name: lay for lay in find_attention(model)[0]}
            if name not in layouts:
                raise UnsupportedModelError(f"history prunes the heads of {name!r}, which this "
                                            "model has no prunable attention at")
            prune_heads(model, layouts[name], [int(u) for u in history[i][2]])
            i += 1
            continue
        j = i
        while j < len(history) and not str(history[j][0]).startswith(HEADS):
            j += 1
        dg = trace(model, example_inputs).graph
        dg.load_pruning_history([(n, bool(o), list(idx)) for n, o, idx in history[i:j]])
        i = j
    model.train(was)
    return model
