"""What the report shows, read once from a run directory's files (works on a copied run dir).

:class:`RunView` holds the trials, the front, the baseline, the config and the resolved budget;
the helpers here decide the numbers (cost axis, budget limits, hypervolume points) and the text
formats that :mod:`autoprune.report` and :mod:`autoprune.report_plots` draw.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from autoprune._svg import esc
from autoprune.budget import ResolvedBudget
from autoprune.errors import AutopruneError
from autoprune.plan import Budget, kept_channels
from autoprune.results import RunDir
from autoprune.run_files import FileCheck
from autoprune.selection import baseline_family, recommend
from autoprune.trial import TrialRecord, TrialState

__all__ = ["RunView", "SummaryRow", "baseline_family", "budget_x", "cost_name", "cost_of",
           "esc", "front_records", "hypervolume_points", "kept_of", "load", "ms", "pct",
           "points", "recommended", "slug", "state_counts", "summary_rows", "val_size",
           "within_budget"]


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
    latency_iqr: dict[str, float] = dataclasses.field(default_factory=dict)  # "N" / "dense"
    retimed: frozenset[int] = frozenset()  # trials the end-of-run re-timing timed
    latency_drift: float = 1.0  # the re-timed models' median move (Ledger.remeasure)

    @property
    def group_channels(self) -> dict[str, dict[str, int]]:
        """Dense channels (and quantum) per group, when baseline.json records them."""
        return dict(self.baseline.get("group_channels") or {})

    @property
    def frozen(self) -> list[dict[str, str]]:
        """Groups left at full width and why, when baseline.json records them."""
        return [dict(f) for f in self.baseline.get("frozen") or []]

    @property
    def dense_latency(self) -> float | None:
        """The dense model's final latency (re-timed at the end of the run, like the front)."""
        dense = self.dense
        value = dense.get("latency_final_ms") or dense.get("latency_ms")
        return None if value is None else float(value)

    @property
    def dense_iqr(self) -> float | None:
        """The IQR of :attr:`dense_latency`: from the final re-timing when it recorded one,
        else baseline.json's (only when that is the same timing)."""
        if "dense" in self.latency_iqr:
            return self.latency_iqr["dense"]
        dense = self.dense
        same = dense.get("latency_final_ms") is None
        return dense.get("latency_iqr_ms") if same else None

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
    final = run.read_remeasured()
    return RunView(run.path.resolve().name, tuple(sorted(records, key=lambda r: r.trial)),
                   tuple(front), baseline, run.read_config(), run.read_budget(),
                   run.budget_path, final.iqr, frozenset(final.ms), final.drift)


def points(value: float | None, reference: float | None) -> float | None:
    """``value - reference`` in percentage points (accuracies are fractions)."""
    return None if value is None or reference is None else (value - reference) * 100.0


def kept_of(run: RunView, group: str, ratio: float | None,
            plan: dict[str, Any]) -> tuple[int, int] | None:
    """(kept, dense) channels of ``group`` under a plan, when the run records its width."""
    info = run.group_channels.get(group)
    if not info:
        return None
    channels, quantum = int(info["channels"]), int(info.get("quantum") or 1)
    round_to = plan.get("round_to")
    unit = int(info.get("unit_width") or 1)
    return kept_channels(channels, float(ratio or 0.0), round_to, quantum, unit), channels


def val_size(run: RunView) -> int | None:
    """The number of validation examples ``evaluate`` scored, when the run recorded it."""
    n = run.dense.get("val_size")
    return int(n) if isinstance(n, (int, float)) and not isinstance(n, bool) and n >= 1 else None


def recommended(run: RunView) -> TrialRecord | None:
    """The model to deploy: :func:`autoprune.selection.recommend` over the fully fine-tuned
    trials (a one-liner baseline within one standard error of the best validation accuracy and
    not clearly off the front, else the best; the best alone when the run does not know its
    validation size)."""
    return recommend([r for r in run.records if r.is_full], val_size(run), cost=cost_of(run))


def cost_of(run: RunView) -> Callable[[TrialRecord], float | None] | None:
    """A record's cost on the run's front axis (None for a run whose budget cannot be read)."""
    return run.resolved.cost_of if run.resolved is not None else None


@dataclass(frozen=True)
class SummaryRow:
    """One row of the decision table: the dense model, a front member or a baseline."""

    name: str  # "dense" or "trial N"
    kind: str  # "dense", "front", "front · uniform-l2", "uniform-l2", ...
    trial: int | None
    val_acc: float | None
    test_acc: float | None
    vs_dense: float | None  # points of test accuracy
    vs_uniform: float | None
    flops_ratio: float | None
    params_ratio: float | None
    latency_ms: float | None
    latency_iqr: float | None
    slower: bool  # final latency over the dense model's
    latency_flag: str | None = None  # "noisy", "slower than dense", both

    @property
    def export(self) -> str | None:
        return None if self.trial is None else f"--trial {self.trial}"


def summary_rows(run: RunView) -> list[SummaryRow]:
    """Dense, then the front (cheapest first), then the baselines that are not on it; Δ columns
    against the dense model's and the uniform baseline's test accuracy."""
    dense_test = run.dense.get("test_acc")
    baselines = [r for r in run.records if r.baseline and r.state is TrialState.COMPLETE]
    uniform = next((r for r in baselines if baseline_family(r.baseline) == "uniform"), None)
    uniform_test = uniform.test_acc if uniform is not None else None
    dense_ms = run.dense_latency
    rows = [SummaryRow("dense", "dense", None, run.dense.get("val_acc"), dense_test, 0.0
                       if dense_test is not None else None, points(dense_test, uniform_test),
                       1.0, 1.0, dense_ms, run.dense_iqr, False)]
    front = sorted(run.front, key=lambda r: (float(r.flops_ratio or 1.0), r.trial))
    extra = [r for r in baselines if r.trial not in run.front_ids]
    for r in [*front, *extra]:
        on_front = r.trial in run.front_ids
        kind = " · ".join(k for k in ("front" if on_front else "", r.baseline or "") if k)
        rows.append(SummaryRow(
            f"trial {r.trial}", kind, r.trial, r.val_acc, r.test_acc,
            points(r.test_acc, dense_test), points(r.test_acc, uniform_test), r.flops_ratio,
            r.params_ratio, r.latency_ms, run.latency_iqr.get(str(r.trial)),
            r.latency_ms is not None and dense_ms is not None and r.latency_ms > dense_ms,
            r.latency_flag))
    return rows


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
