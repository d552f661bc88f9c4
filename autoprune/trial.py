"""What one trial is, whoever ran it: its state, its outcome, its record, its searched parameters.

Neutral ground: no torch, no optuna, no ray. The stages produce an :class:`Outcome`, a backend
stores it and hands back :class:`TrialRecord` values, and the results, the report and export
read only those, so nothing downstream knows which backend ran the search.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any

__all__ = ["DRIFT_FLAG", "HARD_LINE", "LEGACY_DRIFT_FLAG", "LEVEL", "Outcome", "ParamSpec",
           "TrialRecord", "TrialState"]

#: the latency flag of a model the end-of-run re-timing found over the budget by no more than
#: the re-timed models' common drift (``Ledger.remeasure``): kept, flagged
DRIFT_FLAG = "over the budget within the re-timed models' drift"
#: the same flag as runs before 2026-12-07 wrote it (the drift was then the least any moved)
LEGACY_DRIFT_FLAG = "over the budget as every model re-timed"
#: in the fail_reason of a model dropped over a latency budget by no more than that drift,
#: which the run was told not to forgive
HARD_LINE = "--no-latency-drift"

LEVEL = "cost_level"  # the searched cost level, a fraction of the dense model


class TrialState(str, Enum):
    """Where a trial ended (``RUNNING`` while it has not). A ``str``: CSV cells and JSON keep
    the plain name, and ``state == "COMPLETE"`` still holds for readers of old files."""

    COMPLETE = "COMPLETE"  # scored; on the front only at full fidelity
    SCREENED = "SCREENED"  # proxied (and maybe short-tuned), not promoted to the full fine-tune
    INFEASIBLE = "INFEASIBLE"  # over a budget; never fine-tuned
    FAIL = "FAIL"
    RUNNING = "RUNNING"

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: a float range, on a grid when ``step`` is given."""

    name: str  # a space parameter, or LEVEL
    low: float
    high: float
    step: float | None = None  # None: continuous


@dataclass(frozen=True)
class Outcome:
    """What the stages made of one candidate: its final state, the objective values (accuracy,
    cost) when it was scored, how far it is over a budget, and the attributes to record."""

    state: TrialState
    values: tuple[float, float] | None = None
    violation: float = 0.0  # > 0: over budget (an Optuna constraint)
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "state", TrialState(self.state))

    def with_attrs(self, **attrs: Any) -> Outcome:
        return replace(self, attrs={**self.attrs, **attrs})


@dataclass(frozen=True)
class TrialRecord:
    """One trial as autoprune records it, whatever backend ran it."""

    trial: int  # the study's trial number
    state: TrialState
    flops_ratio: float | None = None  # analytic, of the dense model
    params_ratio: float | None = None
    macs: float | None = None
    params: float | None = None
    latency_ms: float | None = None
    latency_cv: float | None = None  # robust CV of latency_ms (IQR / 1.349 / median)
    latency_flag: str | None = None  # "noisy", "slower than dense" (both: "; "-joined)
    refits: float | None = None  # times fitted lower after timing over the latency budget
    proxy_acc: float | None = None
    short_acc: float | None = None  # validation accuracy after the short fine-tune stage
    val_acc: float | None = None
    test_acc: float | None = None
    fidelity: float | None = None  # fraction of the full fine-tune this trial received
    seconds: float | None = None
    fail_reason: str | None = None
    baseline: str | None = None  # "uniform-l2" / "global-l2" for the enqueued baselines
    generation: float | None = None  # first trial number of its staged generation
    searched: dict[str, float] = field(default_factory=dict)  # the sampler's parameters
    plan: dict[str, Any] | None = None  # PruningPlan.to_dict()
    stages: dict[str, float] = field(default_factory=dict)  # seconds per pipeline stage

    def __post_init__(self) -> None:
        if isinstance(self.trial, bool) or not float(self.trial).is_integer():
            raise ValueError(f"trial number {self.trial!r} is not a whole number")
        object.__setattr__(self, "trial", int(self.trial))
        object.__setattr__(self, "state", TrialState(self.state))

    @property
    def is_full(self) -> bool:
        """Fully fine-tuned and scored: the only trials a front (and its hypervolume) may use."""
        return self.state is TrialState.COMPLETE and self.val_acc is not None \
            and (self.fidelity or 0.0) >= 1.0

    def updated(self, **changes: Any) -> TrialRecord:
        """A copy with the given fields replaced (``None`` values leave a field as it is)."""
        return replace(self, **{k: v for k, v in changes.items() if v is not None})
