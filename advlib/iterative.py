r"""Iterative L-inf attacks on any image classifier: PGD, BIM, and a margin-loss PGD with restarts.

Papers (Distance Measure : Linf for all):

- PGD, :func:`pgd`: 'Towards Deep Learning Models Resistant to Adversarial Attacks', Aleksander Madry, Aleksandar
  Makelov, Ludwig Schmidt, Dimitris Tsipras, Adrian Vladu, 2017 [https://arxiv.org/abs/1706.06083]
- BIM (iterative FGSM), :func:`bim`: 'Adversarial Examples in the Physical World', Alexey Kurakin, Ian Goodfellow,
  Samy Bengio, 2016 [https://arxiv.org/abs/1607.02533]
- :func:`margin_pgd`: PGD on Carlini & Wagner's margin loss ('Towards Evaluating the Robustness of Neural
  Networks', 2017 [https://arxiv.org/abs/1608.04644]) with a cosine step schedule and restarts; this project's
  own attack, written independently of AutoAttack and torchattacks to check their numbers.

They share :mod:`advlib.attacks`' contract: x (N, C, H, W) inside ``bounds`` (default (0, 1)), eps and step sizes
in the units of x, labels checked against the model's output width, the model run in eval mode and its mode
restored, results inside the eps-ball and the bounds.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from advlib.attacks import (DEFAULT_BOUNDS, _check_steps, _chunks, _gradient, _predict, check_batch, check_eps,
                            eval_mode)
from advlib.model import fold_batchnorm


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, bounds: Sequence[float] = DEFAULT_BOUNDS,
        step_size: float | None = None, steps: int = 20, random_start: bool = True, seed: int | None = None,
        targeted: bool = False, mask: torch.Tensor | None = None) -> torch.Tensor:
    r"""PGD in the paper 'Towards Deep Learning Models Resistant to Adversarial Attacks' (Madry, Makelov, Schmidt,
    Tsipras & Vladu, 2017) [https://arxiv.org/abs/1706.06083]; with random_start=False it is BIM / iterative FGSM
    (:func:`bim`).

    Distance Measure : Linf

    Each step: ``x_adv <- proj(x_adv + step_size * sign(grad))`` where proj clips onto the L-inf ball of radius
    eps around x and onto [low, high]. A random start draws uniformly from that ball first.

    Arguments:
        model (nn.Module): classifier returning logits (N, K); run in eval mode, its mode restored.
        eps (float): the L-inf radius in the units of the inputs (8/255 for [0, 1] images; for the study's
            normalized MNIST in [-1, 1], 0.3 = 0.15 in [0, 1] pixel units).
        bounds (low, high): the input domain, default (0, 1); every iterate is clipped to it.
        step_size (float): in the units of the inputs; default 2.5 * eps / steps.
        steps (int): number of gradient steps (>= 1).
        random_start (bool): start from a uniform draw in the eps-ball (clipped to bounds).
        seed (int): fixes the random start (a private CPU generator, so the same seed gives the same start on any
            device; the global RNG is untouched).
        targeted (bool): y are targets to move toward.
        mask: optional (N,) bool, the images to attack; the others are returned as they are (x) and cost no
            gradient step. Each image's random start is drawn for the whole batch, then indexed, so an attacked
            image's result does not depend on the mask.

    Shape:
        - x: :math:`(N, C, H, W)` float, values in ``bounds``; y: :math:`(N)` labels in 0..K-1.
        - output: :math:`(N, C, H, W)`, x's dtype and device, in ``bounds``, with |x_adv - x|_inf <= eps.

    Examples::
        >>> x_adv = advlib.pgd(model, images, labels, eps=8/255, bounds=(0, 1), steps=10, seed=0)
    """
    eps = check_eps(eps)
    low, high = check_batch(x, y, bounds=bounds)
    steps = _check_steps(steps)
    step_size = check_eps(2.5 * eps / steps if step_size is None else step_size, "step_size")
    if mask is not None and (not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool
                             or tuple(mask.shape) != (len(x),)):
        raise ValueError(f"mask must be a bool tensor of shape ({len(x)},), one entry per image, got "
                         f"{getattr(mask, 'dtype', type(mask).__name__)} {tuple(getattr(mask, 'shape', ()))}")
    x = x.detach()
    mask = torch.ones(len(x), dtype=torch.bool, device=x.device) if mask is None else mask.to(x.device)
    start = x
    if random_start:
        gen = torch.Generator().manual_seed(seed if seed is not None else int(torch.randint(0, 2**62, (1,)).item()))
        noise = (torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1).to(x.device)  # (N, ...): every image
        start = (x + eps * noise).clamp(low, high)
    x_adv = x.clone()
    if mask.any():
        sign = -1.0 if targeted else 1.0
        xs, ys, starts = x[mask], y[mask], start[mask]
        done = []
        check = y  # every label is checked against the first forward pass's logits
        with eval_mode(model):
            for c in _chunks(len(xs)):  # every step of one chunk, then the next: its activations stay in cache
                xc, xa = xs[c], starts[c]
                for _ in range(steps):
                    xa = xa + sign * step_size * _gradient(model, xa, ys[c], check).sign()
                    check = None
                    xa = torch.min(torch.max(xa, xc - eps), xc + eps).clamp(low, high)
                done.append(xa.detach())
        x_adv[mask] = torch.cat(done)
    return x_adv


def bim(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, bounds: Sequence[float] = DEFAULT_BOUNDS,
        step_size: float | None = None, steps: int = 10, targeted: bool = False) -> torch.Tensor:
    r"""BIM (iterative FGSM) in the paper 'Adversarial Examples in the Physical World' (Kurakin, Goodfellow &
    Bengio, 2016) [https://arxiv.org/abs/1607.02533]: :func:`pgd` without the random start.

    Distance Measure : Linf

    Arguments:
        eps (float): the L-inf radius in the units of the inputs (for the study's normalized MNIST in [-1, 1],
            0.3 = 0.15 in [0, 1] pixel units). bounds (low, high): the input domain, default (0, 1).
        step_size (float): default eps / steps, so one step equals FGSM. steps (int): >= 1. targeted (bool).

    Shape:
        - x: :math:`(N, C, H, W)` float, values in ``bounds``; y: :math:`(N)` labels in 0..K-1.
        - output: :math:`(N, C, H, W)`, x's dtype and device, in ``bounds``, with |x_adv - x|_inf <= eps.

    Examples::
        >>> x_adv = advlib.bim(model, images, labels, eps=8/255, bounds=(0, 1), steps=10)
    """
    if step_size is None:
        step_size = check_eps(eps) / _check_steps(steps)
    return pgd(model, x, y, eps, bounds=bounds, step_size=step_size, steps=steps, random_start=False,
               targeted=targeted)


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
