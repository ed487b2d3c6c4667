"""Gradient attacks on images in the normalized [-1, 1] space.

Units. Every ``eps`` here is in *normalized* units, as in the original report: images live in [-1, 1]
(pixel p in [0, 1] is stored as (p - 0.5) / 0.5), so eps = 0.3 moves a pixel by 0.15 in [0, 1] pixel units,
the units of most papers and of libraries such as torchattacks. :func:`to_pixel_eps` and
:func:`to_normalized_eps` convert.

Conventions shared by every attack:
- x: float tensor (N, 1, 32, 32) with values in [-1, 1]; y: int64 (N,) labels in 0..9; N >= 1.
- The result is clamped to [-1, 1] and stays within the L-inf ball of radius eps around x.
- The model runs in eval mode (BatchNorm uses its running statistics and is not updated), so every image is
  attacked independently of the others in its batch; the model's previous mode is restored afterwards.
- Bad input raises ValueError naming the problem.
"""
from __future__ import annotations

import math
import numbers
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from advlib.data import IMAGE_SIZE, STD
from advlib.model import fold_batchnorm

NUM_CLASSES = 10
INPUT_SHAPE = (1, IMAGE_SIZE, IMAGE_SIZE)


def to_pixel_eps(eps: float) -> float:
    """Normalized-unit eps (images in [-1, 1]) -> [0, 1] pixel units: 0.3 -> 0.15."""
    return eps * STD


def to_normalized_eps(eps_pixel: float) -> float:
    """[0, 1] pixel-unit eps -> normalized units (images in [-1, 1]): 0.15 -> 0.3."""
    return eps_pixel / STD


# ---------------------------------------------------------------------------------------------------------------
# Input checks (one place, used by every attack)


def check_eps(eps: float, name: str = "eps") -> float:
    if isinstance(eps, torch.Tensor):
        eps = eps.item()
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool):  # numbers.Real admits numpy scalars too
        raise ValueError(f"{name} must be a number in normalized units (images in [-1, 1]), got {type(eps).__name__}")
    if math.isnan(eps) or math.isinf(eps):
        raise ValueError(f"{name} must be finite, got {eps}")
    if eps < 0:
        raise ValueError(f"{name} must be >= 0 (normalized units, images in [-1, 1]), got {eps}")
    return float(eps)


def check_batch(x: torch.Tensor, y: torch.Tensor) -> None:
    """Raise ValueError unless x is (N, 1, 32, 32) float in [-1, 1] and y is (N,) integer labels in 0..9."""
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor of shape (N, 1, 32, 32), got {getattr(x, 'dtype', type(x))}")
    if x.dim() != 4 or tuple(x.shape[1:]) != INPUT_SHAPE:
        raise ValueError(f"x must have shape (N, 1, 32, 32), got {tuple(x.shape)}; use advlib.data.load_mnist's tensors")
    if x.shape[0] == 0:
        raise ValueError("empty batch: x has no images")
    if torch.isnan(x).any():
        raise ValueError("x contains NaN")
    lo, hi = x.min().item(), x.max().item()
    if lo < -1 - 1e-6 or hi > 1 + 1e-6:
        raise ValueError(f"x must lie in the normalized range [-1, 1], got [{lo:.3g}, {hi:.3g}]; "
                         "normalize pixels p in [0, 1] with (p - 0.5) / 0.5")
    if not isinstance(y, torch.Tensor) or y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise ValueError(f"y must be an integer tensor of labels, got {getattr(y, 'dtype', type(y))}")
    if y.dim() != 1 or len(y) != len(x):
        raise ValueError(f"y must have shape ({len(x)},) to match x, got {tuple(y.shape)}")
    if y.min().item() < 0 or y.max().item() >= NUM_CLASSES:
        raise ValueError(f"labels must lie in 0..{NUM_CLASSES - 1}, got [{y.min().item()}, {y.max().item()}]")


