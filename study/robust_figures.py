"""The study's figures of its follow-up studies: adversarial training (Figure 10, graph10, and the adversarial row of
05_defense), FGSM across training seeds (Figure 11, graph11), adversarial training against model size
(Figure 13, graph13) and FGSM on several data sets, mean ± sd over seeds (:func:`plot_dataset_comparison`). The
original report's figures are in :mod:`study.figures`; the primitives and the style in :mod:`advlib.viz`.

Every function takes plain data and returns a matplotlib ``Figure``; it never shows or saves
(:func:`advlib.viz.save_figure` does). eps is in normalized units (images in [-1, 1]); eps axes carry a secondary
top axis in [0, 1] pixel units. Rates are percentages with their 95% Wilson interval (:func:`advlib.metrics.rate`).
Colour = model (standard orange, adversarially trained blue), line style and marker = attack.
"""
from __future__ import annotations

import itertools
from typing import Any, Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from advlib.viz import (ADV, BAND_ALPHA, CI_NOTE, NAME_FONTSIZE, NAME_TITLE_HEIGHT, NORMALIZED_EPS_LABEL,
                        ROBUST, STANDARD, asymmetric_yerr, check_classes, check_images, check_labels, check_rows,
                        class_label, eps_text, label_eps_axis, legend_with_band, long_names, prediction_title,
                        rate_arrays, rate_curve, show_image, styled)

MODEL_COLOURS = {"standard": STANDARD, "robust": ROBUST}
ATTACK_STYLES = {"fgsm": ("-", "o"), "pgd": ("--", "s"), "bim": (":", "^")}
# One (colour, line style, marker) per data set in plot_dataset_comparison, in the order given: red (the
# adversarial colour) first, then colours the model convention does not use; line style and marker also differ, so
# the curves stay apart in grey print.
DATASET_STYLES = [(ADV, "-", "o"), ("#6a3d9a", "--", "s"), ("#8c564b", "-.", "^"), ("#e377c2", ":", "D"),
                  ("#17becf", (0, (5, 1)), "v")]


@styled
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
            points = check_rows(points, ("eps",))
            if attack not in styles:
                styles[attack] = next(spare_styles)
            linestyle, marker = styles[attack]
            eps = np.array([float(p["eps"]) for p in points])
            rate_curve(ax, eps, points, colour, f"{model} model, {attack.upper()}", linestyle=linestyle, marker=marker)
    label_eps_axis(ax, NORMALIZED_EPS_LABEL, pixel_axis=True)
    ax.set_ylabel("accuracy under attack (%)")
    ax.set_ylim(-2, 102)
    ax.set_title("Figure 10: does adversarial training help? Accuracy under FGSM and PGD"
                 + (f"\non {images}" if images else ""))
    legend_with_band(ax, loc="lower left")
    return fig


