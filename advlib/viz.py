"""Plotting primitives for adversarial-example figures, and the generic figures built from them: an image grid of
originals, adversarial images and perturbations (:func:`plot_image_grid`) and the eps explorer's picture
(:func:`plot_explorer`, the same grid over an accuracy-vs-eps curve). The study's numbered figures
(:mod:`study.figures`, :mod:`study.robust_figures`) are drawn with these.

Every figure function takes plain data (lists, dicts, numpy arrays or torch tensors) and returns a matplotlib
``Figure`` built under one style (:func:`styled`); it never shows or saves. :func:`save_figure` writes one
atomically and closes it.

Conventions:
- Images are (K, 1, H, W) or (K, H, W) in [-1, 1] (advlib's normalized range). An eps axis names its units
  (:func:`label_eps_axis`); for normalized eps it can carry a secondary top axis in [0, 1] pixel units
  (eps_pixel = eps * 0.5, :func:`advlib.attacks.to_pixel_eps`).
- Rates are percentages (0..100). A rate is a dict ``{"value", "ci_low", "ci_high", ...}`` as made by
  :func:`advlib.metrics.rate`; its 95% Wilson interval is drawn as error bars or a shaded band (:func:`rate_curve`).
- Labels are ints 0..C-1. A figure that shows labels takes ``classes`` (label k -> classes[k], e.g.
  :func:`advlib.data.class_names`); None, or names that are just the label numbers ("0".."9", MNIST's), draw the
  numbers exactly as without names (:func:`check_classes`). Names longer than :data:`SHORT_NAME` characters
  (Fashion-MNIST's "Ankle boot") put the image titles on two lines in a smaller font (:func:`prediction_title`).
- Colours: clean = green, adversarial = red, adversarially trained (robust) model = blue, standard model = orange.
- The perturbation x_adv - x has one colour scale everywhere (the image grid, the explorer's picture and its HTML
  views): :data:`PERTURBATION_CMAP` from -:data:`PERTURBATION_LIMIT` to +:data:`PERTURBATION_LIMIT`, stated on the
  colour bar.
"""
from __future__ import annotations

import functools
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
BAND_ALPHA = 0.2

NORMALIZED_EPS_LABEL = "ε (normalized units, images in [-1, 1])"
PIXEL_LABEL = "ε in [0, 1] pixel units"
CI_NOTE = "95% Wilson interval"

# The perturbation's colour scale, shared by every view of x_adv - x. FGSM moves a pixel by +-eps (less where the
# image clamps at -1 or 1), so at every eps from this limit up the picture shows the sign pattern at full colour.
PERTURBATION_LIMIT = 0.1  # normalized units (= 0.05 in [0, 1] pixel units): the colours saturate here
PERTURBATION_CMAP = "RdBu_r"  # white = unchanged, red = brighter, blue = darker

# Class names up to this many characters fit an image title on one line ("true 10 → pred 12"); longer ones wrap.
SHORT_NAME = 2
NAME_FONTSIZE = 10  # image titles with class names (two lines)
NAME_TITLE_HEIGHT = 0.2  # inches a two-line image title adds to a row of images

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


def styled(func: Callable[..., Figure]) -> Callable[..., Figure]:
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
# Numbers and eps


