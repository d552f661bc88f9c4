"""Refit kept plans onto other FLOPs budgets, keeping their shape, for ``finetune_plans.py``.

    python benchmarks/refit_plans.py \\
        --rows benchmarks/results/search_regime_mbv2_flops03_5seeds.json --cell flops:0.3 \\
        --method autoprune --seeds 0 3 --flops 0.15 0.07 --out-dir /tmp/refit
    python benchmarks/refit_plans.py --rows ... --cell flops:0.07 --method uniform-l2 --seeds 0 \\
        --flops 0.07 --fix features.10.0=0.95 --out-dir /tmp/refit

Does a plan that won in one cell carry its advantage to a tighter budget? Each row's plan is
read as a shape, the share of each group's channels it keeps, and scaled onto each ``--flops``
budget: group ``i`` keeps ``s * kept_i`` of its channels (between ``--floor`` and all of
them), ``s`` bisected so the plan's FLOPs land at or just under the budget. ``--fix NAME=RATIO``
holds a group at a pruning ratio and scales the others around it (e.g. the uniform plan with
the last 1x1 conv pruned harder); ``--importance`` swaps the channel criterion. Writes one
``METHOD-sSEED-BUDGET-IMPORTANCE.json`` plan per (seed, budget) into ``--out-dir`` and prints
each with its FLOPs share; fine-tune them with ``finetune_plans.py PLAN.json:FINAL_SEED`` (the
target cell's final seed, ``final_seed`` in its rows).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))


def refit_kept(ratios: Mapping[str, float], flops_of: Callable[[dict[str, float]], float],
               target: float, fixed: Mapping[str, float] | None = None,
               floor: float = 0.05) -> dict[str, float]:
    """Pruning ratios keeping ``ratios``'s kept shares in proportion (``s * (1 - r)``, clipped
    to ``[floor, 1]``; ``fixed`` groups held at their ratio), with ``s`` the largest whose
    ``flops_of`` (a FLOPs share, rising with ``s``) is at most ``target``. Pure."""
    fixed = dict(fixed or {})
    free = {n: 1.0 - r for n, r in ratios.items() if n not in fixed}
    if not free or min(free.values()) <= 0.0:
        raise ValueError("every free group must keep some channels (ratio < 1)")

    def at(s: float) -> dict[str, float]:
        return {**{n: 1.0 - min(1.0, max(floor, s * k)) for n, k in free.items()}, **fixed}

    lo, hi = 0.0, 1.0 / min(free.values())  # at hi every free group keeps all its channels
    if flops_of(at(lo)) > target:
        raise ValueError(f"target {target:g} is below the plan's floor "
                         f"({flops_of(at(lo)):.4f} with every free group at {floor:g} kept)")
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if flops_of(at(mid)) <= target else (lo, mid)
    return at(lo)


def _rows(path: Path, cell: str, method: str, seeds: list[int]) -> dict[int, dict[str, Any]]:
    """``{seed: plan}`` of ``method``'s rows in ``cell`` (``KIND:BUDGET``) of a results file,
    read as ``finetune_plans.py --rows`` reads them."""
    from finetune_plans import jobs_from_rows

    found = {job["seed"]: job["plan"] for job in jobs_from_rows(str(path), cell, [method])}
    missing = sorted(set(seeds) - set(found))
    if missing:
        raise SystemExit(f"--rows {path}: no {method} plan in cell {cell} for seeds {missing}")
    return {s: found[s] for s in seeds}


def main(argv: list[str] | None = None) -> None:
    from autoprune.plan import IMPORTANCES

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", type=Path, required=True, help="a search_regime.py results JSON")
    p.add_argument("--cell", required=True, help="KIND:BUDGET of the rows, e.g. flops:0.3")
    p.add_argument("--method", default="autoprune")
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--flops", type=float, nargs="+", required=True, help="budgets to refit onto")
    p.add_argument("--fix", nargs="*", default=[], metavar="NAME=RATIO")
    p.add_argument("--floor", type=float, default=0.05, help="least share of a group kept")
    p.add_argument("--importance", choices=IMPORTANCES,
                   help="the channel criterion of the written plans (default: the rows')")
    p.add_argument("--arch", default="mbv2")
    p.add_argument("--out-dir", type=Path, required=True)
    args = p.parse_args(argv)
    fixed = {}
    for spec in args.fix:
        name, _, value = spec.partition("=")
        try:
            fixed[name] = float(value)
        except ValueError:
            p.error(f"--fix {spec!r}: expected NAME=RATIO, e.g. features.10.0=0.95")
        if not 0.0 <= fixed[name] < 1.0:
            p.error(f"--fix {spec!r}: the ratio must be in [0, 1)")
    rows = _rows(args.rows, args.cell, args.method, args.seeds)

    import search_regime as sr

    import autoprune as ap

    cfg = vars(sr.parse_args(["--arch", args.arch]))
    an = sr._context(cfg, args.arch, print)["analysis"]
    dense = an.cost_model.dense_macs()
    unknown = set(fixed) - {g.name for g in an.groups}
    if unknown:
        p.error(f"--fix: no group named {sorted(unknown)}; groups: {[g.name for g in an.groups]}")

    def flops_of(ratios: dict[str, float]) -> float:
        return an.macs(ap.PruningPlan(ratios, "l2", None)) / dense

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for seed, plan in rows.items():
        for target in args.flops:
            every = {g.name: plan["ratios"].get(g.name, 0.0) for g in an.groups}
            ratios = refit_kept(every, flops_of, target, fixed, args.floor)
            importance = args.importance or plan.get("importance", "l2")
            out = args.out_dir / f"{args.method}-s{seed}-{target:g}-{importance}.json"
            out.write_text(json.dumps({**plan, "ratios": ratios, "importance": importance},
                                      indent=1))
            print(f"{out}: FLOPs {flops_of(ratios):.4f}  "
                  + " ".join(f"{ratios[n]:.2f}" for n in sorted(ratios)))


if __name__ == "__main__":
    main()
