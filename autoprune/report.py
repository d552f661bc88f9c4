"""Reports rendered from a run directory's files only (works on a copied run dir).

The terminal summary lives here; the HTML report builds on the same reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from autoprune.results import RunDir, TrialRecord

__all__ = ["front_table", "terminal_summary"]


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def front_table(front: Sequence[TrialRecord], baseline: dict[str, Any]) -> str:
    """The front as a fixed-width table, with the dense model as the first row."""
    dense = baseline.get("dense", {})
    header = f"{'trial':>6} {'val acc':>8} {'test acc':>9} {'FLOPs':>7} {'params':>7} " \
             f"{'latency ms':>11}  note"
    lines = [header, "-" * len(header),
             f"{'dense':>6} {_pct(dense.get('val_acc')):>8} {_pct(dense.get('test_acc')):>9} "
             f"{'100%':>7} {'100%':>7} {_ms(dense.get('latency_ms')):>11}"]
    for r in front:
        lines.append(
            f"{r.trial:>6} {_pct(r.val_acc):>8} {_pct(r.test_acc):>9} "
            f"{_pct(r.flops_ratio):>7} {_pct(r.params_ratio):>7} {_ms(r.latency_ms):>11}  "
            f"{r.baseline or ''}")
    return "\n".join(lines)


def terminal_summary(run_dir: str) -> str:
    run = RunDir.open(run_dir)
    records = run.read_trials()
    front = [TrialRecord(**{k: v for k, v in f.items() if k in TrialRecord.__dataclass_fields__})
             for f in run.read_front()]
    baseline = run.read_baseline() if run.baseline_path.is_file() else {}
    states: dict[str, int] = {}
    for r in records:
        states[r.state] = states.get(r.state, 0) + 1
    counts = ", ".join(f"{n} {s.lower()}" for s, n in sorted(states.items()))
    budget = baseline.get("budget", {})
    budget_text = ", ".join(f"{k} <= {v:.0%}" for k, v in budget.items() if v is not None)
    return (f"run: {run.path}\nbudget: {budget_text or '-'}; trials: {counts or 'none'}\n\n"
            f"Pareto front (validation selects; test shown for front members):\n"
            f"{front_table(front, baseline)}")
