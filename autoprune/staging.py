"""Cheap first, expensive last: proxy screening and staged fine-tuning, one generation at a time.

A generation asks the sampler (and the priors) for ``screen x k`` candidates at one cost level,
scores each by the adaptive-BN proxy (seconds), gives a short fine-tune to the proxy's best
``promote x k``, and the full fine-tune to the best ``k`` of those (successive halving; Optuna's
pruners raise in multi-objective studies, so the halving lives here). Every candidate becomes a
trial that records its fidelity: 0 (proxy only), the short fraction, or 1. Screened-out ones are
told as PRUNED (state ``SCREENED``); only full-fidelity trials enter the front.

Counting is exact across worker processes: a generation reserves its ``k`` slots under the ask
lock (``slots`` on its first trial), and tells all its trials under the lock with exactly ``k``
of them counting toward ``--trials`` (the fully fine-tuned ones, then failures).

:func:`top_per_level` and :func:`allot` are pure and tested against brute force.
"""

from __future__ import annotations

import contextlib
import math
import os
import socket
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any

import numpy as np

from autoprune.errors import ConfigError

__all__ = ["Schedule", "allot", "optimize", "perturb", "top_per_level"]


@dataclass(frozen=True)
class Schedule:
    """How many candidates each stage of a generation sees, per full fine-tune.

    ``screen``: proxied candidates per fully fine-tuned one (at most ``promote``: no proxy cut).
    ``short_fidelity``: the short stage's share of the full fine-tune (0: no short stage).
    ``promote``: short fine-tunes per full one (successive halving's eta).
    ``generation``: full fine-tunes per generation (the sampler learns between generations).
    """

    screen: float = 4.0
    short_fidelity: float = 0.35
    promote: float = 2.0
    generation: int = 2

    def __post_init__(self) -> None:
        if self.screen < 0 or not math.isfinite(self.screen):
            raise ConfigError(f"--screen {self.screen} must be >= 0 (0 or 1: no proxy screening)")
        if not 0.0 <= self.short_fidelity < 1.0:
            raise ConfigError(f"--short-fidelity {self.short_fidelity} must be in [0, 1) "
                              "(0: no short fine-tune stage)")
        if self.promote < 1:
            raise ConfigError(f"--promote {self.promote} must be >= 1")
        if self.generation < 1:
            raise ConfigError(f"--generation {self.generation} must be >= 1")

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
    """Indices of the ``k`` candidates kept: per cost level, the best scores (higher is better;
    None ranks last; ties go to the earlier candidate), slots allotted by level size. ``forced``
    candidates (the baselines) are kept first and use their level's slots."""
    forced = list(forced) or [False] * len(levels)
    keys = sorted({round(v, 9) for v in levels})
    members = {key: [i for i, v in enumerate(levels) if round(v, 9) == key] for key in keys}
    slots = allot([len(members[key]) for key in keys], k)
    kept: list[int] = []
    for key, n in zip(keys, slots):
        ranked = sorted(members[key], key=lambda i: (not forced[i], scores[i] is None,
                                                     -(scores[i] or 0.0), i))
        kept += ranked[:max(n, sum(forced[i] for i in members[key]))]
    return sorted(kept)


def perturb(values: dict[str, float], specs: Sequence[Any], rng: np.random.Generator,
            sigma: float = 0.15) -> dict[str, float]:
    """A neighbour of ``values``: Gaussian steps of ``sigma`` x each range, clipped, on grid."""
    out = {}
    for s in specs:
        v = float(values.get(s.name, (s.low + s.high) / 2))
        v = min(max(v + rng.normal(0.0, sigma * (s.high - s.low)), s.low), s.high)
        if s.step:
            v = s.low + round((v - s.low) / s.step) * s.step
            v = min(max(round(v, 10), s.low), s.high)
        out[s.name] = v
    return out


@dataclass
class _Candidate:
    trial: Any
    params: dict[str, float]
    attrs: dict[str, Any]
    prepared: Any = None  # the search's prepared candidate, or None once finished
    outcome: Any = None  # the final Outcome


