"""Data-parallel training on one machine: several single-thread processes train one model together (issue 11).

Every optimizer step, each process takes its share of the same shuffled batch (batch 64 over 2 processes: 32
images each) and runs forward and backward on it. Its loss is its share's mean cross-entropy weighted by the
share's fraction of the batch, so the gradients summed over the processes are the gradient of the whole batch's
mean loss -- except that BatchNorm normalizes each share with the share's own statistics. Every process then
applies the same Adam update to the same weights, so the weights stay identical. BatchNorm's running statistics,
which each process updates from its own share, are averaged over the processes after every step, so they too stay
identical (rank 0's alone once cost a seed well over a point of test accuracy: benchmarks.parallel_accuracy
measures it). The training loop is advlib.train's (``train`` with a :class:`Replica`), so the recipe, the seed and
the history are the same as one process's.

The processes exchange their gradients through shared memory (:class:`Exchange`: each writes its row, waits at a
barrier, and sums the rows), not through torch.distributed: in a loop of fixed batches, two processes on two cores
ran 2,666 images/s this way and 2,219 with gloo's all-reduce over 127.0.0.1 (whose helper threads compete with the
training threads for the cores).

Standard training only. Whether it is faster, and whether its accuracy stays within the seed spread, is measured
by the benchmarks (``python -m benchmarks``), not assumed here.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from advlib.data import MNIST
from advlib.model import ResNetConfig, SmallResNet
from advlib.train import History, TrainConfig, resolve_device, train

BARRIER_TIMEOUT_S = 600.0  # a process waiting this long for the others gives up (they crashed or hang)
SPIN_S = 0.05  # how long a process that arrives first polls for the others before it sleeps (Exchange.sum)


class Exchange:
    """Sums one flat float32 vector over world_size processes through shared memory.

    Two (world_size, numel) buffers, used in turn: a process writes its row of one, waits at the barrier until every
    process has written, then sums the rows (in row order, so every process gets the same bits). Alternating the
    buffers makes one barrier per sum enough: no process can write a buffer again before it has passed the next
    barrier, which the others reach only after they have read it. Create it in the parent and pass it to the
    processes (it pickles only while they are being started, as a multiprocessing Barrier does).

    When every process has a core of its own, a process that arrives first polls a shared counter (for at most
    SPIN_S) until the others have written their rows, and only then enters the barrier, which they all pass at once.
    A process that instead falls asleep in the barrier is woken later and computes its next step more slowly. The
    barrier still orders the memory accesses; the counter only spares the sleep. With fewer cores than processes
    the poller would take the core the others need, so it does not poll.
    """

    def __init__(self, world_size: int, numel: int, context) -> None:
        self.rows = torch.zeros(2, world_size, numel).share_memory_()
        self.barrier = context.Barrier(world_size)
        self.arrived = torch.zeros(world_size, dtype=torch.int64).share_memory_()  # each process's sums so far
        self.poll = world_size <= usable_cores()
        self.calls = 0  # per process: which buffer is next
        self.waited_s = 0.0  # per process: seconds spent waiting for the others to arrive (polling, then the barrier)

    def sum(self, rank: int, flat: torch.Tensor) -> torch.Tensor:
        """flat (numel,) float32 of process `rank` -> the sum over the processes (numel,), the same in each.

        Raises:
            threading.BrokenBarrierError: another process did not arrive within BARRIER_TIMEOUT_S.
        """
        rows = self.rows[self.calls % 2]
        self.calls += 1
        rows[rank].copy_(flat)
        start = time.perf_counter()
        self.arrived[rank] = self.calls
        while self.poll and int(self.arrived.min()) < self.calls and time.perf_counter() - start < SPIN_S:
            pass
        self.barrier.wait(BARRIER_TIMEOUT_S)
        self.waited_s += time.perf_counter() - start
        return rows.sum(0)


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity where the platform says, else all of the machine's."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@dataclass(frozen=True)
class Replica:
    """One process of a data-parallel group, as advlib.train.train_epoch uses it."""

    rank: int
    world_size: int
    exchange: Exchange | None = None  # shared by the group; None only for a group of one process

    def share(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """This process's rows of a batch x (B, ...), y (B,), and their fraction of the batch (the loss weight)."""
        lo, hi = self.rank * len(x) // self.world_size, (self.rank + 1) * len(x) // self.world_size
        return x[lo:hi], y[lo:hi], (hi - lo) / len(x)

    def synchronize(self, model: nn.Module) -> None:
        """After backward: replace every parameter's gradient by its sum over the processes, and BatchNorm's running
        statistics by their mean over the processes (one exchange of one flat buffer). A running mean is linear
        in the batch means, so its mean over the shares is the running mean of the whole batches, as one process
        keeps it (the running variance misses only the spread between the shares' means)."""
        if self.exchange is None:
            if self.world_size > 1:
                raise ValueError(f"Replica {self.rank} of {self.world_size} has no Exchange to sum gradients with: "
                                 "create one in the parent, Exchange(world_size, exchanged_numel(model), context)")
            return
        grads = [p.grad for p in model.parameters()]
        stats = _statistics(model)
        flat = torch.cat([g.reshape(-1) for g in grads] + [b.reshape(-1) / self.world_size for b in stats])
        total = self.exchange.sum(self.rank, flat)
        offset = 0
        for t in grads + stats:
            t.copy_(total[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def _statistics(model: nn.Module) -> list[torch.Tensor]:
    """The float buffers Replica.synchronize averages (BatchNorm's running mean and variance)."""
    return [b for b in model.buffers() if b.is_floating_point()]


def exchanged_numel(model: nn.Module) -> int:
    """How many numbers Replica.synchronize exchanges for this model: a gradient per parameter, and its statistics."""
    return sum(t.numel() for t in [*model.parameters(), *_statistics(model)])


def train_data_parallel(data: MNIST, model_config: ResNetConfig = ResNetConfig(),
                        config: TrainConfig = TrainConfig(), *, world_size: int = 2, progress: bool = True,
                        state_dir: str | os.PathLike | None = None) -> tuple[SmallResNet, torch.optim.Optimizer,
                                                                                History]:
    """Train like advlib.train.train, over world_size processes with one torch thread each.

    History: step and epoch losses and training accuracy are the whole batch's (summed over the processes); test
    accuracy and seconds are rank 0's (seconds: its epochs, without the processes' start-up).
    state_dir: also keep every process's final state there (``rank<r>.pt``: model, optimizer, history, and
    exchange_wait_s, the seconds that process waited at the steps' exchanges for the others), e.g. to check that
    they agree or to see what the lock-step costs.

    Returns:
        (model in eval mode, its Adam optimizer, History), as train() does.
    Raises:
        ValueError: adversarial training, a device other than the CPU, or a last batch too small to share.
    """
    if config.adversarial is not None:
        raise ValueError(f"train_data_parallel does standard training only (got adversarial={config.adversarial!r}); "
                         "use advlib.train.train for adversarial training")
    if resolve_device(config.device).type != "cpu":
        raise ValueError(f"train_data_parallel runs CPU processes (got device={config.device!r}); use "
                         "advlib.train.train on a GPU")
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world_size must be a positive integer, got {world_size!r}")
    rest = len(data.train_y) % config.batch_size
    if 0 < rest < 2 * world_size:  # BatchNorm in training mode needs 2 images per process
        raise ValueError(f"the last batch would hold {rest} image(s), fewer than 2 per process for {world_size} "
                         f"processes: drop {rest} training image(s) or change batch_size")
    # forkserver: each call forks fresh processes from a server that has imported torch and advlib once (spawn
    # would import them again in every process; fork would copy a parent whose OpenMP threads may be running)
    context = torch.multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    exchange = Exchange(world_size, exchanged_numel(SmallResNet(model_config)), context)
    with tempfile.TemporaryDirectory(prefix="advlib-parallel-") as tmp:
        out = Path(state_dir or tmp)
        out.mkdir(parents=True, exist_ok=True)
        torch.multiprocessing.start_processes(_worker, args=(world_size, exchange, data, model_config, config, out),
                                              nprocs=world_size, start_method="forkserver")
        states = [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in range(world_size)]
    model = SmallResNet(model_config)
    model.load_state_dict(states[0]["model"])
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    optimizer.load_state_dict(states[0]["optimizer"])
    history = History.from_dict(states[0]["history"])
    for name in ("step_loss", "epoch_loss", "train_accuracy"):  # each process's are its shares' parts: sum them
        parts = torch.tensor([state["history"][name] for state in states], dtype=torch.float64)
        setattr(history, name, parts.sum(0).tolist())
    if progress:
        for epoch, (loss, acc) in enumerate(zip(history.epoch_loss, history.train_accuracy)):
            test = f", test acc {history.test_accuracy[epoch]:.2f}%" if history.test_accuracy else ""
            print(f"epoch {epoch + 1}: loss {loss:.4f}, train acc {acc:.2f}%{test} ({world_size} processes)")
    return model.eval(), optimizer, history


def _worker(rank: int, world_size: int, exchange: Exchange, data: MNIST, model_config: ResNetConfig,
            config: TrainConfig, out: Path) -> None:
    torch.set_num_threads(1)
    model, optimizer, history = train(data, model_config, config, progress=False,
                                      replica=Replica(rank, world_size, exchange))
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history.to_dict(),
                "exchange_wait_s": exchange.waited_s}, out / f"rank{rank}.pt")
