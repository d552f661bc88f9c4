"""autoprune.integrations.lightning: PruneCallback inside a real Lightning Trainer (CPU).

Run as a script (``python tests/test_integration_lightning.py OUT STEPS``) it is the DDP worker
of :func:`test_ddp_two_cpu_processes`: Lightning's DDP launcher starts rank 1 by re-running it.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

pl = pytest.importorskip("lightning.pytorch")

import autoprune as ap  # noqa: E402
from autoprune.errors import AutopruneError, ConfigError  # noqa: E402
from autoprune.integrations.lightning import (  # noqa: E402
    PrunableModule,
    PruneCallback,
    check_ranks_agree,
    restore_pruned,
)

REPO = Path(__file__).resolve().parent.parent
EXAMPLE = torch.zeros(1, 3, 8, 8)
PLAN = ap.PruningPlan({"conv1": 0.5, "conv2": 0.75})


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.conv1(x)))
        return self.fc(torch.relu(self.conv2(x)).mean((2, 3)))


class Lit(PrunableModule):
    """Checkpoints rebuild the pruned shapes through the mixin."""

    def __init__(self, lr: float = 0.05, compiled: bool = False) -> None:
        super().__init__()
        self.save_hyperparameters()
        net = Net()
        self.model = torch.compile(net, backend=_recording_backend) if compiled else net
        self.losses: list[float] = []

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], i: int) -> torch.Tensor:
        x, y = batch
        loss = nn.functional.cross_entropy(self.model(x), y)
        self.losses.append(float(loss.detach()))
        return loss

    def configure_optimizers(self) -> dict:
        opt = torch.optim.SGD(self.parameters(), lr=self.hparams.lr, momentum=0.9)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.5)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


class PlainLit(Lit):
    """A user's own LightningModule hook calling restore_pruned (no mixin hooks)."""

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        restore_pruned(self, checkpoint)

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        pass


COMPILED_GRAPHS: list[list[tuple[int, ...]]] = []


def _recording_backend(gm: torch.fx.GraphModule, inputs: list) -> object:
    COMPILED_GRAPHS.append([tuple(t.shape) for t in inputs if isinstance(t, torch.Tensor)])
    return gm.forward


