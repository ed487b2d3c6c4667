"""advlib.parallel: data-parallel training over single-thread processes (small data, seconds).

Oracles: the shares' weighted gradients sum to the whole batch's gradient (autograd on the whole batch, with the
model in eval mode so that BatchNorm does not depend on the batch); one process reproduces advlib.train.train
exactly; synchronize sums gradients (and averages BatchNorm's statistics) over real processes, step after step.
"""
from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F

import advlib.parallel

from advlib.data import MNIST
from advlib.parallel import Exchange, Replica, exchanged_numel, train_data_parallel
from advlib.train import TrainConfig, train

# each test starts training processes (tens of seconds in all): in `make test`, out of the fast lane
pytestmark = pytest.mark.slow

CONFIG = TrainConfig(epochs=1, batch_size=64, seed=3)


@pytest.fixture(scope="module")
def small(mnist) -> MNIST:
    """640 training images (10 batches of 64) and 256 test images."""
    return MNIST(mnist.train_u8[:640], mnist.train_y[:640], mnist.test_x[:256], mnist.test_y[:256])


def gradients(model, x, y, weight=1.0) -> list[torch.Tensor]:
    model.zero_grad(set_to_none=True)
    (F.cross_entropy(model(x), y) * weight).backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("world_size", [2, 3])
def test_weighted_shares_sum_to_the_whole_batch_gradient(untrained_model, test_batch, world_size):
    x, y = test_batch[0][:63], test_batch[1][:63]  # 63 images: unequal shares
    whole = gradients(untrained_model, x, y)
    shares = [Replica(rank, world_size).share(x, y) for rank in range(world_size)]
    assert torch.equal(torch.cat([s[0] for s in shares]), x) and torch.equal(torch.cat([s[1] for s in shares]), y)
    assert sum(s[2] for s in shares) == pytest.approx(1.0)
    summed = [sum(g) for g in zip(*(gradients(untrained_model, *share) for share in shares))]
    for a, b in zip(summed, whole):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def _synchronize_worker(rank: int, exchange: Exchange, out: str) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    replica = Replica(rank, 2, exchange)
    results = []
    for step in range(1, 4):  # three steps with other values each: both buffers, and the first one again
        for p in model.parameters():
            p.grad = torch.full_like(p, (rank + 1.0) * step) * torch.arange(p.numel()).view_as(p)
        model[1].running_mean.fill_((rank + 1.0) * step)
        replica.synchronize(model)
        results.append([p.grad.clone() for p in model.parameters()] + [model[1].running_mean.clone()])
    torch.save(results, f"{out}/rank{rank}.pt")


@pytest.mark.parametrize("poll", [True, False], ids=["polling", "sleeping"])
def test_synchronize_sums_gradients_and_averages_batchnorm_statistics(tmp_path, poll):
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    exchange = Exchange(2, exchanged_numel(model), torch.multiprocessing.get_context("spawn"))
    exchange.poll = poll  # whatever this machine's cores would choose: both ways must sum the same
    torch.multiprocessing.spawn(_synchronize_worker, args=(exchange, str(tmp_path)), nprocs=2)
    for rank in range(2):
        for step, (*grads, running_mean) in enumerate(torch.load(tmp_path / f"rank{rank}.pt"), start=1):
            for g in grads:  # (1 + 2) x step x the same pattern
                assert torch.equal(g, 3.0 * step * torch.arange(g.numel()).view_as(g)), step
            assert torch.equal(running_mean, torch.full((2,), 1.5 * step)), step  # (1 + 2) x step / 2


def test_synchronize_without_an_exchange_refuses_to_train_apart(untrained_model):
    with pytest.raises(ValueError, match="no Exchange"):
        Replica(0, 2).synchronize(untrained_model)


def test_a_missing_process_breaks_the_exchange_instead_of_hanging(monkeypatch):
    monkeypatch.setattr(advlib.parallel, "BARRIER_TIMEOUT_S", 0.2)
    exchange = Exchange(2, 4, torch.multiprocessing.get_context("spawn"))
    with pytest.raises(threading.BrokenBarrierError):
        exchange.sum(0, torch.ones(4))  # rank 1 never comes


@pytest.mark.parametrize("cores, polls", [(1, False), (2, True), (8, True)])
def test_processes_poll_for_each_other_only_with_a_core_each(monkeypatch, cores, polls):
    monkeypatch.setattr(advlib.parallel, "usable_cores", lambda: cores)
    assert Exchange(2, 4, torch.multiprocessing.get_context("spawn")).poll is polls


def test_two_processes_keep_identical_weights(small, tmp_path):
    model, optimizer, history = train_data_parallel(small, config=CONFIG, world_size=2, progress=False,
                                                    state_dir=tmp_path)
    saved = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    states = [state["model"] for state in saved]
    for name, value in model.state_dict().items():  # BatchNorm's statistics too: averaged every step
        assert torch.equal(states[0][name], states[1][name]) and torch.equal(value, states[0][name]), name
    for state in saved:  # each process timed its waits at the 10 exchanges: some time, within its own epoch
        assert 0 < state["exchange_wait_s"] < state["history"]["seconds"][0]
    assert len(history.step_loss) == 10 and len(history.test_accuracy) == 1 and not model.training
    assert len(optimizer.state) == len(list(model.parameters()))


def test_one_process_equals_train(small):
    # conftest runs the tests with one torch thread, as every data-parallel process does: same rounding
    reference, _, ref_history = train(small, config=CONFIG, progress=False)
    model, _, history = train_data_parallel(small, config=CONFIG, world_size=1, progress=False)
    for (name, a), b in zip(reference.state_dict().items(), model.state_dict().values()):
        assert torch.equal(a, b), name
    assert history.step_loss == ref_history.step_loss and history.test_accuracy == ref_history.test_accuracy


@pytest.mark.parametrize("change, match", [
    ({"adversarial": "fgsm_rs"}, "standard training only"),
    ({"batch_size": 639}, "last batch"),  # 640 = 639 + 1: one image for two processes
])
def test_refuses_what_it_cannot_do(small, change, match):
    config = TrainConfig(**{**CONFIG.to_dict(), **change})
    with pytest.raises(ValueError, match=match):
        train_data_parallel(small, config=config, world_size=2, progress=False)
