"""Replay the end-of-run latency decision of kept run directories with the drift rule.

    python benchmarks/drift_replay.py RUN_DIR [RUN_DIR ...]

Reads each re-timed model's search-time figure (the study journal), its final figure
(latency_remeasured.json, as a ratio to the dense model timed beside it) and the budget, and
prints, per model, how far its ratio moved and whether the rule ``Ledger.remeasure`` follows
(:func:`autoprune.ledger.common_drift`: the median move) keeps it, beside the rule before
2026-12-07 (the least move) and the budget taken as measured (no drift); then each rule's pick
(the kept model best on validation, as ``benchmarks/search_regime.py`` picks) and a count over
all runs. Runs under a FLOPs or params budget are skipped. No timing is done: it is the rule
applied to figures already measured, not a new measurement.
"""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Callable
from pathlib import Path

from autoprune.ledger import DRIFT_MIN_MODELS, common_drift

#: rule name -> the drift it reads off {trial: moved}
RULES: dict[str, Callable[[dict[str, float]], float]] = {
    "median (now)": lambda moved: common_drift({k: [m] for k, m in moved.items()},
                                               dict.fromkeys(moved, 1.0)),
    "least (before)": lambda moved: max(1.0, min(moved.values()))
    if len(moved) >= DRIFT_MIN_MODELS else 1.0,
    "none": lambda moved: 1.0,
}


def search_figures(run: Path) -> dict[str, float]:
    """Each trial's search-time latency (ms), the last the journal set."""
    figures: dict[str, float] = {}
    with open(run / "study.journal", encoding="utf-8") as fh:
        for line in fh:
            op = json.loads(line)
            attrs = op.get("user_attr") or {}
            if "latency_ms" in attrs:
                figures[str(op["trial_id"])] = float(attrs["latency_ms"])
    return figures


def replay(run: Path, tally: dict[str, list[int]]) -> list[str]:
    """The lines describing each rule's decision on ``run``; adds to ``tally`` (rule ->
    [models dropped, runs whose pick is the model best on validation, runs])."""
    budget = json.loads((run / "budget.json").read_text())["budget"].get("latency")
    if budget is None:
        return [f"{run.name}: not under a latency budget, skipped"]
    searched = search_figures(run)
    dense0 = float(json.loads((run / "baseline.json").read_text())["dense"]["latency_ms"])
    final_file = json.loads((run / "latency_remeasured.json").read_text())
    with open(run / "trials.csv", encoding="utf-8") as fh:
        rows = {r["trial"]: r for r in csv.DictReader(fh)}
    final = {k: v / final_file["dense"] for k, v in final_file.items() if k.isdigit()}
    moved = {k: final[k] / (searched[k] / dense0) for k in final if k in searched}
    drifts = {name: rule(moved) for name, rule in RULES.items()}
    best = max(final, key=lambda k: float(rows[k]["val_acc"] or 0.0))
    lines = [f"{run.name}: dense {dense0:.3f} ms in the search, {final_file['dense']:.3f} ms at "
             f"the re-timing; budget {float(budget):g}; drift " + ", ".join(
                 f"{name} x{d:.3f}" for name, d in drifts.items())]
    for k in sorted(final, key=int):
        verdicts = " ".join(f"{'kept' if final[k] <= budget * d else 'dropped':7s}"
                            for d in drifts.values())
        lines.append(f"  trial {k:>3} {rows[k]['baseline'] or 'searched':15s} search "
                     f"{searched[k] / dense0:.3f} final {final[k]:.3f} (x{moved[k]:.3f}) val "
                     f"{rows[k]['val_acc']}: {verdicts} (the run: {rows[k]['state']})")
    for name, d in drifts.items():
        kept = [k for k in final if final[k] <= budget * d]
        pick = max(kept, key=lambda k: float(rows[k]["val_acc"] or 0.0)) if kept else None
        counts = tally.setdefault(name, [0, 0, 0])
        counts[0] += len(final) - len(kept)
        counts[1] += pick == best
        counts[2] += 1
        lines.append(f"  pick, {name}: " + (f"trial {pick} ({rows[pick]['baseline'] or 'searched'}"
                     f", val {rows[pick]['val_acc']}, final {final[pick]:.3f} of dense)"
                     if pick is not None else "none"))
    return lines


def main(argv: list[str] | None = None) -> None:
    runs = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not runs:
        sys.exit("usage: python benchmarks/drift_replay.py RUN_DIR [RUN_DIR ...]")
    tally: dict[str, list[int]] = {}
    print("columns: kept/dropped under " + ", ".join(RULES))
    for run in runs:
        print("\n".join(replay(run, tally)))
    print("\n| rule | models dropped | runs picking the model best on validation |")
    print("|---|---|---|")
    for name, (dropped, best, n) in tally.items():
        print(f"| {name} | {dropped} | {best} of {n} |")


if __name__ == "__main__":
    main()
