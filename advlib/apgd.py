"""APGD-CE alone (Croce & Hein 2020, the official code as packaged by ``pyautoattack``), with a chosen number of
steps: the per-epoch early-stopping check of adversarial training (``advlib.train.TrainConfig.check_attack =
"apgd-ce"``), and the units boundary that :mod:`advlib.autoattack` shares with it.

A module of its own so that training, which imports it, does not reach :mod:`advlib.autoattack`'s results and
metrics (a workflow job's code inputs are the modules it can import: a change of metric never retrains a model).

Units. Inputs lie in ``bounds`` (default (0, 1)) and eps is in their units; the official code works on [0, 1]
pixels, so :class:`PixelInput` wraps the model and x and eps are rescaled at that boundary only. Every adversarial
image is checked to lie within eps of its original and in [0, 1] before it counts. Needs the ``autoattack`` extra.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from advlib.attacks import DEFAULT_BOUNDS, _check_steps, check_batch, check_bounds, check_eps, eval_mode
from advlib.model import fold_batchnorm

APGD_BATCH = 250  # images per call of the official code (AutoAttack's batch, advlib.autoattack.AA_BATCH)


class PixelInput(nn.Module):
    """``model`` seen from [0, 1] pixels: forward(x01) = model(low + (high - low) * x01), for a model whose inputs
    lie in ``bounds`` = (low, high). x01: (N, C, H, W) in [0, 1]. With the default bounds (0, 1) it is the model."""

    def __init__(self, model: nn.Module, bounds: Sequence[float] = DEFAULT_BOUNDS):
        super().__init__()
        self.model = model
        self.low, self.high = check_bounds(bounds)

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        if (self.low, self.high) == (0.0, 1.0):
            return self.model(x01)
        return self.model(self.low + (self.high - self.low) * x01)


def _to_pixels(x: torch.Tensor, eps: float, bounds: tuple[float, float]) -> tuple[torch.Tensor, float]:
    """(x, eps) in [0, 1] pixel units: x01 = (x - low) / (high - low), eps01 = eps / (high - low)."""
    low, high = bounds
    if (low, high) == (0.0, 1.0):
        return x, eps
    return (x - low) / (high - low), eps / (high - low)


def _checked(attack: str, adv01: torch.Tensor, x01: torch.Tensor, eps01: float) -> torch.Tensor:
    """adv01, detached, once it is shown to lie within eps01 of x01 and in [0, 1] (both (N, C, H, W) pixels, eps01
    in [0, 1] pixel units): an attack's image outside the threat model must never count as broken."""
    adv01 = adv01.detach()
    if (adv01 - x01).abs().amax() > eps01 + 1e-6 or adv01.min() < 0 or adv01.max() > 1:
        raise RuntimeError(f"{attack} returned images outside the eps-ball ({eps01:g} px) or [0, 1]: "
                           "refusing its result")
    return adv01


def apgd_ce(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *,
            bounds: Sequence[float] = DEFAULT_BOUNDS, steps: int = 100, seed: int = 0) -> torch.Tensor:
    """APGD-CE (Croce & Hein 2020, the official code: adaptive step size from 2 eps, momentum, one restart) with
    ``steps`` iterations, in batches of :data:`APGD_BATCH` images.

    Unlike PGD's fixed step, APGD's step adapts to the loss it reaches, which lets it through gradients that a
    fixed-step PGD of the same cost finds masked.

    x: (N, C, H, W) inside ``bounds`` (default (0, 1)); y: (N,) labels; eps in the units of x (0.3 normalized =
    0.15 in [0, 1] pixel units). The model runs in eval mode, its mode restored; the global random state is
    restored too (the official code reseeds it). Returns the adversarial images, (N, C, H, W) in x's units and
    ``bounds``, each checked to lie within eps of its original (images APGD could not break come back as its
    last iterate or as themselves).
    """
    from pyautoattack.autopgd_base import APGDAttack

    eps = check_eps(eps)
    bounds = check_batch(x, y, bounds=bounds)
    steps = _check_steps(steps)
    low, high = bounds
    x01, eps01 = _to_pixels(x, eps, bounds)
    with eval_mode(model), torch.random.fork_rng(devices=[x.device] if x.device.type == "cuda" else []):
        pixel_model = PixelInput(fold_batchnorm(model), bounds)
        attack = APGDAttack(pixel_model, n_restarts=1, n_iter=steps, eps=eps01, norm="Linf", loss="ce", seed=seed,
                            device=x.device)
        adv01 = torch.cat([_checked("APGD-CE", attack.perturb(x01[b:b + APGD_BATCH], y[b:b + APGD_BATCH]),
                                    x01[b:b + APGD_BATCH], eps01) for b in range(0, len(x), APGD_BATCH)])
    return adv01 if (low, high) == (0.0, 1.0) else low + (high - low) * adv01
