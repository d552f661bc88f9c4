"""Pruning inside the user's own training loop: :class:`PruneHook` prunes the user's model *in
place* to a plan at chosen steps or epochs (one shot, or gradually over several events) and
keeps the user's optimizer valid: pruned parameters are swapped into its param groups and their
optimizer state (momentum, Adam moments) is reset; untouched parameters keep theirs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from autoprune.errors import ConfigError
from autoprune.plan import PruningPlan

__all__ = ["PruneHook"]

log = logging.getLogger(__name__)


class PruneHook:
    """Prune the user's model in place to ``plan`` at chosen steps (or epochs).

    Call :meth:`on_step_end` after each optimizer step (or :meth:`on_epoch_end` after each
    epoch). With several entries in ``at_steps``/``at_epochs`` pruning is gradual: event k of K
    keeps ``k/K`` of the way from dense to the plan's channel counts. ``history`` holds the cost
    after each event.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, plan: PruningPlan,
                 optimizer: torch.optim.Optimizer | None = None,
                 at_steps: Sequence[int] | None = None,
                 at_epochs: Sequence[int] | None = None) -> None:
        if (at_steps is None) == (at_epochs is None):
            raise ConfigError("PruneHook needs exactly one of at_steps=[...] or at_epochs=[...]")
        events = sorted(at_steps if at_steps is not None else at_epochs)  # type: ignore[arg-type]
        if not events or events[0] < 0 or len(set(events)) != len(events):
            raise ConfigError(f"pruning points {events!r} must be distinct non-negative ints")
        from autoprune.engine import analyze

        self.model, self.example_inputs, self.optimizer = model, example_inputs, optimizer
        self.plan = plan
        self.events = events
        self.unit = "step" if at_steps is not None else "epoch"
        self._count = 0
        analysis = analyze(model, example_inputs)
        analysis.check_plan(plan)
        self._target = dict(zip([g.name for g in analysis.groups], analysis.kept(plan)))
        self._dense = {g.name: g.channels for g in analysis.groups}
        self._dense_macs = analysis.cost_model.dense_macs()
        self.history: list[dict[str, Any]] = []

    def on_step_end(self) -> None:
        if self.unit == "step":
            self._tick()

    def on_epoch_end(self) -> None:
        if self.unit == "epoch":
            self._tick()

    def _tick(self) -> None:
        self._count += 1
        if self._count in self.events:
            self._prune(self.events.index(self._count) + 1)

    def _prune(self, k: int) -> None:
        from autoprune.engine import analyze

        fraction = k / len(self.events)
        analysis = analyze(self.model, self.example_inputs)
        ratios = {}
        for g in analysis.groups:
            if g.name not in self._target:
                continue
            dense, target = self._dense[g.name], self._target[g.name]
            want = round(dense - fraction * (dense - target))
            if want < g.channels:
                ratios[g.name] = 1.0 - want / g.channels
        plan = PruningPlan(ratios, self.plan.importance, self.plan.round_to)
        before = {id(p): (n, p) for n, p in self.model.named_parameters()}
        analysis.apply(plan, inplace=True)
        self._fix_optimizer(before)
        macs = analysis.cost_model.macs(analysis.kept(plan))
        entry = {self.unit: self._count, "event": k, "macs": macs,
                 "flops_ratio": macs / self._dense_macs}
        self.history.append(entry)
        log.info("pruned at %s %d (event %d/%d): %.1f%% of the dense FLOPs",
                 self.unit, self._count, k, len(self.events), 100 * entry["flops_ratio"])

    def _fix_optimizer(self, before: dict[int, tuple[str, nn.Parameter]]) -> None:
        if self.optimizer is None:
            return
        from autoprune.engine.adapters import adapted_name

        now = dict(self.model.named_parameters())
        for group in self.optimizer.param_groups:
            fresh = []
            for p in group["params"]:
                name, _ = before.get(id(p), (None, p))
                if name is not None and name not in now:  # nn.MultiheadAttention, adapted
                    name = adapted_name(self.model, name)
                new = now.get(name) if name is not None else p
                if new is None:
                    continue
                if new is not p:  # pruned: a new tensor; its momentum no longer lines up
                    self.optimizer.state.pop(p, None)
                fresh.append(new)
            group["params"] = fresh
