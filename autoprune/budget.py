"""The budget resolved once against the dense model: what candidates are fitted on, what the
front is built on, and what is over the limit.

:class:`~autoprune.plan.Budget` is what the user asked for (fractions, or milliseconds);
:class:`ResolvedBudget` knows the dense model's costs, so it can answer for any trial: its cost
on the front's axis (:meth:`ResolvedBudget.cost_of`) and whether it is within every limit
(:meth:`ResolvedBudget.within`). It is written once into the run directory (``budget.json``) and
read by the search, ``Session``, the report and export, so they cannot disagree. Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from autoprune.errors import BudgetError, ConfigError
from autoprune.plan import Budget, Metric
from autoprune.trial import Outcome, TrialRecord, TrialState

__all__ = ["Axis", "ResolvedBudget"]

Axis = Literal["flops_ratio", "params_ratio", "latency_ratio"]
_SLACK = 1 + 1e-9


@dataclass(frozen=True)
class ResolvedBudget:
    """A :class:`~autoprune.plan.Budget` with the dense model's costs folded in."""

    budget: Budget  # what the user asked for
    dense_macs: float  # per image, analytic (torch-pruning's count)
    dense_params: float
    dense_latency_ms: float | None = None  # the baseline's timing (or the final re-timing)

    def __post_init__(self) -> None:
        if self.budget.is_empty:
            raise BudgetError("give a budget: --budget-flops F, --budget-params F or "
                              "--budget-latency F")
        if self.latency_bound and not self.dense_latency_ms:
            raise ConfigError("the dense model's latency could not be measured; a latency "
                              "budget needs it (drop --no-latency, or give a FLOPs budget)")

    # -- what is fitted ------------------------------------------------------------------------
    @property
    def latency_bound(self) -> bool:
        return self.budget.latency is not None or self.budget.latency_ms is not None

    @property
    def metric(self) -> Metric:
        """The analytic cost candidates are fitted on (latency is measured on top of it)."""
        b = self.budget
        return "params" if b.flops is None and b.params is not None else "macs"

    @property
    def latency_limit_ms(self) -> float | None:
        b = self.budget
        if b.latency_ms is not None:
            return float(b.latency_ms)
        if b.latency is None or not self.dense_latency_ms:
            return None
        return float(b.latency) * self.dense_latency_ms

    @property
    def fraction(self) -> float:
        """The highest cost level a candidate is fitted onto, as a fraction of the dense
        ``metric``. Under a latency-only budget L: FLOPs fall faster than latency (0.6-0.9x
        measured here), so candidates are fitted onto FLOPs levels at most ~L."""
        b = self.budget
        if b.flops is not None or b.params is not None:
            return float(b.params if self.metric == "params" else b.flops)  # type: ignore[arg-type]
        limit = self.latency_limit_ms
        return min(1.0, limit / self.dense_latency_ms) if limit and self.dense_latency_ms else 1.0

    @property
    def dense_metric(self) -> float:
        return self.dense_params if self.metric == "params" else self.dense_macs

    def level_range(self, level_low: float, levels: int) -> tuple[float, float]:
        """The cost levels sampled: from ``level_low`` x the top level up to the top level (one
        level: the top only); under a latency-only budget down to at least top²."""
        high = self.fraction
        low = high * level_low if levels > 1 else high
        if self.latency_bound and self.budget.flops is None and self.budget.params is None:
            low = min(low, high ** 2)
        return low, high

    # -- what the front is built on -----------------------------------------------------------
    @property
    def axis(self) -> Axis:
        """The cost the front is built on: the latency ratio under a latency budget, else the
        fitted ratio (FLOPs, or params when only a params budget is given)."""
        if self.latency_bound:
            return "latency_ratio"
        return "params_ratio" if self.metric == "params" else "flops_ratio"

    def latency_ratio(self, latency_ms: float | None) -> float | None:
        if latency_ms is None or not self.dense_latency_ms:
            return None
        return latency_ms / self.dense_latency_ms

    def cost(self, flops_ratio: float | None, params_ratio: float | None,
             latency_ms: float | None) -> float | None:
        """The cost on the front's axis (``None`` when that figure was not measured)."""
        if self.axis == "latency_ratio":
            return self.latency_ratio(latency_ms)
        return params_ratio if self.axis == "params_ratio" else flops_ratio

    def cost_of(self, record: TrialRecord) -> float | None:
        """``record``'s cost on the front's axis."""
        return self.cost(record.flops_ratio, record.params_ratio, record.latency_ms)

    def limits(self) -> dict[str, float]:
        """Every limit of the budget, by record field (ratios, and latency in ms)."""
        out = {"flops_ratio": self.budget.flops, "params_ratio": self.budget.params,
               "latency_ms": self.latency_limit_ms}
        return {k: float(v) for k, v in out.items() if v is not None}

    def violations(self, record: TrialRecord) -> dict[str, float]:
        """By how much ``record`` is over each limit (as a fraction of the limit); unmeasured
        figures count as over."""
        out = {}
        for key, limit in self.limits().items():
            value = getattr(record, key)
            if value is None or value > limit * _SLACK:
                out[key] = float("inf") if value is None else value / limit - 1.0
        return out

    def within(self, record: TrialRecord) -> bool:
        return not self.violations(record)

    def infeasible(self, rec: dict[str, Any]) -> Outcome | None:
        """An INFEASIBLE outcome for a candidate's record (before any training) that is over a
        limit its fit could not see (a secondary params budget under a FLOPs fit, a measured
        latency), else None."""
        return self._over_params(rec) or self._over_latency(rec)

    def _over_params(self, rec: dict[str, Any]) -> Outcome | None:
        limit = self.budget.params
        if limit is None or self.metric != "macs" or rec["params_ratio"] <= limit:
            return None
        return Outcome(TrialState.INFEASIBLE, (0.0, rec["flops_ratio"]),
                       rec["params_ratio"] - limit,
                       {**rec, "fail_reason": f"params ratio {rec['params_ratio']:.4f} over "
                                              f"budget {limit}"})

    def _over_latency(self, rec: dict[str, Any]) -> Outcome | None:
        lat, limit = rec.get("latency_ms"), self.latency_limit_ms
        if limit is None or lat is None or lat <= limit:
            return None
        return Outcome(TrialState.INFEASIBLE, (0.0, self.latency_ratio(lat) or 1.0),
                       (lat - limit) / (self.dense_latency_ms or 1.0),
                       {**rec, "fail_reason": f"latency {lat:.4g} ms over the budget "
                                              f"{limit:.4g} ms; not fine-tuned"})

    # -- the run directory's copy -------------------------------------------------------------
    def with_dense_latency(self, latency_ms: float | None) -> ResolvedBudget:
        """The same budget after the dense model was timed again (end-of-run re-measurement)."""
        return replace(self, dense_latency_ms=latency_ms) if latency_ms else self

    def to_dict(self) -> dict[str, Any]:
        return {"budget": {k: v for k, v in asdict(self.budget).items() if v is not None},
                "dense_macs": self.dense_macs, "dense_params": self.dense_params,
                "dense_latency_ms": self.dense_latency_ms,
                # derived, for readers of the file (the report, a person)
                "metric": self.metric, "fraction": self.fraction, "axis": self.axis,
                "limits": self.limits()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ResolvedBudget:
        return cls(Budget(**data.get("budget", {})), float(data["dense_macs"]),
                   float(data["dense_params"]), data.get("dense_latency_ms"))
