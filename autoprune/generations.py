"""Cheap first, expensive last: the one trial loop, one generation at a time.

A generation asks the backend (the sampler, and the priors) for ``screen x k`` candidates at one
cost level, scores each by the adaptive-BN proxy (seconds), gives a short fine-tune to the
proxy's best ``promote x k``, and the full fine-tune to the best ``k`` of those (successive
halving; Optuna's pruners raise in multi-objective studies, so the halving lives here). Every
candidate becomes a trial that records its fidelity: 0 (proxy only), the short fraction, or 1.
Screened-out ones end ``SCREENED``; only full-fidelity trials enter the front. The stage jobs of
a generation run where the backend runs them (this process, or a Ray cluster).

Counting is exact across worker processes: a generation reserves its ``k`` slots under the ask
lock (``slots`` on its first trial), and tells all its trials under the lock with exactly ``k``
of them counting toward ``--trials`` (the fully fine-tuned ones, then failures).

:func:`top_per_level` and :func:`allot` are pure and tested against brute force.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from autoprune.backends.base import Asked, SearchBackend
from autoprune.neighbours import plan_key
from autoprune.plan import PruningPlan
from autoprune.problem import Problem
from autoprune.settings import SearchSettings
from autoprune.stages import Prepared, StageName, Stages
from autoprune.trial import LEVEL, ParamSpec, TrialRecord, TrialState

log = logging.getLogger(__name__)

#: Generations in a row that train no new model (every promoted candidate a copy) before
#: copies start to count toward ``--trials``, so a search whose space has run out ends.
IDLE_GENERATIONS = 3

__all__ = ["DuplicatePlan", "Progress", "Schedule", "allot", "duplicates", "optimize",
           "top_per_level"]


@dataclass(frozen=True)
class Schedule:
    """How many candidates each stage of a generation sees, per full fine-tune (the settings
    validate the values; see :class:`~autoprune.settings.SearchSettings`).

    ``staged=False`` is the plain loop of weight mode: one candidate per generation, its level
    chosen by the sampler, the proxy taken inside the full fine-tune.
    """

    screen: float
    short_fidelity: float
    promote: float
    generation: int
    staged: bool = True

    @classmethod
    def of(cls, settings: SearchSettings) -> Schedule:
        if settings.mode == "weights":  # one global ranking: the level is all there is to search
            return cls(0.0, 0.0, 1.0, 1, staged=False)
        return cls(settings.screen, settings.short_fidelity, settings.promote,
                   settings.generation)

    def counts(self, k: int) -> tuple[int, int, int]:
        """(proxied, short fine-tuned, fully fine-tuned) candidates of a generation of ``k``."""
        n_short = max(k, round(self.promote * k)) if self.short_fidelity > 0 else k
        return max(n_short, round(self.screen * k)), n_short, k


def allot(sizes: Sequence[int], k: int) -> list[int]:
    """Split ``k`` slots over groups in proportion to their sizes (largest remainder), never
    more than a group holds."""
    total = sum(sizes)
    k = min(k, total)
    if k <= 0:
        return [0] * len(sizes)
    exact = [k * s / total for s in sizes]
    out = [min(math.floor(e), s) for e, s in zip(exact, sizes)]
    order = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - out[i]), i))
    while sum(out) < k:
        for i in order:
            if sum(out) < k and out[i] < sizes[i]:
                out[i] += 1
    return out


def top_per_level(levels: Sequence[float], scores: Sequence[float | None], k: int,
                  forced: Sequence[bool] = ()) -> list[int]:
    """Indices of the ``k`` candidates kept. ``forced`` candidates (the baselines) are kept
    first, the earliest when there are more than ``k``; the slots left are allotted over the
    cost levels by how many other candidates each holds, each level keeping its best scores
    (higher is better; None ranks last; ties go to the earlier candidate). Never more than
    ``k``: the generation's full fine-tunes are exactly the trials it counts."""
    forced = list(forced) or [False] * len(levels)
    kept = [i for i, f in enumerate(forced) if f][:max(k, 0)]
    keys = sorted({round(v, 9) for i, v in enumerate(levels) if not forced[i]})
    members = {key: [i for i, v in enumerate(levels) if round(v, 9) == key and not forced[i]]
               for key in keys}
    slots = allot([len(members[key]) for key in keys], k - len(kept))
    for key, n in zip(keys, slots):
        ranked = sorted(members[key], key=lambda i: (scores[i] is None, -(scores[i] or 0.0), i))
        kept += ranked[:n]
    return sorted(kept)


class Progress(Protocol):
    """What the trial loop reports while it runs (the CLI's progress bar)."""

    def generation(self) -> None:
        """A generation was told: the books may be rewritten."""

    def stage(self, name: str, done: int, total: int, trial: int) -> None:
        """Candidate ``done`` of ``total`` of stage ``name`` (trial ``trial``) starts."""


@dataclass
class _Loop:
    """What every step of a generation needs, and how many generations found nothing new."""

    backend: SearchBackend
    stages: Stages
    schedule: Schedule
    progress: Progress | None = None
    idle: int = 0  # generations in a row that fully fine-tuned no new model (only copies)


