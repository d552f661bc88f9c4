"""Replay the end-of-run latency decision of kept run directories with the drift rule.

    python benchmarks/drift_replay.py RUN_DIR [RUN_DIR ...]

For a run made before ``Ledger.remeasure`` tolerated a common drift (or to see what it
decided), this reads each re-timed model's search-time figure (the study journal), its final
figure (latency_remeasured.json, as a ratio to the dense model timed beside it) and the budget,
and prints, per model, how far its ratio moved, whether the rule keeps it, and the pick (the
kept model best on validation, as ``benchmarks/search_regime.py`` picks). No timing is done:
it is the rule applied to figures already measured, not a new measurement.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

from autoprune.ledger import DRIFT_MIN_MODELS


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


def replay(run: Path) -> list[str]:
    """The lines describing the rule's decision on ``run``."""
    searched = search_figures(run)
    dense0 = float(json.loads((run / "baseline.json").read_text())["dense"]["latency_ms"])
    final_file = json.loads((run / "latency_remeasured.json").read_text())
    budget = float(json.loads((run / "budget.json").read_text())["budget"]["latency"])
    with open(run / "trials.csv", encoding="utf-8") as fh:
        rows = {r["trial"]: r for r in csv.DictReader(fh)}
    final = {k: v / final_file["dense"] for k, v in final_file.items() if k.isdigit()}
    moved = {k: final[k] / (searched[k] / dense0) for k in final if k in searched}
    drift = max(1.0, min(moved.values())) if len(moved) >= DRIFT_MIN_MODELS else 1.0
    lines = [f"{run.name}: dense {dense0:.3f} ms in the search, {final_file['dense']:.3f} ms at "
             f"the re-timing; budget {budget:g}; drift x{drift:.3f}"]
    kept = []
    for k in sorted(final, key=int):
        row, keep = rows[k], final[k] <= budget * drift
        kept += [k] if keep else []
        lines.append(f"  trial {k:>3} {row['baseline'] or 'searched':15s} search "
                     f"{searched[k] / dense0:.3f} final {final[k]:.3f} (x{moved[k]:.3f}) val "
                     f"{row['val_acc']}: {'kept' if keep else 'dropped'} (the run: {row['state']})")
    if kept:
        best = max(kept, key=lambda k: float(rows[k]["val_acc"] or 0.0))
        lines.append(f"  pick: trial {best} ({rows[best]['baseline'] or 'searched'}, val "
                     f"{rows[best]['val_acc']}, FLOPs {float(rows[best]['flops_ratio']):.3f})")
    else:
        lines.append("  pick: none")
    return lines


def main(argv: list[str] | None = None) -> None:
    runs = [Path(a) for a in (sys.argv[1:] if argv is None else argv)]
    if not runs:
        sys.exit("usage: python benchmarks/drift_replay.py RUN_DIR [RUN_DIR ...]")
    for run in runs:
        print("\n".join(replay(run)))


if __name__ == "__main__":
    main()
