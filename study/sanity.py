"""The study's robustness evaluation: Carlini et al.'s sanity checks around AutoAttack, and the workflow's jobs.

- :func:`sanity_attacks` and :func:`checklist`: the checks of Carlini et al. 2019, "On Evaluating Adversarial
  Robustness" (more steps and independent restarts, eps to 0, transfer, gradient-free Square, FGSM >= PGD >=
  AutoAttack, the independent attack :func:`advlib.iterative.margin_pgd` against AutoAttack), each with its
  numbers, its :func:`tolerance` and a verdict.
- :func:`seed_metrics`: a seed's robust model, clean, PGD and APGD-CE -> APGD-T.
- AutoAttack itself, its cross-check with torchattacks' port and Square alone are advlib's
  (:mod:`advlib.autoattack`), run here on the study's normalized images (``bounds=advlib.data.BOUNDS``).

The images: the first n test images, unfiltered (``study.jobs.attack_set(select="first")``), as AutoAttack and
RobustBench count; a clean mistake counts as a failure. Every eps here is in normalized units (0.3 normalized =
0.15 in [0, 1] pixel units, :func:`advlib.attacks.to_pixel_eps`).

The command line (``python -m study.sanity autoattack|sanity|merge|seed ...``) is what the workflow's jobs run.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from advlib.attacks import check_eps, fgsm, predict, to_pixel_eps
from advlib.autoattack import AA_ATTACKS, AA_BATCH, apgd_crosscheck, autoattack, merge_parts, square_only
from advlib.data import BOUNDS
from advlib.io import atomic_write_json
from advlib.iterative import margin_pgd, pgd
from advlib.metrics import first_test_images, pgd_accuracy, rate
from study.cache import Cache, model_digest


def _correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return predict(model, x)[0] == y


def tolerance(n: int) -> float:
    """How far (percentage points) a stronger or different attack may lower an accuracy measured on n images
    before the evaluation counts as not converged: 1.5 pp at n = 1,000, scaled as a standard error, 1 / sqrt(n)
    (4.7 pp at n = 100). Carlini et al. (2019, section 5) ask that more effort not lower the reported number;
    this is how much "not" allows for attacks that differ only on borderline images."""
    return 1.5 * math.sqrt(1000 / n)


def _digest(t: torch.Tensor) -> str:
    return hashlib.sha256(t.detach().cpu().contiguous().numpy().tobytes()).hexdigest()


# The step-size row: PGD at these steps (in [0, 1] pixel units; None: eps itself), this many steps each. On a model
# whose gradients are masked, a small step finds far less than a large one (the PGD-7-trained SmallResNet:
# 79.9% at 0.01 px, 3.8% at 0.1 px); on a robust model they agree.
STEP_SIZES = ((0.01, 50), (0.1, 20), (None, 20))


def sanity_attacks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, source: nn.Module,
                   eps_sweep: Sequence[float], square_samples: int, steps: int = 20, more_steps: int = 100,
                   restarts: int = 5, independent_steps: int = 100, seed: int = 0, progress: bool = True,
                   bounds: Sequence[float] = BOUNDS) -> dict:
    """The attacks behind Carlini et al.'s checks, on ``model`` at ``eps`` (in the units of x, whose range is
    ``bounds``: the study's normalized [-1, 1] by default), all on (x, y):

    - fgsm; pgd (``steps`` steps, one random start, seed ``seed``); pgd_more (``more_steps`` steps);
    - restarts: PGD-``steps`` from ``restarts`` independent random starts (seeds seed, seed + 1, ...), each run on
      every image: each start's accuracy, how many starts gave distinct adversarial images (fewer than
      ``restarts``: the starts are not independent), and the worst case over starts (an image counts as broken if
      any start breaks it);
    - transfer: PGD-``steps`` computed on ``source`` (the standard model) and shown to ``model``;
    - sweep: PGD-``steps`` accuracy at each eps of ``eps_sweep``;
    - square_vs_apgd: Square vs APGD-CE on the first ``square_samples`` images;
    - margin_pgd: :func:`margin_pgd`, this project's own attack, ``independent_steps`` steps x ``restarts`` starts;
    - step_sizes: PGD at each step of :data:`STEP_SIZES` (0.01 px x 50, 0.1 px x 20, eps x 20; one random start).

    Every accuracy is a rate dict (Wilson interval); clean mistakes count as broken.
    """
    check_eps(eps)
    low, high = bounds
    ok = _correct(model, x, y)
    n = len(y)

    def acc(flags: torch.Tensor) -> dict:
        return rate(int(flags.sum()), n)

    def survives(x_adv: torch.Tensor) -> torch.Tensor:
        return ok & _correct(model, x_adv, y)

    def log(name: str, r: dict) -> None:
        if progress:
            print(f"{name}: {r['value']:.1f}% [{r['ci_low']:.1f}, {r['ci_high']:.1f}]", flush=True)

    out = {"eps": eps, "eps_pixel": eps / (high - low), "n": n, "clean": acc(ok)}
    out["fgsm"] = acc(survives(fgsm(model, x, y, eps, bounds=bounds)))
    log("FGSM", out["fgsm"])
    starts, digests, worst = [], set(), ok.clone()
    for r in range(restarts):
        # every image: a start is a whole evaluation
        x_adv = pgd(model, x, y, eps, bounds=bounds, steps=steps, seed=seed + r)
        flags = survives(x_adv)
        starts.append(acc(flags))
        digests.add(_digest(x_adv))
        worst &= flags
        log(f"PGD-{steps}, start {r + 1} of {restarts}", starts[-1])
    out["pgd"] = {**starts[0], "steps": steps}
    out["restarts"] = {"starts": starts, "worst": acc(worst), "restarts": restarts, "distinct": len(digests)}
    log(f"PGD-{steps}, worst case over {restarts} starts", out["restarts"]["worst"])
    out["pgd_more"] = {**acc(survives(pgd(model, x, y, eps, bounds=bounds, steps=more_steps, seed=seed, mask=ok))),
                       "steps": more_steps}
    log(f"PGD-{more_steps}", out["pgd_more"])
    out["transfer"] = acc(survives(pgd(source, x, y, eps, bounds=bounds, steps=steps, seed=seed)))
    log("transfer from the standard model", out["transfer"])
    out["sweep"] = []
    for e in eps_sweep:
        flags = survives(pgd(model, x, y, e, bounds=bounds, steps=steps, seed=seed, mask=ok)) if e > 0 else ok
        out["sweep"].append({"eps": e, "eps_pixel": e / (high - low), **acc(flags)})
        log(f"PGD-{steps} at eps {e:g}", out["sweep"][-1])
    out["margin_pgd"] = {**acc(margin_pgd(model, x, y, eps, bounds=bounds, steps=independent_steps, restarts=restarts,
                                          seed=seed)),
                         "steps": independent_steps, "restarts": restarts}
    log(f"margin-loss PGD-{independent_steps} x {restarts} (this project's own)", out["margin_pgd"])
    k = min(square_samples, n)
    out["square_vs_apgd"] = {"n": k, **square_only(model, x[:k], y[:k], eps, bounds=bounds, seed=seed)}
    log("Square", out["square_vs_apgd"]["square"]["accuracy"])
    log("APGD-CE (same images)", out["square_vs_apgd"]["apgd-ce"]["accuracy"])
    out["step_sizes"] = []
    for step_pixel, k_steps in STEP_SIZES:
        step = eps if step_pixel is None else step_pixel * (high - low)
        r = {"step_pixel": step / (high - low), "steps": k_steps,
             **acc(survives(pgd(model, x, y, eps, bounds=bounds, steps=k_steps, step_size=step, seed=seed, mask=ok)))}
        out["step_sizes"].append(r)
        log(f"PGD-{k_steps} at step {r['step_pixel']:g} px", r)
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
    aa = autoattack(model, x[:k], y[:k], eps, bounds=BOUNDS, seed=seed, attacks=AA_ATTACKS[:2], progress=False)
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
    zero = next((r for r in sweep if r["value"] <= near_zero), None)
    zero_at = zero and zero["eps"]
    zero_px = zero and zero.get("eps_pixel", to_pixel_eps(zero_at))  # the attack's own pixel units, as it ran
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
         + (f"; reached at eps {zero_at:g} ({zero_px:g} px)" if zero_at is not None else "; not reached"),
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
    if "step_sizes" in s:  # results from before the row (make robust adds it)
        ss = s["step_sizes"]
        spread = max(r["value"] for r in ss) - min(r["value"] for r in ss)
        passed = spread <= tol + 1e-9
        weakest = max(ss, key=lambda r: r["value"])  # the step that leaves the most images: which way they disagree
        reading = ("" if passed else "; highest at the smallest step: the signature of masked gradients"
                   if weakest is ss[0] else f"; highest at step {weakest['step_pixel']:g} px: that step is too coarse "
                   "to converge, not a masking signature")
        rows.append(
            {"key": "step_size",
             "check": f"PGD agrees across step sizes (0.01 px, 0.1 px and eps: all within {tol:.1f} pp of each "
                      "other; a small step far above a large one is the signature of masked gradients)",
             "numbers": ", ".join(f"step {r['step_pixel']:g} px x {r['steps']}: {pct(r)}" for r in ss) + reading,
             "passed": passed, "tolerance": tol})
    return rows


# ---------------------------------------------------------------------------------------------------------------
# Command line: the workflow's jobs


def _images(params: dict, data_dir: str):
    """The robustness evaluation's images: the first aa_samples test images, unfiltered (clean mistakes count as
    failures), as AutoAttack and RobustBench count; no model picks them."""
    from advlib.data import load_dataset

    data = load_dataset(params.get("dataset", "mnist"), data_dir, splits=("test",))
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
        result = autoattack(model, x[args.start:args.stop], y[args.start:args.stop], args.eps, bounds=BOUNDS,
                            seed=params["seed"])
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
    result["apgd_crosscheck"] = apgd_crosscheck(model, x, y, eps, bounds=BOUNDS, seed=params["seed"])
    atomic_write_json(args.out, {"model": _provenance(args.model), "source": _provenance(args.source), "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
