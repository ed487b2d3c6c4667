"""Figures of the study: the original report's Figures 1-9 (graph1..graph8, sample_predictions) and the new ones
(graph10 adversarial training, graph11 seed spread, graph12 confidence as a detector), and the picture of the eps
explorer (:func:`plot_explorer`, the same image grid as Figure 5 plus the accuracy curve).

Every function takes plain data (lists, dicts, numpy arrays or torch tensors) and returns a matplotlib
``Figure``; it never shows or saves. :func:`save_figure` writes one atomically and closes it.

Conventions:
- eps is in *normalized* units (images in [-1, 1]), as in the original report; every eps axis says so and
  carries a secondary top axis in [0, 1] pixel units (eps_pixel = eps * 0.5, :func:`advlib.attacks.to_pixel_eps`).
- Rates are percentages (0..100). A rate is a dict ``{"value", "ci_low", "ci_high", ...}`` as made by
  :func:`advlib.metrics.rate`; its 95% Wilson interval is drawn as error bars (bars) or a shaded band (curves).
- Colours: clean = green, adversarial = red, adversarially trained (robust) model = blue, standard model = orange.
- The perturbation x_adv - x has one colour scale everywhere (Figure 5, the explorer's picture and its HTML views):
  :data:`PERTURBATION_CMAP` from -:data:`PERTURBATION_LIMIT` to +:data:`PERTURBATION_LIMIT`, stated on the colour bar.
"""
from __future__ import annotations

import functools
import itertools
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import matplotlib as mpl
import matplotlib.pyplot as plt
import matplotlib.ticker as mticker
import numpy as np
from matplotlib.figure import Figure

from advlib.attacks import to_normalized_eps, to_pixel_eps
from advlib.io import atomic_savefig

CLEAN = "#2ca02c"  # green
ADV = "#d62728"  # red
ROBUST = "#1f77b4"  # blue
STANDARD = "#ff7f0e"  # orange
NEUTRAL = "#444444"  # dark grey (training accuracy, seeds' mean outline)
LOSS = "#6a3d9a"  # purple
MODEL_COLOURS = {"standard": STANDARD, "robust": ROBUST}
ATTACK_STYLES = {"fgsm": ("-", "o"), "pgd": ("--", "s"), "bim": (":", "^")}
BAND_ALPHA = 0.2

EPS_LABEL = "ε (normalized units, images in [-1, 1])"
PIXEL_LABEL = "ε in [0, 1] pixel units"
CI_NOTE = "95% Wilson interval"

# The perturbation's colour scale, shared by every view of x_adv - x. FGSM moves a pixel by +-eps (less where the
# image clamps at -1 or 1), so at every eps from this limit up the picture shows the sign pattern at full colour.
PERTURBATION_LIMIT = 0.1  # normalized units (= 0.05 in [0, 1] pixel units): the colours saturate here
PERTURBATION_CMAP = "RdBu_r"  # white = unchanged, red = brighter, blue = darker

# Sizes chosen for figures about 10-13 inches wide saved at dpi=150: text stays legible when the PNG is shown
# at half size in a report.
_STYLE = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.labelsize": 12,
    "xtick.labelsize": 10.5,
    "ytick.labelsize": 10.5,
    "legend.fontsize": 10.5,
    "figure.titlesize": 14,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.right": False,
}


