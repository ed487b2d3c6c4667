"""The original report's metrics, plus the intervals and detector scores that make them judgeable.

All rates are percentages (0..100). Following the original report, the FGSM study runs on a set of test images
the model classifies correctly, so clean accuracy on that set is 100% by construction and
ASR = 100 - adversarial accuracy. :func:`robust_rows` gives the standard whole-test-set figure instead,
where clean mistakes count as failures.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import torch
from torch import nn

from advlib.attacks import DEFAULT_BOUNDS, SweepResult, check_bounds, fgsm_sweep, predict, to_pixel_eps
from advlib.iterative import pgd
from advlib.data import NUM_CLASSES


def direct_call(func: Callable, *args: Any, **kwargs: Any) -> Any:
    """``func(*args, **kwargs)``: the default ``cache`` of the functions that take one. A cache is any callable
    with this signature that may return a stored result instead (the study passes its stage cache)."""
    return func(*args, **kwargs)


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    """Percentage of x (N, C, H, W) classified as y (N,) (eval mode, no gradients)."""
    preds, _ = predict(model, x)
    return 100.0 * (preds == y).float().mean().item()


SELECT_BLOCK = 1024  # select_correct predicts this many images at a time, and stops once it has found enough


def select_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (n,) of the first n images, in test-set order, that the model classifies correctly.

    Predicts only as far into x as it must (blocks of SELECT_BLOCK images): the first 1,000 correct test images take
    about a tenth of the time of predicting all 10,000."""
    found, count = [], 0
    for start in range(0, len(x), SELECT_BLOCK):
        preds, _ = predict(model, x[start:start + SELECT_BLOCK])
        hits = torch.nonzero(preds == y[start:start + SELECT_BLOCK]).flatten() + start
        found.append(hits)
        count += len(hits)
        if count >= n:
            break
    idx = torch.cat(found) if found else torch.zeros(0, dtype=torch.long, device=x.device)
    if len(idx) < n:
        raise ValueError(f"only {len(idx)} images are classified correctly, fewer than the {n} asked for")
    return idx[:n]


