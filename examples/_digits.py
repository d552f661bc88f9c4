"""Plain PyTorch pieces shared by the examples: digits data, a small CNN, a training loop.

Nothing here is autoprune: it stands for *your* existing training code.
"""

from __future__ import annotations

import torch
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from torch import nn
from torch.utils.data import DataLoader, TensorDataset


def loaders(batch_size: int = 64) -> tuple[DataLoader, DataLoader, DataLoader]:
    """Train / validation (carved from train) / test loaders over scikit-learn's digits."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y)
    x_rest, x_test, y_rest, y_test = train_test_split(x, y, test_size=0.2, random_state=0,
                                                      stratify=y)
    x_train, x_val, y_train, y_val = train_test_split(x_rest, y_rest, test_size=0.15,
                                                      random_state=0, stratify=y_rest)
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=batch_size, shuffle=True)
    return (train, DataLoader(TensorDataset(x_val, y_val), batch_size=256),
            DataLoader(TensorDataset(x_test, y_test), batch_size=256))


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
            nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(64, 128, 3, padding=1), nn.BatchNorm2d(128), nn.ReLU(),
        )
        self.classifier = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x).mean((2, 3)))


def train(model: nn.Module, loader: DataLoader, steps: int, lr: float = 0.05,
          optimizer: torch.optim.Optimizer | None = None, on_step=None) -> None:
    """Your training loop: SGD + cross-entropy for ``steps`` steps."""
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    done = 0
    while done < steps:
        for x, y in loader:
            loss = nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if on_step is not None:
                on_step()
            done += 1
            if done >= steps:
                break
    model.eval()


def accuracy(model: nn.Module, loader: DataLoader) -> float:
    model.eval()
    with torch.no_grad():
        hits = sum(int((model(x).argmax(1) == y).sum()) for x, y in loader)
    return hits / len(loader.dataset)