def _styled(func: Callable[..., Figure]) -> Callable[..., Figure]:
    """Build the figure under the module style, without changing the caller's rcParams."""
    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        with mpl.rc_context(_STYLE):
            return func(*args, **kwargs)
    return wrapper


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 150) -> Path:
    """Write fig atomically to path (format from the suffix, PNG by default) with a tight bounding box, then close
    it. Returns the path written."""
    try:
        return atomic_savefig(fig, path, dpi=dpi, bbox_inches="tight")
    finally:
        plt.close(fig)


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def _np(a: Any) -> np.ndarray:
    """numpy copy of a list, array or (possibly GPU, possibly grad-tracking) torch tensor."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _num(v: float) -> str:
    """Short, stable number text: 0.15 -> '0.15', 0.30000000000000004 -> '0.3'."""
    return f"{round(float(v), 4):g}"


def eps_text(eps: float, short: bool = False) -> str:
    """'ε = 0.15 (0.075 px)' when short, else both units spelled out."""
    if short:
        return f"ε = {_num(eps)} ({_num(to_pixel_eps(eps))} px)"
    return f"ε = {_num(eps)} (normalized, images in [-1, 1]) = {_num(to_pixel_eps(eps))} in [0, 1] pixel units"


def label_eps_axis(ax, ticks: Sequence[float] | None = None):
    """Label ax's x axis (data in normalized eps) and add a top axis in [0, 1] pixel units; with ticks, put ticks
    at those eps on both axes. Returns the secondary axis."""
    ax.set_xlabel(EPS_LABEL)
    sec = ax.secondary_xaxis("top", functions=(to_pixel_eps, to_normalized_eps))
    sec.set_xlabel(PIXEL_LABEL)
    if ticks is not None:
        ax.set_xticks(list(ticks), [_num(e) for e in ticks])
        sec.set_xticks([to_pixel_eps(e) for e in ticks], [_num(to_pixel_eps(e)) for e in ticks])
    return sec


def perturbation_label() -> str:
    """What the perturbation colours mean, in both units (the colour bar's label in every view)."""
    return (f"x_adv − x, normalized units; saturates at ±{_num(PERTURBATION_LIMIT)} "
            f"(±{_num(to_pixel_eps(PERTURBATION_LIMIT))} in [0, 1] px)")


def perturbation_rgb(delta: Any) -> np.ndarray:
    """(..., H, W) perturbation x_adv - x (normalized units) -> (..., H, W, 3) uint8 RGB on the shared colour scale,
    the colours the figures draw; for the views that are not matplotlib (the explorer's HTML)."""
    norm = mpl.colors.Normalize(-PERTURBATION_LIMIT, PERTURBATION_LIMIT, clip=True)
    return np.round(255 * mpl.colormaps[PERTURBATION_CMAP](norm(_np(delta)))[..., :3]).astype(np.uint8)


def perturbation_css_gradient(stops: int = 9) -> str:
    """The colour scale as a CSS linear-gradient, from -PERTURBATION_LIMIT (left) to +PERTURBATION_LIMIT."""
    colours = perturbation_rgb(np.linspace(-PERTURBATION_LIMIT, PERTURBATION_LIMIT, stops)[None])[0]
    return "linear-gradient(to right, " + ", ".join(f"rgb({r},{g},{b})" for r, g, b in colours) + ")"


def _rate_arrays(rates: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """value, ci_low, ci_high (percent) of a sequence of rate dicts."""
    for r in rates:
        for key in ("value", "ci_low", "ci_high"):
            if key not in r:
                raise ValueError(f"a rate needs 'value', 'ci_low' and 'ci_high' (advlib.metrics.rate), got {sorted(r)}")
    return (np.array([float(r["value"]) for r in rates]), np.array([float(r["ci_low"]) for r in rates]),
            np.array([float(r["ci_high"]) for r in rates]))


def _yerr(value: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(2, n) asymmetric error-bar lengths, never negative (guards float round-off)."""
    return np.clip(np.vstack([value - lo, hi - value]), 0, None)


def _check_rows(rows: Sequence[Mapping], keys: Sequence[str] = ("eps",)) -> list[Mapping]:
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: pass the list returned by advlib.metrics.sweep_metrics")
    for key in keys:
        if any(key not in r for r in rows):
            raise ValueError(f"every row needs the key {key!r} (see advlib.metrics.sweep_metrics)")
    return sorted(rows, key=lambda r: float(r["eps"]))


def _bar_width(eps: np.ndarray) -> float:
    """Width of a whole group of bars: 80% of the smallest gap between eps values."""
    gaps = np.diff(np.unique(eps))
    return 0.8 * (gaps.min() if len(gaps) else 0.1)


def _label_bars(ax, x: np.ndarray, value: np.ndarray, top: np.ndarray, pad: float = 1.5, **kwargs) -> None:
    """Write 'v%' above each bar, clear of its error bar."""
    for xi, v, t in zip(x, value, top):
        ax.text(xi, t + pad, f"{v:.1f}%", ha="center", va="bottom", **kwargs)


def _images(x: Any, name: str) -> np.ndarray:
    """(K, H, W) numpy images from (K, 1, H, W) or (K, H, W), checked to lie in [-1, 1]."""
    a = _np(x).astype(np.float32)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or len(a) == 0:
        raise ValueError(f"{name} must have shape (K, 1, 32, 32) with K >= 1, got {tuple(_np(x).shape)}")
    if a.min() < -1 - 1e-5 or a.max() > 1 + 1e-5:
        raise ValueError(f"{name} must lie in the normalized range [-1, 1], got [{a.min():.3g}, {a.max():.3g}]")
    return a


def _labels(a: Any, k: int, name: str) -> np.ndarray:
    out = _np(a).astype(int).reshape(-1)
    if len(out) != k:
        raise ValueError(f"{name} must have {k} labels, one per image, got {len(out)}")
    return out


def _show(ax, img: np.ndarray, **kwargs):
    im = ax.imshow(img, **{"cmap": "gray", "vmin": -1, "vmax": 1, "interpolation": "nearest", **kwargs})
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return im


def _log_y(ax) -> None:
    """Log-scale y axis with plain tick labels (0.1, 1, 10) instead of powers of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))


def _legend_band(ax, **kwargs):
    """Legend with one grey patch explaining the shaded bands."""
    from matplotlib.patches import Patch

    handles, labels = ax.get_legend_handles_labels()
    handles.append(Patch(color="grey", alpha=BAND_ALPHA + 0.1))
    labels.append(kwargs.pop("band_label", f"shaded: {CI_NOTE}"))
    return ax.legend(handles, labels, **kwargs)


# ---------------------------------------------------------------------------------------------------------------
# The original report's figures


@_styled
def plot_accuracy_bars(rows: Sequence[Mapping], clean_accuracy: float | Mapping = 100.0) -> Figure:
    """Figure 1 (graph1): clean vs adversarial accuracy per eps, grouped bars with values and 95% Wilson error bars.

    Args:
        rows: :func:`advlib.metrics.sweep_metrics` rows; reads ``eps`` (normalized units) and ``adv_accuracy``
            (rate dict, percent).
        clean_accuracy: accuracy on the clean images, percent; 100 by construction on the correctly classified
            set the study attacks. A rate dict instead also draws its interval.
    """
    rows = _check_rows(rows, ("eps", "adv_accuracy"))
    eps = np.array([float(r["eps"]) for r in rows])
    adv, adv_lo, adv_hi = _rate_arrays([r["adv_accuracy"] for r in rows])
    if isinstance(clean_accuracy, Mapping):
        c, c_lo, c_hi = _rate_arrays([clean_accuracy])
    else:  # exact by construction: no interval to draw
        c = c_lo = c_hi = np.array([float(clean_accuracy)])
    clean, clean_lo, clean_hi = (np.repeat(a, len(eps)) for a in (c, c_lo, c_hi))
    clean_err = _yerr(clean, clean_lo, clean_hi) if isinstance(clean_accuracy, Mapping) else None
    width = _bar_width(eps) / 2
    n = rows[0].get("n")

    fig, ax = plt.subplots(figsize=(12, 6), layout="constrained")
    kw = dict(width=width, capsize=3, error_kw={"elinewidth": 1.2, "ecolor": "black"}, edgecolor="black", linewidth=0.6)
    ax.bar(eps - width / 2, clean, yerr=clean_err, color=CLEAN,
           label="clean accuracy" if clean_err is not None else f"clean accuracy ({_num(c[0])}% by construction)", **kw)
    ax.bar(eps + width / 2, adv, yerr=_yerr(adv, adv_lo, adv_hi), color=ADV, label="adversarial accuracy (FGSM)", **kw)
    _label_bars(ax, eps - width / 2, clean, clean_hi, fontsize=9.5)
    _label_bars(ax, eps + width / 2, adv, adv_hi, fontsize=9.5)
    label_eps_axis(ax, ticks=eps)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 125)
    ax.grid(axis="x", visible=False)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("Figure 1: clean vs adversarial accuracy under FGSM"
                 + (f" ({n} correctly classified test images)" if n else ""))
    ax.legend(loc="upper right", ncols=3, title=f"error bars: {CI_NOTE}", title_fontsize=10)
    return fig


