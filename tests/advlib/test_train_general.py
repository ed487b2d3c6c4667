"""Data in other bounds and sizes (advlib.data: to_bounds, load_dataset(image_size=28, bounds=(0, 1))), training of
the other architectures in them (advlib.train with a SmallCNN), and the TrainConfig options of the Wong et al.
comparison: adv_holdout, check_steps / check_step_sizes (pgd_check), attack_bn and clamp_start."""
from __future__ import annotations

import copy
import struct

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import advlib.train as train_module
from advlib.data import (BOUNDS, MNIST, as_float, batches, check_range, load_dataset, normalize, raw_dir,
                         to_bounds)
from advlib.iterative import pgd
from advlib.metrics import accuracy
from advlib.model import SmallCNN, SmallCNNConfig, SmallResNet, widened
from advlib.train import TrainConfig, adversarial_batch, evaluate, pgd_check, train

PIXELS = (0.0, 1.0)
ALL_U8 = torch.arange(256, dtype=torch.uint8).reshape(4, 1, 8, 8)


def read_raw_images(path) -> np.ndarray:
    """An IDX3 file read here, independently of advlib.data.read_idx: (N, 28, 28) uint8."""
    data = path.read_bytes()
    magic, n, rows, cols = struct.unpack(">IIII", data[:16])
    assert magic == 2051 and (rows, cols) == (28, 28)
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols)


@pytest.fixture(scope="module")
def mnist28(data_root) -> MNIST:
    """The raw 28x28 images in [0, 1] (as most of the field uses MNIST): 3,000 training images, all test images."""
    return load_dataset("mnist", data_root, fetch=False, train_subset=3000, image_size=28, bounds=PIXELS)


# ---------------------------------------------------------------------------------------------------------------
# to_bounds, as_float, check_range


def test_to_bounds_of_the_two_ranges_is_the_usual_arithmetic():
    pixels = to_bounds(ALL_U8, (0, 1))
    assert pixels.dtype == torch.float32 and torch.equal(pixels, ALL_U8.float() / 255)  # ToTensor's
    assert torch.equal(to_bounds(ALL_U8, (-1, 1)), normalize(ALL_U8))
    assert torch.equal(to_bounds(ALL_U8), normalize(ALL_U8))  # the default: the study's [-1, 1]
    assert torch.equal(to_bounds(ALL_U8, (-1.0, 1.0)), (ALL_U8.float() / 255 - 0.5) / 0.5)
    other = to_bounds(ALL_U8, (2, 5))
    expected = 2 + 3 * ALL_U8.double() / 255
    torch.testing.assert_close(other.double(), expected, rtol=0, atol=1e-6)
    assert other.min().item() == 2 and other.max().item() == 5
    assert ALL_U8.dtype == torch.uint8 and ALL_U8.flatten()[-1].item() == 255  # the input is left alone
    for bounds in (PIXELS, BOUNDS):  # floats are already in some range: refused, not rescaled again
        with pytest.raises(ValueError, match="uint8"):
            to_bounds(ALL_U8.float(), bounds)


def test_as_float_converts_uint8_into_the_bounds_and_passes_floats_through():
    assert torch.equal(as_float(ALL_U8, PIXELS), ALL_U8.float() / 255)
    assert torch.equal(as_float(ALL_U8), normalize(ALL_U8))
    x = torch.rand(3, 1, 4, 4)
    assert as_float(x, PIXELS) is x and as_float(x) is x


def test_check_range():
    assert check_range((0, 1)) == (0.0, 1.0) and check_range([-1, 1]) == (-1.0, 1.0)
    for bad in [(1, 0), (0, 0), (0,), (0, 1, 2), "ab", None, ("a", 1)]:
        with pytest.raises(ValueError, match="bounds"):
            check_range(bad)


# ---------------------------------------------------------------------------------------------------------------
# load_dataset(image_size=28, bounds=(0, 1)): the raw files, as they are


