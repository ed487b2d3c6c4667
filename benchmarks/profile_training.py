"""Where one training step's time goes: advlib's step (batch 64, Adam lr 0.01) timed phase by phase, then the
operators that dominate it (torch.profiler), so a change to the training loop starts from a measurement.

    python -m benchmarks.profile_training                 # 200 steps with torch's default thread count
    python -m benchmarks.profile_training --threads 1 --steps 100

Phases: taking the batch (index into the cached tensors), forward, loss, backward, optimizer step, and the
bookkeeping advlib.train.train does per step (loss.item(), the accuracy count). Wall time per step, median over
the steps, after 20 warm-up steps.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.nn.functional as F

from advlib.data import batches, load_mnist
from advlib.model import SmallResNet

PHASES = ["batch", "forward", "loss", "backward", "optimizer", "bookkeeping"]


def timed_steps(model, optimizer, x, y, steps: int) -> dict[str, list[float]]:
    """Run `steps` training steps; returns {phase: [seconds per step]}."""
    times = {p: [] for p in PHASES}
    it = batches(x, y, 64, shuffle=True, generator=torch.Generator().manual_seed(0))
    clock = time.perf_counter
    for _ in range(steps):
        t0 = clock()
        xb, yb = next(it)
        t1 = clock()
        logits = model(xb)
        t2 = clock()
        loss = F.cross_entropy(logits, yb)
        t3 = clock()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t4 = clock()
        optimizer.step()
        t5 = clock()
        loss.item(), (logits.argmax(1) == yb).sum().item()
        t6 = clock()
        for phase, seconds in zip(PHASES, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            times[phase].append(seconds)
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_training", description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--top", type=int, default=12, help="operators listed")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    data = load_mnist(args.data_root, fetch=False)
    x, y = data.train_x[: (args.steps + 20) * 64], data.train_y[: (args.steps + 20) * 64]
    torch.manual_seed(0)
    model = SmallResNet().train()
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)

    timed_steps(model, optimizer, x, y, 20)  # warm-up
    times = timed_steps(model, optimizer, x, y, args.steps)
    medians = {p: statistics.median(t) for p, t in times.items()}
    total = sum(medians.values())
    print(f"{args.steps} steps, batch 64, {torch.get_num_threads()} torch thread(s): median {1000 * total:.1f} ms "
          f"per step ({64 / total:,.0f} images/s)")
    for phase in PHASES:
        print(f"  {phase:<12} {1000 * medians[phase]:7.2f} ms  {100 * medians[phase] / total:5.1f}%")

    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        timed_steps(model, optimizer, x, y, min(args.steps, 50))
    print()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
