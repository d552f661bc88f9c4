"""Search quality where users deploy: converged nets, the full training set, FLOPs and measured
latency budgets, and torch-pruning's strongest recipe among the peers.

Fashion-MNIST: 55,000 training images, a 5,000-image validation split carved from the training
set (the searches select on it) and the 10,000-image test set, scored once at the end. One dense
model per architecture, trained to convergence and cached (``benchmarks/.cache``); seeds vary the
searches and the final fine-tune. Every method's model is pruned from the same dense weights and
fine-tuned with the same recipe, seed and batches.

Cells:
- FLOPs budgets (default 0.3 0.15 0.07; every method unrounded): uniform-l2, global-l2,
  torch-pruning's group-norm + sparsity-learning recipe (``groupnorm-sl``), autoprune
  (``random`` too with ``--random-in all``; when named in ``--methods``: ``autoprune-depth``,
  ``--depth on``, and ``groupnorm-sl-cap``, the recipe capped at 0.7 per layer);
- measured latency budgets (default 0.5 0.3; batch 1, ``--latency-runtime``, default
  onnxruntime; channel widths rounded to 8, autoprune's default): the uniform plan whose measured
  latency meets the budget (``uniform-lat``, bisected), the same with every residual block
  removed first (``uniform-lat-depth``), random search, autoprune (``--budget-latency``) and
  autoprune searching which residual blocks to remove as well (``autoprune-depth``,
  ``--depth latency``). At batch 1 in eager PyTorch these nets sit on an overhead floor (a
  uniform MobileNetV2 at 7 % of the FLOPs still takes 71 % of the dense time), so budgets of 0.5
  and 0.3 are only reachable in a runtime that fuses (ONNX Runtime: 23 %);
- ``--sensitivity`` adds ``sensitivity`` to every cell: the classic per-layer sensitivity
  analysis (each coupled group pruned alone at 0.5, BatchNorm re-estimated, its validation drop
  measured) turned into ratios ~ 1 / (drop + median drop), fitted to the FLOPs budget or bisected
  on measured latency like ``uniform-lat`` (no search: is a sensitivity prior worth adding?),
  and ``sensitivity-cost``: ratios ~ saving / (drop + median drop), the saving being what the
  group alone pruned at 0.5 saves (FLOPs cells: MACs; latency cells: the latency table's
  prediction), so the groups that buy the budget cheaply go first;
- the searches of one latency cell share one per-layer latency table (built by the first, its
  build time charged to each search's seconds, as each of them would build it alone);
- ``--refine K`` adds ``autoprune-refine`` to every cell: the same search, then its K best full
  fine-tunes (on val) fine-tuned again from the dense prune for ``--refine-epochs`` and the best
  on val picked (does a longer look at the finalists fix the search's selection?).

    python benchmarks/search_regime.py                # the full table (hours on 2 cores)
    python benchmarks/search_regime.py --arch mbv2 --flops --latency 0.5 0.3   # latency cells
    python benchmarks/search_regime.py --quick        # the whole pipeline in minutes

Every (arch, seed, cell, method) result is kept under ``benchmarks/.cache/regime`` as it
finishes, so a killed run resumes where it stopped (``--fresh`` starts over; ``--kept-only``
only renders). A cell's place in the ``--flops``/``--latency`` lists seeds its final fine-tune:
resume or extend a run with the same lists, so every method of a cell sees the same batches.
The cache is not committed: on a fresh checkout ``--restore benchmarks/results/search_regime.json
--kept-only`` re-renders the committed table without training anything, and a run after
``--restore`` adds new rows to it only if its dense models score exactly as the kept rows' did
(the same weights; ``_regime_cache.py``). Dense models committed under ``benchmarks/dense``
are loaded instead of trained (``_quality_data.KEPT_DIR``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import shlex
import shutil
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from _common import die_with_parent, save_report
from _regime_cache import (
    BN_BATCHES,
    GN_CAP,
    REFINE,
    SENS,
    SENS_COST,
    UNSEARCHED,
    DenseMismatch,
    check_dense,
    header_key,
    keep,
    kept,
    kept_row,
    proxy_key,
    restore,
    row_key,
    space_digest,
)

FLOPS_METHODS = ("uniform-l2", "global-l2", "groupnorm-sl", "random", "autoprune")
DEPTH = "autoprune-depth"  # --depth latency (FLOPs cells: on): residual blocks may go whole
SEARCHES = ("autoprune", REFINE, DEPTH)  # ours that run autoprune's search (and its baselines)
OURS = (*SEARCHES, SENS, SENS_COST)
LATENCY_METHODS = ("uniform-lat", "uniform-lat-depth", "random", "autoprune", DEPTH)
ARCH_NAMES = ("resnet20", "mbv2", "vgg8")
DENSE_EPOCHS = {"resnet20": 12, "mbv2": 10, "vgg8": 8}
SPACES = {"resnet20": "resnet", "mbv2": "mobilenet", "vgg8": "plain"}
PRESETS: dict[str, dict[str, Any]] = {
    "full": {"seeds": 3, "train_size": 55000, "val_size": 5000, "test_size": None,
             "flops": [0.3, 0.15, 0.07], "latency": [0.5, 0.3], "trials": 8,
             "search_steps": 150, "final_epochs": 2.0, "sl_epochs": 1.0,
             "proxy_candidates": 24, "bisect_iters": 7, "random_in": "latency",
             "bn_batches": BN_BATCHES},
    "quick": {"seeds": 1, "val_size": 500, "test_size": 1000,
              "flops": [0.3], "latency": [0.5], "trials": 2, "search_steps": 10,
              "final_epochs": 1.0, "sl_epochs": 0.1, "dense_epochs": 2, "arch": ["resnet20"],
              "proxy_candidates": 3, "train_size": 5000, "bisect_iters": 3, "random_in": "none",
              "bn_batches": 4,
              # every peer once; the --depth variants are the same search again (--methods)
              "methods": ["uniform-l2", "global-l2", "groupnorm-sl", "uniform-lat", "autoprune"]},
}
CACHE = Path(__file__).parent / ".cache" / "regime"
#: a FLOPs-cell row above budget x this did not meet the budget (the capped group-norm recipe
#: stops short of 7 %: torch-pruning stops pruning a layer once it lost 0.7 of its channels)
OVER_BUDGET = 1.02
NO_PICK = {"uniform-lat": "no uniform plan meets the budget when measured",
           "uniform-lat-depth": "no uniform plan without the residual blocks meets the budget"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", nargs="+", choices=ARCH_NAMES,
                   help="resnet20 | mbv2 | vgg8 (default all three; --quick: resnet20)")
    p.add_argument("--flops", nargs="*", type=float, help="FLOPs budgets (default 0.3 0.15 "
                   "0.07; give the flag alone for none)")
    p.add_argument("--latency", nargs="*", type=float, help="measured latency budgets, "
                   "fractions of dense (default 0.5 0.3; the flag alone for none)")
    p.add_argument("--latency-runtime", default="onnxruntime", choices=["eager", "onnxruntime"])
    p.add_argument("--seeds", type=int)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--trials", type=int, help="full fine-tunes per search (default 8)")
    p.add_argument("--search-steps", type=int, help="fine-tune steps per search candidate")
    p.add_argument("--final-epochs", type=float, help="the final fine-tune, in epochs of the "
                   "training set (default 2)")
    p.add_argument("--sl-epochs", type=float, help="group-norm recipe: sparsity-learning "
                   "epochs before pruning (default 1)")
    p.add_argument("--dense-epochs", type=int, help="override the per-arch dense epochs")
    p.add_argument("--methods", nargs="+",
                   choices=sorted({*FLOPS_METHODS, *LATENCY_METHODS, GN_CAP, REFINE, SENS,
                                   SENS_COST}),
                   help="only these methods (default all that fit each cell; --quick: "
                        "neither depth variant)")
    p.add_argument("--random-in", choices=["latency", "all", "none"],
                   help="cells that also run random search (default: the latency cells; "
                        "--quick: none)")
    p.add_argument("--refine", type=int, default=0, help="also autoprune-refine: the same "
                   "search, then its REFINE best full fine-tunes (by val) fine-tuned again from "
                   "the dense prune for --refine-epochs and the best on val picked (default 0: "
                   "not run)")
    p.add_argument("--refine-epochs", type=float, default=0.5)
    p.add_argument("--sensitivity", action="store_true", help="also the sensitivity plan: each "
                   "coupled group pruned alone at 0.5, BatchNorm re-estimated, its validation "
                   "drop measured; ratios ~ 1 / (drop + median drop), fitted to the FLOPs "
                   "budget or bisected on measured latency like uniform-lat")
    p.add_argument("--search-sensitivity", default="latency", choices=["off", "latency", "on"],
                   help="autoprune's --sensitivity (default: its own default, latency): its "
                   "searches also start from the sensitivity plan (rows kept before it existed "
                   "read as off)")
    p.add_argument("--distill", action="store_true", help="autoprune's searches distil from "
                   "the dense model")
    p.add_argument("--selection", default="one-se", choices=["one-se", "best-val"],
                   help="how autoprune's pick is chosen among its fully fine-tuned trials: "
                   "one-se (autoprune's default, the one-standard-error rule: a one-liner "
                   "baseline within one standard error of the best validation accuracy) or "
                   "best-val (the best on validation; rows kept before the flag existed)")
    p.add_argument("--proxy-arch", default="resnet20", choices=[*ARCH_NAMES, "none"],
                   help="arch of the proxy study (Spearman of each cheap score and of the full "
                        "fine-tune under another seed, the noise ceiling); none: skip")
    p.add_argument("--proxy-budget", type=float, default=0.15, help="its FLOPs budget")
    p.add_argument("--proxy-candidates", type=int, help="its random candidates (default 24)")
    p.add_argument("--bn-batches", type=int, help="training batches BatchNorm is re-estimated "
                   "on before every score: the searches' screening, the sensitivity drops, the "
                   "proxy study (default 20, autoprune's; --quick: 4)")
    p.add_argument("--bisect-iters", type=int, help="timings of the latency-matched uniform "
                   "plan's bisection (default 7)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--jobs", type=int, default=2, help="processes, 1 torch thread each")
    p.add_argument("--device", default="cpu", help="cpu | cuda: fine-tunes and dense training "
                   "(latency stays on the CPU runtime it models)")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--train-size", type=int)
    p.add_argument("--val-size", type=int)
    p.add_argument("--test-size", type=int)
    p.add_argument("--out", type=Path)
    p.add_argument("--fresh", action="store_true", help="ignore kept results")
    p.add_argument("--kept-only", action="store_true", help="run nothing new: report what "
                   "earlier runs kept (missing cells are left out)")
    p.add_argument("--restore", type=Path, metavar="RESULTS_JSON", help="first write the rows "
                   "of a results file (e.g. benchmarks/results/search_regime.json) into the "
                   "cache: with --kept-only a fresh checkout re-renders it without training; a "
                   "run extends it if its dense models train to the same weights here")
    p.add_argument("--keep-runs", type=Path, metavar="DIR", help="move each search's run "
                   "directory (trials.csv, timings.jsonl, plans) under DIR instead of deleting "
                   "it, to look into a search afterwards")
    p.add_argument("--cache", type=Path, default=CACHE, help="where finished cells are kept "
                   "(default benchmarks/.cache/regime)")
    args = p.parse_args(argv)
    for key, value in PRESETS["quick" if args.quick else "full"].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.arch is None:
        args.arch = list(ARCH_NAMES)
    if args.out is None:
        args.out = Path(__file__).parent / "results" / (
            "search_regime_quick.md" if args.quick else "search_regime.md")
    return args


def cells(cfg: dict[str, Any]) -> list[tuple[str, float]]:
    return [("flops", b) for b in cfg["flops"]] + [("latency", b) for b in cfg["latency"]]


def methods_of(cfg: dict[str, Any], kind: str) -> list[str]:
    names = list(FLOPS_METHODS if kind == "flops" else LATENCY_METHODS)
    if kind == "flops":  # not in the default FLOPs table: only when named
        names += [m for m in (GN_CAP, DEPTH) if m in (cfg["methods"] or ())]
    if cfg.get("refine"):
        names.append(REFINE)
    if cfg.get("sensitivity"):
        names += [SENS, SENS_COST]
    if cfg["random_in"] == "none" or (cfg["random_in"] == "latency" and kind == "flops"):
        names.remove("random")
    return [m for m in names if not cfg["methods"] or m in cfg["methods"]]


# -- one (arch, seed) ---------------------------------------------------------------------------
def _context(cfg: dict[str, Any], arch: str, log: Callable[[str], None]) -> dict[str, Any]:
    import _quality_data as qd
    import torch

    from autoprune.engine import analyze
    from autoprune.latency import LatencyTarget

    data = qd.load_data(cfg["data_dir"], 0, cfg["train_size"], cfg["val_size"],
                        cfg["test_size"])
    epochs = cfg["dense_epochs"] or DENSE_EPOCHS[arch]
    dense = qd.train_dense(arch, data, 0, epochs, log, cfg["device"]).eval()
    example = qd.example_input()
    spec = qd.ARCHS[arch]
    torch.set_num_threads(1)
    return {"data": data, "dense": dense, "example": example, "batch": spec.batch,
            "analysis": analyze(dense, example), "evaluate": qd.make_evaluate(data, dense),
            "ft": {"lr": spec.ft_lr, "optimizer": spec.optimizer,
                   "weight_decay": spec.weight_decay},
            "target": LatencyTarget(batch_size=1, runtime=cfg["latency_runtime"]),
            "epoch_steps": len(data.loader(0, spec.batch))}


def _space(arch: str, kind: str) -> Any:
    from autoprune.space import load_space

    space = load_space(SPACES[arch])
    # FLOPs cells: every method unrounded (rounding only constrains a FLOPs budget); latency
    # cells: the space's own rounding, i.e. autoprune's default of 8 when it leaves it open
    return dataclasses.replace(space, round_to=1) if kind == "flops" else space


def _digest(arch: str, kind: str, method: str) -> str | None:
    """The digest of the space ``method`` searches in this cell; None for a peer that reads no
    space."""
    return None if method in UNSEARCHED else space_digest(_space(arch, kind))


def _chosen_by(cfg: dict[str, Any], method: str) -> str | None:
    """How a method's row picks among its search's trials (None: a peer that does not search;
    random search has no baselines to prefer and the refine method re-ranks its own top: both
    pick the best on validation)."""
    if method in UNSEARCHED:
        return None
    return "best-val" if method in ("random", REFINE) else str(cfg.get("selection") or "best-val")


def _search(method: str, cfg: dict[str, Any], ctx: dict[str, Any], arch: str, kind: str,
            b: float, seed: int) -> tuple[Any, dict[str, Any]]:
    import autoprune as ap
    from autoprune.driver import search
    from autoprune.settings import FinetuneSettings, SearchSettings

    latency = kind == "latency"
    one_se = _chosen_by(cfg, method) == "one-se"
    common: dict[str, Any] = {"seed": seed, "progress": False, "levels": 1,
                              "latency": latency, "latency_batch": 1,
                              "latency_runtime": cfg["latency_runtime"],
                              # fine-tunes on --device, timings on the CPU runtime the cells model
                              "latency_device": "cpu"}
    if method == "random":
        settings = SearchSettings(sampler="random", screen=0.0, priors=False, **common)
    else:
        depth = ("latency" if latency else "on") if method == DEPTH else "off"
        settings = SearchSettings(depth=depth,
                                  sensitivity=cfg.get("search_sensitivity", "off"), **common)
    budget = ap.Budget(latency=b) if latency else ap.Budget(flops=b)
    run_dir = Path(tempfile.mkdtemp(prefix=f"regime-{method}-")) / "run"
    run_dir.mkdir()
    reused = _seed_run(ctx, run_dir, (kind, b, seed), latency)
    start = time.perf_counter()
    try:
        result = search(ctx["dense"], ctx["example"], evaluate=ctx["evaluate"],
                        train_loader=ctx["data"].loader(seed, ctx["batch"]), budget=budget,
                        trials=cfg["trials"], run_dir=run_dir, space=_space(arch, kind),
                        finetune_settings=FinetuneSettings(
                            steps=cfg["search_steps"], bn_batches=cfg["bn_batches"],
                            device=cfg["device"],
                            distill=cfg["distill"] and method in OURS, **ctx["ft"]),
                        settings=settings,
                        val_size=ctx["data"].sizes()["val"] if one_se else None)
        _keep_shared(ctx, run_dir, (kind, b, seed), latency)
    finally:
        _drop_run(cfg, run_dir, f"{arch}-{kind}{b:g}-seed{seed}-{method}")
    if not any((r.baseline or "").startswith("sensitivity") for r in result.trials):
        reused.pop("drops", None)  # this search did not use the drops it was handed
    full = [r for r in result.front if r.is_full]
    # a search that reused the cell's latency table or sensitivity drops is charged their
    # measuring time all the same
    info: dict[str, Any] = {"search_s": time.perf_counter() - start + sum(reused.values()),
                            "table_shared": "table" in reused, "drops_shared": "drops" in reused,
                            "n_full": sum(r.is_full for r in result.trials),
                            "n_total": len(result.trials),
                            "states": dict(Counter(r.state.value for r in result.trials)),
                            "fail_reasons": sorted({r.fail_reason for r in result.trials
                                                    if r.fail_reason})[:5],
                            "baselines": {r.baseline: {"state": r.state.value, "proxy": r.proxy_acc,
                                                       "short": r.short_acc, "val": r.val_acc}
                                          for r in result.trials if r.baseline}}
    if not full:
        return None, info
    if method == REFINE:  # FLOPs cells: every full fine-tune is in budget; latency: the front's
        pool = full if kind == "latency" else [r for r in result.trials if r.is_full]
        top = sorted(pool, key=lambda r: -(r.val_acc or 0.0))[:cfg["refine"]]
        info["top"] = [{"trial": r.trial, "baseline": r.baseline, "search_val": r.val_acc,
                        "plan": r.plan} for r in top]
    best = result.recommended or max(full, key=lambda r: r.val_acc or 0.0)
    on_val = max(full, key=lambda r: r.val_acc or 0.0)  # what best-on-validation would pick
    info.update(chosen_by="one-se" if one_se else "best-val", best_val_trial=on_val.trial,
                best_val=on_val.val_acc, best_val_baseline=on_val.baseline)
    info.update(chosen_trial=best.trial, chosen_val=best.val_acc, chosen_baseline=best.baseline,
                search_latency_ms=best.latency_ms, global_baseline="exact",
                baselines_kind="one-liners")
    return ap.PruningPlan.from_dict(best.plan), info


def _drop_run(cfg: dict[str, Any], run_dir: Path, name: str) -> None:
    """Delete a finished search's run directory, or move it under ``--keep-runs``."""
    if cfg.get("keep_runs"):
        dest = Path(cfg["keep_runs"]) / name
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(dest, ignore_errors=True)
        shutil.move(str(run_dir), str(dest))
    shutil.rmtree(run_dir.parent, ignore_errors=True)


