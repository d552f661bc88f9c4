"""A candidate's way through the stages: prepare, adaptive-BN proxy, short fine-tune, full.

:class:`Stages` takes searched parameters to a :class:`Prepared` candidate (plan, analytic costs,
budget checks: an over-budget one is never trained), and runs each stage over the
:class:`~autoprune.pipeline.Pipeline`; a stage either fills the candidate's record or ends it
with an :class:`~autoprune.trial.Outcome`. :mod:`autoprune.generations` decides who is promoted.
A :class:`Stages` pickles (without its pipeline, rebuilt on first use), so stage jobs can run in
another process (the Ray backend); :meth:`Stages.job` is that picklable entry point.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import torch
from torch import nn

from autoprune.errors import BudgetError
from autoprune.latency import (
    LatencyCache,
    LatencyTarget,
    PreparedModels,
    shape_signature,
)
from autoprune.latency.guard import DEFAULT_MAX_CV, Timed, guarded, merge_retimed
from autoprune.pipeline import CandidateFailed, Pipeline
from autoprune.plan import PruningPlan
from autoprune.problem import Problem
from autoprune.results import RunDir, atomic_write_text
from autoprune.settings import FinetuneSettings
from autoprune.trial import LEVEL, Outcome, TrialRecord, TrialState

if TYPE_CHECKING:
    from autoprune.engine import PrunableModel
    from autoprune.latency import LatencyTable

__all__ = ["Prepared", "StageName", "Stages", "Timer"]

StageName = Literal["proxy", "short", "full", "full+proxy"]
REFITS = 2  # a candidate measured over a latency budget is fitted lower and timed again
BASELINE_REFITS = 5  # a baseline is matched on measured latency: timings after the first
REFERENCE, REFERENCE_ROUNDS = "reference (dense)", 3  # see Timer.reference
MATCH = (0.94, 0.98)  # every candidate is matched within this share of its level (a baseline's:
# the budget), never over MATCH[1] of the budget (the end-of-run re-timing moves figures by a few %)


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
    baseline: bool = False
    outcome: Outcome | None = field(default=None, repr=False)  # set once it has ended

    def end(self, outcome: Outcome) -> Prepared:
        self.outcome, self.model = outcome, None
        return self


@dataclass
class Timer:
    """Times models on the run's device for one run: processes take turns (one file lock per
    device, so no two timings overlap, whichever worker or Ray actor asks), a figure whose CV
    is above ``max_cv`` is taken again and flagged if it stays noisy
    (:func:`~autoprune.latency.guard.guarded`), figures are cached by the pruned architecture's
    shape signature, and every timing is appended to ``latency_log.jsonl`` (its wall-clock
    interval, process, figures)."""

    run: RunDir
    example_inputs: Any
    device: str
    batch_size: int = 1
    dtype: str = "float32"
    cache: LatencyCache = field(default_factory=LatencyCache)
    runtime: str = "eager"
    max_cv: float = DEFAULT_MAX_CV
    #: exported / compiled copies, so a re-timing (the noise guard's, the final one) does not
    #: export again
    prepared: PreparedModels = field(default_factory=PreparedModels, repr=False, compare=False)
    #: (the dense model, its latency in the run's baseline): a candidate is then timed in
    #: rounds alternating with the dense model and its figure is ``ratio * that latency``, so
    #: a budget in dense's share compares like with like whatever the machine's load does
    #: meanwhile (the dense figure timed once at the start ran 1.5-4 % faster than in the
    #: final alternating re-timing, and picks under-used their latency budget by that much)
    reference: tuple[nn.Module, float] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.run = RunDir(self.run.path.absolute())  # the same lock from any working directory
        if self.reference is not None:
            self.use_reference(*self.reference)

    def use_reference(self, dense: nn.Module, latency_ms: float) -> None:
        """Time candidates beside ``dense`` (see :attr:`reference`); its prepared copy is
        pinned, so no candidate evicts it to be exported again for the next one."""
        self.reference = (dense, latency_ms)
        self.prepared.pin(dense)

    @property
    def target(self) -> LatencyTarget:
        return LatencyTarget(self.device, self.batch_size, self.dtype, self.runtime)

    def __call__(self, model: nn.Module, repeats: int = 10, label: str = "candidate") -> Timed:
        """The guarded latency of ``model`` (a cached figure when its architecture was timed
        steadily; a cached noisy one is taken again, and the steadier of the two kept, so one
        unlucky timing does not decide every later candidate of the same shape)."""
        t = self.target
        key = (shape_signature(model), t.device, self.batch_size, t.dtype, t.runtime)
        with self._turn() as log:
            hit = self.cache.get(key)
            old = None if hit is None else Timed(hit[0], hit[1], 0)
            if old is not None and (old.cv or 0.0) <= self.max_cv:
                return old
            timed = guarded(lambda k: self._take(model, label, repeats * k), self.max_cv)
            if old is not None and (old.cv or 0.0) < (timed.cv or 0.0):
                timed = Timed(old.ms, old.iqr_ms, timed.attempts, timed.noisy)
            self.cache.put(key, (timed.ms, timed.iqr_ms))
            log[label] = timed
        return timed

    def _take(self, model: nn.Module, label: str, runs: int) -> tuple[float, float]:
        """(median, IQR) in ms of ``runs`` runs of ``model``; beside the reference model in
        :data:`REFERENCE_ROUNDS` alternating rounds, scaled to the reference's latency."""
        if self.reference is None:
            return self.alternating({label: model}, 1, runs)[label]
        dense, reference_ms = self.reference
        got = self.alternating({REFERENCE: dense, label: model}, REFERENCE_ROUNDS, runs)
        scale = reference_ms / got[REFERENCE][0]
        return got[label][0] * scale, got[label][1] * scale

    def together(self, models: dict[str, nn.Module], rounds: int = 5,
                 repeats: int = 10) -> dict[str, Timed]:
        """The models timed in alternating rounds (:func:`~autoprune.latency.time_alternating`);
        noisy ones are re-timed (with the first label, the reference, alternating beside them)
        up to twice, each time with twice the runs, keeping each label's steadiest figure as a
        ratio to the reference (:func:`~autoprune.latency.guard.merge_retimed`)."""
        with self._turn() as log:
            found = {k: Timed(*v) for k, v in self.alternating(models, rounds, repeats).items()}
            reference = next(iter(models))
            for attempt in (2, 4):
                noisy = [k for k, t in found.items() if (t.cv or 0.0) > self.max_cv]
                if not noisy:
                    break
                again = self.alternating({k: models[k] for k in dict.fromkeys(
                    [reference, *noisy])}, rounds, repeats * attempt)
                found = merge_retimed(found, again, reference)
            found = {k: Timed(t.ms, t.iqr_ms, t.attempts, (t.cv or 0.0) > self.max_cv)
                     for k, t in found.items()}
            log.update(found)
        return found

    def table(self, analysis: PrunableModel) -> LatencyTable:
        """The per-layer latency table of ``analysis`` on this timer's target (seconds), the
        run's ``latency_table.json`` when it holds one for the same target and model."""
        from autoprune.latency import LatencyTable, build_table

        path = self.run.latency_table_path
        wanted = {"signature": shape_signature(analysis.model), "device": self.device,
                  "runtime": self.runtime, "batch": self.batch_size, "dtype": self.dtype}
        if path.is_file():
            cached = LatencyTable.from_json(path.read_text(encoding="utf-8"))
            if all(cached.key.get(k) == v for k, v in wanted.items()) and (
                    len(cached.rest) > 2 or not analysis.removable):  # older: no removed blocks
                return cached
        with self._turn():
            table = build_table(analysis, self.target)
        atomic_write_text(path, table.to_json())
        return table

    def alternating(self, models: dict[str, nn.Module], rounds: int,
                    repeats: int) -> dict[str, tuple[float, float]]:
        return self.prepared.time_alternating(models, self.example_inputs, self.target, rounds,
                                              repeats)

    @contextlib.contextmanager
    def _turn(self) -> Iterator[dict[str, Timed]]:
        """Hold the device's timing lock; what the body puts in the yielded dict is logged with
        the interval the lock was held."""
        from filelock import FileLock

        with FileLock(str(self.run.lock_path(f"latency-{self.device}"))):
            start, timed = time.time(), {}
            yield timed
            if timed:
                self.run.log_timing({"start": start, "end": time.time(), "pid": os.getpid(),
                                     "runtime": self.runtime, "device": self.device,
                                     "timings": {k: asdict(t) for k, t in timed.items()}})


