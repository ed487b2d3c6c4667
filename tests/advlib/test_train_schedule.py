"""The training options of the threat-model study: the cyclic learning rate and the eps ramp (step_schedule and
train()'s use of it), TrainConfig's checks, model.widened. Tiny trainings only (256
images, a second or two each)."""
from __future__ import annotations

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook

import advlib.train as train_module
from advlib.model import ResNetConfig, SmallResNet, count_parameters, widened
from advlib.train import TrainConfig, step_schedule, train

# ---------------------------------------------------------------------------------------------------------------
# step_schedule against hand-written schedules


def cyclic_oracle(lr: float, step: int, total: int) -> float:
    """Wong et al.'s one cycle, per step: 0 at step 0, lr at 2/5 of the steps, 0 at step == total."""
    peak = 0.4 * total
    return lr * step / peak if step <= peak else lr * (total - step) / (total - peak)


def test_constant_schedule_is_constant():
    config = TrainConfig(lr=0.003, epochs=2)
    for total in (1, 7, 100):
        for step in range(total):
            assert step_schedule(config, step, total) == (0.003, config.adv_eps)


@pytest.mark.parametrize("total", [100, 37, 5])
def test_cyclic_schedule_rises_to_the_peak_at_two_fifths_then_falls_to_zero(total):
    config = TrainConfig(lr=0.005, lr_schedule="cyclic")
    lrs = [step_schedule(config, s, total)[0] for s in range(total)]
    assert lrs[0] == 0.0
    assert lrs == pytest.approx([cyclic_oracle(0.005, s, total) for s in range(total)], abs=1e-12)
    assert max(lrs) <= 0.005 + 1e-15
    if total == 100:
        assert lrs[40] == pytest.approx(0.005) and lrs.index(max(lrs)) == 40
        rise, fall = torch.tensor(lrs[:41]), torch.tensor(lrs[40:])
        assert torch.allclose(rise.diff().diff(), torch.zeros(39, dtype=rise.dtype), atol=1e-9)  # linear
        assert torch.allclose(fall.diff().diff(), torch.zeros(58, dtype=fall.dtype), atol=1e-9)
        assert (fall.diff() < 0).all()
    # the last step's lr is one step short of 0: lr / (0.6 * total)
    assert lrs[-1] == pytest.approx(0.005 / (0.6 * total))


def test_eps_ramp_is_linear_from_zero_and_full_after_the_ramp_epochs():
    config = TrainConfig(epochs=4, eps_ramp_epochs=2, adversarial="pgd", adv_eps=0.3)
    per_epoch = 25
    total = config.epochs * per_epoch
    eps = [step_schedule(config, s, total)[1] for s in range(total)]
    ramp = 2 * per_epoch
    assert eps[0] == 0.0
    assert eps[:ramp] == pytest.approx([0.3 * s / ramp for s in range(ramp)])
    assert eps[ramp:] == [0.3] * (total - ramp)
    # a fractional ramp, and no ramp
    half = TrainConfig(epochs=2, eps_ramp_epochs=0.5, adversarial="fgsm_rs", adv_eps=0.2)
    assert [step_schedule(half, s, 8)[1] for s in range(8)] == pytest.approx([0, 0.1, 0.2, 0.2, 0.2, 0.2, 0.2, 0.2])
    assert step_schedule(TrainConfig(adversarial="pgd", adv_eps=0.3), 0, 10)[1] == 0.3
    # the ramp does not touch the learning rate, nor the lr schedule the eps
    assert {step_schedule(config, s, total)[0] for s in range(total)} == {config.lr}
    cyclic = TrainConfig(epochs=4, eps_ramp_epochs=2, adversarial="pgd", adv_eps=0.3, lr_schedule="cyclic")
    assert [step_schedule(cyclic, s, total)[1] for s in range(total)] == eps


# ---------------------------------------------------------------------------------------------------------------
# TrainConfig's checks


def test_train_config_rejects_an_unknown_lr_schedule():
    with pytest.raises(ValueError) as err:
        TrainConfig(lr_schedule="cosine")
    msg = str(err.value)
    assert "lr_schedule" in msg and "cosine" in msg and "constant" in msg and "cyclic" in msg


@pytest.mark.parametrize("ramp", [3.5, 4, -1])
def test_train_config_rejects_a_ramp_outside_the_training(ramp):
    with pytest.raises(ValueError) as err:
        TrainConfig(epochs=3, eps_ramp_epochs=ramp)
    msg = str(err.value)
    assert "eps_ramp_epochs" in msg and "epochs=3" in msg and str(ramp) in msg