def _check_steps(steps: int) -> int:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return steps


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model in eval mode for the block and restore its previous mode after, even on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """d loss / d x for the summed cross-entropy, shape of x. Summed so each image's gradient is its own."""
    x = x.detach().clone().requires_grad_(True)
    loss = F.cross_entropy(model(x), y.long(), reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


# ---------------------------------------------------------------------------------------------------------------
# FGSM


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, targeted: bool = False) -> torch.Tensor:
    """Fast Gradient Sign Method (Goodfellow et al. 2014) for a batch.

    Untargeted: ``clamp(x + eps * sign(grad_x loss(x, y)), -1, 1)``, pushing away from the true label y.
    Targeted:   ``clamp(x - eps * sign(grad_x loss(x, y)), -1, 1)``, pulling toward the target label y.

    Args:
        x: (N, 1, 32, 32) float in [-1, 1]. y: (N,) labels (true labels, or targets when targeted).
        eps: step in normalized units (0.3 here = 0.15 in [0, 1] pixel units).
    Returns:
        x_adv, same shape, in [-1, 1], with |x_adv - x|_inf <= eps.
    """
    eps = check_eps(eps)
    check_batch(x, y)
    with eval_mode(model):
        sign = input_gradient(model, x, y).sign()
    step = -eps if targeted else eps
    return (x + step * sign).clamp(-1, 1).detach()


@dataclass
class SweepResult:
    """FGSM at several eps on the same images. eps: (E,) normalized units; preds, confidences: (E, N)."""

    eps: list[float]
    labels: torch.Tensor  # (N,) true labels
    preds: torch.Tensor  # (E, N) predicted class of each adversarial image
    confidences: torch.Tensor  # (E, N) max softmax probability of each adversarial image


# Forward passes for predictions go through :func:`advlib.model.fold_batchnorm`: for a SmallResNet every eval-mode
# BatchNorm is folded into the convolution before it, with channels_last activations (faster on CPU; see
# benchmarks/). The folded network computes the same function; only float rounding differs, so an exact tie
# could in principle flip a prediction. predict() and the sweeps share this path, so they agree with each other
# exactly. Gradients (FGSM's direction, PGD) always use the model itself, so they match an autograd oracle.
# Images go through in chunks of at most CHUNK, forward passes, input gradients and PGD's steps alike: a chunk's
# activations stay in the CPU's caches (PGD-20 on 1,000 images runs about twice as fast as in one batch). Results do not depend on the chunking, except that a batch of one image takes other
# kernels (different rounding), so chunks are balanced and a lone image never trails a full chunk.
CHUNK = 256


def _chunks(n: int) -> list[slice]:
    """range(n) cut into ceil(n / CHUNK) consecutive slices of nearly equal length (each at most CHUNK)."""
    k = -(-n // CHUNK)
    if k == 0:
        return []
    bounds = [i * n // k for i in range(k + 1)]
    return [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]


def predict(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Predicted class (N,) and max softmax probability (N,) in eval mode, without gradients, on x's device.

    x: (N, 1, 32, 32) in [-1, 1]. The forward pass is :func:`advlib.model.fold_batchnorm`'s (model.eval()(x) up
    to float rounding), CHUNK images at a time.
    """
    preds, confs = [], []
    with eval_mode(model), torch.no_grad():
        forward = fold_batchnorm(model)
        for chunk in _chunks(len(x)):
            conf, pred = F.softmax(forward(x[chunk]), dim=1).max(dim=1)
            preds.append(pred)
            confs.append(conf)
    return torch.cat(preds), torch.cat(confs)


def fgsm_direction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, targeted: bool = False) -> torch.Tensor:
    """The FGSM step direction for every image, (N, 1, 32, 32) in {-1, 0, +1}: x_adv(eps) = clamp(x + eps * d)."""
    check_batch(x, y)
    with eval_mode(model):
        sign = torch.cat([input_gradient(model, x[c], y[c]).sign() for c in _chunks(len(x))])
    return -sign if targeted else sign


def sweep_direction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, direction: torch.Tensor,
                    eps_list: Sequence[float], *, progress: bool = False) -> SweepResult:
    """Predictions on clamp(x + eps * direction, -1, 1) for every eps: forward passes only, the same as
    :func:`predict` on each eps's images."""
    from tqdm.auto import tqdm

    eps_list = [check_eps(e) for e in eps_list]
    if not eps_list:
        raise ValueError("eps_list is empty: give at least one eps (normalized units)")
    check_batch(x, y)
    if not isinstance(direction, torch.Tensor) or direction.shape != x.shape:
        raise ValueError(f"direction must have the shape of x {tuple(x.shape)}, got "
                         f"{tuple(getattr(direction, 'shape', ()))}; compute it with fgsm_direction(model, x, y)")
    preds = torch.empty(len(eps_list), len(x), dtype=torch.long, device=x.device)
    confs = torch.empty(len(eps_list), len(x), dtype=x.dtype, device=x.device)
    chunks = _chunks(len(x))
    with eval_mode(model), torch.no_grad():
        forward = fold_batchnorm(model)
        for i, eps in enumerate(tqdm(eps_list, desc="eps", disable=not progress, leave=False)):
            for c in chunks:
                xb = (x[c] + eps * direction[c]).clamp(-1, 1)
                confs[i, c], preds[i, c] = F.softmax(forward(xb), dim=1).max(dim=1)
    return SweepResult(eps=eps_list, labels=y.clone(), preds=preds, confidences=confs)


def fgsm_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float], *,
               targeted: bool = False, progress: bool = False) -> SweepResult:
    """FGSM for every eps in eps_list on the same images, computing the input gradient only once.

    FGSM's direction sign(grad) does not depend on eps, so one backward pass per image serves the whole sweep;
    each eps then costs one forward pass. Equal to calling :func:`fgsm` once per eps.
    """
    eps_list = [check_eps(e) for e in eps_list]
    direction = fgsm_direction(model, x, y, targeted=targeted)
    return sweep_direction(model, x, y, direction, eps_list, progress=progress)