@_styled
def plot_asr_bars(rows: Sequence[Mapping]) -> Figure:
    """Figure 2 (graph2): attack success rate per eps, bars with values and 95% Wilson error bars.

    Args:
        rows: :func:`advlib.metrics.sweep_metrics` rows; reads ``eps`` (normalized units) and ``asr`` (rate dict,
            percent of the attacked images that FGSM turns into mistakes).
    """
    rows = _check_rows(rows, ("eps", "asr"))
    eps = np.array([float(r["eps"]) for r in rows])
    asr, lo, hi = _rate_arrays([r["asr"] for r in rows])
    n = rows[0].get("n")

    fig, ax = plt.subplots(figsize=(11, 6), layout="constrained")
    ax.bar(eps, asr, width=_bar_width(eps) * 0.7, yerr=_yerr(asr, lo, hi), capsize=4, color=ADV, edgecolor="black",
           linewidth=0.6, error_kw={"elinewidth": 1.2}, label="attack success rate")
    _label_bars(ax, eps, asr, hi, fontsize=10.5)
    label_eps_axis(ax, ticks=eps)
    ax.set_ylabel("attack success rate (%)")
    ax.set_ylim(0, 110)
    ax.grid(axis="x", visible=False)
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("Figure 2: FGSM attack success rate" + (f" ({n} correctly classified test images)" if n else ""))
    ax.legend(loc="upper left", title=f"error bars: {CI_NOTE}", title_fontsize=10)
    return fig


