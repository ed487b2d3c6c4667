"""The study's figures of FGSM on the standard model: the original report's Figures 1-9 (graph1..graph8,
sample_predictions) and Figure 12 (graph12, confidence as a detector, drawn beside Figure 8). The figures of the
follow-up studies (adversarial training, seeds, capacity) are in :mod:`study.robust_figures`; the primitives and the
style they are all drawn with in :mod:`advlib.viz`.

Every function takes plain data (lists, dicts, numpy arrays or torch tensors) and returns a matplotlib ``Figure``;
it never shows or saves (:func:`advlib.viz.save_figure` does). eps is in *normalized* units (images in [-1, 1]),
as in the original report; every eps axis says so (:data:`advlib.viz.NORMALIZED_EPS_LABEL`) and carries a
secondary top axis in [0, 1] pixel units. Rates are percentages with their 95% Wilson interval
(:func:`advlib.metrics.rate`). The figures that show labels take ``classes``, the class names
(:func:`advlib.data.class_names`); without them, or with MNIST's "0".."9", they show the label numbers.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from advlib import viz
from advlib.viz import (ADV, CI_NOTE, CLEAN, LOSS, NAME_TITLE_HEIGHT, NEUTRAL, NORMALIZED_EPS_LABEL, asymmetric_yerr,
                        check_classes, check_images, check_labels, check_rows, eps_text, label_eps_axis,
                        legend_with_band, log_y, long_names, prediction_title, rate_arrays, rate_curve, short_number,
                        show_image, styled, to_numpy)


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _bar_width(eps: np.ndarray) -> float:
    """Width of a whole group of bars: 80% of the smallest gap between eps values."""
    gaps = np.diff(np.unique(eps))
    return 0.8 * (gaps.min() if len(gaps) else 0.1)


def _label_bars(ax, x: np.ndarray, value: np.ndarray, top: np.ndarray, pad: float = 1.5, **kwargs) -> None:
    """Write 'v%' above each bar, clear of its error bar."""
    for xi, v, t in zip(x, value, top):
        ax.text(xi, t + pad, f"{v:.1f}%", ha="center", va="bottom", **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# The original report's figures


@styled
def plot_accuracy_bars(rows: Sequence[Mapping], clean_accuracy: float | Mapping = 100.0) -> Figure:
    """Figure 1 (graph1): clean vs adversarial accuracy per eps, grouped bars with values and 95% Wilson error bars.

    Args:
        rows: :func:`advlib.metrics.sweep_metrics` rows; reads ``eps`` (normalized units) and ``adv_accuracy``
            (rate dict, percent).
        clean_accuracy: accuracy on the clean images, percent; 100 by construction on the correctly classified
            set the study attacks. A rate dict instead also draws its interval.
    """
    rows = check_rows(rows, ("eps", "adv_accuracy"))
    eps = np.array([float(r["eps"]) for r in rows])
    adv, adv_lo, adv_hi = rate_arrays([r["adv_accuracy"] for r in rows])
    if isinstance(clean_accuracy, Mapping):
        c, c_lo, c_hi = rate_arrays([clean_accuracy])
    else:  # exact by construction: no interval to draw
        c = c_lo = c_hi = np.array([float(clean_accuracy)])
    clean, clean_lo, clean_hi = (np.repeat(a, len(eps)) for a in (c, c_lo, c_hi))
    clean_err = asymmetric_yerr(clean, clean_lo, clean_hi) if isinstance(clean_accuracy, Mapping) else None
    width = _bar_width(eps) / 2
    n = rows[0].get("n")

    fig, ax = plt.subplots(figsize=(12, 6), layout="constrained")
    kw = dict(width=width, capsize=3, error_kw={"elinewidth": 1.2, "ecolor": "black"}, edgecolor="black", linewidth=0.6)
    clean_label = ("clean accuracy" if clean_err is not None
                   else f"clean accuracy ({short_number(c[0])}% by construction)")
    ax.bar(eps - width / 2, clean, yerr=clean_err, color=CLEAN, label=clean_label, **kw)
    ax.bar(eps + width / 2, adv, yerr=asymmetric_yerr(adv, adv_lo, adv_hi), color=ADV,
           label="adversarial accuracy (FGSM)", **kw)
    _label_bars(ax, eps - width / 2, clean, clean_hi, fontsize=9.5)
    _label_bars(ax, eps + width / 2, adv, adv_hi, fontsize=9.5)
    label_eps_axis(ax, NORMALIZED_EPS_LABEL, ticks=eps, pixel_axis=True)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 125)
    ax.grid(axis="x", visible=False)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("Figure 1: clean vs adversarial accuracy under FGSM"
                 + (f" ({n} correctly classified test images)" if n else ""))
    ax.legend(loc="upper right", ncols=3, title=f"error bars: {CI_NOTE}", title_fontsize=10)
    return fig


@styled
def plot_asr_bars(rows: Sequence[Mapping]) -> Figure:
    """Figure 2 (graph2): attack success rate per eps, bars with values and 95% Wilson error bars.

    Args:
        rows: :func:`advlib.metrics.sweep_metrics` rows; reads ``eps`` (normalized units) and ``asr`` (rate dict,
            percent of the attacked images that FGSM turns into mistakes).
    """
    rows = check_rows(rows, ("eps", "asr"))
    eps = np.array([float(r["eps"]) for r in rows])
    asr, lo, hi = rate_arrays([r["asr"] for r in rows])
    n = rows[0].get("n")

    fig, ax = plt.subplots(figsize=(11, 6), layout="constrained")
    ax.bar(eps, asr, width=_bar_width(eps) * 0.7, yerr=asymmetric_yerr(asr, lo, hi), capsize=4, color=ADV,
           edgecolor="black", linewidth=0.6, error_kw={"elinewidth": 1.2}, label="attack success rate")
    _label_bars(ax, eps, asr, hi, fontsize=10.5)
    label_eps_axis(ax, NORMALIZED_EPS_LABEL, ticks=eps, pixel_axis=True)
    ax.set_ylabel("attack success rate (%)")
    ax.set_ylim(0, 110)
    ax.grid(axis="x", visible=False)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("Figure 2: FGSM attack success rate" + (f" ({n} correctly classified test images)" if n else ""))
    ax.legend(loc="upper left", title=f"error bars: {CI_NOTE}", title_fontsize=10)
    return fig


@styled
def plot_eps_vs_accuracy(rows: Sequence[Mapping], clean_accuracy: float = 100.0) -> Figure:
    """Figure 3 (graph3): clean (flat) and adversarial accuracy vs eps, with the adversarial curve's 95% Wilson band.

    Args:
        rows: :func:`advlib.metrics.sweep_metrics` rows (``eps`` normalized, ``adv_accuracy`` rate dict, percent).
        clean_accuracy: percent; 100 by construction on the correctly classified set.
    """
    rows = check_rows(rows, ("eps", "adv_accuracy"))
    eps = np.array([float(r["eps"]) for r in rows])
    fig, ax = plt.subplots(figsize=(10, 6), layout="constrained")
    ax.plot(eps, np.full_like(eps, float(clean_accuracy)), color=CLEAN, marker="o", linewidth=2,
            label=f"clean accuracy ({short_number(clean_accuracy)}% by construction)")
    rate_curve(ax, eps, [r["adv_accuracy"] for r in rows], ADV, "adversarial accuracy (FGSM)")
    label_eps_axis(ax, NORMALIZED_EPS_LABEL, pixel_axis=True)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 105)
    ax.set_title("Figure 3: accuracy vs FGSM strength")
    legend_with_band(ax, loc="lower left")
    return fig


@styled
def plot_eps_vs_asr(rows: Sequence[Mapping]) -> Figure:
    """Figure 4 (graph4): attack success rate vs eps with its 95% Wilson band.

    Args:
        rows: :func:`advlib.metrics.sweep_metrics` rows (``eps`` normalized, ``asr`` rate dict, percent).
    """
    rows = check_rows(rows, ("eps", "asr"))
    eps = np.array([float(r["eps"]) for r in rows])
    fig, ax = plt.subplots(figsize=(10, 6), layout="constrained")
    rate_curve(ax, eps, [r["asr"] for r in rows], ADV, "attack success rate (FGSM)")
    label_eps_axis(ax, NORMALIZED_EPS_LABEL, pixel_axis=True)
    ax.set_ylabel("attack success rate (%)")
    ax.set_ylim(-2, 105)
    ax.set_title("Figure 4: attack success rate vs FGSM strength")
    legend_with_band(ax, loc="upper left")
    return fig


def plot_image_grid(x: Any, x_adv: Any, y: Any, pred_clean: Any, pred_adv: Any, eps: float, *,
                    classes: Sequence[str] | None = None) -> Figure:
    """Figure 5 (graph5): :func:`advlib.viz.plot_image_grid` (originals, FGSM images, perturbation x_adv - x)
    under the report's figure number. Arguments as there: (K, 1, 32, 32) images in [-1, 1], (K,) int labels, eps
    normalized, classes the class names the titles show (None: the label numbers)."""
    return viz.plot_image_grid(x, x_adv, y, pred_clean, pred_adv, eps, title="Figure 5: FGSM adversarial examples",
                               classes=classes)


@styled
def plot_training_curves(history: Mapping) -> Figure:
    """Figure 6 (graph6): training loss (left) and accuracy per epoch (right).

    Args:
        history: :meth:`advlib.train.History.to_dict` output: ``step_loss`` (one mean cross-entropy per optimizer
            step), ``epoch_loss`` (mean per epoch), ``train_accuracy`` and ``test_accuracy`` (percent per epoch),
            optionally ``pgd_check_accuracy`` (percent per epoch, adversarial training), drawn when non-empty.
    """
    step_loss = np.asarray(history.get("step_loss", []), dtype=float)
    epoch_loss = np.asarray(history.get("epoch_loss", []), dtype=float)
    train_acc = np.asarray(history.get("train_accuracy", []), dtype=float)
    test_acc = np.asarray(history.get("test_accuracy", []), dtype=float)
    pgd_acc = np.asarray(history.get("pgd_check_accuracy", []) or [], dtype=float)
    n_epochs = len(epoch_loss)
    if n_epochs == 0 or len(step_loss) == 0:
        raise ValueError("history needs non-empty step_loss and epoch_loss (see advlib.train.History)")
    steps_per_epoch = math.ceil(len(step_loss) / n_epochs)
    step_epoch = np.arange(1, len(step_loss) + 1) / steps_per_epoch  # fractional epoch at the end of each step
    epochs = np.arange(1, n_epochs + 1)

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(14, 5.8), layout="constrained")
    ax_loss.plot(step_epoch, step_loss, color=LOSS, alpha=0.25, linewidth=0.6, label="loss per optimizer step")
    window = max(1, min(50, len(step_loss) // 20))
    if window > 1:
        smooth = np.convolve(step_loss, np.ones(window) / window, mode="valid")
        ax_loss.plot(step_epoch[window - 1:], smooth, color=LOSS, linewidth=1.8,
                     label=f"moving average ({window} steps)")
    ax_loss.plot(epochs, epoch_loss, "o", color="black", markersize=8, label="mean loss of the epoch", zorder=3)
    for e, v in zip(epochs, epoch_loss):
        ax_loss.annotate(f"{v:.3f}", (e, v), xytext=(-8, 10), textcoords="offset points", ha="right", fontsize=11,
                         fontweight="bold")
    if (step_loss > 0).all():
        log_y(ax_loss)
        ax_loss.set_ylabel("cross-entropy loss (log scale)")
    else:
        ax_loss.set_ylabel("cross-entropy loss")
    ax_loss.set_xlabel(f"epoch (fractional: optimizer step / {steps_per_epoch} steps per epoch)")
    ax_loss.set_xlim(0, n_epochs + 0.05)
    ax_loss.set_xticks(range(0, n_epochs + 1))
    ax_loss.set_title("Training loss")
    ax_loss.legend(loc="upper right")

    series = [(train_acc, "train accuracy", NEUTRAL, "s"), (test_acc, "test accuracy (clean)", CLEAN, "o")]
    if len(pgd_acc):
        series.append((pgd_acc, "PGD-10 accuracy (held-out check)", ADV, "^"))
    for values, label, colour, marker in series:
        if len(values):
            ax_acc.plot(epochs[:len(values)], values, marker=marker, color=colour, linewidth=2, markersize=7,
                        label=f"{label}: final {values[-1]:.2f}%")
    ax_acc.set_xlabel("epoch")
    ax_acc.set_xticks(epochs)
    ax_acc.set_xlim(0.8, n_epochs + 0.2)
    ax_acc.set_ylabel("accuracy (%)")
    ax_acc.set_title("Accuracy after each epoch")
    ax_acc.legend(loc="best")
    fig.suptitle("Figure 6: training curves")
    return fig


@styled
def plot_confusion_matrices(cm_clean: Any, cm_adv: Any, eps: float, *, classes: Sequence[str] | None = None) -> Figure:
    """Figure 7 (graph7): clean and FGSM confusion matrices side by side, counts annotated (blank = 0).

    Args:
        cm_clean, cm_adv: (C, C) int counts (C = 10 in the study), element (i, j) = images of true label i
            predicted as j (:func:`advlib.metrics.confusion_matrix`).
        eps: the attack's eps, normalized units.
        classes: the C class names for the tick labels (label k -> classes[k]); None (or "0".."9"): the label
            numbers. Names longer than :data:`advlib.viz.SHORT_NAME` characters are set smaller, the column names
            rotated by 45°.
    """
    import seaborn as sns

    mats = [to_numpy(cm_clean).astype(int), to_numpy(cm_adv).astype(int)]
    for m, name in zip(mats, ("cm_clean", "cm_adv")):
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"{name} must be a square (C, C) count matrix, got shape {m.shape}")
    if mats[0].shape != mats[1].shape:
        raise ValueError(f"cm_clean and cm_adv must count the same classes, got shapes {mats[0].shape} and "
                         f"{mats[1].shape}")
    names = check_classes(classes)  # a sequence of names, or None for the numbers
    if classes is not None and len(classes) != len(mats[0]):
        raise ValueError(f"classes names {len(classes)} classes, the matrices count {len(mats[0])}: pass one name "
                         "per row of the matrix")
    classes = names
    ticks = {} if classes is None else {"xticklabels": list(classes), "yticklabels": list(classes)}
    fig, axes = plt.subplots(1, 2, figsize=(16, 7.8 if long_names(classes) else 7), layout="constrained")
    titles = ["Clean", f"FGSM {eps_text(eps, short=True)}"]
    for ax, m, title, cmap in zip(axes, mats, titles, ("Greens", "Reds")):
        annot = np.where(m > 0, m.astype(str), "")
        sns.heatmap(m, ax=ax, annot=annot, fmt="", cmap=cmap, vmin=0, square=True, linewidths=0.5, linecolor="white",
                    cbar_kws={"label": "images", "shrink": 0.8}, annot_kws={"fontsize": 9.5}, **ticks)
        acc = 100.0 * np.trace(m) / max(1, m.sum())
        ax.set_title(f"{title}: accuracy {acc:.1f}% of {m.sum()} images")
        ax.set_xlabel("predicted label")
        ax.set_ylabel("true label")
        ax.tick_params(axis="y", rotation=0)
        if long_names(classes):  # long names: smaller, the column names slanted so that neighbours do not overlap
            ax.tick_params(labelsize=9.5)
            plt.setp(ax.get_xticklabels(), rotation=45, ha="right", rotation_mode="anchor")
        ax.grid(False)
    fig.suptitle("Figure 7: confusion matrices (rows: true label, columns: predicted label; blank cells: 0)")
    return fig


@styled
def plot_confidence_histograms(clean_conf: Any, adv_conf: Any, eps: float) -> Figure:
    """Figure 8 (graph8): distributions of max-softmax confidence, clean vs FGSM, with dashed lines at the means.

    Args:
        clean_conf, adv_conf: (N,) max softmax probabilities as FRACTIONS in [0, 1] (plotted in percent).
        eps: the attack's eps, normalized units.
    """
    clean, adv = to_numpy(clean_conf).astype(float).ravel(), to_numpy(adv_conf).astype(float).ravel()
    for a, name in ((clean, "clean_conf"), (adv, "adv_conf")):
        if len(a) == 0:
            raise ValueError(f"{name} is empty")
        if a.min() < 0 or a.max() > 1 + 1e-6:
            raise ValueError(f"{name} must be fractions in [0, 1] (softmax probabilities), got "
                             f"[{a.min():.3g}, {a.max():.3g}]; divide percentages by 100")
    clean, adv = 100 * clean, 100 * adv
    bins = np.linspace(0, 100, 51)
    fig, ax = plt.subplots(figsize=(11, 6), layout="constrained")
    ax.hist(clean, bins=bins, color=CLEAN, alpha=0.55, edgecolor=CLEAN, label=f"clean (n = {len(clean)})")
    ax.hist(adv, bins=bins, color=ADV, alpha=0.55, edgecolor=ADV, label=f"FGSM adversarial (n = {len(adv)})")
    ax.axvline(clean.mean(), color=CLEAN, linestyle="--", linewidth=2, label=f"clean mean {clean.mean():.2f}%")
    ax.axvline(adv.mean(), color=ADV, linestyle="--", linewidth=2, label=f"adversarial mean {adv.mean():.2f}%")
    log_y(ax)
    ax.set_xlim(0, 100)
    ax.set_xlabel("max-softmax confidence (%)")
    ax.set_ylabel("number of images (log scale)")
    ax.set_title(f"Figure 8: confidence, clean vs FGSM, {eps_text(eps, short=True)}")
    ax.legend(loc="upper left")
    return fig


@styled
def plot_sample_predictions(x: Any, y: Any, pred: Any, ncols: int = 8, *,
                            classes: Sequence[str] | None = None) -> Figure:
    """Figure 9 (sample_predictions): test images titled "true / pred", mistakes in red.

    Args:
        x: (K, 1, 32, 32) images in [-1, 1]. y, pred: (K,) int labels 0..C-1.
        ncols: images per row; the grid has ceil(K / ncols) rows and exactly K axes.
        classes: the class names the titles show (label k -> classes[k]); None (or "0".."9"): the label numbers.
            Long names put each title on two lines ("true t" over "pred p").
    """
    x = check_images(x, "x")
    k = len(x)
    y, pred = check_labels(y, k, "y"), check_labels(pred, k, "pred")
    classes = check_classes(classes, y, pred)
    ncols = max(1, min(int(ncols), k))
    nrows = math.ceil(k / ncols)
    row = 1.85 + (NAME_TITLE_HEIGHT if long_names(classes) else 0)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, row * nrows + 0.6), layout="constrained",
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= k:
            ax.remove()
            continue
        show_image(ax, x[i])
        prediction_title(ax, y[i], pred[i], arrow=False, classes=classes)
    wrong = int((y != pred).sum())
    fig.suptitle(f"Figure 9: test predictions ({wrong} of {k} wrong, in red)")
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Beyond the report


@styled
def plot_confidence_roc(fpr: Any, tpr: Any, auc: float, tpr_at_5fpr: float, eps: float) -> Figure:
    """Figure 12 (graph12): ROC of max-softmax confidence as a detector of FGSM images.

    Args:
        fpr, tpr: (T,) ROC points as FRACTIONS in [0, 1] (:func:`advlib.metrics.roc_curve`); plotted in percent.
            Positive = adversarial image, flagged when its confidence is at or below the threshold.
        auc: area under the ROC curve, fraction in [0, 1] (0.5 = chance).
        tpr_at_5fpr: true-positive rate at 5% false-positive rate, fraction in [0, 1].
        eps: the attack's eps, normalized units.
    """
    fpr, tpr = to_numpy(fpr).astype(float).ravel(), to_numpy(tpr).astype(float).ravel()
    if fpr.shape != tpr.shape or len(fpr) < 2:
        raise ValueError(f"fpr and tpr must be matching (T,) arrays with T >= 2, got {fpr.shape} and {tpr.shape}")
    for a, name in ((fpr, "fpr"), (tpr, "tpr"), (np.array([auc]), "auc"), (np.array([tpr_at_5fpr]), "tpr_at_5fpr")):
        if a.min() < 0 or a.max() > 1 + 1e-9:
            raise ValueError(f"{name} must be a fraction in [0, 1], got [{a.min():.3g}, {a.max():.3g}]")
    fig, ax = plt.subplots(figsize=(8.5, 8), layout="constrained")
    ax.plot(100 * fpr, 100 * tpr, color=ADV, linewidth=2.2, label=f"max-softmax confidence (AUC = {auc:.3f})")
    ax.plot([0, 100], [0, 100], color="grey", linestyle=":", linewidth=1.5, label="chance (AUC = 0.5)")
    ax.axvline(5, color="black", linestyle="--", linewidth=1, alpha=0.6)
    ax.plot([5], [100 * tpr_at_5fpr], "o", color="black", markersize=9, zorder=4,
            label=f"at 5% FPR: TPR = {100 * tpr_at_5fpr:.1f}%")
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    ax.set_aspect("equal")
    ax.set_xlabel("false-positive rate (% of clean images flagged)")
    ax.set_ylabel("true-positive rate (% of FGSM images flagged)")
    ax.set_title("Figure 12: max-softmax confidence as an attack detector\n"
                 f"FGSM {eps_text(eps, short=True)}; flag an image when its confidence ≤ threshold", fontsize=12.5)
    ax.legend(loc="lower right")
    return fig
