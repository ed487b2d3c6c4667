"""advlib.parallel: data-parallel training over single-thread processes (small data, seconds).

Oracles: the shares' weighted gradients sum to the whole batch's gradient (autograd on the whole batch, with the
model in eval mode so that BatchNorm does not depend on the batch); one process reproduces advlib.train.train
exactly; synchronize sums gradients (and averages BatchNorm's statistics) over real processes.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from advlib.data import MNIST
from advlib.parallel import Replica, train_data_parallel
from advlib.train import TrainConfig, train

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


def _synchronize_worker(rank: int, port: int, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.BatchNorm1d(2))
    for p in model.parameters():
        p.grad = torch.full_like(p, rank + 1.0) * torch.arange(p.numel()).view_as(p)
    model[1].running_mean.fill_(rank + 1.0)
    Replica(rank, 2).synchronize(model)
    torch.save([p.grad for p in model.parameters()] + [model[1].running_mean], f"{out}/rank{rank}.pt")
    dist.destroy_process_group()


def test_synchronize_sums_gradients_and_averages_batchnorm_statistics(tmp_path):
    from advlib.parallel import _free_port

    torch.multiprocessing.spawn(_synchronize_worker, args=(_free_port(), str(tmp_path)), nprocs=2)
    for rank in range(2):
        *grads, running_mean = torch.load(tmp_path / f"rank{rank}.pt")
        for g in grads:
            assert torch.equal(g, 3.0 * torch.arange(g.numel()).view_as(g))  # (1 + 2) x the same pattern
        assert torch.equal(running_mean, torch.full((2,), 1.5))  # (1 + 2) / 2


def test_two_processes_keep_identical_weights(small, tmp_path):
    model, optimizer, history = train_data_parallel(small, config=CONFIG, world_size=2, progress=False,
                                                    state_dir=tmp_path)
    states = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["model"] for r in range(2)]
    for name, value in model.state_dict().items():  # BatchNorm's statistics too: averaged every step
        assert torch.equal(states[0][name], states[1][name]) and torch.equal(value, states[0][name]), name
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
