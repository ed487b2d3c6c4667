"""The robustness evaluation the field expects: AutoAttack, a second APGD, and Carlini et al.'s sanity checks.

- :func:`autoattack`: the standard AutoAttack ensemble (Croce & Hein 2020: APGD-CE, APGD-T, FAB-T, Square, the
  official code as packaged by ``pyautoattack``, see :mod:`study.provenance`) with its fixed hyperparameters, run
  attack after attack on the images still classified correctly, in the official driver's batches of 250
  survivors, as its ``run_standard_evaluation`` does (a test checks the two agree image by image), but recording
  which attack broke each image first.
- :func:`apgd_crosscheck`: APGD-CE from AutoAttack against torchattacks' APGD on the same images. torchattacks'
  APGD is a port of the official code (same constants, start and seeding): agreeing with it checks the wrapping,
  not the attack. :func:`margin_pgd` is the independent check: this project's own attack (margin loss, its own
  step schedule, restarts).
- :func:`sanity_attacks` and :func:`checklist`: the checks of Carlini et al. 2019, "On Evaluating Adversarial
  Robustness" (more steps and independent restarts, eps to 0, transfer, gradient-free Square, FGSM >= PGD >=
  AutoAttack, the independent attack against AutoAttack), each with its numbers, its :func:`tolerance` and a
  verdict.

The images: the first n test images, unfiltered (``study.jobs.attack_set(select="first")``), as AutoAttack and
RobustBench count; a clean mistake counts as a failure.

Units. advlib's images live in [-1, 1] and every eps here is in those normalized units (0.3 normalized = 0.15 in
[0, 1] pixel units); AutoAttack and torchattacks work on [0, 1] pixels, so :class:`PixelInput` wraps the model
and eps is converted with :func:`advlib.attacks.to_pixel_eps` at that boundary only.

The command line (``python -m study.sanity autoattack|sanity|merge ...``) is what the workflow's jobs run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from advlib.attacks import (DEFAULT_BOUNDS, _predict, check_batch, check_eps, eval_mode, fgsm, pgd, predict,
                            to_pixel_eps)
from advlib.data import BOUNDS
from study.cache import Cache, model_digest
from advlib.io import atomic_write_json
from advlib.metrics import first_test_images, pgd_accuracy, rate
from advlib.model import fold_batchnorm
from study.workflow import AA_BATCH

AA_ATTACKS = ("apgd-ce", "apgd-t", "fab-t", "square")  # the standard version, in its order


class PixelInput(nn.Module):
    """``model`` seen from [0, 1] pixels: forward(x01) = model(2 * x01 - 1). x01: (N, 1, 32, 32) in [0, 1]."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.model(x01 * 2 - 1)


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


def _checked(attack: str, adv01: torch.Tensor, x01: torch.Tensor, eps: float) -> torch.Tensor:
    """adv01, detached, once it is shown to lie within to_pixel_eps(eps) of x01 and in [0, 1] (both (N, C, H, W)
    pixels): an attack's image outside the threat model must never count as broken."""
    adv01 = adv01.detach()
    if (adv01 - x01).abs().amax() > to_pixel_eps(eps) + 1e-6 or adv01.min() < 0 or adv01.max() > 1:
        raise RuntimeError(f"{attack} returned images outside the eps-ball ({to_pixel_eps(eps):g} px) or [0, 1]: "
                           "refusing its result")
    return adv01


