"""advlib.model: the architecture the report describes, counted by hand; configs that describe themselves."""
from __future__ import annotations

import pytest
import torch

from advlib.model import ResNetConfig, ResidualBlock, SmallResNet, count_parameters


def expected_parameters(cfg: ResNetConfig) -> int:
    """Parameters from the architecture formula, independently of the module code.

    conv kxk (c_in -> c_out, no bias): k*k*c_in*c_out; BatchNorm(c): 2c (weight, bias); Linear(c -> k): c*k + k.
    Each block: conv3x3(c_in -> c) + BN + conv3x3(c -> c) + BN, plus a 1x1 conv + BN projection when the
    stride or the width changes.
    """
    conv = lambda k, c_in, c_out: k * k * c_in * c_out  # noqa: E731
    bn = lambda c: 2 * c  # noqa: E731
    total = conv(3, cfg.in_channels, cfg.stem_channels) + bn(cfg.stem_channels)
    width = cfg.stem_channels
    for c, stride in zip(cfg.block_channels, cfg.block_strides):
        total += conv(3, width, c) + bn(c) + conv(3, c, c) + bn(c)
        if stride != 1 or width != c:
            total += conv(1, width, c) + bn(c)
        width = c
    return total + width * cfg.num_classes + cfg.num_classes


def test_default_parameter_count():
    # by hand for the default: stem 72+16; block1 576+16+576+16; block2 1152+32+2304+32+128+32;
    # block3 4608+64+9216+64+512+64; head 320+10
    assert expected_parameters(ResNetConfig()) == 19_810
    assert count_parameters(SmallResNet()) == 19_810


@pytest.mark.parametrize("cfg", [
    ResNetConfig(),
    ResNetConfig(stem_channels=16, block_channels=(16, 32, 64)),
    ResNetConfig(block_channels=(8, 8), block_strides=(1, 1)),  # no projection at all
    ResNetConfig(block_channels=(12, 12, 24, 24), block_strides=(2, 1, 2, 1), num_classes=7),
])
def test_parameter_count_matches_formula(cfg):
    model = SmallResNet(cfg)
    assert count_parameters(model) == expected_parameters(cfg)
    # count_parameters counts trainable parameters only, not BatchNorm buffers
    assert count_parameters(model) == sum(p.numel() for p in model.parameters())


def test_count_parameters_skips_frozen():
    model = SmallResNet()
    model.fc.weight.requires_grad_(False)
    assert count_parameters(model) == 19_810 - 320


def test_output_shape_and_stages(untrained_model):
    x = torch.rand(5, 1, 32, 32) * 2 - 1
    with torch.no_grad():
        h = untrained_model.stem(x)
        assert h.shape == (5, 8, 32, 32)
        shapes = []
        for block in untrained_model.blocks:
            h = block(h)
            shapes.append(tuple(h.shape))
        assert shapes == [(5, 8, 32, 32), (5, 16, 16, 16), (5, 32, 8, 8)]
        logits = untrained_model(x)
    assert logits.shape == (5, 10)
    assert logits.dtype == torch.float32
    # the stagewise walk above is the whole network
    assert torch.allclose(untrained_model.fc(h.mean(dim=(2, 3))), logits, atol=1e-6)


def test_single_image_and_non_default_width():
    model = SmallResNet(ResNetConfig(block_channels=(8, 16), block_strides=(1, 2), num_classes=3)).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 1, 32, 32)).shape == (1, 3)


def test_residual_block_skip():
    assert isinstance(ResidualBlock(8, 8, 1).skip, torch.nn.Identity)
    assert not isinstance(ResidualBlock(8, 16, 1).skip, torch.nn.Identity)
    assert not isinstance(ResidualBlock(8, 8, 2).skip, torch.nn.Identity)
    out = ResidualBlock(8, 16, 2).eval()(torch.randn(2, 8, 32, 32))
    assert out.shape == (2, 16, 16, 16)
    assert out.min().item() >= 0  # ReLU after the sum


def test_config_round_trip():
    cfg = ResNetConfig(stem_channels=4, block_channels=(4, 8), block_strides=(1, 2), num_classes=5)
    d = cfg.to_dict()
    assert d == {"in_channels": 1, "stem_channels": 4, "block_channels": [4, 8], "block_strides": [1, 2],
                 "num_classes": 5}
    assert all(isinstance(v, (int, list)) for v in d.values())  # plain data: safe in a weights_only checkpoint
    back = ResNetConfig.from_dict(d)
    assert back == cfg
    assert isinstance(back.block_channels, tuple) and isinstance(back.block_strides, tuple)
    assert ResNetConfig.from_dict(ResNetConfig().to_dict()) == ResNetConfig()
    assert ResNetConfig.from_dict({}) == ResNetConfig()  # missing fields take the defaults


def test_from_dict_rejects_unknown_fields():
    d = ResNetConfig().to_dict() | {"dropout": 0.1}
    with pytest.raises(ValueError, match="dropout"):
        ResNetConfig.from_dict(d)


def test_mismatched_blocks_rejected():
    with pytest.raises(ValueError, match="same length"):
        SmallResNet(ResNetConfig(block_channels=(8, 16), block_strides=(1, 2, 2)))


def test_model_keeps_its_config():
    cfg = ResNetConfig(stem_channels=4)
    assert SmallResNet(cfg).config == cfg