def test_load_28px_pixels_is_the_raw_files_over_255(mnist28, data_root):
    raw_test = read_raw_images(raw_dir(data_root) / "t10k-images-idx3-ubyte")
    raw_train = read_raw_images(raw_dir(data_root) / "train-images-idx3-ubyte")[:3000]
    assert mnist28.test_x.shape == (10_000, 1, 28, 28) and mnist28.test_x.dtype == torch.float32
    assert torch.equal(mnist28.test_x, torch.from_numpy(raw_test.astype(np.float32) / np.float32(255))[:, None])
    assert mnist28.train_u8.shape == (3000, 1, 28, 28) and mnist28.train_u8.dtype == torch.uint8
    assert torch.equal(mnist28.train_u8[:, 0], torch.from_numpy(raw_train.copy()))
    assert torch.equal(mnist28.train_x, mnist28.train_u8.float() / 255)
    assert mnist28.bounds == PIXELS
    assert mnist28.test_x.min().item() == 0 and mnist28.test_x.max().item() == 1
    labels = np.frombuffer((raw_dir(data_root) / "t10k-labels-idx1-ubyte").read_bytes(), np.uint8, offset=8)
    assert torch.equal(mnist28.test_y, torch.from_numpy(labels.astype(np.int64)))
    assert "[0, 1]" in repr(mnist28)


def test_load_28px_writes_no_cache(raw_copy):
    got = load_dataset("mnist", raw_copy, fetch=False, image_size=28, splits=("test",))
    assert got.test_x.shape == (10_000, 1, 28, 28) and got.bounds == BOUNDS
    assert got.test_x.min().item() == -1 and got.test_x.max().item() == 1
    assert not (raw_copy / "MNIST" / "cache").exists()


def test_default_load_is_unchanged(data_root):
    """32x32, normalized to [-1, 1]: the original report's torchvision pipeline, on a few images."""
    import torchvision
    from torchvision import transforms

    got = load_dataset("mnist", data_root, fetch=False, splits=("test",))
    assert got.test_x.shape == (10_000, 1, 32, 32) and got.bounds == BOUNDS == (-1.0, 1.0)
    ds = torchvision.datasets.MNIST(str(data_root), train=False, download=False, transform=transforms.Compose(
        [transforms.Resize(32), transforms.ToTensor(), transforms.Normalize((0.5,), (0.5,))]))
    for i in (0, 1, 4321, 9999):
        assert torch.equal(ds[i][0], got.test_x[i])


