"""How cheap the analytic cost model makes budget fitting (issue: pruning core).

Prints, for a torchvision model at 224x224: time to build the groups (one trace), one
``apply_plan`` + torch-pruning count, ``fit_budget`` to a FLOPs budget on the built analysis, and
the analytic-vs-counted MACs error. Medians over repeats; ratios are what to quote.

    python benchmarks/core.py [--model resnet50] [--size 224] [--flops 0.4] [--repeats 5]
"""

from __future__ import annotations

import argparse
import sys

import torch
import torch_pruning as tp
import torchvision
from _common import timed, write

import autoprune as ap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet50")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--flops", type=float, default=0.4)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.manual_seed(0)
    model = torchvision.models.get_model(args.model, weights=None).eval()
    x = torch.randn(1, 3, args.size, args.size)
    t_groups, analysis = timed(lambda: ap.analyze(model, x), args.repeats)
    t_fit, plan = timed(lambda: ap.fit_budget(model, x, 1.0, flops=args.flops,
                                              analysis=analysis), args.repeats)

    def apply_and_count():
        pruned = analysis.apply(plan)
        return tp.utils.count_ops_and_params(pruned, x)

    t_apply, (macs, _params) = timed(apply_and_count, args.repeats)
    dense_macs = analysis.cost_model.dense_macs()
    err = abs(analysis.macs(plan) - macs) / macs
    rows = [
        ("groups", f"{len(analysis.groups)}"),
        ("build groups (trace)", f"{t_groups * 1000:.1f} ms"),
        ("apply_plan + count", f"{t_apply * 1000:.1f} ms"),
        (f"fit_budget to flops {args.flops}", f"{t_fit * 1000:.2f} ms"),
        ("fit_budget / (apply_plan + count)", f"{t_fit / t_apply:.4f}"),
        ("counted FLOPs ratio after fit", f"{macs / dense_macs:.4f}"),
        ("analytic vs counted MACs error", f"{err:.2e}"),
    ]
    table = "| measure | value |\n|---|---|\n" + "\n".join(f"| {a} | {b} |" for a, b in rows)
    print(table)
    path = write(f"core_{args.model}.md", "python " + " ".join(sys.argv), table)
    print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
