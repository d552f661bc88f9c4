"""Replay autoprune's pick rule (:func:`autoprune.selection.recommend`) on kept benchmark rows.

    python benchmarks/selection_replay.py \\
        --finetuned benchmarks/results/selection_replay_finetunes.json \\
        --out benchmarks/results/selection_replay.md

Every autoprune row of ``benchmarks/search_regime.py`` kept before the rule existed picked the
best fully fine-tuned trial on validation, and records that trial's validation accuracy and
each baseline's (``chosen_val``, ``baselines``). That is all the rule reads: the best, and the
one-liner baselines within one binomial standard error of it (uniform first, then global;
the validation split's size from the row's unit). Where it swaps the pick for a baseline,
the baseline's final test accuracy comes from

- FLOPs cells: the peer row with the same plan and final seed (the search's ``uniform-l2`` /
  ``global-l2`` baselines are torch-pruning's one-liners, the peers' plans exactly);
- latency cells: ``--finetuned``, the search's own latency-matched baseline given the
  benchmark's final fine-tune by ``benchmarks/finetune_plans.py`` (rows: arch, kind, budget,
  seed, baseline, final_seed, test_acc), else the cell is marked incomplete.

Per cell: autoprune minus the best peer (FLOPs: uniform-L2 or global-L2, the better on
average; latency: the latency-matched uniform plan), paired by seed with a 95 % t-interval,
before (best on validation) and after (the rule). No training: the rule applied to figures
already measured.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _regime_peers import paired_interval

from autoprune.selection import recommend, standard_error

RESULTS = Path(__file__).resolve().parent / "results"
#: the current search's rows (2026-12-07), every arch and cell of issue 14
FILES = ("search_regime_vgg8_5seeds", "search_regime_mbv2_flops03_5seeds",
         "search_regime_mbv2_flops_5seeds", "search_regime_resnet20_flops0315_5seeds",
         "search_regime_resnet20_flops007_5seeds", "search_regime_mbv2_latency_median_5seeds",
         "search_regime_resnet20_latency05_5seeds")
PEERS = {"flops": ("uniform-l2", "global-l2"), "latency": ("uniform-lat",)}


def _candidates(row: dict[str, Any]) -> list[SimpleNamespace]:
    """The pick and the fully fine-tuned baselines, as the rule reads them."""
    pick = SimpleNamespace(val_acc=row["chosen_val"], baseline=row.get("chosen_baseline"),
                           flops_ratio=row.get("flops_ratio"), name="pick")
    out = [pick]
    for name, b in (row.get("baselines") or {}).items():
        if name != pick.baseline and b.get("state") == "COMPLETE" and b.get("val") is not None:
            out.append(SimpleNamespace(val_acc=b["val"], baseline=name, flops_ratio=None,
                                       name=name))
    return out


def replay_row(row: dict[str, Any], val_size: int, peers: dict[str, dict[str, Any]],
               finetuned: dict[tuple[Any, ...], float], key: tuple[Any, ...]) -> dict[str, Any]:
    """One seed of one cell: the rule's pick and its final test accuracy (None: not measured)."""
    new = recommend(_candidates(row), val_size)
    assert new is not None
    out = {"seed": key[3], "picked": row.get("chosen_baseline") or f"trial {row['chosen_trial']}",
           "val": row["chosen_val"], "test": row["test_acc"],
           "se": standard_error(row["chosen_val"], val_size), "rule": "the same", "rule_test":
           row["test_acc"]}
    if new.name != "pick":  # a baseline within one standard error
        out["rule"] = new.baseline
        if row["kind"] == "flops" and new.baseline in peers:
            out["rule_test"] = peers[new.baseline]["test_acc"]
        else:
            out["rule_test"] = finetuned.get((*key, new.baseline))
    return out


