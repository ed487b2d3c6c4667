"""One way into a stage: what every attack stage notebook (and the workflow's PGD jobs) calls first.

- :func:`attack_set`: the prologue of the attack stages: the standard model's checkpoint, the test split only,
  and the first ``n_samples`` correctly classified test images.
- :func:`pgd_curve`: 05_defense's PGD curve of one model, the workflow's ``python -m advlib.stage pgd`` job; it
  fills the stage cache (:mod:`advlib.cache`) where the notebook's :func:`advlib.metrics.robustness` finds it.
- :func:`parameters`: the values a stage actually ran with (its notebook's defaults plus what papermill
  injected), for its metrics record.

The models themselves come from :mod:`advlib.recipe` (trained by the workflow's own jobs, loaded by the notebooks).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from advlib.cache import stage_cache
from advlib.checkpoint import Checkpoint, load_checkpoint
from advlib.data import load_mnist
from advlib.io import atomic_write_json
from advlib.metrics import pgd_rows, select_correct
from advlib.pipeline import NOTEBOOK_DIR, declared_parameters
from advlib.recipe import ROBUST_MODEL, STANDARD_MODEL
from advlib.results import require_file


def parameters(namespace: dict, stage: str) -> dict:
    """The parameters stage ``stage`` ran with: every name its notebook declares, valued from ``namespace`` (the
    notebook's ``globals()``, so papermill's injected values win over the defaults). Paths are left out: they say
    where a machine keeps its files, not what was computed."""
    names = declared_parameters(NOTEBOOK_DIR / f"{stage}.ipynb")
    return {k: namespace[k] for k in names if not k.endswith("_dir")}


# ---------------------------------------------------------------------------------------------------------------
# The attack stages' prologue


@dataclass
class AttackSet:
    """What an attack stage works on. x: (n, 1, 32, 32) in [-1, 1], y: (n,): the first n correctly classified test
    images of ``model``; test_x, test_y: the whole test split; idx: x's positions in it."""

    checkpoint: Checkpoint
    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    idx: torch.Tensor

    def __repr__(self) -> str:
        return (f"AttackSet({len(self.x):,} correctly classified test images of {len(self.test_x):,}, "
                f"model seed {self.checkpoint.train_config.get('seed')})")


def attack_set(artifact_dir: str | os.PathLike = "../artifacts", data_dir: str | os.PathLike = "../data", *,
               n_samples: int = 1000, device: str = "cpu") -> AttackSet:
    """Load the standard model (``artifact_dir/model.pt``, from 01_train) and the test split only, and pick the
    first ``n_samples`` correctly classified test images, as the original report did."""
    ckpt = load_checkpoint(require_file(Path(artifact_dir) / STANDARD_MODEL, "01_train.ipynb"), device=device)
    data = load_mnist(data_dir, splits=("test",))
    test_x, test_y = data.test_x.to(device), data.test_y.to(device)
    idx = select_correct(ckpt.model, test_x, test_y, n_samples)
    return AttackSet(ckpt, ckpt.model, test_x[idx], test_y[idx], test_x, test_y, idx)


# ---------------------------------------------------------------------------------------------------------------
# Command line: the pipeline's training jobs


def pgd_curve(artifact_dir: str | os.PathLike, data_dir: str | os.PathLike, model_file: str,
              params: dict, part: int = 0, parts: int = 1) -> list[dict]:
    """05_defense's PGD curve of one model, through the stage cache (:mod:`advlib.cache`), where the notebook's
    :func:`advlib.metrics.robustness` then finds it: the model in ``artifact_dir/model_file`` under PGD at the
    eps of ``params["eps_grid"]`` (normalized units) on the attack set of ``params["n_samples"]`` images, with
    05_defense's pgd_steps, seed and device. ``part`` k of ``parts`` n takes every n-th eps from the k-th
    (eps_grid[k::n]): each eps is computed on its own, so the parts run in parallel and give the numbers of one
    whole curve. Returns one :func:`advlib.metrics.rate` row per eps of the part."""
    if not 0 <= part < parts:
        raise ValueError(f"part must lie in 0..{parts - 1}, got {part}")
    s = attack_set(artifact_dir, data_dir, n_samples=params["n_samples"], device=params["device"])
    path = require_file(Path(artifact_dir) / model_file, "05_defense.ipynb")
    net = s.model if model_file == STANDARD_MODEL else load_checkpoint(path, device=params["device"]).model
    return pgd_rows(net, s.x, s.y, params["eps_grid"][part::parts], pgd_steps=params["pgd_steps"],
                    seed=params["seed"], cache=stage_cache(artifact_dir))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="05_defense's PGD curve of one model (a part of its eps grid), "
                                                 "into the stage cache and a JSON file.")
    parser.add_argument("kind", choices=["pgd"])
    parser.add_argument("--out", required=True, help="the curve's JSON")
    parser.add_argument("--params", required=True, help="JSON object of 05_defense's parameters (eps_grid, ...)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--artifact-dir", required=True, help="the folder of the checkpoints and the stage cache")
    parser.add_argument("--model", required=True, choices=[STANDARD_MODEL, ROBUST_MODEL], help="the attacked model")
    parser.add_argument("--part", type=int, default=0, help="this part's eps are eps_grid[part::parts]")
    parser.add_argument("--parts", type=int, default=1, help="how many parts the curve is cut into")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = pgd_curve(args.artifact_dir, args.data_dir, args.model, json.loads(args.params), args.part, args.parts)
    atomic_write_json(args.out, {"model": args.model, "part": args.part, "parts": args.parts, "pgd": rows})
    return 0


if __name__ == "__main__":
    sys.exit(main())