def first_test_images(test_x: torch.Tensor, test_y: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The "first" protocol's images: (x, y) = the first n of the test split (test_x: (N, 1, 32, 32) in [-1, 1],
    test_y: (N,)), whatever any model predicts on them; a clear error when n does not fit the split."""
    if not 0 < n <= len(test_x):
        raise ValueError(f"n_samples must lie in 1..{len(test_x):,} (the test split), got {n}")
    return test_x[:n], test_y[:n]


def wilson_interval(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """95% Wilson score interval (in percent) for k successes out of n trials."""
    if n <= 0:
        raise ValueError("n must be positive")
    if not 0 <= k <= n:
        raise ValueError(f"k must lie in 0..n, got k={k}, n={n}")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At k = 0 and k = n the bound is exactly 0 or 1; rounding would give 8.7e-17 or 0.9999999999999999.
    low = 0.0 if k == 0 else 100.0 * max(0.0, centre - half)
    high = 100.0 if k == n else 100.0 * min(1.0, centre + half)
    return low, high


def rate(k: int, n: int) -> dict:
    """A percentage with its 95% Wilson interval: {"value", "ci_low", "ci_high", "k", "n"}."""
    lo, hi = wilson_interval(k, n)
    return {"value": 100.0 * k / n, "ci_low": lo, "ci_high": hi, "k": int(k), "n": int(n)}


def sweep_metrics(result: SweepResult, clean_confidences: torch.Tensor) -> list[dict]:
    """Per-eps metrics of an FGSM sweep on correctly classified images.

    Returns one dict per eps: eps (normalized), eps_pixel ([0, 1] units), n, adv_accuracy and asr (each a
    :func:`rate` dict), mean clean and adversarial confidence (percent).
    """
    rows = []
    n = len(result.labels)
    for i, eps in enumerate(result.eps):
        correct = int((result.preds[i] == result.labels).sum())
        rows.append({
            "eps": eps,
            "eps_pixel": to_pixel_eps(eps),
            "n": n,
            "adv_accuracy": rate(correct, n),
            "asr": rate(n - correct, n),
            "clean_confidence": 100.0 * clean_confidences.mean().item(),
            "adv_confidence": 100.0 * result.confidences[i].mean().item(),
        })
    return rows


def robust_rows(clean_preds: torch.Tensor, result: SweepResult) -> list[dict]:
    """Standard robust accuracy per eps on a whole test set: an image counts only if it is classified correctly
    both clean and under attack (clean mistakes are failures). Each entry is a :func:`rate` dict plus eps."""
    clean_ok = clean_preds == result.labels
    n = len(result.labels)
    return [{"eps": eps, **rate(int((clean_ok & (result.preds[i] == result.labels)).sum()), n)}
            for i, eps in enumerate(result.eps)]


def pgd_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, *, pgd_steps: int = 20,
                 seed: int = 0, bounds: Sequence[float] = DEFAULT_BOUNDS) -> dict:
    """Robust accuracy of model under PGD at one eps (in the units of x), on all of x: :func:`rate` of the images
    classified correctly both clean and under attack.

    x: (N, C, H, W) in bounds (default (0, 1); the study's normalized MNIST passes advlib.data.BOUNDS);
    y: (N,) labels. PGD (``pgd_steps`` steps of 2.5 eps / steps from a random
    start fixed by seed) attacks only the images still classified correctly: an image the clean model gets wrong
    already counts as a failure and costs no gradient step, which changes no number (each image's random start
    does not depend on which others are attacked). Each eps is computed on its own, so the eps of a curve can run
    in parallel (the workflow's PGD jobs) and give the numbers of one call to :func:`robust_curves`.
    """
    ok = predict(model, x)[0] == y
    if eps > 0 and ok.any():
        x_pgd = pgd(model, x, y, eps, bounds=bounds, steps=pgd_steps, seed=seed, mask=ok)
        ok = ok & (predict(model, x_pgd)[0] == y)
    return rate(int(ok.sum()), len(y))


def pgd_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_grid: Sequence[float], *,
             pgd_steps: int = 20, seed: int = 0, bounds: Sequence[float] = DEFAULT_BOUNDS,
             cache: Callable | None = None) -> list[dict]:
    """:func:`pgd_accuracy` at every eps of eps_grid, through ``cache`` when given (a callable such as
    :func:`direct_call`; the study passes its stage cache, where a re-run finds the numbers computed before): one ``{"eps": eps, **rate(k, N)}`` row per eps.
    bounds are passed on as a (low, high) tuple of floats, so (-1, 1) and (-1.0, 1.0) find the same entries."""
    cache = cache or direct_call
    bounds = check_bounds(bounds)
    return [{"eps": eps, **cache(pgd_accuracy, model, x, y, eps, pgd_steps=pgd_steps, seed=seed, bounds=bounds)}
            for eps in eps_grid]


def robust_curves(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_grid: Sequence[float], *,
               pgd_steps: int = 20, seed: int = 0, bounds: Sequence[float] = DEFAULT_BOUNDS,
               cache: Callable | None = None) -> dict[str, list[dict]]:
    """Robust accuracy of model under FGSM and PGD at every eps of eps_grid (in the units of x), on all of x.

    x: (N, C, H, W) in bounds (default (0, 1); the study's normalized MNIST passes advlib.data.BOUNDS);
    y: (N,) labels. An image counts as a success only if it is classified
    correctly both clean and under attack (as :func:`robust_rows`). PGD: :func:`pgd_curve`, through ``cache``
    when given.

    Returns:
        {"fgsm": rows, "pgd": rows}, one row per eps: ``{"eps": eps, **rate(k, N)}``.
    """
    clean_pred, _ = predict(model, x)
    fgsm_rows = robust_rows(clean_pred, fgsm_sweep(model, x, y, eps_grid, bounds=bounds))
    return {"fgsm": fgsm_rows, "pgd": pgd_curve(model, x, y, eps_grid, pgd_steps=pgd_steps, seed=seed, bounds=bounds,
                                               cache=cache)}


def fgsm_curve(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_grid: Sequence[float], *,
                          bounds: Sequence[float] = DEFAULT_BOUNDS) -> dict:
    """FGSM over a whole test split (clean mistakes count as failures): ``{"clean_accuracy": percent,
    "rows": robust_rows rows, one per eps}``. x: (N, C, H, W) in bounds (default (0, 1); the study's
    normalized MNIST passes advlib.data.BOUNDS); eps in the units of x."""
    clean_pred, _ = predict(model, x)
    return {"clean_accuracy": 100.0 * float((clean_pred == y).float().mean()),
            "rows": robust_rows(clean_pred, fgsm_sweep(model, x, y, eps_grid, bounds=bounds))}


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; element (i, j) = images of true label i predicted as j.
    num_classes defaults to MNIST's 10 (:data:`advlib.data.NUM_CLASSES`); pass it for any other classifier."""
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true and y_pred must have the same shape, got {tuple(y_true.shape)} and {tuple(y_pred.shape)}")
    for name, labels in (("y_true", y_true), ("y_pred", y_pred)):
        # out-of-range labels would not fail below: they would be counted silently in a neighbouring cell
        if labels.numel() and (labels.min().item() < 0 or labels.max().item() >= num_classes):
            raise ValueError(f"{name} must hold labels in 0..{num_classes - 1}, got [{labels.min().item()}, "
                             f"{labels.max().item()}]")
    flat = y_true.long() * num_classes + y_pred.long()
    return torch.bincount(flat, minlength=num_classes * num_classes).reshape(num_classes, num_classes)


# ---------------------------------------------------------------------------------------------------------------
# Is confidence a detector? Score = max-softmax confidence; positive class = adversarial, which should score LOW.


def _scores(scores: Sequence[float]) -> torch.Tensor:
    """Scores as a sorted float64 CPU tensor (N,), from a list, an array or a tensor on any device."""
    return torch.as_tensor(scores).detach().to("cpu", torch.float64).flatten().sort().values


def roc_curve(scores_negative: Sequence[float], scores_positive: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """ROC of the detector "flag as adversarial when confidence <= t", swept over every threshold t.

    Args:
        scores_negative: confidences of clean images (should be high).
        scores_positive: confidences of adversarial images (should be low, if confidence detects attacks).
        Either may be a sequence, an array or a tensor on any device.
    Returns:
        fpr, tpr: (T,) float64 CPU tensors from (0, 0) to (1, 1), as fractions; T - 1 = the number of distinct
        scores (the thresholds). Sort-based: O(N log N) time, O(N) memory.
    """
    neg, pos = _scores(scores_negative), _scores(scores_positive)
    thresholds = torch.unique(torch.cat([neg, pos]))  # sorted ascending
    zero = torch.zeros(1, dtype=torch.float64)
    fpr = torch.searchsorted(neg, thresholds, right=True).double() / len(neg)  # fraction of neg <= t
    tpr = torch.searchsorted(pos, thresholds, right=True).double() / len(pos)
    return torch.cat([zero, fpr]), torch.cat([zero, tpr])


def roc_auc(scores_negative: Sequence[float], scores_positive: Sequence[float]) -> float:
    """Area under :func:`roc_curve`: the probability that an adversarial image has lower confidence than a clean
    one (ties count one half). 0.5 = no better than chance, 1.0 = a perfect detector. O(N log N)."""
    neg, pos = _scores(scores_negative), _scores(scores_positive)
    at_most = torch.searchsorted(neg, pos, right=True)  # per positive: clean scores <= it
    below = torch.searchsorted(neg, pos, right=False)  # per positive: clean scores < it
    higher = (len(neg) - at_most).sum().item()  # pairs where the clean score is higher
    ties = (at_most - below).sum().item()
    return (higher + 0.5 * ties) / (len(pos) * len(neg))


def tpr_at_fpr(fpr: torch.Tensor, tpr: torch.Tensor, max_fpr: float = 0.05) -> float:
    """Highest true-positive rate (fraction) among ROC points whose false-positive rate is <= max_fpr."""
    return tpr[fpr <= max_fpr + 1e-12].max().item()