def _curve(ax, eps: np.ndarray, rates: Sequence[Mapping], colour: str, label: str, **kwargs) -> None:
    value, lo, hi = _rate_arrays(rates)
    ax.fill_between(eps, lo, hi, color=colour, alpha=BAND_ALPHA, linewidth=0)
    ax.plot(eps, value, color=colour, label=label, **{"marker": "o", "linewidth": 2, "markersize": 6, **kwargs})


@_styled
def plot_eps_vs_accuracy(rows: Sequence[Mapping], clean_accuracy: float = 100.0) -> Figure:
    """Figure 3 (graph3): clean (flat) and adversarial accuracy vs eps, with the adversarial curve's 95% Wilson band.

    Args:
        rows: :func:`advlib.metrics.sweep_metrics` rows (``eps`` normalized, ``adv_accuracy`` rate dict, percent).
        clean_accuracy: percent; 100 by construction on the correctly classified set.
    """
    rows = _check_rows(rows, ("eps", "adv_accuracy"))
    eps = np.array([float(r["eps"]) for r in rows])
    fig, ax = plt.subplots(figsize=(10, 6), layout="constrained")
    ax.plot(eps, np.full_like(eps, float(clean_accuracy)), color=CLEAN, marker="o", linewidth=2,
            label=f"clean accuracy ({_num(clean_accuracy)}% by construction)")
    _curve(ax, eps, [r["adv_accuracy"] for r in rows], ADV, "adversarial accuracy (FGSM)")
    label_eps_axis(ax)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 105)
    ax.set_title("Figure 3: accuracy vs FGSM strength")
    _legend_band(ax, loc="lower left")
    return fig


@_styled
def plot_eps_vs_asr(rows: Sequence[Mapping]) -> Figure:
    """Figure 4 (graph4): attack success rate vs eps with its 95% Wilson band.

    Args:
        rows: :func:`advlib.metrics.sweep_metrics` rows (``eps`` normalized, ``asr`` rate dict, percent).
    """
    rows = _check_rows(rows, ("eps", "asr"))
    eps = np.array([float(r["eps"]) for r in rows])
    fig, ax = plt.subplots(figsize=(10, 6), layout="constrained")
    _curve(ax, eps, [r["asr"] for r in rows], ADV, "attack success rate (FGSM)")
    label_eps_axis(ax)
    ax.set_ylabel("attack success rate (%)")
    ax.set_ylim(-2, 105)
    ax.set_title("Figure 4: attack success rate vs FGSM strength")
    _legend_band(ax, loc="upper left")
    return fig


def _prediction_title(ax, true: int, pred: int, arrow: bool = True) -> None:
    wrong = int(true) != int(pred)
    text = f"true {true} → pred {pred}" if arrow else f"true {true} / pred {pred}"
    ax.set_title(text, color=ADV if wrong else "black", fontweight="bold" if wrong else "normal", fontsize=11)


def _image_grid(fig, x: np.ndarray, x_adv: np.ndarray, y: np.ndarray, pred_clean: np.ndarray,
                pred_adv: np.ndarray) -> None:
    """Originals, adversarial images and perturbation (shared colour scale, colour bar) as 3 rows of fig (a Figure
    or SubFigure). Arguments as checked by :func:`plot_image_grid`."""
    k = len(x)
    axes = fig.subplots(3, k, squeeze=False)
    for j in range(k):
        _show(axes[0, j], x[j])
        _prediction_title(axes[0, j], y[j], pred_clean[j])
        _show(axes[1, j], x_adv[j])
        _prediction_title(axes[1, j], y[j], pred_adv[j])
        im = _show(axes[2, j], x_adv[j] - x[j], cmap=PERTURBATION_CMAP, vmin=-PERTURBATION_LIMIT,
                   vmax=PERTURBATION_LIMIT)
    for row, text in enumerate(("original", "FGSM adversarial", "perturbation")):
        axes[row, 0].set_ylabel(text, fontsize=12)
    cbar = fig.colorbar(im, ax=axes[2, :].tolist(), shrink=0.9, aspect=12)
    cbar.set_label(perturbation_label().replace("; ", "\n"), fontsize=10)


