"""advlib.train on a tiny split: seeded determinism, the history's bookkeeping, config checks, adversarial modes."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F

from advlib.data import MNIST
from advlib.metrics import accuracy
from advlib.model import ResNetConfig
from advlib.train import History, TrainConfig, adversarial_batch, recalibrate_batchnorm, resolve_device, train

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
    x_before = mnist_small.train_x.clone()
    run(mnist_small, seed=5)
    after_first = torch.rand(3)
    run(mnist_small, seed=5)
    assert torch.equal(torch.rand(3), after_first)  # the seed fixes the global RNG as well
    assert torch.equal(mnist_small.train_x, x_before)


def test_training_learns(mnist):
    # 1000 images, 2 epochs: the loss falls well below chance (ln 10 = 2.30) and training accuracy rises
    data = MNIST(mnist.train_x[:1000], mnist.train_y[:1000], mnist.test_x[:200], mnist.test_y[:200])
    _, _, hist = train(data, ResNetConfig(), TrainConfig(epochs=2, batch_size=32, seed=0), progress=False)
    assert hist.step_loss[0] > 2.0
    assert hist.epoch_loss[1] < hist.epoch_loss[0] < math.log(10)
    assert hist.train_accuracy[1] > 60 and hist.train_accuracy[1] > hist.train_accuracy[0]


# ---------------------------------------------------------------------------------------------------------------
# History bookkeeping


def test_history_lengths_and_values(mnist_small):
    data = MNIST(mnist_small.train_x[:200], mnist_small.train_y[:200], mnist_small.test_x[:100],
                 mnist_small.test_y[:100])
    model, optimizer, hist = train(data, ResNetConfig(), TrainConfig(epochs=2, batch_size=64, seed=0),
                                   progress=False)
    steps_per_epoch = math.ceil(200 / 64)  # 4, the last batch holds 8 images
    assert len(hist.step_loss) == steps_per_epoch * 2
    for name in ("epoch_loss", "train_accuracy", "test_accuracy", "seconds"):
        assert len(getattr(hist, name)) == 2, name
    assert hist.pgd_check_accuracy == []  # standard training
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
                pgd_check_accuracy=[], seconds=[1.5])
    assert History.from_dict(h.to_dict()) == h
    assert History.from_dict(h.to_dict() | {"unknown": [1]}) == h  # newer fields are ignored
    assert History.from_dict({}) == History()


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
    data = MNIST(mnist_small.train_x[:96], mnist_small.train_y[:96], mnist_small.test_x[:64],
                 mnist_small.test_y[:64])
    model, _, hist = run(data, adversarial=mode, adv_pgd_steps=2, epochs=2)
    assert len(hist.pgd_check_accuracy) == 2
    assert all(0 <= a <= 100 for a in hist.pgd_check_accuracy)
    assert len(hist.step_loss) == 2 * 3
    assert all(math.isfinite(l) for l in hist.step_loss)
    assert not model.training
    # the check is PGD-10 on the last adv_check_size test images, with the run's seed
    from advlib.attacks import pgd

    x_check = pgd(model, data.test_x, data.test_y, 0.3, steps=10, seed=0)
    assert hist.pgd_check_accuracy[-1] == pytest.approx(accuracy(model, x_check, data.test_y))
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
    import advlib.train as train_module

    config = dict(epochs=1, batch_size=64, seed=3, adversarial="fgsm_rs", adv_check_size=32)
    one_epoch, _, _ = train(mnist_small, config=TrainConfig(**config), progress=False)

    readings = iter([50.0, 80.0, 50.0, 10.0])  # per epoch: clean test accuracy, then PGD check accuracy
    monkeypatch.setattr(train_module, "accuracy", lambda *args, **kwargs: next(readings))
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
