"""What the report shows, read once from a run directory's files (works on a copied run dir).

:class:`RunView` holds the trials, the front, the baseline, the config and the resolved budget;
the helpers here decide the numbers (cost axis, budget limits, hypervolume points) and the text
formats that :mod:`autoprune.report` and :mod:`autoprune.report_plots` draw.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from autoprune._svg import esc
from autoprune.budget import ResolvedBudget
from autoprune.errors import AutopruneError
from autoprune.plan import Budget
from autoprune.results import RunDir
from autoprune.run_files import FileCheck
from autoprune.trial import TrialRecord

__all__ = ["RunView", "budget_x", "cost_name", "esc", "front_records", "hypervolume_points",
           "load", "ms", "pct", "slug", "state_counts", "within_budget"]


def pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def state_counts(records: Sequence[TrialRecord]) -> str:
    """``"3 complete, 1 fail"``: how many trials ended in each state, by state name."""
    states: dict[str, int] = {}
    for r in records:
        states[r.state] = states.get(r.state, 0) + 1
    return ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))


def front_records(run: RunDir) -> list[TrialRecord]:
    """front.json's rows as records; a damaged row (a text trial number, a state that does not
    exist: what a planted payload looks like) is refused with one line, never rendered."""
    fields = TrialRecord.__dataclass_fields__
    rows = run.read_front()  # type-checked there
    try:
        return [TrialRecord(**{k: v for k, v in f.items() if k in fields}) for f in rows]
    except (ValueError, TypeError) as exc:
        raise FileCheck(run.front_json_path).fail(str(exc)) from exc


@dataclass(frozen=True)
class RunView:
    """Everything the page shows, read once from the run directory's files."""

    name: str
    records: tuple[TrialRecord, ...]
    front: tuple[TrialRecord, ...]
    baseline: dict[str, Any]
    config: dict[str, Any]
    budget_file: dict[str, Any] | None = None
    budget_path: Path = Path("budget.json")

    @property
    def dense(self) -> dict[str, Any]:
        return dict(self.baseline.get("dense") or {})

    @property
    def budget(self) -> dict[str, Any]:
        return dict(self.baseline.get("budget") or self.config.get("budget") or {})

    @cached_property
    def resolved(self) -> ResolvedBudget | None:
        """The budget as the search resolved it (budget.json; older runs: from the baseline)."""
        if self.budget_file:
            try:
                return ResolvedBudget.from_dict(self.budget_file)
            except AutopruneError as exc:  # the types were checked on read; not the values
                raise FileCheck(self.budget_path).fail(str(exc)) from exc
        dense = self.dense
        try:
            return ResolvedBudget(Budget(**{k: v for k, v in self.budget.items()
                                            if v is not None}),
                                  float(dense["macs"]), float(dense["params"]),
                                  dense.get("latency_final_ms") or dense.get("latency_ms"))
        except (AutopruneError, KeyError, TypeError):
            return None

    @property
    def front_ids(self) -> frozenset[int]:
        return frozenset(r.trial for r in self.front)


def load(run: RunDir) -> RunView:
    records = run.read_trials()
    by_trial = {r.trial: r for r in records}
    front = []
    for row in front_records(run):  # trials.csv is rewritten last: prefer its values (test acc)
        latest = by_trial.get(row.trial)
        front.append(row if latest is None else
                     dataclasses.replace(latest, plan=row.plan or latest.plan))
    baseline = run.read_baseline() if run.baseline_path.is_file() else {}
    return RunView(run.path.resolve().name, tuple(sorted(records, key=lambda r: r.trial)),
                   tuple(front), baseline, run.read_config(), run.read_budget(),
                   run.budget_path)


def budget_x(run: RunView, key: str) -> float | None:
    """The budget's limit on a scatter plot's x axis (``key``: a ratio field or latency_ms)."""
    budget = run.budget
    if key == "flops_ratio":
        return budget.get("flops")
    if key == "params_ratio":
        return budget.get("params")
    if budget.get("latency_ms") is not None:
        return float(budget["latency_ms"])
    dense_ms = run.dense.get("latency_ms")
    return None if budget.get("latency") is None or dense_ms is None \
        else float(budget["latency"]) * float(dense_ms)


def within_budget(run: RunView, r: TrialRecord) -> bool:
    resolved = run.resolved
    if resolved is not None:
        return resolved.within(r)
    for key in ("flops_ratio", "params_ratio", "latency_ms"):
        limit, value = budget_x(run, key), getattr(r, key)
        if limit is not None and (value is None or value > float(limit) * (1 + 1e-9)):
            return False
    return True


def cost_name(run: RunView) -> str:
    """The name of the cost the front was built on: FLOPs, params or latency."""
    axis = run.resolved.axis if run.resolved is not None else "flops_ratio"
    return {"flops_ratio": "FLOPs", "params_ratio": "params", "latency_ratio": "latency"}[axis]


def hypervolume_points(run: RunView) -> list[tuple[float, float]]:
    """(accuracy, cost) per trial on the axis the front was built on (NaN: not on it)."""
    resolved = run.resolved
    out = []
    for r in run.records:
        cost = resolved.cost_of(r) if resolved is not None else r.flops_ratio
        out.append((float(r.val_acc or 0.0), float(cost)) if r.is_full and cost is not None
                   else (math.nan, math.nan))
    return out
