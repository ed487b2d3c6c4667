"""What a small network needs to be robust at MNIST's standard threat model (L-inf eps = 0.3 in [0, 1] pixels): the
published anchor reproduced, and an ablation that separates capacity from BatchNorm and from the training recipe.

- The anchor: Wong, Rice & Kolter 2020 ("Fast is better than free"), whose released MNIST model
  (locuslab/fast_adversarial, ``MNIST/models/fgsm.pth``, :data:`ANCHOR_SHA256`) is the one in AutoAttack's MNIST
  table (82.93%). :func:`load_released` loads it into :class:`advlib.model.SmallCNN` without running any pickled
  code; the file is fetched by hand (the repository has no licence: it is never committed) and its absence is
  said, not papered over.
- The grid: 08_robustness's parameter ``ablation``, one entry per configuration, each a few overrides of
  Wong et al.'s recipe (:data:`RECIPE`); :func:`model_config` and :func:`train_config` turn an entry into advlib's
  configs. Every configuration trains on the same 28x28 images in [0, 1] (the field's format, so that eps = 0.3
  means what it means in the published table) and is selected by early stopping on held-out *training* images.
- :mod:`study.ablation_eval` evaluates the trained models (clean accuracy, AutoAttack on the first test images,
  unfiltered, at eps = 0.3 px, Carlini et al.'s checks) and says which diverged.

Every eps in this module is in [0, 1] pixel units (the images are in [0, 1]). The command line (``python -m
study.ablation train|source ...``) is what the workflow's training jobs run; this module imports no attack, so
that changing an evaluation retrains nothing.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

from advlib.model import ResNetConfig, SmallCNN, SmallCNNConfig, widened
from advlib.train import TrainConfig

BOUNDS01 = (0.0, 1.0)  # the ablation's images: [0, 1] pixels, 28x28, as the published models were trained
IMAGE_SIZE = 28
ANCHOR_FILE = "data/anchors/wong2020_mnist_fgsm.pth"  # where the README says to put the released checkpoint
ANCHOR_SHA256 = "07536ed24c714dac89507d38ffc0090f110de3cd70c40d02d8d56491e187905b"
ANCHOR_URL = "https://github.com/locuslab/fast_adversarial/raw/master/MNIST/models/fgsm.pth"

# Wong et al.'s MNIST recipe (train_mnist.py's defaults): 10 epochs, batch 100, Adam under a triangular learning
# rate 0 -> 5e-3 at 2/5 of training -> 0, FGSM from a uniform random start with step 1.25 eps, eps 0.3, the
# gradient taken at the unclipped start. Added here: the last 2,000 training images are held out and the epoch
# with the best check accuracy is kept (their README's fix for catastrophic overfitting), the check PGD-10 with two
# restarts whose steps are 0.25 eps and 0.5 eps (a large step sees masked gradients that a small one misses); an
# entry may check with APGD-CE instead ("check_attack": "apgd-ce", adaptive steps, "check_step_sizes": []).
RECIPE = {"arch": "cnn", "width": 1, "batchnorm": False, "mode": "fgsm_rs", "epochs": 10, "batch_size": 100,
          "lr": 5e-3, "eps": 0.3, "ramp_epochs": 0, "pgd_steps": 7, "clamp_start": False, "attack_bn": "eval",
          "holdout": 2000, "check_attack": "pgd", "check_steps": 10, "check_step_sizes": [0.25, 0.5]}

SOURCE = {"mode": None, "epochs": 2}  # the checklist's transfer source: Wong et al.'s network trained without attack
CHECK_EPS_SWEEP = [0.3, 0.4, 0.5, 0.7, 1.0]  # [0, 1] pixels: PGD accuracy must reach ~0 along these


def spec(entry: dict) -> dict:
    """An ablation entry's settings: the recipe's, overridden by the entry's (its list of seeds left out); unknown
    keys refused (a typo would silently run the recipe)."""
    unknown = set(entry) - set(RECIPE) - {"seeds"}
    if unknown:
        raise ValueError(f"unknown ablation settings {sorted(unknown)}; the known ones are {sorted(RECIPE)} "
                         "(and seeds)")
    return {**RECIPE, **{k: v for k, v in entry.items() if k != "seeds"}}


def model_config(s: dict) -> ResNetConfig | SmallCNNConfig:
    """The network an ablation entry describes: "cnn" (Wong et al.'s, channels and hidden units times width) or
    "resnet" (the study's SmallResNet, channels times width, with or without BatchNorm)."""
    s = spec(s)
    if s["arch"] == "cnn":
        if s["batchnorm"]:
            raise ValueError("the cnn architecture has no BatchNorm variant")
        w = s["width"]
        return SmallCNNConfig(image_size=IMAGE_SIZE, channels=(16 * w, 32 * w), hidden=100 * w)
    if s["arch"] == "resnet":
        return widened(s["width"], batchnorm=s["batchnorm"])
    raise ValueError(f"arch must be 'cnn' or 'resnet', got {s['arch']!r}")


def train_config(s: dict, seed: int, device: str = "cpu") -> TrainConfig:
    """advlib's TrainConfig for an ablation entry (eps in [0, 1] pixel units: the images are in [0, 1])."""
    s = spec(s)
    return TrainConfig(epochs=s["epochs"], batch_size=s["batch_size"], lr=s["lr"], seed=seed, device=device,
                       adversarial=s["mode"], adv_eps=s["eps"], adv_pgd_steps=s["pgd_steps"],
                       adv_check_size=s["holdout"], adv_holdout=s["holdout"], lr_schedule="cyclic",
                       eps_ramp_epochs=s["ramp_epochs"], check_attack=s["check_attack"], check_steps=s["check_steps"],
                       check_step_sizes=tuple(s["check_step_sizes"]), attack_bn=s["attack_bn"],
                       clamp_start=s["clamp_start"])


def runs(ablation: dict) -> list[tuple[str, int]]:
    """Every (configuration, seed) of the grid, in order."""
    return [(name, seed) for name, entry in ablation.items() for seed in entry.get("seeds", [0])]


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_released(path: str | Path = ANCHOR_FILE) -> SmallCNN:
    """Wong et al.'s released MNIST model in advlib's SmallCNN (eval mode; inputs 28x28 in [0, 1]). The file is a
    plain state_dict, loaded with ``weights_only=True``; its SHA-256 must be :data:`ANCHOR_SHA256`.

    Raises:
        FileNotFoundError: no file at path (with how to fetch it). ValueError: another file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no released checkpoint at {path}: download {ANCHOR_URL} there (it is not "
                                "committed: its repository has no licence), then run this again")
    digest = sha256(path)
    if digest != ANCHOR_SHA256:
        raise ValueError(f"{path} has SHA-256 {digest}, not the released fgsm.pth's {ANCHOR_SHA256}: download it "
                         f"again from {ANCHOR_URL}")
    model = SmallCNN()
    model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    return model.eval()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train one configuration of the 0.3 px capacity study, or the "
                                                 "checklist's transfer source (study.ablation_eval evaluates them).")
    parser.add_argument("job", choices=["train", "source"])
    parser.add_argument("--name", help="train: the configuration, a key of 08_robustness's ablation")
    parser.add_argument("--seed", type=int, help="train: the training seed")
    parser.add_argument("--params", required=True, help="JSON: 08_robustness's parameters")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.job == "train" and (args.name is None or args.seed is None):
        parser.error("train needs --name and --seed")
    if args.threads:
        torch.set_num_threads(args.threads)
    from study.models import train_or_load

    params = json.loads(args.params)
    entry = SOURCE if args.job == "source" else params["ablation"][args.name]
    seed = params["seed"] if args.job == "source" else args.seed
    train_or_load(args.out, train_config(entry, seed, params["device"]), model_config=model_config(entry),
                  data_dir=args.data_dir, image_size=IMAGE_SIZE, bounds=BOUNDS01)
    return 0


if __name__ == "__main__":
    sys.exit(main())