def _grid_inputs(x: Any, x_adv: Any, y: Any, pred_clean: Any, pred_adv: Any) -> tuple[np.ndarray, ...]:
    x, x_adv = _images(x, "x"), _images(x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {x.shape} and {x_adv.shape}")
    k = len(x)
    return (x, x_adv, *(_labels(a, k, n) for a, n in ((y, "y"), (pred_clean, "pred_clean"), (pred_adv, "pred_adv"))))


@_styled
def plot_image_grid(x: Any, x_adv: Any, y: Any, pred_clean: Any, pred_adv: Any, eps: float) -> Figure:
    """Figure 5 (graph5): originals (top), FGSM images (middle), perturbation x_adv - x (bottom).

    Args:
        x, x_adv: (K, 1, 32, 32) images in [-1, 1] (tensors or arrays, any device).
        y, pred_clean, pred_adv: (K,) int labels 0..9. Wrong predictions get red titles.
        eps: the attack's eps, normalized units.
    The perturbation is drawn on the shared diverging scale (:data:`PERTURBATION_LIMIT`, white = unchanged, red =
    brighter, blue = darker), labelled on its colour bar.
    """
    x, x_adv, y, pred_clean, pred_adv = _grid_inputs(x, x_adv, y, pred_clean, pred_adv)
    fig = plt.figure(figsize=(1.7 * len(x) + 1.5, 6.6), layout="constrained")
    _image_grid(fig, x, x_adv, y, pred_clean, pred_adv)
    fig.suptitle(f"Figure 5: FGSM adversarial examples, {eps_text(eps)}\n"
                 "red titles: misclassified")
    return fig


@_styled
def plot_explorer(state: Mapping, curve_eps: Sequence[float], curve_accuracy: Sequence[float]) -> Figure:
    """The eps explorer at one slider position: Figure 5's image grid over the accuracy curve with a marker.

    Args:
        state: :meth:`advlib.explorer.EpsExplorer.state` output; reads ``x``, ``x_adv`` ((K, 1, 32, 32) in
            [-1, 1]), ``labels``, ``clean_preds``, ``preds`` ((K,) ints), ``eps`` (normalized), ``adv_accuracy``
            (percent) and ``n`` (images behind the accuracy).
        curve_eps, curve_accuracy: the slider's eps grid (normalized, starting at 0) and the adversarial accuracy
            (percent) there.
    """
    x, x_adv, y, pred_clean, pred_adv = _grid_inputs(state["x"], state["x_adv"], state["labels"],
                                                     state["clean_preds"], state["preds"])
    fig = plt.figure(figsize=(1.7 * len(x) + 1.5, 10.5), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2, 1.15])
    _image_grid(top, x, x_adv, y, pred_clean, pred_adv)
    ax = bottom.subplots()
    ax.plot(curve_eps, curve_accuracy, color=ADV, linewidth=2, label="adversarial accuracy (FGSM)")
    ax.axhline(curve_accuracy[0], color=CLEAN, linestyle="--", linewidth=1, label="clean accuracy (ε = 0)")
    ax.plot([state["eps"]], [state["adv_accuracy"]], "o", color="black", markersize=9, label="slider position")
    label_eps_axis(ax)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 105)
    ax.legend(loc="upper right")
    fig.suptitle(f"FGSM {eps_text(state['eps'])}\nadversarial accuracy {state['adv_accuracy']:.1f}% on "
                 f"{state['n']} images; red titles: misclassified")
    return fig


@_styled
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
        _log_y(ax_loss)
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


