"""Is data-parallel training as accurate as one process? The report's recipe (3 epochs, all 60,000 training
images) with advlib.parallel.train_data_parallel for a few seeds, against the committed seed study
(figures/seed_study/seed_*.json: one process, the same recipe).

    python -m benchmarks.parallel_accuracy --seeds 0-2 [--out benchmarks/_work/parallel_accuracy.json]

Prints each seed's test accuracy and both means with their seed-to-seed standard deviations.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from advlib.data import load_mnist
from advlib.io import atomic_write_json
from advlib.parallel import train_data_parallel
from study.workflow import parse_seeds
from study.jobs import BN_CALIBRATION_IMAGES
from advlib.train import TrainConfig, evaluate, recalibrate_batchnorm

from benchmarks.common import ROOT, loadavg


def seed_study(folder: Path = ROOT / "figures" / "seed_study") -> dict[int, float]:
    """{seed: clean test accuracy %} of the committed seed study."""
    out = {}
    for path in sorted(folder.glob("seed_*.json")):
        training = json.loads(path.read_text())["training"]
        out[training["parameters"]["seed"]] = training["test_accuracy"]
    return out


def mean_sd(values: list[float]) -> str:
    sd = f" ± {statistics.stdev(values):.2f}" if len(values) > 1 else ""
    return f"{statistics.fmean(values):.2f}{sd}% ({len(values)} seeds)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="0-2")
    parser.add_argument("--world-size", type=int, default=2)
    parser.add_argument("--data-root", default=str(ROOT / "data"))
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "_work" / "parallel_accuracy.json"))
    args = parser.parse_args(argv)
    data = load_mnist(args.data_root, fetch=False)
    runs = []
    for seed in parse_seeds(args.seeds):
        start, load = time.perf_counter(), loadavg()
        model, _, history = train_data_parallel(data, config=TrainConfig(seed=seed), world_size=args.world_size,
                                                progress=False)
        runs.append({"seed": seed, "test_accuracy": history.test_accuracy[-1], "epoch_seconds": history.seconds,
                     "wall_s": time.perf_counter() - start, "loadavg_before": load})
        # a diagnosis, not the result: BatchNorm's statistics recomputed on training images instead of rank 0's
        recalibrate_batchnorm(model, data.train_u8[:BN_CALIBRATION_IMAGES])
        runs[-1]["test_accuracy_recalibrated"] = evaluate(model, data.test_x, data.test_y)
        print(f"seed {seed}: test accuracy {runs[-1]['test_accuracy']:.2f}% after {len(history.seconds)} epochs "
              f"({runs[-1]['test_accuracy_recalibrated']:.2f}% with BatchNorm statistics recomputed), "
              f"{runs[-1]['wall_s']:.0f} s ({len(data.train_y) * len(history.seconds) / sum(history.seconds):.0f} "
              f"images/s, load {load})", flush=True)
    reference = seed_study()
    result = {"world_size": args.world_size, "runs": runs, "seed_study": reference}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(Path(args.out), result)
    print(f"data-parallel ({args.world_size} processes): {mean_sd([r['test_accuracy'] for r in runs])}")
    print(f"one process (figures/seed_study): {mean_sd(list(reference.values()))}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
