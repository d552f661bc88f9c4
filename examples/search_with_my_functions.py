"""autoprune calls *your* fine-tune and evaluate functions: ``ap.search``.

    python examples/search_with_my_functions.py [--trials 12]
"""

from __future__ import annotations

import argparse

import torch
from _digits import SmallCNN, accuracy, loaders, train

import autoprune as ap


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--out", default="results/example-search")
    args = parser.parse_args()
    torch.manual_seed(0)
    train_loader, val_loader, test_loader = loaders()
    model = SmallCNN()
    train(model, train_loader, steps=300)
    print(f"dense: val {accuracy(model, val_loader):.2%}, test {accuracy(model, test_loader):.2%}")

    def my_finetune(candidate: torch.nn.Module, steps: int) -> None:
        train(candidate, train_loader, steps, lr=0.02)

    def my_evaluate(candidate: torch.nn.Module, split: str = "val") -> float:
        return accuracy(candidate, val_loader if split == "val" else test_loader)

    result = ap.search(
        model, torch.zeros(1, 1, 8, 8), evaluate=my_evaluate, finetune=my_finetune,
        train_loader=train_loader, budget=ap.Budget(flops=0.3), trials=args.trials,
        run_dir=args.out, finetune_settings=ap.FinetuneSettings(steps=60),
        settings=ap.SearchSettings(progress=True))
    tuned = sum(r.state == "COMPLETE" for r in result.trials)
    screened = sum(r.state == "SCREENED" for r in result.trials)
    print(f"\nfront of {tuned} fine-tuned trials, {screened} more screened out "
          f"({result.run_dir}):")
    for t in result.front:
        print(f"  trial {t.trial}: val {t.val_acc:.2%} test {t.test_acc:.2%} "
              f"at {t.flops_ratio:.1%} FLOPs {t.baseline or ''}")


if __name__ == "__main__":
    main()