def optimize(backend: SearchBackend, stages: Stages, total: int,
             progress: Progress | None = None,
             lock: AbstractContextManager[Any] | None = None) -> None:
    """Run generations until ``total`` trials count across every process on the study."""
    loop = _Loop(backend, stages, Schedule.of(stages.problem.settings), progress)
    guard = lock if lock is not None else contextlib.nullcontext()
    specs = stages.problem.specs()
    while True:
        with guard:
            backend.reap()
            slots = backend.slots()
            left = total - slots.done - slots.running
            if left <= 0:
                return
            # a generation fully fine-tunes the waiting baselines: it holds them all
            k = min(max(loop.schedule.generation, slots.baselines), left)
            asked = _ask(backend, stages, specs, loop.schedule, k)
            records = backend.records()
        try:
            preps = _run(loop, asked, k, records)
        except KeyboardInterrupt:
            for a in asked:
                backend.interrupt(a, "interrupted (Ctrl-C); retried on resume")
            raise
        with guard:  # the first asked trial holds the generation's slots: told last, so a
            # worker on another machine (no shared lock) never sees them free before the
            # generation's trials count as done
            for a, prep in reversed(list(zip(asked, preps))):
                backend.tell(a, prep.outcome)  # type: ignore[arg-type]
        if progress is not None:
            progress.generation()