def test_train_config_accepts_a_ramp_over_the_whole_training():
    assert TrainConfig(epochs=3, eps_ramp_epochs=3).eps_ramp_epochs == 3
    assert TrainConfig().lr_schedule == "constant" and TrainConfig().eps_ramp_epochs == 0


# ---------------------------------------------------------------------------------------------------------------
# widened


def test_widened():
    assert widened(1) == ResNetConfig()
    assert count_parameters(SmallResNet(widened(1))) == 19_810
    assert count_parameters(SmallResNet(widened(2))) == 77_754
    assert count_parameters(SmallResNet(widened(3))) == 173_842
    w2 = widened(2)
    assert (w2.stem_channels, w2.block_channels, w2.block_strides) == (16, (16, 32, 64), (1, 2, 2))
    for bad in (0, -1, 1.5, "2"):
        with pytest.raises(ValueError, match="width"):
            widened(bad)


# ---------------------------------------------------------------------------------------------------------------
# train() with the options


TINY = dict(epochs=1, batch_size=32, seed=0)


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


def history_without_time(h) -> dict:
    d = h.to_dict()
    d.pop("seconds")
    return d


def test_new_options_change_nothing_unless_asked(mnist_small):
    default, _, h_default = train(mnist_small, ResNetConfig(), TrainConfig(**TINY), progress=False)
    explicit, _, h_explicit = train(mnist_small, ResNetConfig(),
                                    TrainConfig(**TINY, lr_schedule="constant", eps_ramp_epochs=0), progress=False)
    assert same_weights(default, explicit)
    assert history_without_time(h_default) == history_without_time(h_explicit)
    # the scheduled code path (lr set before every step) with a constant lr: standard training ignores the eps
    # ramp, and setting the same lr again changes nothing
    scheduled, _, h_scheduled = train(mnist_small, ResNetConfig(), TrainConfig(**TINY, eps_ramp_epochs=1),
                                      progress=False)
    assert same_weights(default, scheduled)
    assert history_without_time(h_default) == history_without_time(h_scheduled)


@pytest.fixture
def step_lrs():
    """The learning rate of every optimizer step taken while the fixture is active."""
    seen: list[float] = []
    handle = register_optimizer_step_pre_hook(lambda opt, args, kwargs: seen.append(opt.param_groups[0]["lr"]))
    yield seen
    handle.remove()


def test_cyclic_training_spans_one_cycle_over_all_epochs(mnist_small, step_lrs):
    config = TrainConfig(epochs=2, batch_size=32, lr=0.01, seed=0, lr_schedule="cyclic")
    _, optimizer, history = train(mnist_small, ResNetConfig(), config, progress=False)
    total = 2 * 256 // 32
    assert len(history.step_loss) == total == len(step_lrs)
    assert step_lrs == pytest.approx([cyclic_oracle(0.01, s, total) for s in range(total)], abs=1e-12)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.01 / (0.6 * total))  # ~0: the last step's
    assert optimizer.param_groups[0]["lr"] < 0.11 * 0.01


def test_eps_ramp_reaches_the_batches(mnist_small, step_lrs, monkeypatch):
    seen = []
    original = train_module.adversarial_batch

    def spy(model, x, y, config, generator, eps=None, bounds=None):
        seen.append(eps)
        assert bounds == mnist_small.bounds  # the data's range reaches the attack
        return original(model, x, y, config, generator, eps, bounds)

    monkeypatch.setattr(train_module, "adversarial_batch", spy)
    config = TrainConfig(epochs=2, batch_size=32, seed=0, adversarial="fgsm_rs", adv_eps=0.3, adv_check_size=16,
                         eps_ramp_epochs=1)
    _, _, history = train(mnist_small, ResNetConfig(), config, progress=False)
    per_epoch = -(-(256 - 256 * 10_000 // 60_000) // 32)  # the last sixth is held out: 214 images, 7 batches
    assert len(seen) == 2 * per_epoch == len(history.step_loss)
    assert seen == pytest.approx([0.3 * min(1.0, s / per_epoch) for s in range(2 * per_epoch)])
    assert seen[0] == 0.0 and seen[per_epoch:] == [0.3] * per_epoch
    assert set(step_lrs) == {config.lr}