@_styled
def plot_confusion_matrices(cm_clean: Any, cm_adv: Any, eps: float) -> Figure:
    """Figure 7 (graph7): clean and FGSM confusion matrices side by side, counts annotated (blank = 0).

    Args:
        cm_clean, cm_adv: (10, 10) int counts, element (i, j) = images of true label i predicted as j
            (:func:`advlib.metrics.confusion_matrix`).
        eps: the attack's eps, normalized units.
    """
    import seaborn as sns

    mats = [_np(cm_clean).astype(int), _np(cm_adv).astype(int)]
    for m, name in zip(mats, ("cm_clean", "cm_adv")):
        if m.ndim != 2 or m.shape[0] != m.shape[1]:
            raise ValueError(f"{name} must be a square (C, C) count matrix, got shape {m.shape}")
    fig, axes = plt.subplots(1, 2, figsize=(16, 7), layout="constrained")
    titles = ["Clean", f"FGSM {eps_text(eps, short=True)}"]
    for ax, m, title, cmap in zip(axes, mats, titles, ("Greens", "Reds")):
        annot = np.where(m > 0, m.astype(str), "")
        sns.heatmap(m, ax=ax, annot=annot, fmt="", cmap=cmap, vmin=0, square=True, linewidths=0.5, linecolor="white",
                    cbar_kws={"label": "images", "shrink": 0.8}, annot_kws={"fontsize": 9.5})
        acc = 100.0 * np.trace(m) / max(1, m.sum())
        ax.set_title(f"{title}: accuracy {acc:.1f}% of {m.sum()} images")
        ax.set_xlabel("predicted label")
        ax.set_ylabel("true label")
        ax.tick_params(axis="y", rotation=0)
        ax.grid(False)
    fig.suptitle("Figure 7: confusion matrices (rows: true label, columns: predicted label; blank cells: 0)")
    return fig


@_styled
def plot_confidence_histograms(clean_conf: Any, adv_conf: Any, eps: float) -> Figure:
    """Figure 8 (graph8): distributions of max-softmax confidence, clean vs FGSM, with dashed lines at the means.

    Args:
        clean_conf, adv_conf: (N,) max softmax probabilities as FRACTIONS in [0, 1] (plotted in percent).
        eps: the attack's eps, normalized units.
    """
    clean, adv = _np(clean_conf).astype(float).ravel(), _np(adv_conf).astype(float).ravel()
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
    _log_y(ax)
    ax.set_xlim(0, 100)
    ax.set_xlabel("max-softmax confidence (%)")
    ax.set_ylabel("number of images (log scale)")
    ax.set_title(f"Figure 8: confidence, clean vs FGSM, {eps_text(eps, short=True)}")
    ax.legend(loc="upper left")
    return fig


@_styled
def plot_sample_predictions(x: Any, y: Any, pred: Any, ncols: int = 8) -> Figure:
    """Figure 9 (sample_predictions): test images titled "true / pred", mistakes in red.

    Args:
        x: (K, 1, 32, 32) images in [-1, 1]. y, pred: (K,) int labels 0..9.
        ncols: images per row; the grid has ceil(K / ncols) rows and exactly K axes.
    """
    x = _images(x, "x")
    k = len(x)
    y, pred = _labels(y, k, "y"), _labels(pred, k, "pred")
    ncols = max(1, min(int(ncols), k))
    nrows = math.ceil(k / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(1.6 * ncols, 1.85 * nrows + 0.6), layout="constrained",
                             squeeze=False)
    for i, ax in enumerate(axes.flat):
        if i >= k:
            ax.remove()
            continue
        _show(ax, x[i])
        _prediction_title(ax, y[i], pred[i], arrow=False)
    wrong = int((y != pred).sum())
    fig.suptitle(f"Figure 9: test predictions ({wrong} of {k} wrong, in red)")
    return fig


# ---------------------------------------------------------------------------------------------------------------
# Beyond the report


