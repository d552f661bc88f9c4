"""Shared fixtures: small hand-written models that exercise each kind of channel coupling."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch
from torch import nn

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


class Residual(nn.Module):
    """Two convs whose outputs are added: they must land in one group."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.bn = nn.BatchNorm2d(16)
        self.a = nn.Conv2d(16, 16, 3, padding=1)
        self.b = nn.Conv2d(16, 16, 1)
        self.mid = nn.Conv2d(16, 24, 3, padding=1)
        self.head = nn.Linear(24, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.stem(x)))
        x = self.a(x) + self.b(x)
        x = torch.relu(self.mid(x))
        return self.head(x.mean((2, 3)))


class Concat(nn.Module):
    """DenseNet-like: two branches concatenated, then a conv reads the concat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.left = nn.Conv2d(8, 12, 3, padding=1)
        self.right = nn.Conv2d(8, 20, 1)
        self.fuse = nn.Conv2d(32, 16, 1)
        self.head = nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        x = torch.cat([self.left(x), self.right(x)], dim=1)
        return self.head(torch.relu(self.fuse(x)).mean((2, 3)))


class DepthwiseGrouped(nn.Module):
    """A depthwise conv (coupled in/out) and a grouped conv (pruned evenly per group)."""

    def __init__(self) -> None:
        super().__init__()
        self.expand = nn.Conv2d(3, 32, 1)
        self.bn1 = nn.BatchNorm2d(32)
        self.dw = nn.Conv2d(32, 32, 3, padding=1, groups=32)
        self.bn2 = nn.BatchNorm2d(32)
        self.grouped = nn.Conv2d(32, 64, 3, padding=1, groups=4)
        self.bn3 = nn.BatchNorm2d(64)
        self.head = nn.Linear(64, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn1(self.expand(x)))
        x = torch.relu(self.bn2(self.dw(x)))
        x = torch.relu(self.bn3(self.grouped(x)))
        return self.head(x.mean((2, 3)))


class TwoBranches(nn.Module):
    """One conv feeding two branches (both branches' inputs shrink with it)."""

    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Conv2d(3, 16, 3, padding=1)
        self.up = nn.Conv2d(16, 8, 3, padding=1)
        self.down = nn.Conv2d(16, 8, 1)
        self.head = nn.Linear(16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.shared(x))
        x = torch.cat([self.up(s).mean((2, 3)), self.down(s).mean((2, 3))], 1)
        return self.head(x)


class FlattenHead(nn.Module):
    """conv -> pool to 4x4 -> flatten -> linear: one channel is 16 linear inputs."""

    def __init__(self, concat: bool = False) -> None:
        super().__init__()
        self.concat = concat
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.side = nn.Conv2d(3, 8, 1)
        self.head = nn.Linear((16 if concat else 8) * 16, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        if self.concat:
            y = torch.cat([y, self.side(x)], 1)
        return self.head(torch.flatten(nn.functional.adaptive_avg_pool2d(y, 4), 1))


class DictInput(nn.Module):
    """forward() takes one dict (as many data pipelines hand batches)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 3)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        x = torch.relu(self.conv(batch["image"]))
        x = torch.relu(self.conv2(x))
        return self.head(x.mean((2, 3)))


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models and tracing: a second intra-op thread only adds contention (up to 100x
    slower on a loaded 2-core machine). Use with ``pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def image() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(1, 3, 16, 16)