def autoattack(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, seed: int = 0,
               attacks: Sequence[str] = AA_ATTACKS, progress: bool = True) -> dict:
    """AutoAttack's standard evaluation (L-inf) of ``model`` at ``eps`` on (x, y).

    x: (N, 1, 32, 32) in [-1, 1]; y: (N,) labels; eps in normalized units (AutoAttack runs at to_pixel_eps(eps)).
    Attack after attack, each on the images no earlier attack broke (a clean mistake counts as broken), grouped
    in AutoAttack's batches of 250 as its driver groups them: the attacks draw their random starts per batch, so
    the grouping is part of the result. (The workflow runs 250 images per job; a job's result is then exactly the
    official driver's on those images.) Every adversarial image is checked to lie within eps of its original
    and in the valid range before it counts.

    Returns a JSON-ready dict: eps, eps_pixel, n, clean (correct clean), robust (count), accuracy (rate dict with
    Wilson interval), per_attack: [{attack, attacked, broke, seconds}], robust_flags: list of N bools.
    """
    from pyautoattack import AutoAttack

    eps = check_eps(eps)
    check_batch(x, y, bounds=BOUNDS)
    fast = _fast(model)
    pixel_model = PixelInput(fast)
    aa = AutoAttack(pixel_model, eps=to_pixel_eps(eps), seed=seed, version="standard", device=x.device)
    if set(attacks) - set(AA_ATTACKS):
        raise ValueError(f"attacks must be among AutoAttack's standard {AA_ATTACKS}, got {list(attacks)}")
    x01 = (x + 1) / 2
    robust = _correct(model, x, y)
    clean = int(robust.sum())
    per_attack = []
    for attack in attacks:
        start = time.perf_counter()
        todo = robust.nonzero().flatten()  # as the official driver: the survivors, regrouped in batches of 250
        attacked = len(todo)
        for b in range(0, len(todo), AA_BATCH):
            idx = todo[b:b + AA_BATCH]
            adv = _checked(attack, _perturb(aa, attack, x01[idx], y[idx]), x01[idx], eps)
            with torch.no_grad():
                fooled = pixel_model(adv).argmax(1) != y[idx]
            robust[idx[fooled]] = False
        per_attack.append({"attack": attack, "attacked": attacked, "broke": attacked - int(robust.sum()),
                           "seconds": time.perf_counter() - start})
        if progress:
            print(f"eps {eps:g} ({to_pixel_eps(eps):g} px) {attack}: {attacked} attacked, "
                  f"{per_attack[-1]['broke']} broken, {per_attack[-1]['seconds']:.0f} s", flush=True)
    return {"eps": eps, "eps_pixel": to_pixel_eps(eps), "n": len(y), "clean": clean, "robust": int(robust.sum()),
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


def apgd_crosscheck(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, seed: int = 0) -> dict:
    """APGD-CE (100 steps, 1 restart) from AutoAttack and from torchattacks (a port of the official code: same
    constants, start and seeding, so agreement checks this module's wrapping and units, not the attack itself) on
    the same images: accuracies (rate dicts, clean mistakes count as broken) and on how many images they agree.
    Either side's images outside the eps-ball or [0, 1] are refused (:func:`_checked`)."""
    import torchattacks
    from pyautoattack import AutoAttack

    eps = check_eps(eps)
    pixel_model = PixelInput(_fast(model))
    x01 = (x + 1) / 2
    ok = _correct(model, x, y)
    aa = AutoAttack(pixel_model, eps=to_pixel_eps(eps), seed=seed, version="standard", device=x.device)
    ta = torchattacks.APGD(pixel_model, norm="Linf", eps=to_pixel_eps(eps), steps=100, n_restarts=1, loss="ce",
                           rho=0.75, seed=seed)
    results = {}
    for name, attack in (("autoattack", lambda a, b: _perturb(aa, "apgd-ce", a, b)), ("torchattacks", ta)):
        start = time.perf_counter()
        survived = ok.clone()
        for b in range(0, len(x), AA_BATCH):
            sl = slice(b, b + AA_BATCH)
            adv = _checked(f"{name}'s APGD-CE", attack(x01[sl], y[sl]), x01[sl], eps)
            with torch.no_grad():
                survived[sl] &= pixel_model(adv).argmax(1) == y[sl]
        results[name] = {"accuracy": rate(int(survived.sum()), len(y)), "flags": survived,
                         "seconds": time.perf_counter() - start}
    a, b = results["autoattack"]["flags"], results["torchattacks"]["flags"]
    return {"eps": eps, "eps_pixel": to_pixel_eps(eps), "n": len(y),
            **{k: {"accuracy": v["accuracy"], "seconds": v["seconds"]} for k, v in results.items()},
            "agree": int((a == b).sum())}


def square_only(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, seed: int = 0) -> dict:
    """The gradient-free Square attack alone (AutoAttack's settings, 5,000 queries) and APGD-CE alone, on the same
    images: a model whose gradients are masked falls further to Square than to APGD."""
    out = {}
    for attack in ("square", "apgd-ce"):
        r = autoattack(model, x, y, eps, seed=seed, attacks=(attack,), progress=False)
        out[attack] = {"accuracy": r["accuracy"], "seconds": r["per_attack"][0]["seconds"]}
    return out


def margin_pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
               bounds: Sequence[float] = DEFAULT_BOUNDS, steps: int = 100, restarts: int = 5,
               seed: int = 0) -> torch.Tensor:
    """This project's own attack, written independently of AutoAttack and torchattacks to check their number:
    L-inf PGD that maximizes the margin (Carlini & Wagner's loss, the best other logit minus the true one) with a
    cosine-decaying step size (eps / 2 down to eps / 200), from ``restarts`` uniform random starts. An image counts
    as broken as soon as any iterate of any start is misclassified; later starts run only on what is left.

    The contract of :mod:`advlib.attacks`: x (N, C, H, W) float inside ``bounds`` (default (0, 1); the study's
    normalized MNIST passes :data:`advlib.data.BOUNDS`), eps in the units of x (0.3 normalized = 0.15 in [0, 1]
    pixel units), y (N,) labels checked against the model's output width on the first forward pass; the model
    runs in eval mode and its mode is restored. Returns (N,) bool: still correct (clean mistakes count as broken).
    Every iterate is projected onto the eps-ball and [low, high] and checked there.
    """
    eps = check_eps(eps)
    low, high = check_batch(x, y, bounds=bounds)
    with eval_mode(model):
        return _margin_pgd(fold_batchnorm(model), x, y, eps, low, high, steps, restarts, seed)


