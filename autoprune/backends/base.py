"""What a search backend is: the study a search asks and tells, and where stage jobs run.

The generation loop (:mod:`autoprune.generations`) and :class:`~autoprune.session.Session` speak
only this protocol, so a backend is one class: the Optuna backend runs stage jobs in this process,
the Ray backend on a Ray cluster, over the same study. Records come back as autoprune's
:class:`~autoprune.trial.TrialRecord`, never as ``FrozenTrial`` or a Ray ``Result``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, runtime_checkable

from autoprune.trial import Outcome, ParamSpec, TrialRecord

__all__ = ["Asked", "SearchBackend", "Slots"]

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class Asked:
    """A trial handed out by :meth:`SearchBackend.ask`: its number, parameter values and user
    attributes; ``handle`` is the backend's own object (only the backend looks at it)."""

    number: int
    params: dict[str, float]
    attrs: dict[str, Any] = field(default_factory=dict)
    handle: Any = None


@dataclass(frozen=True)
class Slots:
    """How the requested trial count stands across every process on the study."""

    done: int  # finished trials that count toward ``--trials``
    running: int  # slots held by running trials (a generation holds its slots on one trial)
    waiting: int  # enqueued, not yet asked
    baselines: int = 0  # of the waiting, the baselines (each fully fine-tuned in its generation)


@runtime_checkable
class SearchBackend(Protocol):
    """One study on one storage, shared by every process of a run. ``runs_jobs_here``: whether
    :meth:`map` runs its jobs in this process, one after another."""

    runs_jobs_here: bool

    def enqueue(self, params: Mapping[str, float], attrs: Mapping[str, Any]) -> None:
        """Queue a trial with fixed parameter values (asked before any sampled one)."""

    def ask(self, specs: Sequence[ParamSpec]) -> Asked:
        """A new trial (queued ones first): its number, parameter values and attributes."""

    def annotate(self, asked: Asked, attrs: Mapping[str, Any]) -> None:
        """Record more attributes on an asked trial (worker, generation, slots)."""

    def tell(self, asked: Asked, outcome: Outcome) -> None:
        """Record a trial's outcome: objective values, state, attributes, budget constraint."""

    def interrupt(self, asked: Asked, reason: str) -> None:
        """Fail a trial that was cut short; resume retries it."""

    def drop_queued(self, reason: str) -> int:
        """Fail the trials still queued once the run is complete; how many."""

    def records(self) -> list[TrialRecord]:
        """Every trial of the study, oldest first."""

    def slots(self) -> Slots:
        """Counts for the trial budget (exact under the run's ask lock)."""

    def recover(self) -> list[tuple[dict[str, float], dict[str, Any]]]:
        """On resume: fail trials a dead process left running; (params, attrs) to retry."""

    def reap(self) -> int:
        """Fail and re-enqueue trials whose worker process on this host died."""

    def name_objectives(self, names: Sequence[str]) -> None:
        """Name the study's two objectives (accuracy, and the cost axis of the front)."""

    def share(self, attrs: Mapping[str, Any]) -> None:
        """Store run-wide attributes (config, baseline) for workers on other machines."""

    def set_attrs(self, trial: int | str, attrs: Mapping[str, Any]) -> None:
        """Record figures measured after trial ``trial`` (or ``"dense"``) finished: test
        accuracy, final latency (for optuna-dashboard and ``optuna.load_study``)."""

    def map(self, job: Callable[[T], R], items: Sequence[T]) -> list[R | BaseException]:
        """``[job(x) for x in items]``, wherever the backend runs stage jobs; where a job ran
        elsewhere and its process failed, its exception stands in its place."""

    def close(self) -> None:
        """Release what the backend started (a local Ray instance)."""
