"""Prune a Hugging Face model inside ``Trainer``: ``autoprune.integrations.hf.PruneCallback``.

A small BERT (random init, built from a config: nothing is downloaded) learns a synthetic
sequence task; the callback prunes its feed-forward widths to 70 % of the parameters, halfway at
step 40 and fully at step 80, while the Trainer keeps training. The last checkpoint is then
rebuilt with ``load_pruned_checkpoint`` and gives the same logits.

    python examples/hf_prune.py [--out hf_prune_out]
"""

from __future__ import annotations

import argparse

import torch
import transformers

import autoprune as ap
from autoprune.integrations.hf import PruneCallback, load_pruned_checkpoint

VOCAB, LENGTH = 64, 16


def sequences(n: int, seed: int) -> list[dict[str, torch.Tensor | int]]:
    """Label 1 when the sequence holds more small token ids than large ones."""
    ids = torch.randint(1, VOCAB, (n, LENGTH), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": row, "labels": int((row < VOCAB // 2).sum() > LENGTH // 2)}
            for row in ids]


def accuracy(model: torch.nn.Module, data: list[dict[str, torch.Tensor | int]]) -> float:
    model.eval()
    ids = torch.stack([d["input_ids"] for d in data])  # type: ignore[misc]
    labels = torch.tensor([d["labels"] for d in data])
    with torch.no_grad():
        return float((model(input_ids=ids).logits.argmax(1) == labels).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="hf_prune_out", help="Trainer output_dir")
    out = parser.parse_args().out
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, intermediate_size=256,
                                     max_position_embeddings=LENGTH, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    example = {"input_ids": torch.zeros(1, LENGTH, dtype=torch.long)}
    # prune only the feed-forward layers: attention heads are not pruned by autoprune yet
    analysis = ap.analyze(model, example)
    ffn = [g.name for g in analysis.groups if g.name.endswith("intermediate.dense")]
    plan = ap.fit_budget(model, example, dict.fromkeys(ffn, 1.0), params=0.7, analysis=analysis)
    callback = PruneCallback(plan, example, at_steps=[40, 80])
    args = transformers.TrainingArguments(
        output_dir=out, max_steps=120,
        per_device_train_batch_size=32, learning_rate=2e-3, warmup_steps=10, logging_steps=40,
        save_steps=120, report_to="none", use_cpu=True, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=sequences(1024, 0),
                                   callbacks=[callback])
    trainer.train()
    for event in callback.history:
        print(f"step {event['step']}: pruned to {event['flops_ratio']:.1%} of the dense FLOPs")
    widths = {name: dict(model.named_modules())[name].out_features for name in ffn}
    print("feed-forward widths:", widths, f"(dense {config.intermediate_size})")
    test = sequences(512, 1)
    print(f"test accuracy of the pruned model: {accuracy(model, test):.2%}")
    rebuilt = load_pruned_checkpoint(transformers.BertForSequenceClassification(config),
                                     f"{out}/checkpoint-120")
    ids = torch.stack([d["input_ids"] for d in test[:8]])  # type: ignore[misc]
    model.eval()
    rebuilt.eval()
    with torch.no_grad():
        same = torch.equal(rebuilt(input_ids=ids).logits, model(input_ids=ids).logits)
    print(f"reloaded {out}/checkpoint-120 with load_pruned_checkpoint: identical logits {same}")


if __name__ == "__main__":
    main()
