"""Rebuild a trial's candidate from its run: dense model -> plan -> kept weights -> fine-tune."""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from autoprune.errors import ConfigError
from autoprune.pipeline import CandidateFailed
from autoprune.plan import PruningPlan
from autoprune.settings import FinetuneSettings

if TYPE_CHECKING:
    from autoprune.engine import PrunableModel

__all__ = ["Retrain", "SavedTrial", "finetune", "rebuild", "rebuild_trial"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SavedTrial:
    """What a run keeps of a trial: its number, plan and fine-tuned weights (maybe dropped)."""

    trial: int
    plan: PruningPlan
    weights: Path  # RunDir.model_path(trial); absent for trials the search did not keep


@dataclass(frozen=True)
class Retrain:
    """Fine-tune a rebuilt candidate ``epochs`` passes over the train split with the run's
    ``settings``; ``from_dense`` re-estimates BatchNorm first, as the search does."""

    settings: FinetuneSettings
    epochs: float
    seed: int
    trial: int
    from_dense: bool
    progress: bool = True


def rebuild_trial(task: Any, saved: SavedTrial, config: Mapping[str, Any], epochs: float,
                  progress: bool) -> tuple[nn.Module, int]:
    """The trial's candidate on CPU, in eval mode, and the fine-tune steps taken (``epochs`` > 0
    fine-tunes further with the settings in the run's ``config``)."""
    from autoprune.engine import analyze

    dense, example = task.dense_model(), task.example_inputs()
    analysis = analyze(dense, example, ignore=(config.get("space") or {}).get("ignore"))
    log.info("trial %d: rebuilding the pruned model from its plan", saved.trial)
    model = rebuild(analysis, saved)
    steps = 0
    if epochs > 0:
        retrain = Retrain(FinetuneSettings(**config.get("finetune", {})), epochs,
                          seed=int((config.get("search") or {}).get("seed", 0)),
                          trial=saved.trial, from_dense=not saved.weights.is_file(),
                          progress=progress)
        steps = finetune(model, task, dense, retrain)
    return model.cpu().eval(), steps


def rebuild(analysis: PrunableModel, saved: SavedTrial) -> nn.Module:
    """A trial's candidate: its plan applied to the analysed dense model, then its fine-tuned
    weights loaded when the run kept them (the search and export both rebuild this way)."""
    model = analysis.apply(saved.plan)
    if saved.weights.is_file():
        _load_weights(model, saved.weights, saved.trial)
    return model


def _load_weights(model: nn.Module, path: Path, trial: int) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # empty, truncated, garbage, or a pickle of objects (refused)
        raise ConfigError(
            f"--trial {trial}: {path} is not a readable weights file ({_why(exc)}); delete it "
            "and pass --finetune-epochs E to fine-tune the trial from the dense model") from exc
    if not isinstance(state, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise ConfigError(
            f"--trial {trial}: {path} holds {type(state).__name__}, not a state_dict of tensors; "
            "delete it and pass --finetune-epochs E to fine-tune the trial from the dense model")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise ConfigError(
            f"--trial {trial}: {path} does not fit the model rebuilt from its plan "
            f"({_why(exc)}); the task's model changed since the search"
        ) from exc


def _why(exc: Exception) -> str:
    """The exception's type and message as one line."""
    text = " ".join(line.strip() for line in str(exc).strip().splitlines())
    return f"{type(exc).__name__}: {text[:200]}" if text else type(exc).__name__


class _Counted:
    """A re-iterable loader that advances a progress bar per batch drawn (one fine-tune step)."""

    def __init__(self, loader: Iterable[Any], bar: Any) -> None:
        self.loader, self.bar = loader, bar

    def __iter__(self) -> Iterator[Any]:
        for batch in self.loader:
            yield batch
            self.bar.update(1)


def finetune(model: nn.Module, task: Any, dense: nn.Module, retrain: Retrain) -> int:
    """Fine-tune ``model`` in place as ``retrain`` says; returns the steps taken."""
    from tqdm.auto import tqdm

    from autoprune.pipeline import finetune_model, reestimate_bn

    settings, trial = retrain.settings, retrain.trial
    device = settings.device
    if device.startswith("cuda") and not torch.cuda.is_available():
        log.info("the run fine-tuned on %s, which is not available here: using cpu", device)
        device = "cpu"
    settings = replace(settings, device=device)
    train = task.splits().train
    steps = max(1, round(retrain.epochs * len(train)))
    model.to(device)
    torch.manual_seed(retrain.seed * 100_003 + trial)
    user_finetune = getattr(task, "finetune", None)
    try:
        if retrain.from_dense:  # fresh from the dense weights: BN statistics first, as in search
            reestimate_bn(model, train, settings.bn_batches, device)
        if user_finetune is not None:
            log.info("trial %d: fine-tuning %d steps with the task's finetune()", trial, steps)
            model.train()
            user_finetune(model, steps)
        else:
            teacher = copy.deepcopy(dense).to(device) if settings.distill else None
            with tqdm(total=steps, desc=f"fine-tune trial {trial}", unit="step",
                      disable=not retrain.progress) as bar:
                finetune_model(model, _Counted(train, bar), settings, teacher, steps=steps)
    except CandidateFailed as exc:
        raise ConfigError(f"--finetune-epochs {retrain.epochs}: fine-tuning trial {trial} failed "
                          f"({exc}); try fewer epochs or a lower lr") from exc
    return steps