def _ask(backend: SearchBackend, stages: Stages, specs: Sequence[ParamSpec],
         schedule: Schedule, k: int) -> list[Asked]:
    """Enqueue this generation's priors and fixed level, then ask its trials."""
    n = schedule.counts(k)[0]
    if schedule.staged:
        problem = stages.problem
        records = backend.records()
        level = problem.generation_level(len(records) // max(n, 1))
        waiting = backend.slots().waiting  # baselines and retried trials go first
        priors = problem.prior_params(records, level, min(n // 2, max(0, n - waiting)))
        for params, attrs in priors:
            backend.enqueue(params, attrs)
        for _ in range(max(0, n - waiting - len(priors))):
            backend.enqueue({LEVEL: level}, {})  # the sampler fills in the allocation
    worker = f"{socket.gethostname()}:{os.getpid()}"
    asked: list[Asked] = []
    for index in range(n):
        a = backend.ask(specs)
        backend.annotate(a, {"worker": worker, "slots": k if index == 0 else 0,
                             "generation": asked[0].number if asked else a.number})
        asked.append(a)
    return asked


def duplicates(records: Sequence[TrialRecord], asked: Sequence[Asked]) -> dict[int, int]:
    """``{trial: earlier trial}`` for asked trials whose plan a finished trial (or an earlier
    one of this generation) already evaluated: a sampler on a grid can propose a plan twice,
    and the same plan is never trained twice. Retries of interrupted trials are not copies."""
    seen = {plan_key(r.searched): r.trial for r in records
            if r.searched and r.state in (TrialState.COMPLETE, TrialState.SCREENED)}
    out = {}
    for a in asked:
        key = plan_key(a.params)
        if key in seen and a.attrs.get("retry_of") is None:
            out[a.number] = seen[key]
        seen.setdefault(key, a.number)
    return out


def trained_widths(problem: Problem, records: Sequence[TrialRecord], alive: Sequence[Prepared],
                   key: str) -> dict[int, int]:
    """``{trial: trial with the same model}`` for live candidates whose fitted plan keeps as many
    channels per group as a fully fine-tuned trial, or as a candidate here ranked above it
    (baselines first, then by ``key``, the stage score): searched values that round to one plan
    (``round_to``) are one model, and it is fully fine-tuned once."""
    if problem.weights_mode:  # every plan is empty there: the level tells models apart
        return {}

    def widths(plan: PruningPlan) -> tuple[Any, ...]:
        return (*problem.analysis.kept(plan), plan.drop)

    seen = {widths(PruningPlan.from_dict(r.plan)): r.trial for r in reversed(records)
            if r.plan and r.is_full}
    out = {}
    for p in sorted(alive, key=lambda p: (not p.baseline, -float(p.rec.get(key) or 0.0),
                                          p.number)):
        found = seen.setdefault(widths(p.plan), p.number)
        if found != p.number:
            out[p.number] = found
    return out


def _promotable(loop: _Loop, alive: list[Prepared], records: Sequence[TrialRecord],
                key: str) -> list[Prepared]:
    """``alive`` less the candidates :func:`trained_widths` finds: those end SCREENED, saying
    which trial is the same model, so the full fine-tunes go to distinct models."""
    copies = trained_widths(loop.stages.problem, records, alive, key)
    for p in alive:
        if p.number in copies:
            p.rec.update(copy_of=copies[p.number], fail_reason=(
                f"not fully fine-tuned: trial {copies[p.number]} keeps the same channels (the "
                "same model)"))
            loop.stages.screened(p)
    return [p for p in alive if p.number not in copies]


def _run(loop: _Loop, asked: list[Asked], k: int,
         records: Sequence[TrialRecord]) -> list[Prepared]:
    """Proxy every candidate, short-tune the proxy's best, fully tune the best of those that
    are distinct models (``records``: the trials finished before this generation)."""
    stages, schedule = loop.stages, loop.schedule
    preps = [stages.prepare(a.params, a.number, a.attrs) for a in asked]
    copies = duplicates(records, asked)
    for p in preps:
        if p.number in copies and p.outcome is None:
            stages.failed(p, DuplicatePlan(f"the plan of trial {copies[p.number]} again; not "
                                           "evaluated twice"))
    alive = [p for p in preps if p.outcome is None]
    if not schedule.staged:
        _full(loop, _promotable(loop, alive, records, "proxy_acc"), "full+proxy")
    else:  # copies of trained models leave after the proxy: no short fine-tune is spent on
        # them, and the short stage's slots go to distinct models
        alive = _promotable(loop, _stage(loop, alive, "proxy", 0.0), records, "proxy_acc")
        _, n_short, _ = schedule.counts(k)
        if schedule.short_fidelity > 0:
            alive = _halve(stages, alive, n_short, "proxy_acc")
            alive = _stage(loop, alive, "short", schedule.short_fidelity)
            alive = _halve(stages, alive, k, "short_acc")
        else:
            alive = _halve(stages, alive, k, "proxy_acc")
        _full(loop, alive, "full")
    new = any(p.outcome is not None and p.outcome.state is TrialState.COMPLETE for p in preps)
    loop.idle = 0 if new else loop.idle + any("copy_of" in p.rec for p in preps)
    if loop.idle == IDLE_GENERATIONS:
        log.warning("%d generations in a row proposed only models already fully fine-tuned "
                    "(the same channels per group): their copies now count toward --trials, "
                    "so the search may end with fewer distinct models; --round-to 1, a larger "
                    "budget or a wider space gives it more", IDLE_GENERATIONS)
    _count(preps, k, loop.idle >= IDLE_GENERATIONS)
    return preps


class DuplicatePlan(Exception):
    """A proposed plan that an earlier trial already evaluated."""


def _full(loop: _Loop, alive: list[Prepared], stage: StageName) -> None:
    """Time the promoted candidates here, serially (never while candidates train), then give
    them the full fine-tune where the backend runs jobs."""
    for prep in alive:
        loop.stages.time(prep)
    _stage(loop, alive, stage, 1.0)


def _stage(loop: _Loop, alive: list[Prepared], stage: StageName,
           fidelity: float) -> list[Prepared]:
    """Run one stage over the live candidates; the ones that ended drop out. Where the backend
    runs jobs in this process, they go one at a time so the progress shows each candidate."""
    jobs = [(stage, p, fidelity) for p in alive]
    if loop.backend.runs_jobs_here and loop.progress is not None:
        done: list[Any] = []
        for i, job in enumerate(jobs):
            loop.progress.stage(stage, i + 1, len(jobs), job[1].number)
            done += loop.backend.map(loop.stages.job, [job])
    else:
        if loop.progress is not None and jobs:
            loop.progress.stage(stage, len(jobs), len(jobs), jobs[0][1].number)
        done = loop.backend.map(loop.stages.job, jobs)
    for prep, result in zip(alive, done):
        if isinstance(result, BaseException):  # its process failed (a Ray worker died)
            loop.stages.failed(prep, result)
        elif result is not prep:  # came back from another process
            prep.rec, prep.model, prep.outcome = result.rec, result.model, result.outcome
    return [p for p in alive if p.outcome is None]


def _halve(stages: Stages, alive: list[Prepared], keep: int, key: str) -> list[Prepared]:
    """Keep the best ``keep`` by ``key`` per level; the rest end SCREENED."""
    levels = [p.level for p in alive]
    scores = [p.rec.get(key) for p in alive]
    kept = set(top_per_level(levels, scores, keep, [p.baseline for p in alive]))
    for i, p in enumerate(alive):
        if i not in kept:
            stages.screened(p)
    return [p for i, p in enumerate(alive) if i in kept]


def _count(preps: list[Prepared], k: int, copies_count: bool = False) -> None:
    """Exactly ``k`` trials of the generation count toward the total: the fully fine-tuned
    ones first, then failed or infeasible ones (so a generation where everything fails ends),
    and, with ``copies_count`` (the sampler found no new model for
    :data:`IDLE_GENERATIONS` generations in a row: the space holds fewer models than
    ``--trials``, or the sampler has settled), copies of trained models."""
    def state(p: Prepared) -> TrialState:
        return p.outcome.state  # type: ignore[union-attr]

    def screened(p: Prepared) -> bool:
        copy = copies_count and "copy_of" in p.rec  # counts like a failure
        return state(p) is TrialState.SCREENED and not copy

    order = sorted(preps, key=lambda p: (state(p) is not TrialState.COMPLETE, screened(p),
                                         "copy_of" in p.rec, p.number))
    for rank, p in enumerate(order):
        p.outcome = p.outcome.with_attrs(  # type: ignore[union-attr]
            counts=rank < k and not screened(p))
