"""Work run in a separate process, so that its peak memory is its own (see common.run_child).

    python -m benchmarks.child train --data-root data --images 19200
    python -m benchmarks.child sweep --data-root data --checkpoint model.pt --images 10000

Each prints one JSON line: what it did, its seconds, and its peak resident memory (VmHWM). Nothing is imported
at the top that the job does not need.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from benchmarks import EPS_GRID


def peak_memory_report() -> dict:
    """This process's peak resident memory (VmHWM), in MB."""
    hwm_kb = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm_kb = int(line.split()[1])
    return {"self_peak_rss_mb": hwm_kb / 1024}


def train_job(data_root: str, images: int) -> dict:
    from advlib.data import MNIST, load_mnist
    from advlib.train import TrainConfig, train

    data = load_mnist(data_root, fetch=False)  # both splits stay loaded, as in the workflow's training job
    data = MNIST(data.train_u8[:images], data.train_y[:images], data.test_x, data.test_y)
    start = time.perf_counter()
    train(data, config=TrainConfig(epochs=1), progress=False)
    return {"job": "train", "train_images": images, "seconds": time.perf_counter() - start}


def sweep_job(data_root: str, checkpoint: str, images: int) -> dict:
    from advlib.attacks import fgsm_sweep
    from advlib.checkpoint import load_checkpoint
    from advlib.data import BOUNDS, load_mnist

    data = load_mnist(data_root, splits=("test",), fetch=False)
    model = load_checkpoint(checkpoint).model
    start = time.perf_counter()
    fgsm_sweep(model, data.test_x[:images], data.test_y[:images], EPS_GRID, bounds=BOUNDS)
    return {"job": "sweep", "images": images, "eps": len(EPS_GRID), "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=["train", "sweep"])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--checkpoint")
    args = parser.parse_args(argv)
    if args.job == "train":
        report = train_job(args.data_root, args.images)
    else:
        report = sweep_job(args.data_root, args.checkpoint, args.images)
    report.update(peak_memory_report())
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
