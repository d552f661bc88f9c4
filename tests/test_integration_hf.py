"""Hugging Face Trainer integration: PruneCallback prunes real transformers models (a tiny
ResNetForImageClassification; a tiny BERT's feed-forward widths; random init, no downloads) in
place at two global steps, keeps the accelerate-wrapped optimizer valid, saves the pruning with
each checkpoint, and load_pruned_checkpoint rebuilds a checkpoint exactly. The README's Hugging
Face snippet runs here too."""

from __future__ import annotations

import math
import os
import re
from pathlib import Path
from typing import Any

import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import autoprune as ap  # noqa: E402
from autoprune.errors import ConfigError  # noqa: E402
from autoprune.integrations.hf import (  # noqa: E402
    PLAN_FILE,
    PruneCallback,
    load_pruned_checkpoint,
    unwrap_optimizer,
)

pytestmark = pytest.mark.slow  # every test here runs a Trainer end to end (a few seconds each)

STEPS, PRUNE_AT, SAVE_EVERY = 30, [10, 20], 15
X = torch.zeros(1, 3, 16, 16)


def tiny_resnet(seed: int) -> Any:
    torch.manual_seed(seed)
    config = transformers.ResNetConfig(num_channels=3, embedding_size=16, hidden_sizes=[16, 32],
                                       depths=[1, 1], layer_type="basic", num_labels=4)
    return transformers.ResNetForImageClassification(config)


class Blobs(torch.utils.data.Dataset):
    """Four separable classes of random 16x16 images, as the dicts the Trainer collates."""

    def __init__(self, n: int, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(0, 4, (n,), generator=g)
        self.x = torch.randn(n, 3, 16, 16, generator=g) * 0.3
        for c in range(4):
            self.x[self.y == c, c % 3] += 1.0 + 0.4 * c

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"pixel_values": self.x[i], "labels": self.y[i]}


class Snapshot(transformers.TrainerCallback):
    """Copies every parameter right after the last pruning event (runs after PruneCallback)."""

    def __init__(self, step: int) -> None:
        self.step, self.params = step, {}

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            self.params = {n: p.detach().clone() for n, p in model.named_parameters()}


def make_trainer(model: Any, out: Path, callbacks: list[Any], max_steps: int) -> Any:
    args = transformers.TrainingArguments(
        output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=16,
        learning_rate=3e-3, warmup_steps=2, logging_steps=1, save_strategy="steps",
        save_steps=SAVE_EVERY, report_to="none", use_cpu=True, disable_tqdm=True,
        dataloader_num_workers=0, seed=0)
    return transformers.Trainer(model=model, args=args, train_dataset=Blobs(256, 0),
                                callbacks=callbacks)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("hf")
    model = tiny_resnet(0)
    analysis = ap.analyze(tiny_resnet(0), X)
    plan = ap.fit_budget(model, X, 1.0, flops=0.4, analysis=analysis)
    targets = dict(zip([g.name for g in analysis.groups], analysis.kept(plan)))
    dense = {g.name: g.channels for g in analysis.groups}
    callback = PruneCallback(plan, X, at_steps=PRUNE_AT)
    snapshot = Snapshot(PRUNE_AT[-1])
    trainer = make_trainer(model, out, [callback, snapshot], STEPS)
    trainer.train()
    return {"out": out, "trainer": trainer, "callback": callback, "plan": plan,
            "targets": targets, "dense": dense, "snapshot": snapshot}


def out_channels(model: torch.nn.Module, names: list[str]) -> dict[str, int]:
    modules = dict(model.named_modules())
    return {n: modules[n].out_channels for n in names}


def test_trainer_prunes_gradually_and_keeps_the_optimizer_valid(trained):
    trainer, callback, targets = trained["trainer"], trained["callback"], trained["targets"]
    model = trainer.model
    assert any(targets[n] < trained["dense"][n] for n in targets)
    assert out_channels(model, list(targets)) == targets  # the plan's channel counts, exactly
    assert [h["step"] for h in callback.history] == PRUNE_AT
    ratios = [h["flops_ratio"] for h in callback.history]
    assert 0.4 < ratios[0] < 1.0 and ratios[1] <= 0.4 * 1.01  # gradual: halfway, then the plan
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == STEPS and all(math.isfinite(v) for v in losses)
    # the accelerate-wrapped optimizer, its real optimizer and the scheduler's all hold exactly
    # the model's current parameters, with state of matching shapes
    params = [id(p) for p in model.parameters()]
    real = unwrap_optimizer(trainer.optimizer)
    assert real is not trainer.optimizer and isinstance(real, torch.optim.Optimizer)
    for opt in (trainer.optimizer, real, unwrap_optimizer(trainer.lr_scheduler.optimizer)):
        held = [id(p) for g in opt.param_groups for p in g["params"]]
        assert sorted(held) == sorted(params) and len(held) == len(set(held))
    for p, state in real.state.items():
        for value in state.values():
            if torch.is_tensor(value) and value.dim():
                assert value.shape == p.shape
    # every parameter, pruned ones included, kept training after the last pruning event
    after = dict(model.named_parameters())
    frozen = [n for n, p in trained["snapshot"].params.items() if torch.equal(p, after[n])]
    assert frozen == []