def loader(seed: int = 0) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(64, 3, 8, 8, generator=g), torch.randint(0, 4, (64,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=8)


def trainer(callbacks: list, tmp_path: Path, **kwargs: object) -> pl.Trainer:
    kwargs = {"max_steps": 10, "accelerator": "cpu", "devices": 1, **kwargs}
    return pl.Trainer(callbacks=callbacks, default_root_dir=tmp_path, logger=False,
                      enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


def targets() -> dict[str, int]:
    analysis = ap.analyze(Net(), EXAMPLE)
    return dict(zip([g.name for g in analysis.groups], analysis.kept(PLAN)))


def widths(net: nn.Module) -> dict[str, int]:
    return {"conv1": net.conv1.out_channels, "conv2": net.conv2.out_channels}


def test_prunes_at_two_steps_and_keeps_optimizer_and_scheduler(tmp_path):
    torch.manual_seed(0)
    lit, cb = Lit(), PruneCallback(PLAN, EXAMPLE, at_steps=[3, 6])
    t = trainer([cb], tmp_path)
    t.fit(lit, loader())
    assert [h["step"] for h in cb.history] == [3, 6] and cb.done == [3, 6]
    assert widths(lit.model) == targets() == {"conv1": 8, "conv2": 4}
    assert cb.history[0]["flops_ratio"] > cb.history[1]["flops_ratio"]  # gradual
    assert len(lit.losses) == 10 and all(math.isfinite(v) for v in lit.losses)
    opt = t.optimizers[0]
    assert {id(p) for g in opt.param_groups for p in g["params"]} == {id(p) for p in
                                                                      lit.parameters()}
    for p, state in opt.state.items():
        assert state["momentum_buffer"].shape == p.shape
    sched = t.lr_scheduler_configs[0].scheduler
    assert sched.optimizer is opt and opt.param_groups[0]["initial_lr"] == 0.05
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05 * 0.5 ** 2)  # stepped 10 times


@pytest.mark.parametrize("cls", [Lit, PlainLit])
def test_load_from_checkpoint_rebuilds_the_pruned_shapes(tmp_path, cls):
    torch.manual_seed(0)
    lit = cls()
    t = trainer([PruneCallback(PLAN, EXAMPLE, at_steps=[3, 6])], tmp_path)
    t.fit(lit, loader())
    t.save_checkpoint(tmp_path / "full.ckpt")
    paths = [tmp_path / "full.ckpt"]
    if cls is Lit:  # the mixin also writes the state into weights-only checkpoints
        t.save_checkpoint(tmp_path / "weights.ckpt", weights_only=True)
        paths.append(tmp_path / "weights.ckpt")
    x = torch.randn(5, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    lit.eval()
    for path in paths:
        again = cls.load_from_checkpoint(path).eval()
        assert widths(again.model) == targets()
        assert again.model.autoprune_history == lit.model.autoprune_history
        with torch.no_grad():
            assert torch.equal(again.model(x), lit.model(x))
    with pytest.raises(RuntimeError, match="size mismatch"):  # the oracle: without the hook
        pl.LightningModule.load_state_dict(Lit(), torch.load(paths[0])["state_dict"])


def test_prunes_at_epochs(tmp_path):
    seen: list[int] = []

    class Probe(pl.Callback):
        def on_train_epoch_start(self, trainer: pl.Trainer, module: Lit) -> None:
            seen.append(module.model.conv1.out_channels)

    lit = Lit()
    cb = PruneCallback(PLAN, EXAMPLE, at_epochs=[1, 2])
    trainer([cb, Probe()], tmp_path, max_steps=-1, max_epochs=3).fit(lit, loader())
    assert seen == [16, 12, 8] and [h["epoch"] for h in cb.history] == [1, 2]


def test_step_zero_prunes_before_the_optimizer_is_built(tmp_path):
    lit, cb = Lit(), PruneCallback(PLAN, EXAMPLE, at_steps=[0])
    t = trainer([cb], tmp_path, max_steps=2)
    t.fit(lit, loader())
    assert widths(lit.model) == targets() and len(lit.losses) == 2
    assert {id(p) for p in t.optimizers[0].param_groups[0]["params"]} == {
        id(p) for p in lit.parameters()}


def test_resume_from_a_checkpoint_between_events(tmp_path):
    torch.manual_seed(0)
    first = trainer([PruneCallback(PLAN, EXAMPLE, at_steps=[3, 12])], tmp_path, max_steps=8)
    first.fit(Lit(), loader())
    first.save_checkpoint(tmp_path / "mid.ckpt")
    lit, cb = Lit(), PruneCallback(PLAN, EXAMPLE, at_steps=[3, 12])
    trainer([cb], tmp_path, max_steps=16).fit(lit, loader(), ckpt_path=tmp_path / "mid.ckpt")
    assert [h["step"] for h in cb.history] == [3, 12] and widths(lit.model) == targets()
    assert all(math.isfinite(v) for v in lit.losses) and len(lit.losses) == 8


def test_compiled_network_recompiles_with_the_pruned_shapes(tmp_path):
    COMPILED_GRAPHS.clear()
    lit = Lit(compiled=True)
    t = trainer([PruneCallback(PLAN, EXAMPLE, at_steps=[3, 6])], tmp_path)
    t.fit(lit, loader())
    assert widths(lit.model._orig_mod) == targets()
    first_weights = [g[0] for g in COMPILED_GRAPHS]  # conv1.weight's shape in each graph
    assert first_weights[0] == (16, 3, 3, 3) and first_weights[-1] == (8, 3, 3, 3)
    assert all(math.isfinite(v) for v in lit.losses)
    t.save_checkpoint(tmp_path / "c.ckpt")
    again = Lit.load_from_checkpoint(tmp_path / "c.ckpt").eval()  # compiled again
    lit.eval()
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(again.model(x), lit.model._orig_mod(x), rtol=0, atol=0)


def test_ranks_that_disagree_fail_on_every_rank():
    net = Net()
    net.__dict__["autoprune_history"] = [("conv1", True, [0, 1])]
    agree = SimpleNamespace(broadcast=lambda obj, src: obj, reduce_boolean_decision=lambda d,
                            all: d)
    check_ranks_agree(SimpleNamespace(world_size=2, global_rank=1, strategy=agree), net)
    other = SimpleNamespace(broadcast=lambda obj, src: "0" * 64, reduce_boolean_decision=lambda d,
                            all: d)
    with pytest.raises(AutopruneError, match="different channels"):
        check_ranks_agree(SimpleNamespace(world_size=2, global_rank=1, strategy=other), net)


def test_arguments(tmp_path):
    with pytest.raises(ConfigError, match="exactly one"):
        PruneCallback(PLAN, EXAMPLE)
    with pytest.raises(ConfigError, match="distinct"):
        PruneCallback(PLAN, EXAMPLE, at_steps=[3, 3])
    with pytest.raises(ConfigError, match="PruningPlan"):
        PruneCallback({"conv1": 0.5}, EXAMPLE, at_steps=[3])
    with pytest.raises(ConfigError, match=r"module='net'.*no submodule"):
        trainer([PruneCallback(PLAN, EXAMPLE, at_steps=[1], module="net")],
                tmp_path).fit(Lit(), loader())
    with pytest.raises(ConfigError, match="'nosuch'"):
        trainer([PruneCallback(ap.PruningPlan({"nosuch": 0.5}), EXAMPLE, at_steps=[1])],
                tmp_path).fit(Lit(), loader())
    assert restore_pruned(Lit(), {"state_dict": {}}) is False
    with pytest.raises(ConfigError, match="format"):
        restore_pruned(Lit(), {"autoprune": {"format": "other"}})


def ddp_worker(out: Path, steps: list[int]) -> None:
    pl.seed_everything(0)
    lit, cb = Lit(), PruneCallback(PLAN, EXAMPLE, at_steps=steps)
    t = pl.Trainer(max_steps=10, accelerator="cpu", devices=2, strategy="ddp", callbacks=[cb],
                   logger=False, enable_checkpointing=False, enable_progress_bar=False,
                   enable_model_summary=False, default_root_dir=out)
    t.fit(lit, loader())
    rank = t.global_rank
    torch.save({k: v for k, v in lit.named_parameters()}, out / f"rank{rank}.pt")
    (out / f"rank{rank}.json").write_text(json.dumps({
        "history": [h["step"] for h in cb.history], "widths": widths(lit.model),
        "losses": lit.losses}))
    # gloo's threads must be joined before the interpreter exits, or a rank can abort at exit
    # ("terminate called without an active exception", SIGABRT) after a successful fit
    if torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


@pytest.mark.xdist_group("multicore")  # see tests/conftest.py
@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path, steps="0,6"):
    """Step 0 prunes before DDP wraps the model; step 6 prunes mid-training and rewraps."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, __file__, str(tmp_path), steps], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    weights = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    want = [int(s) for s in steps.split(",")]
    for rank in ranks:
        assert rank["history"] == want and rank["widths"] == targets()
        assert len(rank["losses"]) == 10 and all(math.isfinite(v) for v in rank["losses"])
    assert ranks[0]["losses"] != ranks[1]["losses"]  # each rank saw its own shard...
    for name, value in weights[0].items():  # ...and the gradients were averaged after pruning
        assert torch.equal(value, weights[1][name]), name


def test_readme_snippet_runs(tmp_path, monkeypatch):
    """The README's Lightning snippet, run as a user would paste it."""
    readme = (REPO / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S)
              if "autoprune.integrations.lightning" in b]
    assert blocks, "README.md has no ```python block using autoprune.integrations.lightning"
    monkeypatch.chdir(tmp_path)
    exec(compile(blocks[0], "README.md", "exec"), {"__name__": "readme"})
    assert (tmp_path / "pruned.ckpt").exists()


@pytest.mark.slow
def test_example_runs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(REPO / "examples" / "lightning_prune.py")],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "step 20: pruned to" in proc.stdout and "reloaded: same outputs" in proc.stdout


if __name__ == "__main__":
    ddp_worker(Path(sys.argv[1]), [int(s) for s in sys.argv[2].split(",")])
