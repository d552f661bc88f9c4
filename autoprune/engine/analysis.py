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
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.engine.groups import Group, collect_groups, describe_groups
from autoprune.engine.inputs import counter_batch
from autoprune.engine.prune import Ranking, group_scores, prune_groups
from autoprune.engine.terms import build_cost_model
from autoprune.engine.trace import check_supported, resolve_ignore, trace
from autoprune.errors import ConfigError
from autoprune.plan import FitRequest, PruningPlan, fit_plan, kept_channels

__all__ = ["PrunableModel", "analyze", "apply_plan", "fit_budget", "prunable_groups"]


class PrunableModel:
    """One traced analysis of a dense model: its groups, cost model, and how to prune it.

    Build it once (:func:`analyze`) and reuse it for every candidate of a search: costs of plans
    are analytic, and :meth:`apply` prunes a fresh deep copy each time.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, ignore: Sequence[str] | None = None,
                 ignore_head: bool = True) -> None:
        check_supported(model)
        self.model = model
        self.example_inputs = example_inputs
        self.ignore = tuple(ignore or ())
        self.ignore_head = ignore_head
        traced = copy.deepcopy(model).eval()
        traced.requires_grad_(True)
        dg, calls, roots_called = trace(traced, example_inputs)
        names = {m: n for n, m in traced.named_modules()}
        ignored = resolve_ignore(traced, ignore)
        self.head: str | None = None
        if ignore_head and roots_called:
            self.head = names.get(roots_called[-1])
            ignored.add(self.head or "")
        ignored_modules = [m for n, m in traced.named_modules() if n in ignored]
        ignored_modules = [s for m in ignored_modules for s in m.modules()]
        self._dg = dg
        self._coupled = collect_groups(dg, names, ignored_modules, model)
        self.cost_model = build_cost_model(dg, self._coupled, calls, counter_batch(example_inputs))
        self.groups: list[Group] = describe_groups(self._coupled, self.cost_model)
        self._by_name = {g.name: g for g in self.groups}

    def __reduce__(self) -> tuple[Any, ...]:
        # the traced graph holds autograd nodes, which do not pickle: ship the inputs and
        # trace again on unpickling (a Ray worker gets the same groups and cost model)
        return (type(self), (self.model, self.example_inputs, self.ignore, self.ignore_head))

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

    def kept(self, plan: PruningPlan) -> list[int]:
        """Kept root channels per group (in ``self.groups`` order) under ``plan``."""
        self.check_plan(plan)
        return [
            kept_channels(g.channels, plan.ratios.get(g.name, 0.0), plan.round_to, g.quantum)
            for g in self.groups
        ]

    def macs(self, plan: PruningPlan) -> float:
        return self.cost_model.macs(self.kept(plan))

    def params(self, plan: PruningPlan) -> float:
        return self.cost_model.params(self.kept(plan))

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
        pruned parameters become new tensors.
        """
        kept = self.kept(plan)
        ranking = Ranking(plan.importance, taylor_batch, loss_fn)
        pruned = self.model if inplace else copy.deepcopy(self.model)
        return prune_groups(pruned, self.example_inputs, list(zip(self._coupled, kept)), ranking)


def analyze(model: nn.Module, example_inputs: Any, ignore: Sequence[str] | None = None,
            ignore_head: bool = True) -> PrunableModel:
    """Trace ``model`` once: its groups, analytic cost model, and a pruner for plans."""
    return PrunableModel(model, example_inputs, ignore=ignore, ignore_head=ignore_head)


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
