"""A candidate's way through the stages, and the generations that run them.

:class:`CandidateStages` is the part of :class:`~autoprune.searcher.Search` that turns searched
parameters into a :class:`Prepared` candidate (plan, analytic costs, budget checks: an over-budget
one is never trained), then runs the stages -- adaptive-BN proxy, short fine-tune, full fine-tune
-- each ending in an ``Outcome`` for the backend or filling the candidate's record;
:mod:`autoprune.staging` decides who is promoted. It relies on the search's ``settings``,
``budget``, ``analysis``, ``pipeline``, ``run_dir``, cost fields and ``plan_for`` / ``costs`` /
``time_model`` / ``objective_cost`` / ``baseline_params`` / ``specs``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.errors import BudgetError
from autoprune.evaluate import CandidateFailed
from autoprune.plan import PruningPlan
from autoprune.results import TrialRecord, atomic_write_bytes

__all__ = ["LEVEL", "CandidateStages", "Prepared"]

LEVEL = "cost_level"  # the searched cost level, a fraction of the dense model


@dataclass
class Prepared:
    """A candidate between stages: its plan, the record so far, and its pruned copy (if one
    was needed already, e.g. to time it)."""

    plan: PruningPlan
    rec: dict[str, Any]
    number: int
    level: float
    start: float
    model: nn.Module | None = None



class CandidateStages:
    """Stages of one candidate and the generation helpers (a mixin of ``Search``)."""

    settings: Any
    budget: Any
    analysis: Any
    run_dir: Any
    pipeline: Any
    metric: str
    fraction: float
    dense_params: float
    latency_bound: bool
    latency_limit: float
    dense_latency: float | None

    def over_budget(self, rec: dict[str, Any]) -> Any:
        """An INFEASIBLE outcome when a secondary (params) budget is exceeded, else None."""
        from autoprune.backends.optuna import Outcome

        if self.budget.params is None or self.metric != "macs" \
                or rec["params_ratio"] <= self.budget.params:
            return None
        return Outcome("INFEASIBLE", (0.0, rec["flops_ratio"]),
                       rec["params_ratio"] - self.budget.params,
                       {**rec, "fail_reason": f"params ratio {rec['params_ratio']:.4f} over "
                                              f"budget {self.budget.params}"})

    def zero_weights(self, level: float, rec: dict[str, Any]) -> nn.Module:
        """A copy of the dense model with the smallest weights zeroed (one global L1 ranking)
        so that at most ``level`` of the dense parameters stay nonzero; a gradient mask keeps
        them zero through fine-tuning. Fills the record's params with the nonzero count."""
        import copy

        from autoprune.weights import prune_weights, sparse_size

        model = copy.deepcopy(self.analysis.model)
        prunable = sum(m.weight.numel() for m in model.modules()
                       if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)))
        sparsity = (1.0 - level) * self.dense_params / prunable
        if not 0.0 <= sparsity < 1.0:
            raise BudgetError(f"keeping {level:.3f} of the parameters nonzero needs a weight "
                              f"sparsity of {sparsity:.3f}; only [0, 1) is possible")
        prune_weights(model, sparsity, scope="global").attach(model)
        nonzeros = sparse_size(model).nonzeros
        rec.update(params=float(nonzeros), params_ratio=nonzeros / self.dense_params,
                   weight_sparsity=sparsity)
        return model

    def over_latency(self, rec: dict[str, Any]) -> Any:
        """An INFEASIBLE outcome when the measured latency is over a latency budget, else None."""
        from autoprune.backends.optuna import Outcome

        lat = rec.get("latency_ms")
        if not self.latency_bound or lat is None or lat <= self.latency_limit:
            return None
        return Outcome("INFEASIBLE", (0.0, self.latency_ratio(lat) or 1.0),
                       (lat - self.latency_limit) / (self.dense_latency or 1.0),
                       {**rec, "fail_reason": f"latency {lat:.4g} ms over the budget "
                                              f"{self.latency_limit:.4g} ms; not fine-tuned"})

    def evaluate_trial(self, params: dict[str, float], number: int, attrs: dict[str, Any]) -> Any:
        """One candidate through every stage at full fidelity (no screening)."""
        prep = self.prepare(params, number, attrs)
        return self.full_stage(prep, proxy=True) if isinstance(prep, Prepared) else prep

    def prepare(self, params: dict[str, float], number: int, attrs: dict[str, Any]) -> Any:
        """The plan and analytic costs of a candidate (a :class:`Prepared`), or the final
        Outcome when it is over a budget (never trained)."""
        from autoprune.backends.optuna import Outcome

        start = time.perf_counter()
        try:
            plan = self.plan_for(params)
        except BudgetError as exc:
            return Outcome("INFEASIBLE", (0.0, self.fraction), 1.0,
                           {"fail_reason": str(exc), "seconds": time.perf_counter() - start})
        self.run_dir.write_plan(number, plan.to_dict())
        rec = self.costs(plan)
        pruned = None
        if self.settings.mode == "weights":
            try:
                pruned = self.zero_weights(float(params.get(LEVEL, self.fraction)), rec)
            except BudgetError as exc:
                return Outcome("INFEASIBLE", (0.0, self.fraction), 1.0,
                               {**rec, "fail_reason": str(exc)})
        if self.latency_bound:  # latency does not depend on weights: time before training
            pruned = self.analysis.apply(plan)
            rec["latency_ms"] = self.time_model(pruned)
        over = self.over_budget(rec) or self.over_latency(rec)
        if over is not None:
            over.attrs["seconds"] = time.perf_counter() - start
            return over
        return Prepared(plan, rec, number, float(params.get(LEVEL, self.fraction)), start,
                        pruned)

    def _failed(self, prep: Prepared, exc: Exception) -> Any:
        from autoprune.backends.optuna import Outcome

        return Outcome("FAIL", None, 0.0, {**prep.rec, "fail_reason": str(exc),
                                           "seconds": time.perf_counter() - prep.start})

    def proxy_stage(self, prep: Prepared) -> Any:
        """Fill ``proxy_acc`` (adaptive-BN score, seconds); a FAIL Outcome, or None."""
        try:
            result = self.pipeline.proxy(prep.plan, prep.model)
        except CandidateFailed as exc:
            return self._failed(prep, exc)
        prep.model = None  # later stages start again from the dense weights
        prep.rec.update(proxy_acc=result.proxy_acc, fidelity=0.0)
        prep.rec.setdefault("stages", {}).update(result.stages)
        return None

    def short_stage(self, prep: Prepared, fidelity: float) -> Any:
        """Fill ``short_acc`` after ``fidelity`` of the full fine-tune; a FAIL Outcome, or None."""
        steps = max(1, round(fidelity * self.pipeline.steps()))
        torch.manual_seed(self.settings.seed * 100_003 + prep.number)
        try:
            result = self.pipeline.run(prep.plan, steps=steps, proxy=False)
        except CandidateFailed as exc:
            return self._failed(prep, exc)
        prep.rec.update(short_acc=result.val_acc, fidelity=fidelity)
        prep.rec.setdefault("stages", {})["short_s"] = sum(
            v for k, v in result.stages.items() if k != "prune_s")
        return None

    def screened(self, prep: Prepared) -> Any:
        """The Outcome of a candidate the screening did not promote."""
        from autoprune.backends.optuna import Outcome

        return Outcome("SCREENED", None, 0.0,
                       {**prep.rec, "seconds": time.perf_counter() - prep.start})

    def full_stage(self, prep: Prepared, proxy: bool = False) -> Any:
        """The full fine-tune, validation, latency and saved weights: the trial's Outcome."""
        from autoprune.backends.optuna import Outcome

        rec = prep.rec
        torch.manual_seed(self.settings.seed * 100_003 + prep.number)
        try:
            result = self.pipeline.run(prep.plan, model=prep.model, proxy=proxy)
        except CandidateFailed as exc:
            return self._failed(prep, exc)
        prep.model = None
        if self.settings.latency and "latency_ms" not in rec:
            rec["latency_ms"] = self.time_model(result.model)
        cost = self.objective_cost(rec["flops_ratio"], rec["params_ratio"], rec.get("latency_ms"))
        self._save_state(prep.number, result.model)
        if proxy:
            rec["proxy_acc"] = result.proxy_acc
        rec.update(val_acc=result.val_acc, fidelity=1.0, seconds=time.perf_counter() - prep.start,
                   stages={**rec.get("stages", {}), **result.stages})
        return Outcome("COMPLETE", (result.val_acc, cost), 0.0, rec)

    # -- screening and staging (autoprune.staging runs the generations) ---------------------
    @property
    def staged(self) -> bool:
        """Whether generations with proxy screening and a short stage run (Optuna backend,
        channel mode); Ray and weight mode run every candidate at full fidelity."""
        return self.settings.backend == "optuna" and self.settings.mode == "channels"

    @property
    def schedule(self) -> Any:
        from autoprune.staging import Schedule

        s = self.settings
        return Schedule(s.screen, s.short_fidelity, s.promote, s.generation)

    def generation_level(self, index: int) -> float:
        """The cost level of generation ``index``: the budget, then lower levels in turn."""
        spec = self.specs()[-1]
        grid = np.linspace(spec.high, spec.low, self.settings.levels) \
            if self.settings.levels > 1 else np.array([spec.high])
        return round(float(grid[index % len(grid)]), 9)

    def prior_params(self, records: list[TrialRecord], level: float, n: int) -> list[dict]:
        """``n`` neighbours of the best fully fine-tuned candidates at ``level`` (before any,
        of the uniform and global-ranking baselines): searching starts around the naive answers."""
        from autoprune.staging import perturb

        if not self.settings.priors or n <= 0 or self.settings.mode != "channels":
            return []
        done = sorted((r for r in records if r.state == "COMPLETE" and r.val_acc is not None
                       and (r.fidelity or 0) >= 1 and r.searched
                       and abs(r.searched.get(LEVEL, -1) - level) < 1e-6),
                      key=lambda r: -(r.val_acc or 0.0))
        centres = [r.searched for r in done[:3]] or [p for p, _ in self.baseline_params()]
        rng = np.random.default_rng([self.settings.seed, len(records)])
        specs = self.specs()[:-1]
        return [{**perturb(centres[i % len(centres)], specs, rng), LEVEL: level}
                for i in range(n)]

    def _state_path(self, number: int) -> Path:
        return self.run_dir.models_dir / f"trial_{number}.pt"

    def _save_state(self, number: int, model: nn.Module) -> None:
        import io

        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
        atomic_write_bytes(self._state_path(number), buffer.getvalue())

    def load_candidate(self, record: TrialRecord) -> nn.Module:
        """The fine-tuned candidate of a completed trial, rebuilt from its plan and weights."""
        plan = PruningPlan.from_dict(record.plan or self.run_dir.read_plan(record.trial))
        model = self.analysis.apply(plan)
        model.load_state_dict(torch.load(self._state_path(record.trial), weights_only=True))
        return model.eval()