def _seed_run(ctx: dict[str, Any], run_dir: Path, cell: tuple[str, float, int],
              latency: bool) -> dict[str, float]:
    """Put what the process's earlier searches measured into a search's run directory: the
    latency table (same model, target and runtime) and the cell's baseline.json (its dense
    figures, so every search of the cell has the same latency reference, and the groups'
    sensitivity drops: same model, data and seed). Returns the seconds each took to measure."""
    reused: dict[str, float] = {}
    table = ctx.get("latency_table") if latency else None
    if table is not None:
        (run_dir / "latency_table.json").write_text(table[0])
        reused["table"] = table[1]
    known = ctx.get("baseline_json", {}).get(cell)
    if known is not None:
        (run_dir / "baseline.json").write_text(known)
        if json.loads(known).get("sensitivity") is not None:
            reused["drops"] = float(json.loads(known).get("sensitivity_s") or 0.0)
    return reused


def _keep_shared(ctx: dict[str, Any], run_dir: Path, cell: tuple[str, float, int],
                 latency: bool) -> None:
    """Keep a finished search's latency table (the first one) and baseline.json for the next."""
    table = run_dir / "latency_table.json"
    if latency and "latency_table" not in ctx and table.is_file():
        text = table.read_text()
        ctx["latency_table"] = (text, json.loads(text).get("info", {}).get("build_s", 0.0))
    ctx.setdefault("baseline_json", {})[cell] = (run_dir / "baseline.json").read_text()


