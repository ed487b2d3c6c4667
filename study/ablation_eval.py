"""The 0.3 px capacity study's evaluation (:mod:`study.ablation` trains): a trained configuration's clean accuracy,
training curves and AutoAttack, and what became of it (:func:`status`: diverged, collapsed, overfit or trained); Carlini et al.'s checks on the best ones;
AutoAttack on Wong et al.'s released checkpoint, beside the official driver. And how the study is read: the
published anchors (:data:`PUBLISHED`), a configuration in words (:func:`describe`), the pairs of configurations
that differ in one setting (:func:`contrasts`). Every eps here is in [0, 1] pixel units (the images are 28x28 in
[0, 1]).

The command line (``python -m study.ablation_eval evaluate|checklist|released ...``) is what the workflow's jobs run.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from advlib.io import atomic_write_json
from advlib.model import count_parameters
from study.ablation import (ANCHOR_FILE, ANCHOR_SHA256, ANCHOR_URL, BOUNDS01, CHECK_EPS_SWEEP, IMAGE_SIZE, RECIPE,
                            load_released, spec)

# The AutoAttack paper's MNIST table at eps = 0.3 (Croce & Hein 2020, table 2; clean and AutoAttack accuracy in
# percent on the 10,000 test images). None of these models uses BatchNorm.
PUBLISHED = [
    {"label": "Wong et al. 2020 (FGSM-RS)", "short": "Wong et al. 2020", "parameters": 166_406, "clean": 98.50,
     "autoattack": 82.93},
    {"label": "Madry et al. 2018 (PGD-40)", "short": "Madry et al. 2018", "parameters": 3_274_634, "clean": 98.53,
     "autoattack": 88.50},
    {"label": "TRADES (Zhang et al. 2019)", "short": "TRADES", "parameters": 312_202, "clean": 99.48,
     "autoattack": 92.81},
]
# Gowal et al. 2020 (99.26 / 96.34) is left out of the figure: the table gives no parameter count for it.
DIVERGED_LOSS = 2.0  # a last-epoch training loss above this is near chance (ln 10 = 2.30): the run diverged
DIVERGED_CLEAN = 50.0  # or the kept model's clean test accuracy below this (percent)
OVERFIT_TRAIN = 50.0  # a model fits its own training batches when its last-epoch accuracy on them is above this
OVERFIT_GAP = 50.0  # catastrophic overfitting: that accuracy more than this many points above the best held-out check


def describe(s: dict) -> str:
    """A configuration in words: network, width, BatchNorm, training attack, ramp, start clipping."""
    s = spec(s)
    net = ("Wong et al.'s CNN" if s["arch"] == "cnn" else "SmallResNet") + (f" {s['width']}×" if s["width"] != 1 else "")
    if s["arch"] == "resnet":
        net += (", BatchNorm (attack with " + ("batch statistics" if s["attack_bn"] == "train" else "running statistics")
                + ")") if s["batchnorm"] else ", no BatchNorm"
    attack = "FGSM-RS" if s["mode"] == "fgsm_rs" else f"PGD-{s['pgd_steps']}" if s["mode"] == "pgd" else "no attack"
    extra = [f"ε ramp over {s['ramp_epochs']:g} epochs"] if s["ramp_epochs"] else []
    if s["mode"] == "fgsm_rs" and s["clamp_start"]:
        extra.append("start clipped to [0, 1]")
    if s["check_attack"] != RECIPE["check_attack"]:
        extra.append(f"kept by an {s['check_attack'].upper()}-{s['check_steps']} check")
    return f"{net}; {attack}" + "".join(f", {e}" for e in extra)


CHANGES = {"arch": "the network (Wong et al.'s CNN → SmallResNet)", "batchnorm": "BatchNorm",
           "attack_bn": "BatchNorm's statistics in the training attack", "width": "width",
           "ramp_epochs": "an ε ramp", "mode": "the training attack (FGSM-RS → PGD)",
           "clamp_start": "the random start clipped to [0, 1]",
           "check_attack": "the early-stopping check (PGD with two restarts → APGD-CE)"}


# a setting a change brings with it (PGD's steps, the check's steps), free to differ
IMPLIED = {"mode": ("pgd_steps",), "check_attack": ("check_steps", "check_step_sizes")}


def _relevant(s: dict) -> dict:
    """The settings that matter for an entry (PGD's steps only under PGD, the start's clipping only under FGSM-RS,
    BatchNorm's statistics only with BatchNorm)."""
    s = spec(s)
    drop = {"pgd_steps"} if s["mode"] != "pgd" else set()
    drop |= {"clamp_start"} if s["mode"] != "fgsm_rs" else set()
    drop |= {"attack_bn"} if not s["batchnorm"] else set()
    return {k: v for k, v in s.items() if k not in drop}


def contrasts(ablation: dict) -> list[tuple[str, str, str]]:
    """The pairs of configurations of the grid that differ in exactly one setting: (what changed, a, b), a first in
    the grid's order; what the narrative reads the ablation by."""
    names, out = list(ablation), []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            sa, sb = _relevant(ablation[a]), _relevant(ablation[b])
            differ = [k for k in sorted(set(sa) & set(sb)) if sa[k] != sb[k]]
            # settings that a change brings with it (the check's steps with the check) do not count as changes
            diff = [k for k in differ if not any(k in IMPLIED.get(d, ()) for d in differ)]
            # a setting only one side has must be the recipe's, unless the change brings it (PGD's steps)
            alone = {k: v for k, v in {**sa, **sb}.items() if (k in sa) != (k in sb)}
            if len(diff) == 1 and all(v == RECIPE[k] or k in IMPLIED.get(diff[0], ()) for k, v in alone.items()):
                out.append((CHANGES.get(diff[0], diff[0]), a, b))
    return out


def status(history: dict, clean: float) -> str:
    """What became of a run, from its training curves and its kept model's clean test accuracy (percent):

    - "diverged": training ended near chance (last-epoch loss > DIVERGED_LOSS), or the kept model is below
      DIVERGED_CLEAN clean without fitting its own training batches either;
    - "collapsed": the kept model is below DIVERGED_CLEAN clean (in eval mode) although it fits its own training
      batches (last-epoch accuracy on them above OVERFIT_TRAIN): what BatchNorm's running statistics, gathered on
      adversarial batches, do to clean test images;
    - "overfit": catastrophic overfitting (Wong et al. 2020) that early stopping could not undo: the model fits its
      own FGSM batches (last-epoch accuracy on them above OVERFIT_TRAIN) more than OVERFIT_GAP points above the best
      held-out PGD check of any epoch, so there was no robust epoch to keep;
    - "trained" otherwise.

    Diverged and collapsed runs are reported with their curves, never drawn as capacity points.
    """
    fits = history["train_accuracy"][-1] > OVERFIT_TRAIN
    if history["epoch_loss"][-1] > DIVERGED_LOSS or (clean < DIVERGED_CLEAN and not fits):
        return "diverged"
    if clean < DIVERGED_CLEAN:
        return "collapsed"
    if fits and history["train_accuracy"][-1] - max(history["check_accuracy"], default=100.0) > OVERFIT_GAP:
        return "overfit"
    return "trained"


def test_images(data_dir: str, device: str = "cpu"):
    """MNIST's 10,000 test images, 28x28 in [0, 1] (ToTensor's pixel / 255), and labels."""
    from advlib.data import load_dataset

    data = load_dataset("mnist", data_dir, splits=("test",), image_size=IMAGE_SIZE, bounds=BOUNDS01)
    return data.test_x.to(device), data.test_y.to(device)


def evaluate(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, n: int, start: int = 0,
             seed: int = 0) -> dict:
    """Clean accuracy on all of (x, y) and AutoAttack (standard, ``seed``) at ``eps`` ([0, 1] pixels) on images
    [start, start + n), unfiltered. Returns {"clean": rate dict, "autoattack": advlib.autoattack's result,
    "start": start}."""
    from advlib.attacks import predict
    from advlib.autoattack import autoattack
    from advlib.metrics import rate

    correct = sum(int((predict(model, x[i:i + 2000])[0] == y[i:i + 2000]).sum()) for i in range(0, len(x), 2000))
    result = autoattack(model, x[start:start + n], y[start:start + n], eps, bounds=BOUNDS01, seed=seed)
    return {"clean": rate(correct, len(y)), "autoattack": result, "start": start}


def full_evaluation(model: torch.nn.Module, source: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *,
                    eps: float, square_samples: int, seed: int = 0) -> dict:
    """Carlini et al.'s checks (:func:`study.sanity.sanity_attacks`, the step-size row included) on (x, y) in
    [0, 1] at ``eps`` px, and the APGD cross-check; :func:`study.sanity.checklist` turns them into verdicts beside
    the model's AutoAttack result on the same images."""
    from advlib.autoattack import apgd_crosscheck
    from study.sanity import sanity_attacks

    out = sanity_attacks(model, x, y, eps, source=source, eps_sweep=CHECK_EPS_SWEEP, square_samples=square_samples,
                         seed=seed, bounds=BOUNDS01)
    out["apgd_crosscheck"] = apgd_crosscheck(model, x, y, eps, bounds=BOUNDS01, seed=seed)
    return out


def official_driver(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, *, eps: float, seed: int = 0) -> list[bool]:
    """The official AutoAttack driver itself (pyautoattack's ``run_standard_evaluation``, standard version, its
    batches of 250) on (x, y) in [0, 1] at ``eps`` px: which images it leaves robust. advlib's harness must agree
    with it image for image."""
    from pyautoattack import AutoAttack

    official = AutoAttack(model.eval(), eps=eps, seed=seed, version="standard", device=x.device)
    result = official.run_standard_evaluation(x, y)
    y_adv = result[1] if isinstance(result, tuple) else None
    if y_adv is None:  # a version that returns the images only
        with torch.no_grad():
            y_adv = torch.cat([model(result[i:i + 1000]).argmax(1) for i in range(0, len(result), 1000)])
    return (y_adv == y).tolist()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The 0.3 px capacity study's evaluation: a trained configuration, "
                                                 "Carlini et al.'s checks, or the released anchor.")
    sub = parser.add_subparsers(dest="job", required=True)
    e = sub.add_parser("evaluate", help="clean accuracy and AutoAttack of one trained configuration")
    c = sub.add_parser("checklist", help="Carlini et al.'s checks on one trained configuration")
    r = sub.add_parser("released", help="AutoAttack on Wong et al.'s released checkpoint, images [start, start+n)")
    for p in (e, c):
        p.add_argument("--name", required=True, help="the configuration, a key of 08_robustness's ablation")
        p.add_argument("--seed", type=int, required=True)
    for p in (e, r, c):
        p.add_argument("--params", required=True, help="JSON: 08_robustness's parameters")
        p.add_argument("--data-dir", default="data")
        p.add_argument("--threads", type=int)
        p.add_argument("--out", required=True)
    for p in (e, c):
        p.add_argument("--model", required=True)
    c.add_argument("--source", required=True)
    r.add_argument("--checkpoint", default=ANCHOR_FILE)
    for p in (e, r):
        p.add_argument("--start", type=int, default=0, help="AutoAttack on test images [start, start + n)")
    r.add_argument("--official", action="store_true", help="also run the official driver on the same images")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    params = json.loads(args.params)
    device, eps, n = params["device"], params["ablation_eps"], params["ablation_samples"]

    x, y = test_images(args.data_dir, device)
    if args.job == "released":
        model = load_released(args.checkpoint).to(device)
        out = evaluate(model, x, y, eps=eps, n=n, start=args.start, seed=params["seed"])
        out["model"] = {"checkpoint": ANCHOR_URL, "sha256": ANCHOR_SHA256, "parameters": count_parameters(model)}
        if args.official:
            flags = official_driver(model, x[args.start:args.start + n], y[args.start:args.start + n], eps=eps,
                                    seed=params["seed"])
            ours = out["autoattack"]["robust_flags"]
            out["official"] = {"robust": sum(flags), "n": len(flags), "robust_flags": flags,
                               "agree": sum(a == b for a, b in zip(flags, ours))}
        atomic_write_json(args.out, out)
        return 0
    from advlib.checkpoint import load_checkpoint

    ckpt = load_checkpoint(args.model, device=device)
    if args.job == "checklist":
        source = load_checkpoint(args.source, device=device).model
        out = full_evaluation(ckpt.model, source, x[:n], y[:n], eps=eps, square_samples=params["square_samples"],
                              seed=params["seed"])
        atomic_write_json(args.out, {"name": args.name, "seed": args.seed, "result": out})
        return 0
    out = evaluate(ckpt.model, x, y, eps=eps, n=n, start=args.start, seed=params["seed"])
    h = ckpt.history
    history = {"epoch_loss": h.epoch_loss, "train_accuracy": h.train_accuracy, "test_accuracy": h.test_accuracy,
               "check_accuracy": h.pgd_check_accuracy, "kept_epoch": h.kept_epoch, "seconds": h.seconds,
               "selection": h.selection, "trained_on": h.trained_on}
    out.update(name=args.name, seed=args.seed, spec=spec(params["ablation"][args.name]),
               parameters=count_parameters(ckpt.model), history=history)
    atomic_write_json(args.out, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
