"""Dead workers on other machines: Optuna's heartbeat on RDB storage (PostgreSQL, MySQL,
SQLite), for autoprune's ask-and-tell trials.

``study.optimize`` beats for its trial itself; autoprune asks and tells, so each process runs one
daemon thread (:class:`Beat`) that records the heartbeat of every trial it holds (a generation
holds several) every ``interval`` seconds and, on the same tick, fails the study's stale trials:
RUNNING trials whose heartbeat is older than ``grace`` seconds (their machine died or lost the
network). :class:`RetryStale` then enqueues each again with its parameters (``retry_of`` and
Optuna's ``retry_history``), at most ``MAX_RETRY`` times; a failed-by-heartbeat trial never
counts toward ``--trials`` (it has no ``state`` attribute: autoprune never told it).

Defaults: a beat every 10 s, stale after 30 s; ``AUTOPRUNE_HEARTBEAT_INTERVAL`` and
``AUTOPRUNE_HEARTBEAT_GRACE`` (whole seconds) override them.
"""

from __future__ import annotations

import logging
import os
import threading
import warnings
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import FrozenTrial, TrialState

from autoprune.errors import ConfigError

__all__ = ["MAX_RETRY", "Beat", "RetryStale", "heartbeat_settings", "retry_attrs"]

log = logging.getLogger(__name__)

DEFAULT_INTERVAL, DEFAULT_GRACE, MAX_RETRY = 10, 30, 3
# heartbeats are "experimental" since Optuna 2.9 and stable in use: say so once, not per call
warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning,
                        message=r".*(heartbeat|fail_stale_trials|RetryHeartbeatStale).*")
# autoprune beats itself (Beat) for the trials it asks: Optuna's advice does not apply
warnings.filterwarnings("ignore", category=UserWarning,
                        message=r"Heartbeat of storage is supposed to be used with Study.optimize")


def heartbeat_settings() -> tuple[int, int]:
    """(interval, grace) in seconds, from the defaults or the environment."""
    values = []
    for name, default in (("AUTOPRUNE_HEARTBEAT_INTERVAL", DEFAULT_INTERVAL),
                          ("AUTOPRUNE_HEARTBEAT_GRACE", DEFAULT_GRACE)):
        raw = os.environ.get(name, str(default))
        try:
            values.append(int(raw))
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a whole number of seconds; unset it or "
                              f"give one (default {default})") from None
    interval, grace = values
    if not 0 < interval < grace:
        raise ConfigError(f"AUTOPRUNE_HEARTBEAT_INTERVAL={interval} and "
                          f"AUTOPRUNE_HEARTBEAT_GRACE={grace}: need 0 < interval < grace")
    return interval, grace


def retry_attrs(t: FrozenTrial) -> dict[str, Any]:
    """The attributes a retried trial starts with."""
    attrs: dict[str, Any] = {"retry_of": t.number}
    for key in ("baseline", "allocation"):  # what its plan is made from, beside its params
        if t.user_attrs.get(key):
            attrs[key] = t.user_attrs[key]
    return attrs


class RetryStale(RetryHeartbeatStaleTrialCallback):
    """Optuna's retry of a heartbeat-stale trial, with autoprune's attributes (``retry_of``)
    instead of a copy of the dead trial's (its worker, its generation's slots)."""

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        history = [*trial.system_attrs.get("retry_history", []), trial.number]
        worker = trial.user_attrs.get("worker", "?")
        if self._max_retry is not None and len(history) > self._max_retry:
            log.warning("trial %d: its worker %s stopped sending heartbeats; failed (retried "
                        "%d times already, no more)", trial.number, worker, len(history) - 1)
            return
        # the values it was enqueued with (a baseline's plan, a generation's level) and
        # those it had drawn: killed while sampling, a trial holds some of them only as fixed
        plan = {**trial.system_attrs.get("fixed_params", {}), **trial.params}
        if not plan:
            log.warning("trial %d: its worker %s stopped sending heartbeats before it had "
                        "values; failed (nothing to redo)", trial.number, worker)
            return
        study.add_trial(optuna.trial.create_trial(
            state=TrialState.WAITING, params=trial.params, distributions=trial.distributions,
            user_attrs=retry_attrs(trial), system_attrs={
                "fixed_params": plan, "failed_trial": history[0], "retry_history": history}))
        log.warning("trial %d: its worker %s stopped sending heartbeats; failed and enqueued "
                    "again", trial.number, worker)


class Beat:
    """The heartbeat of the trials this process holds, and the stale-trial check."""

    def __init__(self, study: optuna.Study, interval: int) -> None:
        self.study, self.interval = study, interval
        self._held: set[int] = set()
        self._guard = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def hold(self, trial_id: int) -> None:
        """Beat for ``trial_id`` from now on (the first beat at once)."""
        self.study._storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
        with self._guard:
            self._held.add(trial_id)
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="autoprune-heartbeat",
                                            daemon=True)
            self._thread.start()

    def release(self, trial_id: int) -> None:
        with self._guard:
            self._held.discard(trial_id)

    def fail_stale(self) -> None:
        """Fail the study's stale trials (another machine's) and enqueue their retries."""
        try:
            optuna.storages.fail_stale_trials(self.study)
        except Exception as exc:  # a database hiccup: the next tick tries again
            log.debug("stale-trial check failed: %s", exc)

    def _run(self) -> None:
        storage = self.study._storage
        while not self._stop.wait(self.interval):
            with self._guard:
                held = sorted(self._held)
            for trial_id in held:
                try:
                    storage.record_heartbeat(trial_id)  # type: ignore[attr-defined]
                except Exception as exc:  # the server is away: the next tick tries again
                    log.debug("heartbeat of trial id %d failed: %s", trial_id, exc)
            self.fail_stale()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 5)
            self._thread = None
