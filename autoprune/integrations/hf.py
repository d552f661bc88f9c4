"""Hugging Face ``Trainer`` integration: :class:`PruneCallback` prunes the Trainer's model in
place at chosen global steps (gradually, as :class:`~autoprune.hooks.PruneHook` does) and keeps
the Trainer's optimizer valid; :func:`load_pruned_checkpoint` rebuilds a saved checkpoint.

The Trainer's optimizer is wrapped by accelerate (``AcceleratedOptimizer``; the real one is its
``.optimizer``) and its LR scheduler holds the same param-group dicts: pruned parameters are
swapped into those groups in place, so optimizer, wrapper and scheduler stay consistent.

At every checkpoint the callback writes ``autoprune_pruning.json`` (plan, pruning history,
parameter shapes) and ``autoprune_example.pt`` (the example inputs) beside the Trainer's weights;
``config.json`` there still describes the *dense* model, so reload with
:func:`load_pruned_checkpoint`, not ``from_pretrained``. To resume a run after its last pruning
step, build the model with it, then ``trainer.train(resume_from_checkpoint=...)``: the saved
optimizer state has the pruned shapes and the callback does not prune again.

Supported: a single process (CPU or one GPU), any model the engine can trace (CNNs, MLPs, a
transformer's feed-forward layers with the attention layers ignored). Not yet: resuming a run
inside its pruning schedule, DDP/FSDP/DeepSpeed, ``torch_compile=True``.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from autoprune.errors import BackendUnavailable, ConfigError
from autoprune.hooks import PruneHook
from autoprune.plan import PruningPlan

try:
    from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments
except ImportError as exc:  # pragma: no cover - exercised only without transformers
    raise BackendUnavailable("autoprune.integrations.hf needs transformers; install it with "
                             "`pip install transformers accelerate`") from exc

__all__ = ["EXAMPLE_FILE", "PLAN_FILE", "PruneCallback", "load_pruned_checkpoint",
           "save_pruning", "unwrap_optimizer"]

log = logging.getLogger(__name__)

PLAN_FILE = "autoprune_pruning.json"
EXAMPLE_FILE = "autoprune_example.pt"
_FORMAT = 1
_CHECKPOINT_PREFIX = "checkpoint"  # transformers' PREFIX_CHECKPOINT_DIR


def unwrap_optimizer(optimizer: Any) -> torch.optim.Optimizer | None:
    """The real torch optimizer inside accelerate's ``AcceleratedOptimizer`` (or itself)."""
    inner = optimizer
    while isinstance(getattr(inner, "optimizer", None), torch.optim.Optimizer):
        inner = inner.optimizer
    return inner


def _device_of(model: nn.Module) -> torch.device:
    first = next(model.parameters(), None)
    return first.device if first is not None else torch.device("cpu")


def _check_steps(at_steps: Sequence[int]) -> list[int]:
    steps = list(at_steps) if isinstance(at_steps, (list, tuple)) else None
    if (not steps or any(not isinstance(s, int) or isinstance(s, bool) or s < 1 for s in steps)
            or len(set(steps)) != len(steps)):
        raise ConfigError(f"PruneCallback(at_steps={at_steps!r}): give a list of distinct global "
                          "steps >= 1, e.g. at_steps=[100, 200]")
    return sorted(steps)


class PruneCallback(TrainerCallback):  # type: ignore[misc]
    """Prune the ``Trainer``'s model to ``plan`` at the global steps ``at_steps``.

    With several steps pruning is gradual: event k of K keeps ``k/K`` of the way from dense to
    the plan's channel counts. ``history`` holds the cost after each event (as ``PruneHook``).
    ``example_inputs`` is one batch as ``model(...)`` takes it (a tensor, a tuple of positional
    arguments, or a dict of keyword arguments); it is moved to the model's device.
    """

    def __init__(self, plan: PruningPlan, example_inputs: Any, at_steps: Sequence[int]) -> None:
        if not isinstance(plan, PruningPlan):
            raise ConfigError(f"PruneCallback(plan={type(plan).__name__}): pass an "
                              "autoprune.PruningPlan (from ap.fit_budget or PruningPlan({...}))")
        self.plan = plan
        self.example_inputs = example_inputs
        self.at_steps = _check_steps(at_steps)
        self.hook: PruneHook | None = None
        self._finished = False

    @property
    def history(self) -> list[dict[str, Any]]:
        return self.hook.history if self.hook is not None else []

    def on_train_begin(self, args: TrainingArguments, state: TrainerState,
                       control: TrainerControl, **kwargs: Any) -> None:
        model, optimizer = kwargs.get("model"), kwargs.get("optimizer")
        if model is None or optimizer is None:
            raise ConfigError("PruneCallback needs the Trainer's model and optimizer at "
                              "on_train_begin; add it with Trainer(callbacks=[PruneCallback(...)])")
        done = [s for s in self.at_steps if s <= state.global_step]
        if self._finished or len(done) == len(self.at_steps):
            self._finished = True  # resumed (or trained again) after the schedule: nothing to do
            return
        if done:
            raise ConfigError(f"resuming at global step {state.global_step}, inside the pruning "
                              f"schedule at_steps={self.at_steps}, is not supported; resume from "
                              f"a checkpoint at or after step {self.at_steps[-1]}, or restart")
        example = _to_device(self.example_inputs, _device_of(model))
        self.hook = PruneHook(model, example, self.plan, optimizer=unwrap_optimizer(optimizer),
                              at_steps=[s - state.global_step for s in self.at_steps])

    def on_step_end(self, args: TrainingArguments, state: TrainerState,
                    control: TrainerControl, **kwargs: Any) -> None:
        if self.hook is None or self._finished:
            return
        self.hook.on_step_end()  # once per optimizer step, as global_step advances
        if len(self.hook.history) == len(self.at_steps):
            self._finished = True
            log.info("autoprune: pruning finished at global step %d", state.global_step)

    def on_save(self, args: TrainingArguments, state: TrainerState,
                control: TrainerControl, **kwargs: Any) -> None:
        model = kwargs.get("model")
        if model is None or not state.is_world_process_zero:
            return
        folder = Path(args.output_dir) / f"{_CHECKPOINT_PREFIX}-{state.global_step}"
        if folder.is_dir():
            save_pruning(model, folder, self.example_inputs, plan=self.plan,
                         extra={"global_step": state.global_step, "at_steps": self.at_steps})


