"""Pruning inside a Lightning ``Trainer``: :class:`PruneCallback` wraps
:class:`~autoprune.hooks.PruneHook`.

The callback prunes a network held by the ``LightningModule`` (``module="model"``: the attribute
path; ``""`` for the LightningModule itself) to a plan at chosen global steps or epochs, gradually
as ``PruneHook`` does, and keeps Lightning's machinery valid:

- **optimizers and LR schedulers**: pruned parameters are swapped into every optimizer of
  ``trainer.strategy`` (unwrapped from ``LightningOptimizer``) in place, so schedulers keep their
  optimizer and each group keeps its ``lr`` / ``initial_lr``; a pruned tensor's state is reset;
- **DDP**: every rank prunes its own copy (identical weights, so identical channels: checked
  with a digest of the kept indices, broadcast from rank 0) and ``DistributedDataParallel`` is
  rebuilt around the pruned module (its buckets hold the old shapes). A step ``0`` prunes in
  ``setup()``, before Lightning wraps the model and builds the optimizers;
- **torch.compile**: a compiled network (``torch.compile(net)`` as the attribute, or a compiled
  LightningModule passed to ``fit``) is pruned through its original module and Dynamo's caches
  are reset, so the next step compiles the pruned shapes afresh;
- **checkpoints**: the plan, the kept channels of every event (torch-pruning's history) and the
  example inputs go under ``checkpoint["autoprune"]``. ``MyModule.load_from_checkpoint(path)``
  rebuilds the pruned shapes when the module calls :func:`restore_pruned` in its
  ``on_load_checkpoint`` (or subclasses :class:`PrunableModule`, which does).
"""

from __future__ import annotations

import gc
import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.callbacks import Callback
from torch import nn

from autoprune.engine.inputs import map_tensors, to_device
from autoprune.errors import AutopruneError, ConfigError
from autoprune.hooks import PruneHook
from autoprune.plan import PruningPlan

__all__ = ["CHECKPOINT_KEY", "PrunableModule", "PruneCallback", "pruning_state", "restore_pruned"]

log = logging.getLogger(__name__)

CHECKPOINT_KEY = "autoprune"
FORMAT = "autoprune.lightning/1"
_STASH = "_autoprune_lightning"  # pl_module.__dict__: which network the callback prunes, and how
_SHARDED = ("DeepSpeedStrategy", "FSDPStrategy", "ModelParallelStrategy", "XLAStrategy")


def _target(pl_module: nn.Module, path: str) -> tuple[nn.Module, bool]:
    """The network at ``path`` (unwrapped from ``torch.compile``) and whether it runs compiled."""
    try:
        sub = pl_module.get_submodule(path) if path else pl_module
    except AttributeError as exc:
        raise ConfigError(
            f"module={path!r}: {type(pl_module).__name__} has no submodule {path!r}; pass the "
            "attribute that holds your network (e.g. module='model'), or '' for the "
            "LightningModule itself") from exc
    inner = getattr(sub, "_orig_mod", None)  # torch.compile's OptimizedModule
    net = inner if isinstance(inner, nn.Module) else sub
    compiled = net is not sub or getattr(pl_module, "_compiler_ctx", None) is not None
    return net, compiled


def _device(module: nn.Module) -> torch.device:
    first = next(iter(module.parameters()), None)
    return first.device if first is not None else torch.device("cpu")


def _plain_history(history: Sequence[Any]) -> list[list[Any]]:
    return [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in history]


def pruning_state(pl_module: nn.Module) -> dict[str, Any] | None:
    """What a checkpoint needs to rebuild the pruned shapes (``None`` if no callback pruned
    ``pl_module``): plan, per-event kept channels and example inputs, as plain data + tensors."""
    stash = pl_module.__dict__.get(_STASH)
    if stash is None:
        return None
    net, _ = _target(pl_module, stash["module"])
    return {
        "format": FORMAT,
        "module": stash["module"],
        "plan": stash["plan"].to_dict(),
        "history": _plain_history(net.__dict__.get("autoprune_history", [])),
        "example_inputs": map_tensors(stash["example_inputs"], lambda t: t.detach().cpu()),
    }


