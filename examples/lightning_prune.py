"""Prune inside a Lightning ``Trainer``, gradually, and reload the pruned model from its checkpoint.

    python examples/lightning_prune.py            # single device (CPU or GPU)
    python examples/lightning_prune.py --ddp 2    # DDP over 2 processes (gloo on CPU)

``PruneCallback`` prunes ``self.model`` at the given global steps, swaps the pruned parameters
into Lightning's optimizers (schedulers keep working), rebuilds DDP around the pruned module and
writes the plan + kept channels into checkpoints; ``PrunableModule`` rebuilds the pruned shapes in
``load_from_checkpoint``.
"""

from __future__ import annotations

import argparse

import lightning.pytorch as pl
import torch
from _digits import SmallCNN, accuracy, loaders
from torch import nn

import autoprune as ap
from autoprune.integrations.lightning import PrunableModule, PruneCallback


class DigitsModule(PrunableModule):  # instead of pl.LightningModule: checkpoints keep the shapes
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = SmallCNN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.log("train_loss", loss)
        return loss

    def configure_optimizers(self) -> dict:
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=60)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ddp", type=int, default=0, help="DDP processes (default: no DDP)")
    parser.add_argument("--steps", type=int, default=60, help="training steps (default: 60)")
    args = parser.parse_args()
    pl.seed_everything(0, verbose=False)
    train_loader, val_loader, test_loader = loaders()
    module = DigitsModule()
    example = torch.zeros(1, 1, 8, 8)
    plan = ap.fit_budget(module.model, example, 1.0, flops=0.3)  # uniform, 30 % of the FLOPs
    prune = PruneCallback(plan, example, at_steps=[10, 20])  # half the way at 10, all at 20
    trainer = pl.Trainer(max_steps=args.steps, accelerator="cpu",
                         devices=args.ddp or 1, strategy="ddp" if args.ddp else "auto",
                         callbacks=[prune], logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False)
    trainer.fit(module, train_loader)
    trainer.save_checkpoint("pruned.ckpt")
    if trainer.global_rank != 0:
        return
    for event in prune.history:
        print(f"step {event['step']}: pruned to {event['flops_ratio']:.1%} of the dense FLOPs")
    cost = ap.measure(module.model, example)
    print(f"final: {cost.macs / 1e6:.3f} MMACs, {cost.params / 1e3:.1f} k params, "
          f"val {accuracy(module.model, val_loader):.2%}, "
          f"test {accuracy(module.model, test_loader):.2%}")
    again = DigitsModule.load_from_checkpoint("pruned.ckpt").eval()
    x = next(iter(test_loader))[0]
    with torch.no_grad():
        same = torch.equal(again(x), module.eval()(x))
    print(f"reloaded: {'same outputs' if same else 'DIFFERENT outputs'} from pruned.ckpt")


if __name__ == "__main__":
    main()
