"""The embedded default task: a small ResNet on scikit-learn's 8x8 digits (no download).

1,797 real images ship inside the scikit-learn wheel. The split is fixed by the seed and
stratified: 20 % test, then 15 % of the rest for validation, the remainder for training.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits

from autoprune.errors import ConfigError
from autoprune.tasks._data import ArrayDataset, loaders, stratified_split
from autoprune.tasks._train import TrainConfig, TrainingSpec
from autoprune.tasks.base import ClassificationTask
from autoprune.tasks.models import cifar_resnet

__all__ = ["CODE_VERSION", "DigitsTask"]

logger = logging.getLogger(__name__)

CODE_VERSION = 1
"""Bump when the digits model, split or recipe changes; cached dense models are then retrained."""

TEST_FRACTION = 0.20
VAL_FRACTION = 0.15
DEPTH = 8
WIDTHS = (16, 32, 64)
EPOCHS = 30
LR = 0.1


class DigitsTask(ClassificationTask):
    """ResNet-8 (widths 16/32/64) on digits; trained on first use (seconds) and cached.

    ``weights`` loads a user's state_dict instead of training. Set the ``finetune`` attribute to
    use your own fine-tune instead of autoprune's on the train split.
    """

    def __init__(
        self,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        batch_size: int = 64,
        *,
        weights: str | Path | None = None,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"batch_size={batch_size}: use a positive batch size, e.g. 64")
        data = load_digits()
        images = data.images.astype(np.float32)[:, None, :, :]
        labels = data.target.astype(np.int64)
        rest, test_idx = stratified_split(labels, TEST_FRACTION, seed)
        fit, val = stratified_split(labels[rest], VAL_FRACTION, seed)
        train_idx, val_idx = rest[fit], rest[val]
        pixels = images[train_idx] / 16.0
        mean, std = float(pixels.mean()), float(pixels.std())

        def subset(idx: np.ndarray) -> ArrayDataset:
            return ArrayDataset(images[idx], labels[idx], 1 / 16, mean, std)

        self.indices = {"train": train_idx, "val": val_idx, "test": test_idx}
        training = TrainingSpec(
            config=TrainConfig(epochs=EPOCHS, lr=LR, batch_size=batch_size),
            seed=seed,
            code_version=CODE_VERSION,
            recipe={"depth": DEPTH, "widths": WIDTHS},
            cache_dir=cache_dir,
        )
        factory = functools.partial(cifar_resnet, depth=DEPTH, widths=WIDTHS, in_channels=1,
                                    num_classes=10)
        splits = loaders(subset(train_idx), subset(val_idx), subset(test_idx), batch_size, seed)
        super().__init__("digits", factory, splits, 10, training=training, weights=weights)
