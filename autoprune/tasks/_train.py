"""Train a built-in task's dense model once, cache its state_dict, load it at once afterwards.

One home for the recipe shared by every built-in task: seeded init and shuffling, SGD with
Nesterov momentum or AdamW, cosine LR, optional label smoothing. The cache file is keyed by task
name, seed, code version and a digest of the recipe; it is written atomically (temp file +
``os.replace``) under a ``filelock.FileLock`` so two processes never train the same model twice.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from filelock import FileLock
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from autoprune.errors import ConfigError

__all__ = [
    "CODE_VERSION",
    "TaskOptions",
    "TrainConfig",
    "TrainingSpec",
    "cache_file",
    "default_cache_dir",
    "load_or_train",
    "recipe_of",
]

logger = logging.getLogger(__name__)

CODE_VERSION = 1
"""Bump when a shared training detail changes, so every cached dense model is retrained."""

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class TrainConfig:
    """The dense-training recipe; every field is part of the cache key."""

    epochs: int
    lr: float
    batch_size: int = 64
    weight_decay: float = 5e-4
    optimizer: Literal["sgd", "adamw"] = "sgd"
    label_smoothing: float = 0.0
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.epochs < 1:
            raise ConfigError(f"epochs={self.epochs}: train the dense model for at least 1 epoch")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size={self.batch_size}: use a positive batch size")
        if self.optimizer not in ("sgd", "adamw"):
            raise ConfigError(f"optimizer={self.optimizer!r}: use 'sgd' or 'adamw'")


def default_cache_dir() -> Path:
    """``$AUTOPRUNE_CACHE`` if set, else ``$XDG_CACHE_HOME/autoprune``, else
    ``~/.cache/autoprune``."""
    env = os.environ.get("AUTOPRUNE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "autoprune"


def cache_file(
    cache_dir: str | Path | None,
    name: str,
    seed: int,
    code_version: int,
    recipe: dict[str, object],
) -> Path:
    """Where the dense state_dict of this task, seed and recipe lives."""
    folder = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    text = json.dumps({"shared": CODE_VERSION, **recipe}, sort_keys=True, default=str)
    digest = hashlib.sha256(text.encode()).hexdigest()[:10]
    safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)
    return folder / f"{safe}-seed{seed}-v{code_version}-{digest}.pt"


def load_or_train(
    path: Path,
    model_factory: Callable[[], nn.Module],
    train_set: Dataset,
    training: TrainingSpec,
    score: Callable[[nn.Module], float] | None = None,
) -> StateDict:
    """The cached state_dict at ``path``, training and writing it first if it is not there.

    ``training`` gives the recipe and the seed; ``score`` (e.g. validation accuracy) is logged
    once the model is trained.
    """
    config, seed = training.config, training.seed
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        if path.is_file():
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
                logger.info("dense model: loaded from the cache (%s)", path)
                return state
            except Exception as exc:  # a truncated or foreign file: retrain over it
                logger.warning("cached model %s is unreadable (%s); retraining", path, exc)
        logger.info("dense model: training it once (%d epochs on %s), then cached as %s",
                    config.epochs, config.device, path)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_factory()
        start = time.perf_counter()
        train(model, train_set, config, seed)
        seconds = time.perf_counter() - start
        if score is not None:
            logger.info("trained %s in %.1f s, val accuracy %.4f", path.name, seconds,
                        score(model))
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        _save_atomic(state, path)
        return state


def train(model: nn.Module, train_set: Dataset, config: TrainConfig, seed: int) -> None:
    """Train ``model`` in place with the seeded recipe; the global RNG is left untouched."""
    device = torch.device(config.device)
    model.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size=config.batch_size, shuffle=True,
                        generator=generator, drop_last=len(train_set) > config.batch_size)
    optimizer = _optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=config.lr, total_steps=config.epochs * len(loader), pct_start=0.15,
        anneal_strategy="cos",
    )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    with torch.random.fork_rng(devices=[]), tqdm(
        range(config.epochs), desc="training dense model", unit="epoch", disable=None, leave=False
    ) as epochs:
        torch.manual_seed(seed)
        for _ in epochs:
            total = 0.0
            for images, labels in loader:
                optimizer.zero_grad(set_to_none=True)
                logits = model(images.to(device))
                if not isinstance(logits, torch.Tensor):  # GoogLeNet/Inception aux outputs
                    logits = logits[0]
                loss = loss_fn(logits, labels.to(device))
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += loss.item()
            epochs.set_postfix(loss=f"{total / len(loader):.3f}")
    model.cpu().eval()


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    decay = [p for p in model.parameters() if p.ndim > 1]
    no_decay = [p for p in model.parameters() if p.ndim <= 1]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr)
    return torch.optim.SGD(groups, lr=config.lr, momentum=0.9, nesterov=True)


def _save_atomic(state: StateDict, path: Path) -> None:
    """Through the one atomic writer (mode 0644: a shared ``AUTOPRUNE_CACHE`` is readable by
    every user of it)."""
    from autoprune.results import atomic_write_bytes

    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def recipe_of(config: TrainConfig, **extra: object) -> dict[str, object]:
    """The cache-key recipe: the training config plus the task's own model/data choices."""
    recipe = dataclasses.asdict(config)
    recipe.pop("device")  # where it trained does not change what it is
    return {**recipe, **extra}


@dataclass(frozen=True)
class TrainingSpec:
    """How and where a task trains its dense model; all but ``cache_dir`` key the cache.

    ``recipe`` holds the task's own choices (model, subset, ...) that change what gets trained.
    """

    config: TrainConfig
    seed: int
    code_version: int
    recipe: dict[str, object] = dataclasses.field(default_factory=dict)
    cache_dir: str | Path | None = None

    def path_for(self, name: str) -> Path:
        """The file holding the dense state_dict of task ``name`` trained this way."""
        recipe = recipe_of(self.config, **self.recipe)
        return cache_file(self.cache_dir, name, self.seed, self.code_version, recipe)


@dataclass(frozen=True)
class TaskOptions:
    """The options the built-in tasks share; None takes the task's own default.

    ``seed`` fixes the splits, the shuffling and the dense training; ``epochs`` is how long the
    dense model trains when no ``weights`` file is given; ``batch_size`` is the loaders' (and
    that training's); the trained model is cached under ``cache_dir`` (None:
    ``$AUTOPRUNE_CACHE``, ``$XDG_CACHE_HOME/autoprune`` or ``~/.cache/autoprune``);
    ``num_workers`` loader processes decode images (image folders, CIFAR-10).
    """

    seed: int = 0
    epochs: int | None = None
    batch_size: int | None = None
    cache_dir: str | Path | None = None
    num_workers: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.num_workers, int) or not 0 <= self.num_workers <= 256:
            raise ConfigError(f"--num-workers {self.num_workers!r}: use 0 (load in this "
                              "process) to 256")
        for name in ("epochs", "batch_size"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ConfigError(f"TaskOptions({name}={value!r}): use a positive int, or None "
                                  "for the task's default")

    def epochs_or(self, default: int) -> int:
        return default if self.epochs is None else self.epochs

    def batch_size_or(self, default: int) -> int:
        return default if self.batch_size is None else self.batch_size