def _sensitivity_plan(ctx: dict[str, Any], kind: str, b: float, cfg: dict[str, Any],
                      log: Callable[[str], None], cost: bool = False
                      ) -> tuple[Any, dict[str, Any]]:
    """The sensitivity peer's plan (``_choose`` prunes with it): the per-group drops are
    measured once per process and arch (seed-independent: split seed 0's batches), their
    seconds charged to every cell. ``cost``: weighted by each group's saving
    (:func:`_savings`)."""
    import _regime_peers as peers

    import autoprune as ap
    from autoprune.sensitivity import sensitivity_allocation

    if "sensitivity" not in ctx:
        start = time.perf_counter()
        drops = peers.group_sensitivity(ctx["analysis"], ctx["evaluate"],
                                        ctx["data"].loader(0, ctx["batch"]),
                                        bn_batches=cfg["bn_batches"])
        ctx["sensitivity"] = (drops, time.perf_counter() - start)
        log(f"sensitivity: {len(drops)} groups in {ctx['sensitivity'][1]:.0f} s, drops (pt) "
            + ", ".join(f"{n} {100 * d:.1f}" for n, d in drops.items()))
    drops, secs = ctx["sensitivity"]
    savings, cost_s = _savings(ctx, kind, list(drops), log) if cost else (None, 0.0)
    weights = sensitivity_allocation(drops, savings=savings)
    an, dense, example = ctx["analysis"], ctx["dense"], ctx["example"]
    if kind == "flops":
        start = time.perf_counter()
        plan = ap.fit_budget(dense, example, allocation=weights, flops=b, caps=0.95,
                             importance="l2", analysis=an)
        info: dict[str, Any] = {"search_s": time.perf_counter() - start}
    else:
        plan, info = peers.latency_matched_uniform(an, dense, example, b, ctx["target"],
                                                   round_to=8, iters=cfg["bisect_iters"],
                                                   log=log, allocation=weights)
    info.update(search_s=info["search_s"] + secs + cost_s, sensitivity_drops=drops)
    if savings is not None:
        info["sensitivity_savings"] = savings
    return plan, info


