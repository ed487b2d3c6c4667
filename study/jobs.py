"""One way into a stage: what every attack stage notebook (and the workflow's PGD jobs) calls first.

- :func:`attack_set`: the prologue of the attack stages: the standard model's checkpoint, the test split only,
  and ``n_samples`` test images chosen by one of two protocols (:data:`PROTOCOLS`): the first correctly classified
  ones (the original report's, for the FGSM figures) or the first ones unfiltered (for robust accuracy).
- :func:`pgd_curve_part`: 05_defense's PGD curve of one model, the workflow's ``python -m study.jobs pgd`` job; it
  fills the stage cache (:mod:`study.cache`) where the notebook's :func:`advlib.metrics.robust_curves` finds it.
- :func:`seed_record`: one seed's numbers for the seed study (07_seed_study), the workflow's
  ``python -m study.jobs seed`` job: 01_train's test accuracy and 02_sweep's FGSM sweep, without their figures,
  plus the test accuracy with BatchNorm's statistics recomputed (:func:`recalibrated_accuracy`).
- :func:`parameters`: the values a stage actually ran with (its notebook's defaults plus what papermill
  injected), for its metrics record.

The models themselves come from :mod:`study.models` (trained by the workflow's own jobs, loaded by the notebooks).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from study.cache import stage_cache
from advlib.attacks import fgsm_sweep, predict
from advlib.checkpoint import Checkpoint, environment_info, load_checkpoint
from advlib.data import BOUNDS, load_dataset
from advlib.io import atomic_write_json
from advlib.metrics import accuracy, first_test_images, pgd_curve, select_correct, sweep_metrics
from study.workflow import NOTEBOOK_DIR, declared_parameters
from study.models import ROBUST_MODEL, STANDARD_MODEL, check_dataset
from study.results import plain, require_file
from advlib.train import recalibrate_batchnorm

# the training images BatchNorm's statistics are recomputed on (the first of the training split), for every model alike
BN_CALIBRATION_IMAGES = 10_000


def parameters(namespace: dict, stage: str) -> dict:
    """The parameters stage ``stage`` ran with: every name its notebook declares, valued from ``namespace`` (the
    notebook's ``globals()``, so papermill's injected values win over the defaults). Paths are left out: they say
    where a machine keeps its files, not what was computed."""
    names = declared_parameters(NOTEBOOK_DIR / f"{stage}.ipynb")
    return {k: namespace[k] for k in names if not k.endswith("_dir")}


# ---------------------------------------------------------------------------------------------------------------
# The attack stages' prologue


# The two ways of choosing a stage's images (``attack_set(select=...)``):
# - "correct": the first n test images the standard model classifies correctly, the original report's protocol,
#   kept for its FGSM figures (1-9) and the slider;
# - "first": the first n test images, unfiltered, AutoAttack's and RobustBench's protocol: a clean mistake counts
#   as a failure. Every robust-accuracy number (stage 5's curves, AutoAttack, the sanity checks, the robust seeds)
#   uses it, so that it compares with published numbers and no model picks another's images.
PROTOCOLS = {"correct": "the first {n:,} correctly classified test images of the standard model",
             "first": "the first {n:,} test images, unfiltered (clean mistakes count as failures)"}


@dataclass
class AttackSet:
    """What an attack stage works on. x: (n, 1, 32, 32) in [-1, 1], y: (n,): the images ``select`` chose (see
    PROTOCOLS); test_x, test_y: the whole test split; idx: x's positions in it."""

    checkpoint: Checkpoint
    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    idx: torch.Tensor
    select: str = "correct"

    @property
    def protocol(self) -> str:
        """The images in words, for a table's header: "the first 1,000 test images, unfiltered (...)"."""
        return PROTOCOLS[self.select].format(n=len(self.x))

    def __repr__(self) -> str:
        seed = self.checkpoint.train_config.get("seed")
        return f"AttackSet({self.protocol} of {len(self.test_x):,}, standard model seed {seed})"


