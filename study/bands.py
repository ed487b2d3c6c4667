"""The seed study's numbers: the spread of the FGSM sweep over seeds, and the regression bands (how far a re-run's
number may lie from the committed seeds' before a test calls it a change).

:func:`seed_spread` gives the mean and sd of the adversarial accuracy over seeds per eps (Figure 11),
:func:`compare_with_reference` where the original report lies in it.

A band is the seeds' median ± k scaled MADs (:func:`seed_band`); a band wider than :data:`MAX_BAND_WIDTH` judges
nothing and says so (:func:`too_wide`). FGSM itself is checked against an autograd oracle on the same images
(:func:`outside_fgsm_oracle`). All accuracies are percentages.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np


# The regression checks (tests/study/test_regression.py). A model trained again on another machine ends its training
# elsewhere (other float rounding), so its numbers are held to the committed seeds' spread, never to one run's
# decimals. The band is the seeds' median ± BAND_K scaled MADs (1.4826 × the median absolute deviation, the sd for
# normal data): one odd seed (BatchNorm's lag, a catastrophic overfit) cannot widen it the way it widens mean ± k sd.
# BAND_K = 6 keeps every committed seed inside the band of the other nine (a test checks this). Only quantities with
# a narrow honest spread get a band: the eval-mode accuracy (45 to 99% over honest seeds) and the FGSM accuracies
# (27 to 88% at eps 0.1) have none; FGSM itself is checked against an autograd oracle on the same model instead.
BAND_K = 6.0
MAD_TO_SD = 1.4826


def seed_band(values, k: float = BAND_K, limits: tuple[float, float] = (0.0, 100.0)) -> tuple[float, float]:
    """(low, high): median ± k × 1.4826 × MAD of the seeds' values, clipped to ``limits`` (accuracies in %)."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        raise ValueError("seed_band needs at least one value")
    median = float(np.median(a))
    half = k * MAD_TO_SD * float(np.median(np.abs(a - median)))
    return max(median - half, limits[0]), min(median + half, limits[1])


def band_text(band: tuple[float, float]) -> str:
    """A band as '[97.90, 99.41]% (width 1.51 pp)'."""
    lo, hi = band
    return f"[{lo:.2f}, {hi:.2f}]% (width {hi - lo:.2f} pp)"


def outside_band(label: str, value: float, band: tuple[float, float]) -> list[str]:
    """[] when value lies in band, else one line naming the value, the band's bounds and its width."""
    lo, hi = band
    return [] if lo - 1e-9 <= value <= hi + 1e-9 else [f"{label} {value:.2f}% outside {band_text(band)}"]


def recalibrated_band(seed_study: dict, k: float = BAND_K) -> tuple[float, float]:
    """The seeds' band of the test accuracy with BatchNorm's statistics recomputed (:func:`seed_band`)."""
    return seed_band(seed_study["per_seed_recalibrated_test_accuracy"], k)


def outside_seed_band(recalibrated_accuracy: float, seed_study: dict, k: float = BAND_K) -> list[str]:
    """[] when a re-trained standard model's test accuracy with BatchNorm's statistics recomputed
    (:func:`study.jobs.recalibrated_accuracy`) lies inside the committed seeds' band (:func:`recalibrated_band`),
    else one line with the value, the band's bounds and its width.

    That accuracy measures the weights alone and is narrow over the seeds (98.3 to 99.0%); the eval-mode accuracy is
    not judged: BatchNorm's running averages lag the weights on some seeds (one honest seed at 45%), so a band wide
    enough for every honest seed would admit almost any model. seed_study: metrics.json's ``seed_study`` section."""
    return outside_band("test accuracy, BatchNorm statistics recomputed,", recalibrated_accuracy,
                        recalibrated_band(seed_study, k))


def outside_fgsm_oracle(accuracy: dict[float, float], oracle: dict[float, float], n: int, tolerance: int = 2,
                        differing: dict[float, int] | None = None) -> list[str]:
    """Where advlib's FGSM disagrees with an independent oracle on the same model and the same n images ([] if
    nowhere): per eps of ``oracle``, advlib's accuracy (%) must lie within ``tolerance`` images of the oracle's
    (band: oracle ± 100 × tolerance / n pp), and, when ``differing`` ({eps: images whose prediction differs}) is
    given, at most ``tolerance`` images may be predicted differently. The tolerance covers float rounding only (a
    near-tie flipped by another summation order); a wrong eps or a wrong sign moves hundreds of images.
    accuracy, oracle: {eps (normalized): accuracy %}."""
    out, half = [], 100.0 * tolerance / n
    for eps, want in oracle.items():
        got = next((v for e, v in accuracy.items() if abs(e - eps) < 1e-9), None)
        band = (want - half, want + half)
        if got is None:
            out.append(f"FGSM at eps {eps:g}: advlib gave no accuracy (the oracle's is {want:.2f}%)")
            continue
        out += outside_band(f"FGSM accuracy at eps {eps:g} (oracle {want:.2f}%, ± {tolerance} of {n:,} images):",
                            got, band)
        if differing is not None and differing.get(eps, 0) > tolerance:
            out.append(f"FGSM at eps {eps:g}: {differing[eps]} of {n:,} images predicted otherwise than by the oracle "
                       f"(at most {tolerance} allowed)")
    return out