def restore_pruned(module: nn.Module, checkpoint: Mapping[str, Any]) -> bool:
    """Prune ``module`` (freshly built, dense) to the shapes saved in ``checkpoint``.

    Call it first thing in your LightningModule's ``on_load_checkpoint(self, checkpoint)``:
    Lightning calls that hook before loading the state dict, in ``load_from_checkpoint`` and when
    ``trainer.fit(ckpt_path=...)`` resumes. Returns whether the checkpoint held pruning state.
    """
    state = checkpoint.get(CHECKPOINT_KEY)
    if state is None:
        return False
    if not isinstance(state, Mapping) or state.get("format") != FORMAT:
        raise ConfigError(f"checkpoint[{CHECKPOINT_KEY!r}] is not autoprune's Lightning state "
                          f"(format {FORMAT!r}); save it with autoprune's PruneCallback")
    from autoprune.engine import replay_history

    net, _ = _target(module, state["module"])
    history = [(str(n), bool(o), [int(i) for i in idx]) for n, o, idx in state["history"]]
    have = net.__dict__.get("autoprune_history", [])

    def signature(steps: Sequence[Any]) -> list[tuple[str, bool, int]]:
        return [(str(n), bool(o), len(i)) for n, o, i in steps]

    # a step-0 event already pruned in setup() (resuming): same plan, so the same shapes
    if signature(have) != signature(history[: len(have)]):
        raise ConfigError(
            f"module {type(net).__name__} is already pruned ({len(have)} steps) differently from "
            "the checkpoint; build it dense (as its __init__ does) before restore_pruned")
    rest = history[len(have):]
    if rest:
        replay_history(net, to_device(state["example_inputs"], _device(net)), rest)
    net.__dict__["autoprune_history"] = history
    net.__dict__["autoprune_plan"] = PruningPlan.from_dict(state["plan"])
    return True


class PrunableModule(pl.LightningModule):
    """A LightningModule whose checkpoints rebuild their pruned shapes: subclass it instead of
    ``LightningModule`` (call ``super()`` if you override the two checkpoint hooks)."""

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        restore_pruned(self, checkpoint)
        super().on_load_checkpoint(checkpoint)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the callback's own hook is skipped for weights-only checkpoints; this one is not
        state = pruning_state(self)
        if state is not None:
            checkpoint.setdefault(CHECKPOINT_KEY, state)
        super().on_save_checkpoint(checkpoint)


def _swap_params(optimizer: torch.optim.Optimizer, before: Mapping[int, str],
                 net: nn.Module) -> None:
    """Replace pruned parameters in ``optimizer``'s groups in place (the groups' other keys, and
    the schedulers holding the optimizer, are untouched); a pruned tensor's state is dropped."""
    now = dict(net.named_parameters())
    for group in optimizer.param_groups:
        fresh = []
        for p in group["params"]:
            name = before.get(id(p))
            new = now.get(name) if name is not None else p
            if new is None:
                continue
            if new is not p:
                optimizer.state.pop(p, None)
            fresh.append(new)
        group["params"] = fresh


def _digest(net: nn.Module) -> str:
    history = _plain_history(net.__dict__.get("autoprune_history", []))
    return hashlib.sha256(json.dumps(history).encode()).hexdigest()


def check_ranks_agree(trainer: pl.Trainer, net: nn.Module) -> None:
    """Raise on every rank if the ranks kept different channels (DDP would fail or hang)."""
    if trainer.world_size <= 1:
        return
    mine = _digest(net)
    first = trainer.strategy.broadcast(mine, src=0)
    if not trainer.strategy.reduce_boolean_decision(first == mine, all=True):
        raise AutopruneError(
            f"the ranks pruned different channels (rank {trainer.global_rank}: {mine[:12]}, "
            f"rank 0: {first[:12]}); every rank must hold identical weights when pruning: use "
            "importance 'l1'/'l2'/'bn' (not 'random') and prune at a step, not mid-accumulation")


def _rewrap_ddp(trainer: pl.Trainer) -> None:
    """Rebuild ``DistributedDataParallel`` around the pruned module: its buckets and reducer
    hold the old parameters; the old wrapper is dropped so its autograd hooks go with it."""
    from torch.nn.parallel import DistributedDataParallel

    strategy = trainer.strategy
    if not isinstance(strategy.model, DistributedDataParallel):
        return
    strategy.model = None
    gc.collect()
    strategy.model = strategy._setup_model(strategy.lightning_module)
    register = getattr(strategy, "_register_ddp_hooks", None)
    if register is not None:
        register()


