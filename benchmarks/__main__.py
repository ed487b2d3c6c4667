"""Speed and memory benchmarks of advlib against the textbook pipeline and a peer library, in one run.

    python -m benchmarks            # the measurement (~30 min on 2 cores): benchmarks/results.json, results.md
    python -m benchmarks --quick    # smaller sizes, the workflow with small parameters (a few minutes)
    python -m benchmarks --smoke    # tiny sizes (seconds), for CI: checks the entry point still works
    python -m benchmarks --only training,sweep --out /tmp/bench
    python -m benchmarks --seed-study --make-test   # also the 10-seed study and `make test` (each takes minutes)
    python -m benchmarks --make-test-seconds 333    # record a `make test` wall time measured elsewhere

Sections: training (1), sweep on correctly classified images (2) and on the whole test set (3), slider (4),
the workflow (5: from scratch, incremental, kernel memory, seed study), memory (6), efficiency (7). Results are
written after every section, so an interrupted run keeps what it measured. results.json has a "met" boolean per
target (null: not measured, with the reason).
"""
from __future__ import annotations

import argparse
import datetime as dt
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

from advlib.checkpoint import save_checkpoint
from advlib.data import load_mnist
from advlib.io import atomic_write_json, atomic_write_bytes
from study.models import STANDARD_MODEL
from study.jobs import attack_set
from advlib.train import TrainConfig, train

from benchmarks import efficiency, memory, report, slider_speed, sweep_speed, train_speed, workflow
from benchmarks.common import ROOT, SETTINGS, loadavg, machine_info, settings_dict

SECTIONS = ["training", "sweep", "slider", "workflow", "memory", "efficiency"]


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--smoke", action="store_true", help="tiny sizes, seconds long (CI)")
    size.add_argument("--quick", action="store_true", help="smaller sizes, the workflow with small parameters")
    parser.add_argument("--out", help="output folder (default: benchmarks/, or benchmarks/_work/<mode> otherwise)")
    parser.add_argument("--data-root", default=str(ROOT / "data"), help="verified MNIST (python -m advlib.download)")
    parser.add_argument("--only", help=f"comma-separated subset of {','.join(SECTIONS)}")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads for every method alike (default: torch's "
                        "own choice; 1 with --smoke, where oversubscribed threads on a busy CI machine crawl)")
    parser.add_argument("--scratch-only", action="store_true", help="the workflow section: only the two reports "
                        "from scratch (MNIST, then Fashion-MNIST), no incremental runs or seed study")
    parser.add_argument("--seed-study", action="store_true", help="the workflow's seed study with all 10 seeds "
                        "(default: 2 seeds, extrapolated)")
    test = parser.add_mutually_exclusive_group()
    test.add_argument("--make-test", action="store_true", help="also time `make test` in a copy of the repository")
    test.add_argument("--make-test-seconds", type=float, help="a `make test` wall time measured elsewhere (2 cores)")
    return parser.parse_args(argv)


def write(results: dict, out: Path, started: float) -> None:
    """Judge the targets and (re)write results.json and results.md with everything measured so far."""
    results["loadavg_at_end"] = loadavg()
    results["duration_s"] = time.perf_counter() - started
    results["targets"] = report.targets(results)
    atomic_write_json(out / "results.json", results)
    atomic_write_bytes(out / "results.md", report.markdown(results).encode())


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    settings = SETTINGS[mode]
    threads = args.threads or (1 if mode == "smoke" else None)
    if threads:
        torch.set_num_threads(threads)
    out = Path(args.out) if args.out else ROOT / "benchmarks" / ("" if mode == "full" else f"_work/{mode}")
    only = args.only.split(",") if args.only else SECTIONS
    unknown = set(only) - set(SECTIONS)
    if unknown:
        print(f"error: unknown sections {sorted(unknown)}; choose from {SECTIONS}", file=sys.stderr)
        return 2
    t0 = time.perf_counter()

    def say(message: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f} s] {message}", flush=True)

    results = {"schema_version": 2, "mode": mode, "command": "python -m benchmarks " + " ".join(argv or sys.argv[1:]),
               "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
               "settings": settings_dict(settings), "machine": machine_info(), "sections": {}}
    if args.make_test_seconds is not None:
        results["make_test"] = {"seconds": args.make_test_seconds, "note": "measured outside this run"}
    started = time.perf_counter()
    say(f"benchmarks ({mode}) -> {out}; {results['machine']['cpu_model']}, "
        f"{results['machine']['torch_num_threads']} torch threads, load {results['machine']['loadavg_at_start']}")
    data = load_mnist(args.data_root, fetch=False)
    results["advlib_data_load_s"] = time.perf_counter() - started
    sections = results["sections"]
    tmp = Path(tempfile.mkdtemp(prefix="advlib-bench-"))

    model = None
    if "training" in only:
        say("[1] training throughput and one-epoch accuracy")
        sections["training"], model = train_speed.run(settings, args.data_root, data, say)
        write(results, out, started)
    if set(only) & {"sweep", "slider", "memory", "efficiency"}:  # these attack a trained model
        if model is None:
            n = settings.train_images_for_accuracy
            say(f"training a model on {n or len(data.train_y)} images for the attack sections ...")
            model, _, _ = train(train_speed.subset(data, n, None), config=TrainConfig(epochs=1), progress=False)
        checkpoint = save_checkpoint(tmp / STANDARD_MODEL, model)
        attacked = attack_set(tmp, args.data_root, n_samples=settings.sweep_images)
        x, y = attacked.x, attacked.y
    x_full, y_full = data.test_x[: settings.full_sweep_images], data.test_y[: settings.full_sweep_images]

    if "sweep" in only:
        say(f"[2] sweep on {len(x)} correctly classified test images")
        sections["sweep_subset"] = sweep_speed.run_subset(settings, model, x, y, say)
        write(results, out, started)
        say(f"[3] sweep on {len(x_full)} test images")
        per_image = sections["sweep_subset"]["methods"]["per_image_loop"]["seconds_per_image_per_eps"]
        sections["sweep_full"] = sweep_speed.run_full(settings, model, x_full, y_full, per_image, say)
        write(results, out, started)
    if "slider" in only:
        say("[4] slider")
        sections["slider"] = slider_speed.run(settings, model, x, y, say)
        write(results, out, started)
    if "workflow" in only:
        say("[5] the workflow (Snakemake) in a copy of the repository")
        sections["workflow"] = workflow.run(settings, say, all_seeds=args.seed_study, scratch_only=args.scratch_only)
        write(results, out, started)
    if args.make_test:
        say("[5b] make test")
        results["make_test"] = workflow.make_test(say)
        write(results, out, started)
    if "memory" in only:
        say("[6] peak memory")
        sections["memory"] = memory.run(settings, args.data_root, str(checkpoint), say)
        write(results, out, started)
    if "efficiency" in only:
        say("[7] efficiency")
        train_rates = {}
        if "training" in sections:
            tr = sections["training"]
            train_rates = {tr[k]: tr["pipelines"][tr[k]]["images_per_s"]["median"] for k in ("advlib_best", "textbook_best")}
        sweep_rates = {name: m["adversarial_evaluations_per_s"]
                       for name, m in sections.get("sweep_full", {}).get("methods", {}).items() if "seconds" in m}
        sections["efficiency"] = efficiency.run(model, x, y, train_rates, sweep_rates, settings.matmul_n)
        write(results, out, started)
    write(results, out, started)
    shutil.rmtree(tmp, ignore_errors=True)
    say(f"\nwrote {out / 'results.json'} and {out / 'results.md'}\n")
    say(report.markdown(results).split("## Training")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