def to_numpy(a: Any) -> np.ndarray:
    """numpy copy of a list, array or (possibly GPU, possibly grad-tracking) torch tensor."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def short_number(v: float) -> str:
    """Short, stable number text: 0.15 -> '0.15', 0.30000000000000004 -> '0.3'."""
    return f"{round(float(v), 4):g}"


def eps_text(eps: float, short: bool = False) -> str:
    """Normalized eps in both units: 'ε = 0.15 (0.075 px)' when short, else both units spelled out."""
    if short:
        return f"ε = {short_number(eps)} ({short_number(to_pixel_eps(eps))} px)"
    return (f"ε = {short_number(eps)} (normalized, images in [-1, 1]) = {short_number(to_pixel_eps(eps))} "
            "in [0, 1] pixel units")


def label_eps_axis(ax, label: str = "ε", ticks: Sequence[float] | None = None, *, pixel_axis: bool = False):
    """Label ax's x axis (data: eps) with label, which names eps's units (e.g. :data:`NORMALIZED_EPS_LABEL`).
    With pixel_axis (eps in normalized units), add a top axis in [0, 1] pixel units; with ticks, put ticks at those
    eps (on both axes). Returns the secondary axis, or None without one."""
    ax.set_xlabel(label)
    sec = None
    if pixel_axis:
        sec = ax.secondary_xaxis("top", functions=(to_pixel_eps, to_normalized_eps))
        sec.set_xlabel(PIXEL_LABEL)
    if ticks is not None:
        ax.set_xticks(list(ticks), [short_number(e) for e in ticks])
        if sec is not None:
            sec.set_xticks([to_pixel_eps(e) for e in ticks], [short_number(to_pixel_eps(e)) for e in ticks])
    return sec


# ---------------------------------------------------------------------------------------------------------------
# The perturbation's colour scale


def perturbation_label() -> str:
    """What the perturbation colours mean, in both units (the colour bar's label in every view)."""
    return (f"x_adv − x, normalized units; saturates at ±{short_number(PERTURBATION_LIMIT)} "
            f"(±{short_number(to_pixel_eps(PERTURBATION_LIMIT))} in [0, 1] px)")


def perturbation_rgb(delta: Any) -> np.ndarray:
    """(..., H, W) perturbation x_adv - x (normalized units) -> (..., H, W, 3) uint8 RGB on the shared colour scale,
    the colours the figures draw; for the views that are not matplotlib (the explorer's HTML)."""
    norm = mpl.colors.Normalize(-PERTURBATION_LIMIT, PERTURBATION_LIMIT, clip=True)
    return np.round(255 * mpl.colormaps[PERTURBATION_CMAP](norm(to_numpy(delta)))[..., :3]).astype(np.uint8)


def perturbation_css_gradient(stops: int = 9) -> str:
    """The colour scale as a CSS linear-gradient, from -PERTURBATION_LIMIT (left) to +PERTURBATION_LIMIT."""
    colours = perturbation_rgb(np.linspace(-PERTURBATION_LIMIT, PERTURBATION_LIMIT, stops)[None])[0]
    return "linear-gradient(to right, " + ", ".join(f"rgb({r},{g},{b})" for r, g, b in colours) + ")"


# ---------------------------------------------------------------------------------------------------------------
# Rates and curves


def rate_arrays(rates: Sequence[Mapping]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """value, ci_low, ci_high (percent) of a sequence of rate dicts."""
    for r in rates:
        for key in ("value", "ci_low", "ci_high"):
            if key not in r:
                raise ValueError(f"a rate needs 'value', 'ci_low' and 'ci_high' (advlib.metrics.rate), got {sorted(r)}")
    return (np.array([float(r["value"]) for r in rates]), np.array([float(r["ci_low"]) for r in rates]),
            np.array([float(r["ci_high"]) for r in rates]))


def asymmetric_yerr(value: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """(2, n) asymmetric error-bar lengths, never negative (guards float round-off)."""
    return np.clip(np.vstack([value - lo, hi - value]), 0, None)


def check_rows(rows: Sequence[Mapping], keys: Sequence[str] = ("eps",)) -> list[Mapping]:
    """rows (:func:`advlib.metrics.sweep_metrics` rows, or any dicts with ``eps``) sorted by eps, checked to be
    non-empty and to hold keys."""
    rows = list(rows)
    if not rows:
        raise ValueError("rows is empty: pass the list returned by advlib.metrics.sweep_metrics")
    for key in keys:
        if any(key not in r for r in rows):
            raise ValueError(f"every row needs the key {key!r} (see advlib.metrics.sweep_metrics)")
    return sorted(rows, key=lambda r: float(r["eps"]))


def rate_curve(ax, eps: np.ndarray, rates: Sequence[Mapping], colour: str, label: str, **kwargs) -> None:
    """Draw rates (rate dicts, percent) against eps: a line with markers over its 95% Wilson band. kwargs go to
    the line (linestyle, marker, ...)."""
    value, lo, hi = rate_arrays(rates)
    ax.fill_between(eps, lo, hi, color=colour, alpha=BAND_ALPHA, linewidth=0)
    ax.plot(eps, value, color=colour, label=label, **{"marker": "o", "linewidth": 2, "markersize": 6, **kwargs})


def legend_with_band(ax, **kwargs):
    """Legend with one grey patch explaining the shaded bands (label: ``band_label``, default the interval)."""
    from matplotlib.patches import Patch

    handles, labels = ax.get_legend_handles_labels()
    handles.append(Patch(color="grey", alpha=BAND_ALPHA + 0.1))
    labels.append(kwargs.pop("band_label", f"shaded: {CI_NOTE}"))
    return ax.legend(handles, labels, **kwargs)


def log_y(ax) -> None:
    """Log-scale y axis with plain tick labels (0.1, 1, 10) instead of powers of ten."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(mticker.FuncFormatter(lambda v, _: f"{v:g}"))


# ---------------------------------------------------------------------------------------------------------------
# Images


def check_images(x: Any, name: str) -> np.ndarray:
    """(K, H, W) numpy images from (K, 1, H, W) or (K, H, W), checked to lie in [-1, 1]."""
    a = to_numpy(x).astype(np.float32)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.ndim != 3 or len(a) == 0:
        raise ValueError(f"{name} must have shape (K, 1, 32, 32) with K >= 1, got {tuple(to_numpy(x).shape)}")
    if a.min() < -1 - 1e-5 or a.max() > 1 + 1e-5:
        raise ValueError(f"{name} must lie in the normalized range [-1, 1], got [{a.min():.3g}, {a.max():.3g}]")
    return a


def check_classes(classes: Sequence[str] | None, *labels: Any) -> tuple[str, ...] | None:
    """The class names to show (label k -> classes[k]) as a tuple of str, checked to name every one of labels (int
    arrays); None when classes is None or names each label by its own number ("0", "1", ..., MNIST's
    :func:`advlib.data.class_names`): the figures then draw the numbers, exactly as without classes."""
    if classes is None:
        return None
    if isinstance(classes, (str, bytes)) or not isinstance(classes, (Sequence, np.ndarray)):
        raise ValueError(f"classes must be a sequence of names, label k -> classes[k] (e.g. "
                         f"advlib.data.class_names('fashion_mnist')), got {type(classes).__name__} {classes!r:.40}")
    names = tuple(str(c) for c in classes)
    if not names:
        raise ValueError("classes is empty: pass one name per class, or None to show the label numbers")
    for a in labels:
        a = to_numpy(a).astype(int).reshape(-1)
        if a.size and (a.min() < 0 or a.max() >= len(names)):
            raise ValueError(f"labels {sorted({int(v) for v in a if not 0 <= v < len(names)})} have no name: classes "
                             f"names {len(names)} classes (0..{len(names) - 1}); pass one name per class")
    if all(n == str(k) for k, n in enumerate(names)):
        return None
    return names


def class_label(label: int, classes: Sequence[str] | None = None) -> str:
    """How a label is shown: classes[label], or the number without classes."""
    if classes is None:
        return str(int(label))
    if not 0 <= int(label) < len(classes):
        raise ValueError(f"label {int(label)} has no name: classes names {len(classes)} classes; pass one name per "
                         "class the model predicts")
    return str(classes[int(label)])


def long_names(classes: Sequence[str] | None) -> bool:
    """Whether class names are too long for one-line image titles (over :data:`SHORT_NAME` characters)."""
    return classes is not None and max(len(str(c)) for c in classes) > SHORT_NAME


def check_labels(a: Any, k: int, name: str) -> np.ndarray:
    """(k,) int labels, one per image."""
    out = to_numpy(a).astype(int).reshape(-1)
    if len(out) != k:
        raise ValueError(f"{name} must have {k} labels, one per image, got {len(out)}")
    return out


def show_image(ax, img: np.ndarray, **kwargs):
    """Draw one (H, W) image in [-1, 1] (grey by default; kwargs go to imshow) on a bare axes. Returns the image."""
    im = ax.imshow(img, **{"cmap": "gray", "vmin": -1, "vmax": 1, "interpolation": "nearest", **kwargs})
    ax.set_xticks([])
    ax.set_yticks([])
    ax.grid(False)
    for spine in ax.spines.values():
        spine.set_visible(False)
    return im


def prediction_title(ax, true: int, pred: int, arrow: bool = True, classes: Sequence[str] | None = None) -> None:
    """Title an image 'true t → pred p' ('true t / pred p' without arrow), in bold red when p != t. With classes,
    t and p are class names; names longer than :data:`SHORT_NAME` characters take two lines ('true t' over
    '→ pred p', or 'pred p' without arrow) in a smaller font."""
    wrong = int(true) != int(pred)
    t, p = class_label(true, classes), class_label(pred, classes)
    if long_names(classes):
        text, size = (f"true {t}\n→ pred {p}" if arrow else f"true {t}\npred {p}"), NAME_FONTSIZE
    else:
        text, size = (f"true {t} → pred {p}" if arrow else f"true {t} / pred {p}"), 11
    ax.set_title(text, color=ADV if wrong else "black", fontweight="bold" if wrong else "normal", fontsize=size)


def _image_grid(fig, x: np.ndarray, x_adv: np.ndarray, y: np.ndarray, pred_clean: np.ndarray,
                pred_adv: np.ndarray, classes: tuple[str, ...] | None = None) -> None:
    """Originals, adversarial images and perturbation (shared colour scale, colour bar) as 3 rows of fig (a Figure
    or SubFigure). Arguments as checked by :func:`_grid_inputs`."""
    k = len(x)
    axes = fig.subplots(3, k, squeeze=False)
    for j in range(k):
        show_image(axes[0, j], x[j])
        prediction_title(axes[0, j], y[j], pred_clean[j], classes=classes)
        show_image(axes[1, j], x_adv[j])
        prediction_title(axes[1, j], y[j], pred_adv[j], classes=classes)
        im = show_image(axes[2, j], x_adv[j] - x[j], cmap=PERTURBATION_CMAP, vmin=-PERTURBATION_LIMIT,
                        vmax=PERTURBATION_LIMIT)
    for row, text in enumerate(("original", "FGSM adversarial", "perturbation")):
        axes[row, 0].set_ylabel(text, fontsize=12)
    cbar = fig.colorbar(im, ax=axes[2, :].tolist(), shrink=0.9, aspect=12)
    cbar.set_label(perturbation_label().replace("; ", "\n"), fontsize=10)


def _grid_inputs(x: Any, x_adv: Any, y: Any, pred_clean: Any, pred_adv: Any,
                 classes: Sequence[str] | None = None) -> tuple:
    """x, x_adv (K, H, W), y, pred_clean, pred_adv (K,) ints and the class names (:func:`check_classes`), checked."""
    x, x_adv = check_images(x, "x"), check_images(x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {x.shape} and {x_adv.shape}")
    k = len(x)
    labels = [check_labels(a, k, n) for a, n in ((y, "y"), (pred_clean, "pred_clean"), (pred_adv, "pred_adv"))]
    return (x, x_adv, *labels, check_classes(classes, *labels))


def _grid_height(height: float, classes: tuple[str, ...] | None) -> float:
    """A figure height with room for two-line titles on the grid's two titled rows when the names are long."""
    return height + 2 * NAME_TITLE_HEIGHT if long_names(classes) else height


# ---------------------------------------------------------------------------------------------------------------
# Generic figures


@styled
def plot_image_grid(x: Any, x_adv: Any, y: Any, pred_clean: Any, pred_adv: Any, eps: float, *,
                    title: str = "FGSM adversarial examples", classes: Sequence[str] | None = None) -> Figure:
    """Originals (top), FGSM images (middle), perturbation x_adv - x (bottom), titled ``"{title}, {eps}"``.

    Args:
        x, x_adv: (K, 1, 32, 32) images in [-1, 1] (tensors or arrays, any device).
        y, pred_clean, pred_adv: (K,) int labels 0..C-1. Wrong predictions get red titles.
        eps: the attack's eps, normalized units.
        classes: the C class names the titles show (label k -> classes[k], :func:`advlib.data.class_names`);
            None (or "0".."9") shows the label numbers.
    The perturbation is drawn on the shared diverging scale (:data:`PERTURBATION_LIMIT`, white = unchanged, red =
    brighter, blue = darker), labelled on its colour bar.
    """
    x, x_adv, y, pred_clean, pred_adv, classes = _grid_inputs(x, x_adv, y, pred_clean, pred_adv, classes)
    fig = plt.figure(figsize=(1.7 * len(x) + 1.5, _grid_height(6.6, classes)), layout="constrained")
    _image_grid(fig, x, x_adv, y, pred_clean, pred_adv, classes)
    fig.suptitle(f"{title}, {eps_text(eps)}\n"
                 "red titles: misclassified")
    return fig


@styled
def plot_explorer(state: Mapping, curve_eps: Sequence[float], curve_accuracy: Sequence[float], *,
                  classes: Sequence[str] | None = None) -> Figure:
    """The eps explorer at one slider position: :func:`plot_image_grid`'s grid over the accuracy curve with a marker.

    Args:
        state: :meth:`advlib.explorer.EpsExplorer.state` output; reads ``x``, ``x_adv`` ((K, 1, 32, 32) in
            [-1, 1]), ``labels``, ``clean_preds``, ``preds`` ((K,) ints), ``eps`` (normalized), ``adv_accuracy``
            (percent) and ``n`` (images behind the accuracy).
        curve_eps, curve_accuracy: the slider's eps grid (normalized, starting at 0) and the adversarial accuracy
            (percent) there.
        classes: the class names the image titles show, as in :func:`plot_image_grid`.
    """
    x, x_adv, y, pred_clean, pred_adv, classes = _grid_inputs(state["x"], state["x_adv"], state["labels"],
                                                              state["clean_preds"], state["preds"], classes)
    extra = _grid_height(0, classes)
    fig = plt.figure(figsize=(1.7 * len(x) + 1.5, 10.5 + extra), layout="constrained")
    top, bottom = fig.subfigures(2, 1, height_ratios=[2 + extra * 3.15 / 10.5, 1.15])  # the curve keeps its height
    _image_grid(top, x, x_adv, y, pred_clean, pred_adv, classes)
    ax = bottom.subplots()
    ax.plot(curve_eps, curve_accuracy, color=ADV, linewidth=2, label="adversarial accuracy (FGSM)")
    ax.axhline(curve_accuracy[0], color=CLEAN, linestyle="--", linewidth=1, label="clean accuracy (ε = 0)")
    ax.plot([state["eps"]], [state["adv_accuracy"]], "o", color="black", markersize=9, label="slider position")
    label_eps_axis(ax, NORMALIZED_EPS_LABEL, pixel_axis=True)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-2, 105)
    ax.legend(loc="upper right")
    fig.suptitle(f"FGSM {eps_text(state['eps'])}\nadversarial accuracy {state['adv_accuracy']:.1f}% on "
                 f"{state['n']} images; red titles: misclassified")
    return fig
