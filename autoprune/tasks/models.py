"""Small CNNs and a small ViT for the built-in tasks, named like torchvision and timm so search
spaces read the same.

They take 8x8 (digits) and 28x28 (Fashion-MNIST) inputs: global average pooling makes the head
independent of the input size, and :func:`vgg_small` stops downsampling at 1x1.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from autoprune.errors import ConfigError

__all__ = ["BasicBlock", "CifarResNet", "LeNet5", "VGGSmall", "ViT", "ViTShape", "cifar_resnet",
           "lenet5", "vgg_small", "vit_small"]


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers and a residual; a 1x1 conv-BN shortcut when the shape changes."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or in_planes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CifarResNet(nn.Module):
    """He et al.'s CIFAR ResNet (depth = 6n + 2): stem, three stages of n blocks, pool, fc."""

    def __init__(
        self, blocks: int, widths: tuple[int, int, int], in_channels: int, num_classes: int
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        in_planes = widths[0]
        stages = []
        for index, width in enumerate(widths):
            stride = 1 if index == 0 else 2
            layers = [BasicBlock(in_planes, width, stride)]
            layers += [BasicBlock(width, width) for _ in range(blocks - 1)]
            stages.append(nn.Sequential(*layers))
            in_planes = width
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def cifar_resnet(
    depth: int = 8,
    widths: tuple[int, int, int] = (16, 32, 64),
    in_channels: int = 1,
    num_classes: int = 10,
) -> CifarResNet:
    """A CIFAR-style ResNet; depth 8, 14, 20, 32, 44, 56, 110 ... (6n + 2)."""
    if depth < 8 or (depth - 2) % 6:
        raise ConfigError(
            f"depth={depth}: a CIFAR ResNet has depth 6n + 2 (8, 14, 20, 32, 44, 56, 110)"
        )
    if len(widths) != 3 or min(widths) < 1:
        raise ConfigError(
            f"widths={widths!r}: give three positive stage widths, e.g. (16, 32, 64)"
        )
    _check_io(in_channels, num_classes)
    return CifarResNet((depth - 2) // 6, tuple(widths), in_channels, num_classes)


class Downsample(nn.Module):
    """2x2 max-pool while the feature map is at least 2x2, identity once it is 1x1."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] >= 2 and x.shape[-2] >= 2:
            return F.max_pool2d(x, 2)
        return x


class VGGSmall(nn.Module):
    """Plain conv-BN-ReLU stack, a max-pool after every second conv, global pool, classifier."""

    def __init__(self, widths: tuple[int, ...], in_channels: int, num_classes: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for index, width in enumerate(widths):
            layers += [
                nn.Conv2d(channels, width, 3, padding=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            ]
            if index % 2 == 1:
                layers.append(Downsample())
            channels = width
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg_small(
    widths: tuple[int, ...] = (32, 64, 128, 128, 256, 256),
    in_channels: int = 1,
    num_classes: int = 10,
) -> VGGSmall:
    """A small VGG; ``widths`` are the conv layers' output channels, in order."""
    if not widths or min(widths) < 1:
        raise ConfigError(
            f"widths={widths!r}: give positive conv widths, e.g. (32, 64, 128, 128, 256, 256)"
        )
    _check_io(in_channels, num_classes)
    return VGGSmall(tuple(widths), in_channels, num_classes)


class LeNet5(nn.Module):
    """LeCun's LeNet-5 (ReLU, max-pool); inputs of at least 12x12, 28x28 as in the paper."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, 6, 5, padding=2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.pool = nn.AdaptiveAvgPool2d(5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = self.pool(F.max_pool2d(F.relu(self.conv2(x)), 2))
        x = F.relu(self.fc1(torch.flatten(x, 1)))
        return self.fc3(F.relu(self.fc2(x)))


def lenet5(in_channels: int = 1, num_classes: int = 10) -> LeNet5:
    """LeNet-5 for 28x28 (or 32x32) images; too small a net for 8x8 digits."""
    _check_io(in_channels, num_classes)
    return LeNet5(in_channels, num_classes)


class Attention(nn.Module):
    """Multi-head self-attention with a fused ``qkv`` (timm's layout: the engine prunes heads)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = num_heads, dim // num_heads
        self.attn_dim = self.num_heads * self.head_dim
        self.qkv = nn.Linear(dim, 3 * self.attn_dim)
        self.proj = nn.Linear(self.attn_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        qkv = self.qkv(x).reshape(b, n, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(x.transpose(1, 2).reshape(b, n, self.attn_dim))


class Block(nn.Module):
    """Pre-norm transformer block: attention and an MLP, each with a residual."""

    def __init__(self, dim: int, num_heads: int, hidden: int) -> None:
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim), Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential()
        self.mlp.add_module("fc1", nn.Linear(dim, hidden))
        self.mlp.add_module("act", nn.GELU())
        self.mlp.add_module("fc2", nn.Linear(hidden, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@dataclass(frozen=True)
class ViTShape:
    """A ViT's sizes: image and patch side, width, blocks, heads per block, MLP hidden width."""

    img_size: int = 28
    patch: int = 4
    dim: int = 128
    depth: int = 5
    num_heads: int = 4
    hidden: int = 256


class ViT(nn.Module):
    """A small vision transformer: patch embedding, blocks, mean-pooled tokens, a linear head."""

    def __init__(self, shape: ViTShape, in_channels: int, num_classes: int) -> None:
        super().__init__()
        if shape.img_size % shape.patch:
            raise ConfigError(f"patch={shape.patch} does not divide img_size={shape.img_size}")
        dim = shape.dim
        self.patch_embed = nn.Conv2d(in_channels, dim, shape.patch, stride=shape.patch)
        self.pos_embed = nn.Parameter(torch.zeros(1, (shape.img_size // shape.patch) ** 2, dim))
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.blocks = nn.Sequential(*[Block(dim, shape.num_heads, shape.hidden)
                                      for _ in range(shape.depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2) + self.pos_embed
        return self.head(self.norm(self.blocks(x)).mean(1))


def vit_small(img_size: int = 28, in_channels: int = 1, num_classes: int = 10) -> ViT:
    """Patch 4, width 128, 5 blocks of 4 heads, MLP 256: about 35 MMACs on 28x28 images."""
    _check_io(in_channels, num_classes)
    return ViT(ViTShape(img_size=img_size), in_channels, num_classes)


def _check_io(in_channels: int, num_classes: int) -> None:
    if in_channels < 1:
        raise ConfigError(f"in_channels={in_channels}: use 1 (grey) or 3 (RGB)")
    if num_classes < 2:
        raise ConfigError(f"num_classes={num_classes}: a classifier needs at least 2 classes")
