"""The search problem for one traced model: searched parameters -> plan -> costs -> budget check.

Candidates are feasible by construction: a trial samples a relative allocation per searched
parameter and a cost level at or under the budget, and
:func:`~autoprune.plan.fit_allocation_lifting_caps` projects it onto that level exactly on the
analytic cost model, so no fine-tune is ever spent on an over-budget model. What the analytic
model cannot know (a secondary params budget under a FLOPs fit, measured latency) is checked
here too, before any training. No I/O, no backend.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from functools import cached_property
from typing import TYPE_CHECKING, Any

import numpy as np
from torch import nn

from autoprune.budget import ResolvedBudget
from autoprune.errors import BudgetError
from autoprune.neighbours import Neighbours, plan_key
from autoprune.plan import (
    FitOptions,
    PruningPlan,
    Widths,
    fit_allocation,
    fit_allocation_lifting_caps,
    global_ratios,
)
from autoprune.settings import SearchSettings
from autoprune.space import SearchSpace
from autoprune.trial import LEVEL, Outcome, ParamSpec, TrialRecord

if TYPE_CHECKING:
    from autoprune.engine import PrunableModel
    from autoprune.latency import LatencyTable

__all__ = ["DROP", "Problem"]

log = logging.getLogger(__name__)
# the baselines' searched parameters and attributes, and {baseline: exact plan} for those the
# parameters only approximate
_Baselines = tuple[list[tuple[dict[str, float], dict[str, Any]]], dict[str, PruningPlan]]
CAP_LIFTS = (0.0, 0.5, 1.0)  # how far caps rise toward 0.95 when a level is out of their reach
DROP = "drop:"  # a searched parameter per removable block: 1 removes it (--depth)


class Problem:
    """``analysis`` (the traced dense model), its search ``space`` and the resolved ``budget``."""

    def __init__(self, analysis: PrunableModel, space: SearchSpace, budget: ResolvedBudget,
                 settings: SearchSettings, latency_table: LatencyTable | None = None) -> None:
        self.analysis, self.space, self.budget, self.settings = analysis, space, budget, settings
        self.latency_table = latency_table  # set: candidates are fitted on predicted latency
        self._latency_misses: list[float] = []  # measured / predicted fraction of dense
        self.groups = analysis.groups
        self.resolved = space.resolve([g.name for g in self.groups])
        self.latency_floor = self._check_latency_floor()
        self._baselines: _Baselines | None = None
        self.sensitivity: dict[str, float] | None = None  # {group: val drop}, set by the run

    @property
    def weights_mode(self) -> bool:
        return self.settings.mode == "weights"

    @cached_property
    def removable(self) -> list[str]:
        """The blocks the search may remove whole (``--depth``; none by default)."""
        depth = self.settings.depth
        wanted = depth == "on" or (depth == "latency" and self.latency_table is not None)
        return list(self.analysis.removable) if wanted and not self.weights_mode else []

    @property
    def wants_sensitivity(self) -> bool:
        """Whether the sensitivity plan is one of this search's baselines (``--sensitivity``)."""
        mode = self.settings.sensitivity
        return self.settings.priors and not self.weights_mode and (
            mode == "on" or (mode == "latency" and self.latency_table is not None))

    def drop_of(self, params: Mapping[str, float]) -> tuple[str, ...]:
        """The blocks searched ``params`` remove."""
        return tuple(n for n in self.removable if params.get(DROP + n, 0.0) >= 0.5)

    # -- parameters and plans -------------------------------------------------------------------
    def specs(self) -> list[ParamSpec]:
        """The searched parameters: one relative allocation per space parameter (none in weights
        mode: one global magnitude ranking), then the cost level."""
        specs = [] if self.weights_mode else [
            ParamSpec(p.name, p.low, p.high, p.step) for p in self.resolved.params]
        specs += [ParamSpec(DROP + n, 0.0, 1.0, 1.0) for n in self.removable]
        low, high = self.budget.level_range(self.settings.level_low, self.settings.levels)
        if self.latency_table is not None:  # latency levels: no FLOPs-to-latency slack needed,
            low = high * self.settings.level_low if self.settings.levels > 1 else high
            low = min(high, max(low, self.latency_floor * 1.02))  # and none out of reach
        return [*specs, ParamSpec(LEVEL, low, high)]

    def level_of(self, params: dict[str, float]) -> float:
        return float(params.get(LEVEL, self.budget.fraction))

    def plan_for(self, params: dict[str, float], baseline: str | None = None,
                 allocation: Mapping[str, float] | None = None) -> PruningPlan:
        """The plan of searched ``params``; a ``baseline`` candidate gets its exact plan where
        the space's parameters can only approximate it (the global ranking), and a candidate
        with its own per-group ``allocation`` (a prior around such a baseline) that allocation
        fitted onto its level, capped at 0.95 only."""
        if self.weights_mode:  # no channels go; the weights are zeroed instead
            return PruningPlan({}, self.settings.importance, None)
        if allocation is not None:
            return self._fit_exact(dict(allocation), self.level_of(params))
        if self.latency_table is not None:
            sensitive = baseline is not None and baseline.startswith("sensitivity-")
            return self._latency_plan(params, self._sensitivity_alloc() if sensitive else None)
        exact = self._computed_baselines()[1].get(baseline) if baseline is not None else None
        if exact is not None:
            return exact
        drop = self.drop_of(params)
        if drop:
            return self._plan_without(params, drop)
        kept = fit_allocation_lifting_caps(
            self._widths, self.resolved.allocation(params),
            self.level_of(params) * self.budget.dense_metric,
            FitOptions(self.budget.metric, self.resolved.caps(), self.space.round_to))
        return self._plan_of(kept)

    def _plan_without(self, params: dict[str, float], drop: tuple[str, ...]) -> PruningPlan:
        """The allocation fitted onto its FLOPs/params level on the model without ``drop``
        (the groups left in it read their dense group's parameter and cap)."""
        part, names = self.analysis.without(drop)
        dense_names = [g.name for g in self.groups]
        alloc = dict(zip(dense_names, self.resolved.allocation(params)))
        caps = dict(zip(dense_names, self.resolved.caps()))
        kept = fit_allocation_lifting_caps(
            Widths.of(part.cost_model, part.groups),
            np.array([alloc[names[g.name]] for g in part.groups]),
            self.level_of(params) * self.budget.dense_metric,
            FitOptions(self.budget.metric, [caps[names[g.name]] for g in part.groups],
                       self.space.round_to))
        ratios = {names[g.name]: 1.0 - k / g.channels for g, k in zip(part.groups, kept)
                  if k < g.channels}
        return PruningPlan(ratios, self.settings.importance, self.space.round_to, drop)

    def _plan_of(self, kept: list[int]) -> PruningPlan:
        ratios = {g.name: 1.0 - k / g.channels for g, k in zip(self.groups, kept)
                  if k < g.channels}
        return PruningPlan(ratios, self.settings.importance, self.space.round_to)

    @cached_property
    def _widths(self) -> Widths:
        return Widths.of(self.analysis.cost_model, self.groups)

    def _uniform_plan(self) -> PruningPlan | None:
        """torch-pruning's uniform plan at the budget: one ratio for every group the space
        prunes, capped at 0.95 only (the global plan's caps), rounded like every candidate. None
        under a latency budget (its FLOPs levels are a guess) or out of its reach."""
        if self.budget.latency_bound:
            return None
        try:
            return self._fit_exact({n: float(c > 0) for n, c in self._caps(1.0).items()},
                                   self.budget.fraction)
        except BudgetError:
            return None

    def _fit_exact(self, alloc: dict[str, float], level: float) -> PruningPlan:
        """``alloc`` (a ratio per group) fitted onto ``level``, capped at 0.95 only (as the
        one-liners are); under a latency budget on the latency table."""
        caps = self._caps(1.0)
        alloc = {n: alloc.get(n, 0.0) for n in caps}  # every group: absent ones stay unpruned
        if self.latency_table is not None:
            return self._latency_plan({LEVEL: level}, alloc)
        return self._plan_of(fit_allocation(
            self._widths, np.array(list(alloc.values())), level * self.budget.dense_metric,
            FitOptions(self.budget.metric, list(caps.values()), self.space.round_to)))

    def _latency_plan(self, params: dict[str, float],
                      exact: dict[str, float] | None = None) -> PruningPlan:
        """The allocation fitted onto its level of the dense latency, as the latency table
        predicts it (the candidate is timed before training: the prediction is verified). An
        allocation that cannot get that fast (groups it leaves alone) is fitted as fast as it
        gets, when that is still within the budget. ``exact``: a baseline's own per-group
        allocation instead of the parameters', capped at 0.95 only (as its one-liner)."""
        from autoprune.latency import fit_latency

        table = self.latency_table
        assert table is not None
        names = [g.name for g in self.groups]
        alloc = exact or dict(zip(names, map(float, self.resolved.allocation(params))))
        target = self.level_of(params) * table.dense_ms / self.latency_scale
        drop = self.drop_of(params)
        # caps rise toward 0.95 only if the level needs it, as FLOPs fits
        for lift in (1.0,) if exact else CAP_LIFTS:
            try:
                plan = fit_latency(table.without(drop), target, alloc, self._caps(lift),
                                   self.space.round_to)
                break
            except BudgetError:
                continue
        else:
            fastest = self._fastest_ms([n for n in names if alloc[n] > 0], drop)
            top = self.budget.fraction * table.dense_ms / self.latency_scale
            if fastest * 1.01 > top:
                raise BudgetError(f"latency level {target:.4g} ms is below the fastest model "
                                  f"this allocation reaches (predicted {fastest:.4g} ms)")
            plan = fit_latency(table.without(drop), fastest * 1.01, alloc, self._caps(1.0),
                               self.space.round_to)
        return PruningPlan(plan.ratios, self.settings.importance, plan.round_to, plan.drop)

    def _caps(self, lift: float) -> dict[str, float]:
        """The space's caps, lifted ``lift`` of the way toward 0.95 (groups it leaves unpruned,
        cap 0, stay so)."""
        caps = np.asarray(self.resolved.caps(), dtype=float)
        lifted = np.where(caps > 0, caps + lift * np.maximum(0.95 - caps, 0.0), 0.0)
        return dict(zip((g.name for g in self.groups), map(float, lifted)))

    def _check_latency_floor(self) -> float:
        """The fastest model the caps allow once lifted to 0.95 (as for a FLOPs budget out of
        their reach), as the table predicts it (a fraction of dense); a latency budget under it
        is refused now rather than every candidate later."""
        table = self.latency_table
        if table is None:
            return 0.0
        floor = self._floor(tuple(self.removable))
        if self.budget.fraction < floor:
            raise BudgetError(
                f"latency budget {self.budget.fraction:.3g} of the dense model is below the "
                f"fastest model this space allows: the latency table predicts {floor:.3g} of "
                f"it with every group pruned to 0.95; {self._depth_hint()}give a larger budget, "
                "time a larger batch (--latency-batch), or --no-latency-table to search on "
                "FLOPs levels anyway")
        return floor

    def _depth_hint(self) -> str:
        """Where depth is off but residual blocks could go: what removing them all predicts."""
        blocks = [] if self.removable or self.weights_mode else self.analysis.removable
        if not blocks:
            return ""
        return (f"--depth latency may also remove its {len(blocks)} residual blocks (all "
                f"removed: {self._floor(tuple(blocks)):.3g} predicted); ")

    def _floor(self, drop: tuple[str, ...]) -> float:
        """The fastest model the lifted caps allow with the blocks ``drop`` removed, as the
        table predicts it, as a fraction of dense."""
        assert self.latency_table is not None
        return self._fastest_ms([g.name for g in self.groups], drop) / self.latency_table.dense_ms

    def _fastest_ms(self, names: list[str], drop: tuple[str, ...] = ()) -> float:
        """The predicted latency with the groups ``names`` at their fully lifted caps (the rest
        dense) and the blocks ``drop`` removed."""
        assert self.latency_table is not None
        caps = self._caps(1.0)
        return self.latency_table.predict(PruningPlan(
            {n: min(caps[n], 0.999) for n in names if caps[n] > 0},
            round_to=self.space.round_to, drop=drop))

    @property
    def latency_scale(self) -> float:
        """How much slower than predicted, as a fraction of dense, candidates measured so far
        (the median of the last 20; 1 before the first): later fits aim that much lower, so a
        table that is off by a steady factor still lands candidates on their level."""
        recent = self._latency_misses[-20:]
        return float(np.median(recent)) if recent else 1.0

    def observe_latency(self, plan: PruningPlan, measured_ms: float) -> None:
        """Record a candidate's measured latency against the table's prediction."""
        table, dense = self.latency_table, self.budget.dense_latency_ms
        if table is None or not dense or measured_ms <= 0:
            return
        predicted = table.predict(plan) / table.dense_ms
        if predicted > 0:
            self._latency_misses.append(measured_ms / dense / predicted)

    def costs(self, plan: PruningPlan) -> dict[str, Any]:
        """Analytic MACs/params of ``plan`` and their ratios to the dense model."""
        macs, n_params = self.analysis.macs(plan), self.analysis.params(plan)
        return {"macs": macs, "params": n_params, "flops_ratio": macs / self.budget.dense_macs,
                "params_ratio": n_params / self.budget.dense_params, "plan": plan.to_dict(),
                "fidelity": 1.0}

    def zero_weights(self, level: float, rec: dict[str, Any]) -> nn.Module:
        """A copy of the dense model with weights zeroed down to ``level`` of the dense
        parameters (:func:`~autoprune.deploy.weights.zeroed_copy`); fills the record's params."""
        from autoprune.deploy.weights import zeroed_copy

        model, counts = zeroed_copy(self.analysis.model, level, self.budget.dense_params)
        rec.update(counts)
        return model

    def infeasible(self, rec: dict[str, Any]) -> Outcome | None:
        """An INFEASIBLE outcome when a candidate is over a budget its fit could not see."""
        return self.budget.infeasible(rec)

    def objective(self, rec: dict[str, Any]) -> float | None:
        """The cost a scored candidate is told to the sampler with (the front's axis)."""
        return self.budget.cost(rec.get("flops_ratio"), rec.get("params_ratio"),
                                rec.get("latency_ms"))

    # -- where the search starts ----------------------------------------------------------------
    def baseline_params(self) -> list[tuple[dict[str, float], dict[str, Any]]]:
        """The uniform and global-ranking plans at the budget, as searched parameter values
        (computed once: the priors ask for them every generation until one has incumbents)."""
        return [(dict(p), dict(a)) for p, a in self._computed_baselines()[0]]

    def _computed_baselines(self) -> _Baselines:
        if self._baselines is None:
            self._baselines = self._compute_baselines()
        return self._baselines

    def _compute_baselines(self) -> _Baselines:
        """The baselines' parameters, and the exact plans of those they only approximate."""
        top = self.budget.fraction
        if self.weights_mode:
            return [({LEVEL: top}, {"baseline": "global-l1"})], {}
        label = self.settings.importance if self.settings.importance != "taylor" else "l2"
        out = [({**self.resolved.uniform(), LEVEL: top}, {"baseline": f"uniform-{label}"})]
        exact: dict[str, PruningPlan] = {}
        uniform = self._uniform_plan()
        if uniform is not None:  # one ratio everywhere, whatever the space's caps
            exact[f"uniform-{label}"] = uniform
        if self.latency_table is not None:  # latency candidates are fitted on the table: the
            ratios = self._global_ratios(label, 0.0)  # ranking only shapes the allocation
        else:
            plan, ratios = self._global_plan(label), None
            if plan is not None:  # the sampler is told the nearest parameters; the candidate
                ratios = plan.ratios  # is the exact plan (through the space's per-parameter
                exact[f"global-{label}"] = plan  # ranges it came out further from the global
                # ranking than the uniform plan is on MobileNetV2)
        if ratios is None:
            log.warning("global-ranking baseline skipped: no global threshold reaches %s %.4g "
                        "of dense within the caps", self.budget.metric, top)
        else:
            out.append(({**self.resolved.from_group_ratios(ratios), LEVEL: top},
                        {"baseline": f"global-{label}"}))
        return self._with_depth(out + self._sensitivity_baseline(label, exact), label), exact

    def _sensitivity_alloc(self) -> dict[str, float] | None:
        """The sensitivity plan's relative ratios (0 for the groups the space leaves alone);
        None until the run has measured the drops."""
        if not self.sensitivity:
            return None
        from autoprune.sensitivity import sensitivity_allocation

        caps = self._caps(1.0)
        weights = sensitivity_allocation({n: d for n, d in self.sensitivity.items()
                                          if caps.get(n, 0.0) > 0})
        return {n: weights.get(n, 0.0) for n in caps}

    def _sensitivity_baseline(self, label: str, exact: dict[str, PruningPlan]
                              ) -> list[tuple[dict[str, float], dict[str, Any]]]:
        """The sensitivity plan at the budget (its exact plan into ``exact``; latency: fitted
        on the table), told to the sampler as the nearest parameters; none before the drops."""
        alloc, name = self._sensitivity_alloc(), f"sensitivity-{label}"
        if alloc is None:
            return []
        if self.latency_table is None:
            try:
                exact[name] = self._fit_exact(alloc, self.budget.fraction)
            except BudgetError:
                log.warning("sensitivity baseline skipped: out of reach of the budget")
                return []
        scale = min(p.high for p in self.resolved.params)  # the largest ratio -> uniform's
        params = self.resolved.from_group_ratios({n: a * scale for n, a in alloc.items()})
        return [({**params, LEVEL: self.budget.fraction}, {"baseline": name})]

    def _with_depth(self, baselines: list[tuple[dict[str, float], dict[str, Any]]], label: str
                    ) -> list[tuple[dict[str, float], dict[str, Any]]]:
        """The baselines remove no block; with ``--depth``, the uniform plan that removes every
        removable block joins them (what depth buys, in its simplest form)."""
        if not self.removable:
            return baselines
        keep = {DROP + n: 0.0 for n in self.removable}
        out = [({**params, **keep}, attrs) for params, attrs in baselines]
        deep = {**self.resolved.uniform(), **dict.fromkeys(keep, 1.0), LEVEL: self.budget.fraction}
        return [*out, (deep, {"baseline": f"uniform-{label}-depth"})]

    def _global_ratios(self, label: str, lift: float,
                       round_to: int | None = None) -> dict[str, float] | None:
        """Per-group ratios of one global threshold on ``label`` scores at the budget, within
        the caps lifted ``lift`` of the way to 0.95; None when out of their reach."""
        try:
            ratios = global_ratios(
                self.analysis.importance_scores(label),
                self._widths, self.budget.fraction * self.budget.dense_metric,
                FitOptions(self.budget.metric, list(self._caps(lift).values()), round_to))
        except BudgetError:
            return None
        return {g.name: r for g, r in zip(self.groups, ratios) if r > 0}

    def _global_plan(self, label: str) -> PruningPlan | None:
        """torch-pruning's global ranking at the budget, as its one-liner runs it: every group
        the space prunes capped at 0.95 only (not at the space's caps), rounded like every
        candidate; None when it cannot reach the budget."""
        ratios = self._global_ratios(label, 1.0, self.space.round_to)
        return None if ratios is None else \
            PruningPlan(ratios, self.settings.importance, self.space.round_to)

    def generation_level(self, index: int) -> float:
        """The cost level of generation ``index``: the budget, then lower levels in turn."""
        spec = self.specs()[-1]
        levels = self.settings.levels
        grid = np.linspace(spec.high, spec.low, levels) if levels > 1 else np.array([spec.high])
        # rounded for a readable study, but never out of the sampler's range
        return min(max(round(float(grid[index % len(grid)]), 9), spec.low), spec.high)

    def prior_params(self, records: list[TrialRecord], level: float, n: int
                     ) -> list[tuple[dict, dict]]:
        """``n`` neighbours (searched values, attributes) of the best fully fine-tuned candidates
        at ``level`` (before any, of the baselines): searching starts around the naive answers.
        Around a baseline whose plan its searched values only approximate (the one-liners under
        a FLOPs budget, the sensitivity plan), the step is taken in that plan's own ratios: the
        space's caps bend the approximation far from it at small budgets."""
        if not self.settings.priors or n <= 0 or self.weights_mode:
            return []
        done = sorted((r for r in records if r.is_full and r.searched
                       and abs(r.searched.get(LEVEL, -1) - level) < 1e-6),
                      key=lambda r: -(r.val_acc or 0.0))
        centres = [(r.searched, self._exact_ratios(r.baseline, r.plan)) for r in done[:3]] or [
            (p, self._exact_ratios(a["baseline"], None, p)) for p, a in self.baseline_params()]
        keep = dict.fromkeys((DROP + b for b in self.removable), 0.0)
        steps = Neighbours(self.specs()[:-1], self._caps(1.0),
                           lambda ratios: {**self.resolved.from_group_ratios(ratios), **keep},
                           np.random.default_rng([self.settings.seed, len(records)]))
        return steps.around(centres, n, level, {plan_key(r.searched) for r in records
                                                 if r.searched})

    def _exact_ratios(self, baseline: str | None, plan: Mapping[str, Any] | None,
                      params: dict[str, float] | None = None) -> dict[str, float] | None:
        """A baseline's ratios where its searched values do not express its plan (``plan``,
        else that of ``params``); None for other candidates and plans that remove blocks."""
        if baseline not in self._computed_baselines()[1] and \
                not (baseline or "").startswith("sensitivity-"):
            return None
        try:
            plan = plan or self.plan_for(params or {}, baseline).to_dict()
        except BudgetError:
            return None
        return None if plan.get("drop") else dict(plan.get("ratios") or {})
