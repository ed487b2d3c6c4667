"""The study's models: their training recipes and the one function that trains a model once, then loads it.

- :func:`train_or_load`: the model a training configuration describes, trained once and then loaded. The workflow
  trains each model in its own job (``python -m study.models standard|robust ...``); the notebooks call the
  same function and find the checkpoint already there, so a notebook re-run never retrains a model.
- :func:`standard_config`, :func:`robust_config`: a :class:`~advlib.train.TrainConfig` from a stage's parameters
  (01_train's, 05_defense's); the 0.3 px capacity study's configurations are :mod:`study.ablation`'s.

Its own module, apart from the attack stages' prologue (:mod:`study.jobs`): the workflow retrains a model when the
code that trains it changes (this module, train, model, data, checkpoint), and only then.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import torch

from advlib.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from advlib.data import BOUNDS, IMAGE_SIZE, dataset_info, load_dataset
from advlib.model import ResNetConfig
from advlib.train import TrainConfig, train

STANDARD_MODEL = "model.pt"
ROBUST_MODEL = "robust_model.pt"


def _same_config(stored: dict, wanted: TrainConfig) -> bool:
    """True when a checkpoint's training config is the wanted one (device aside: a model moves between devices)."""
    want = {k: v for k, v in wanted.to_dict().items() if k != "device"}
    defaults = TrainConfig().to_dict()  # a setting added since the checkpoint was saved: it trained with the default
    return {k: stored.get(k, defaults[k]) for k in want} == want


def train_or_load(path: str | os.PathLike, config: TrainConfig, *, model_config=ResNetConfig(),
                  data_dir: str | os.PathLike = "../data", train_subset: int | None = None,
                  dataset: str = "mnist", image_size: int = IMAGE_SIZE, bounds=BOUNDS,
                  progress: bool = True) -> Checkpoint:
    """The model ``config`` and ``model_config`` (a ResNetConfig or SmallCNNConfig) describe: loaded from ``path``
    when the checkpoint there was trained with exactly this config, data set, image format (``image_size``,
    ``bounds``: the study's 32x32 in [-1, 1] by default) and training subset, else trained now (on the verified
    ``dataset`` from ``data_dir``) and saved there atomically.

    Returns the :class:`~advlib.checkpoint.Checkpoint` (model in eval mode on ``config.device``).
    """
    path = Path(path)
    if path.is_file():
        ckpt = load_checkpoint(path, device=config.device)
        fmt = (ckpt.metadata.get("image_size", IMAGE_SIZE), list(ckpt.metadata.get("bounds", BOUNDS)))
        if (_same_config(ckpt.train_config, config) and ckpt.metadata.get("train_subset") == train_subset
                and checkpoint_dataset(ckpt) == dataset and ckpt.model.config == model_config
                and fmt == (image_size, list(bounds))):
            if progress:
                print(f"loaded {path.name}: trained earlier with this configuration (seed {config.seed})")
            return ckpt
        if progress:
            print(f"{path.name} was trained with another configuration: training again")
    data = load_dataset(dataset, data_dir, splits=("train", "test"), train_subset=train_subset,
                        image_size=image_size, bounds=bounds)
    model, optimizer, history = train(data, model_config, config, progress=progress)
    fmt = {} if (image_size, tuple(bounds)) == (IMAGE_SIZE, BOUNDS) else {"image_size": image_size,
                                                                            "bounds": list(bounds)}
    save_checkpoint(path, model, optimizer, history, config.to_dict(),
                    metadata={"seed": config.seed, "train_subset": train_subset, "dataset": dataset, **fmt})
    return load_checkpoint(path, device=config.device)


def checkpoint_dataset(ckpt: Checkpoint) -> str:
    """The data set a study checkpoint was trained on (its metadata; checkpoints from before the parameter: MNIST)."""
    return ckpt.metadata.get("dataset", "mnist")


def check_dataset(ckpt: Checkpoint, dataset: str, path: str | os.PathLike) -> None:
    """Refuse a model trained on another data set than the stage's ``dataset``, saying how to get the right one."""
    trained = checkpoint_dataset(ckpt)
    if trained != dataset:
        raise ValueError(f"{path} was trained on {dataset_info(trained).title}, but this run's dataset is "
                         f"{dataset_info(dataset).title}: run the workflow with --config dataset={dataset} (its own "
                         "run folder), or point artifact_dir at that data set's models")


def standard_config(params: dict) -> TrainConfig:
    """The standard model's TrainConfig from stage parameters (seed, device, epochs, batch_size, lr)."""
    return TrainConfig(epochs=params["epochs"], batch_size=params["batch_size"], lr=params["lr"],
                       seed=params["seed"], device=params["device"])


def robust_config(params: dict) -> TrainConfig:
    """The adversarially trained model's TrainConfig: the standard recipe plus adv_mode and adv_eps."""
    return replace(standard_config(params), adversarial=params["adv_mode"], adv_eps=params["adv_eps"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train (or find already trained) one of the study's models.")
    parser.add_argument("kind", choices=["standard", "robust"])
    parser.add_argument("--out", required=True, help="checkpoint path")
    parser.add_argument("--params", required=True, help="JSON object of stage parameters (seed, epochs, ...)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own choice)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = json.loads(args.params)
    config = {"standard": standard_config, "robust": robust_config}[args.kind](params)
    train_or_load(args.out, config, data_dir=args.data_dir,
                  train_subset=params.get("train_subset"), dataset=params.get("dataset", "mnist"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
