"""Where torch-pruning's group-norm recipe puts its pruning, beside the uniform plan: one
(arch, FLOPs budget, seed) of ``search_regime.py``, the same dense model and batches.

Prints the validation accuracy of the dense model, after the recipe's sparsity learning and
after its pruning (before any fine-tune), and each conv's share of its channels kept by the
recipe (uncapped and ``--cap``) and by the uniform L2 plan. No fine-tune, no test set::

    python benchmarks/groupnorm_layers.py --arch vgg8 --flops 0.3 --seed 0
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="vgg8", choices=["resnet20", "mbv2", "vgg8"])
    p.add_argument("--flops", type=float, default=0.3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cap", type=float, default=0.7, help="max_pruning_ratio of the capped run")
    p.add_argument("--data-dir", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--out", help="also write the printed lines to this markdown file")
    args = p.parse_args(argv)

    import _regime_peers as peers
    import search_regime as sr

    import autoprune as ap

    lines = [f"`python benchmarks/groupnorm_layers.py {' '.join(argv or sys.argv[1:])}`", ""]

    def say(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    # search_regime's own data, dense model, evaluation and batch (one torch thread)
    ctx = sr._context(vars(sr.parse_args(["--arch", args.arch, "--data-dir", args.data_dir])),
                      args.arch, print)
    data, dense, evaluate, example = ctx["data"], ctx["dense"], ctx["evaluate"], ctx["example"]
    batch, an = ctx["batch"], ctx["analysis"]
    steps = ctx["epoch_steps"]  # one epoch, as search_regime's --sl-epochs 1
    say(f"{args.arch} at {args.flops:.0%} FLOPs, seed {args.seed}: dense val "
        f"{evaluate(dense, 'val'):.4f}")
    kept = {}
    for cap in (1.0, args.cap):
        model, info = peers.groupnorm_recipe(
            dense, example, data.loader(args.seed * 31 + 7, batch), args.flops, steps,
            max_ratio=cap, log=say, after_sl=lambda m, cap=cap: say(
                f"- max ratio {cap}: val after sparsity learning {evaluate(m, 'val'):.4f}"))
        say(f"- max ratio {cap}: val pruned, before any fine-tune {evaluate(model, 'val'):.4f}")
        kept[f"group-norm {cap}"] = info["kept"]
    plan = ap.fit_budget(dense, example, allocation=1.0, flops=args.flops, caps=0.95,
                         importance="l2", analysis=an)
    kept["uniform"] = peers.conv_kept(an.apply(plan), dense)
    say("")
    say("| conv | " + " | ".join(kept) + " |")
    say("|---|" + "---|" * len(kept))
    for n in kept["uniform"]:
        say(f"| {n} | " + " | ".join(f"{k[n]:.2f}" for k in kept.values()) + " |")
    say("| min / median | " + " | ".join(
        f"{min(k.values()):.2f} / {statistics.median(k.values()):.2f}" for k in kept.values())
        + " |")
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