def _savings(ctx: dict[str, Any], kind: str, groups: list[str],
             log: Callable[[str], None]) -> tuple[dict[str, float], float]:
    """What each group alone pruned at 0.5 saves, and the seconds it took: MACs (FLOPs cells)
    or the latency table's prediction (latency cells; the table, as autoprune builds it, is
    built once per process and arch, its seconds charged to every cell)."""
    from autoprune.sensitivity import group_savings

    an = ctx["analysis"]
    if kind == "flops":
        return group_savings(groups, an.macs), 0.0
    if "table" not in ctx:
        from autoprune.latency.layer_table import build_table

        start = time.perf_counter()
        ctx["table"] = (build_table(an, ctx["target"]), time.perf_counter() - start)
        log(f"latency table for sensitivity-cost in {ctx['table'][1]:.0f} s")
    table, secs = ctx["table"]
    return group_savings(groups, table.predict), secs


def _choose(method: str, cfg: dict[str, Any], ctx: dict[str, Any], arch: str, kind: str,
            b: float, seed: int, log: Callable[[str], None]) -> tuple[Any, dict[str, Any]]:
    """The pruned (not yet fine-tuned) model ``method`` picks for the cell, and its info."""
    import _regime_peers as peers
    import numpy as np

    import autoprune as ap
    from autoprune.plan import FitOptions, PruningPlan, Widths, global_ratios

    an, dense = ctx["analysis"], ctx["dense"]
    start = time.perf_counter()
    if method in ("groupnorm-sl", GN_CAP):
        steps = max(1, round(cfg["sl_epochs"] * ctx["epoch_steps"]))
        return peers.groupnorm_recipe(dense, ctx["example"],
                                      ctx["data"].loader(seed * 31 + 7, ctx["batch"]), b, steps,
                                      log, max_ratio=peers.CAPPED_RATIO if method == GN_CAP
                                      else 1.0)
    if method in (SENS, SENS_COST):
        plan, info = _sensitivity_plan(ctx, kind, b, cfg, log, cost=method == SENS_COST)
    elif method in ("uniform-lat", "uniform-lat-depth"):
        plan, info = peers.latency_matched_uniform(
            an, dense, ctx["example"], b, ctx["target"], round_to=8, iters=cfg["bisect_iters"],
            log=log, drop=tuple(an.removable) if method == "uniform-lat-depth" else ())
    elif method == "uniform-l2":
        plan = ap.fit_budget(dense, ctx["example"], allocation=1.0, flops=b, caps=0.95,
                             importance="l2", analysis=an)
        info = {"search_s": time.perf_counter() - start}
    elif method == "global-l2":
        groups, cm = an.groups, an.cost_model
        ratios = global_ratios(an.importance_scores("l2"), Widths.of(cm, groups),
                               b * cm.dense_macs(), FitOptions("macs", np.full(len(groups), 0.95)))
        plan = PruningPlan({g.name: r for g, r in zip(groups, ratios) if r > 0}, "l2")
        info = {"search_s": time.perf_counter() - start}
    else:
        plan, info = _search(method, cfg, ctx, arch, kind, b, seed)
        if plan is not None and method == REFINE:
            plan = _refine(info, cfg, ctx, seed, log)
    if plan is None:
        return None, info
    info["plan"] = plan.to_dict()
    info["engine_flops_ratio"] = an.macs(plan) / an.cost_model.dense_macs()
    return an.apply(plan), info