def attack_set(artifact_dir: str | os.PathLike = "../artifacts", data_dir: str | os.PathLike = "../data", *,
               n_samples: int = 1000, device: str = "cpu", select: str = "correct",
               dataset: str = "mnist") -> AttackSet:
    """Load the standard model (``artifact_dir/model.pt``, from 01_train) and the test split only of ``dataset``
    ("mnist", "fashion_mnist"), and pick ``n_samples`` test images: with ``select="correct"`` the first ones the
    standard model classifies correctly, as the original report did; with ``select="first"`` the first ones,
    unfiltered (see PROTOCOLS). A model trained on another data set is refused."""
    if select not in PROTOCOLS:
        raise ValueError(f"select must be one of {sorted(PROTOCOLS)} (see study.jobs.PROTOCOLS), got {select!r}")
    path = require_file(Path(artifact_dir) / STANDARD_MODEL, "01_train.ipynb")
    ckpt = load_checkpoint(path, device=device)
    check_dataset(ckpt, dataset, path)
    data = load_dataset(dataset, data_dir, splits=("test",))
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    if select == "correct":
        idx = select_correct(ckpt.model, test_x, test_y, n_samples)
    else:
        first_test_images(test_x, test_y, n_samples)  # refuses an n that does not fit the split
        idx = torch.arange(n_samples, device=test_x.device)
    return AttackSet(ckpt, ckpt.model, test_x[idx], test_y[idx], test_x, test_y, idx, select)


# ---------------------------------------------------------------------------------------------------------------
# Command line: the workflow's evaluation jobs


def pgd_curve_part(artifact_dir: str | os.PathLike, data_dir: str | os.PathLike, model_file: str,
                   params: dict, part: int = 0, parts: int = 1) -> list[dict]:
    """05_defense's PGD curve of one model, through the stage cache (:mod:`study.cache`), where the notebook's
    :func:`advlib.metrics.robust_curves` then finds it: the model in ``artifact_dir/model_file`` under PGD at the
    eps of ``params["eps_grid"]`` (normalized units) on the first ``params["n_samples"]`` test images (unfiltered), with
    05_defense's pgd_steps, seed and device. ``part`` k of ``parts`` n takes every n-th eps from the k-th
    (eps_grid[k::n]): each eps is computed on its own, so the parts run in parallel and give the numbers of one
    whole curve. Returns one :func:`advlib.metrics.rate` row per eps of the part."""
    if not 0 <= part < parts:
        raise ValueError(f"part must lie in 0..{parts - 1}, got {part}")
    s = attack_set(artifact_dir, data_dir, n_samples=params["n_samples"], device=params["device"],
                   select="first", dataset=params.get("dataset", "mnist"))
    path = require_file(Path(artifact_dir) / model_file, "05_defense.ipynb")
    net = s.model if model_file == STANDARD_MODEL else load_checkpoint(path, device=params["device"]).model
    return pgd_curve(net, s.x, s.y, params["eps_grid"][part::parts], pgd_steps=params["pgd_steps"],
                     seed=params["seed"], bounds=BOUNDS, cache=stage_cache(artifact_dir))


def recalibrated_accuracy(model: torch.nn.Module, data_dir: str | os.PathLike, test_x: torch.Tensor,
                          test_y: torch.Tensor, n_images: int = BN_CALIBRATION_IMAGES,
                          dataset: str = "mnist") -> float:
    """Clean accuracy (%) on (test_x, test_y) of a copy of ``model`` whose BatchNorm statistics are recomputed on
    the first ``n_images`` training images (:func:`advlib.train.recalibrate_batchnorm`, "precise BN"); the weights
    and ``model`` itself are untouched.

    What it separates: eval mode uses BatchNorm's running averages (momentum 0.1), which can lag weights that Adam at
    lr 0.01 moves quickly, so a model's eval-mode accuracy can fall far below what its weights achieve. With the
    statistics recomputed for the final weights, the accuracy measures the weights alone.
    test_x: (N, 1, 32, 32) in [-1, 1] on the model's device; test_y: (N,) labels.
    """
    train_u8 = load_dataset(dataset, data_dir, splits=("train",)).train_u8[:n_images]
    recalibrated = copy.deepcopy(model)
    recalibrate_batchnorm(recalibrated, train_u8.to(test_x.device))
    return accuracy(recalibrated, test_x, test_y)