@styled
def plot_adversarial_row(x: Any, x_adv: Any, y: Any, pred_adv: Any, eps: float, title: str, *,
                         classes: Sequence[str] | None = None) -> Figure:
    """Originals (top row, with their labels) over their adversarial versions (bottom row, with the prediction).

    Args:
        x, x_adv: (K, 1, 32, 32) images in [-1, 1]. y, pred_adv: (K,) int labels 0..C-1; wrong predictions in red.
        eps: the attack's eps, normalized units (stated in the title in both units).
        title: what is shown, e.g. "Adversarially trained model, PGD-20".
        classes: the class names the titles show (label k -> classes[k], :func:`advlib.data.class_names`); None
            (or "0".."9"): the label numbers. Long names put the bottom row's titles on two lines.
    """
    x, x_adv = check_images(x, "x"), check_images(x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {x.shape} and {x_adv.shape}")
    k = len(x)
    y, pred_adv = check_labels(y, k, "y"), check_labels(pred_adv, k, "pred_adv")
    classes = check_classes(classes, y, pred_adv)
    long = long_names(classes)
    fig, axes = plt.subplots(2, k, figsize=(1.7 * k + 1.0, 4.8 + (NAME_TITLE_HEIGHT if long else 0)),
                             layout="constrained", squeeze=False)
    for j in range(k):
        show_image(axes[0, j], x[j])
        axes[0, j].set_title(f"true {class_label(y[j], classes)}", fontsize=NAME_FONTSIZE if long else 11)
        show_image(axes[1, j], x_adv[j])
        prediction_title(axes[1, j], y[j], pred_adv[j], classes=classes)
    axes[0, 0].set_ylabel("original", fontsize=12)
    axes[1, 0].set_ylabel("adversarial", fontsize=12)
    wrong = int((y != pred_adv).sum())
    fig.suptitle(f"{title}\n{eps_text(eps)}; {wrong} of {k} fooled (red)")
    return fig


@styled
def plot_seed_spread(spread: Mapping, reference: Mapping[float, float] | None = None) -> Figure:
    """Figure 11 (graph11): FGSM sweep across training seeds, mean ± 1 standard deviation with each seed drawn thin.

    Args:
        spread: :func:`study.bands.seed_spread` output: ``eps`` (E,) normalized; ``mean``, ``std`` (E,) and
            ``per_seed`` (S, E) adversarial accuracy in percent; ``n_seeds``. The attack success rate panel is
            100 - accuracy (the attacked images are correctly classified).
        reference: optional {eps: adversarial accuracy in percent} of the original report, drawn as black crosses
            (on the ASR panel as 100 - accuracy, the report's definition). Keys may be strings ("0.05").
    """
    missing = {"eps", "mean", "std", "n_seeds", "per_seed"} - set(spread)
    if missing:
        raise ValueError(f"spread lacks {sorted(missing)}: pass study.bands.seed_spread(sweeps)")
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
        label_eps_axis(ax, NORMALIZED_EPS_LABEL, pixel_axis=True)
        ax.set_ylabel(ylabel)
        ax.set_ylim(-2, 105)
        ax.set_title(title)
        ax.legend(loc="upper left" if is_asr else "lower left")
    fig.suptitle(f"Figure 11: FGSM across {spread['n_seeds']} training seeds")
    return fig


def _check_spread(title: str, spread: Mapping) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """eps, mean, std (E,) float arrays of one data set's :func:`study.bands.seed_spread`, checked."""
    missing = {"eps", "mean", "std", "n_seeds"} - set(spread)
    if missing:
        raise ValueError(f"spreads[{title!r}] lacks {sorted(missing)}: pass study.bands.seed_spread(sweeps) of "
                         "that data set's seeds")
    eps = np.asarray(spread["eps"], dtype=float)
    mean, std = np.asarray(spread["mean"], dtype=float), np.asarray(spread["std"], dtype=float)
    if eps.ndim != 1 or len(eps) == 0 or mean.shape != eps.shape or std.shape != eps.shape:
        raise ValueError(f"spreads[{title!r}]: eps, mean and std must be (E,) arrays of one length E >= 1, got "
                         f"{eps.shape}, {mean.shape}, {std.shape}")
    return eps, mean, std


@styled
def plot_dataset_comparison(spreads: Mapping[str, Mapping], *, title: str | None = None) -> Figure:
    """FGSM adversarial accuracy against eps on several data sets (e.g. MNIST and Fashion-MNIST), each as the mean
    over its training seeds (line with markers) and a shaded band of ± 1 sample standard deviation.

    Args:
        spreads: {data set title: :func:`study.bands.seed_spread` output of that data set's seeds}, drawn in this
            order; reads ``eps`` (E,) normalized units (images in [-1, 1]), ``mean`` and ``std`` (E,) adversarial
            accuracy in percent (0..100), ``n_seeds`` (S, given in the legend: "MNIST (10 seeds)"). Every data set
            must share one eps grid.
        title: the axes' title; default "Figure 14: FGSM accuracy against ε, A vs B" over the data sets' titles.
    The bottom axis is eps in normalized units, the top axis the same eps in [0, 1] pixel units (eps / 2).
    Raises ValueError: no data set, a spread without those keys or with mismatched shapes, or eps grids that differ.
    """
    if not spreads:
        raise ValueError("spreads is empty: pass {data set title: study.bands.seed_spread(sweeps)}")
    if len(spreads) > len(DATASET_STYLES):
        raise ValueError(f"at most {len(DATASET_STYLES)} data sets fit one figure, got {len(spreads)}")
    checked = {name: _check_spread(name, spread) for name, spread in spreads.items()}
    (first, (grid, _, _)), *rest = checked.items()
    for name, (eps, _, _) in rest:
        if eps.shape != grid.shape or not np.allclose(eps, grid, rtol=0, atol=1e-9):
            raise ValueError(f"spreads[{name!r}] has the eps grid {eps.tolist()}, spreads[{first!r}] has "
                             f"{grid.tolist()}: sweep every data set on the same eps grid (the same eps_grid in "
                             "each data set's run) so that the curves compare like with like")
    fig, ax = plt.subplots(figsize=(11, 6.5), layout="constrained")
    for (name, (eps, mean, std)), (colour, linestyle, marker) in zip(checked.items(), DATASET_STYLES):
        order = np.argsort(eps)
        eps, mean, std = eps[order], mean[order], std[order]
        n = int(spreads[name]["n_seeds"])
        ax.fill_between(eps, mean - std, mean + std, color=colour, alpha=BAND_ALPHA, linewidth=0)
        ax.plot(eps, mean, color=colour, linestyle=linestyle, marker=marker, linewidth=2.2, markersize=7,
                label=f"{name} ({n} seed{'s' if n != 1 else ''})")
    label_eps_axis(ax, NORMALIZED_EPS_LABEL, pixel_axis=True)
    ax.set_ylabel("FGSM adversarial accuracy (%)")
    ax.set_ylim(-2, 105)
    ax.set_title(title or f"Figure 14: FGSM accuracy against ε, {' vs '.join(spreads)}")
    legend_with_band(ax, loc="upper right", title="mean over training seeds",
                     band_label="shaded: mean ± 1 s.d. across seeds")
    return fig


# Figure 13: colour = configuration, marker = network family, an x for a diverged run
FAMILY_MARKERS = {("cnn", False): "s", ("resnet", True): "o", ("resnet", False): "^"}
FAMILY_NAMES = {"s": "Wong et al.'s CNN", "o": "SmallResNet with BatchNorm", "^": "SmallResNet without BatchNorm"}
CONFIG_COLOURS = plt.get_cmap("tab10").colors


@styled
def plot_capacity(rows: Sequence[Mapping], *, published: Sequence[Mapping] = (), reproduced: Mapping | None = None,
                  target_robust: float = 80.0, target_clean: float = 98.0) -> Figure:
    """Figure 13 (graph13): what a small network needs at the standard threat model (0.3 px), against its size.

    Args:
        rows: :func:`study.tables.ablation_rows`, one per (configuration, seed): ``name``, ``label``,
            ``parameters``, ``spec`` (arch, batchnorm), ``autoattack`` and ``clean`` (rate dicts with 95% Wilson
            intervals), ``status``, ``check_curve`` (held-out check per epoch, percent), ``kept_epoch``, ``eps`` (px).
        published: {"label", "parameters", "clean", "autoattack"} and optionally "short" (the star's caption) from
            the AutoAttack paper (black stars).
        reproduced: Wong et al.'s released model under this harness, {"parameters", "clean", "autoattack"} (rate
            dicts) and "n" (its images): a white star.
        target_robust, target_clean: the targets, dashed.

    (a) AutoAttack accuracy (Wilson interval) per run; (b) clean test accuracy; (c) the held-out check after each
    epoch, the kept epoch circled. One colour per configuration, one marker per network family; a diverged run is
    an x at its measured value (dotted in (c)), never joined to a trend; a run caught in catastrophic overfitting
    (status "overfit") is hollow; a run with a ``whole`` result (AutoAttack on the whole test set, the published
    stars' images) also has a hollow diamond in (a) at that value.
    """
    rows = list(rows)
    if not rows:
        raise ValueError("no capacity-study runs: run `make robust` first")
    fig, axes = plt.subplots(1, 3, figsize=(18, 8.4), gridspec_kw={"width_ratios": [1.15, 1, 1]})
    fig.subplots_adjust(left=0.05, right=0.99, top=0.87, bottom=0.37, wspace=0.22)
    ax_aa, ax_clean, ax_curve = axes
    eps = rows[0]["eps"]
    names = list(dict.fromkeys(r["name"] for r in rows))
    colour = {name: CONFIG_COLOURS[i % len(CONFIG_COLOURS)] for i, name in enumerate(names)}
    spread = {name: 1 + 0.04 * (i - (len(names) - 1) / 2) for i, name in enumerate(names)}  # equal sizes apart
    handles = {}
    for r in rows:
        marker = FAMILY_MARKERS[(r["spec"]["arch"], bool(r["spec"]["batchnorm"]))]
        diverged, overfit = r["status"] in ("diverged", "collapsed"), r["status"] == "overfit"
        c, x = colour[r["name"]], r["parameters"] * spread[r["name"]]
        for ax, key in ((ax_aa, "autoattack"), (ax_clean, "clean")):
            v, lo, hi = rate_arrays([r[key]])
            ax.errorbar([x], v, yerr=asymmetric_yerr(v, lo, hi), fmt="x" if diverged else marker, color=c,
                        markersize=10 if diverged else 8, markeredgewidth=2 if diverged or overfit else 1, capsize=3,
                        linewidth=1.2, markerfacecolor="white" if overfit else c)
        if r.get("whole"):  # also attacked on the whole test set, as the published stars are: a hollow diamond
            v, lo, hi = rate_arrays([r["whole"]["accuracy"]])
            ax_aa.errorbar([x * 1.12], v, yerr=asymmetric_yerr(v, lo, hi), fmt="D", color=c, markerfacecolor="white",
                           markersize=8, markeredgewidth=1.5, capsize=3, linewidth=1.2)
        epochs = np.arange(1, len(r["check_curve"]) + 1)
        ax_curve.plot(epochs, r["check_curve"], linestyle=":" if diverged else "-", marker="x" if diverged else marker,
                      markersize=4, color=c, alpha=0.85)
        if r["kept_epoch"] and not diverged:
            ax_curve.plot([r["kept_epoch"]], [r["check_curve"][r["kept_epoch"] - 1]], "o", markersize=11,
                          markerfacecolor="none", color="black")
        handles.setdefault(r["name"], plt.Line2D([], [], color=c, marker=marker, linestyle="-",
                                                 label=f"{r['name']}: {r['label']} ({r['parameters']:,})"))
    for p in published:
        for ax, key in ((ax_aa, "autoattack"), (ax_clean, "clean")):
            ax.plot([p["parameters"]], [p[key]], "*", color="black", markersize=14)
        ax_aa.annotate(p.get("short", p["label"]), (p["parameters"], p["autoattack"]),
                       textcoords="offset points", xytext=(-10, 8), ha="right", fontsize=8)
    if reproduced:
        for ax, key in ((ax_aa, "autoattack"), (ax_clean, "clean")):
            v, lo, hi = rate_arrays([reproduced[key]])
            ax.errorbar([reproduced["parameters"] * 1.12], v, yerr=asymmetric_yerr(v, lo, hi), fmt="*",
                        color="black", markerfacecolor="white", markersize=15, capsize=3)
    extra = [plt.Line2D([], [], color="black", marker="*", linestyle="none", markersize=12,
                        label="published (AutoAttack paper, 10,000 test images)")]
    if reproduced:
        extra.append(plt.Line2D([], [], color="black", marker="*", markerfacecolor="white", linestyle="none",
                                markersize=12, label=f"reproduced here: Wong et al.'s released model, "
                                                     f"{reproduced['n']:,} test images"))
    whole = [r["whole"]["n"] for r in rows if r.get("whole")]
    if whole:
        extra.append(plt.Line2D([], [], color="grey", marker="D", markerfacecolor="white", linestyle="none",
                                markersize=7, label=f"a run attacked on the first {max(whole):,} test images too"))
    extra.append(plt.Line2D([], [], color="grey", marker="x", markeredgewidth=2, linestyle="none", markersize=9,
                            label="diverged or collapsed run: its measured value, not a capacity point"))
    extra.append(plt.Line2D([], [], color="grey", marker="o", markerfacecolor="white", markeredgewidth=2,
                            linestyle="none", markersize=8, label="hollow: catastrophic overfitting (no robust "
                                                                  "epoch to keep)"))
    ax_aa.axhline(target_robust, color="grey", linestyle="--", linewidth=1)
    ax_clean.axhline(target_clean, color="grey", linestyle="--", linewidth=1)
    extra.append(plt.Line2D([], [], color="grey", linestyle="--", label=f"targets: {target_robust:g}% AutoAttack, "
                                                                         f"{target_clean:g}% clean"))
    for ax in (ax_aa, ax_clean):
        ax.set_xscale("log")
        ax.set_xlabel("trainable parameters (log scale)")
    ax_aa.set_ylim(-2, 102)
    ax_aa.set_ylabel(f"AutoAttack accuracy at ε = {eps:g} px (%)")
    ax_aa.set_title(f"(a) AutoAttack, first {rows[0]['autoattack']['n']:,} test images\n({CI_NOTE})", fontsize=11)
    ax_clean.set_ylim(max(0.0, min(r["clean"]["value"] for r in rows) - 3), 100.5)
    ax_clean.set_ylabel("clean test accuracy (%, 10,000 images)")
    ax_clean.set_title("(b) clean accuracy of the same models", fontsize=11)
    ax_curve.set_xlabel("epoch")
    ax_curve.set_ylabel("held-out check accuracy (%)")
    ax_curve.set_ylim(-2, 102)
    ax_curve.set_title("(c) the early-stopping check, held-out training\nimages (kept epoch circled; dotted: "
                       "diverged)", fontsize=11)
    fig.legend(handles=list(handles.values()), loc="lower left", bbox_to_anchor=(0.05, 0.01), fontsize=9,
               title="configuration (parameters); one point per seed", title_fontsize=9, ncol=1, frameon=False)
    fig.legend(handles=extra, loc="lower right", bbox_to_anchor=(0.99, 0.01), fontsize=9, frameon=False)
    fig.suptitle(f"Figure 13: robustness at the standard threat model (ε = {eps:g} in [0, 1] pixels): capacity, "
                 "BatchNorm and the training recipe", fontsize=13)
    return fig
