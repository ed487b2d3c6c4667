"""Work run in a separate process, so that its peak memory is its own (see common.run_child).

    python -m benchmarks.child train --data-root data --images 19200
    python -m benchmarks.child sweep --data-root data --checkpoint model.pt --images 10000
    python -m benchmarks.child pipeline --data-root data --notebook-dir NB --work-dir DIR

Each prints one JSON line: what it did, its seconds, and its peak resident memory (VmHWM) and that of its
largest finished child process (the notebook kernels, for the pipeline). Nothing is imported at the top that
the job does not need (the pipeline's own process does not import torch, so neither does this one for it).
"""
from __future__ import annotations

import argparse
import json
import resource
import time
from pathlib import Path

from benchmarks import EPS_GRID


def peak_memory_report() -> dict:
    """This process's peak RSS (VmHWM) and the largest peak among its finished children (ru_maxrss), in MB."""
    hwm_kb = 0
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            hwm_kb = int(line.split()[1])
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss  # kilobytes on Linux
    return {"self_peak_rss_mb": hwm_kb / 1024, "children_peak_rss_mb": children_kb / 1024}


def train_job(data_root: str, images: int) -> dict:
    from advlib.data import MNIST, load_mnist
    from advlib.train import TrainConfig, train

    data = load_mnist(data_root, fetch=False)  # all of it stays loaded, as in a real run
    data = MNIST(data.train_x[:images], data.train_y[:images], data.test_x, data.test_y)
    start = time.perf_counter()
    train(data, config=TrainConfig(epochs=1), progress=False)
    return {"job": "train", "train_images": images, "seconds": time.perf_counter() - start}


def sweep_job(data_root: str, checkpoint: str, images: int) -> dict:
    from advlib.attacks import fgsm_sweep
    from advlib.checkpoint import load_checkpoint
    from advlib.data import load_mnist

    data = load_mnist(data_root, fetch=False)
    model = load_checkpoint(checkpoint).model
    start = time.perf_counter()
    fgsm_sweep(model, data.test_x[:images], data.test_y[:images], EPS_GRID)
    return {"job": "sweep", "images": images, "eps": len(EPS_GRID), "seconds": time.perf_counter() - start}


def pipeline_job(data_root: str, notebook_dir: str, work_dir: str) -> dict:
    from advlib.pipeline import run_pipeline

    work = Path(work_dir)
    params = {"data_dir": str(Path(data_root).resolve()), "artifact_dir": str(work / "artifacts"),
              "figure_dir": str(work / "figures")}
    start = time.perf_counter()
    stages = run_pipeline(notebook_dir=notebook_dir, output_dir=work / "executed", parameters=params, progress=False)
    return {"job": "pipeline", "stage_seconds": stages, "seconds": time.perf_counter() - start}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", choices=["train", "sweep", "pipeline"])
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--checkpoint")
    parser.add_argument("--notebook-dir")
    parser.add_argument("--work-dir")
    args = parser.parse_args(argv)
    if args.job == "train":
        report = train_job(args.data_root, args.images)
    elif args.job == "sweep":
        report = sweep_job(args.data_root, args.checkpoint, args.images)
    else:
        report = pipeline_job(args.data_root, args.notebook_dir, args.work_dir)
    report.update(peak_memory_report())
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
