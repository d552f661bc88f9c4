"""Fashion-MNIST (70,000 real 28x28 images) from the four IDX files, gzipped or not.

Debian's ``dataset-fashion-mnist`` package puts them under ``/usr/share/datasets/fashion-mnist``;
any folder holding the four files works. Nothing is downloaded. Validation (5,000 images, or
10 % of a subset) is carved from the training images with a seeded stratified split.
"""

from __future__ import annotations

import functools
import gzip
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from autoprune.errors import ConfigError
from autoprune.tasks._data import ArrayDataset, loaders, stratified_split
from autoprune.tasks._train import TaskOptions, TrainConfig, TrainingSpec
from autoprune.tasks.base import ClassificationTask
from autoprune.tasks.models import cifar_resnet, lenet5, vgg_small, vit_small

__all__ = ["CODE_VERSION", "DEFAULT_DATA_DIR", "FILES", "FashionMNISTTask", "read_idx"]

CODE_VERSION = 1
"""Bump when the Fashion-MNIST models, split or recipe change; cached models are retrained."""

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
VAL_SIZE = 5000
SUBSET_VAL_FRACTION = 0.10
MEAN, STD = 0.2860, 0.3530
MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet": functools.partial(cifar_resnet, depth=8, widths=(16, 32, 64), in_channels=1),
    "vgg": functools.partial(vgg_small, widths=(16, 32, 64, 64, 128, 128), in_channels=1),
    "lenet": functools.partial(lenet5, in_channels=1),
    "vit": functools.partial(vit_small, img_size=28, in_channels=1),
}
RECIPES: dict[str, dict[str, Any]] = {
    "resnet": {"optimizer": "sgd", "lr": 0.1},
    "vgg": {"optimizer": "sgd", "lr": 0.05},
    "lenet": {"optimizer": "adamw", "lr": 3e-3, "weight_decay": 1e-4},
    "vit": {"optimizer": "adamw", "lr": 2e-3, "weight_decay": 0.05},
}
DEFAULT_EPOCHS = 6
DEFAULT_BATCH_SIZE = 128

_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse one IDX file (LeCun's MNIST format), gzipped when the name ends in ``.gz``."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ConfigError(f"{path}: not an IDX file (bad magic number); use the original files")
    dtype, ndim = _IDX_DTYPES[raw[2]], raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ConfigError(
            f"{path}: holds {len(raw) - header} data bytes, header says {expected}; the file is "
            f"truncated, reinstall it"
        )
    data = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def find_files(data_dir: str | Path) -> dict[str, Path]:
    """The four IDX files in ``data_dir`` (``.gz`` preferred), or a ConfigError naming the gap."""
    folder = Path(data_dir).expanduser()
    found = {}
    for key, stem in FILES.items():
        candidates = [folder / f"{stem}.gz", folder / stem]
        path = next((c for c in candidates if c.is_file()), None)
        if path is None:
            where = "does not exist" if not folder.is_dir() else f"lacks {stem}(.gz)"
            raise ConfigError(
                f"data_dir={str(data_dir)!r}: the folder {where}; install it with "
                f"`apt-get install -y dataset-fashion-mnist` or pass --data-dir FOLDER holding "
                f"the four IDX files ({', '.join(FILES.values())}, gzipped or not)"
            )
        found[key] = path
    return found


class FashionMNISTTask(ClassificationTask):
    """A small CNN or ViT (``model``: resnet | vgg | lenet | vit) on Fashion-MNIST, trained once
    and cached.

    ``subset`` keeps a seeded stratified sample of that many training images (10 % of them for
    validation) and a sixth as many test images: for quick runs and tests. ``weights`` loads a
    user's state_dict instead of training; ``options`` sets the seed, the dense training's
    epochs (default 6), the batch size (default 128) and the cache folder.
    """

    def __init__(
        self,
        data_dir: str | Path = DEFAULT_DATA_DIR,
        *,
        model: str = "resnet",
        subset: int | None = None,
        weights: str | Path | None = None,
        options: TaskOptions | None = None,
    ) -> None:
        options = options or TaskOptions()
        seed, batch_size = options.seed, options.batch_size_or(DEFAULT_BATCH_SIZE)
        if model not in MODELS:
            raise ConfigError(f"model={model!r}: Fashion-MNIST models are {', '.join(MODELS)}")
        if subset is not None and subset < 200:
            raise ConfigError(f"subset={subset}: keep at least 200 images, or None for all")
        arrays = {key: read_idx(path) for key, path in find_files(data_dir).items()}
        train_x, train_y = arrays["train_images"], arrays["train_labels"]
        test_x, test_y = arrays["test_images"], arrays["test_labels"]
        val_size: float | int = VAL_SIZE
        if subset is not None and subset < len(train_y):
            _, keep = stratified_split(train_y, subset, seed)
            train_x, train_y = train_x[keep], train_y[keep]
            _, keep = stratified_split(test_y, max(subset // 6, 100), seed)
            test_x, test_y = test_x[keep], test_y[keep]
            val_size = SUBSET_VAL_FRACTION
        fit, val = stratified_split(train_y, val_size, seed)

        def dataset(x: np.ndarray, y: np.ndarray) -> ArrayDataset:
            return ArrayDataset(x[:, None, :, :], y, 1 / 255, MEAN, STD)

        splits = loaders(dataset(train_x[fit], train_y[fit]), dataset(train_x[val], train_y[val]),
                         dataset(test_x, test_y), batch_size, seed)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        training = TrainingSpec(
            config=TrainConfig(epochs=options.epochs_or(DEFAULT_EPOCHS), batch_size=batch_size,
                               device=device, **RECIPES[model]),
            seed=seed,
            code_version=CODE_VERSION,
            recipe={"model": model, "subset": subset},
            cache_dir=options.cache_dir,
        )
        name = f"fashion-mnist-{model}"
        super().__init__(name, MODELS[model], splits, 10, weights=weights, training=training)
