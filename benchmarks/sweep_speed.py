"""The eps sweep (FGSM at 7 eps on the same images), three ways, with the same model:

(a) per-image loop, one gradient per image per eps, as the original report and the PyTorch FGSM tutorial do
    (forward, loss.backward() -- which also computes the weights' gradients, as in the tutorial -- perturb,
    classify again);
(b) the peer library, torchattacks' FGSM, batched but recomputed for each eps. It attacks in [0, 1] pixel units,
    so it gets to_pixel_eps(eps) (= eps / 2) and ``set_normalization_used(mean=[0.5], std=[0.5])``; in
    torchattacks 3.5 that setting means the attack takes *normalized* inputs and returns normalized outputs (it
    converts to pixels and back inside ``__call__``), so it is given the same [-1, 1] images as the others;
(c) advlib.attacks.fgsm_sweep: one gradient per image, then one forward pass per eps.

(a) and (b) classify the adversarial images with ``model(x_adv).argmax(1)``; (c) with its own predictions.
All three must give the same adversarial accuracies; any prediction that differs is counted and reported.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from advlib.attacks import fgsm_sweep, to_pixel_eps
from advlib.data import BOUNDS

from benchmarks.common import EPS_GRID, Settings, loadavg, time_interleaved


def per_image_loop(model, x, y, eps_list) -> torch.Tensor:
    """(E, N) predictions; the tutorial's loop, one image and one eps at a time."""
    model.eval()
    preds = torch.empty(len(eps_list), len(x), dtype=torch.long)
    for i, eps in enumerate(eps_list):
        for j in range(len(x)):
            xj = x[j : j + 1].clone().requires_grad_(True)
            loss = F.cross_entropy(model(xj), y[j : j + 1])
            model.zero_grad()
            loss.backward()
            x_adv = torch.clamp(xj + eps * xj.grad.sign(), -1, 1)
            with torch.no_grad():
                preds[i, j] = model(x_adv).argmax(1)[0]
    return preds


def peer_sweep(model, x, y, eps_list, batch_size: int) -> torch.Tensor:
    """(E, N) predictions with torchattacks.FGSM, one attack per eps, in batches of batch_size."""
    import torchattacks

    model.eval()
    preds = torch.empty(len(eps_list), len(x), dtype=torch.long)
    for i, eps in enumerate(eps_list):
        attack = torchattacks.FGSM(model, eps=to_pixel_eps(eps))
        attack.set_normalization_used(mean=[0.5], std=[0.5])
        for s in range(0, len(x), batch_size):
            x_adv = attack(x[s : s + batch_size], y[s : s + batch_size])
            with torch.no_grad():
                preds[i, s : s + batch_size] = model(x_adv).argmax(1)
    return preds


def advlib_sweep(model, x, y, eps_list) -> torch.Tensor:
    return fgsm_sweep(model, x, y, eps_list, bounds=BOUNDS).preds


def compare(preds: dict[str, torch.Tensor], labels: torch.Tensor, reference: str = "advlib") -> dict:
    """Adversarial accuracy (%) per eps for each method, and how many predictions differ from the reference."""
    out = {"adv_accuracy": {name: (100.0 * (p == labels).float().mean(1)).tolist() for name, p in preds.items()},
           "differing_predictions": {}, "identical_accuracies": True}
    for name, p in preds.items():
        if name == reference:
            continue
        out["differing_predictions"][name] = (p != preds[reference]).sum(1).tolist()
        same = torch.equal((p == labels).sum(1), (preds[reference] == labels).sum(1))
        out["identical_accuracies"] &= bool(same)
    return out


def peer_available() -> bool:
    try:
        import torchattacks  # noqa: F401

        return True
    except ImportError:
        return False


def time_batched(section: dict, model, x, y, peer_batch: int, repeats: int, warmup: bool) -> dict:
    """(c) advlib's sweep and (b) torchattacks' per-eps FGSM (batches of peer_batch), timed in interleaved rounds.
    Records each method's seconds (or why the peer was not measured) in section["methods"]; returns
    {method: predictions}."""
    runs = {"advlib": lambda: advlib_sweep(model, x, y, EPS_GRID)}
    if peer_available():
        runs["torchattacks"] = lambda: peer_sweep(model, x, y, EPS_GRID, peer_batch)
    else:
        section["methods"]["torchattacks"] = {"not_measured": "torchattacks is not installed "
                                                              "(pip install --no-deps torchattacks)"}
    seconds, preds = time_interleaved(runs, repeats, warmup=warmup)
    for name in runs:
        section["methods"][name] = {"seconds": seconds[name]}
    if "torchattacks" in runs:
        section["methods"]["torchattacks"]["batch_size"] = peer_batch
    return preds


def run_subset(settings: Settings, model, x, y, say=print) -> dict:
    """Section 2: the sweep on the correctly classified images, (a), (b) and (c)."""
    n, work = len(x), len(x) * len(EPS_GRID)
    load = [loadavg()]
    section = {"images": n, "eps": EPS_GRID, "adversarial_evaluations": work, "methods": {}}
    say(f"  (c) advlib fgsm_sweep and (b) torchattacks on {n} images, {settings.sweep_repeats} interleaved rounds ...")
    preds = time_batched(section, model, x, y, n, settings.sweep_repeats, warmup=True)

    say(f"  (a) per-image loop on {n} images x {settings.loop_repeats} ...")
    warm = min(20, n)
    per_image_loop(model, x[:warm], y[:warm], EPS_GRID)  # warm-up on a few images
    seconds, last = time_interleaved({"loop": lambda: per_image_loop(model, x, y, EPS_GRID)}, settings.loop_repeats,
                                     warmup=False)
    preds["per_image_loop"] = last["loop"]
    section["methods"]["per_image_loop"] = {"seconds": seconds["loop"],
                                            "seconds_per_image_per_eps": seconds["loop"]["median"] / work}

    base = section["methods"]["advlib"]["seconds"]["median"]
    for name, m in section["methods"].items():
        if "seconds" in m:
            m["adversarial_evaluations_per_s"] = work / m["seconds"]["median"]
            m["ratio_to_advlib"] = m["seconds"]["median"] / base
    section["agreement"] = compare(preds, y)
    load.append(loadavg())
    section["loadavg"] = load
    return section


def run_full(settings: Settings, model, x, y, per_image_seconds: float | None, say=print) -> dict:
    """Section 3: the sweep on the whole test set with (b) and (c); (a) estimated from its per-image time."""
    n, work = len(x), len(x) * len(EPS_GRID)
    load = [loadavg()]
    section = {"images": n, "eps": EPS_GRID, "adversarial_evaluations": work, "methods": {}}
    b = settings.peer_batch
    say(f"  (c) advlib fgsm_sweep and (b) torchattacks (batches of {b}) on {n} images, "
        f"{settings.full_sweep_repeats} interleaved rounds (warmed up by section 2) ...")
    preds = time_batched(section, model, x, y, b, settings.full_sweep_repeats, warmup=False)
    if per_image_seconds is not None:
        section["methods"]["per_image_loop"] = {"estimated_seconds": per_image_seconds * work,
                                                "note": "not run: per-image-per-eps time of section 2 x "
                                                        f"{work} evaluations"}
    base = section["methods"]["advlib"]["seconds"]["median"]
    for name, m in section["methods"].items():
        t = m["seconds"]["median"] if "seconds" in m else m.get("estimated_seconds")
        if t is not None:
            m["adversarial_evaluations_per_s"] = work / t
            m["ratio_to_advlib"] = t / base
    section["agreement"] = compare(preds, y)
    load.append(loadavg())
    section["loadavg"] = load
    return section