def _train(model: Any, cfg: dict[str, Any], ctx: dict[str, Any], seed: int,
           epochs: float) -> tuple[Any, int]:
    """Fine-tune ``model`` for ``epochs`` of the training set, seeded batches; (model on the
    CPU in eval mode, steps)."""
    import torch

    from autoprune.pipeline import finetune_model
    from autoprune.settings import FinetuneSettings

    steps = max(1, round(epochs * ctx["epoch_steps"]))
    torch.manual_seed(seed)
    loader = ctx["data"].loader(seed, ctx["batch"])
    model = model.to(cfg["device"])
    finetune_model(model, loader, FinetuneSettings(steps=steps, device=cfg["device"],
                                                   **ctx["ft"]), steps=steps)
    return model.cpu().eval(), steps


def _refine(info: dict[str, Any], cfg: dict[str, Any], ctx: dict[str, Any], seed: int,
            log: Callable[[str], None]) -> Any:
    """The search's best full fine-tunes, each fine-tuned again from the dense prune for
    ``--refine-epochs`` (other batches than the final fine-tune's): the plan best on val."""
    import autoprune as ap

    start = time.perf_counter()
    for cand in info["top"]:
        model = ctx["analysis"].apply(ap.PruningPlan.from_dict(cand["plan"]))
        model, steps = _train(model, cfg, ctx, seed * 7919 + 1, cfg["refine_epochs"])
        cand["refine_val"] = ctx["evaluate"](model, "val")
        log(f"refine: trial {cand['trial']} ({cand['baseline'] or 'sampled'}) search val "
            f"{cand['search_val']:.4f} -> {cand['refine_val']:.4f} after {steps} steps")
    best = max(info["top"], key=lambda c: c["refine_val"])
    info.update(refine_steps=steps, refine_s=time.perf_counter() - start,
                chosen_trial=best["trial"], chosen_val=best["refine_val"],
                chosen_baseline=best["baseline"])
    return ap.PruningPlan.from_dict(best["plan"])


def _finetune(model: Any, cfg: dict[str, Any], ctx: dict[str, Any],
              final_seed: int) -> dict[str, Any]:
    """The final fine-tune (same seed and batches for every method of the cell), then test."""
    start = time.perf_counter()
    model, steps = _train(model, cfg, ctx, final_seed, cfg["final_epochs"])
    return {"test_acc": ctx["evaluate"](model, "test"), "val_acc": ctx["evaluate"](model, "val"),
            "finetune_s": time.perf_counter() - start, "final_steps": steps,
            "final_seed": final_seed}


def _counts(model: Any, ctx: dict[str, Any]) -> dict[str, float]:
    from autoprune.engine.count import count_macs_params

    macs, params = count_macs_params(model, ctx["example"])
    dmacs, dparams = ctx.setdefault("dense_counts", count_macs_params(ctx["dense"],
                                                                     ctx["example"]))
    return {"flops_ratio": macs / dmacs, "params_ratio": params / dparams}


