"""The original report's simplified ResNet (~20k parameters) for 1x32x32 MNIST digits.

    stem:    Conv3x3(1->8) -> BN -> ReLU                          (N, 8, 32, 32)
    block 1: ResidualBlock(8->8,   stride 1)                       (N, 8, 32, 32)
    block 2: ResidualBlock(8->16,  stride 2)  1x1 projection skip  (N, 16, 16, 16)
    block 3: ResidualBlock(16->32, stride 2)  1x1 projection skip  (N, 32, 8, 8)
    head:    AdaptiveAvgPool(1) -> Linear(32->10)                  (N, 10) logits
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
import torch.nn.functional as F


@dataclass(frozen=True)
class ResNetConfig:
    in_channels: int = 1  # MNIST is greyscale
    stem_channels: int = 8  # the report keeps 8 instead of the usual 16 to stay small
    block_channels: tuple[int, ...] = (8, 16, 32)  # output width of each residual block
    block_strides: tuple[int, ...] = (1, 2, 2)  # stride-2 blocks halve the spatial size
    num_classes: int = 10

    def to_dict(self) -> dict:
        d = asdict(self)
        d["block_channels"] = list(self.block_channels)
        d["block_strides"] = list(self.block_strides)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "ResNetConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown ResNetConfig fields {sorted(unknown)}: the checkpoint is from another version")
        d = dict(d)
        for key in ("block_channels", "block_strides"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**d)


class ResidualBlock(nn.Module):
    """output = ReLU(F(x) + skip(x)), F = conv3x3-BN-ReLU-conv3x3-BN; skip = identity or 1x1 conv + BN."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.skip = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.skip = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.skip(x))


class SmallResNet(nn.Module):
    """Input (N, 1, 32, 32) in [-1, 1]; output (N, 10) logits."""

    def __init__(self, config: ResNetConfig = ResNetConfig()):
        super().__init__()
        if len(config.block_channels) != len(config.block_strides):
            raise ValueError("block_channels and block_strides must have the same length")
        self.config = config
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, config.stem_channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(config.stem_channels),
            nn.ReLU(inplace=True),
        )
        blocks, width = [], config.stem_channels
        for out_channels, stride in zip(config.block_channels, config.block_strides):
            blocks.append(ResidualBlock(width, out_channels, stride))
            width = out_channels
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
