"""The original report's simplified ResNet (~20k parameters) for 1x32x32 MNIST digits.

    stem:    Conv3x3(1->8) -> BN -> ReLU                          (N, 8, 32, 32)
    block 1: ResidualBlock(8->8,   stride 1)                       (N, 8, 32, 32)
    block 2: ResidualBlock(8->16,  stride 2)  1x1 projection skip  (N, 16, 16, 16)
    block 3: ResidualBlock(16->32, stride 2)  1x1 projection skip  (N, 32, 8, 8)
    head:    AdaptiveAvgPool(1) -> Linear(32->10)                  (N, 10) logits

fold_batchnorm(model) gives the same network's eval-mode forward pass with every BatchNorm folded into its
convolution, for fast inference (predictions, sweeps).
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
    batchnorm: bool = True  # False: no BatchNorm, every convolution biased (the capacity study's ablation)

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


def widened(width: int, batchnorm: bool = True) -> ResNetConfig:
    """The study's architecture with every channel count multiplied by ``width`` (1: the original, 19,810
    parameters; 77,754 at 2, 173,842 at 3: about width**2), with or without BatchNorm. Used by the capacity study
    of adversarial training."""
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"width must be a positive integer (a channel multiplier), got {width!r}")
    base = ResNetConfig()
    return ResNetConfig(stem_channels=base.stem_channels * width,
                        block_channels=tuple(c * width for c in base.block_channels), batchnorm=batchnorm)


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


class ResidualBlock(nn.Module):
    """output = ReLU(F(x) + skip(x)), F = conv3x3-BN-ReLU-conv3x3-BN; skip = identity or 1x1 conv + BN. Without
    batchnorm, every BN is an identity and the convolutions have biases."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, batchnorm: bool = True):
        super().__init__()
        bias = not batchnorm
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=bias)
        self.bn1 = _norm(out_channels, batchnorm)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, stride=1, padding=1, bias=bias)
        self.bn2 = _norm(out_channels, batchnorm)
        self.skip = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.skip = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=bias), _norm(out_channels, batchnorm)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place where autograd allows it (BatchNorm's backward needs its input, not its output; ReLU's needs
        # only its output): the same numbers as F.relu(bn2(...) + skip(x)), with two fewer activation-sized
        # allocations per block, which the memory-bound training step feels (about 8% with one thread)
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        out += self.skip(x)
        return F.relu(out, inplace=True)


class SmallResNet(nn.Module):
    """Input (N, in_channels, H, W) (the study: (N, 1, 32, 32) in [-1, 1]; any size works, the pooling is
    adaptive); output (N, num_classes) logits."""

    def __init__(self, config: ResNetConfig = ResNetConfig()):
        super().__init__()
        if len(config.block_channels) != len(config.block_strides):
            raise ValueError("block_channels and block_strides must have the same length")
        self.config = config
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, config.stem_channels, 3, padding=1, bias=not config.batchnorm),
            _norm(config.stem_channels, config.batchnorm),
            nn.ReLU(inplace=True),
        )
        blocks, width = [], config.stem_channels
        for out_channels, stride in zip(config.block_channels, config.block_strides):
            blocks.append(ResidualBlock(width, out_channels, stride, config.batchnorm))
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


# ---------------------------------------------------------------------------------------------------------------
# The eval-mode forward pass with BatchNorm folded into the convolutions


def _fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
    """conv -> eval-mode bn as one biased convolution: w' = w * s, b' = beta + (b - mean) * s,
    s = gamma / sqrt(running_var + bn.eps)."""
    scale = torch.rsqrt(bn.running_var + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight
    bias = -bn.running_mean * scale if conv.bias is None else (conv.bias - bn.running_mean) * scale
    if bn.bias is not None:
        bias = bias + bn.bias
    folded = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                       padding=conv.padding, dilation=conv.dilation, groups=conv.groups, bias=True,
                       device=conv.weight.device, dtype=conv.weight.dtype)
    folded.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
    folded.bias.copy_(bias)
    return folded


class _FoldedResNet(nn.Module):
    """A SmallResNet in eval mode with its BatchNorms folded: ResidualBlock(x) = ReLU(conv2(ReLU(conv1(x))) + skip(x))
    with biased convolutions; activations channels_last."""

    def __init__(self, model: SmallResNet):
        super().__init__()
        self.stem = _fold(model.stem[0], model.stem[1])
        self.blocks = nn.ModuleList(
            nn.ModuleList([_fold(b.conv1, b.bn1), _fold(b.conv2, b.bn2)]
                          + ([] if isinstance(b.skip, nn.Identity) else [_fold(b.skip[0], b.skip[1])]))
            for b in model.blocks)
        self.fc = nn.Linear(model.fc.in_features, model.fc.out_features, device=model.fc.weight.device,
                            dtype=model.fc.weight.dtype)
        self.fc.load_state_dict(model.fc.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.stem(x.to(memory_format=torch.channels_last)), inplace=True)
        for conv1, conv2, *skip in self.blocks:
            out = conv2(F.relu(conv1(h), inplace=True))
            out += skip[0](h) if skip else h
            h = F.relu(out, inplace=True)
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