def _to_device(obj: Any, device: torch.device) -> Any:
    from autoprune.engine.inputs import to_device

    return to_device(obj, device)


def save_pruning(model: nn.Module, folder: str | Path, example_inputs: Any,
                 plan: PruningPlan | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write ``PLAN_FILE`` and ``EXAMPLE_FILE`` into ``folder`` (e.g. beside
    ``trainer.save_model(folder)``) so :func:`load_pruned_checkpoint` can rebuild ``model``."""
    from autoprune import __version__
    from autoprune.results import atomic_write_bytes, atomic_write_text

    folder = Path(folder)
    record = {
        "format": _FORMAT, "autoprune": __version__, "model": type(model).__name__,
        "plan": plan.to_dict() if plan is not None else None, **(extra or {}),
        "history": [[n, bool(o), [int(i) for i in idx]]
                    for n, o, idx in model.__dict__.get("autoprune_history", [])],
        "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
    }
    atomic_write_text(folder / PLAN_FILE, json.dumps(record, indent=1) + "\n")
    data = io.BytesIO()
    torch.save(_to_device(example_inputs, torch.device("cpu")), data)
    atomic_write_bytes(folder / EXAMPLE_FILE, data.getvalue())
    return folder / PLAN_FILE


def load_pruned_checkpoint(model: nn.Module, checkpoint_dir: str | Path,
                           example_inputs: Any = None) -> nn.Module:
    """Prune a freshly built *dense* ``model`` to the shapes saved in ``checkpoint_dir`` (by
    :class:`PruneCallback` or :func:`save_pruning`) and load the checkpoint's weights into it.

    ``model`` must be the architecture the Trainer started from (same config, any weights);
    ``example_inputs`` defaults to the batch saved with the checkpoint. Returns ``model``.
    """
    from autoprune.engine import replay_history

    folder = Path(checkpoint_dir)
    record = _read_record(folder)
    if example_inputs is None:
        example_inputs = torch.load(folder / EXAMPLE_FILE, weights_only=True)
    history = [(str(n), bool(o), [int(i) for i in idx]) for n, o, idx in record["history"]]
    example = _to_device(example_inputs, _device_of(model))
    if history:
        try:
            replay_history(model, example, history)
        except Exception as exc:  # torch-pruning raises bare errors on a mismatched model
            raise ConfigError(f"load_pruned_checkpoint({str(folder)!r}): cannot replay its "
                              f"pruning on this {type(model).__name__} ({type(exc).__name__}: "
                              f"{exc}); pass the dense model the Trainer started from") from exc
    model.__dict__["autoprune_history"] = history
    have = {k: list(v.shape) for k, v in model.state_dict().items()}
    for name, shape in record["shapes"].items():
        if have.get(name) != shape:
            raise ConfigError(f"load_pruned_checkpoint({str(folder)!r}): {name} has shape "
                              f"{have.get(name)} after replay but {shape} in the checkpoint; "
                              "pass the dense model the Trainer started from")
    _load_weights(model, folder)
    return model


def _read_record(folder: Path) -> dict[str, Any]:
    path = folder / PLAN_FILE
    if not path.is_file():
        raise ConfigError(f"load_pruned_checkpoint({str(folder)!r}): no {PLAN_FILE} there; give "
                          "a checkpoint-N folder saved with PruneCallback in the Trainer")
    record: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    if record.get("format") != _FORMAT:
        raise ConfigError(f"{path}: format {record.get('format')!r} is not {_FORMAT}; save it "
                          "again with this autoprune version")
    return record


def _weight_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()
        return [folder / s for s in sorted(set(shards))]
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            return [folder / name]
    raise ConfigError(f"load_pruned_checkpoint({str(folder)!r}): no model.safetensors or "
                      "pytorch_model.bin there; give a folder the Trainer saved")


def _load_weights(model: nn.Module, folder: Path) -> None:
    state: dict[str, torch.Tensor] = {}
    for path in _weight_files(folder):
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state.update(load_file(str(path)))
        else:
            state.update(torch.load(path, map_location="cpu", weights_only=True))
    missing, unexpected = model.load_state_dict(state, strict=False)
    # tied weights (e.g. an LM head tied to the embeddings) are saved once, under one name
    aliases = ({n for n, _ in model.named_parameters(remove_duplicate=False)}
               - {n for n, _ in model.named_parameters()})
    missing = [k for k in missing if k not in aliases]
    if missing or unexpected:
        raise ConfigError(f"load_pruned_checkpoint({str(folder)!r}): weights do not match the "
                          f"model (missing {missing[:3]}, unexpected {unexpected[:3]}); pass "
                          "the dense model the Trainer started from")