def _margin_pgd(fast: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, low: float, high: float, steps: int,
                restarts: int, seed: int) -> torch.Tensor:
    """:func:`margin_pgd` on checked input, ``fast`` the eval-mode network."""
    alive = _predict(fast, x, check=y)[0] == y  # = _correct(fast, x, y), with the labels checked on the way
    gen = torch.Generator().manual_seed(seed)
    for _ in range(restarts):
        idx = alive.nonzero().flatten()
        if len(idx) == 0:
            break
        xs, ys = x[idx], y[idx]
        xa = (xs + eps * (torch.rand(xs.shape, generator=gen, dtype=xs.dtype).to(xs.device) * 2 - 1)).clamp(low, high)
        still = torch.ones(len(idx), dtype=torch.bool, device=x.device)
        for t in range(steps + 1):
            xa = xa.detach().requires_grad_(True)
            logits = fast(xa)
            true = logits.gather(1, ys[:, None]).squeeze(1)
            other = logits.masked_fill(nn.functional.one_hot(ys, logits.shape[1]).bool(), -math.inf).amax(1)
            still &= (logits.argmax(1) == ys).detach()
            if t == steps:
                break
            grad, = torch.autograd.grad((other - true).sum(), xa)
            step = eps * (0.005 + 0.495 * (1 + math.cos(math.pi * t / steps)) / 2)
            xa = torch.min(torch.max(xa.detach() + step * grad.sign(), xs - eps), xs + eps).clamp(low, high)
        if (xa - xs).abs().amax() > eps + 1e-6 or xa.min() < low or xa.max() > high:
            raise RuntimeError("margin_pgd left the eps-ball or the bounds: refusing its result")
        alive[idx] = still
    return alive