# ---------------------------------------------------------------------------------------------------------------
# Iterative attacks


def pgd(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, step_size: float | None = None,
        steps: int = 20, random_start: bool = True, seed: int | None = None, targeted: bool = False,
        mask: torch.Tensor | None = None) -> torch.Tensor:
    """Projected gradient descent (Madry et al. 2017); with random_start=False it is BIM / iterative FGSM
    (Kurakin et al. 2016).

    Each step: ``x_adv <- proj(x_adv + step_size * sign(grad))`` where proj clips onto the L-inf ball of radius
    eps around x and onto [-1, 1]. A random start draws uniformly from that ball first.

    Args:
        eps, step_size: normalized units (images in [-1, 1]); step_size defaults to 2.5 * eps / steps.
        steps: number of gradient steps (>= 1).
        seed: fixes the random start (a private CPU generator, so the same seed gives the same start on any
            device; the global RNG is untouched).
        mask: optional (N,) bool, the images to attack; the others are returned as they are (x) and cost no
            gradient step. Each image's random start is drawn for the whole batch, then indexed, so an attacked
            image's result does not depend on the mask.
    Returns:
        x_adv (N, 1, 32, 32) in [-1, 1] with |x_adv - x|_inf <= eps.
    """
    eps = check_eps(eps)
    check_batch(x, y)
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
        start = (x + eps * noise).clamp(-1, 1)
    x_adv = x.clone()
    if mask.any():
        sign = -1.0 if targeted else 1.0
        xs, ys, starts = x[mask], y[mask], start[mask]
        done = []
        with eval_mode(model):
            for c in _chunks(len(xs)):  # every step of one chunk, then the next: its activations stay in cache
                xc, xa = xs[c], starts[c]
                for _ in range(steps):
                    xa = xa + sign * step_size * input_gradient(model, xa, ys[c]).sign()
                    xa = torch.min(torch.max(xa, xc - eps), xc + eps).clamp(-1, 1)
                done.append(xa.detach())
        x_adv[mask] = torch.cat(done)
    return x_adv


def bim(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, step_size: float | None = None,
        steps: int = 10, targeted: bool = False) -> torch.Tensor:
    """Basic iterative method / iterative FGSM (Kurakin et al. 2016): :func:`pgd` without the random start.

    step_size defaults to eps / steps, so one step equals FGSM.
    """
    if step_size is None:
        step_size = check_eps(eps) / _check_steps(steps)
    return pgd(model, x, y, eps, step_size=step_size, steps=steps, random_start=False, targeted=targeted)
