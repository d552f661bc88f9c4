"""The Optuna backend: embedded journal storage, seeded samplers, ask-evaluate-tell.

The search hands over a *search problem* (parameter ranges and an ``evaluate(params)`` that
returns a :class:`Outcome`); this module owns every optuna import and turns finished
``FrozenTrial`` objects into autoprune's :class:`~autoprune.results.TrialRecord`, so nothing
downstream knows Optuna exists.

Storage: a journal file in the run directory by default (safe for several local processes,
readable by optuna-dashboard), or any Optuna storage URL (e.g. ``postgresql://``). Never
``n_jobs > 1`` (threads reseed the sampler); parallel means processes on one storage.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import socket
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autoprune.errors import ConfigError
from autoprune.results import TrialRecord

__all__ = ["SAMPLERS", "OptunaBackend", "Outcome", "ParamSpec"]

log = logging.getLogger(__name__)

SAMPLERS = ("tpe", "nsga2", "gp", "random")
_RECORD_FIELDS = {f for f in TrialRecord.__dataclass_fields__} - {"trial", "state", "searched"}


@dataclass(frozen=True)
class ParamSpec:
    name: str
    low: float
    high: float
    step: float | None = None


@dataclass
class Outcome:
    """What one evaluation produced: objective values (or none) and the attributes to record."""

    state: str  # COMPLETE | FAIL | INFEASIBLE
    values: tuple[float, ...] | None = None
    violation: float = 0.0  # > 0: over budget (an Optuna constraint)
    attrs: dict[str, Any] = field(default_factory=dict)


def make_sampler(name: str, seed: int) -> optuna.samplers.BaseSampler:
    if name == "tpe":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=8, multivariate=True)
    if name == "nsga2":
        return optuna.samplers.NSGAIISampler(seed=seed)
    if name == "gp":
        # a Gaussian process (logEHVI); its torch maths wants one thread (OMP_NUM_THREADS=1)
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=8,
                                         warn_independent_sampling=False)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    raise ConfigError(f"--sampler {name!r} is unknown; use one of {', '.join(SAMPLERS)}")


def make_storage(url: str | None, journal: Path) -> optuna.storages.BaseStorage:
    if url is None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        journal.parent.mkdir(parents=True, exist_ok=True)
        # absolute: Optuna's symlink lock stats its link to break a stale lock (a process killed
        # while writing); a relative target resolves beside the link, the stat fails, and every
        # other process spins on the dead lock forever instead of breaking it after 30 s
        return JournalStorage(JournalFileBackend(str(journal.absolute())))
    try:
        if "://" in url and url.split("://")[0].split("+")[0] in ("postgresql", "mysql",
                                                                  "sqlite"):
            # many processes and machines: reconnect transparently after idle drops
            return optuna.storages.RDBStorage(url, engine_kwargs={"pool_pre_ping": True})
        return optuna.storages.get_storage(url)
    except Exception as exc:  # bad URL, missing driver, unreachable server
        raise ConfigError(f"--storage {url!r} cannot be opened ({type(exc).__name__}: "
                          f"{str(exc).splitlines()[0][:200]})") from exc


class OptunaBackend:
    """One study on one storage; several processes may share it."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_name: str, sampler: str,
                 seed: int, directions: Sequence[str]) -> None:
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures go to trials.csv
        self.storage = storage
        self.study = optuna.create_study(
            storage=storage, study_name=study_name, load_if_exists=True,
            sampler=make_sampler(sampler, seed), directions=list(directions))
        asked = len(self.study.get_trials(deepcopy=False))
        if asked:  # a resumed study: a fresh stream, or the sampler would repeat its first draws
            self.study.sampler = make_sampler(sampler, seed + asked)

    # -- queue -------------------------------------------------------------------------------
    def enqueue(self, params: Mapping[str, float], attrs: Mapping[str, Any]) -> None:
        self.study.enqueue_trial(dict(params), user_attrs=dict(attrs), skip_if_exists=False)

    def recover(self) -> list[tuple[dict[str, float], dict[str, Any]]]:
        """Fail trials a dead process left RUNNING; return (params, attrs) of all to retry."""
        retried = {t.user_attrs.get("retry_of") for t in self.study.get_trials(deepcopy=False)}
        retry = []
        for t in self.study.get_trials(deepcopy=False):
            if t.state == TrialState.RUNNING:
                self.storage.set_trial_user_attr(t._trial_id, "fail_reason",
                                                 "interrupted (process killed); retried")
                self.storage.set_trial_user_attr(t._trial_id, "retry", True)
                self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            elif not (t.state == TrialState.FAIL and t.user_attrs.get("retry")):
                continue
            if t.number in retried or not t.params:
                continue
            attrs = {"retry_of": t.number}
            if t.user_attrs.get("baseline"):
                attrs["baseline"] = t.user_attrs["baseline"]
            retry.append((dict(t.params), attrs))
        return retry

    def done(self) -> int:
        """Finished trials that count toward the requested number (retried ones and screened
        candidates of a staged generation do not)."""
        return sum(1 for t in self.study.get_trials(deepcopy=False)
                   if t.state in (TrialState.COMPLETE, TrialState.FAIL)
                   and not t.user_attrs.get("retry") and t.user_attrs.get("counts", True))

    # -- run ---------------------------------------------------------------------------------
    def running(self) -> int:
        """Slots held by running trials (a staged generation holds its slots on one trial)."""
        return sum(int(t.user_attrs.get("slots", 1)) for t in self.study.get_trials(deepcopy=False)
                   if t.state == TrialState.RUNNING)

    def waiting(self) -> int:
        """Enqueued trials not yet asked for."""
        return sum(1 for t in self.study.get_trials(deepcopy=False)
                   if t.state == TrialState.WAITING)

    def reap(self) -> int:
        """Fail and re-enqueue trials whose worker process on this host has died."""
        host = socket.gethostname()
        reaped = 0
        for t in self.study.get_trials(deepcopy=False):
            worker = str(t.user_attrs.get("worker", ""))
            if t.state != TrialState.RUNNING or not worker.startswith(f"{host}:"):
                continue
            pid = int(worker.rsplit(":", 1)[1])
            if pid == os.getpid() or _alive(pid):
                continue
            self.storage.set_trial_user_attr(t._trial_id, "fail_reason",
                                             f"worker {worker} died; retried")
            self.storage.set_trial_user_attr(t._trial_id, "retry", True)
            self.storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
            attrs = {"retry_of": t.number}
            if t.user_attrs.get("baseline"):
                attrs["baseline"] = t.user_attrs["baseline"]
            self.enqueue(dict(t.params), attrs)
            reaped += 1
        return reaped

    def optimize(self, specs: Sequence[ParamSpec], evaluate: Callable[[dict[str, float], int,
                 dict[str, Any]], Outcome], total: int,
                 on_trial: Callable[[], None] | None = None,
                 lock: AbstractContextManager[Any] | None = None) -> None:
        """Run trials until ``total`` have finished across every process sharing the study.

        ``lock`` (an inter-process lock) makes "count, then ask" atomic among local workers, so
        the total is exact; dead local workers' trials are failed and retried under it.
        """
        guard = lock if lock is not None else contextlib.nullcontext()
        while True:
            with guard:
                self.reap()
                if self.done() + self.running() >= total:
                    return
                trial, params = self.ask(specs)
                trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
            try:
                outcome = evaluate(params, trial.number, dict(trial.user_attrs))
            except KeyboardInterrupt:
                trial.set_user_attr("fail_reason", "interrupted (Ctrl-C); retried on resume")
                trial.set_user_attr("retry", True)
                self.study.tell(trial, state=TrialState.FAIL)
                raise
            self.tell(trial, outcome)
            if on_trial is not None:
                on_trial()

    # -- ask / tell (the user's own loop) -----------------------------------------------------
    def ask(self, specs: Sequence[ParamSpec]) -> tuple[optuna.Trial, dict[str, float]]:
        """A new trial (enqueued ones first) and its parameter values."""
        from optuna.distributions import FloatDistribution

        trial = self.study.ask({s.name: FloatDistribution(s.low, s.high, step=s.step)
                                for s in specs})
        return trial, dict(trial.params)

    def tell(self, trial: optuna.Trial, outcome: Outcome) -> None:
        for key, value in outcome.attrs.items():
            trial.set_user_attr(key, _plain(value))
        trial.set_user_attr("state", outcome.state)
        trial.set_constraint("budget", float(outcome.violation))
        if outcome.state == "SCREENED":  # not promoted: never on the front, no objective values
            self.study.tell(trial, state=TrialState.PRUNED)
        elif outcome.state == "FAIL" or outcome.values is None:
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            self.study.tell(trial, list(outcome.values))

    # -- records -----------------------------------------------------------------------------
    def records(self) -> list[TrialRecord]:
        return [to_record(t) for t in self.study.get_trials(deepcopy=False)]


def _alive(pid: int) -> bool:
    """Whether a local process runs (a zombie, killed but not yet waited for, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return True


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


def to_record(t: optuna.trial.FrozenTrial) -> TrialRecord:
    attrs = t.user_attrs
    state = {TrialState.RUNNING: "RUNNING", TrialState.WAITING: "RUNNING",
             TrialState.FAIL: "FAIL", TrialState.PRUNED: "SCREENED"}.get(
        t.state, attrs.get("state", "COMPLETE"))
    if t.state == TrialState.COMPLETE and attrs.get("state") in ("INFEASIBLE",):
        state = "INFEASIBLE"
    kwargs = {k: attrs[k] for k in _RECORD_FIELDS if k in attrs}
    if state == "FAIL" and "fail_reason" not in kwargs:
        kwargs["fail_reason"] = "failed"
    return TrialRecord(trial=t.number, state=state, searched=dict(t.params), **kwargs)