def cells(files: list[str], finetuned: dict[tuple[Any, ...], float]) -> dict[tuple[Any, ...],
                                                                           list[dict[str, Any]]]:
    """Per (arch, kind, budget): each seed's replayed row and its peers' test accuracy."""
    found: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for name in files:
        data = json.loads((RESULTS / f"{name}.json").read_text())
        for unit in data["results"]:
            if "runs" not in unit:
                continue
            for row in unit["runs"]:
                if row["method"] != "autoprune" or row.get("test_acc") is None:
                    continue
                key = (unit["arch"], row["kind"], row["budget"], unit["seed"])
                peers = {r["method"]: r for r in unit["runs"]
                         if r["kind"] == row["kind"] and r["budget"] == row["budget"]
                         and r.get("final_seed") == row.get("final_seed")
                         and r["method"] in PEERS[row["kind"]]}
                done = replay_row(row, int(unit["sizes"]["val"]), peers, finetuned, key)
                done["peers"] = {m: r["test_acc"] for m, r in peers.items()}
                found.setdefault(key[:3], []).append(done)
    return found


def _fmt(diffs: list[float]) -> str:
    """Mean difference in points and its 95 % interval, as ``search_regime.py`` writes them."""
    import search_regime as sr

    return sr._fmt(*paired_interval(diffs), scale=1.0)


def summarise(cell: tuple[Any, ...], rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Before / after, minus the cell's best peer, paired by seed (points)."""
    names = PEERS[cell[1]]
    means = {p: sum(r["peers"][p] for r in rows) / len(rows) for p in names
             if all(p in r["peers"] for r in rows)}
    best = max(means, key=lambda p: means[p])
    before = [100 * (r["test"] - r["peers"][best]) for r in rows]
    complete = all(r["rule_test"] is not None for r in rows)
    after = [100 * (r["rule_test"] - r["peers"][best]) for r in rows] if complete else []
    return {"arch": cell[0], "kind": cell[1], "budget": cell[2], "best_peer": best,
            "seeds": len(rows), "swapped": sum(r["rule"] != "the same" for r in rows),
            "before": paired_interval(before), "after": paired_interval(after) if complete
            else None, "before_s": _fmt(before), "after_s": _fmt(after) if complete else
            "incomplete: a swapped baseline's final accuracy is not measured", "rows": rows}


def render(summaries: list[dict[str, Any]], command: str) -> str:
    lines = ["# autoprune's pick: the best on validation against the one-standard-error rule",
             "", f"`{command}`", "",
             "autoprune minus the best peer (points of test accuracy, mean over seeds, 95 % "
             "t-interval, paired by seed); *swapped*: seeds where the rule keeps a one-liner "
             "baseline instead of the best on validation.", "",
             "| cell | best peer | seeds | swapped | best on validation | one-SE rule |",
             "|---|---|---|---|---|---|"]
    for s in summaries:
        lines.append(f"| {s['arch']}, {s['kind']} {s['budget']:g} | {s['best_peer']} | "
                     f"{s['seeds']} | {s['swapped']} | {s['before_s']} | {s['after_s']} |")
    lines += ["", "## Per seed", "", "| cell | seed | picked (val %, 1 SE) | test % | "
              "the rule keeps | its test % |", "|---|---|---|---|---|---|"]
    for s in summaries:
        for r in s["rows"]:
            test = "not measured" if r["rule_test"] is None else f"{100 * r['rule_test']:.2f}"
            lines.append(f"| {s['arch']}, {s['kind']} {s['budget']:g} | {r['seed']} | "
                         f"{r['picked']} ({100 * r['val']:.2f}, {100 * r['se']:.2f}) | "
                         f"{100 * r['test']:.2f} | {r['rule']} | {test} |")
    return "\n".join(lines) + "\n"


def load_finetuned(paths: list[Path]) -> dict[tuple[Any, ...], float]:
    out = {}
    for path in paths:
        for r in json.loads(path.read_text())["rows"]:
            out[(r["arch"], r["kind"], r["budget"], r["seed"], r["baseline"])] = r["test_acc"]
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--files", nargs="+", default=list(FILES),
                   help="results files (names under benchmarks/results, no suffix)")
    p.add_argument("--finetuned", nargs="*", type=Path, default=[])
    p.add_argument("--out", type=Path)
    args = p.parse_args(argv)
    found = cells(args.files, load_finetuned(args.finetuned))
    summaries = [summarise(cell, rows) for cell, rows in sorted(found.items())]
    text = render(summaries, "python benchmarks/selection_replay.py " + " ".join(
        sys.argv[1:] if argv is None else argv))
    print(text)
    if args.out:
        args.out.write_text(text)
        args.out.with_suffix(".json").write_text(json.dumps(summaries, indent=1) + "\n")


if __name__ == "__main__":
    main()