@_styled
def plot_defense_robustness(curves: Mapping[str, Mapping[str, Sequence[Mapping]]], images: str = "") -> Figure:
    """Figure 10 (graph10): accuracy under attack vs eps for a standard and an adversarially trained model.

    Args:
        curves: {model: {attack: [{"eps", "value", "ci_low", "ci_high"}, ...]}}, e.g. models "standard" and
            "robust", attacks "fgsm" and "pgd"; eps normalized, values accuracy in percent with a 95% Wilson
            interval. Colour = model, line style and marker = attack.
        images: which images the curves are on, for the title (e.g. "the first 1,000 test images, unfiltered").
    """
    if not curves:
        raise ValueError("curves is empty: pass {model: {attack: [rate dicts with eps]}}")
    fig, ax = plt.subplots(figsize=(11, 6.5), layout="constrained")
    spare = itertools.cycle(["#9467bd", "#8c564b", "#e377c2", "#17becf"])  # models beyond standard/robust
    spare_styles = itertools.cycle([("-.", "D"), ((0, (1, 1)), "v"), ((0, (5, 1)), "P")])
    styles = dict(ATTACK_STYLES)
    for model, attacks in curves.items():
        colour = MODEL_COLOURS.get(model) or next(spare)
        for attack, points in attacks.items():
            points = _check_rows(points, ("eps",))
            if attack not in styles:
                styles[attack] = next(spare_styles)
            linestyle, marker = styles[attack]
            eps = np.array([float(p["eps"]) for p in points])
            _curve(ax, eps, points, colour, f"{model} model, {attack.upper()}", linestyle=linestyle, marker=marker)
    label_eps_axis(ax)
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Figure 10: does adversarial training help? Accuracy under FGSM and PGD"
                 + (f"\non {images}" if images else ""))
    _legend_band(ax, loc="lower left")
    return fig