@pytest.mark.parametrize("kwargs, match", [
    ({"image_size": 3}, "image_size"), ({"image_size": 28.0}, "image_size"), ({"image_size": "28"}, "image_size"),
    ({"bounds": (1, 0)}, "bounds"), ({"bounds": (0,)}, "bounds"),
])
def test_load_rejects_bad_size_and_bounds(data_root, kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset("mnist", data_root, fetch=False, splits=("test",), **kwargs)


def test_mnist_bounds_reach_train_x_split_validation_and_batches(mnist28):
    data = MNIST(mnist28.train_u8[:100], mnist28.train_y[:100], None, None, bounds=PIXELS)
    rest, val_x, val_y = data.split_validation(20)
    assert rest.bounds == PIXELS and len(rest.train_u8) == 80
    assert torch.equal(val_x, data.train_u8[80:].float() / 255) and torch.equal(val_y, data.train_y[80:])
    assert torch.equal(rest.train_x, data.train_u8[:80].float() / 255)
    got = torch.cat([xb for xb, _ in batches(data.train_u8, data.train_y, 32, bounds=PIXELS)])
    assert torch.equal(got, data.train_u8.float() / 255)
    default = MNIST(data.train_u8, data.train_y, None, None)
    assert default.bounds == BOUNDS and torch.equal(default.train_x, normalize(data.train_u8))


# ---------------------------------------------------------------------------------------------------------------
# Training a SmallCNN on [0, 1] 28x28 images (Wong et al.'s setting)

EPS = 0.1  # in [0, 1] pixels
CNN_CONFIG = TrainConfig(epochs=1, batch_size=64, lr=0.005, seed=0, adversarial="fgsm_rs", adv_eps=EPS,
                         adv_holdout=400, adv_check_size=128, clamp_start=False)


@pytest.fixture(scope="module")
def cnn_run(mnist28):
    """A SmallCNN trained one epoch with FGSM-RS on 2,600 of the 3,000 images (400 held out), with what each
    adversarial batch received and returned, and the images each training epoch ran over."""
    data = MNIST(mnist28.train_u8, mnist28.train_y, mnist28.test_x[:1000], mnist28.test_y[:1000], bounds=PIXELS)
    seen, trained_on = [], []
    real_batch, real_batches = train_module.adversarial_batch, train_module.batches

    def recording_batch(model, x, y, config, generator, eps=None, bounds=BOUNDS):
        out = real_batch(model, x, y, config, generator, eps, bounds)
        seen.append((x.min().item(), x.max().item(), out.min().item(), out.max().item(),
                     (out - x).abs().max().item(), tuple(bounds)))
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(train_module, "adversarial_batch", recording_batch)
        mp.setattr(train_module, "batches", lambda x, y, *a, **k: (k.get("shuffle") and trained_on.append(len(x)))
                   or real_batches(x, y, *a, **k))
        model, _, history = train(data, SmallCNNConfig(), CNN_CONFIG, progress=False)
    return model, history, data, seen, trained_on


def test_small_cnn_trains_on_pixels_and_holds_out_adv_holdout_images(cnn_run):
    model, history, data, seen, trained_on = cnn_run
    assert type(model) is SmallCNN and not model.training
    assert history.trained_on == "train[0:2600]" and history.selection == "train[2600:2728]"
    assert trained_on == [2600]
    assert len(history.step_loss) == -(-2600 // 64)
    # every batch in [0, 1] pixels: real MNIST reaches both ends; the attack stays within eps and the bounds
    assert len(seen) == len(history.step_loss)
    assert all(b == PIXELS for *_, b in seen)
    assert min(s[0] for s in seen) == 0 and max(s[1] for s in seen) == 1
    assert min(s[2] for s in seen) >= 0 and max(s[3] for s in seen) <= 1
    assert max(s[4] for s in seen) <= EPS + 1e-6
    # it learned: clean accuracy far above chance, measured on [0, 1] test images as history records it
    assert history.test_accuracy[-1] == pytest.approx(accuracy(model, data.test_x, data.test_y))
    assert history.test_accuracy[-1] > 50  # chance: 10; 78 with this seed, 69 to 78 over seeds 0-2


def test_the_per_epoch_check_attacks_the_held_out_pixels_within_the_bounds(cnn_run):
    model, history, data, *_ = cnn_run
    x = data.train_u8[2600:2728].float() / 255
    y = data.train_y[2600:2728]
    x_adv = pgd(model, x, y, EPS, bounds=PIXELS, steps=10, seed=0)
    assert history.kept_epoch == 1
    assert history.pgd_check_accuracy == [pytest.approx(accuracy(model, x_adv, y))]


def test_evaluate_converts_uint8_into_the_bounds(cnn_run):
    model, _, data, *_ = cnn_run
    u8, y = data.train_u8[:300], data.train_y[:300]
    assert evaluate(model, u8, y, bounds=PIXELS) == pytest.approx(accuracy(model, u8.float() / 255, y))
    assert evaluate(model, u8, y) == pytest.approx(accuracy(model, normalize(u8), y))  # the default: [-1, 1]
    assert evaluate(model, u8, y, bounds=PIXELS) != evaluate(model, u8, y)


def test_train_holdout_none_is_a_sixth_and_too_large_a_holdout_is_refused(mnist28):
    data = MNIST(mnist28.train_u8[:96], mnist28.train_y[:96], None, None, bounds=PIXELS)
    config = dict(epochs=1, batch_size=32, adversarial="fgsm_rs", adv_eps=EPS, adv_check_size=8)
    _, _, history = train(data, SmallCNNConfig(), TrainConfig(**config), progress=False)
    assert history.trained_on == "train[0:80]" and history.selection == "train[80:88]"
    _, _, history = train(data, SmallCNNConfig(), TrainConfig(**config, adv_holdout=50), progress=False)
    assert history.trained_on == "train[0:46]" and history.selection == "train[46:54]"
    with pytest.raises(ValueError, match="adv_holdout"):
        train(data, SmallCNNConfig(), TrainConfig(**config, adv_holdout=96), progress=False)


def test_resnet_without_batchnorm_trains_on_28px_pixels(mnist28):
    data = MNIST(mnist28.train_u8[:128], mnist28.train_y[:128], mnist28.test_x[:64], mnist28.test_y[:64],
                 bounds=PIXELS)
    model, _, history = train(data, widened(1, batchnorm=False),
                              TrainConfig(epochs=1, batch_size=32, adversarial="pgd", adv_eps=EPS, adv_pgd_steps=2,
                                          adv_holdout=32, adv_check_size=16), progress=False)
    assert type(model) is SmallResNet and not model.config.batchnorm
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    assert history.trained_on == "train[0:96]" and len(history.pgd_check_accuracy) == 1
    assert history.test_accuracy[-1] == pytest.approx(evaluate(model, data.test_x, data.test_y, bounds=PIXELS))


# ---------------------------------------------------------------------------------------------------------------
# adversarial_batch in [0, 1]; clamp_start; attack_bn


@pytest.fixture(scope="module")
def pixel_batch(mnist28):
    return mnist28.test_x[:32], mnist28.test_y[:32]


@pytest.mark.parametrize("eps", [0.1, 0.3])
@pytest.mark.parametrize("mode, clamp", [("fgsm_rs", True), ("fgsm_rs", False), ("pgd", True)])
def test_adversarial_batch_in_pixel_bounds(pixel_batch, mode, clamp, eps):
    x, y = pixel_batch
    torch.manual_seed(0)
    model = SmallCNN().train()
    config = TrainConfig(adversarial=mode, adv_eps=eps, adv_pgd_steps=3, clamp_start=clamp)
    x_adv = adversarial_batch(model, x, y, config, torch.Generator().manual_seed(0), bounds=PIXELS)
    assert x_adv.shape == x.shape and not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1
    assert (x_adv - x).abs().max().item() >= eps - 1e-6  # it moved as far as allowed somewhere
    assert model.training


def fgsm_rs_oracle(model, x, y, eps, seed, bounds, clamp_start, train_mode=False):
    """Wong et al.'s FGSM-RS, written out: uniform start (clipped or not), one 1.25 eps signed step, projection."""
    gen = torch.Generator().manual_seed(seed)
    start = x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps
    if clamp_start:
        start = start.clamp(*bounds)
    m = model.train(train_mode)
    xr = start.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(m(xr), y, reduction="sum"), xr)
    return (start + 1.25 * eps * g.sign()).clamp(x - eps, x + eps).clamp(*bounds)


@pytest.mark.parametrize("clamp_start", [True, False])
def test_fgsm_rs_matches_the_formula_in_pixel_bounds(pixel_batch, clamp_start):
    x, y = pixel_batch
    torch.manual_seed(0)
    model = SmallCNN().train()
    config = TrainConfig(adversarial="fgsm_rs", adv_eps=0.3, clamp_start=clamp_start)
    got = adversarial_batch(model, x, y, config, torch.Generator().manual_seed(7), bounds=PIXELS)
    expected = fgsm_rs_oracle(copy.deepcopy(model), x, y, 0.3, 7, PIXELS, clamp_start)
    assert torch.equal(got, expected)


class InputRecorder(nn.Module):
    """A linear classifier that records the range of every input it sees."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(28 * 28, 10)
        self.seen: list[tuple[float, float]] = []

    def forward(self, x):
        self.seen.append((x.min().item(), x.max().item()))
        return self.fc(x.flatten(1))


@pytest.mark.parametrize("clamp_start", [True, False])
def test_clamp_start_decides_whether_the_gradient_sees_images_outside_the_bounds(pixel_batch, clamp_start):
    x, y = pixel_batch  # real digits: many pixels at 0 and some at 1
    torch.manual_seed(0)
    model = InputRecorder()
    config = TrainConfig(adversarial="fgsm_rs", adv_eps=0.3, clamp_start=clamp_start)
    x_adv = adversarial_batch(model, x, y, config, torch.Generator().manual_seed(0), bounds=PIXELS)
    ((low, high),) = model.seen  # one forward pass: the gradient at the start
    if clamp_start:
        assert low >= 0 and high <= 1
    else:  # Wong et al.'s code: x + delta, unclipped
        assert low < -0.2 and high > 1.2
    assert x_adv.min().item() >= 0 and x_adv.max().item() <= 1  # the result is clipped either way


def _batchnorm_state(model):
    return {k: v.clone() for k, v in model.state_dict().items() if "running" in k or "num_batches" in k}


@pytest.mark.parametrize("attack_bn", ["eval", "train"])
def test_attack_bn_decides_the_batchnorm_statistics_of_the_attack(pixel_batch, attack_bn):
    x, y = pixel_batch
    torch.manual_seed(0)
    model = SmallResNet().train()
    oracle_model = copy.deepcopy(model)
    before = _batchnorm_state(model)
    config = TrainConfig(adversarial="fgsm_rs", adv_eps=0.3, attack_bn=attack_bn)
    got = adversarial_batch(model, x, y, config, torch.Generator().manual_seed(3), bounds=PIXELS)
    after = _batchnorm_state(model)
    assert model.training and all(m.training for m in model.modules())  # the training loop's mode is kept
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    if attack_bn == "eval":
        assert moved == []
    else:  # the attack's forward pass in train mode updated every BatchNorm's running statistics
        assert "stem.1.running_mean" in moved and "stem.1.num_batches_tracked" in moved
        assert after["stem.1.num_batches_tracked"].item() == before["stem.1.num_batches_tracked"].item() + 1
    expected = fgsm_rs_oracle(oracle_model, x, y, 0.3, 3, PIXELS, True, train_mode=attack_bn == "train")
    assert torch.equal(got, expected)


# ---------------------------------------------------------------------------------------------------------------
# pgd_check: restarts of several step sizes, an image robust only if it survives them all


@pytest.fixture(scope="module")
def check_set(cnn_run, mnist28):
    model = cnn_run[0]
    return model, mnist28.test_x[:500], mnist28.test_y[:500]


def _robust(model, x, y, **pgd_kwargs):
    x_adv = pgd(model, x, y, EPS, **pgd_kwargs)
    with torch.no_grad():
        return model.eval()(x_adv).argmax(1) == y


def test_pgd_check_with_step_sizes_needs_every_restart_to_fail(check_set):
    model, x, y = check_set
    config = TrainConfig(adv_eps=EPS, seed=5, check_steps=4, check_step_sizes=(1.0, 0.25))
    first = _robust(model, x, y, bounds=PIXELS, steps=4, step_size=1.0 * EPS, seed=5)
    second = _robust(model, x, y, bounds=PIXELS, steps=4, step_size=0.25 * EPS, seed=6)
    assert (first ^ second).any(), "the two restarts should disagree on some image for this test to discriminate"
    assert 0 < (first & second).sum() < len(y)
    both = (first & second).float().mean().item()
    assert pgd_check(model, x, y, config, bounds=PIXELS) == pytest.approx(100.0 * both)


def test_pgd_check_restarts_are_seeded_one_after_the_other(check_set):
    model, x, y = check_set  # two restarts of the same step: only their seeds (seed, seed + 1) tell them apart
    config = TrainConfig(adv_eps=EPS, seed=5, check_steps=4, check_step_sizes=(0.25, 0.25))
    first = _robust(model, x, y, bounds=PIXELS, steps=4, step_size=0.25 * EPS, seed=5)
    second = _robust(model, x, y, bounds=PIXELS, steps=4, step_size=0.25 * EPS, seed=6)
    assert (first & second).sum() < first.sum(), "the second random start should break images the first did not"
    both = (first & second).float().mean().item()
    assert pgd_check(model, x, y, config, bounds=PIXELS) == pytest.approx(100.0 * both)


def test_pgd_check_without_step_sizes_is_one_pgd_run(check_set):
    model, x, y = check_set
    x, y = x[:200], y[:200]
    config = TrainConfig(adv_eps=EPS, seed=3)
    assert config.check_steps == 10 and config.check_step_sizes == ()
    ten = _robust(model, x, y, bounds=PIXELS, steps=10, seed=3)  # pgd's default step, 2.5 eps / steps
    assert pgd_check(model, x, y, config, bounds=PIXELS) == pytest.approx(100.0 * ten.float().mean().item())
    # the default bounds are the study's [-1, 1]: the old PGD-10 check
    wide = _robust(model, x, y, bounds=BOUNDS, steps=10, seed=3)
    assert pgd_check(model, x, y, config) == pytest.approx(100.0 * wide.float().mean().item())
    three = _robust(model, x, y, bounds=PIXELS, steps=3, seed=3)
    assert pgd_check(model, x, y, TrainConfig(adv_eps=EPS, seed=3, check_steps=3),
                     bounds=PIXELS) == pytest.approx(100.0 * three.float().mean().item())


class _Affine(nn.Module):
    def __init__(self, scale: float, shift: float):
        super().__init__()
        self.scale, self.shift = scale, shift

    def forward(self, x):
        return self.scale * x + self.shift


def _official_apgd_robust(model, x01, y, eps01, steps, seed):
    """The official APGD-CE called directly (the oracle of check_attack="apgd-ce"), on [0, 1] pixels, in
    AutoAttack's batches of 250: an image counts as robust if the model still classifies its result correctly."""
    from pyautoattack.autopgd_base import APGDAttack

    model.eval()
    attack = APGDAttack(model, n_restarts=1, n_iter=steps, eps=eps01, norm="Linf", loss="ce", seed=seed)
    adv = torch.cat([attack.perturb(x01[b:b + 250], y[b:b + 250]) for b in range(0, len(y), 250)])
    with torch.no_grad():
        return model(adv).argmax(1) == y


def test_apgd_check_is_the_official_apgd_ce_in_either_units(check_set):
    """check_attack="apgd-ce": APGD-CE of check_steps steps, seeded with config.seed; the same accuracy whether the
    images are [0, 1] pixels or the study's [-1, 1] (eps scaled with them), and not PGD's accuracy."""
    model, x, y = check_set
    x, y = x[:300], y[:300]
    config = TrainConfig(adv_eps=EPS, seed=5, check_attack="apgd-ce", check_steps=5)
    oracle = 100.0 * _official_apgd_robust(copy.deepcopy(model), x, y, EPS, steps=5, seed=5).float().mean().item()
    got = pgd_check(model.train(), x, y, config, bounds=PIXELS)
    assert got == pytest.approx(oracle)
    assert model.training  # the training loop's mode is kept
    assert 0 < got < 100
    # the same network seen from the study's [-1, 1] (its input mapped back to pixels), eps doubled with the range:
    # the same check up to float rounding at the rescaling (one image)
    normalized = TrainConfig(adv_eps=2 * EPS, seed=5, check_attack="apgd-ce", check_steps=5)
    from_normalized = nn.Sequential(_Affine(0.5, 0.5), model)
    assert pgd_check(from_normalized, 2 * x - 1, y, normalized, bounds=BOUNDS) == pytest.approx(oracle, abs=100 / 300 + 1e-9)
    # the seed and the steps reach the attack
    fewer = _official_apgd_robust(copy.deepcopy(model), x, y, EPS, steps=2, seed=5).float().mean().item()
    assert pgd_check(model, x, y, TrainConfig(adv_eps=EPS, seed=5, check_attack="apgd-ce", check_steps=2),
                     bounds=PIXELS) == pytest.approx(100.0 * fewer)
    assert fewer * 100 != pytest.approx(oracle), "2 and 5 APGD steps should differ for this test to discriminate"


def test_apgd_check_attacks_in_eval_mode_and_leaves_batchnorm_alone(mnist28):
    """A network with BatchNorm (any module), in the training loop's train mode: the check attacks the eval-mode network (the
    running statistics), updates none of them, and hands the network back in train mode."""
    x, y = mnist28.test_x[:64], mnist28.test_y[:64]
    torch.manual_seed(0)
    model = nn.Sequential(SmallResNet()).train()  # a wrapper: not folded (fold_batchnorm), so eval mode is the check's
    with torch.no_grad():  # running statistics unlike a fresh batch's, so that the two modes disagree
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    before = _batchnorm_state(model)
    config = TrainConfig(adv_eps=EPS, seed=2, check_attack="apgd-ce", check_steps=3)
    oracle = _official_apgd_robust(copy.deepcopy(model), x, y, EPS, steps=3, seed=2)
    got = pgd_check(model, x, y, config, bounds=PIXELS)
    assert model.training and all(torch.equal(before[k], v) for k, v in _batchnorm_state(model).items())
    assert got == pytest.approx(100.0 * oracle.float().mean().item())


def test_apgd_check_leaves_the_global_random_state_alone(check_set):
    """The official code reseeds torch's global generator; the training that follows the check must not see it."""
    model, x, y = check_set
    torch.manual_seed(123)
    expected = torch.rand(5)
    torch.manual_seed(123)
    pgd_check(model, x[:50], y[:50], TrainConfig(adv_eps=EPS, check_attack="apgd-ce", check_steps=2), bounds=PIXELS)
    assert torch.equal(torch.rand(5), expected)


# ---------------------------------------------------------------------------------------------------------------
# TrainConfig's new fields


def test_new_fields_defaults_and_round_trip():
    config = TrainConfig()
    assert (config.adv_holdout, config.check_attack, config.check_steps, config.check_step_sizes, config.attack_bn,
            config.clamp_start) == (None, "pgd", 10, (), "eval", True)
    config = TrainConfig(adv_holdout=7, check_steps=5, check_step_sizes=[1, 0.25], attack_bn="train",
                         clamp_start=False)
    assert config.check_step_sizes == (1.0, 0.25)
    d = config.to_dict()
    assert d["check_step_sizes"] == [1.0, 0.25]  # plain data
    assert TrainConfig(**d) == config


@pytest.mark.parametrize("kwargs, match", [
    ({"attack_bn": "Train"}, "attack_bn"), ({"attack_bn": "batch"}, "attack_bn"), ({"attack_bn": None}, "attack_bn"),
    ({"adv_holdout": 0}, "adv_holdout"), ({"adv_holdout": -5}, "adv_holdout"), ({"adv_holdout": 1.5}, "adv_holdout"),
    ({"adv_holdout": "100"}, "adv_holdout"),
    ({"check_step_sizes": (-0.5,)}, "check_step_sizes"),
    ({"check_step_sizes": (1.0, float("nan"))}, "check_step_sizes"),
    ({"check_step_sizes": ("big",)}, "check_step_sizes"), ({"check_step_sizes": (float("inf"),)}, "check_step_sizes"),
    ({"check_steps": 0}, "check_steps"), ({"check_steps": 2.5}, "check_steps"),
    ({"check_attack": "apgd"}, "check_attack"), ({"check_attack": None}, "check_attack"),
    ({"check_attack": "apgd-ce", "check_step_sizes": (0.5,)}, "APGD chooses its own steps"),
])
def test_new_fields_reject_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


def test_a_network_of_another_input_size_is_refused_before_training(mnist28):
    """A SmallCNN's first linear layer fixes its input size: 32x32 data for a 28x28 network is refused up front,
    saying how to load the right size, rather than failing inside the first step."""
    with pytest.raises(ValueError, match="image_size=32"):
        train(mnist28, SmallCNNConfig(image_size=32), TrainConfig(epochs=1), progress=False)


def test_batch_statistics_in_the_attack_only_for_fgsm_rs():
    """PGD always attacks in eval mode: attack_bn='train' with PGD training would silently do nothing."""
    with pytest.raises(ValueError, match="FGSM-RS"):
        TrainConfig(adversarial="pgd", attack_bn="train")
    assert TrainConfig(adversarial="fgsm_rs", attack_bn="train").attack_bn == "train"


def test_small_cnn_config_takes_lists_and_refuses_non_integers():
    assert SmallCNNConfig(channels=[16, 32]) == SmallCNNConfig()  # as read back from JSON
    for bad in (dict(hidden=1.5), dict(channels=(16, True)), dict(image_size=30)):
        with pytest.raises(ValueError, match="SmallCNNConfig"):
            SmallCNNConfig(**bad)