def tolerance(n: int) -> float:
    """How far (percentage points) a stronger or different attack may lower an accuracy measured on n images
    before the evaluation counts as not converged: 1.5 pp at n = 1,000, scaled as a standard error, 1 / sqrt(n)
    (4.7 pp at n = 100). Carlini et al. (2019, section 5) ask that more effort not lower the reported number;
    this is how much "not" allows for attacks that differ only on borderline images."""
    return 1.5 * math.sqrt(1000 / n)


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


def sanity_attacks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, source: nn.Module,
                   eps_sweep: Sequence[float], square_samples: int, steps: int = 20, more_steps: int = 100,
                   restarts: int = 5, independent_steps: int = 100, seed: int = 0, progress: bool = True) -> dict:
    """The attacks behind Carlini et al.'s checks, on ``model`` at ``eps`` (normalized units), all on (x, y):

    - fgsm; pgd (``steps`` steps, one random start, seed ``seed``); pgd_more (``more_steps`` steps);
    - restarts: PGD-``steps`` from ``restarts`` independent random starts (seeds seed, seed + 1, ...), each run on
      every image: each start's accuracy, how many starts gave distinct adversarial images (fewer than
      ``restarts``: the starts are not independent), and the worst case over starts (an image counts as broken if
      any start breaks it);
    - transfer: PGD-``steps`` computed on ``source`` (the standard model) and shown to ``model``;
    - sweep: PGD-``steps`` accuracy at each eps of ``eps_sweep``;
    - square_vs_apgd: Square vs APGD-CE on the first ``square_samples`` images;
    - margin_pgd: :func:`margin_pgd`, this project's own attack, ``independent_steps`` steps x ``restarts`` starts.

    Every accuracy is a rate dict (Wilson interval); clean mistakes count as broken.
    """
    check_eps(eps)
    ok = _correct(model, x, y)
    n = len(y)

    def acc(flags: torch.Tensor) -> dict:
        return rate(int(flags.sum()), n)

    def survives(x_adv: torch.Tensor) -> torch.Tensor:
        return ok & _correct(model, x_adv, y)

    def log(name: str, r: dict) -> None:
        if progress:
            print(f"{name}: {r['value']:.1f}% [{r['ci_low']:.1f}, {r['ci_high']:.1f}]", flush=True)

    out = {"eps": eps, "eps_pixel": to_pixel_eps(eps), "n": n, "clean": acc(ok)}
    out["fgsm"] = acc(survives(fgsm(model, x, y, eps, bounds=BOUNDS)))
    log("FGSM", out["fgsm"])
    starts, digests, worst = [], set(), ok.clone()
    for r in range(restarts):
        # every image: a start is a whole evaluation
        x_adv = pgd(model, x, y, eps, bounds=BOUNDS, steps=steps, seed=seed + r)
        flags = survives(x_adv)
        starts.append(acc(flags))
        digests.add(_digest(x_adv))
        worst &= flags
        log(f"PGD-{steps}, start {r + 1} of {restarts}", starts[-1])
    out["pgd"] = {**starts[0], "steps": steps}
    out["restarts"] = {"starts": starts, "worst": acc(worst), "restarts": restarts, "distinct": len(digests)}
    log(f"PGD-{steps}, worst case over {restarts} starts", out["restarts"]["worst"])
    out["pgd_more"] = {**acc(survives(pgd(model, x, y, eps, bounds=BOUNDS, steps=more_steps, seed=seed, mask=ok))),
                       "steps": more_steps}
    log(f"PGD-{more_steps}", out["pgd_more"])
    out["transfer"] = acc(survives(pgd(source, x, y, eps, bounds=BOUNDS, steps=steps, seed=seed)))
    log("transfer from the standard model", out["transfer"])
    out["sweep"] = []
    for e in eps_sweep:
        flags = survives(pgd(model, x, y, e, bounds=BOUNDS, steps=steps, seed=seed, mask=ok)) if e > 0 else ok
        out["sweep"].append({"eps": e, "eps_pixel": to_pixel_eps(e), **acc(flags)})
        log(f"PGD-{steps} at eps {e:g}", out["sweep"][-1])
    out["margin_pgd"] = {**acc(margin_pgd(model, x, y, eps, bounds=BOUNDS, steps=independent_steps, restarts=restarts,
                                          seed=seed)),
                         "steps": independent_steps, "restarts": restarts}
    log(f"margin-loss PGD-{independent_steps} x {restarts} (this project's own)", out["margin_pgd"])
    k = min(square_samples, n)
    out["square_vs_apgd"] = {"n": k, **square_only(model, x[:k], y[:k], eps, seed=seed)}
    log("Square", out["square_vs_apgd"]["square"]["accuracy"])
    log("APGD-CE (same images)", out["square_vs_apgd"]["apgd-ce"]["accuracy"])
    return out


