"""One way into a stage: what every stage notebook (and the pipeline's training jobs) calls first.

- :func:`train_or_load`: the model a training configuration describes, trained once and then loaded. The pipeline
  trains each model in its own job (``python -m advlib.stage train ...``); the notebooks call the same function
  and find the checkpoint already there, so a notebook re-run never retrains a model whose inputs did not change.
- :func:`attack_set`: the prologue of the attack stages: the standard model's checkpoint, the test split only,
  and the first ``n_samples`` correctly classified test images.
- :func:`pgd_curve`: 05_defense's PGD curve of one model, the workflow's ``python -m advlib.stage pgd`` job; it
  fills the stage cache (:mod:`advlib.cache`) where the notebook's :func:`advlib.metrics.robustness` finds it.
- :func:`parameters`: the values a stage actually ran with (its notebook's defaults plus what papermill
  injected), for its metrics record.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from advlib.cache import stage_cache
from advlib.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from advlib.data import load_mnist
from advlib.io import atomic_write_json
from advlib.metrics import pgd_rows, select_correct
from advlib.model import ResNetConfig, widened
from advlib.pipeline import NOTEBOOK_DIR, declared_parameters
from advlib.results import require_file
from advlib.train import TrainConfig, train

STANDARD_MODEL = "model.pt"
ROBUST_MODEL = "robust_model.pt"


def parameters(namespace: dict, stage: str) -> dict:
    """The parameters stage ``stage`` ran with: every name its notebook declares, valued from ``namespace`` (the
    notebook's ``globals()``, so papermill's injected values win over the defaults). Paths are left out: they say
    where a machine keeps its files, not what was computed."""
    names = declared_parameters(NOTEBOOK_DIR / f"{stage}.ipynb")
    return {k: namespace[k] for k in names if not k.endswith("_dir")}


# ---------------------------------------------------------------------------------------------------------------
# Models


def _same_config(stored: dict, wanted: TrainConfig) -> bool:
    """True when a checkpoint's training config is the wanted one (device aside: a model moves between devices)."""
    want = {k: v for k, v in wanted.to_dict().items() if k != "device"}
    defaults = TrainConfig().to_dict()  # a setting added since the checkpoint was saved: it trained with the default
    return {k: stored.get(k, defaults[k]) for k in want} == want


def train_or_load(path: str | os.PathLike, config: TrainConfig, *, model_config: ResNetConfig = ResNetConfig(),
                  data_dir: str | os.PathLike = "../data", train_subset: int | None = None,
                  progress: bool = True) -> Checkpoint:
    """The model ``config`` describes: loaded from ``path`` when the checkpoint there was trained with exactly this
    config and training subset, else trained now (verified MNIST from ``data_dir``) and saved there atomically.

    Returns the :class:`~advlib.checkpoint.Checkpoint` (model in eval mode on ``config.device``).
    """
    path = Path(path)
    if path.is_file():
        ckpt = load_checkpoint(path, device=config.device)
        if (_same_config(ckpt.train_config, config) and ckpt.metadata.get("train_subset") == train_subset
                and ckpt.model.config == model_config):
            if progress:
                print(f"loaded {path.name}: trained earlier with this configuration (seed {config.seed})")
            return ckpt
        if progress:
            print(f"{path.name} was trained with another configuration: training again")
    data = load_mnist(data_dir, splits=("train", "test"), train_subset=train_subset)
    model, optimizer, history = train(data, model_config, config, progress=progress)
    save_checkpoint(path, model, optimizer, history, config.to_dict(),
                    metadata={"seed": config.seed, "train_subset": train_subset})
    return load_checkpoint(path, device=config.device)


def standard_config(params: dict) -> TrainConfig:
    """The standard model's TrainConfig from stage parameters (seed, device, epochs, batch_size, lr)."""
    return TrainConfig(epochs=params["epochs"], batch_size=params["batch_size"], lr=params["lr"],
                       seed=params["seed"], device=params["device"])


def robust_config(params: dict) -> TrainConfig:
    """The adversarially trained model's TrainConfig: the standard recipe plus adv_mode and adv_eps."""
    return replace(standard_config(params), adversarial=params["adv_mode"], adv_eps=params["adv_eps"])


def threat_config(params: dict) -> TrainConfig:
    """Adversarial training at the standard MNIST threat model (08_robustness's tm_* parameters): Wong et al.
    2020's schedule (Adam under a cyclic learning rate peaking at tm_lr) with the eps ramped up over the first
    tm_ramp_epochs epochs, and tm_mode's attack: "fgsm_rs" (FGSM from a random start, step 1.25 eps: Wong et al.'s
    recipe, which overfits catastrophically on this model at 0.3 px) or "pgd" (tm_pgd_steps steps from a random
    start); batch 64 as everywhere in the study."""
    return TrainConfig(epochs=params["tm_epochs"], lr=params["tm_lr"], seed=params["seed"], device=params["device"],
                       adversarial=params["tm_mode"], adv_eps=params["tm_eps"], adv_pgd_steps=params["tm_pgd_steps"],
                       lr_schedule="cyclic", eps_ramp_epochs=params["tm_ramp_epochs"])


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
    parser = argparse.ArgumentParser(description="Train (or find already trained) one of the study's models, or "
                                                 "compute 05_defense's PGD curve of one (kind pgd).")
    parser.add_argument("kind", choices=["standard", "robust", "threat", "pgd"])
    parser.add_argument("--out", required=True, help="checkpoint path (pgd: the curve's JSON)")
    parser.add_argument("--params", required=True, help="JSON object of stage parameters (seed, epochs, ...)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    parser.add_argument("--width", type=int, default=1, help="channel multiplier (threat: the capacity study)")
    parser.add_argument("--artifact-dir", help="pgd: the folder of the checkpoints and the stage cache")
    parser.add_argument("--model", choices=[STANDARD_MODEL, ROBUST_MODEL], help="pgd: the attacked model")
    parser.add_argument("--part", type=int, default=0, help="pgd: this part's eps are eps_grid[part::parts]")
    parser.add_argument("--parts", type=int, default=1, help="pgd: how many parts the curve is cut into")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = json.loads(args.params)
    if args.kind == "pgd":
        if args.artifact_dir is None or args.model is None:
            parser.error("pgd needs --artifact-dir and --model")
        rows = pgd_curve(args.artifact_dir, args.data_dir, args.model, params, args.part, args.parts)
        atomic_write_json(args.out, {"model": args.model, "part": args.part, "parts": args.parts, "pgd": rows})
        return 0
    config = {"standard": standard_config, "robust": robust_config, "threat": threat_config}[args.kind](params)
    train_or_load(args.out, config, model_config=widened(args.width), data_dir=args.data_dir,
                  train_subset=params.get("train_subset"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
