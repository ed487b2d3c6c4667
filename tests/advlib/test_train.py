"""advlib.train on a tiny split: seeded determinism, the history's bookkeeping, config checks, adversarial modes."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

import advlib.data as data_mod
import advlib.train as train_module
from advlib.data import MNIST, SplitNotLoaded
from advlib.metrics import accuracy
from advlib.model import ResNetConfig, SmallResNet
from advlib.train import (History, TrainConfig, adversarial_batch, recalibrate_batchnorm, resolve_device, train,
                          train_epoch)

TINY = dict(epochs=1, batch_size=32, adv_check_size=64)


def run(data, **overrides):
    return train(data, ResNetConfig(), TrainConfig(**(TINY | overrides)), progress=False)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def without_time(history: History) -> dict:
    d = history.to_dict()
    d.pop("seconds")  # wall time is the one thing a seed cannot fix
    return d


# ---------------------------------------------------------------------------------------------------------------
# Determinism


@pytest.fixture(scope="module")
def seed0_run(mnist_small):
    return run(mnist_small, seed=0)


def test_same_seed_same_weights_and_history(mnist_small, seed0_run):
    model_a, opt_a, hist_a = seed0_run
    model_b, opt_b, hist_b = run(mnist_small, seed=0)
    assert same_weights(model_a, model_b)
    assert without_time(hist_a) == without_time(hist_b)
    state_a, state_b = opt_a.state_dict()["state"], opt_b.state_dict()["state"]
    assert all(torch.equal(state_a[i]["exp_avg"], state_b[i]["exp_avg"]) for i in state_a)


def test_different_seed_different_run(mnist_small, seed0_run):
    model_a, _, hist_a = seed0_run
    model_b, _, hist_b = run(mnist_small, seed=1)
    assert not same_weights(model_a, model_b)
    assert hist_a.step_loss != hist_b.step_loss


def test_training_leaves_global_rng_reproducible_and_data_untouched(mnist_small):
    x_before = mnist_small.train_u8.clone()
    run(mnist_small, seed=5)
    after_first = torch.rand(3)
    run(mnist_small, seed=5)
    assert torch.equal(torch.rand(3), after_first)  # the seed fixes the global RNG as well
    assert torch.equal(mnist_small.train_u8, x_before)


def test_training_learns(mnist):
    # 1000 images, 2 epochs: the loss falls well below chance (ln 10 = 2.30) and training accuracy rises
    data = MNIST(mnist.train_u8[:1000], mnist.train_y[:1000], mnist.test_x[:200], mnist.test_y[:200])
    _, _, hist = train(data, ResNetConfig(), TrainConfig(epochs=2, batch_size=32, seed=0), progress=False)
    assert hist.step_loss[0] > 2.0
    assert hist.epoch_loss[1] < hist.epoch_loss[0] < math.log(10)
    assert hist.train_accuracy[1] > 60 and hist.train_accuracy[1] > hist.train_accuracy[0]


# ---------------------------------------------------------------------------------------------------------------
# History bookkeeping


def test_history_lengths_and_values(mnist_small):
    data = MNIST(mnist_small.train_u8[:200], mnist_small.train_y[:200], mnist_small.test_x[:100],
                 mnist_small.test_y[:100])
    model, optimizer, hist = train(data, ResNetConfig(), TrainConfig(epochs=2, batch_size=64, seed=0),
                                   progress=False)
    steps_per_epoch = math.ceil(200 / 64)  # 4, the last batch holds 8 images
    assert len(hist.step_loss) == steps_per_epoch * 2
    for name in ("epoch_loss", "train_accuracy", "test_accuracy", "seconds"):
        assert len(getattr(hist, name)) == 2, name
    assert hist.pgd_check_accuracy == [] and hist.selection is None  # standard training: every image trains
    assert hist.trained_on == "train[0:200]"
    assert all(s > 0 for s in hist.seconds)
    assert all(0 <= a <= 100 for a in hist.train_accuracy + hist.test_accuracy)
    # epoch loss is the image-weighted mean of that epoch's step losses
    sizes = [64, 64, 64, 8]
    for e in range(2):
        losses = hist.step_loss[e * 4 : (e + 1) * 4]
        assert hist.epoch_loss[e] == pytest.approx(sum(l * n for l, n in zip(losses, sizes)) / 200, rel=1e-9)
    # the last test accuracy is the returned model's, in eval mode
    assert not model.training
    assert hist.test_accuracy[-1] == pytest.approx(accuracy(model, data.test_x, data.test_y))
    # one Adam step per batch
    assert all(s["step"].item() == 8 for s in optimizer.state_dict()["state"].values())


def test_history_round_trip():
    h = History(step_loss=[1.0, 0.5], epoch_loss=[0.75], train_accuracy=[50.0], test_accuracy=[60.0],
                pgd_check_accuracy=[40.0], seconds=[1.5], kept_epoch=1, trained_on="train[0:50000]",
                selection="train[50000:50512]")
    assert History.from_dict(h.to_dict()) == h
    assert History.from_dict(h.to_dict() | {"unknown": [1]}) == h  # newer fields are ignored
    assert History.from_dict({}) == History()
    old = {k: v for k, v in h.to_dict().items() if k not in ("trained_on", "selection")}  # a checkpoint's, before
    assert History.from_dict(old) == History(**old)


# ---------------------------------------------------------------------------------------------------------------
# TrainConfig validation


@pytest.mark.parametrize("kwargs, match", [
    ({"adversarial": "fgsm"}, "adversarial must be one of"),
    ({"adversarial": "PGD"}, "adversarial must be one of"),
    ({"epochs": 0}, "epochs"),
    ({"epochs": -1}, "epochs"),
    ({"epochs": 1.5}, "epochs"),
    ({"batch_size": 0}, "batch_size"),
    ({"adv_pgd_steps": 0}, "adv_pgd_steps"),
    ({"adv_check_size": 0}, "adv_check_size"),
    ({"lr": 0}, "lr"),
    ({"lr": -0.01}, "lr"),
    ({"lr": float("nan")}, "lr"),
    ({"adv_eps": -0.1}, "adv_eps"),
    ({"adv_eps": float("nan")}, "adv_eps"),
    ({"device": "meta"}, "device must be 'cpu' or 'cuda'"),
])
def test_train_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kwargs)


@pytest.mark.parametrize("device", ["gpu", "tpu"])
def test_unknown_device_string_is_value_error(device):
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device=device)


def test_cuda_requested_when_unavailable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match="CUDA is not available"):
        TrainConfig(device="cuda")
    with pytest.raises(ValueError, match="CUDA is not available"):
        resolve_device("cuda:0")


def test_train_config_accepts_defaults_and_modes():
    assert TrainConfig().to_dict()["adversarial"] is None
    for mode in (None, "fgsm_rs", "pgd"):
        assert TrainConfig(adversarial=mode).adversarial == mode
    assert resolve_device("cpu") == torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------------
# Adversarial training


@pytest.mark.parametrize("mode", ["fgsm_rs", "pgd"])
def test_adversarial_training_runs_and_checks_pgd(mnist_small, mode):
    data = MNIST(mnist_small.train_u8[:96], mnist_small.train_y[:96], mnist_small.test_x[:64],
                 mnist_small.test_y[:64])
    model, _, hist = run(data, adversarial=mode, adv_pgd_steps=2, epochs=2)
    # the classic split's proportions: 96 images -> 80 train, 16 held out (60,000 -> 50,000 + 10,000)
    assert hist.trained_on == "train[0:80]" and hist.selection == "train[80:96]"
    assert len(hist.pgd_check_accuracy) == 2
    assert all(0 <= a <= 100 for a in hist.pgd_check_accuracy)
    assert len(hist.step_loss) == 2 * 3  # ceil(80 / 32) steps per epoch
    assert all(math.isfinite(l) for l in hist.step_loss)
    assert not model.training
    # the check is PGD-10 on the held-out training images, with the run's seed, for the kept epoch's weights
    from advlib.iterative import pgd
    from advlib.data import BOUNDS

    x_val, y_val = data.train_x[80:], data.train_y[80:]
    x_check = pgd(model, x_val, y_val, 0.3, steps=10, seed=0, bounds=BOUNDS)
    assert hist.pgd_check_accuracy[hist.kept_epoch - 1] == pytest.approx(accuracy(model, x_check, y_val))
    # deterministic too
    _, _, again = run(data, adversarial=mode, adv_pgd_steps=2, epochs=2)
    assert without_time(hist) == without_time(again)


@pytest.fixture
def batch(mnist_small):
    return mnist_small.train_x[:32], mnist_small.train_y[:32]


@pytest.mark.parametrize("eps", [0.05, 0.3, 0.8])
@pytest.mark.parametrize("mode", ["fgsm_rs", "pgd"])
def test_adversarial_batch_in_ball_and_range(model_copy, batch, mode, eps):
    x, y = batch
    model_copy.train()
    config = TrainConfig(adversarial=mode, adv_eps=eps, adv_pgd_steps=3)
    x_adv = adversarial_batch(model_copy, x, y, config, torch.Generator().manual_seed(0))
    assert x_adv.shape == x.shape
    assert (x_adv - x).abs().max().item() <= eps + 1e-6
    assert x_adv.min().item() >= -1 and x_adv.max().item() <= 1
    assert not x_adv.requires_grad
    assert not torch.equal(x_adv, x)
    assert model_copy.training  # the training loop's mode is kept


def test_fgsm_rs_matches_formula(model_copy, batch):
    """Wong et al. 2020, written out here: uniform start, one 1.25-eps signed step, projection."""
    x, y = batch
    eps = 0.3
    config = TrainConfig(adversarial="fgsm_rs", adv_eps=eps)
    model_copy.train()
    got = adversarial_batch(model_copy, x, y, config, torch.Generator().manual_seed(7))

    gen = torch.Generator().manual_seed(7)
    start = (x + (torch.rand(x.shape, generator=gen) * 2 - 1) * eps).clamp(-1, 1)
    m = copy.deepcopy(model_copy).eval()
    xr = start.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(F.cross_entropy(m(xr), y, reduction="sum"), xr)
    expected = (start + 1.25 * eps * g.sign()).clamp(x - eps, x + eps).clamp(-1, 1)
    assert torch.equal(got, expected)


def test_adversarial_batch_leaves_batchnorm_alone(model_copy, batch):
    x, y = batch
    model_copy.train()
    before = {k: v.clone() for k, v in model_copy.state_dict().items()}
    adversarial_batch(model_copy, x, y, TrainConfig(adversarial="fgsm_rs"), torch.Generator().manual_seed(0))
    assert all(torch.equal(model_copy.state_dict()[k], v) for k, v in before.items())


def test_standard_mode_returns_the_batch(model_copy, batch):
    x, y = batch
    assert adversarial_batch(model_copy, x, y, TrainConfig(), torch.Generator()) is x


def test_adversarial_batch_uses_the_generator(model_copy, batch):
    x, y = batch
    config = TrainConfig(adversarial="fgsm_rs")
    a = adversarial_batch(model_copy, x, y, config, torch.Generator().manual_seed(1))
    b = adversarial_batch(model_copy, x, y, config, torch.Generator().manual_seed(1))
    c = adversarial_batch(model_copy, x, y, config, torch.Generator().manual_seed(2))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_adversarial_training_keeps_the_epoch_with_the_best_pgd_check(mnist_small, monkeypatch):
    """Guard against catastrophic overfitting: when the PGD check accuracy collapses in a later epoch, the
    weights of the best epoch are kept (checked against a run that stops after that epoch, same seed)."""
    config = dict(epochs=1, batch_size=64, seed=3, adversarial="fgsm_rs", adv_check_size=32)
    one_epoch, _, _ = train(mnist_small, config=TrainConfig(**config), progress=False)

    readings = iter([80.0, 10.0])  # PGD check accuracy per epoch
    monkeypatch.setattr(train_module, "pgd_check", lambda *args, **kwargs: next(readings))
    kept, _, history = train(mnist_small, config=TrainConfig(**{**config, "epochs": 2}), progress=False)
    assert history.pgd_check_accuracy == [80.0, 10.0]
    assert history.kept_epoch == 1
    for name, tensor in one_epoch.state_dict().items():
        assert torch.equal(tensor, kept.state_dict()[name]), name


@pytest.mark.parametrize("batch_size", [300, 64])
def test_recalibrate_batchnorm_sets_recomputed_statistics_and_leaves_weights(untrained_model, batch_size):
    torch.manual_seed(0)
    x = torch.rand(300, 1, 32, 32) * 2 - 1
    model = copy.deepcopy(untrained_model)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    recalibrate_batchnorm(model, x, batch_size=batch_size)
    # Oracle: the stem's BatchNorm sees conv(x); the average over batches of the per-channel mean and unbiased
    # variance over (N, H, W) (one batch: x's exact statistics).
    with torch.no_grad():
        h = model.stem[0](x)
    parts = h.split(batch_size)
    mean = torch.stack([p.mean(dim=(0, 2, 3)) for p in parts]).mean(0)
    var = torch.stack([p.var(dim=(0, 2, 3), unbiased=True) for p in parts]).mean(0)
    bn = model.stem[1]
    torch.testing.assert_close(bn.running_mean, mean, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(bn.running_var, var, rtol=1e-4, atol=1e-6)
    assert not model.training and bn.momentum == 0.1
    for k, v in model.state_dict().items():
        if k in weights:
            assert torch.equal(v, weights[k]), k


def test_recalibrated_accuracy_measures_a_recalibrated_copy_and_leaves_the_model(trained_model, mnist, data_root):
    """study.jobs.recalibrated_accuracy (the seed study's "BatchNorm statistics recomputed" number): the accuracy
    of a copy whose statistics are recomputed on the first training images; the model keeps its own."""
    from study.jobs import recalibrated_accuracy

    model = copy.deepcopy(trained_model)
    torch.manual_seed(0)
    recalibrate_batchnorm(model, torch.rand(256, 1, 32, 32) * 2 - 1)  # statistics of noise: running averages off
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = mnist.test_x[:500], mnist.test_y[:500]
    got = recalibrated_accuracy(model, data_root, x, y, n_images=2000)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    oracle = copy.deepcopy(model)
    recalibrate_batchnorm(oracle, mnist.train_u8[:2000])  # the fixture's split begins with the same images
    assert got == accuracy(oracle, x, y)
    assert got > accuracy(model, x, y) + 20, "the noise statistics should have cost accuracy that recomputing restores"


# ---------------------------------------------------------------------------------------------------------------
# Model selection never sees a test image; the float training set is never made


def _rows(x: torch.Tensor) -> set[bytes]:
    return {row.numpy().tobytes() for row in x.detach().reshape(len(x), -1)}


def test_adversarial_selection_uses_held_out_training_images_never_test_images(mnist_small, monkeypatch):
    """Defect 4: the epoch kept by adversarial training was chosen on the last test images. Every image that
    the PGD check (the only pgd call under fgsm_rs) attacks must be a held-out training image, none a test image,
    and none of them may be trained on."""
    data = mnist_small  # 256 training images -> 214 train + 42 held out
    attacked, trained_on = [], []
    real_pgd, real_batches = train_module.pgd, train_module.batches
    monkeypatch.setattr(train_module, "pgd", lambda model, x, y, *a, **k: attacked.append(x) or
                        real_pgd(model, x, y, *a, **k))
    monkeypatch.setattr(train_module, "batches", lambda x, y, *a, **k: (k.get("shuffle") and trained_on.append(x))
                        or real_batches(x, y, *a, **k))  # shuffled: the training batches
    _, _, history = run(data, adversarial="fgsm_rs", epochs=2, adv_check_size=32)

    train_rows = [data_mod.as_float(x) for x in data.train_u8]
    test_rows, all_train = _rows(data.test_x), _rows(torch.stack(train_rows))
    assert len(attacked) == 2  # one check per epoch
    for x in attacked:
        assert len(_rows(x) & test_rows) == 0, f"the selection check attacked {len(_rows(x) & test_rows)} test images"
        assert _rows(x) <= all_train, "the selection check attacked images from outside the training split"
    held_out = _rows(torch.stack(train_rows[214:214 + 32]))
    assert all(_rows(x) == held_out for x in attacked)  # the first adv_check_size held-out images
    assert history.selection == "train[214:246]"
    # the held-out images are not trained on
    (trained,) = {id(x): x for x in trained_on}.values()
    assert len(trained) == 214 and len(_rows(data_mod.as_float(trained)) & held_out) == 0


def test_standard_training_uses_every_training_image(mnist_small, monkeypatch):
    seen = []
    real_batches = train_module.batches
    monkeypatch.setattr(train_module, "batches", lambda x, y, *a, **k: (k.get("shuffle") and seen.append(len(x)))
                        or real_batches(x, y, *a, **k))  # shuffled: the training batches
    _, _, history = run(mnist_small, epochs=2)
    assert seen == [256, 256] and history.trained_on == "train[0:256]"


def test_training_never_makes_the_float_training_set(mnist_small, monkeypatch):
    """uint8 images are normalized batch by batch: no call converts more than one batch."""
    sizes = []
    real = data_mod.normalize
    monkeypatch.setattr(data_mod, "normalize", lambda x: sizes.append(len(x)) or real(x))
    run(mnist_small, epochs=1, batch_size=32)
    assert len(sizes) == 256 // 32 and max(sizes) == 32


def test_train_needs_the_training_split(mnist_small):
    no_train = MNIST(None, None, mnist_small.test_x, mnist_small.test_y)
    with pytest.raises(SplitNotLoaded, match="splits="):
        run(no_train)


def test_train_without_test_split_records_no_test_accuracy(mnist_small):
    data = MNIST(mnist_small.train_u8[:64], mnist_small.train_y[:64], None, None)
    model, _, history = run(data)
    assert history.test_accuracy == [] and len(history.epoch_loss) == 1


def test_train_epoch_uint8_equals_float_and_reports_the_epoch(mnist_small):
    """train_epoch on uint8 pixels (normalized per batch) gives exactly what it gives on the float images; its
    epoch loss is the image-weighted mean of its step losses and its accuracy counts the batches' predictions."""
    config = TrainConfig(batch_size=48, seed=0)
    runs = []
    for x in (mnist_small.train_u8, mnist_small.train_x):
        torch.manual_seed(0)
        model = SmallResNet()
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
        runs.append((model, train_epoch(model, optimizer, x, mnist_small.train_y, config,
                                        torch.Generator().manual_seed(0))))
    (model_a, (loss_a, mean_a, acc_a)), (model_b, (loss_b, mean_b, acc_b)) = runs
    assert same_weights(model_a, model_b) and loss_a == loss_b and (mean_a, acc_a) == (mean_b, acc_b)
    assert model_a.training
    sizes = [48] * 5 + [16]  # 256 images
    assert len(loss_a) == 6 and mean_a == pytest.approx(sum(l * n for l, n in zip(loss_a, sizes)) / 256, rel=1e-9)
    assert 0 <= acc_a <= 100 and (acc_a * 256 / 100) == pytest.approx(round(acc_a * 256 / 100))
