"""Give saved pruning plans ``benchmarks/search_regime.py``'s final fine-tune, and test them.

    python benchmarks/finetune_plans.py --arch mbv2 --jobs 2 \\
        RUN/plans/2.json:3000 OTHER_RUN/plans/18.json:2000

Each ``PLAN.json:SEED`` (a plan as a run directory's ``plans/N.json`` holds it, and the final
fine-tune seed of the cell it is compared in: ``final_seed`` in that cell's kept rows) is
applied to the committed / cached dense model and fine-tuned exactly as ``search_regime.py``
fine-tunes every method of a cell (2 epochs of the training set, that seed's batches), then
scored on the test and validation splits. For "what would this cell have scored had the
search picked that plan" without re-running the search: a plan the search did pick reproduces
its row's test accuracy to the last image (MobileNetV2 latency 0.5 seed 4, trial 17: 91.98 %
in its row and with the calls this script makes; ``benchmarks/results/drift_replay_median.md``).
Prints a table and writes ``--out`` (JSON). One torch thread per process.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import search_regime as sr


def _one(job: tuple[str, str, int, str]) -> dict[str, Any]:
    import torch

    import autoprune as ap

    arch, path, seed, cache = job
    torch.set_num_threads(1)
    args = sr.parse_args(["--arch", arch, "--cache", cache, "--out", str(Path(cache) / "x.md")])
    cfg = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    ctx = sr._context(cfg, arch, lambda msg: None)
    plan = ap.PruningPlan.from_dict(json.loads(Path(path).read_text()))
    start = time.perf_counter()
    out = sr._finetune(ctx["analysis"].apply(plan), cfg, ctx, seed)
    row = {"plan": path, "final_seed": seed, "test_acc": out["test_acc"],
           "val_acc": out["val_acc"], "finetune_s": time.perf_counter() - start}
    print(f"{path} seed {seed}: test {row['test_acc']:.4f} val {row['val_acc']:.4f} "
          f"({row['finetune_s']:.0f} s)", flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("plans", nargs="+", metavar="PLAN.json:SEED")
    p.add_argument("--arch", default="mbv2")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--cache", default="/tmp/finetune_plans", help="dense-model cache")
    p.add_argument("--out", default="finetune_plans.json")
    args = p.parse_args(argv)
    jobs = []
    for spec in args.plans:
        path, sep, seed = spec.rpartition(":")
        if not sep or not seed.isdigit() or not Path(path).is_file():
            p.error(f"plan {spec!r}: expected PLAN.json:SEED with an existing plan file "
                    "(e.g. run/plans/2.json:3000)")
        jobs.append((args.arch, path, int(seed), args.cache))
    with Pool(max(1, args.jobs)) as pool:
        rows = pool.map(_one, jobs, chunksize=1)
    print("\n| plan | final seed | test % | val % |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['plan']} | {r['final_seed']} | {100 * r['test_acc']:.2f} | "
              f"{100 * r['val_acc']:.2f} |")
    Path(args.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