def seed_metrics(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, pgd_steps: int,
                 aa_samples: int, seed: int = 0, cache: Cache | None = None) -> dict:
    """The robust model's numbers the seed study records and the regression band checks, at ``eps`` (normalized):
    clean accuracy and PGD-``pgd_steps`` accuracy on all of (x, y) (rate dicts), and AutoAttack's first two attacks,
    APGD-CE then APGD-T, on the first ``aa_samples`` images ("aa": rate dict). The full ensemble per seed would
    cost about 3 s per robust image on one core; in the committed evaluation FAB-T and Square break no image that
    APGD-CE and APGD-T left (see the per-attack table), so these two are what AutoAttack's number rests on.
    The PGD number is :func:`advlib.metrics.pgd_accuracy`'s (05_defense's curve at this eps), through ``cache``
    when given (an :class:`study.cache.Cache`: a regression test finds the workflow's own PGD job's result)."""
    ok = _correct(model, x, y)
    k = min(aa_samples, len(y))
    pgd_rate = (cache or Cache(None))(pgd_accuracy, model, x, y, eps, pgd_steps=pgd_steps, seed=seed, bounds=BOUNDS)
    aa = autoattack(model, x[:k], y[:k], eps, seed=seed, attacks=AA_ATTACKS[:2], progress=False)
    return {"eps": eps, "eps_pixel": to_pixel_eps(eps), "n": len(y), "clean": rate(int(ok.sum()), len(y)),
            "pgd": pgd_rate, "pgd_steps": pgd_steps,
            "aa": aa["accuracy"], "aa_attacks": list(AA_ATTACKS[:2])}


def _not_below(a: dict, b: dict, tol: float) -> bool:
    """a's accuracy is at most ``tol`` percentage points below b's."""
    return a["value"] >= b["value"] - tol - 1e-9


