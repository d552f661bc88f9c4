"""CIFAR-10 and ImageNet-style folders with any torchvision classification builder.

Only data the user already has: ``download=False`` everywhere, no hub weights. ``weights=PATH``
loads the user's own state_dict; without it the dense model is trained here once and cached
(slow on a CPU: pass ``--weights`` when you have a trained model). Validation is carved from the
training images (seeded, stratified); the held-out set (CIFAR-10 test, the folder's ``val/``)
is the test split.
"""

from __future__ import annotations

import difflib
import functools
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision
from torch import nn
from torch.utils.data import Dataset, Subset
from torchvision import transforms

from autoprune.errors import ConfigError
from autoprune.tasks._data import loaders, stratified_split
from autoprune.tasks._train import TaskOptions, TrainConfig, TrainingSpec
from autoprune.tasks.base import ClassificationTask

__all__ = ["CODE_VERSION", "build_model", "cifar10_task", "classification_models",
           "imagefolder_task"]

logger = logging.getLogger(__name__)

CODE_VERSION = 1
"""Bump when the vision transforms, split or recipe change; cached dense models are retrained."""

VAL_FRACTION = 0.1
EPOCHS = 30  # when no weights are given (TaskOptions.epochs overrides)
CIFAR10_VAL_SIZE = 5000
CIFAR10_MEAN, CIFAR10_STD = (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def classification_models() -> list[str]:
    """Names of torchvision's image-classification builders (``--model`` values)."""
    return sorted(torchvision.models.list_models(module=torchvision.models))


TIMM = "timm:"


def _timm() -> object:
    try:
        import timm
    except ImportError:
        raise ConfigError("--model timm:NAME needs timm: pip install timm") from None
    return timm


def check_model_name(name: str) -> None:
    """ConfigError naming a few close builder names when ``name`` is not one: a torchvision
    classification builder, or ``timm:<name>`` for any timm model."""
    if name.startswith(TIMM):
        timm, bare = _timm(), name.removeprefix(TIMM)
        if not timm.is_model(bare):  # type: ignore[attr-defined]
            names = timm.list_models()  # type: ignore[attr-defined]
            close = difflib.get_close_matches(bare, names, n=4, cutoff=0.5) or names[:4]
            raise ConfigError(f"--model {name!r} is not a timm model; did you mean "
                              f"{', '.join(TIMM + c for c in close)}? (see timm.list_models())")
        return
    names = classification_models()
    if name not in names:
        close = difflib.get_close_matches(name, names, n=4, cutoff=0.5) or names[:4]
        raise ConfigError(
            f"model={name!r} is not a torchvision classification model; did you mean "
            f"{', '.join(close)}? (see torchvision.models.list_models())"
        )


def build_model(name: str, num_classes: int) -> nn.Module:
    """An untrained torchvision (or ``timm:<name>``) model with a ``num_classes`` head; nothing
    is downloaded (``weights=None`` / ``pretrained=False``)."""
    check_model_name(name)
    if name.startswith(TIMM):
        return _timm().create_model(  # type: ignore[attr-defined,no-any-return]
            name.removeprefix(TIMM), pretrained=False, num_classes=num_classes)
    return torchvision.models.get_model(name, weights=None, num_classes=num_classes)


def _with_builder(task: ClassificationTask, model: str, num_classes: int) -> ClassificationTask:
    """A timm model's importable builder, for ``export --format pt`` / ``ap.load_pruned``."""
    if model.startswith(TIMM):
        task.builder = "timm:create_model"  # type: ignore[attr-defined]
        task.builder_kwargs = {  # type: ignore[attr-defined]
            "model_name": model.removeprefix(TIMM), "num_classes": num_classes,
            "pretrained": False}
    return task


@dataclass(frozen=True)
class _Build:
    """What both builders hand to :func:`_task`; ``data`` says which images trained the model."""

    model: str
    weights: str | Path | None
    options: TaskOptions
    batch_size: int  # the options' or the builder's default
    data: dict[str, object]


def _task(
    name: str, datasets: tuple[Dataset, Dataset, Dataset], num_classes: int, build: _Build
) -> ClassificationTask:
    factory = functools.partial(build_model, build.model, num_classes)
    options = build.options
    splits = loaders(*datasets, build.batch_size, options.seed, options.num_workers)
    if build.weights is not None:
        return _with_builder(ClassificationTask(name, factory, splits, num_classes,
                                                weights=build.weights), build.model, num_classes)
    logger.info("no weights given for %s: the dense model will be trained here on first use "
                "(pass --weights PATH to use your own)", name)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    training = TrainingSpec(
        config=TrainConfig(epochs=options.epochs_or(EPOCHS), lr=0.05,
                           batch_size=build.batch_size, device=device),
        seed=options.seed,
        code_version=CODE_VERSION,
        recipe={"model": build.model, **build.data},
        cache_dir=options.cache_dir,
    )
    return _with_builder(ClassificationTask(name, factory, splits, num_classes,
                                            training=training), build.model, num_classes)


def _carve(train_aug: Dataset, train_plain: Dataset, targets: list[int], val: float | int,
           seed: int) -> tuple[Subset, Subset]:
    fit, held = stratified_split(np.asarray(targets), val, seed)
    return Subset(train_aug, fit.tolist()), Subset(train_plain, held.tolist())


def cifar10_task(data_dir: str | Path, model: str = "resnet18", weights: str | Path | None = None,
                 *, options: TaskOptions | None = None) -> ClassificationTask:
    """CIFAR-10 from ``data_dir`` (holding ``cifar-10-batches-py``, as torchvision lays it out).

    ``options``: the seed, the dense training's epochs (default 30; only without ``weights``),
    the batch size (default 128) and the cache folder.
    """
    check_model_name(model)
    options = options or TaskOptions()
    root = Path(data_dir).expanduser()
    if root.name == "cifar-10-batches-py":
        root = root.parent
    norm = transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD)
    plain = transforms.Compose([transforms.ToTensor(), norm])
    aug = transforms.Compose([transforms.RandomCrop(32, padding=4),
                              transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm])
    try:
        train_aug = torchvision.datasets.CIFAR10(root, train=True, transform=aug, download=False)
        train_plain = torchvision.datasets.CIFAR10(root, train=True, transform=plain)
        test = torchvision.datasets.CIFAR10(root, train=False, transform=plain)
    except RuntimeError as exc:
        raise ConfigError(
            f"data_dir={str(data_dir)!r} holds no CIFAR-10 ({exc}); pass --data-dir FOLDER "
            f"containing cifar-10-batches-py (the python version from "
            f"https://www.cs.toronto.edu/~kriz/cifar.html, extracted)"
        ) from exc
    train, val = _carve(train_aug, train_plain, train_aug.targets, CIFAR10_VAL_SIZE, options.seed)
    build = _Build(model, weights, options, options.batch_size_or(128),
                   {"data": str(root.resolve())})
    return _task(f"cifar10-{model.replace(':', '-')}", (train, val, test), 10, build)


