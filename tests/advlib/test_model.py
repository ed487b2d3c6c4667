"""advlib.model: the architecture the report describes, counted by hand; configs that describe themselves."""
from __future__ import annotations

import copy

import pytest
import torch

from advlib.model import ResNetConfig, ResidualBlock, SmallResNet, count_parameters, fold_batchnorm


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


@pytest.mark.parametrize("in_ch,out_ch,stride", [(8, 8, 1), (8, 16, 2)])
def test_residual_block_in_place_forward_matches_the_textbook_formula(in_ch, out_ch, stride):
    # the oracle: ReLU(BN(conv(ReLU(BN(conv(x))))) + skip(x)) written out of place; the block computes it in place
    torch.manual_seed(0)
    block = ResidualBlock(in_ch, out_ch, stride).train()
    x = torch.randn(4, in_ch, 16, 16, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = block(x)
    out.square().sum().backward()
    grads = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    ref = torch.relu(block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(x_ref))))) + block.skip(x_ref))
    ref.square().sum().backward()
    torch.testing.assert_close(out, ref, rtol=0, atol=0)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=0)
    for g, p in zip(grads, block.parameters()):
        torch.testing.assert_close(g, p.grad, rtol=0, atol=0)


def test_config_round_trip():
    cfg = ResNetConfig(stem_channels=4, block_channels=(4, 8), block_strides=(1, 2), num_classes=5)
    d = cfg.to_dict()
    assert d == {"in_channels": 1, "stem_channels": 4, "block_channels": [4, 8], "block_strides": [1, 2],
                 "num_classes": 5, "batchnorm": True}
    assert all(isinstance(v, (int, list)) for v in d.values())  # plain data: safe in a weights_only checkpoint
    d.pop("batchnorm")
    assert ResNetConfig.from_dict(d) == cfg  # a checkpoint from before the field: BatchNorm, as then
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


# ---------------------------------------------------------------------------------------------------------------
# fold_batchnorm: the folded network against the model's own eval-mode forward pass (the oracle)


def randomize_batchnorm(model: SmallResNet, seed: int = 0) -> SmallResNet:
    """Give every BatchNorm non-trivial statistics: running means ~ N(0, 1), variances from 1e-3 to 10 (so that
    bn.eps matters), affine weights and biases ~ N(0, 1) and, on every other BatchNorm, eps = 0.05 instead of 1e-5."""
    gen = torch.Generator().manual_seed(seed)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for i, bn in enumerate(norms):
            c = bn.num_features
            bn.running_mean.copy_(torch.randn(c, generator=gen))
            bn.running_var.copy_(10 ** (torch.rand(c, generator=gen) * 4 - 3))
            bn.weight.copy_(torch.randn(c, generator=gen))
            bn.bias.copy_(torch.randn(c, generator=gen))
            if i % 2:
                bn.eps = 0.05
    return model


def assert_same_logits(folded, model, x, rel=1e-4):
    """Folded logits equal model.eval()(x) up to float rounding: within rel of the logits' largest magnitude."""
    with torch.no_grad():
        expected = model.eval()(x)
        got = folded(x)
    assert got.shape == expected.shape and got.dtype == expected.dtype
    error = (got - expected).abs().max().item() / expected.abs().max().item()
    assert error <= rel, f"folded logits differ by {error:.2e} of the largest logit"
    return got, expected


def test_fold_matches_trained_model(trained_model, test_batch):
    x, _ = test_batch
    got, expected = assert_same_logits(fold_batchnorm(trained_model), copy.deepcopy(trained_model), x)
    assert (got.argmax(1) == expected.argmax(1)).float().mean().item() >= 0.99


@pytest.mark.parametrize("cfg", [
    ResNetConfig(),
    ResNetConfig(block_channels=(8, 8), block_strides=(1, 1)),  # identity skips only
    ResNetConfig(stem_channels=4, block_channels=(12, 12, 24, 24), block_strides=(2, 1, 2, 1), num_classes=7),
])
def test_fold_matches_random_batchnorm_statistics(cfg):
    torch.manual_seed(0)
    model = randomize_batchnorm(SmallResNet(cfg))
    x = torch.rand(64, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    assert_same_logits(fold_batchnorm(model), model, x)


def test_fold_in_float64_is_exact_up_to_rounding():
    # in float64 only the rounding of the folded arithmetic remains, so any error in the algebra stands out
    torch.manual_seed(0)
    model = randomize_batchnorm(SmallResNet(), seed=2).double()
    x = torch.rand(16, 1, 32, 32, dtype=torch.float64) * 2 - 1
    assert_same_logits(fold_batchnorm(model), model, x, rel=1e-12)


def test_fold_is_an_inference_snapshot_that_leaves_the_model_alone(untrained_model):
    model = randomize_batchnorm(untrained_model).train()  # train mode: folding uses the running statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.rand(8, 1, 32, 32) * 2 - 1
    folded = fold_batchnorm(model)
    assert model.training and not folded.training
    assert all(not p.requires_grad for p in folded.parameters())
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    with torch.no_grad():
        logits = folded(x)
        model.fc.bias.add_(1.0)  # a later change to the model does not reach the snapshot
        assert torch.equal(folded(x), logits)
    assert_same_logits(fold_batchnorm(model), copy.deepcopy(model), x)  # folding again picks it up


class _Subclass(SmallResNet):
    def forward(self, x):
        return super().forward(x) * 2


def test_fold_returns_what_it_cannot_fold_unchanged(untrained_model):
    hooked = copy.deepcopy(untrained_model)
    hooked.blocks[1].register_forward_hook(lambda module, inputs, out: out * 0)
    no_stats = SmallResNet()
    no_stats.stem[1] = torch.nn.BatchNorm2d(8, track_running_stats=False)
    wrapper = torch.nn.Sequential(untrained_model)
    for model in (hooked, _Subclass(), no_stats, wrapper):
        assert fold_batchnorm(model) is model
