r"""FGSM and its batched eps sweep on any image classifier, and the contract every attack of advlib shares (the
iterative attacks, BIM, PGD and a margin-loss PGD, are in :mod:`advlib.iterative`).

FGSM, :func:`fgsm` and :func:`fgsm_sweep` (Distance Measure : Linf): 'Explaining and Harnessing Adversarial
Examples', Ian J. Goodfellow, Jonathon Shlens, Christian Szegedy, 2014 [https://arxiv.org/abs/1412.6572].

The contract every attack here shares (torchattacks' and Foolbox's conventions):

- ``model``: any ``nn.Module`` that maps a float batch (N, C, H, W) to logits (N, K). The number of classes K is
  read from the model's output (``logits.shape[1]``), never assumed. The model runs in eval mode (BatchNorm uses
  its running statistics and is not updated, dropout is off, so every image is attacked independently of the
  others in its batch) and its previous mode is restored afterwards, even on error; weights, buffers and their
  ``.grad`` are left alone.
- ``x``: float tensor (N, C, H, W), N >= 1, any float dtype and device, every value inside ``bounds``.
  ``y``: (N,) integer labels in 0..K-1 (the true labels; the targets when ``targeted=True``).
- ``bounds=(low, high)``: the input domain, default ``(0.0, 1.0)`` (images as [0, 1] pixels, the field's
  standard). Adversarial images are clipped to it. This project's MNIST study keeps the report's normalized
  images in [-1, 1] and passes ``bounds=advlib.data.BOUNDS``.
- ``eps`` (and PGD's ``step_size``): the L-inf radius, in the units of the inputs. With bounds (0, 1), eps = 8/255
  is the usual CIFAR-10 budget and 0.3 MNIST's; for the study's normalized MNIST ([-1, 1]) eps = 0.3 moves a pixel
  by 0.15 in [0, 1] pixel units. :func:`to_pixel_eps` and :func:`to_normalized_eps` convert between the study's
  normalized units and [0, 1] pixel units (the one place this conversion lives).
- The result has x's shape, dtype and device, no gradient history, lies in [low, high] and within eps of x.
- Bad input raises ValueError naming the problem and the fix: x not a float 4-D batch, NaN, values outside
  ``bounds``, bad ``bounds``, labels that are not one integer per image, labels outside the model's classes
  (checked against the width of the first output the attack computes anyway, so no extra forward pass).

Examples::

    >>> import advlib, torch, torchvision
    >>> model = torchvision.models.resnet18(num_classes=100)
    >>> images, labels = torch.rand(4, 3, 32, 32), torch.randint(0, 100, (4,))
    >>> x_adv = advlib.fgsm(model, images, labels, eps=8/255, bounds=(0, 1))
    >>> x_adv = advlib.pgd(model, images, labels, eps=8/255, steps=10, seed=0)
    >>> sweep = advlib.fgsm_sweep(model, images, labels, [0, 2/255, 4/255, 8/255])
    >>> sweep.preds.shape  # (E, N): the prediction on each image at each eps
    torch.Size([4, 4])
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

from advlib.data import STD
from advlib.model import fold_batchnorm

DEFAULT_BOUNDS = (0.0, 1.0)  # images as [0, 1] pixels, the field's standard (torchattacks, Foolbox)
RANGE_TOLERANCE = 1e-6  # x may exceed bounds by this fraction of (high - low): float rounding of a normalization
LABEL_DTYPES = (torch.int64, torch.int32, torch.int16, torch.uint8)


def to_pixel_eps(eps: float) -> float:
    """The study's normalized-unit eps (MNIST images in [-1, 1], :data:`advlib.data.BOUNDS`) -> [0, 1] pixel
    units: 0.3 -> 0.15."""
    return eps * STD


def to_normalized_eps(eps_pixel: float) -> float:
    """[0, 1] pixel-unit eps -> the study's normalized units (MNIST images in [-1, 1]): 0.15 -> 0.3."""
    return eps_pixel / STD


# ---------------------------------------------------------------------------------------------------------------
# Input checks (one place, used by every attack)


def check_eps(eps: float, name: str = "eps") -> float:
    """eps as a float, or ValueError unless it is a finite real number >= 0 (in the units of the inputs)."""
    if isinstance(eps, torch.Tensor):
        eps = eps.item()
    if not isinstance(eps, numbers.Real) or isinstance(eps, bool):  # numbers.Real admits numpy scalars too
        raise ValueError(f"{name} must be a number in the units of the inputs, got {type(eps).__name__}")
    if math.isnan(eps) or math.isinf(eps):
        raise ValueError(f"{name} must be finite, got {eps}")
    if eps < 0:
        raise ValueError(f"{name} must be >= 0 (in the units of the inputs), got {eps}")
    return float(eps)


