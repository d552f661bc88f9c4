"""Prune a model with a layer of your own: ``ap.register_layer``.

torch-pruning treats a layer it does not know as element-wise: channels pass through, and a
per-channel parameter, buffer or stored channel count inside it keeps its dense size, so the
pruned copy no longer runs (autoprune then leaves that group unpruned). Register the layer and
it prunes with the rest:

- ``ap.register_layer(MyLayer, channel_param="gain")`` when its channels are per-channel
  tensors (one entry per channel along ``channel_dim``, 0 by default; int attributes such as
  ``channels`` or ``num_features`` are updated);
- ``ap.register_layer(MyLayer, MyPruner())`` with a torch-pruning customized pruner
  (``tp.pruner.BasePruningFunc``) for anything else.

    python examples/custom_layer.py
"""

from __future__ import annotations

import torch
from torch import nn

import autoprune as ap


class ChannelGate(nn.Module):
    """A learnable gain per channel, with a stored channel count (like many research layers)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.channels = channels
        self.gain = nn.Parameter(torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.gain).view(1, self.channels, 1, 1)


class GatedCNN(nn.Module):
    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 3, padding=1)
        self.gate1 = ChannelGate(width)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, stride=2)
        self.gate2 = ChannelGate(2 * width)
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, padding=1)
        self.head = nn.Linear(2 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.gate1(self.conv1(x)))
        x = torch.relu(self.gate2(self.conv2(x)))
        x = torch.relu(self.conv3(x))
        return self.head(x.mean((2, 3)))


def main() -> None:
    torch.manual_seed(0)
    model = GatedCNN().eval()
    example = torch.randn(1, 3, 32, 32)

    ap.register_layer(ChannelGate, channel_param="gain")
    analysis = ap.analyze(model, example)
    print("groups:", ", ".join(f"{g.name} ({g.channels})" for g in analysis.groups))
    plan = ap.fit_budget(model, example, 1.0, flops=0.5, analysis=analysis)
    pruned = analysis.apply(plan)  # a pruned copy; its costs are checked against the plan's

    dense = ap.measure(model, example, latency=False)
    cost = ap.measure(pruned, example, latency=False)
    print(f"pruned to {cost.macs / dense.macs:.1%} of the dense MACs, "
          f"{cost.params / dense.params:.1%} of the params")
    print(f"gate1 keeps {pruned.gate1.channels} of {model.gate1.channels} channels, "
          f"gate2 {pruned.gate2.channels} of {model.gate2.channels}")
    print("output:", tuple(pruned(example).shape))


if __name__ == "__main__":
    main()