def _foldable(model: nn.Module) -> bool:
    """True for a plain SmallResNet: no subclass, no hooks, every BatchNorm with running statistics."""
    if type(model) is not SmallResNet or len(model.stem) != 3 or not model.config.batchnorm:
        return False
    if any(type(b) is not ResidualBlock for b in model.blocks):
        return False
    for m in model.modules():
        if m._forward_hooks or m._forward_pre_hooks:
            return False
        if isinstance(m, nn.BatchNorm2d) and (m.running_mean is None or m.running_var is None):
            return False
    return True


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """The eval-mode forward pass of a SmallResNet with every BatchNorm folded into the convolution before it.

    Returns a new module computing ``model.eval()(x)`` up to float rounding (tests/test_model.py bounds it), for
    inference only: x (N, 1, 32, 32) in [-1, 1] -> (N, num_classes) logits, on the model's device and dtype.
    Activations are channels_last, which the CPU's convolutions run faster. The folded module is a snapshot of
    the current weights and running statistics (fold again after changing them), whatever mode the model is in;
    it has no gradients (``requires_grad`` is False) and does not change the model.

    Applies to a plain :class:`SmallResNet` only. Any other module (a subclass, a wrapper, a model with forward
    hooks, BatchNorm without running statistics) is returned unchanged: it is then the caller's job to put it
    in eval mode (``advlib.attacks.eval_mode``).
    """
    if not _foldable(model):
        return model
    with torch.no_grad():
        folded = _FoldedResNet(model)
    return folded.to(memory_format=torch.channels_last).requires_grad_(False).eval()


# ---------------------------------------------------------------------------------------------------------------
# A plain convolutional network: the MNIST model of Wong, Rice & Kolter 2020 ("Fast is better than free")


@dataclass(frozen=True)
class SmallCNNConfig:
    """Conv(c1, 4x4, stride 2, pad 1) -> ReLU -> Conv(c2, 4x4, stride 2, pad 1) -> ReLU -> FC(hidden) -> ReLU ->
    FC(num_classes), no BatchNorm. The defaults are Wong et al.'s MNIST network (166,406 parameters, on 28x28
    images in [0, 1]), whose released weights (locuslab/fast_adversarial, MNIST/models/fgsm.pth) load into it."""

    in_channels: int = 1
    image_size: int = 28  # the input's height and width (a multiple of 4: two stride-2 convolutions)
    channels: tuple[int, ...] = (16, 32)
    hidden: int = 100
    num_classes: int = 10

    def __post_init__(self):
        object.__setattr__(self, "channels", tuple(self.channels))  # a list (from JSON) is accepted
        numbers = self.channels + (self.hidden, self.image_size, self.in_channels, self.num_classes)
        if (len(self.channels) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1
                                               for v in numbers) or self.image_size % 4):
            raise ValueError(f"SmallCNNConfig needs positive integers, two channel counts and an image size divisible "
                             f"by 4, got channels={self.channels}, hidden={self.hidden}, image_size={self.image_size}")

    def to_dict(self) -> dict:
        return {**asdict(self), "channels": list(self.channels)}

    @classmethod
    def from_dict(cls, d: dict) -> "SmallCNNConfig":
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown SmallCNNConfig fields {sorted(unknown)}: the checkpoint is from another version")
        return cls(**{**d, **({"channels": tuple(d["channels"])} if "channels" in d else {})})


class SmallCNN(nn.Sequential):
    """Input (N, in_channels, image_size, image_size), in whatever bounds it was trained on; output (N, classes)
    logits. An nn.Sequential, so its state_dict keys (0.weight, 2.weight, 5.weight, 7.weight) are those of Wong et
    al.'s ``mnist_net()``."""

    def __init__(self, config: SmallCNNConfig = SmallCNNConfig()):
        c1, c2 = config.channels
        side = config.image_size // 4
        super().__init__(nn.Conv2d(config.in_channels, c1, 4, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(c1, c2, 4, stride=2, padding=1), nn.ReLU(), nn.Flatten(),
                         nn.Linear(c2 * side * side, config.hidden), nn.ReLU(), nn.Linear(config.hidden, config.num_classes))
        self.config = config


ARCHITECTURES = {"SmallResNet": (SmallResNet, ResNetConfig), "SmallCNN": (SmallCNN, SmallCNNConfig)}


def architecture_of(config) -> str:
    """The name of the architecture a config describes (a key of :data:`ARCHITECTURES`)."""
    for name, (_, config_type) in ARCHITECTURES.items():
        if type(config) is config_type:
            return name
    raise TypeError(f"unknown model config {type(config).__name__}: one of "
                    f"{[c.__name__ for _, c in ARCHITECTURES.values()]} expected")


def build_model(config) -> nn.Module:
    """A fresh model of the architecture ``config`` describes (a ResNetConfig or a SmallCNNConfig)."""
    return ARCHITECTURES[architecture_of(config)][0](config)
