"""The Optuna backend: embedded journal storage, seeded samplers, ask and tell.

It implements :class:`~autoprune.backends.base.SearchBackend` with stage jobs run in this
process; this module owns every optuna import and turns ``FrozenTrial`` objects into autoprune's
:class:`~autoprune.trial.TrialRecord`, so nothing downstream knows Optuna exists.

Storage: a journal file in the run directory by default (safe for several local processes,
readable by optuna-dashboard; healed before it is opened, see :mod:`autoprune.backends.journal`),
or any Optuna storage URL (e.g. ``postgresql://``; with a heartbeat, see
:mod:`autoprune.backends.heartbeat`; its password is never written nor printed, see
:mod:`autoprune.storage_url`). Never ``n_jobs > 1`` (threads reseed the sampler); parallel
means processes on one storage.
"""

from __future__ import annotations

import datetime
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
from autoprune.backends.heartbeat import MAX_RETRY, Beat, RetryStale, heartbeat_settings
from autoprune.backends.heartbeat import retry_attrs as _retry_attrs
from autoprune.backends.journal import heal
from autoprune.errors import ConfigError
from autoprune.settings import SAMPLERS
from autoprune.storage_url import mask_url, remember, resolve_password, scrub
from autoprune.trial import Outcome, ParamSpec, TrialRecord
from autoprune.trial import TrialState as State

__all__ = ["OptunaBackend", "make_sampler", "make_storage"]

log = logging.getLogger(__name__)

_RECORD_FIELDS = {f for f in TrialRecord.__dataclass_fields__} - {"trial", "state", "searched"}
_RDB = ("postgresql", "mysql", "sqlite")
_HEARTBEAT_FAIL = "its worker stopped sending heartbeats (machine or process died)"
UNCLAIMED_GRACE_S = 30  # journal storage: see OptunaBackend._unclaimed
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
    """The study's storage: ``journal`` (healed first) when ``url`` is None, else ``url`` (a
    masked password is filled in by :func:`~autoprune.storage_url.resolve_password`)."""
    if url is None:
        from optuna.storages.journal import JournalFileBackend, JournalStorage

        try:
            journal.parent.mkdir(parents=True, exist_ok=True)
            heal(journal)
        except OSError as exc:
            raise ConfigError(f"journal {str(journal)!r} cannot be checked ({exc.strerror or exc})"
                              "; make its folder writable") from exc
        # absolute: Optuna's symlink lock stats its link to break a stale lock (a process killed
        # while writing); a relative target resolves beside the link, the stat fails, and every
        # other process spins on the dead lock forever instead of breaking it after 30 s
        return JournalStorage(JournalFileBackend(str(journal.absolute())))
    return _open_url(url)


def _open_url(url: str) -> optuna.storages.BaseStorage:
    full = resolve_password(url)
    remember(full)
    try:
        if "://" in full and full.split("://")[0].split("+")[0] in _RDB:
            interval, grace = heartbeat_settings()
            # many processes and machines: reconnect transparently after idle drops; a worker
            # that dies leaves its trials RUNNING: the others fail and retry them after grace
            return optuna.storages.RDBStorage(
                full, engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=interval,
                grace_period=grace, heartbeat_stale_trial_callback=RetryStale(MAX_RETRY))
        return optuna.storages.get_storage(full)
    except ConfigError:
        raise
    except Exception as exc:  # bad URL, missing driver, unreachable server, wrong password
        lines = str(exc).strip().splitlines() or [""]
        raise ConfigError(f"--storage {mask_url(url)!r} cannot be opened ({type(exc).__name__}: "
                          f"{scrub(lines[0], full)[:200]})") from None