def checklist(s: dict, aa: dict, *, near_zero: float = 1.0) -> list[dict]:
    """Carlini et al.'s sanity checks as rows {key, check, numbers, passed, tolerance} from :func:`sanity_attacks`'
    result ``s`` and the AutoAttack accuracy ``aa`` (a rate dict) at the same eps on the same images.

    What the checks are for: evidence that the reported number has converged. More steps, more restarts, and a
    stronger or different attack must not lower accuracy by more than :func:`tolerance` (derived from the number
    of images each row compares); nor may a weaker attack (FGSM, transfer, gradient-free Square) be stronger by
    more than that, the signature of masked gradients. Keys: steps, restarts, zero, transfer, square, order,
    independent."""
    def pct(r: dict) -> str:
        return f"{r['value']:.1f}%"

    tol, pgd_, more, rs = tolerance(s["n"]), s["pgd"], s["pgd_more"], s["restarts"]
    sweep = s["sweep"]
    zero_at = next((r["eps"] for r in sweep if r["value"] <= near_zero), None)
    sq_n = s["square_vs_apgd"]["n"]
    sq, ap = s["square_vs_apgd"]["square"]["accuracy"], s["square_vs_apgd"]["apgd-ce"]["accuracy"]
    mp = s["margin_pgd"]
    rows = [
        {"key": "steps",
         "check": f"more PGD steps agree (PGD-{more['steps']} within ±{tol:.1f} pp of PGD-{pgd_['steps']})",
         "numbers": f"PGD-{pgd_['steps']} {pct(pgd_)}, PGD-{more['steps']} {pct(more)}",
         "passed": abs(more["value"] - pgd_["value"]) <= tol + 1e-9, "tolerance": tol},
        {"key": "restarts",
         "check": f"more random restarts agree (worst of {rs['restarts']} independent starts at most {tol:.1f} pp "
                  "below one start)",
         "numbers": "starts " + ", ".join(pct(r) for r in rs["starts"]) + f"; worst case {pct(rs['worst'])}; "
                    f"{rs['distinct']} of {rs['restarts']} starts distinct",
         "passed": _not_below(rs["worst"], rs["starts"][0], tol) and rs["distinct"] == rs["restarts"] > 1,
         "tolerance": tol},
        {"key": "zero",
         "check": f"accuracy falls to <= {near_zero:g}% as eps grows",
         "numbers": ", ".join(f"{r['eps']:g}: {pct(r)}" for r in sweep)
         + (f"; reached at eps {zero_at:g} ({to_pixel_eps(zero_at):g} px)" if zero_at is not None else "; not reached"),
         "passed": zero_at is not None, "zero_at": zero_at},
        {"key": "transfer",
         "check": f"a transfer attack (from the standard model) is not stronger than white-box (by > {tol:.1f} pp)",
         "numbers": f"transfer {pct(s['transfer'])}, white-box PGD-{pgd_['steps']} {pct(pgd_)}",
         "passed": _not_below(s["transfer"], pgd_, tol), "tolerance": tol},
        {"key": "square",
         "check": f"gradient-free Square is not stronger than APGD-CE (by > {tolerance(sq_n):.1f} pp: else gradients "
                  "are masked)",
         "numbers": f"Square {pct(sq)}, APGD-CE {pct(ap)} (first {sq_n} images)",
         "passed": _not_below(sq, ap, tolerance(sq_n)), "tolerance": tolerance(sq_n)},
        {"key": "order",
         "check": f"FGSM >= PGD-{pgd_['steps']} >= AutoAttack: FGSM not below PGD by > {tol:.1f} pp, AutoAttack within "
                  f"±{tol:.1f} pp of PGD (far lower: PGD has not converged, or gradients are masked)",
         "numbers": f"FGSM {pct(s['fgsm'])}, PGD-{pgd_['steps']} {pct(pgd_)}, AutoAttack {pct(aa)}",
         "passed": _not_below(s["fgsm"], pgd_, tol) and abs(pgd_["value"] - aa["value"]) <= tol + 1e-9,
         "tolerance": tol},
        {"key": "independent",
         "check": f"an independent attack (margin-loss PGD-{mp['steps']} x {mp['restarts']}, this project's own code) "
                  f"is at most {tol:.1f} pp below AutoAttack",
         "numbers": f"margin PGD {pct(mp)}, AutoAttack {pct(aa)}",
         "passed": _not_below(mp, aa, tol), "tolerance": tol},
    ]
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Command line: the workflow's jobs


def _images(params: dict, data_dir: str):
    """The robustness evaluation's images: the first aa_samples test images, unfiltered (clean mistakes count as
    failures), as AutoAttack and RobustBench count; no model picks them."""
    from advlib.data import load_mnist

    data = load_mnist(data_dir, splits=("test",))
    x, y = first_test_images(data.test_x, data.test_y, params["aa_samples"])
    return x.to(params["device"]), y.to(params["device"])