def robust_bands(spread: dict, k: float = BAND_K) -> dict[str, tuple[str, tuple[float, float]]]:
    """{key: (label, band)} of the robust model's clean, PGD and AutoAttack (APGD-CE -> APGD-T) accuracy: the robust
    seeds' median ± k scaled MADs (:func:`seed_band`). spread: the seed_study section's "robust"
    (:func:`robust_seed_spread`, whose "values" are the seeds' numbers)."""
    labels = {"clean": "clean accuracy", "pgd": f"PGD-{spread['pgd_steps']} accuracy",
              "aa": "APGD-CE -> APGD-T accuracy"}
    return {key: (label, seed_band(spread[key]["values"], k)) for key, label in labels.items()}


MAX_BAND_WIDTH = 50.0  # pp: a band covering more than half of [0, 100]% would judge nothing; it is not used


def too_wide(band: tuple[float, float]) -> bool:
    """Whether a band is too wide to be a check (wider than MAX_BAND_WIDTH percentage points)."""
    return band[1] - band[0] > MAX_BAND_WIDTH


def outside_robust_band(numbers: dict, spread: dict, k: float = BAND_K) -> list[str]:
    """The robust-model numbers of a re-run (:func:`study.sanity.seed_metrics`) outside the committed robust
    seeds' bands (:func:`robust_bands`), one line each with the value, the band's bounds and its width ([] if
    none). A band wider than MAX_BAND_WIDTH is no check and judges nothing (AutoAttack on 100 images, whose seeds
    spread over tens of points: :func:`too_wide`). What the bands catch: a model whose adversarial training did not
    happen (PGD accuracy near 0, tens of points below the band's lower end) or went badly wrong; their upper ends
    reach 100%, so an attack that stopped working (PGD accuracy near the clean one) is not caught here."""
    out = []
    for key, (label, band) in robust_bands(spread, k).items():
        if not too_wide(band):
            out += outside_band(f"robust model {label} at eps {spread['eps']:g}:", numbers[key]["value"], band)
    return out


# ---------------------------------------------------------------------------------------------------------------
# Seed study: how much the FGSM sweep varies from one training seed to the next


def seed_spread(sweeps: Sequence[Sequence[Mapping]]) -> dict:
    """Mean and spread across seeds of the adversarial accuracy of FGSM sweeps on one eps grid.

    Args:
        sweeps: one list of :func:`sweep_metrics` rows per seed (reads ``row["eps"]``, normalized units, and
            ``row["adv_accuracy"]["value"]``, percent).
    Returns:
        {"eps": (E,), "mean": (E,), "std": (E,) sample standard deviation (ddof=1; 0.0 with one seed),
        "n_seeds": S, "per_seed": (S, E)} as float numpy arrays, accuracies in percent.
    Raises:
        ValueError: no seeds, no rows, or seeds whose eps grids differ.
    """
    if not sweeps or not sweeps[0]:
        raise ValueError("sweeps is empty: pass one non-empty list of sweep rows per seed")
    eps = np.array([float(r["eps"]) for r in sweeps[0]])
    for i, rows in enumerate(sweeps):
        seed_eps = [float(r["eps"]) for r in rows]
        if len(seed_eps) != len(eps) or not np.allclose(seed_eps, eps):
            raise ValueError(f"seed {i} has the eps grid {seed_eps}, seed 0 has {eps.tolist()}: all seeds must "
                             "share one grid")
    per_seed = np.array([[float(r["adv_accuracy"]["value"]) for r in rows] for rows in sweeps])  # (S, E)
    std = per_seed.std(0, ddof=1) if len(sweeps) > 1 else np.zeros(len(eps))
    return {"eps": eps, "mean": per_seed.mean(0), "std": std, "n_seeds": len(sweeps), "per_seed": per_seed}


def compare_with_reference(spread: Mapping, reference: Mapping[float, float]) -> list[dict]:
    """Where a reference (e.g. the original report) lies within the seed spread of :func:`seed_spread`.

    Args:
        spread: :func:`seed_spread`'s result.
        reference: {eps (normalized units; a number or a string such as "0.05"): adversarial accuracy (%)}.
    Returns:
        One dict per reference eps on the spread's grid, in increasing eps: {"eps", "original", "mean", "std",
        "z"} with z = (original - mean) / std, None when std is 0. Reference eps not on the grid are skipped.
    """
    grid = np.asarray(spread["eps"], dtype=float)
    rows = []
    for eps, original in sorted((float(e), float(v)) for e, v in reference.items()):
        hits = np.flatnonzero(np.isclose(grid, eps, rtol=0, atol=1e-9))
        if len(hits) == 0:
            continue
        mean, std = float(spread["mean"][hits[0]]), float(spread["std"][hits[0]])
        rows.append({"eps": eps, "original": original, "mean": mean, "std": std,
                     "z": (original - mean) / std if std > 0 else None})
    return rows
