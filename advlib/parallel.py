"""Data-parallel training on one machine: several single-thread processes train one model together (issue 11).

Every optimizer step, each process takes its share of the same shuffled batch (batch 64 over 2 processes: 32
images each) and runs forward and backward on it. Its loss is its share's mean cross-entropy weighted by the
share's fraction of the batch, so the gradients summed over the processes (torch.distributed, gloo on 127.0.0.1)
are the gradient of the whole batch's mean loss -- except that BatchNorm normalizes each share with the share's
own statistics. Every process then applies the same Adam update to the same weights, so the weights stay
identical. BatchNorm's running statistics, which each process updates from its own share, are averaged over the
processes after every step, so they too stay identical (rank 0's alone once cost a seed well over a point of test
accuracy: benchmarks.parallel_accuracy measures it). The training loop is advlib.train's (``train`` with a :class:`Replica`), so the recipe, the seed and the history are
the same as one process's.

Standard training only. Whether it is faster, and whether its accuracy stays within the seed spread, is measured
by the benchmarks (``python -m benchmarks``), not assumed here.
"""
from __future__ import annotations

import os
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from advlib.data import MNIST
from advlib.model import ResNetConfig, SmallResNet
from advlib.train import History, TrainConfig, resolve_device, train


@dataclass(frozen=True)
class Replica:
    """One process of a data-parallel group, as advlib.train.train_epoch uses it."""

    rank: int
    world_size: int

    def share(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, float]:
        """This process's rows of a batch x (B, ...), y (B,), and their fraction of the batch (the loss weight)."""
        lo, hi = self.rank * len(x) // self.world_size, (self.rank + 1) * len(x) // self.world_size
        return x[lo:hi], y[lo:hi], (hi - lo) / len(x)

    def synchronize(self, model: nn.Module) -> None:
        """After backward: replace every parameter's gradient by its sum over the processes, and BatchNorm's running
        statistics by their mean over the processes (one all-reduce of one flat buffer). A running mean is linear
        in the batch means, so its mean over the shares is the running mean of the whole batches, as one process
        keeps it (the running variance misses only the spread between the shares' means)."""
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        stats = [b for b in model.buffers() if b.is_floating_point()]
        flat = torch.cat([g.reshape(-1) for g in grads] + [b.reshape(-1) / self.world_size for b in stats])
        dist.all_reduce(flat)
        offset = 0
        for t in grads + stats:
            t.copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


def train_data_parallel(data: MNIST, model_config: ResNetConfig = ResNetConfig(),
                        config: TrainConfig = TrainConfig(), *, world_size: int = 2, progress: bool = True,
                        state_dir: str | os.PathLike | None = None) -> tuple[SmallResNet, torch.optim.Optimizer,
                                                                                History]:
    """Train like advlib.train.train, over world_size processes with one torch thread each.

    History: step and epoch losses and training accuracy are the whole batch's (summed over the processes); test
    accuracy and seconds are rank 0's (seconds: its epochs, without the processes' start-up).
    state_dir: also keep every process's final state there (``rank<r>.pt``: model, optimizer, history), e.g. to
    check that they agree.

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
    with tempfile.TemporaryDirectory(prefix="advlib-parallel-") as tmp:
        out = Path(state_dir or tmp)
        out.mkdir(parents=True, exist_ok=True)
        # forkserver: each call forks fresh processes from a server that has imported torch and advlib once (spawn
        # would import them again in every process; fork would copy a parent whose OpenMP threads may be running)
        torch.multiprocessing.get_context("forkserver").set_forkserver_preload([__name__])
        torch.multiprocessing.start_processes(_worker, args=(world_size, _free_port(), data, model_config, config,
                                              out), nprocs=world_size, start_method="forkserver")
        state = torch.load(out / "rank0.pt", weights_only=True)
    model = SmallResNet(model_config)
    model.load_state_dict(state["model"])
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    optimizer.load_state_dict(state["optimizer"])
    history = History.from_dict(state["history"])
    if progress:
        for epoch, (loss, acc) in enumerate(zip(history.epoch_loss, history.train_accuracy)):
            test = f", test acc {history.test_accuracy[epoch]:.2f}%" if history.test_accuracy else ""
            print(f"epoch {epoch + 1}: loss {loss:.4f}, train acc {acc:.2f}%{test} ({world_size} processes)")
    return model.eval(), optimizer, history


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, data: MNIST, model_config: ResNetConfig, config: TrainConfig,
            out: Path) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    try:
        model, optimizer, history = train(data, model_config, config, progress=False,
                                          replica=Replica(rank, world_size))
        for name in ("step_loss", "epoch_loss", "train_accuracy"):  # each process's are its shares' parts
            total = torch.tensor(getattr(history, name), dtype=torch.float64)
            dist.all_reduce(total)
            setattr(history, name, total.tolist())
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "history": history.to_dict()},
                   out / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()