def _provenance(path: str) -> dict:
    from advlib.checkpoint import load_checkpoint

    ckpt = load_checkpoint(path)
    h = ckpt.history
    return {"checkpoint": Path(path).name, "train_config": ckpt.train_config, "model_config": ckpt.model.config.to_dict(),
            "model_digest": model_digest(ckpt.model), "parameters": sum(p.numel() for p in ckpt.model.parameters()),
            "history": {"test_accuracy": h.test_accuracy, "pgd_check_accuracy": h.pgd_check_accuracy,
                        "kept_epoch": h.kept_epoch, "seconds": h.seconds, "selection": h.selection}}


def main(argv: list[str] | None = None) -> int:
    from advlib.checkpoint import load_checkpoint

    parser = argparse.ArgumentParser(description="Robustness evaluation jobs (AutoAttack, sanity checks).")
    sub = parser.add_subparsers(dest="job", required=True)
    a = sub.add_parser("autoattack", help="AutoAttack on images [start, stop) of the attack set at one eps")
    a.add_argument("--model", required=True)
    a.add_argument("--eps", type=float, required=True, help="normalized units (images in [-1, 1])")
    a.add_argument("--start", type=int, default=0)
    a.add_argument("--stop", type=int, required=True)
    s = sub.add_parser("sanity", help="Carlini et al.'s checks and the APGD cross-check")
    s.add_argument("--model", required=True)
    s.add_argument("--source", required=True, help="the standard model (transfer attack)")
    sd = sub.add_parser("seed", help="the seed study's robust-model numbers (seed_metrics)")
    sd.add_argument("--model", required=True)
    m = sub.add_parser("merge", help="merge AutoAttack parts into one result file")
    m.add_argument("parts", nargs="+")
    for p in (a, s, sd):
        p.add_argument("--params", required=True, help="JSON: the 08_robustness parameters")
        p.add_argument("--data-dir", default="data")
        p.add_argument("--threads", type=int)
    for p in (a, s, sd, m):
        p.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    if args.job == "merge":
        parts = sorted((json.loads(Path(p).read_text()) for p in args.parts), key=lambda p: p["start"])
        if len({p["model"]["model_digest"] for p in parts}) != 1:
            raise SystemExit(f"the parts {args.parts} were computed on different models: re-run them")
        atomic_write_json(args.out, {"model": parts[0]["model"], "result": merge_parts([p["result"] for p in parts])})
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    params = json.loads(args.params)
    x, y = _images(params, args.data_dir)
    model = load_checkpoint(args.model, device=params["device"]).model
    if args.job == "autoattack":
        if not 0 <= args.start < args.stop <= len(x) or args.start % AA_BATCH:
            raise SystemExit(f"--start/--stop must cut the {len(x)} images at multiples of {AA_BATCH} "
                             f"(AutoAttack's batch), got {args.start}:{args.stop}")
        result = autoattack(model, x[args.start:args.stop], y[args.start:args.stop], args.eps, seed=params["seed"])
        atomic_write_json(args.out, {"model": _provenance(args.model), "start": args.start, "result": result})
        return 0
    if args.job == "seed":
        result = seed_metrics(model, x, y, params["adv_eps"], pgd_steps=params["pgd_steps"],
                              aa_samples=params["seed_aa_samples"], seed=params["seed"])
        atomic_write_json(args.out, {"model": _provenance(args.model), "result": result})
        return 0
    source = load_checkpoint(args.source, device=params["device"]).model
    eps = params["sanity_eps"]
    result = sanity_attacks(model, x, y, eps, source=source, eps_sweep=params["sanity_eps_sweep"],
                            square_samples=params["square_samples"], seed=params["seed"])
    result["apgd_crosscheck"] = apgd_crosscheck(model, x, y, eps, seed=params["seed"])
    atomic_write_json(args.out, {"model": _provenance(args.model), "source": _provenance(args.source), "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
