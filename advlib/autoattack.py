"""AutoAttack, the field's standard robustness evaluation, run with the official code on any image classifier.

- :func:`autoattack`: the standard AutoAttack ensemble (Croce & Hein 2020: APGD-CE, APGD-T, FAB-T, Square, the
  official code as packaged by ``pyautoattack``; the study checks the package against the official repository)
  with its fixed hyperparameters, run attack after attack on the images still classified correctly, in the
  official driver's batches of :data:`AA_BATCH` survivors, as its ``run_standard_evaluation`` does (a test checks
  the two agree image by image), but recording which attack broke each image first.
- :func:`merge_parts`: one result from results on consecutive slices of the same images (the workflow runs one
  AutoAttack batch per job).
- :func:`apgd_crosscheck`: APGD-CE from AutoAttack against torchattacks' APGD on the same images. torchattacks'
  APGD is a port of the official code (same constants, start and seeding): agreeing with it checks the wrapping
  and the units, not the attack. :func:`advlib.iterative.margin_pgd` is an independent check.
- :func:`square_only`: the gradient-free Square attack alone, against APGD-CE alone.
- :func:`advlib.apgd.apgd_ce` (its own module, which training imports without the metrics): APGD-CE alone with a
  chosen number of steps, the early-stopping check of ``TrainConfig.check_attack = "apgd-ce"``.

Units. Inputs lie in ``bounds`` (default (0, 1)) and eps is in their units; AutoAttack and torchattacks work on
[0, 1] pixels, so :class:`PixelInput` wraps the model and x and eps are rescaled at that boundary only. Every
adversarial image is checked to lie within eps of its original and in [0, 1] before it counts. Needs the
``autoattack`` extra (``pip install ".[autoattack]"``).
"""
from __future__ import annotations

import time
from typing import Sequence

import torch
from torch import nn

from advlib.apgd import PixelInput, _checked, _to_pixels
from advlib.attacks import DEFAULT_BOUNDS, check_batch, check_eps, predict
from advlib.metrics import rate
from advlib.model import fold_batchnorm

# AutoAttack's default batch: its attacks reseed per batch, so results depend on the grouping; the workflow cuts
# AutoAttack into jobs of this many images (one batch each).
AA_BATCH = 250
AA_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")  # the standard version, in its order


def _fast(model: nn.Module) -> nn.Module:
    """The eval-mode network with BatchNorm folded (same function, faster convolutions), for attacking."""
    model.eval()
    return fold_batchnorm(model)


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return predict(model, x)[0] == y


