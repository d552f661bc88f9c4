"""What autoprune needs from a task, and a concrete base for image classification.

A task bundles a trained dense model, its data splits and its metric. The search scores
candidates on ``val`` (carved from the training data) and touches ``test`` only for the final
report of front members, so every built-in task carves validation from training data.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from torch import nn
from torch.utils.data import DataLoader

from autoprune.errors import ConfigError
from autoprune.tasks._train import StateDict, TrainingSpec, load_or_train

__all__ = ["ClassificationTask", "FinetuneFn", "Splits", "Task", "load_state_dict_file"]

logger = logging.getLogger(__name__)

FinetuneFn = Callable[[nn.Module, int], None]
EVAL_SPLITS = ("val", "test")


@dataclass(frozen=True)
class Splits:
    """The three data splits; ``val`` comes from training data, ``test`` is held out."""

    train: DataLoader
    val: DataLoader
    test: DataLoader


@runtime_checkable
class Task(Protocol):
    """The contract between autoprune and a task, built-in or from a user's file."""

    name: str

    def dense_model(self) -> nn.Module:
        """The trained dense model in eval mode, on CPU (a fresh copy per call)."""
        ...

    def example_inputs(self) -> torch.Tensor:
        """One batch of shape ``(1, C, H, W)`` used to trace the model's channel dependencies."""
        ...

    def splits(self) -> Splits:
        """The train / val / test loaders."""
        ...

    def evaluate(self, model: nn.Module, split: str = "val") -> float:
        """Top-1 accuracy in [0, 1] on ``split`` (``"val"`` or ``"test"``)."""
        ...


def load_state_dict_file(path: str | Path, model: nn.Module, *, what: str) -> None:
    """Load a user's state_dict file into ``model``; mismatches become one clear ConfigError."""
    file = Path(path).expanduser()

    def not_a_state_dict(problem: str) -> ConfigError:
        return ConfigError(f"weights={str(path)!r}{problem}; save it with "
                           "torch.save(model.state_dict(), PATH) and pass --weights PATH")

    if not file.is_file():
        raise not_a_state_dict(": no such file")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise not_a_state_dict(f" could not be read ({type(exc).__name__}: {exc})") from exc
    if not isinstance(state, dict):
        raise not_a_state_dict(f" holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ConfigError(
            f"weights={str(path)!r} does not fit {what} ({first}); pass the matching --model "
            f"or weights saved from it"
        ) from exc


class ClassificationTask:
    """An image-classification task: a model constructor, splits and top-1 accuracy.

    ``model_factory`` builds the *architecture* (untrained); the trained weights come from
    ``weights`` (a user's state_dict file) or else from ``training``: the dense model is trained
    here once with that recipe and cached (what the built-in tasks do); with neither, the dense
    model is the freshly initialised architecture. Keeping the constructor separate lets a
    pruned model be saved as constructor + pruning history + state_dict.

    ``finetune`` is the user's own fine-tune ``(model, steps) -> None``; when it is None
    autoprune fine-tunes on ``splits().train`` itself.
    """

    def __init__(
        self,
        name: str,
        model_factory: Callable[[], nn.Module],
        splits: Splits,
        num_classes: int,
        *,
        weights: str | Path | None = None,
        training: TrainingSpec | None = None,
        finetune: FinetuneFn | None = None,
    ) -> None:
        if num_classes < 2:
            raise ConfigError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
        self.name = name
        self.model_factory = model_factory
        self.num_classes = num_classes
        self.weights = weights
        self.training = training
        self.finetune = finetune
        self._splits = splits
        self._state: StateDict | None = None

    def splits(self) -> Splits:
        return self._splits

    @property
    def cache_path(self) -> Path | None:
        """The file holding the trained dense state_dict (None without ``training``)."""
        return None if self.training is None else self.training.path_for(self.name)

    def dense_state_dict(self) -> StateDict | None:
        """Trained weights when no ``weights`` file is given: trained once per ``training``
        recipe and seed, then loaded from the cache; None without ``training``."""
        if self.training is None:
            return None
        splits = self.splits()
        return load_or_train(self.training.path_for(self.name), self.model_factory,
                             splits.train.dataset, self.training,
                             functools.partial(accuracy, loader=splits.val))

    def dense_model(self) -> nn.Module:
        model = self.model_factory()
        if self.weights is not None:
            load_state_dict_file(self.weights, model, what=f"the model of task {self.name!r}")
        else:
            if self._state is None:
                self._state = self.dense_state_dict()
            if self._state is None:
                logger.warning("task %r has no trained weights; its dense model is untrained",
                               self.name)
            else:
                model.load_state_dict(self._state)
        return model.cpu().eval()

    def example_inputs(self) -> torch.Tensor:
        image = self._splits.train.dataset[0][0]
        return torch.as_tensor(image).unsqueeze(0)

    def evaluate(self, model: nn.Module, split: str = "val") -> float:
        if split not in EVAL_SPLITS:
            raise ConfigError(
                f"split={split!r}: evaluate() scores 'val' (search) or 'test' (final report); "
                f"training data is not a score"
            )
        loader = self._splits.val if split == "val" else self._splits.test
        return accuracy(model, loader)


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    """Top-1 accuracy of ``model`` over ``loader``, on the device of its parameters."""
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    model.eval()
    correct = total = 0
    with torch.inference_mode():
        for images, labels in loader:
            logits = model(images.to(device))
            correct += int((logits.argmax(dim=1) == labels.to(device)).sum())
            total += int(labels.numel())
    if total == 0:
        raise ConfigError("evaluate(): the split is empty; give the task a non-empty val/test set")
    return correct / total