def check_bounds(bounds: Sequence[float]) -> tuple[float, float]:
    """bounds as (low, high) floats, or ValueError unless they are two finite numbers with low < high."""
    hint = "pass the range the images live in, e.g. bounds=(0, 1) for [0, 1] pixels"
    try:
        low, high = (b.item() if isinstance(b, torch.Tensor) else b for b in bounds)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"bounds must be two numbers (low, high), got {bounds!r}; {hint}") from None
    for b in (low, high):
        if not isinstance(b, numbers.Real) or isinstance(b, bool):
            raise ValueError(f"bounds must be two numbers (low, high), got {bounds!r}; {hint}")
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high)):
        raise ValueError(f"bounds must be finite, got ({low:g}, {high:g}); {hint}")
    if not low < high:
        raise ValueError(f"bounds must have low < high, got ({low:g}, {high:g}); {hint}")
    return low, high


def check_labels(y: torch.Tensor, num_classes: int) -> None:
    """ValueError unless every label lies in 0..num_classes-1 (num_classes: the width of the model's logits)."""
    lo, hi = (v.item() for v in torch.aminmax(y))
    if lo < 0 or hi >= num_classes:
        raise ValueError(f"labels must lie in 0..{num_classes - 1}: the model outputs {num_classes} classes "
                         f"(logits.shape[1]), got labels in [{lo}, {hi}]")


def _check_logits(logits: torch.Tensor, n: int, y: torch.Tensor) -> None:
    """The label check of an attack's first forward pass (on n images): logits (n, K), and every label of y (the
    whole batch's) in 0..K-1."""
    if not isinstance(logits, torch.Tensor) or logits.dim() != 2 or len(logits) != n:
        raise ValueError(f"the model must return logits of shape (N, num_classes) with N = {n}, got "
                         f"{tuple(getattr(logits, 'shape', ())) or type(logits).__name__}")
    check_labels(y, logits.shape[1])


def check_batch(x: torch.Tensor, y: torch.Tensor, *, bounds: Sequence[float] = DEFAULT_BOUNDS,
                num_classes: int | None = None) -> tuple[float, float]:
    """Raise ValueError unless x is a float (N, C, H, W) batch with N >= 1, no NaN and every value inside bounds,
    and y is (N,) integer labels; with num_classes also check the labels lie in 0..num_classes-1 (the attacks
    check them against the model's output instead). Returns the checked bounds as (low, high) floats.

    One pass over x (``torch.aminmax``) finds both the range and any NaN."""
    low, high = check_bounds(bounds)
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ValueError(f"x must be a float tensor of shape (N, C, H, W), got "
                         f"{getattr(x, 'dtype', type(x).__name__)}; "
                         "convert integer pixels with x.float() (and pass the bounds they then live in)")
    if x.dim() != 4:
        raise ValueError(f"x must be a 4-D batch of images (N, C, H, W), got shape {tuple(x.shape)}; "
                         "a single image (C, H, W) becomes a batch with x[None]")
    if x.shape[0] == 0:
        raise ValueError("empty batch: x has no images (N = 0)")
    lo, hi = (v.item() for v in torch.aminmax(x))
    if math.isnan(lo) or math.isnan(hi):
        raise ValueError("x contains NaN")
    tol = RANGE_TOLERANCE * (high - low)
    if lo < low - tol or hi > high + tol:
        raise ValueError(f"x lies outside bounds=({low:g}, {high:g}): its values span [{lo:.4g}, {hi:.4g}]. Pass "
                         "the range the images live in as bounds=(low, high), e.g. bounds=(-1, 1) for images "
                         "normalized with mean 0.5 and std 0.5 (advlib.data.BOUNDS); eps is in the same units")
    if not isinstance(y, torch.Tensor) or y.dtype not in LABEL_DTYPES:
        raise ValueError(f"y must be an integer tensor of class labels, got {getattr(y, 'dtype', type(y).__name__)}")
    if y.dim() != 1:
        raise ValueError(f"y must be a 1-D tensor of labels, one per image, shape ({len(x)},), got shape "
                         f"{tuple(y.shape)}")
    if len(y) != len(x):
        raise ValueError(f"x has {len(x)} images but y has {len(y)} labels: give one label per image, y of shape "
                         f"({len(x)},)")
    if num_classes is not None:
        check_labels(y, num_classes)
    return low, high


def _check_steps(steps: int) -> int:
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    return steps


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put the model in eval mode for the block and restore the previous mode of each of its modules after, even on
    error (module by module: ``model.train(True)`` would also switch a wrapped model's modules that were in eval
    mode)."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, training in modes:
            m.training = training