class Stages:
    """The stages of one candidate, for one search (``problem``) and one run directory."""

    def __init__(self, problem: Problem, run: RunDir, timer: Timer,
                 evaluate: Callable[[nn.Module, str], float | None],
                 data: tuple[Iterable[Any] | None, FinetuneSettings, Any]) -> None:
        self.problem, self.run, self.timer, self.evaluate = problem, run, timer, evaluate
        self.train_loader, self.ft, self.user_finetune = data
        self.seed = problem.settings.seed
        self._pipeline: Pipeline | None = None

    def __getstate__(self) -> dict[str, Any]:
        # for Ray workers: the pipeline is rebuilt there; an absolute run dir keeps plans/ and
        # models/ in place whatever the worker's working directory
        state = self.__dict__.copy()
        state["_pipeline"] = None
        state["run"] = RunDir(self.run.path.absolute())
        return state

    @property
    def pipeline(self) -> Pipeline:
        """Built on first use: ask/tell sessions train candidates themselves and never need it."""
        if self._pipeline is None:
            self._pipeline = Pipeline(self.problem.analysis, self.evaluate,  # type: ignore[arg-type]
                                      self.train_loader, self.ft, self.user_finetune)
        return self._pipeline

    # -- before any training --------------------------------------------------------------------
    def prepare(self, params: dict[str, float], number: int, attrs: dict[str, Any]) -> Prepared:
        """The plan and analytic costs of a candidate; it has ended (``.outcome``) when it is
        over a budget (never trained)."""
        start = time.time()
        p = self.problem
        prep = Prepared(PruningPlan(), {}, number, p.level_of(params), start,
                        baseline=bool(attrs.get("baseline")))
        try:
            prep.plan = p.plan_for(params, attrs.get("baseline"), attrs.get("allocation"))
        except BudgetError as exc:
            return prep.end(Outcome(TrialState.INFEASIBLE, (0.0, p.budget.fraction), 1.0,
                                    {"fail_reason": str(exc), "seconds": self._since(prep)}))
        self.run.write_plan(number, prep.plan.to_dict())
        prep.rec = p.costs(prep.plan)
        if p.weights_mode:
            try:
                prep.model = p.zero_weights(prep.level, prep.rec)
            except BudgetError as exc:
                return prep.end(Outcome(TrialState.INFEASIBLE, (0.0, p.budget.fraction), 1.0,
                                        {**prep.rec, "fail_reason": str(exc)}))
        if p.budget.latency_bound:  # latency does not depend on weights: time before training
            self.time(prep)
            self._refit(prep, params, attrs)
        over = p.infeasible(prep.rec)
        return prep.end(over.with_attrs(seconds=self._since(prep))) if over else prep

    def _refit(self, prep: Prepared, params: dict[str, float], attrs: dict[str, Any]) -> None:
        """Match a candidate fitted on the latency table to its level on measured latency, as
        the baselines are matched to the budget: one measured over ``MATCH[1]`` of the budget
        is fitted again at its level scaled by the miss, toward the middle of ``MATCH``, and
        one measured under ``MATCH[0]`` of its level (capped at the budget) is fitted higher,
        toward the middle of ``MATCH`` of that level, each timed again, up to ``REFITS``
        times (a baseline: ``BASELINE_REFITS``, within a bracket of levels). Timing noise and
        the table's error cost a timing, not the candidate, and every candidate keeps the
        baselines' margin under the budget (the end-of-run re-timing moves a small net's ratio
        to dense by 2-7 % with the machine's load; finalists fitted right at the budget were
        dropped there) and uses as much of its level as they do (candidates the table left
        under it competed on validation with less capacity than the baselines: a MobileNetV2
        pick ran at 0.41 of dense under a 0.5 budget its baselines filled). The slowest plan
        measured under ``MATCH[1]`` of the budget is kept; when none was, the fastest one."""
        p, limit = self.problem, self.problem.budget.latency_limit_ms
        dense = p.budget.dense_latency_ms
        if p.latency_table is None or limit is None or not dense:
            return
        cap, mid = limit * MATCH[1], sum(MATCH) / 2
        level, lo, hi = p.level_of(params), 0.0, math.inf
        floor = MATCH[0] * min(limit, level * dense)  # the baselines' level is the budget
        tried: list[tuple[float, PruningPlan, dict[str, Any], nn.Module | None]] = []
        for attempt in range(BASELINE_REFITS if prep.baseline else REFITS):
            measured = prep.rec.get("latency_ms")
            if measured is None:
                return
            tried.append((measured, prep.plan, prep.rec, prep.model))
            if floor <= measured <= cap:
                return
            lo, hi = (level, hi) if measured <= cap else (lo, level)
            aim_ms = mid * (limit if measured > cap else floor / MATCH[0])
            aim = level * aim_ms / measured  # the miss, proportionally; else bisect
            level = min(aim if lo < aim < hi else (lo + hi) / 2, 1.0)
            try:
                plan = p.plan_for({**params, LEVEL: level}, attrs.get("baseline"),
                                  attrs.get("allocation"))
            except BudgetError:
                break
            first = prep.rec.get("refit_from_ms", measured)
            prep.plan, prep.model, prep.rec = plan, None, {
                **p.costs(plan), "refit_from_ms": first, "refits": attempt + 1}
            self.run.write_plan(prep.number, plan.to_dict())
            self.time(prep)
        else:  # the last refit's timing (a break leaves none untried)
            if prep.rec.get("latency_ms") is not None:
                tried.append((prep.rec["latency_ms"], prep.plan, prep.rec, prep.model))
        under = [t for t in tried if t[0] <= cap]  # ties over it: the latest (its refit count)
        keep = max(under, key=lambda t: t[0]) if under else min(reversed(tried), key=lambda t: t[0])
        if keep[2] is not prep.rec:
            _, prep.plan, prep.rec, prep.model = keep
            self.run.write_plan(prep.number, prep.plan.to_dict())

    def time(self, prep: Prepared) -> None:
        """Fill ``latency_ms`` (once) with the pruned architecture's latency; the pruned copy
        is kept for the next stage."""
        if "latency_ms" in prep.rec or not self.problem.settings.latency:
            return
        if prep.model is None:
            prep.model = self.problem.analysis.apply(prep.plan)
        start = time.time()
        timed = self.timer(prep.model)
        self.problem.observe_latency(prep.plan, timed.ms)  # calibrates fits on a latency table
        prep.rec.update(latency_ms=timed.ms, latency_cv=timed.cv,
                        latency_flag="noisy" if timed.noisy else None)
        prep.rec.setdefault("stages", {})["latency_s"] = time.time() - start

    # -- the stages (each may run in another process: see job) ---------------------------------
    def job(self, item: tuple[StageName, Prepared, float]) -> Prepared:
        """One stage of one candidate: ``(stage, candidate, short fidelity)`` -> the candidate."""
        stage, prep, fidelity = item
        if stage == "proxy":
            return self.proxy(prep)
        if stage == "short":
            return self.short(prep, fidelity)
        return self.full(prep, proxy=stage == "full+proxy")

    def proxy(self, prep: Prepared) -> Prepared:
        """Fill ``proxy_acc`` (adaptive-BN score, seconds), or end the candidate failed."""
        try:
            result = self.pipeline.proxy(prep.plan, prep.model)
        except CandidateFailed as exc:
            return self.failed(prep, exc)
        prep.model = None  # later stages start again from the dense weights
        prep.rec.update(proxy_acc=result.proxy_acc, fidelity=0.0)
        prep.rec.setdefault("stages", {}).update(result.stages)
        return prep

    def short(self, prep: Prepared, fidelity: float) -> Prepared:
        """Fill ``short_acc`` after ``fidelity`` of the full fine-tune, or end it failed."""
        steps = max(1, round(fidelity * self.pipeline.steps()))
        torch.manual_seed(self.seed * 100_003 + prep.number)
        try:
            result = self.pipeline.run(prep.plan, steps=steps, proxy=False)
        except CandidateFailed as exc:
            return self.failed(prep, exc)
        prep.rec.update(short_acc=result.val_acc, fidelity=fidelity)
        prep.rec.setdefault("stages", {})["short_s"] = sum(
            v for k, v in result.stages.items() if k != "prune_s")
        return prep

    def full(self, prep: Prepared, proxy: bool = False) -> Prepared:
        """The full fine-tune, validation and saved weights: the candidate ends COMPLETE."""
        rec = prep.rec
        torch.manual_seed(self.seed * 100_003 + prep.number)
        try:
            result = self.pipeline.run(prep.plan, model=prep.model, proxy=proxy)
        except CandidateFailed as exc:
            return self.failed(prep, exc)
        if proxy:
            rec["proxy_acc"] = result.proxy_acc
        rec.update(val_acc=result.val_acc, fidelity=1.0, seconds=self._since(prep),
                   stages={**rec.get("stages", {}), **result.stages})
        self.save(prep.number, result.model)
        return prep.end(Outcome(TrialState.COMPLETE, (result.val_acc, self.problem.objective(rec)),
                                0.0, rec))

    def screened(self, prep: Prepared) -> Prepared:
        """End a candidate the screening did not promote."""
        return prep.end(Outcome(TrialState.SCREENED, None, 0.0,
                                {**prep.rec, "seconds": self._since(prep)}))

    def failed(self, prep: Prepared, exc: BaseException) -> Prepared:
        """End a candidate whose stage raised."""
        return prep.end(Outcome(TrialState.FAIL, None, 0.0,
                                {**prep.rec, "fail_reason": str(exc),
                                 "seconds": self._since(prep)}))

    @staticmethod
    def _since(prep: Prepared) -> float:
        return time.time() - prep.start

    # -- fine-tuned weights ---------------------------------------------------------------------
    def save(self, number: int, model: nn.Module) -> None:
        buffer = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, buffer)
        self.run.write_model(number, buffer.getvalue())

    def _plan_of(self, record: TrialRecord) -> PruningPlan:
        return PruningPlan.from_dict(record.plan or self.run.read_plan(record.trial))

    def architecture(self, record: TrialRecord) -> nn.Module:
        """A trial's pruned architecture (dense weights pruned, not its fine-tuned ones)."""
        return self.problem.analysis.apply(self._plan_of(record)).eval()

    def load(self, record: TrialRecord) -> nn.Module:
        """The fine-tuned candidate of a completed trial, rebuilt from its plan and weights."""
        from autoprune.deploy.rebuild import SavedTrial, rebuild

        saved = SavedTrial(record.trial, self._plan_of(record), self.run.model_path(record.trial))
        return rebuild(self.problem.analysis, saved).eval()