class OptunaBackend:
    """One study on one storage (maximise accuracy, minimise cost); several processes may
    share it. Stage jobs run in this process."""

    runs_jobs_here = True

    def __init__(self, storage: optuna.storages.BaseStorage, study_name: str, sampler: str,
                 seed: int) -> None:
        optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures go to trials.csv
        self.storage = storage
        self.study = optuna.create_study(
            storage=storage, study_name=study_name, load_if_exists=True,
            sampler=make_sampler(sampler, seed), directions=["maximize", "minimize"])
        interval = getattr(storage, "heartbeat_interval", None)
        self._beat = Beat(self.study, interval) if interval else None
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

    def set_attrs(self, trial: int | str, attrs: Mapping[str, Any]) -> None:
        """Record figures measured after ``trial`` finished (``test_acc``,
        ``latency_final_ms``; ``trial`` may be ``"dense"``). Optuna refuses attributes on a
        finished trial (``UpdateFinishedTrialError``; a journal replay drops them too), so each
        goes on the study: user attribute ``<name>`` maps trial numbers, as text, to values,
        e.g. ``study.user_attrs["test_acc"]["7"]``."""
        current = self.study.user_attrs
        for key, value in attrs.items():
            table = dict(current.get(key) or {}) if isinstance(current.get(key), dict) else {}
            if table.get(str(trial)) != _plain(value):
                table[str(trial)] = _plain(value)
                self.study.set_user_attr(key, table)

    def recover(self) -> list[tuple[dict[str, float], dict[str, Any]]]:
        """Fail trials a dead process left RUNNING; return (params, attrs) of all to retry."""
        trials = self.study.get_trials(deepcopy=False)
        retried = _retried(trials)
        retry = []
        for t in trials:
            if t.state == TrialState.RUNNING:
                self._fail_stored(t, "interrupted (process killed); retried")
            elif not (t.state == TrialState.FAIL and _to_retry(t)):
                continue
            params = _plan_params(t)
            if t.number not in retried and params:
                retry.append((params, _retry_attrs(t)))
        return retry

    def reap(self) -> int:
        """Fail and re-enqueue trials whose worker process on this host has died, and (RDB
        storage) trials whose heartbeat stopped (a worker on another machine)."""
        if self._beat is not None:
            self._beat.fail_stale()
        host = socket.gethostname()
        reaped = 0
        for t in self.study.get_trials(deepcopy=False):
            worker = str(t.user_attrs.get("worker", ""))
            if t.state != TrialState.RUNNING:
                continue
            if not worker:
                if not self._unclaimed(t):
                    continue
                reason = "its process died while asking for it; retried"
            elif worker.startswith(f"{host}:"):
                pid = int(worker.rsplit(":", 1)[1])
                if pid == os.getpid() or _alive(pid):
                    continue
                reason = f"worker {worker} died; retried"
            else:  # another machine's: the heartbeat's (RDB storage)
                continue
            self._fail_stored(t, reason)
            params = _plan_params(t)
            if params:  # a trial killed before any value was fixed: nothing to redo
                self.enqueue(params, _retry_attrs(t))
            reaped += 1
        return reaped

    def _unclaimed(self, t: optuna.trial.FrozenTrial) -> bool:
        """A RUNNING trial no process annotated within twice the grace period: its process
        died between Optuna creating it (or popping it from the queue) and :meth:`ask`
        writing its ``worker``. On RDB storage the grace is the heartbeat's; on a journal
        :data:`UNCLAIMED_GRACE_S` (a live process claims within milliseconds, or within
        Optuna's 30 s when it must break a dead process's journal lock first)."""
        grace = getattr(self.storage, "grace_period", None) or UNCLAIMED_GRACE_S
        start = t.datetime_start
        return start is not None and (datetime.datetime.now() - start).total_seconds() > 2 * grace

    def slots(self) -> Slots:
        """Finished trials that count toward the requested number (retried ones and screened
        candidates of a staged generation do not, unless the generation counted a screened
        copy of a trained model to fill its slots), running slots and queued trials."""
        done = running = waiting = baselines = 0
        trials = self.study.get_trials(deepcopy=False)
        retried = _retried(trials)
        for t in trials:
            if t.state in (TrialState.COMPLETE, TrialState.FAIL):
                done += not _to_retry(t) and t.number not in retried and \
                    t.user_attrs.get("counts", True)
            elif t.state == TrialState.PRUNED:  # screened: only a copy of a trained model
                done += t.user_attrs.get("counts") is True  # counts, once nothing else can
            elif t.state == TrialState.RUNNING:
                running += int(t.user_attrs.get("slots", 1))
            elif t.state == TrialState.WAITING:
                waiting += 1
                baselines += "baseline" in t.user_attrs
        return Slots(int(done), running, waiting, baselines)

    def _fail_stored(self, t: optuna.trial.FrozenTrial, reason: str) -> None:
        """Fail a RUNNING trial this process does not hold (a dead worker's), for a retry."""
        storage, trial_id = self.storage, _trial_id(t)
        storage.set_trial_user_attr(trial_id, "fail_reason", reason)
        storage.set_trial_user_attr(trial_id, "retry", True)
        storage.set_trial_state_values(trial_id, TrialState.FAIL)

    # -- ask / tell ---------------------------------------------------------------------------
    def ask(self, specs: Sequence[ParamSpec]) -> Asked:
        """A new trial (enqueued ones first) with its parameter values and attributes."""
        trial = self.study.ask()
        # beating, then claimed, before sampling (the slow part): a process killed while the
        # sampler runs leaves a trial reap() can tell is dead (by its pid on this host, by its
        # stale heartbeat on another), not one RUNNING forever; killed before the claim, it
        # is an unclaimed one (see _unclaimed)
        if self._beat is not None:
            self._beat.hold(trial._trial_id)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        for s in specs:  # an enqueued trial's fixed values come back as they were enqueued
            trial.suggest_float(s.name, s.low, s.high, step=s.step)
        return Asked(trial.number, dict(trial.params), dict(trial.user_attrs), trial)

    def annotate(self, asked: Asked, attrs: Mapping[str, Any]) -> None:
        for key, value in attrs.items():
            asked.handle.set_user_attr(key, value)
        asked.attrs.update(attrs)

    def tell(self, asked: Asked, outcome: Outcome) -> None:
        try:
            self._tell(asked, outcome)
        except optuna.exceptions.UpdateFinishedTrialError:  # failed as stale meanwhile
            log.warning("trial %d was failed by another process (no heartbeat for the grace "
                        "period) and is retried; this result is dropped", asked.number)
        finally:
            if self._beat is not None:
                self._beat.release(asked.handle._trial_id)

    def _tell(self, asked: Asked, outcome: Outcome) -> None:
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
        try:
            asked.handle.set_user_attr("fail_reason", reason)
            asked.handle.set_user_attr("retry", True)
            self.study.tell(asked.handle, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # failed (and retried) as stale by another process already
        finally:
            if self._beat is not None:
                self._beat.release(asked.handle._trial_id)

    def drop_queued(self, reason: str) -> int:
        """Fail the trials still queued (WAITING) once the run is complete, e.g. the retry of a
        dead worker's trial that the others no longer needed (a finished study then shows no
        trial as running). A queued trial another process takes meanwhile stays its."""
        dropped = 0
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = _trial_id(t)
            try:
                for key, value in (("fail_reason", reason), ("retry", True)):
                    self.storage.set_trial_user_attr(trial_id, key, value)
                if self.storage.set_trial_state_values(trial_id, TrialState.FAIL):
                    dropped += 1
            except (RuntimeError, optuna.exceptions.UpdateFinishedTrialError):
                continue  # taken and finished by another process first
        return dropped

    # -- records and jobs ---------------------------------------------------------------------
    def records(self) -> list[TrialRecord]:
        return [to_record(t) for t in self.study.get_trials(deepcopy=False)]

    def map(self, job: Callable[[Any], Any], items: Sequence[Any]) -> list[Any]:
        """Stage jobs run here, one after another (parallel = more processes on the study)."""
        return [job(item) for item in items]

    def close(self) -> None:
        """Stop the heartbeat (the storage closes with the process)."""
        if self._beat is not None:
            self._beat.stop()


def _retried(trials: Sequence[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of the trials that were enqueued again (by autoprune or by the heartbeat)."""
    return {int(t.user_attrs["retry_of"]) for t in trials if "retry_of" in t.user_attrs}


def _to_retry(t: optuna.trial.FrozenTrial) -> bool:
    """A failed trial to run again: interrupted, reaped, or failed by the heartbeat (a FAIL
    that autoprune never told carries no ``state`` attribute)."""
    return t.state == TrialState.FAIL and (bool(t.user_attrs.get("retry"))
                                           or "state" not in t.user_attrs)


def _plan_params(t: optuna.trial.FrozenTrial) -> dict[str, float]:
    """The values a trial was enqueued with (Optuna keeps them in ``fixed_params`` until
    they are suggested) and those it has suggested: what a retry must evaluate again."""
    return {**t.system_attrs.get("fixed_params", {}), **t.params}


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
        kwargs["fail_reason"] = "failed" if "state" in attrs else _HEARTBEAT_FAIL
    return TrialRecord(trial=t.number, state=state, searched=dict(t.params), **kwargs)


def version() -> str:
    return str(optuna.__version__)


def shared_attrs(storage: str, study: str) -> dict[str, Any]:
    """The run-wide attributes a launching search stored on a shared study (for a worker on
    another machine)."""
    remember(storage)  # a masked URL in the study's config gets its password from here
    try:
        attrs = dict(optuna.load_study(study_name=study, storage=_open_url(storage)).user_attrs)
    except KeyError as exc:
        raise ConfigError(f"--study {study!r} does not exist on --storage "
                          f"{mask_url(storage)!r}; the "
                          "launching `autoprune search` prints and records its study name "
                          "(config.yaml: study_name)") from exc
    if "autoprune_config" not in attrs:
        raise ConfigError(f"study {study!r} was not started by autoprune search --storage")
    return attrs