@_styled
def plot_adversarial_row(x: Any, x_adv: Any, y: Any, pred_adv: Any, eps: float, title: str) -> Figure:
    """Originals (top row, with their labels) over their adversarial versions (bottom row, with the prediction).

    Args:
        x, x_adv: (K, 1, 32, 32) images in [-1, 1]. y, pred_adv: (K,) int labels 0..9; wrong predictions in red.
        eps: the attack's eps, normalized units (stated in the title in both units).
        title: what is shown, e.g. "Adversarially trained model, PGD-20".
    """
    x, x_adv = _images(x, "x"), _images(x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {x.shape} and {x_adv.shape}")
    k = len(x)
    y, pred_adv = _labels(y, k, "y"), _labels(pred_adv, k, "pred_adv")
    fig, axes = plt.subplots(2, k, figsize=(1.7 * k + 1.0, 4.8), layout="constrained", squeeze=False)
    for j in range(k):
        _show(axes[0, j], x[j])
        axes[0, j].set_title(f"true {y[j]}", fontsize=11)
        _show(axes[1, j], x_adv[j])
        _prediction_title(axes[1, j], y[j], pred_adv[j])
    axes[0, 0].set_ylabel("original", fontsize=12)
    axes[1, 0].set_ylabel("adversarial", fontsize=12)
    wrong = int((y != pred_adv).sum())
    fig.suptitle(f"{title}\n{eps_text(eps)}; {wrong} of {k} fooled (red)")
    return fig


@_styled
def plot_seed_spread(spread: Mapping, reference: Mapping[float, float] | None = None) -> Figure:
    """Figure 11 (graph11): FGSM sweep across training seeds, mean ± 1 standard deviation with each seed drawn thin.

    Args:
        spread: :func:`advlib.metrics.seed_spread` output: ``eps`` (E,) normalized; ``mean``, ``std`` (E,) and
            ``per_seed`` (S, E) adversarial accuracy in percent; ``n_seeds``. The attack success rate panel is
            100 - accuracy (the attacked images are correctly classified).
        reference: optional {eps: adversarial accuracy in percent} of the original report, drawn as black crosses
            (on the ASR panel as 100 - accuracy, the report's definition). Keys may be strings ("0.05").
    """
    missing = {"eps", "mean", "std", "n_seeds", "per_seed"} - set(spread)
    if missing:
        raise ValueError(f"spread lacks {sorted(missing)}: pass advlib.metrics.seed_spread(sweeps)")
    eps = np.asarray(spread["eps"], dtype=float)
    mean, std = np.asarray(spread["mean"], dtype=float), np.asarray(spread["std"], dtype=float)
    per_seed = np.asarray(spread["per_seed"], dtype=float)
    if per_seed.ndim != 2 or per_seed.shape[1] != len(eps) or mean.shape != eps.shape or std.shape != eps.shape:
        raise ValueError(f"spread's per_seed must be (seeds, {len(eps)}) and mean, std ({len(eps)},) like eps, got "
                         f"{per_seed.shape}, {mean.shape}, {std.shape}")
    ref = sorted((float(e), float(v)) for e, v in reference.items()) if reference else None
    fig, axes = plt.subplots(1, 2, figsize=(15, 6.2), layout="constrained")
    panels = [("adversarial accuracy (%)", "Adversarial accuracy", False),
              ("attack success rate (%)", "Attack success rate", True)]
    for ax, (ylabel, title, is_asr) in zip(axes, panels):
        centre, seeds = (100 - mean, 100 - per_seed) if is_asr else (mean, per_seed)
        for s, v in enumerate(seeds):
            ax.plot(eps, v, color=ADV, alpha=0.35, linewidth=0.9, label="individual seeds" if s == 0 else None)
        ax.fill_between(eps, centre - std, centre + std, color=ADV, alpha=BAND_ALPHA, linewidth=0,
                        label="mean ± 1 s.d. across seeds")
        ax.plot(eps, centre, color=ADV, marker="o", linewidth=2.2, label=f"mean of {spread['n_seeds']} seeds")
        if ref:
            ax.plot([e for e, _ in ref], [100 - v if is_asr else v for _, v in ref], "x", color="black",
                    markersize=10, markeredgewidth=2.2, label="original report", zorder=4)
        label_eps_axis(ax)
        ax.set_ylabel(ylabel)
        ax.set_ylim(-2, 105)
        ax.set_title(title)
        ax.legend(loc="upper left" if is_asr else "lower left")
    fig.suptitle(f"Figure 11: FGSM across {spread['n_seeds']} training seeds")
    return fig


@_styled
def plot_confidence_roc(fpr: Any, tpr: Any, auc: float, tpr_at_5fpr: float, eps: float) -> Figure:
    """Figure 12 (graph12): ROC of max-softmax confidence as a detector of FGSM images.

    Args:
        fpr, tpr: (T,) ROC points as FRACTIONS in [0, 1] (:func:`advlib.metrics.roc_curve`); plotted in percent.
            Positive = adversarial image, flagged when its confidence is at or below the threshold.
        auc: area under the ROC curve, fraction in [0, 1] (0.5 = chance).
        tpr_at_5fpr: true-positive rate at 5% false-positive rate, fraction in [0, 1].
        eps: the attack's eps, normalized units.
    """
    fpr, tpr = _np(fpr).astype(float).ravel(), _np(tpr).astype(float).ravel()
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


@_styled
def plot_capacity(rows: Sequence[Mapping], *, target_robust: float = 80.0, target_clean: float = 98.0,
                  reference: Mapping | None = None) -> Figure:
    """Figure 13 (graph13): adversarial training at the standard threat model against model size.

    Args:
        rows: :func:`study.results.capacity_rows`: per width ``parameters``, ``clean_test_accuracy`` (percent),
            ``autoattack`` (rate dict: AutoAttack accuracy with its 95% Wilson interval) and ``eps`` (normalized).
        target_robust, target_clean: the issue's targets, drawn as dashed lines.
        reference: optional {"parameters", "autoattack", "label"}: a published model for scale (Wong et al. 2020's
            166k-parameter MNIST network, 82.9% AutoAttack accuracy at 0.3 px).
    """
    rows = list(rows)
    if not rows:
        raise ValueError("no capacity-study rows: run `make robust` first")
    params = np.array([r["parameters"] for r in rows], dtype=float)
    aa_value, aa_lo, aa_hi = _rate_arrays([r["autoattack"] for r in rows])
    clean = np.array([np.nan if r["clean_test_accuracy"] is None else r["clean_test_accuracy"] for r in rows])
    eps = rows[0]["eps"]
    fig, ax = plt.subplots(figsize=(9, 6), layout="constrained")
    ax.plot(params, clean, color=CLEAN, marker="o", linewidth=2, label="clean test accuracy (10,000 images)")
    ax.errorbar(params, aa_value, yerr=_yerr(aa_value, aa_lo, aa_hi), color=ROBUST, marker="s", linewidth=2,
                capsize=4, label=f"AutoAttack accuracy at {eps_text(eps, short=True)} ({CI_NOTE})")
    for r, x, y in zip(rows, params, aa_value):
        ax.annotate(f"{r['width']}× width", (x, y), textcoords="offset points", xytext=(6, -14), fontsize=10)
    ax.axhline(target_robust, color=ROBUST, linestyle="--", linewidth=1, label=f"target: {target_robust:g}% AutoAttack")
    ax.axhline(target_clean, color=CLEAN, linestyle="--", linewidth=1, label=f"target: {target_clean:g}% clean")
    if reference:
        ax.plot([reference["parameters"]], [reference["autoattack"]], "*", color="black", markersize=14,
                label=reference["label"])
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 102)
    ax.set_title(f"Figure 13: adversarial training at the standard threat model, {eps_text(eps, short=True)}")
    ax.legend(loc="center right", fontsize=9)
    return fig
