"""The Optuna backend: embedded journal storage, seeded samplers, ask and tell.

It implements :class:`~autoprune.backends.base.SearchBackend` with stage jobs run in this
process; this module owns every optuna import and turns ``FrozenTrial`` objects into autoprune's
:class:`~autoprune.trial.TrialRecord`, so nothing downstream knows Optuna exists.

Storage: a journal file in the run directory by default (safe for several local processes,
readable by optuna-dashboard), or any Optuna storage URL (e.g. ``postgresql://``). Never
``n_jobs > 1`` (threads reseed the sampler); parallel means processes on one storage.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from autoprune.backends.base import Asked, Slots
from autoprune.errors import ConfigError
from autoprune.settings import SAMPLERS
from autoprune.trial import Outcome, ParamSpec, TrialRecord
from autoprune.trial import TrialState as State

__all__ = ["OptunaBackend", "make_sampler", "make_storage"]

log = logging.getLogger(__name__)

_RECORD_FIELDS = {f for f in TrialRecord.__dataclass_fields__} - {"trial", "state", "searched"}
_TO_STATE = {TrialState.RUNNING: State.RUNNING, TrialState.WAITING: State.RUNNING,
             TrialState.FAIL: State.FAIL, TrialState.PRUNED: State.SCREENED}


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
    """One study on one storage (maximise accuracy, minimise cost); several processes may
    share it. Stage jobs run in this process."""

    def __init__(self, storage: optuna.storages.BaseStorage, study_name: str, sampler: str,
                 seed: int) -> None:
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures go to trials.csv
        self.storage = storage
        self.study = optuna.create_study(
            storage=storage, study_name=study_name, load_if_exists=True,
            sampler=make_sampler(sampler, seed), directions=["maximize", "minimize"])
        asked = len(self.study.get_trials(deepcopy=False))
        if asked:  # a resumed study: a fresh stream, or the sampler would repeat its first draws
            self.study.sampler = make_sampler(sampler, seed + asked)

    # -- queue -------------------------------------------------------------------------------
    def enqueue(self, params: Mapping[str, float], attrs: Mapping[str, Any]) -> None:
        self.study.enqueue_trial(dict(params), user_attrs=dict(attrs), skip_if_exists=False)

    def name_objectives(self, names: Sequence[str]) -> None:
        """Name the two objectives (optuna-dashboard shows "0"/"1" otherwise)."""
        if list(self.study.metric_names or []) != list(names):
            with warnings.catch_warnings():  # experimental since Optuna 3.2, stable in use
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                self.study.set_metric_names(list(names))

    def share(self, attrs: Mapping[str, Any]) -> None:
        for key, value in attrs.items():
            self.study.set_user_attr(key, value)

    def recover(self) -> list[tuple[dict[str, float], dict[str, Any]]]:
        """Fail trials a dead process left RUNNING; return (params, attrs) of all to retry."""
        trials = self.study.get_trials(deepcopy=False)
        retried = {t.user_attrs.get("retry_of") for t in trials}
        retry = []
        for t in trials:
            if t.state == TrialState.RUNNING:
                self._fail_stored(t, "interrupted (process killed); retried")
            elif not (t.state == TrialState.FAIL and t.user_attrs.get("retry")):
                continue
            if t.number not in retried and t.params:
                retry.append((dict(t.params), _retry_attrs(t)))
        return retry

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
            self._fail_stored(t, f"worker {worker} died; retried")
            self.enqueue(dict(t.params), _retry_attrs(t))
            reaped += 1
        return reaped

    def slots(self) -> Slots:
        """Finished trials that count toward the requested number (retried ones and screened
        candidates of a staged generation do not), running slots and queued trials."""
        done = running = waiting = 0
        for t in self.study.get_trials(deepcopy=False):
            if t.state in (TrialState.COMPLETE, TrialState.FAIL):
                done += not t.user_attrs.get("retry") and t.user_attrs.get("counts", True)
            elif t.state == TrialState.RUNNING:
                running += int(t.user_attrs.get("slots", 1))
            elif t.state == TrialState.WAITING:
                waiting += 1
        return Slots(int(done), running, waiting)

    def _fail_stored(self, t: optuna.trial.FrozenTrial, reason: str) -> None:
        """Fail a RUNNING trial this process does not hold (a dead worker's), for a retry."""
        storage, trial_id = self.storage, _trial_id(t)
        storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        storage.set_trial_user_attr(trial_id, "retry", True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)

    # -- ask / tell ---------------------------------------------------------------------------
    def ask(self, specs: Sequence[ParamSpec]) -> Asked:
        """A new trial (enqueued ones first) with its parameter values and attributes."""
        from optuna.distributions import FloatDistribution

        trial = self.study.ask({s.name: FloatDistribution(s.low, s.high, step=s.step)
                                for s in specs})
        return Asked(trial.number, dict(trial.params), dict(trial.user_attrs), trial)

    def annotate(self, asked: Asked, attrs: Mapping[str, Any]) -> None:
        for key, value in attrs.items():
            asked.handle.set_user_attr(key, value)
        asked.attrs.update(attrs)

    def tell(self, asked: Asked, outcome: Outcome) -> None:
        trial = asked.handle
        for key, value in outcome.attrs.items():
            trial.set_user_attr(key, _plain(value))
        # the pruning ratios users care about, flat, for optuna-dashboard's trial table
        for group, ratio in ((outcome.attrs.get("plan") or {}).get("ratios") or {}).items():
            trial.set_user_attr(f"ratio:{group}", float(ratio))
        trial.set_user_attr("state", outcome.state.value)
        trial.set_constraint("budget", float(outcome.violation))
        if outcome.state is State.SCREENED:  # not promoted: never on the front, no values
            self.study.tell(trial, state=TrialState.PRUNED)
        elif outcome.state is State.FAIL or outcome.values is None:
            self.study.tell(trial, state=TrialState.FAIL)
        else:
            self.study.tell(trial, list(outcome.values))

    def interrupt(self, asked: Asked, reason: str) -> None:
        asked.handle.set_user_attr("fail_reason", reason)
        asked.handle.set_user_attr("retry", True)
        self.study.tell(asked.handle, state=TrialState.FAIL)

    # -- records and jobs ---------------------------------------------------------------------
    def records(self) -> list[TrialRecord]:
        return [to_record(t) for t in self.study.get_trials(deepcopy=False)]

    def map(self, job: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """Stage jobs run here, one after another (parallel = more processes on the study)."""
        return [job(item) for item in items]

    def close(self) -> None:
        """Nothing to release: the storage closes with the process."""


def _retry_attrs(t: optuna.trial.FrozenTrial) -> dict[str, Any]:
    attrs: dict[str, Any] = {"retry_of": t.number}
    if t.user_attrs.get("baseline"):
        attrs["baseline"] = t.user_attrs["baseline"]
    return attrs


def _trial_id(t: optuna.trial.FrozenTrial) -> int:
    """The storage id of a trial: the one private Optuna attribute autoprune reads (failing a
    dead worker's RUNNING trial needs the storage API, which takes ids, not numbers)."""
    if not hasattr(t, "_trial_id"):  # pragma: no cover - a future Optuna
        raise RuntimeError(f"optuna {optuna.__version__}: FrozenTrial has no _trial_id; "
                           "autoprune cannot fail a dead worker's trial with this version")
    return int(t._trial_id)


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
    state = _TO_STATE.get(t.state, State(attrs.get("state", "COMPLETE")))
    if t.state == TrialState.COMPLETE and attrs.get("state") == State.INFEASIBLE.value:
        state = State.INFEASIBLE
    kwargs = {k: attrs[k] for k in _RECORD_FIELDS if k in attrs}
    if state is State.FAIL and "fail_reason" not in kwargs:
        kwargs["fail_reason"] = "failed"
    return TrialRecord(trial=t.number, state=state, searched=dict(t.params), **kwargs)


def version() -> str:
    return str(optuna.__version__)


def shared_attrs(storage: str, study: str) -> dict[str, Any]:
    """The run-wide attributes a launching search stored on a shared study (for a worker on
    another machine)."""
    try:
        attrs = dict(optuna.load_study(study_name=study, storage=storage).user_attrs)
    except KeyError as exc:
        raise ConfigError(f"--study {study!r} does not exist on --storage {storage!r}; the "
                          "launching `autoprune search` prints and records its study name "
                          "(config.yaml: study_name)") from exc
    if "autoprune_config" not in attrs:
        raise ConfigError(f"study {study!r} was not started by autoprune search --storage")
    return attrs