def seed_record(artifact_dir: str | os.PathLike, data_dir: str | os.PathLike, train_params: dict,
                sweep_params: dict) -> dict:
    """What the seed study reads of one seed's run, computed by the calls 01_train and 02_sweep make, so a seed's
    numbers equal those of a report run with the same parameters; the figures, the training-set accuracy and the
    whole-test-set sweep, which the study does not read, are left out.

    Args:
        artifact_dir: holds the seed's standard model (model.pt, trained by the workflow's model job).
        train_params: 01_train's parameters of the run (seed, epochs, ...), recorded as they are.
        sweep_params: 02_sweep's n_samples, eps_grid (normalized units) and device.
    Returns:
        {"training": {"test_accuracy" (%, all 10,000 test images), "recalibrated_test_accuracy" (%, the same
         images, BatchNorm statistics recomputed: :func:`recalibrated_accuracy`), "bn_calibration_images" (on how
         many training images), "history", "parameters",
         "environment"},
         "sweep": {"n_samples", "eps_grid", "rows" (advlib.metrics.sweep_metrics), "parameters"}}: the sections
        of metrics.json that 07_seed_study reads, with their keys.
    """
    dataset = sweep_params.get("dataset", "mnist")
    s = attack_set(artifact_dir, data_dir, n_samples=sweep_params["n_samples"], device=sweep_params["device"],
                   dataset=dataset)
    _, clean_conf = predict(s.model, s.x)
    rows = sweep_metrics(fgsm_sweep(s.model, s.x, s.y, sweep_params["eps_grid"], bounds=BOUNDS), clean_conf)
    return {
        "training": {"test_accuracy": accuracy(s.model, s.test_x, s.test_y),
                     "recalibrated_test_accuracy": recalibrated_accuracy(s.model, data_dir, s.test_x, s.test_y,
                                                                         dataset=dataset),
                     "bn_calibration_images": BN_CALIBRATION_IMAGES,
                     "history": s.checkpoint.history.to_dict(),
                     "parameters": train_params, "environment": environment_info()},
        "sweep": {"n_samples": sweep_params["n_samples"], "eps_grid": sweep_params["eps_grid"], "rows": rows,
                  "parameters": {**sweep_params, "checkpoint_seed": s.checkpoint.train_config.get("seed")}},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="An evaluation job of the workflow: 05_defense's PGD curve of one "
                                                 "model (a part of its eps grid, into the stage cache), or one seed's "
                                                 "numbers for the seed study; written to a JSON file.")
    parser.add_argument("kind", choices=["pgd", "seed"])
    parser.add_argument("--out", required=True, help="the result's JSON")
    parser.add_argument("--params", required=True, help="JSON object of 05_defense's parameters (pgd: eps_grid, "
                                                        "...) or of 02_sweep's (seed: n_samples, eps_grid, device)")
    parser.add_argument("--train-params", help="seed: JSON object of 01_train's parameters, recorded with the result")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--artifact-dir", required=True, help="the folder of the checkpoints and the stage cache")
    parser.add_argument("--model", choices=[STANDARD_MODEL, ROBUST_MODEL], help="pgd: the attacked model")
    parser.add_argument("--part", type=int, default=0, help="pgd: this part's eps are eps_grid[part::parts]")
    parser.add_argument("--parts", type=int, default=1, help="pgd: how many parts the curve is cut into")
    args = parser.parse_args(argv)
    if args.kind == "seed" and args.train_params is None:
        parser.error("seed needs --train-params (01_train's parameters of the run, as a JSON object)")
    if args.kind == "pgd" and args.model is None:
        parser.error(f"pgd needs --model (the attacked model: {STANDARD_MODEL} or {ROBUST_MODEL})")
    if args.threads:
        torch.set_num_threads(args.threads)
    params = json.loads(args.params)
    if args.kind == "seed":
        record = seed_record(args.artifact_dir, args.data_dir, json.loads(args.train_params), params)
        atomic_write_json(args.out, plain(record))  # rounded as metrics.json is: a seed's numbers compare equal
        return 0
    rows = pgd_curve_part(args.artifact_dir, args.data_dir, args.model, params, args.part, args.parts)
    atomic_write_json(args.out, {"model": args.model, "part": args.part, "parts": args.parts, "pgd": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