def _perturb(aa, attack: str, x01: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One AutoAttack attack on a batch, set up as run_standard_evaluation sets it up."""
    if attack == "apgd-ce":
        aa.apgd.loss = "ce"
        aa.apgd.seed = aa.get_seed()
        return aa.apgd.perturb(x01, y)
    if attack == "apgd-t":
        aa.apgd_targeted.seed = aa.get_seed()
        return aa.apgd_targeted.perturb(x01, y)
    if attack == "fab-t":
        aa.fab.targeted = True
        aa.fab.n_restarts = 1
        aa.fab.seed = aa.get_seed()
        return aa.fab.perturb(x01, y)
    if attack == "square":
        aa.square.seed = aa.get_seed()
        return aa.square.perturb(x01, y)
    raise ValueError(f"unknown attack {attack!r}; AutoAttack's standard attacks are {AA_ATTACKS}")


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
               bounds: Sequence[float] = DEFAULT_BOUNDS, seed: int = 0, attacks: Sequence[str] = AA_ATTACKS,
               progress: bool = True) -> dict:
    """AutoAttack's standard evaluation (L-inf) of ``model`` at ``eps`` on (x, y), in the paper 'Reliable
    evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks' (Croce & Hein, 2020)
    [https://arxiv.org/abs/2003.01690], with the official code (``pyautoattack``, the ``autoattack`` extra).

    x: (N, C, H, W) inside ``bounds`` (default (0, 1)); y: (N,) labels; eps in the units of x. AutoAttack itself
    runs on [0, 1] pixels: x and eps are rescaled at that boundary (:class:`PixelInput`), so for the study's
    normalized MNIST (bounds (-1, 1)) it runs at eps / 2 = :func:`advlib.attacks.to_pixel_eps` (eps).
    Attack after attack, each on the images no earlier attack broke (a clean mistake counts as broken), grouped
    in AutoAttack's batches of 250 as its driver groups them: the attacks draw their random starts per batch, so
    the grouping is part of the result. (The workflow runs 250 images per job; a job's result is then exactly the
    official driver's on those images.) Every adversarial image is checked to lie within eps of its original
    and in the valid range before it counts.

    Returns a JSON-ready dict: eps (units of x), eps_pixel ([0, 1] pixel units), n, clean (correct clean), robust (count), accuracy (rate dict with
    Wilson interval), per_attack: [{attack, attacked, broke, seconds}], robust_flags: list of N bools.
    """
    from pyautoattack import AutoAttack

    eps = check_eps(eps)
    bounds = check_batch(x, y, bounds=bounds)
    fast = _fast(model)
    pixel_model = PixelInput(fast, bounds)
    x01, eps01 = _to_pixels(x, eps, bounds)
    aa = AutoAttack(pixel_model, eps=eps01, seed=seed, version="standard", device=x.device)
    if set(attacks) - set(AA_ATTACKS):
        raise ValueError(f"attacks must be among AutoAttack's standard {AA_ATTACKS}, got {list(attacks)}")
    robust = _correct(model, x, y)
    clean = int(robust.sum())
    per_attack = []
    for attack in attacks:
        start = time.perf_counter()
        todo = robust.nonzero().flatten()  # as the official driver: the survivors, regrouped in batches of 250
        attacked = len(todo)
        for b in range(0, len(todo), AA_BATCH):
            idx = todo[b:b + AA_BATCH]
            adv = _checked(attack, _perturb(aa, attack, x01[idx], y[idx]), x01[idx], eps01)
            with torch.no_grad():
                fooled = pixel_model(adv).argmax(1) != y[idx]
            robust[idx[fooled]] = False
        per_attack.append({"attack": attack, "attacked": attacked, "broke": attacked - int(robust.sum()),
                           "seconds": time.perf_counter() - start})
        if progress:
            print(f"eps {eps:g} ({eps01:g} px) {attack}: {attacked} attacked, "
                  f"{per_attack[-1]['broke']} broken, {per_attack[-1]['seconds']:.0f} s", flush=True)
    return {"eps": eps, "eps_pixel": eps01, "n": len(y), "clean": clean, "robust": int(robust.sum()),
            "accuracy": rate(int(robust.sum()), len(y)), "per_attack": per_attack,
            "robust_flags": robust.tolist()}


def merge_parts(parts: Sequence[dict]) -> dict:
    """One :func:`autoattack` result from results on consecutive slices of the same images (same eps): counts
    and seconds added, flags concatenated in order, the interval recomputed."""
    if not parts:
        raise ValueError("nothing to merge")
    eps = {p["eps"] for p in parts}
    if len(eps) != 1:
        raise ValueError(f"parts at different eps {sorted(eps)} cannot be merged")
    flags = [f for p in parts for f in p["robust_flags"]]
    per_attack = []
    for i, row in enumerate(parts[0]["per_attack"]):
        per_attack.append({"attack": row["attack"],
                           **{k: sum(p["per_attack"][i][k] for p in parts) for k in ("attacked", "broke", "seconds")}})
    robust = sum(flags)
    return {"eps": parts[0]["eps"], "eps_pixel": parts[0]["eps_pixel"], "n": len(flags),
            "clean": sum(p["clean"] for p in parts), "robust": robust, "accuracy": rate(robust, len(flags)),
            "per_attack": per_attack, "robust_flags": flags}


def apgd_crosscheck(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                    bounds: Sequence[float] = DEFAULT_BOUNDS, seed: int = 0) -> dict:
    """APGD-CE (100 steps, 1 restart) from AutoAttack and from torchattacks (a port of the official code: same
    constants, start and seeding, so agreement checks this module's wrapping and units, not the attack itself) on
    the same images: accuracies (rate dicts, clean mistakes count as broken) and on how many images they agree.
    Either side's images outside the eps-ball or [0, 1] are refused (:func:`_checked`)."""
    import torchattacks
    from pyautoattack import AutoAttack

    eps = check_eps(eps)
    bounds = check_batch(x, y, bounds=bounds)
    pixel_model = PixelInput(_fast(model), bounds)
    x01, eps01 = _to_pixels(x, eps, bounds)
    ok = _correct(model, x, y)
    aa = AutoAttack(pixel_model, eps=eps01, seed=seed, version="standard", device=x.device)
    ta = torchattacks.APGD(pixel_model, norm="Linf", eps=eps01, steps=100, n_restarts=1, loss="ce", rho=0.75,
                           seed=seed)
    results = {}
    for name, attack in (("autoattack", lambda a, b: _perturb(aa, "apgd-ce", a, b)), ("torchattacks", ta)):
        start = time.perf_counter()
        survived = ok.clone()
        for b in range(0, len(x), AA_BATCH):
            sl = slice(b, b + AA_BATCH)
            adv = _checked(f"{name}'s APGD-CE", attack(x01[sl], y[sl]), x01[sl], eps01)
            with torch.no_grad():
                survived[sl] &= pixel_model(adv).argmax(1) == y[sl]
        results[name] = {"accuracy": rate(int(survived.sum()), len(y)), "flags": survived,
                         "seconds": time.perf_counter() - start}
    a, b = results["autoattack"]["flags"], results["torchattacks"]["flags"]
    return {"eps": eps, "eps_pixel": eps01, "n": len(y),
            **{k: {"accuracy": v["accuracy"], "seconds": v["seconds"]} for k, v in results.items()},
            "agree": int((a == b).sum())}


def square_only(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
                bounds: Sequence[float] = DEFAULT_BOUNDS, seed: int = 0) -> dict:
    """The gradient-free Square attack alone (AutoAttack's settings, 5,000 queries) and APGD-CE alone, on the same
    images: a model whose gradients are masked falls further to Square than to APGD."""
    out = {}
    for attack in ("square", "apgd-ce"):
        r = autoattack(model, x, y, eps, bounds=bounds, seed=seed, attacks=(attack,), progress=False)
        out[attack] = {"accuracy": r["accuracy"], "seconds": r["per_attack"][0]["seconds"]}
    return out