def test_checkpoint_reloads_pruned_shapes_and_identical_outputs(trained):
    out, trainer, targets = trained["out"], trained["trainer"], trained["targets"]
    final = out / f"checkpoint-{STEPS}"
    assert (final / PLAN_FILE).is_file()
    fresh = load_pruned_checkpoint(tiny_resnet(1), final)
    assert out_channels(fresh, list(targets)) == targets
    x = torch.randn(5, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    trainer.model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(x).logits, trainer.model(x).logits)
    # the checkpoint between the two events holds the halfway shapes
    middle = load_pruned_checkpoint(tiny_resnet(2), out / f"checkpoint-{SAVE_EVERY}")
    halfway = out_channels(middle, list(targets))
    assert halfway != targets and all(
        targets[n] <= halfway[n] <= trained["dense"][n] for n in targets)
    # a model that is not the one the Trainer started from is refused in one line
    other = transformers.ResNetForImageClassification(transformers.ResNetConfig(
        num_channels=3, embedding_size=8, hidden_sizes=[8, 8], depths=[1, 1],
        layer_type="basic", num_labels=4))
    with pytest.raises(ConfigError, match="dense model the Trainer started from"):
        load_pruned_checkpoint(other, final)
    with pytest.raises(ConfigError, match=PLAN_FILE):
        load_pruned_checkpoint(tiny_resnet(1), out)


def test_resume_after_the_schedule_continues_with_the_pruned_model(trained, tmp_path):
    """Trainer(resume_from_checkpoint=...) on a reloaded pruned model: the optimizer state saved
    with pruned shapes loads, no second pruning happens, training goes on."""
    final = trained["out"] / f"checkpoint-{STEPS}"
    model = load_pruned_checkpoint(tiny_resnet(1), final)
    callback = PruneCallback(trained["plan"], X, at_steps=PRUNE_AT)
    trainer = make_trainer(model, trained["out"], [callback], STEPS + 5)
    trainer.train(resume_from_checkpoint=str(final))
    assert callback.history == [] and trainer.state.global_step == STEPS + 5
    assert out_channels(model, list(trained["targets"])) == trained["targets"]


def test_callback_arguments(trained, tmp_path):
    plan = trained["plan"]
    for bad in ([], [0, 5], [5, 5], (3.5,), "10"):
        with pytest.raises(ConfigError, match="at_steps"):
            PruneCallback(plan, X, at_steps=bad)
    with pytest.raises(ConfigError, match="PruningPlan"):
        PruneCallback({"a": 0.5}, X, at_steps=[1])  # type: ignore[arg-type]
    # resuming inside the schedule (between the two events) is refused, not silently wrong
    middle = trained["out"] / f"checkpoint-{SAVE_EVERY}"
    model = load_pruned_checkpoint(tiny_resnet(1), middle)
    trainer = make_trainer(model, tmp_path, [PruneCallback(plan, X, at_steps=PRUNE_AT)], STEPS)
    with pytest.raises(ConfigError, match="inside the pruning schedule"):
        trainer.train(resume_from_checkpoint=str(middle))


def test_bert_feed_forward_widths_prune_and_reload(tmp_path):
    """A transformer: only the FFN groups are in the plan (attention heads are not pruned), the
    Trainer feeds input_ids, and the checkpoint reloads to identical logits."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64,
                                     max_position_embeddings=16, num_labels=2)
    model = transformers.BertForSequenceClassification(config)
    example = {"input_ids": torch.zeros(1, 12, dtype=torch.long)}
    analysis = ap.analyze(model, example)
    ffn = [g.name for g in analysis.groups if g.name.endswith("intermediate.dense")]
    assert len(ffn) == 2
    plan = ap.fit_budget(model, example, dict.fromkeys(ffn, 1.0), params=0.8, analysis=analysis)
    targets = dict(zip([g.name for g in analysis.groups], analysis.kept(plan)))
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 64, (96, 12), generator=g)
    data = [{"input_ids": row, "labels": int(row[0] < 32)} for row in ids]
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), max_steps=12, per_device_train_batch_size=16,
        learning_rate=1e-3, logging_steps=1, save_steps=12, report_to="none", use_cpu=True,
        disable_tqdm=True)
    callback = PruneCallback(plan, example, at_steps=[4, 8])
    trainer = transformers.Trainer(model=model, args=args, train_dataset=data,
                                   callbacks=[callback])
    trainer.train()
    modules = dict(model.named_modules())
    assert {n: modules[n].out_features for n in ffn} == {n: targets[n] for n in ffn}
    assert all(targets[n] < 64 for n in ffn) and modules[ffn[0]].in_features == 32
    losses = [e["loss"] for e in trainer.state.log_history if "loss" in e]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    held = {id(p) for grp in unwrap_optimizer(trainer.optimizer).param_groups
            for p in grp["params"]}
    assert held == {id(p) for p in model.parameters()}
    fresh = load_pruned_checkpoint(transformers.BertForSequenceClassification(config),
                                   tmp_path / "checkpoint-12")
    x = torch.randint(0, 64, (3, 12), generator=g)
    model.eval()
    fresh.eval()
    with torch.no_grad():
        assert torch.equal(fresh(input_ids=x).logits, model(input_ids=x).logits)


README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_hugging_face_snippet_runs(tmp_path, monkeypatch):
    """The README's copy-paste Hugging Face snippet (the python block that imports
    autoprune.integrations.hf) runs as written, in a fresh folder."""
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), re.S)
    snippet = [b for b in blocks if "autoprune.integrations.hf" in b]
    assert len(snippet) == 1, "README.md needs one python block using autoprune.integrations.hf"
    monkeypatch.chdir(tmp_path)
    monkeypatch.setitem(os.environ, "HF_HUB_OFFLINE", "1")
    namespace: dict[str, Any] = {}
    exec(compile(snippet[0], "README.md", "exec"), namespace)
    assert namespace["trainer"].state.global_step > 0
    assert list(tmp_path.glob(f"*/checkpoint-*/{PLAN_FILE}"))


def test_example_hf_prune(tmp_path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parent.parent
    proc = subprocess.run([sys.executable, str(root / "examples" / "hf_prune.py"), "--out", "o"],
                          cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "step 80: pruned to" in proc.stdout and "identical logits True" in proc.stdout