def imagefolder_task(data_dir: str | Path, model: str = "resnet18",
                     weights: str | Path | None = None, *, image_size: int = 224,
                     options: TaskOptions | None = None) -> ClassificationTask:
    """An ImageNet-style folder: ``train/CLASS/*.jpg`` and ``val/CLASS/*.jpg`` (val = test).

    ``options``: the seed, the dense training's epochs (default 30; only without ``weights``),
    the batch size (default 64) and the cache folder.
    """
    check_model_name(model)
    options = options or TaskOptions()
    if image_size < 8:
        raise ConfigError(f"image_size={image_size}: use at least 8 pixels, e.g. 224")
    root = Path(data_dir).expanduser()
    for sub in ("train", "val"):
        if not (root / sub).is_dir():
            raise ConfigError(
                f"data_dir={str(data_dir)!r} has no {sub}/ subfolder; pass --data-dir FOLDER "
                f"holding train/CLASS/*.jpg and val/CLASS/*.jpg (ImageNet layout)"
            )
    norm = transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    resize = max(image_size, round(image_size * 256 / 224))
    plain = transforms.Compose([transforms.Resize(resize), transforms.CenterCrop(image_size),
                                transforms.ToTensor(), norm])
    aug = transforms.Compose([transforms.RandomResizedCrop(image_size),
                              transforms.RandomHorizontalFlip(), transforms.ToTensor(), norm])
    try:
        train_aug = torchvision.datasets.ImageFolder(str(root / "train"), transform=aug)
        train_plain = torchvision.datasets.ImageFolder(str(root / "train"), transform=plain)
        test = torchvision.datasets.ImageFolder(str(root / "val"), transform=plain)
    except (FileNotFoundError, RuntimeError) as exc:
        raise ConfigError(
            f"data_dir={str(data_dir)!r}: {exc}; put images under train/CLASS/ and val/CLASS/"
        ) from exc
    if test.classes != train_aug.classes:
        raise ConfigError(
            f"data_dir={str(data_dir)!r}: train/ has classes {train_aug.classes[:5]}..., val/ "
            f"has {test.classes[:5]}...; give both the same class subfolders"
        )
    train, val = _carve(train_aug, train_plain, train_aug.targets, VAL_FRACTION, options.seed)
    build = _Build(model, weights, options, options.batch_size_or(64),
                   {"data": str(root.resolve()), "image_size": image_size})
    return _task(f"imagefolder-{model.replace(':', '-')}", (train, val, test),
                 len(train_aug.classes), build)