def optimize(backend: Any, search: Any, total: int, on_trial: Callable[[], None] | None = None,
             lock: AbstractContextManager[Any] | None = None) -> None:
    """Run generations until ``total`` trials count across every process on the study."""
    schedule: Schedule = search.schedule
    guard = lock if lock is not None else contextlib.nullcontext()
    specs = search.specs()
    while True:
        with guard:
            backend.reap()
            left = total - backend.done() - backend.running()
            if left <= 0:
                return
            k = min(schedule.generation, left)
            cands = _ask(backend, search, specs, schedule.counts(k)[0], k)
        try:
            _run(search, cands, schedule, k)
        except KeyboardInterrupt:
            for c in cands:
                if c.outcome is None:
                    c.trial.set_user_attr("fail_reason", "interrupted (Ctrl-C); retried on resume")
                    c.trial.set_user_attr("retry", True)
                    backend.study.tell(c.trial, state=_failed())
            raise
        with guard:
            for c in cands:
                backend.tell(c.trial, c.outcome)
        if on_trial is not None:
            on_trial()


def _failed() -> Any:
    from optuna.trial import TrialState

    return TrialState.FAIL


def _ask(backend: Any, search: Any, specs: Sequence[Any], n: int, k: int) -> list[_Candidate]:
    """Enqueue this generation's priors and fixed level, then ask ``n`` trials."""
    from autoprune.candidates import LEVEL

    records = backend.records()
    level = search.generation_level(len(records) // max(n, 1))
    waiting = backend.waiting()  # baselines and retried trials go first
    priors = search.prior_params(records, level, min(n // 2, max(0, n - waiting)))
    for params in priors:
        backend.enqueue(params, {"prior": True})
    for _ in range(max(0, n - waiting - len(priors))):
        backend.enqueue({LEVEL: level}, {})  # the sampler fills in the allocation
    worker = f"{socket.gethostname()}:{os.getpid()}"
    cands: list[_Candidate] = []
    for index in range(n):
        trial, params = backend.ask(specs)
        trial.set_user_attr("worker", worker)
        trial.set_user_attr("slots", k if index == 0 else 0)
        trial.set_user_attr("generation", cands[0].trial.number if cands else trial.number)
        cands.append(_Candidate(trial, params, dict(trial.user_attrs)))
    return cands


def _run(search: Any, cands: list[_Candidate], schedule: Schedule, k: int) -> None:
    """Proxy every candidate, short-tune the proxy's best, fully tune the best of those."""
    from autoprune.candidates import Prepared

    _, n_short, _ = schedule.counts(k)
    alive = []
    for c in cands:
        c.prepared = search.prepare(c.params, c.trial.number, c.attrs)
        if not isinstance(c.prepared, Prepared):  # already an Outcome: over a budget
            c.outcome, c.prepared = c.prepared, None
            continue
        failed = search.proxy_stage(c.prepared)
        if failed is not None:
            c.outcome, c.prepared = failed, None
            continue
        alive.append(c)
    if schedule.short_fidelity > 0:
        alive = _halve(search, alive, n_short, "proxy_acc", None)
        alive = _halve(search, alive, k, "short_acc", schedule.short_fidelity)
    else:
        alive = _halve(search, alive, k, "proxy_acc", None)
    for c in alive:
        c.outcome = search.full_stage(c.prepared)
        c.prepared = None
    _count(cands, k)


def _halve(search: Any, alive: list[_Candidate], keep: int, key: str,
           fidelity: float | None) -> list[_Candidate]:
    """Keep the best ``keep`` by ``key`` per level; the rest end SCREENED. With ``fidelity``,
    every candidate first gets that share of the fine-tune, which fills ``key``."""
    if fidelity is not None:
        for c in alive:
            failed = search.short_stage(c.prepared, fidelity)
            if failed is not None:
                c.outcome, c.prepared = failed, None
        alive = [c for c in alive if c.prepared is not None]
    levels = [c.prepared.level for c in alive]
    scores = [c.prepared.rec.get(key) for c in alive]
    forced = [bool(c.attrs.get("baseline")) for c in alive]
    kept = set(top_per_level(levels, scores, keep, forced))
    for i, c in enumerate(alive):
        if i not in kept:
            c.outcome, c.prepared = search.screened(c.prepared), None
    return [c for i, c in enumerate(alive) if i in kept]


def _count(cands: list[_Candidate], k: int) -> None:
    """Exactly ``k`` trials of the generation count toward the total: the fully fine-tuned
    ones first, then failed or infeasible ones (so a generation where everything fails ends)."""
    order = sorted(cands, key=lambda c: (c.outcome.state != "COMPLETE",
                                         c.outcome.state == "SCREENED", c.trial.number))
    for rank, c in enumerate(order):
        c.outcome.attrs["counts"] = rank < k and c.outcome.state != "SCREENED"
