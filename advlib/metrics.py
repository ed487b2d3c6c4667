"""The original report's metrics, plus the intervals and detector scores that make them judgeable.

All rates are percentages (0..100). Following the original report, the FGSM study runs on a set of test images
the model classifies correctly, so clean accuracy on that set is 100% by construction and
ASR = 100 - adversarial accuracy. :func:`robust_accuracy` gives the standard whole-test-set figure instead,
where clean mistakes count as failures.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from advlib.attacks import NUM_CLASSES, SweepResult, predict


def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 2000) -> float:
    """Percentage of x classified as y (eval mode, no gradients)."""
    preds, _ = predict(model, x, batch_size)
    return 100.0 * (preds == y).float().mean().item()


def select_correct(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n: int) -> torch.Tensor:
    """Indices (n,) of the first n images, in test-set order, that the model classifies correctly."""
    preds, _ = predict(model, x)
    idx = torch.nonzero(preds == y).flatten()
    if len(idx) < n:
        raise ValueError(f"only {len(idx)} images are classified correctly, fewer than the {n} asked for")
    return idx[:n]


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
    from advlib.attacks import to_pixel_eps

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


def robust_accuracy(clean_preds: torch.Tensor, result: SweepResult) -> list[dict]:
    """Standard robust accuracy per eps on a whole test set: an image counts only if it is classified correctly
    both clean and under attack (clean mistakes are failures). Each entry is a :func:`rate` dict plus eps."""
    clean_ok = clean_preds == result.labels
    n = len(result.labels)
    return [{"eps": eps, **rate(int((clean_ok & (result.preds[i] == result.labels)).sum()), n)}
            for i, eps in enumerate(result.eps)]


def confusion_matrix(y_true: torch.Tensor, y_pred: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """(num_classes, num_classes) int64 counts; element (i, j) = images of true label i predicted as j."""
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


def roc_curve(scores_negative: Sequence[float], scores_positive: Sequence[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """ROC of the detector "flag as adversarial when confidence <= t", swept over every threshold t.

    Args:
        scores_negative: confidences of clean images (should be high).
        scores_positive: confidences of adversarial images (should be low, if confidence detects attacks).
    Returns:
        fpr, tpr: (T,) tensors from (0, 0) to (1, 1), as fractions.
    """
    neg = torch.as_tensor(scores_negative, dtype=torch.float64)
    pos = torch.as_tensor(scores_positive, dtype=torch.float64)
    thresholds = torch.unique(torch.cat([neg, pos]))  # sorted ascending
    fpr = (neg[None, :] <= thresholds[:, None]).double().mean(1)
    tpr = (pos[None, :] <= thresholds[:, None]).double().mean(1)
    zero = torch.zeros(1, dtype=torch.float64)
    return torch.cat([zero, fpr]), torch.cat([zero, tpr])


def roc_auc(scores_negative: Sequence[float], scores_positive: Sequence[float]) -> float:
    """Area under :func:`roc_curve`: the probability that an adversarial image has lower confidence than a clean
    one (ties count one half). 0.5 = no better than chance, 1.0 = a perfect detector."""
    neg = torch.as_tensor(scores_negative, dtype=torch.float64)
    pos = torch.as_tensor(scores_positive, dtype=torch.float64)
    less = (pos[:, None] < neg[None, :]).double().sum()
    ties = (pos[:, None] == neg[None, :]).double().sum()
    return ((less + 0.5 * ties) / (len(pos) * len(neg))).item()


def tpr_at_fpr(fpr: torch.Tensor, tpr: torch.Tensor, max_fpr: float = 0.05) -> float:
    """Highest true-positive rate (fraction) among ROC points whose false-positive rate is <= max_fpr."""
    return tpr[fpr <= max_fpr + 1e-12].max().item()
