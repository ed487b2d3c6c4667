"""Where a training epoch's time goes: advlib.train against the bare step it is built on.

    python -m benchmarks.profile_training                  # torch's default thread count
    python -m benchmarks.profile_training --threads 1 --steps 200 --repeats 3

Four ways to run the same steps (batch 64, Adam lr 0.01, the same images), interleaved over --repeats rounds so a
change in the machine's load hits each alike, median images/s:
- bare step: forward, cross-entropy, backward, Adam step on batches prepared (gathered, normalized) beforehand;
- train_epoch: advlib.train.train_epoch on the uint8 images (shuffling, per-batch normalization, bookkeeping);
- train(): a whole advlib.train.train call of one epoch, its end-of-epoch clean test evaluation (10,000 images)
  included, without and with the progress bar (written to /dev/null).
Then one instrumented epoch split into phases (batch, forward, loss, backward, optimizer, bookkeeping) with the
minor page faults per step (fresh memory the allocator asks the kernel for), and the operators that dominate
(torch.profiler). Nothing here is a pass/fail target; `python -m benchmarks` measures those.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import resource
import statistics
import time

import torch
import torch.nn.functional as F

from advlib.data import MNIST, batches, load_mnist
from advlib.model import SmallResNet
from advlib.train import TrainConfig, train, train_epoch

CONFIG = TrainConfig(epochs=1, batch_size=64, lr=0.01, seed=0)  # the report's recipe, one epoch
PHASES = ["batch", "forward", "loss", "backward", "optimizer", "bookkeeping"]


def fresh_model() -> tuple[SmallResNet, torch.optim.Optimizer]:
    """A seeded model in the memory format train() uses for this thread count, and its Adam optimizer."""
    torch.manual_seed(CONFIG.seed)
    model = SmallResNet().train()
    if torch.get_num_threads() == 1:
        model = model.to(memory_format=torch.channels_last)
    return model, torch.optim.Adam(model.parameters(), lr=CONFIG.lr)


@contextlib.contextmanager
def clocks(out: list):
    """Appends (wall seconds, CPU seconds of this process) of the block to out. CPU time counts only this
    process's work, so it is less disturbed by other processes than wall time (one thread; with more, the threads'
    spinning while they wait for each other counts too)."""
    wall, cpu = time.perf_counter(), time.process_time()
    yield
    out.append((time.perf_counter() - wall, time.process_time() - cpu))


def bare_step(data: MNIST, out: list) -> None:
    model, optimizer = fresh_model()
    prepared = list(batches(data.train_u8, data.train_y, CONFIG.batch_size, shuffle=True,
                            generator=torch.Generator().manual_seed(0)))
    with clocks(out):
        for x, y in prepared:
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()


def one_train_epoch(data: MNIST, out: list) -> None:
    model, optimizer = fresh_model()
    with clocks(out):
        train_epoch(model, optimizer, data.train_u8, data.train_y, CONFIG, torch.Generator().manual_seed(0))


def whole_train(data: MNIST, out: list, progress: bool) -> None:
    with open(os.devnull, "w") as sink, contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
        with clocks(out):
            train(data, config=CONFIG, progress=progress)


def phases(data: MNIST) -> tuple[dict[str, float], float]:
    """One epoch of train_epoch's loop with a clock between phases: ({phase: median seconds per step}, minor page
    faults per step)."""
    model, optimizer = fresh_model()
    times = {p: [] for p in PHASES}
    losses = torch.empty(-(-len(data.train_u8) // CONFIG.batch_size))
    correct = torch.zeros((), dtype=torch.int64)
    clock = time.perf_counter
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    it = batches(data.train_u8, data.train_y, CONFIG.batch_size, shuffle=True, generator=torch.Generator().manual_seed(0))
    for i in range(len(losses)):
        t0 = clock()
        x, y = next(it)
        t1 = clock()
        logits = model(x)
        t2 = clock()
        loss = F.cross_entropy(logits, y)
        t3 = clock()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t4 = clock()
        optimizer.step()
        t5 = clock()
        losses[i] = loss.detach()
        correct += (logits.argmax(1) == y).sum()
        t6 = clock()
        for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            times[phase].append(seconds)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / len(losses)
    return {p: statistics.median(t) for p, t in times.items()}, faults


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_training", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="steps per epoch (images = 64 * steps)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved rounds")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--top", type=int, default=12, help="operators listed")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    full = load_mnist(args.data_root, fetch=False)
    n = args.steps * CONFIG.batch_size
    data = MNIST(full.train_u8[:n], full.train_y[:n], full.test_x, full.test_y)
    runs = {"bare step": lambda out: bare_step(data, out),
            "train_epoch": lambda out: one_train_epoch(data, out),
            "train(), 1 epoch + test evaluation": lambda out: whole_train(data, out, progress=False),
            "train(), with progress bar": lambda out: whole_train(data, out, progress=True)}
    one_train_epoch(MNIST(data.train_u8[:640], data.train_y[:640], None, None), [])  # warm-up
    times = {name: [] for name in runs}
    for _ in range(args.repeats):
        for name, run in runs.items():
            run(times[name])
    load = ", ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"{n:,} images, batch 64, {torch.get_num_threads()} torch thread(s), median of {args.repeats} interleaved "
          f"rounds; load average {load} at the end (other processes slow the wall-clock rates)")
    print(f"  {'':<36} {'images/s':>9} {'wall vs bare':>13} {'CPU ms/step':>12} {'CPU vs bare':>12}")
    wall_bare, cpu_bare = (statistics.median(t[i] for t in times["bare step"]) for i in (0, 1))
    for name, t in times.items():
        wall, cpu = (statistics.median(x[i] for x in t) for i in (0, 1))
        print(f"  {name:<36} {n / wall:9,.0f} {100 * (wall / wall_bare - 1):+12.1f}% "
              f"{1000 * cpu / args.steps:12.2f} {100 * (cpu / cpu_bare - 1):+11.1f}%")

    medians, faults = phases(data)
    total = sum(medians.values())
    print(f"\none epoch of train_epoch's loop by phase: median {1000 * total:.2f} ms per step, "
          f"{faults:.0f} minor page faults per step")
    for phase in PHASES:
        print(f"  {phase:<12} {1000 * medians[phase]:7.3f} ms  {100 * medians[phase] / total:5.1f}%")

    from torch.profiler import ProfilerActivity, profile

    small = MNIST(data.train_u8[:50 * 64], data.train_y[:50 * 64], None, None)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        one_train_epoch(small, [])
    print()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