def _gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
              check: torch.Tensor | None = None) -> torch.Tensor:
    """d loss / d x of the summed cross-entropy; check: labels (the whole batch's) to check against the width of
    the logits before the loss is taken."""
    x = x.detach().clone().requires_grad_(True)
    logits = model(x)
    if check is not None:
        _check_logits(logits, len(x), check)
    loss = F.cross_entropy(logits, y.long(), reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    return grad


def input_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, check_labels: bool = True) -> torch.Tensor:
    """d loss / d x for the summed cross-entropy, shape of x (any shape the model takes). Summed so each image's
    gradient is its own. The model runs in the mode it is in (wrap the call in :func:`eval_mode` to attack).

    check_labels: check y against the width of the logits (a ValueError naming both); False skips the check
    and its device synchronisation (adversarial training's batches, whose labels are known to be valid).
    """
    return _gradient(model, x, y, check=y if check_labels else None)


# ---------------------------------------------------------------------------------------------------------------
# FGSM


def fgsm(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, bounds: Sequence[float] = DEFAULT_BOUNDS,
         targeted: bool = False) -> torch.Tensor:
    r"""FGSM in the paper 'Explaining and Harnessing Adversarial Examples' (Goodfellow, Shlens & Szegedy, 2014)
    [https://arxiv.org/abs/1412.6572]

    Distance Measure : Linf

    Untargeted: ``clamp(x + eps * sign(grad_x loss(x, y)), low, high)``, pushing away from the true label y.
    Targeted:   ``clamp(x - eps * sign(grad_x loss(x, y)), low, high)``, pulling toward the target label y.

    Arguments:
        model (nn.Module): classifier returning logits (N, K); run in eval mode, its mode restored.
        eps (float): the step, = the L-inf radius, in the units of the inputs (8/255 for [0, 1] images; for the
            study's normalized MNIST in [-1, 1], 0.3 = 0.15 in [0, 1] pixel units).
        bounds (low, high): the input domain, default (0, 1); the result is clipped to it.
        targeted (bool): y are targets to move toward.

    Shape:
        - x: :math:`(N, C, H, W)` float, values in ``bounds``.
        - y: :math:`(N)` integer labels in 0..K-1, K = the model's number of outputs.
        - output: :math:`(N, C, H, W)`, x's dtype and device, in ``bounds``, with |x_adv - x|_inf <= eps.

    Examples::
        >>> x_adv = advlib.fgsm(model, images, labels, eps=8/255, bounds=(0, 1))
        >>> x_adv = advlib.fgsm(mnist_model, x, y, eps=0.3, bounds=advlib.BOUNDS)  # normalized [-1, 1] MNIST
    """
    eps = check_eps(eps)
    low, high = check_batch(x, y, bounds=bounds)
    with eval_mode(model):
        sign = _gradient(model, x, y, check=y).sign()
    step = -eps if targeted else eps
    return (x + step * sign).clamp(low, high).detach()


@dataclass
class SweepResult:
    """FGSM at several eps on the same images. eps: (E,) in the units of the inputs; preds, confidences: (E, N)."""

    eps: list[float]
    labels: torch.Tensor  # (N,) true labels
    preds: torch.Tensor  # (E, N) predicted class of each adversarial image
    confidences: torch.Tensor  # (E, N) max softmax probability of each adversarial image


# Forward passes for predictions go through :func:`advlib.model.fold_batchnorm`: for a SmallResNet every eval-mode
# BatchNorm is folded into the convolution before it, with channels_last activations (faster on CPU; see
# benchmarks/); any other model is used as it is. The folded network computes the same function; only float
# rounding differs, so an exact tie could in principle flip a prediction. predict() and the sweeps share this path,
# so they agree with each other exactly. Gradients (FGSM's direction, PGD) always use the model itself, so they
# match an autograd oracle.
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

    x: (N, ...) any batch the model takes, e.g. (N, C, H, W); no range check. The forward pass is
    :func:`advlib.model.fold_batchnorm`'s (model.eval()(x) up to float rounding, for a SmallResNet; the model
    itself otherwise), CHUNK images at a time; the model's mode is restored.
    """
    return _predict(model, x)


def _predict(model: nn.Module, x: torch.Tensor,
             check: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`predict`; check: labels (N,) to check against the width of the first chunk's logits."""
    preds, confs = [], []
    with eval_mode(model), torch.no_grad():
        forward = fold_batchnorm(model)
        for chunk in _chunks(len(x)):
            logits = forward(x[chunk])
            if check is not None:
                _check_logits(logits, len(x[chunk]), check)
                check = None
            conf, pred = F.softmax(logits, dim=1).max(dim=1)
            preds.append(pred)
            confs.append(conf)
    return torch.cat(preds), torch.cat(confs)


