"""In-memory image datasets and seeded splits shared by the built-in tasks."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from sklearn.model_selection import train_test_split
from torch.utils.data import DataLoader, Dataset

from autoprune.tasks.base import Splits

__all__ = ["ArrayDataset", "loaders", "stratified_split"]


class ArrayDataset(Dataset):
    """Images held as one ``(N, C, H, W)`` array, normalised per item: ``(x * scale - mean) / std``.

    Keeping uint8 storage and normalising on the fly holds Fashion-MNIST in 55 MB instead of 220.
    """

    def __init__(
        self, images: np.ndarray, labels: np.ndarray, scale: float, mean: float, std: float
    ) -> None:
        if images.ndim != 4 or len(images) != len(labels):
            raise ValueError(f"images {images.shape} and labels {labels.shape} do not match")
        self.images = torch.from_numpy(np.ascontiguousarray(images))
        self.labels = torch.from_numpy(np.ascontiguousarray(labels).astype(np.int64))
        self.scale, self.mean, self.std = scale, mean, std

    def __len__(self) -> int:
        return len(self.labels)

    def _normalise(self, images: torch.Tensor) -> torch.Tensor:
        return (images.float() * self.scale - self.mean) / self.std

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self._normalise(self.images[index]), self.labels[index]

    def __getitems__(self, indices: Sequence[int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Batched fetch for DataLoader: one gather instead of ``batch_size`` Python calls."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return list(zip(self._normalise(self.images[index]).unbind(0),
                        self.labels[index].unbind(0), strict=True))


def stratified_split(
    labels: np.ndarray, fraction: float | int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices ``(keep, held_out)``; ``fraction`` of the items (a count if int) are held out."""
    indices = np.arange(len(labels))
    try:
        keep, held = train_test_split(
            indices, test_size=fraction, random_state=seed, shuffle=True, stratify=labels
        )
    except ValueError:  # too few items per class to stratify (tiny folders): plain seeded split
        keep, held = train_test_split(indices, test_size=fraction, random_state=seed)
    return np.sort(keep), np.sort(held)


def loaders(
    train: Dataset, val: Dataset, test: Dataset, batch_size: int, seed: int,
    num_workers: int = 0,
) -> Splits:
    """Train shuffles with a seeded generator; val and test keep their order. ``num_workers``
    decode images in that many processes (image folders; 0: in this process)."""
    generator = torch.Generator().manual_seed(seed)
    extra = {"num_workers": num_workers, "persistent_workers": num_workers > 0}
    return Splits(
        train=DataLoader(train, batch_size=batch_size, shuffle=True, generator=generator,
                         **extra),
        val=DataLoader(val, batch_size=max(batch_size, 256), shuffle=False, **extra),
        test=DataLoader(test, batch_size=max(batch_size, 256), shuffle=False, **extra),
    )