class PruneCallback(Callback):
    """Prune the LightningModule's network to ``plan`` at global steps (or epochs).

    ``at_steps=[s1, s2, ...]`` prunes after optimizer step ``s`` (``trainer.global_step``);
    ``at_epochs=[...]`` after that many finished epochs; ``0`` prunes before training (and before
    DDP wraps the model). Event k of K keeps ``k/K`` of the way from dense to the plan. The plan's
    group names are those of the network at ``module`` (``ap.fit_budget(net, ...)``).
    ``history`` holds the cost after each event.
    """

    def __init__(self, plan: PruningPlan, example_inputs: Any,
                 at_steps: Sequence[int] | None = None, at_epochs: Sequence[int] | None = None,
                 module: str = "model") -> None:
        if not isinstance(plan, PruningPlan):
            raise ConfigError(f"plan={plan!r} must be an autoprune PruningPlan (ap.fit_budget, "
                              "ap.PruningPlan or PruningPlan.from_json)")
        if (at_steps is None) == (at_epochs is None):
            raise ConfigError("PruneCallback needs exactly one of at_steps=[...] or "
                              "at_epochs=[...]")
        events = sorted(at_steps if at_steps is not None else at_epochs)  # type: ignore[arg-type]
        if (not events or len(set(events)) != len(events)
                or not all(isinstance(e, int) and e >= 0 for e in events)):
            raise ConfigError(f"pruning points {events!r} must be distinct non-negative ints")
        self.plan, self.example_inputs, self.module = plan, example_inputs, module
        self.unit = "step" if at_steps is not None else "epoch"
        self.events = events
        self.done: list[int] = []
        self.history: list[dict[str, Any]] = []
        self._hook: PruneHook | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"done": list(self.done), "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done = [int(e) for e in state_dict.get("done", [])]
        self.history = [dict(h) for h in state_dict.get("history", [])]

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        name = type(trainer.strategy).__name__
        if name in _SHARDED:
            raise ConfigError(f"strategy {name} shards or replaces the parameters; PruneCallback "
                              "supports single-device and DDP strategies ('auto', 'ddp', "
                              "'ddp_spawn')")
        net, _ = _target(pl_module, self.module)
        pl_module.__dict__[_STASH] = {"module": self.module, "plan": self.plan,
                                      "example_inputs": self.example_inputs}
        kwargs = {f"at_{self.unit}s": self.events}
        self._hook = PruneHook(net, to_device(self.example_inputs, _device(net)), self.plan,
                               **kwargs)
        if 0 in self.events and 0 not in self.done:  # before DDP wraps it, before optimizers
            self._prune(trainer, pl_module, 0)

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.unit == "step":
            self._maybe_prune(trainer, pl_module, trainer.global_step)

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.unit == "epoch":
            self._maybe_prune(trainer, pl_module, trainer.current_epoch + 1)

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        state = pruning_state(pl_module)
        if state is not None:
            checkpoint[CHECKPOINT_KEY] = state

    def _maybe_prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     count: int) -> None:
        # several optimizers (manual optimization) advance global_step by more than one
        due = [e for e in self.events if e <= count and e not in self.done]
        if due:
            self._prune(trainer, pl_module, due[-1])
            self.done.extend(due[:-1])

    def _prune(self, trainer: pl.Trainer, pl_module: pl.LightningModule, event: int) -> None:
        hook = self._hook
        if hook is None:
            raise AutopruneError("PruneCallback pruned before setup(); attach it to the Trainer")
        net, compiled = _target(pl_module, self.module)
        hook.model = net
        hook.example_inputs = to_device(self.example_inputs, _device(net))
        before = {id(p): n for n, p in net.named_parameters()}
        hook._count = event  # PruneHook's private counter: the event's step/epoch
        hook._prune(self.events.index(event) + 1)
        for optimizer in trainer.strategy.optimizers:
            _swap_params(getattr(optimizer, "_optimizer", optimizer), before, net)
        self.done.append(event)
        self.history.append(hook.history[-1])
        check_ranks_agree(trainer, net)
        _rewrap_ddp(trainer)
        if compiled:
            torch.compiler.reset()  # compile the pruned shapes afresh (static, not dynamic)