def _pick(cfg: dict[str, Any], ctx: dict[str, Any], key: str, row: dict[str, Any],
          seed: int, final_seed: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Run one method of a cell: pick, fine-tune, count; keep the row and the model."""
    import torch

    try:
        model, info = _choose(row["method"], cfg, ctx, row["arch"], row["kind"], row["budget"],
                              seed, log)
    except Exception as exc:  # a benchmark row, not a crash
        model, info = None, {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    row.update(info)
    if model is not None:
        row.update(_finetune(model, cfg, ctx, final_seed), **_counts(model, ctx))
        Path(cfg["cache"]).mkdir(parents=True, exist_ok=True)
        torch.save(model, Path(cfg["cache"]) / f"{key}.pt")
    keep(cfg, key, row)
    return row


def final_seed_of(cfg: dict[str, Any], arch: str, seed: int, ci: int, kind: str,
                  b: float) -> int:
    """The cell's final fine-tune seed: the one its kept rows were fine-tuned with (any
    method's, run or not this time), so a new method pairs with them whatever the cell's
    position in this run's --flops/--latency list; else ``seed * 1000 + ci``."""
    for method in (*dict.fromkeys((*FLOPS_METHODS, *LATENCY_METHODS)), REFINE):
        row = kept(cfg, row_key(cfg, arch, seed, kind, b, method))
        if row is not None and row.get("final_seed") is not None:
            return int(row["final_seed"])
    return seed * 1000 + ci


def run_cell(cfg: dict[str, Any], ctx: dict[str, Any] | None, arch: str, seed: int, ci: int,
             kind: str, b: float, log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Every method of one cell (``--kept-only``: those kept), then all of them timed
    alternately with dense once (the figures are kept with the rows)."""
    import torch

    from autoprune.latency import time_alternating

    rows, models, keys = [], {}, {}
    final_seed = final_seed_of(cfg, arch, seed, ci, kind, b)
    for method in methods_of(cfg, kind):
        key, digest = row_key(cfg, arch, seed, kind, b, method), _digest(arch, kind, method)
        row = kept_row(cfg, key, digest, _chosen_by(cfg, method))
        if row is None and cfg["kept_only"]:
            continue
        if row is None:
            assert ctx is not None  # only --kept-only runs without the dense model
            if kept(cfg, key) is not None:
                log(f"seed {seed} {kind} {b:g}: {method}: the kept row was searched in another "
                    "space (or before rows recorded it), or picked by another --selection: "
                    "searching again")
            chosen_by = _chosen_by(cfg, method)  # recorded even when the search finds no pick
            base = {"arch": arch, "seed": seed, "kind": kind, "budget": b, "method": method,
                    **({"space_digest": digest} if digest else {}),
                    **({"chosen_by": chosen_by} if chosen_by else {})}
            row = _pick(cfg, ctx, key, base, seed, final_seed, log)
        if row.get("test_acc") is not None:
            model = Path(cfg["cache"]) / f"{key}.pt"  # restored rows have none (nor need
            if ctx is not None and model.is_file():  # one: they keep their timing)
                models[method] = torch.load(model, weights_only=False)
            keys[method] = key
            log(f"seed {seed} {kind} {b:g}: {method:12s} test {row['test_acc']:.4f} "
                f"flops {row['flops_ratio']:.3f} ({row.get('search_s') or 0:.0f} s)")
        else:
            log(f"seed {seed} {kind} {b:g}: {method}: {row.get('error', 'no feasible pick')}")
        rows.append(row)
    if ctx is not None and models and any("latency_ratio" not in r for r in rows
                                          if r["method"] in models):
        timed = time_alternating({"dense": ctx["dense"], **models}, ctx["example"],
                                 ctx["target"], rounds=7, repeats=20)
        for row in rows:
            if row["method"] in timed:
                row["latency_ms"], row["latency_iqr_ms"] = timed[row["method"]]
                row["latency_ratio"] = row["latency_ms"] / timed["dense"][0]
                row["dense_latency_ms"] = timed["dense"][0]
                keep(cfg, keys[row["method"]], row)
    return rows


def _has_work(cfg: dict[str, Any], arch: str, seed: int, kind: str, b: float) -> bool:
    """Whether the cell has a method to run or a kept pick still to time (never with
    --kept-only): only then does its unit need the dense model."""
    if cfg["kept_only"]:
        return False
    rows = [kept_row(cfg, row_key(cfg, arch, seed, kind, b, m), _digest(arch, kind, m),
                     _chosen_by(cfg, m)) for m in methods_of(cfg, kind)]
    return any(r is None or (r.get("test_acc") is not None and "latency_ratio" not in r)
               for r in rows)


def run_unit(cfg: dict[str, Any], arch: str, seed: int, ci: int) -> dict[str, Any]:
    """One cell (index ``ci`` in the --flops/--latency list) of one (arch, seed): its header
    (the dense model's scores) and its methods' rows."""
    import logging

    import optuna
    import torch

    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    logging.basicConfig(level=logging.WARNING)

    def log(msg: str) -> None:
        print(f"[{arch} s{seed} +{time.time() - cfg['t0']:6.0f}s] {msg}", flush=True)

    header = kept(cfg, header_key(cfg, arch, seed))
    kind, b = cells(cfg)[ci]
    ctx = None
    if header is None or _has_work(cfg, arch, seed, kind, b):  # else: no dense model needed
        ctx = _context(cfg, arch, log)
        an, dense = ctx["analysis"], ctx["dense"]
        scores = {"test_acc": ctx["evaluate"](dense, "test"),
                  "val_acc": ctx["evaluate"](dense, "val"), "macs": an.cost_model.dense_macs(),
                  "params": sum(p.numel() for p in dense.parameters())}
        check_dense(header, scores, arch)
        header = {"arch": arch, "seed": seed, "sizes": ctx["data"].sizes(), "dense": scores}
        keep(cfg, header_key(cfg, arch, seed), header)
    return {**header, "runs": run_cell(cfg, ctx, arch, seed, ci, kind, b, log)}


def run_proxy(cfg: dict[str, Any], arch: str) -> dict[str, Any]:
    """The proxy study: every cheap score's rho against the full fine-tune, beside the full
    fine-tune's rho with itself under another seed (the noise ceiling). Kept like a cell."""
    import _quality_data as qd

    key = proxy_key(cfg, arch)
    study = kept(cfg, key)
    if study is not None or cfg["kept_only"]:
        return study or {"arch": arch, "proxy": None}

    def log(msg: str) -> None:
        print(f"[proxy {arch} +{time.time() - cfg['t0']:6.0f}s] {msg}", flush=True)

    ctx = _context(cfg, arch, log)
    study = qd.proxy_study(ctx["analysis"], ctx["data"], SPACES[arch], cfg["proxy_budget"],
                           cfg["proxy_candidates"], 0, cfg["search_steps"], [0.35],
                           ctx["ft"]["lr"], log, cfg["device"], ctx["ft"]["optimizer"],
                           ctx["ft"]["weight_decay"], ceiling=True, distill=True,
                           batch=ctx["batch"], bn_batches=cfg["bn_batches"])
    out = {"arch": arch, "proxy": study}
    keep(cfg, key, out)
    return out


def run_all(cfg: dict[str, Any]) -> list[dict[str, Any]]:
    """Every (arch, seed, cell) unit and the proxy study over ``--jobs`` processes (one cell
    per unit, so a short run's cells run side by side); one result per (arch, seed), its rows
    in cell order."""
    seeds = range(cfg["first_seed"], cfg["first_seed"] + cfg["seeds"])
    units: list[tuple[Any, ...]] = [(run_unit, cfg, arch, s, ci) for s in seeds
                                    for arch in cfg["arch"] for ci in range(len(cells(cfg)))]
    if cfg["proxy_arch"] != "none" and cfg["proxy_candidates"]:
        units.append((run_proxy, cfg, cfg["proxy_arch"]))
    jobs = max(1, min(cfg["jobs"], len(units)))
    if jobs == 1:
        return merge_units([fn(*rest) for fn, *rest in units])
    with ProcessPoolExecutor(jobs, mp_context=get_context("spawn"),
                             initializer=die_with_parent) as pool:
        futures = [pool.submit(fn, *rest) for fn, *rest in units]
        return merge_units([f.result() for f in futures])


def merge_units(outputs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The cells of each (arch, seed) as one result (header once, rows in the given order);
    proxy studies as they are."""
    merged: dict[tuple[str, int], dict[str, Any]] = {}
    out: list[dict[str, Any]] = []
    for res in outputs:
        if "runs" not in res:
            out.append(res)
        elif (res["arch"], res["seed"]) in merged:
            merged[res["arch"], res["seed"]]["runs"] += res["runs"]
        else:
            merged[res["arch"], res["seed"]] = {**res, "runs": list(res["runs"])}
            out.append(merged[res["arch"], res["seed"]])
    return out


# -- report -------------------------------------------------------------------------------------
def _versions() -> str:
    import optuna
    import torch
    import torch_pruning

    return (f"torch {torch.__version__} · torch-pruning {torch_pruning.__version__} · "
            f"optuna {optuna.__version__}")


def _fmt(mean: float, half: float, scale: float = 100.0) -> str:
    if mean != mean:  # NaN
        return "n/a"
    if half != half:
        return f"{mean * scale:+.2f}"
    return f"{mean * scale:+.2f} [{(mean - half) * scale:+.2f}, {(mean + half) * scale:+.2f}]"


def verdicts(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per (arch, cell): autoprune minus each peer over paired seeds, with 95 % intervals."""
    import _regime_peers as peers

    runs = [r for res in results for r in res.get("runs", [])]
    out = []
    for arch in dict.fromkeys(r["arch"] for r in runs):
        for kind, b in dict.fromkeys((r["kind"], r["budget"]) for r in runs if r["arch"] == arch):
            sel = [r for r in runs if (r["arch"], r["kind"], r["budget"]) == (arch, kind, b)
                   and r.get("test_acc") is not None]
            acc = {m: {r["seed"]: r for r in sel if r["method"] == m}
                   for m in dict.fromkeys(r["method"] for r in sel)}
            for us in (m for m in OURS if m in acc):  # ours against the peers; a variant of
                for method in (m for m in acc if m not in OURS  # ours against autoprune
                               or (us != "autoprune" and m == "autoprune")):
                    pairs = [(acc[us][s], acc[method][s]) for s in sorted(acc[us])
                             if s in acc[method]]
                    same = [(a, c) for a, c in pairs if a.get("final_seed") == c.get("final_seed")]
                    diffs = [a["test_acc"] - c["test_acc"] for a, c in same]
                    mean, half = peers.paired_interval(diffs)
                    out.append({"arch": arch, "kind": kind, "budget": b, "ours": us,
                                "peer": method, "n": len(diffs), "diff": mean, "half": half,
                                "diffs": diffs, "unpaired": len(pairs) - len(same),
                                "over": len(_over_budget([c for _, c in same]))})
    return out


def proxy_lines(results: list[dict[str, Any]]) -> list[str]:
    """The proxy study's table: each score's rho against the full fine-tune, and its share of
    the noise ceiling."""
    lines = []
    for res in results:
        sp = res.get("proxy")
        if not sp:
            continue
        ceiling = sp["rho_ceiling"]
        bn = sp.get("bn_batches", BN_BATCHES)  # studies kept before the flag used the default
        scores = {f"adaptive-BN proxy ({bn} batches)": sp["rho_proxy"], **sp["rho_short"],
                  f"full fine-tune, another seed ({sp['full_steps']} steps): the ceiling":
                  ceiling}
        lines += ["", f"## Proxy study: {res['arch']}, FLOPs {sp['budget']:g}", "",
                  f"{sp['n']} random candidates of the `{sp['space']}` space fitted onto the "
                  f"budget, each scored from a fresh prune on val; rho against the full search "
                  f"fine-tune ({sp['full_steps']} steps). The same full fine-tune under another "
                  "seed (other batches) gives the noise ceiling. '+kd': distilled from the "
                  f"dense model. {sp['seconds'] / 60:.0f} min.", "",
                  "| score | rho vs full fine-tune | share of the ceiling |", "|---|---|---|"]
        for name, rho in scores.items():
            share = rho / ceiling if ceiling and ceiling == ceiling and rho == rho else None
            lines.append(f"| {name} | {rho:.3f} | "
                         f"{'' if share is None else f'{share:.2f}'} |")
    return lines


def _over_budget(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The FLOPs-cell rows whose model is over their budget (by more than ``OVER_BUDGET``)."""
    return [r for r in rows if r["kind"] == "flops" and r.get("flops_ratio") is not None
            and r["flops_ratio"] > r["budget"] * OVER_BUDGET]


def _mark(kind: str, rows: list[dict[str, Any]]) -> str:
    """The footnote of a FLOPs row of a search (``SEARCHES``) measured with an earlier one (none:
    current; peers, the sensitivity ones included, run no search and carry no baselines)."""
    ours = [r for r in rows if r["method"] in SEARCHES]
    if kind != "flops" or not ours:
        return ""
    if any("global_baseline" not in r for r in ours):
        return "†"
    return "‡" if any("baselines_kind" not in r for r in ours) else ""


def accuracy_lines(runs: list[dict[str, Any]], cfg: dict[str, Any]) -> list[str]:
    """The table of test accuracy per (arch, cell, method), with the footnotes of rows made by
    earlier searches."""
    from _quality_data import mean_std

    lines = ["", "## Test accuracy after the same final fine-tune", "",
             "Mean ± std over seeds. Latency ratio: measured, to dense, alternately timed.", "",
             "| arch | budget | method | test acc % | FLOPs % | latency ratio | search s |",
             "|---|---|---|---|---|---|---|"]
    marks: set[str] = set()
    for arch in cfg["arch"]:
        for kind, b in cells(cfg):
            for method in methods_of(cfg, kind):
                rs = [r for r in runs if (r["arch"], r["kind"], r["budget"], r["method"])
                      == (arch, kind, b, method)]
                ok = [r for r in rs if r.get("test_acc") is not None]
                if not rs:
                    continue
                mark = _mark(kind, rs) + ("◊" if _over_budget(ok) else "")
                marks.update(mark)
                lines.append(f"| {arch} | {kind} {b:g} | {method}{mark} | "
                             f"{mean_std([r['test_acc'] for r in ok])} | "
                             f"{mean_std([r['flops_ratio'] for r in ok], 100, 1)} | "
                             f"{mean_std([r.get('latency_ratio') for r in ok], 1, 3)} | "
                             f"{mean_std([r.get('search_s') for r in rs], 1, 0)} |")
    if "†" in marks:
        lines += ["", "† measured before autoprune's global-ranking baseline was the exact "
                  "global ranking (before it was the nearest point in the space's parameters, or "
                  "skipped where the space's caps could not reach the budget); latency cells are "
                  "unaffected."]
    if "‡" in marks:
        lines += ["", "‡ measured before autoprune's baselines were torch-pruning's one-liners "
                  "(uniform and global ranking capped at 0.95 only; before, both were held to "
                  "the space's caps); latency cells are unaffected."]
    if "◊" in marks:
        lines += ["", "◊ over the FLOPs budget on at least one seed (its FLOPs % column): it "
                  "did not meet the budget there, and its comparisons are flagged below."]
    return lines


def report(results: list[dict[str, Any]], cfg: dict[str, Any], wall: float) -> str:
    import _quality_data as qd

    runs = [r for res in results for r in res.get("runs", [])]
    units = [res for res in results if "runs" in res]
    sizes = units[0]["sizes"] if units else {}
    lines = [f"# Search quality where users deploy{' (quick)' if cfg['quick'] else ''}", "",
             f"`{cfg['command']}`", "",
             f"{datetime.datetime.now():%Y-%m-%d %H:%M} · {platform.platform()} · "
             f"{os.cpu_count()} CPUs · {_versions()} · total wall {wall / 60:.1f} min "
             f"({cfg['jobs']} processes, 1 torch thread each)", "", "## Setup", "",
             f"- data: Fashion-MNIST, train {sizes.get('train')}, val {sizes.get('val')} "
             f"(carved from the training set; searches select on it), test {sizes.get('test')} "
             "(scored once, after the final fine-tune)",
             f"- seeds {cfg['first_seed']}..{cfg['first_seed'] + cfg['seeds'] - 1}: searches "
             "and the final fine-tune; one dense model per arch (split seed 0)",
             f"- searches: {cfg['trials']} full fine-tunes x {cfg['search_steps']} steps; "
             "autoprune with its defaults (TPE, staged screening, priors)"
             + ("" if cfg.get("bn_batches", BN_BATCHES) == BN_BATCHES else
                f" but BatchNorm re-estimated on {cfg['bn_batches']} batches before a score, "
                f"not {BN_BATCHES}") + "; random: random sampler, no screening, no priors",
             "- autoprune's pick among its fully fine-tuned trials: " + (
                 "the one-standard-error rule (a one-liner baseline within one binomial "
                 "standard error of the best validation accuracy, uniform first; rows "
                 "recording `chosen_by` best-val, or none, were picked on validation alone)"
                 if cfg.get("selection") == "one-se" else "the best validation accuracy"),
             f"- final fine-tune: {cfg['final_epochs']:g} epochs of the training set, same seed "
             "and batches for every method of a cell",
             *([f"- group-norm recipe: {cfg['sl_epochs']:g} epoch(s) of sparsity learning "
                "(reg 5e-4, lr 0.01) on the dense model before progressive pruning, then the "
                "same final fine-tune: it trains longer than the others"]
               if cfg["flops"] else []),
             *(["- autoprune-depth in FLOPs cells: autoprune with `--depth on` (which residual "
                "blocks go is searched too; the uniform plan without all of them joins the "
                "baselines)"] if cfg["flops"] and DEPTH in methods_of(cfg, "flops") else []),
             "- latency-matched uniform: the uniform L2 plan (widths rounded to 8) with the "
             f"largest FLOPs share whose latency, timed alternately with dense, meets the "
             f"budget: bisection over the share, {cfg['bisect_iters']} timings per seed"
             + ("; uniform-lat-depth: the same on the model without its residual blocks; "
                "autoprune-depth: autoprune with `--depth latency` (which residual blocks go is "
                "searched too)" if cfg["latency"] and DEPTH in methods_of(cfg, "latency") else ""),
             f"- latency: batch 1, {cfg['latency_runtime']}, 1 thread, every model of a cell "
             "timed alternately with dense after its fine-tune (7 rounds x 20 runs, medians); "
             "latency cells: widths rounded to 8 for every method; FLOPs cells: unrounded", ""]
    lines += ["## Dense models", "", "| arch | shape | test acc % | val acc % | MMACs | "
              "params k |", "|---|---|---|---|---|---|"]
    for res in {r["arch"]: r for r in units}.values():
        d = res["dense"]
        lines.append(f"| {res['arch']} | {qd.ARCHS[res['arch']].shape} | "
                     f"{d['test_acc'] * 100:.2f} | {d['val_acc'] * 100:.2f} | "
                     f"{d['macs'] / 1e6:.2f} | {d['params'] / 1e3:.1f} |")
    lines += accuracy_lines(runs, cfg)
    lines += ["", "## autoprune minus each peer", "",
              "Paired by seed (the same final fine-tune seed and batches), points, mean "
              "[95 % t-interval].", "",
              "| arch | budget | ours | peer | n | ours − peer | per seed |",
              "|---|---|---|---|---|---|---|"]
    for v in verdicts(results):
        lines.append(f"| {v['arch']} | {v['kind']} {v['budget']:g} | {v['ours']} | "
                     f"{v['peer']} | {v['n']} | "
                     f"{_fmt(v['diff'], v['half'])} | "
                     + " / ".join(f"{d * 100:+.2f}" for d in v["diffs"])
                     + (f" ({v['unpaired']} seed(s) left out: fine-tuned with other seeds)"
                        if v["unpaired"] else "")
                     + (f" (the peer is over the budget on {v['over']} seed(s): not a "
                        "comparison at equal FLOPs)" if v.get("over") else "") + " |")
    lines += proxy_lines(results)
    errors = [f"{r['arch']} seed {r['seed']} {r['kind']} {r['budget']:g} {r['method']}: "
              f"{r.get('error') or NO_PICK.get(r['method'], 'no feasible full fine-tune')}"
              for r in runs if r.get("test_acc") is None]
    if errors:
        lines += ["", "Without a result:", "", *[f"- {e}" for e in errors]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    cfg["t0"] = time.time()
    cfg["command"] = "python " + shlex.join(["benchmarks/search_regime.py", *sys.argv[1:]])
    print(f"search regime: {args.arch}, cells {cells(cfg)}, seeds {args.seeds}, "
          f"{args.jobs} process(es)", flush=True)
    if args.restore:
        print(f"restored {restore(cfg, args.restore)} kept results from {args.restore}",
              flush=True)
    try:
        results = run_all(cfg)
    except DenseMismatch as exc:
        sys.exit(f"search_regime: {exc}")
    wall = time.time() - cfg["t0"]
    text = report(results, cfg, wall)
    print("\n" + text, flush=True)
    save_report(Path(args.out), text, {"config": {k: v for k, v in cfg.items() if k != "t0"},
                                       "wall_s": wall, "results": results,
                                       "verdicts": verdicts(results)})


if __name__ == "__main__":
    main()
