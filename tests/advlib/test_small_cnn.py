"""advlib.model's other architectures (SmallCNN: Wong, Rice & Kolter 2020's MNIST network; SmallResNet without
BatchNorm) and checkpoints that record which architecture they hold."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from advlib.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from advlib.model import (ARCHITECTURES, ResNetConfig, SmallCNN, SmallCNNConfig, SmallResNet, architecture_of,
                          build_model, count_parameters, fold_batchnorm, widened)


class Flatten(nn.Module):
    """Wong et al.'s own Flatten (fast_adversarial/MNIST/mnist_net.py)."""

    def forward(self, x):
        return x.view(x.size(0), -1)


def mnist_net() -> nn.Sequential:
    """Wong et al.'s ``mnist_net()``, copied from locuslab/fast_adversarial: the oracle for SmallCNN."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1),
        nn.ReLU(),
        Flatten(),
        nn.Linear(32 * 7 * 7, 100),
        nn.ReLU(),
        nn.Linear(100, 10),
    )


def cnn_parameters(cfg: SmallCNNConfig) -> int:
    """By the formula: conv 4x4 with bias k*k*c_in*c_out + c_out; two stride-2 convs: side/4; Linear c*k + k."""
    c1, c2 = cfg.channels
    side = cfg.image_size // 4
    return ((16 * cfg.in_channels * c1 + c1) + (16 * c1 * c2 + c2) + (c2 * side * side * cfg.hidden + cfg.hidden)
            + (cfg.hidden * cfg.num_classes + cfg.num_classes))


def resnet_parameters_without_bn(cfg: ResNetConfig) -> int:
    """No BatchNorm: every conv kxk has k*k*c_in*c_out weights and c_out biases."""
    conv = lambda k, c_in, c_out: k * k * c_in * c_out + c_out  # noqa: E731
    total, width = conv(3, cfg.in_channels, cfg.stem_channels), cfg.stem_channels
    for c, stride in zip(cfg.block_channels, cfg.block_strides):
        total += conv(3, width, c) + conv(3, c, c) + (conv(1, width, c) if stride != 1 or width != c else 0)
        width = c
    return total + width * cfg.num_classes + cfg.num_classes


def images(n=8, side=28, seed=0):
    return torch.rand(n, 1, side, side, generator=torch.Generator().manual_seed(seed))


# ---------------------------------------------------------------------------------------------------------------
# SmallCNN against Wong et al.'s network


def test_small_cnn_parameter_count():
    # by hand: 16*16+16 = 272; 32*16*16+32 = 8,224; 1568*100+100 = 156,900; 100*10+10 = 1,010
    assert cnn_parameters(SmallCNNConfig()) == 166_406
    assert count_parameters(SmallCNN()) == 166_406
    assert count_parameters(mnist_net()) == 166_406


def test_small_cnn_has_the_state_dict_of_mnist_net_and_computes_the_same():
    torch.manual_seed(0)
    reference = mnist_net()
    model = SmallCNN()
    ours, theirs = model.state_dict(), reference.state_dict()
    assert list(ours) == list(theirs) == ["0.weight", "0.bias", "2.weight", "2.bias", "5.weight", "5.bias",
                                          "7.weight", "7.bias"]
    assert {k: v.shape for k, v in ours.items()} == {k: v.shape for k, v in theirs.items()}
    model.load_state_dict(theirs)  # strict: Wong et al.'s released weights load as they are
    x = images(16)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert model.config == SmallCNNConfig()


@pytest.mark.parametrize("cfg", [
    SmallCNNConfig(),
    SmallCNNConfig(image_size=32, channels=(8, 4), hidden=50, num_classes=7),
    SmallCNNConfig(in_channels=3, image_size=12, channels=(5, 6), hidden=3),
])
def test_small_cnn_other_configs(cfg):
    model = SmallCNN(cfg).eval()
    assert count_parameters(model) == cnn_parameters(cfg)
    with torch.no_grad():
        out = model(torch.rand(3, cfg.in_channels, cfg.image_size, cfg.image_size))
    assert out.shape == (3, cfg.num_classes)


def test_small_cnn_config_round_trip():
    cfg = SmallCNNConfig(in_channels=3, image_size=32, channels=(8, 12), hidden=64, num_classes=5)
    d = cfg.to_dict()
    assert d == {"in_channels": 3, "image_size": 32, "channels": [8, 12], "hidden": 64, "num_classes": 5}
    assert all(isinstance(v, (int, list)) for v in d.values())  # plain data: a weights_only checkpoint holds it
    back = SmallCNNConfig.from_dict(d)
    assert back == cfg and isinstance(back.channels, tuple)
    assert SmallCNNConfig.from_dict({}) == SmallCNNConfig()
    with pytest.raises(ValueError, match="dropout"):
        SmallCNNConfig.from_dict(d | {"dropout": 0.5})


@pytest.mark.parametrize("kwargs", [
    {"channels": (16, 32, 64)}, {"channels": (16,)}, {"channels": (0, 32)}, {"channels": (16, -1)},
    {"hidden": 0}, {"image_size": 30}, {"image_size": 0}, {"image_size": -4},
])
def test_small_cnn_bad_config_refused(kwargs):
    with pytest.raises(ValueError):
        SmallCNNConfig(**kwargs)


# ---------------------------------------------------------------------------------------------------------------
# SmallResNet without BatchNorm


def test_resnet_without_batchnorm():
    cfg = widened(1, batchnorm=False)
    assert cfg == ResNetConfig(batchnorm=False) and widened(1) == ResNetConfig() and ResNetConfig().batchnorm
    torch.manual_seed(0)
    model = SmallResNet(cfg)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]  # stem, 2 per block, 2 projections
    assert len(convs) == 9 and all(c.bias is not None for c in convs)
    assert not any("running" in k for k in model.state_dict())
    # stem 72+8; block1 576+8+576+8; block2 1152+16+2304+16+128+16; block3 4608+32+9216+32+512+32; head 330
    assert count_parameters(model) == resnet_parameters_without_bn(cfg) == 19_642
    assert count_parameters(SmallResNet(widened(1))) == 19_810  # with BN, biasless convs
    assert all(c.bias is None for c in SmallResNet().modules() if isinstance(c, nn.Conv2d))
    wide = widened(2, batchnorm=False)
    assert wide.block_channels == (16, 32, 64) and not wide.batchnorm
    assert count_parameters(SmallResNet(wide)) == resnet_parameters_without_bn(wide)


def test_resnet_without_batchnorm_computes_the_same_in_train_and_eval_mode_and_is_not_folded():
    torch.manual_seed(0)
    model = SmallResNet(widened(1, batchnorm=False))
    x = images(6, side=32) * 2 - 1
    with torch.no_grad():
        a = model.train()(x)
        b = model.eval()(x)
    assert torch.equal(a, b)
    assert fold_batchnorm(model) is model
    # with BatchNorm, train mode normalises by the batch: a different output (the control)
    bn = SmallResNet()
    with torch.no_grad():
        assert not torch.allclose(bn.train()(x), bn.eval()(x))


# ---------------------------------------------------------------------------------------------------------------
# The registry of architectures


def test_architecture_of_and_build_model():
    assert set(ARCHITECTURES) == {"SmallResNet", "SmallCNN"}
    assert architecture_of(ResNetConfig()) == "SmallResNet"
    assert architecture_of(widened(2, batchnorm=False)) == "SmallResNet"
    assert architecture_of(SmallCNNConfig()) == "SmallCNN"
    for bad in (None, {}, SmallCNNConfig().to_dict(), "SmallCNN"):
        with pytest.raises(TypeError):
            architecture_of(bad)
    cnn = build_model(SmallCNNConfig(hidden=20))
    assert type(cnn) is SmallCNN and cnn.config.hidden == 20
    resnet = build_model(ResNetConfig(batchnorm=False))
    assert type(resnet) is SmallResNet and not resnet.config.batchnorm


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints of either architecture


def _same_outputs(a: nn.Module, b: nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


def test_small_cnn_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    cfg = SmallCNNConfig(hidden=40)
    model = SmallCNN(cfg)
    path = save_checkpoint(tmp_path / "cnn.pt", model)
    blob = torch.load(path, weights_only=True)
    assert blob["architecture"] == "SmallCNN" and blob["model_config"] == cfg.to_dict()
    loaded = load_checkpoint(path).model
    assert type(loaded) is SmallCNN and loaded.config == cfg and not loaded.training
    assert _same_outputs(loaded, model, images(8))


def test_resnet_without_batchnorm_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    model = SmallResNet(widened(1, batchnorm=False))
    with torch.no_grad():
        for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
            conv.bias.normal_()  # biases that matter
    path = save_checkpoint(tmp_path / "nobn.pt", model)
    assert torch.load(path, weights_only=True)["architecture"] == "SmallResNet"
    loaded = load_checkpoint(path).model
    assert type(loaded) is SmallResNet and loaded.config.batchnorm is False
    assert loaded.state_dict().keys() == model.state_dict().keys()
    assert _same_outputs(loaded, model, images(8, side=32) * 2 - 1)


def test_checkpoint_without_architecture_is_a_small_resnet(tmp_path):
    """Files written before SmallCNN have no "architecture": they hold a SmallResNet."""
    torch.manual_seed(0)
    model = SmallResNet()
    path = save_checkpoint(tmp_path / "new.pt", model)
    blob = torch.load(path, weights_only=True)
    del blob["architecture"]
    blob["model_config"].pop("batchnorm")  # an old ResNetConfig had no such field either
    torch.save(blob, tmp_path / "old.pt")
    loaded = load_checkpoint(tmp_path / "old.pt").model
    assert type(loaded) is SmallResNet and loaded.config == ResNetConfig()
    assert _same_outputs(loaded, model, images(4, side=32) * 2 - 1)


def test_unknown_architecture_is_refused_naming_the_known_ones(tmp_path):
    path = save_checkpoint(tmp_path / "cnn.pt", SmallCNN())
    blob = torch.load(path, weights_only=True)
    blob["architecture"] = "VisionTransformer"
    torch.save(blob, tmp_path / "vit.pt")
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(tmp_path / "vit.pt")
    msg = str(err.value)
    assert "VisionTransformer" in msg and "SmallCNN" in msg and "SmallResNet" in msg


def test_architecture_that_does_not_fit_the_weights_is_refused(tmp_path):
    path = save_checkpoint(tmp_path / "cnn.pt", SmallCNN())
    blob = torch.load(path, weights_only=True)
    blob["architecture"] = "SmallResNet"  # a SmallCNN's config and weights read as a SmallResNet's
    torch.save(blob, tmp_path / "wrong.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "wrong.pt")
    blob["architecture"] = "SmallCNN"
    blob["model_config"] = SmallCNNConfig(hidden=99).to_dict()  # the right architecture, weights of another size
    torch.save(blob, tmp_path / "size.pt")
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(tmp_path / "size.pt")