def fgsm_direction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, bounds: Sequence[float] = DEFAULT_BOUNDS,
                   targeted: bool = False) -> torch.Tensor:
    """The FGSM step direction for every image, x's shape (N, C, H, W), values in {-1, 0, +1}:
    x_adv(eps) = clamp(x + eps * d, low, high). x must lie in bounds (default (0, 1))."""
    check_batch(x, y, bounds=bounds)
    with eval_mode(model):  # the labels are checked against the first chunk's logits
        sign = torch.cat([_gradient(model, x[c], y[c], check=y if i == 0 else None).sign()
                          for i, c in enumerate(_chunks(len(x)))])
    return -sign if targeted else sign


def sweep_direction(model: nn.Module, x: torch.Tensor, y: torch.Tensor, direction: torch.Tensor,
                    eps_list: Sequence[float], *, bounds: Sequence[float] = DEFAULT_BOUNDS,
                    progress: bool = False) -> SweepResult:
    """Predictions on clamp(x + eps * direction, low, high) for every eps of eps_list (in the units of the
    inputs): forward passes only, the same as :func:`predict` on each eps's images.

    x: (N, C, H, W) in bounds (default (0, 1)); direction: x's shape, e.g. :func:`fgsm_direction`'s; y: (N,)
    labels, checked against the first forward pass's logits."""
    eps_list = [check_eps(e) for e in eps_list]
    if not eps_list:
        raise ValueError("eps_list is empty: give at least one eps (in the units of the inputs)")
    low, high = check_batch(x, y, bounds=bounds)
    if not isinstance(direction, torch.Tensor) or direction.shape != x.shape:
        raise ValueError(f"direction must have the shape of x {tuple(x.shape)}, got "
                         f"{tuple(getattr(direction, 'shape', ()))}; compute it with fgsm_direction(model, x, y)")
    from tqdm.auto import tqdm

    preds = torch.empty(len(eps_list), len(x), dtype=torch.long, device=x.device)
    confs = torch.empty(len(eps_list), len(x), dtype=x.dtype, device=x.device)
    chunks = _chunks(len(x))
    check = y  # the labels are checked against the first forward pass's logits: its width is the class count
    with eval_mode(model), torch.no_grad():
        forward = fold_batchnorm(model)
        for i, eps in enumerate(tqdm(eps_list, desc="eps", disable=not progress, leave=False)):
            for c in chunks:
                logits = forward((x[c] + eps * direction[c]).clamp(low, high))
                if check is not None:
                    _check_logits(logits, len(x[c]), check)
                    check = None
                confs[i, c], preds[i, c] = F.softmax(logits, dim=1).max(dim=1)
    return SweepResult(eps=eps_list, labels=y.clone(), preds=preds, confidences=confs)


def fgsm_sweep(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list: Sequence[float], *,
               bounds: Sequence[float] = DEFAULT_BOUNDS, targeted: bool = False, progress: bool = False) -> SweepResult:
    r"""FGSM (Goodfellow, Shlens & Szegedy, 2014, 'Explaining and Harnessing Adversarial Examples'
    [https://arxiv.org/abs/1412.6572]) at every eps of eps_list on the same images, computing the input gradient
    only once.

    Distance Measure : Linf

    FGSM's direction sign(grad) does not depend on eps, so one backward pass per image serves the whole sweep;
    each eps then costs one forward pass. Equal to calling :func:`fgsm` once per eps and :func:`predict` on its
    images.

    Arguments:
        model (nn.Module): classifier returning logits (N, K); run in eval mode, its mode restored.
        eps_list (sequence of float): the eps, in the units of the inputs (for the study's normalized MNIST in
            [-1, 1], 0.3 = 0.15 in [0, 1] pixel units).
        bounds (low, high): the input domain, default (0, 1); each eps's images are clipped to it.
        targeted (bool): y are targets to move toward. progress (bool): a progress bar over the eps.

    Shape:
        - x: :math:`(N, C, H, W)` float, values in ``bounds``; y: :math:`(N)` labels in 0..K-1.
        - output: :class:`SweepResult` with ``preds`` and ``confidences`` of shape :math:`(E, N)` (E = len(eps_list)).

    Examples::
        >>> sweep = advlib.fgsm_sweep(model, images, labels, [0, 2/255, 4/255, 8/255], bounds=(0, 1))
        >>> robust = (sweep.preds == sweep.labels).float().mean(1)  # accuracy at each eps
    """
    eps_list = [check_eps(e) for e in eps_list]
    if not eps_list:
        raise ValueError("eps_list is empty: give at least one eps (in the units of the inputs)")
    direction = fgsm_direction(model, x, y, bounds=bounds, targeted=targeted)
    return sweep_direction(model, x, y, direction, eps_list, bounds=bounds, progress=progress)
