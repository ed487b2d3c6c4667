"""advlib.viz, study.figures and study.robust_figures: each figure shows the numbers it is given, labels its
units, and saves atomically.

Synthetic inputs only (no model, no data set), so the whole file runs in a few seconds. Rows come from the real
advlib.metrics.sweep_metrics, so the plots are checked against the contract the pipeline produces.
"""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from matplotlib.axes._secondary_axes import SecondaryAxis  # noqa: E402
from matplotlib.collections import PolyCollection  # noqa: E402
from matplotlib.container import BarContainer  # noqa: E402
from matplotlib.colors import to_rgba  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from matplotlib.text import Text  # noqa: E402

from advlib import viz  # noqa: E402
from study import figures, robust_figures  # noqa: E402
from advlib.attacks import SweepResult  # noqa: E402
from study.bands import seed_spread  # noqa: E402
from advlib.metrics import (confusion_matrix, rate, roc_auc, roc_curve, sweep_metrics,  # noqa: E402
                            tpr_at_fpr)

EPS = [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3]
REPORT_ACC = [100.0, 88.67, 59.39, 32.86, 20.0, 14.0, 10.61]  # the original report's adversarial accuracy
N = 300
K = 6  # images in the image figures
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGITS = tuple(str(d) for d in range(10))  # advlib.data.class_names("mnist")


# ---------------------------------------------------------------------------------------------------------------
# Synthetic inputs


def make_rows(acc=REPORT_ACC, n=N, seed=0) -> list[dict]:
    """sweep_metrics rows whose adversarial accuracy is acc (percent, rounded to whole images)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (n,), generator=gen)
    preds = []
    for a in acc:
        wrong = torch.zeros(n, dtype=torch.bool)
        wrong[: n - round(a * n / 100)] = True
        preds.append(torch.where(wrong, (labels + 1) % 10, labels))
    confidences = torch.rand(len(acc), n, generator=gen)
    result = SweepResult(eps=list(EPS[: len(acc)]), labels=labels, preds=torch.stack(preds), confidences=confidences)
    return sweep_metrics(result, torch.rand(n, generator=gen))


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture(scope="module")
def rows():
    return make_rows()


@pytest.fixture(scope="module")
def images():
    """x, x_adv (K, 1, 32, 32) in [-1, 1] with |x_adv - x| <= 0.15; y; pred_clean all right; pred_adv 2 wrong."""
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(K, 1, 32, 32, generator=gen) * 2 - 1
    x_adv = (x + 0.15 * torch.randn(K, 1, 32, 32, generator=gen).sign()).clamp(-1, 1)
    y = torch.arange(K) % 10
    pred_adv = y.clone()
    pred_adv[[1, 4]] = (y[[1, 4]] + 3) % 10
    return x, x_adv, y, y.clone(), pred_adv


@pytest.fixture(scope="module")
def history():
    steps = 3 * 40
    return {"step_loss": list(2.3 * np.exp(-np.arange(steps) / 30) + 0.05), "epoch_loss": [0.9, 0.1, 0.06],
            "train_accuracy": [80.0, 96.0, 97.5], "test_accuracy": [95.0, 97.0, 98.41], "pgd_check_accuracy": []}


def make_spread(runs) -> dict:
    """The seed_spread contract (study.bands.seed_spread), computed here with numpy from sweep rows."""
    acc = np.array([[r["adv_accuracy"]["value"] for r in run] for run in runs])  # (S, E)
    return {"eps": [r["eps"] for r in runs[0]], "mean": acc.mean(0), "std": acc.std(0, ddof=1),
            "n_seeds": len(runs), "per_seed": acc}


def make_dataset_spreads():
    """{title: seed_spread} of two data sets on one eps grid: MNIST over 3 seeds, Fashion-MNIST over 2."""
    mnist = [make_rows(acc=np.clip(np.array(REPORT_ACC) + d, 0, 100), seed=s) for s, d in enumerate((-6, 0, 6))]
    fashion_acc = np.array([100.0, 30.0, 8.0, 3.0, 1.5, 1.0, 0.5])
    fashion = [make_rows(acc=np.clip(fashion_acc + d, 0, 100), seed=10 + s) for s, d in enumerate((-2, 2))]
    return {"MNIST": seed_spread(mnist), "Fashion-MNIST": seed_spread(fashion)}


def make_explorer_state(images, eps=0.05, accuracy=62.5):
    x, x_adv, y, pred_clean, pred_adv = images
    return {"x": x, "x_adv": x_adv, "labels": y.tolist(), "clean_preds": pred_clean.tolist(),
            "preds": pred_adv.tolist(), "eps": eps, "adv_accuracy": accuracy, "n": 200}


def make_curves():
    def curve(values):
        return [{"eps": e, **rate(round(v * N / 100), N)} for e, v in zip(EPS, values)]
    return {"standard": {"fgsm": curve(REPORT_ACC), "pgd": curve([100, 80, 30, 5, 1, 0, 0])},
            "robust": {"fgsm": curve([99, 97, 95, 93, 91, 88, 86]), "pgd": curve([99, 96, 93, 90, 87, 83, 80])}}


def make_confusions():
    gen = torch.Generator().manual_seed(2)
    y = torch.randint(0, 10, (500,), generator=gen)
    adv = torch.where(torch.rand(500, generator=gen) < 0.4, y, torch.randint(0, 10, (500,), generator=gen))
    return confusion_matrix(y, y), confusion_matrix(y, adv)


def make_confidences():
    rng = np.random.default_rng(3)
    return 1 - rng.beta(0.3, 20, 400), np.clip(rng.beta(4, 1.2, 400), 0.1, 1.0)


def make_roc():
    clean, adv = make_confidences()
    fpr, tpr = roc_curve(clean, adv)
    return fpr, tpr, roc_auc(clean, adv), tpr_at_fpr(fpr, tpr)


# ---------------------------------------------------------------------------------------------------------------
# Helpers


def secondary(ax) -> list[SecondaryAxis]:
    return [c for c in ax.child_axes if isinstance(c, SecondaryAxis)]


def texts(fig) -> list[str]:
    return [t.get_text() for t in fig.findobj(Text) if t.get_text()]


def legend_labels(ax) -> list[str]:
    legend = ax.get_legend()
    assert legend is not None, f"axes {ax.get_title()!r} has no legend"
    return [t.get_text() for t in legend.get_texts()]


def assert_eps_axis(ax):
    assert "normalized" in ax.get_xlabel() and "[-1, 1]" in ax.get_xlabel()
    (sec,) = secondary(ax)
    assert "pixel" in sec.get_xlabel()


def data_axes(fig):
    """Axes that draw data (not colorbars)."""
    return [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]


def bands(ax) -> list[np.ndarray]:
    """Vertices of each fill_between band."""
    return [c.get_paths()[0].vertices for c in ax.collections if isinstance(c, PolyCollection)]


# ---------------------------------------------------------------------------------------------------------------
# Every figure: a Figure, a title, labelled axes, eps axes in both units


def build_all(rows, images, history):
    x, x_adv, y, pred_clean, pred_adv = images
    cm_clean, cm_adv = make_confusions()
    clean_conf, adv_conf = make_confidences()
    return {
        "accuracy_bars": (figures.plot_accuracy_bars(rows), 1, True),
        "asr_bars": (figures.plot_asr_bars(rows), 1, True),
        "eps_vs_accuracy": (figures.plot_eps_vs_accuracy(rows), 1, True),
        "eps_vs_asr": (figures.plot_eps_vs_asr(rows), 1, True),
        "image_grid": (figures.plot_image_grid(x, x_adv, y, pred_clean, pred_adv, 0.15), 3 * K, False),
        "training_curves": (figures.plot_training_curves(history), 2, False),
        "confusion": (figures.plot_confusion_matrices(cm_clean, cm_adv, 0.15), 2, False),
        "confidence": (figures.plot_confidence_histograms(clean_conf, adv_conf, 0.15), 1, False),
        "sample_predictions": (figures.plot_sample_predictions(x, y, pred_adv, ncols=4), K, False),
        "defense": (robust_figures.plot_defense_robustness(make_curves()), 1, True),
        "adversarial_row": (robust_figures.plot_adversarial_row(x, x_adv, y, pred_adv, 0.3, "Robust model, PGD"),
                            2 * K, False),
        "seed_spread": (robust_figures.plot_seed_spread(seed_spread([make_rows(seed=s) for s in range(3)])), 2, True),
        "explorer": (viz.plot_explorer(make_explorer_state(images), EPS, REPORT_ACC), 3 * K + 1, True),
        "roc": (figures.plot_confidence_roc(*make_roc(), 0.15), 1, False),
        "dataset_comparison": (robust_figures.plot_dataset_comparison(make_dataset_spreads()), 1, True),
    }


def test_every_figure_is_titled_and_labelled(rows, images, history):
    for name, (fig, n_axes, eps_axis) in build_all(rows, images, history).items():
        assert isinstance(fig, Figure), name
        axes = data_axes(fig)
        assert len(axes) == n_axes, f"{name}: {len(axes)} axes, expected {n_axes}"
        assert fig.get_suptitle() or all(ax.get_title() for ax in axes), f"{name} has no title"
        for ax in axes:
            if ax.images:  # image tiles: labelled by titles and row labels, checked per figure below
                continue
            assert ax.get_title() or fig.get_suptitle() or ax.figure.get_suptitle(), name
            assert ax.get_xlabel() and ax.get_ylabel(), f"{name}: unlabelled axis {ax.get_title()!r}"
            if eps_axis:
                assert_eps_axis(ax)
            if name not in ("confusion",):
                assert ax.get_legend() is not None, f"{name}: no legend"
        plt.close(fig)


def test_figures_leave_global_style_untouched(rows):
    before = dict(plt.rcParams)
    figures.plot_eps_vs_accuracy(rows)
    assert dict(plt.rcParams) == before


def test_eps_helpers_state_both_units():
    assert viz.eps_text(0.3, short=True) == "ε = 0.3 (0.15 px)"
    long = viz.eps_text(0.15)
    assert "0.15" in long and "0.075" in long and "normalized" in long and "pixel" in long


# ---------------------------------------------------------------------------------------------------------------
# Bars: heights, value labels and Wilson error bars are the numbers given


def bar_containers(ax) -> list[BarContainer]:
    return [c for c in ax.containers if isinstance(c, BarContainer)]


def errorbar_ranges(container) -> np.ndarray:
    """(n, 2) low/high y of each bar's error bar."""
    segments = container.errorbar.lines[2][0].get_segments()
    return np.array([[min(s[:, 1]), max(s[:, 1])] for s in segments])


def test_accuracy_bars_show_values_and_intervals(rows):
    fig = figures.plot_accuracy_bars(rows)
    ax = fig.axes[0]
    clean, adv = bar_containers(ax)
    assert [b.get_height() for b in clean] == [100.0] * len(EPS)
    assert np.allclose([b.get_height() for b in adv], [r["adv_accuracy"]["value"] for r in rows])
    assert clean.errorbar is None  # 100% by construction: nothing to draw
    ci = np.array([[r["adv_accuracy"]["ci_low"], r["adv_accuracy"]["ci_high"]] for r in rows])
    assert np.allclose(errorbar_ranges(adv), ci)
    labels = texts(fig)
    for r in rows:
        assert f"{r['adv_accuracy']['value']:.1f}%" in labels
    assert labels.count("100.0%") >= len(EPS)  # every clean bar is labelled
    assert len(legend_labels(ax)) == 2
    assert to_rgba(clean[0].get_facecolor()) == to_rgba(viz.CLEAN)
    assert to_rgba(adv[0].get_facecolor()) == to_rgba(viz.ADV)
    (sec,) = secondary(ax)
    assert np.allclose(sec.get_xticks(), np.array(EPS) * 0.5)


def test_accuracy_bars_draw_an_interval_for_a_measured_clean_accuracy(rows):
    fig = figures.plot_accuracy_bars(rows, clean_accuracy=rate(290, 300))
    clean = bar_containers(fig.axes[0])[0]
    lo, hi = errorbar_ranges(clean)[0]
    r = rate(290, 300)
    assert np.isclose(lo, r["ci_low"]) and np.isclose(hi, r["ci_high"])


def test_asr_bars_show_values_and_intervals(rows):
    fig = figures.plot_asr_bars(rows)
    ax = fig.axes[0]
    (bars,) = bar_containers(ax)
    assert np.allclose([b.get_height() for b in bars], [r["asr"]["value"] for r in rows])
    assert np.allclose(errorbar_ranges(bars), [[r["asr"]["ci_low"], r["asr"]["ci_high"]] for r in rows])
    for r in rows:
        assert f"{r['asr']['value']:.1f}%" in texts(fig)


# ---------------------------------------------------------------------------------------------------------------
# Curves


def test_eps_vs_accuracy_draws_flat_clean_and_adversarial_with_band(rows):
    fig = figures.plot_eps_vs_accuracy(rows, clean_accuracy=100.0)
    ax = fig.axes[0]
    clean, adv = ax.get_lines()
    assert np.allclose(clean.get_ydata(), 100.0)
    assert np.allclose(adv.get_xdata(), EPS)
    assert np.allclose(adv.get_ydata(), [r["adv_accuracy"]["value"] for r in rows])
    (band,) = bands(ax)
    assert np.isclose(band[:, 1].min(), min(r["adv_accuracy"]["ci_low"] for r in rows))
    assert np.isclose(band[:, 1].max(), max(r["adv_accuracy"]["ci_high"] for r in rows))
    labels = legend_labels(ax)
    assert any("clean" in t for t in labels) and any("adversarial" in t for t in labels)
    assert any("Wilson" in t for t in labels)


def test_eps_vs_asr_band_and_secondary_axis_in_pixel_units(rows):
    fig = figures.plot_eps_vs_asr(rows)
    ax = fig.axes[0]
    (line,) = ax.get_lines()
    assert np.allclose(line.get_ydata(), [r["asr"]["value"] for r in rows])
    assert len(bands(ax)) == 1
    fig.canvas.draw()  # the secondary axis takes its limits at draw time
    (sec,) = secondary(ax)
    assert np.allclose(sec.get_xlim(), np.array(ax.get_xlim()) * 0.5)


def test_curves_are_sorted_by_eps(rows):
    fig = figures.plot_eps_vs_asr(list(reversed(rows)))
    assert np.all(np.diff(fig.axes[0].get_lines()[0].get_xdata()) > 0)


def test_rows_without_intervals_are_refused():
    bad = [{"eps": 0.1, "asr": {"value": 10.0}}]
    with pytest.raises(ValueError, match="ci_low"):
        figures.plot_eps_vs_asr(bad)
    with pytest.raises(ValueError, match="empty"):
        figures.plot_asr_bars([])


def test_defense_robustness_names_its_images_in_the_title():
    fig = robust_figures.plot_defense_robustness(make_curves(), images="the first 1,000 test images, unfiltered")
    assert fig.axes[0].get_title().endswith("\non the first 1,000 test images, unfiltered")
    assert "\n" not in robust_figures.plot_defense_robustness(make_curves()).axes[0].get_title()


def test_defense_robustness_colour_is_model_linestyle_is_attack():
    curves = make_curves()
    fig = robust_figures.plot_defense_robustness(curves)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"standard model, FGSM", "standard model, PGD", "robust model, FGSM", "robust model, PGD"}
    assert lines["robust model, FGSM"].get_color() == lines["robust model, PGD"].get_color() == viz.ROBUST
    assert lines["standard model, FGSM"].get_color() != viz.ROBUST
    assert lines["robust model, FGSM"].get_linestyle() != lines["robust model, PGD"].get_linestyle()
    assert np.allclose(lines["robust model, PGD"].get_ydata(), [p["value"] for p in curves["robust"]["pgd"]])
    assert len(bands(ax)) == 4
    assert_eps_axis(ax)


def test_seed_spread_mean_band_seeds_and_reference():
    runs = [make_rows(acc=np.clip(np.array(REPORT_ACC) + d, 0, 100), seed=s) for s, d in enumerate((-6, 0, 6))]
    reference = {str(e): a for e, a in zip(EPS, REPORT_ACC)}  # keys as JSON would give them
    fig = robust_figures.plot_seed_spread(make_spread(runs), reference=reference)
    acc_ax, asr_ax = fig.axes
    values = np.array([[r["adv_accuracy"]["value"] for r in run] for run in runs])
    mean_line = next(line for line in acc_ax.get_lines() if line.get_label().startswith("mean"))
    assert np.allclose(mean_line.get_ydata(), values.mean(0))
    (band,) = bands(acc_ax)
    spread = values.mean(0) + values.std(0, ddof=1)
    assert np.isclose(band[:, 1].max(), spread.max())
    seeds = [line for line in acc_ax.get_lines() if line.get_linewidth() < 1.5]
    assert len(seeds) == len(runs)
    ref_acc = next(line for line in acc_ax.get_lines() if line.get_label() == "original report")
    ref_asr = next(line for line in asr_ax.get_lines() if line.get_label() == "original report")
    assert np.allclose(ref_acc.get_ydata(), REPORT_ACC)
    assert np.allclose(ref_asr.get_ydata(), 100 - np.array(REPORT_ACC))
    assert ref_acc.get_marker() == "x" and ref_acc.get_color() == "black"
    for ax in (acc_ax, asr_ax):
        assert_eps_axis(ax)
        assert "original report" in legend_labels(ax)


def test_seed_spread_takes_the_metrics_contract():
    spread = make_spread([make_rows(seed=s) for s in range(2)])
    with pytest.raises(ValueError, match="seed_spread"):
        robust_figures.plot_seed_spread({k: v for k, v in spread.items() if k != "std"})
    with pytest.raises(ValueError, match="per_seed"):
        robust_figures.plot_seed_spread({**spread, "per_seed": spread["per_seed"][:, :3]})


def test_dataset_comparison_mean_band_seeds_and_both_eps_units():
    spreads = make_dataset_spreads()
    fig = robust_figures.plot_dataset_comparison(spreads)
    (ax,) = fig.axes
    assert ax.get_title() == "Figure 14: FGSM accuracy against ε, MNIST vs Fashion-MNIST"
    assert "accuracy (%)" in ax.get_ylabel() and "FGSM" in ax.get_ylabel()
    assert_eps_axis(ax)
    fig.canvas.draw()  # the secondary axis takes its limits at draw time
    (sec,) = secondary(ax)
    assert np.allclose(sec.get_xlim(), np.array(ax.get_xlim()) * 0.5)  # [0, 1] pixel units on top
    labels = legend_labels(ax)
    assert labels[:2] == ["MNIST (3 seeds)", "Fashion-MNIST (2 seeds)"]
    assert any("± 1 s.d." in t for t in labels)
    lines = {line.get_label(): line for line in ax.get_lines()}
    (mnist_band, fashion_band) = bands(ax)
    for (title, spread), band in zip(spreads.items(), (mnist_band, fashion_band)):
        n = spread["n_seeds"]
        line = lines[f"{title} ({n} seeds)"]
        assert line.get_marker() not in (None, "None", "")
        assert np.allclose(line.get_xdata(), EPS) and np.allclose(line.get_ydata(), spread["mean"])
        # the band's outline passes through mean + sd and mean - sd at every eps, and nowhere beyond them
        for edge in (spread["mean"] + spread["std"], spread["mean"] - spread["std"]):
            assert all(np.isclose(band, (e, v)).all(axis=1).any() for e, v in zip(EPS, edge))
        assert np.isclose(band[:, 1].max(), (spread["mean"] + spread["std"]).max())
        assert np.isclose(band[:, 1].min(), (spread["mean"] - spread["std"]).min())
        colour = to_rgba(line.get_color())
        assert to_rgba(ax.collections[list(spreads).index(title)].get_facecolor()[0])[:3] == colour[:3]
    assert lines["MNIST (3 seeds)"].get_color() != lines["Fashion-MNIST (2 seeds)"].get_color()
    assert lines["MNIST (3 seeds)"].get_linestyle() != lines["Fashion-MNIST (2 seeds)"].get_linestyle()
    one = robust_figures.plot_dataset_comparison({"MNIST": seed_spread([make_rows()])}, title="one seed")
    assert legend_labels(one.axes[0])[0] == "MNIST (1 seed)" and one.axes[0].get_title() == "one seed"


# ---------------------------------------------------------------------------------------------------------------
# Figure 13: the capacity study at 0.3 px

PUBLISHED = [{"label": "Wong et al. 2020 (FGSM-RS)", "short": "Wong et al. 2020", "parameters": 166_406,
              "clean": 98.50, "autoattack": 82.93},
             {"label": "Madry et al. 2018 (PGD-40)", "parameters": 3_274_634, "clean": 98.53, "autoattack": 88.50}]
REPRODUCED = {"parameters": 166_406, "clean": rate(9_850, 10_000), "autoattack": rate(8_250, 10_000), "n": 10_000}


def capacity_row(name, seed, arch, batchnorm, parameters, aa, clean, status="trained", curve=(40.0, 70.0, 80.0)):
    """A row of study.tables.ablation_rows: AutoAttack on 1,000 images, clean accuracy on 10,000."""
    return {"name": name, "seed": seed, "label": f"{arch}, {'BatchNorm' if batchnorm else 'no BatchNorm'}",
            "parameters": parameters, "spec": {"arch": arch, "batchnorm": batchnorm, "mode": "fgsm_rs"},
            "autoattack": rate(round(aa * 10), 1000), "clean": rate(round(clean * 100), 10_000), "status": status,
            "check_curve": list(curve), "kept_epoch": None if status == "diverged" else len(curve), "eps": 0.3}


def capacity_rows():
    return [capacity_row("cnn", 0, "cnn", False, 166_406, 82.0, 98.4),
            capacity_row("cnn", 1, "cnn", False, 166_406, 11.0, 30.0, "diverged", curve=(20.0, 11.0, 10.0)),
            capacity_row("resnet", 0, "resnet", True, 19_810, 60.0, 98.9),
            capacity_row("resnet_nobn", 0, "resnet", False, 19_642, 0.0, 11.35, "diverged", curve=(5.0, 0.0, 0.0))]


def marked(ax, marker) -> list:
    """The lines of ax that draw data points with this marker (legend proxies hold no data)."""
    return [line for line in ax.get_lines() if line.get_marker() == marker and len(line.get_xdata())]


def test_capacity_draws_diverged_runs_as_unjoined_crosses():
    rows = capacity_rows()
    fig = robust_figures.plot_capacity(rows, published=PUBLISHED, reproduced=REPRODUCED)
    ax_aa, ax_clean, ax_curve = fig.axes
    diverged = [r for r in rows if r["status"] == "diverged"]
    for ax, key in ((ax_aa, "autoattack"), (ax_clean, "clean")):
        crosses = marked(ax, "x")
        assert len(crosses) == len(diverged), key
        for line, r in zip(crosses, diverged):
            assert len(line.get_xdata()) == 1 and line.get_linestyle() == "None"  # a point, joined to nothing
            assert line.get_ydata()[0] == pytest.approx(r[key]["value"])
            assert 0.8 < line.get_xdata()[0] / r["parameters"] < 1.2
        trained = [line for line in ax.get_lines() if len(line.get_xdata()) == 1
                   and line.get_marker() in ("s", "o", "^")]
        # the others keep their family's marker
        assert sorted(line.get_ydata()[0] for line in trained) == pytest.approx(
            sorted(r[key]["value"] for r in rows if r["status"] != "diverged")), key
    # (c): one curve per run, dotted for the diverged ones
    curves = [line for line in ax_curve.get_lines() if len(line.get_xdata()) == 3]
    assert [line.get_linestyle() for line in curves] == ["-", ":", "-", ":"]
    assert list(curves[3].get_ydata()) == [5.0, 0.0, 0.0]
    assert any("diverged" in t for t in texts(fig))


def test_capacity_marks_and_names_the_published_and_reproduced_anchors():
    fig = robust_figures.plot_capacity(capacity_rows(), published=PUBLISHED, reproduced=REPRODUCED)
    ax_aa, ax_clean, _ = fig.axes
    for ax, key in ((ax_aa, "autoattack"), (ax_clean, "clean")):
        stars = marked(ax, "*")
        filled = {(line.get_xdata()[0], line.get_ydata()[0]) for line in stars
                  if to_rgba(line.get_markerfacecolor()) == to_rgba("black")}
        assert filled == {(p["parameters"], p[key]) for p in PUBLISHED}, key
        (hollow,) = [line for line in stars if to_rgba(line.get_markerfacecolor()) == to_rgba("white")]
        assert hollow.get_ydata()[0] == pytest.approx(REPRODUCED[key]["value"])
        assert 1.0 <= hollow.get_xdata()[0] / REPRODUCED["parameters"] < 1.3
    # each published star is captioned where it stands
    captions = {tuple(a.xy): a.get_text() for a in ax_aa.texts if hasattr(a, "xy")}
    for p in PUBLISHED:
        assert captions[(p["parameters"], p["autoattack"])] in (p["label"], p.get("short")), captions
    words = " ".join(texts(fig))
    assert "published" in words and "AutoAttack paper" in words
    assert "reproduced here" in words and "released model" in words and "10,000 test images" in words
    plt.close(fig)
    without = robust_figures.plot_capacity(capacity_rows(), published=PUBLISHED)
    assert not any(to_rgba(line.get_markerfacecolor()) == to_rgba("white") for line in marked(without.axes[0], "*"))
    assert "reproduced here" not in " ".join(texts(without))


def test_capacity_draws_a_run_attacked_on_the_whole_test_set_as_a_hollow_diamond_beside_it():
    rows = capacity_rows()
    rows[2] = {**rows[2], "whole": {"n": 10_000, "accuracy": rate(6_400, 10_000)}}
    fig = robust_figures.plot_capacity(rows, published=PUBLISHED, reproduced=REPRODUCED)
    ax_aa, ax_clean, _ = fig.axes
    (diamond,) = marked(ax_aa, "D")
    assert diamond.get_ydata()[0] == pytest.approx(64.0) and to_rgba(diamond.get_markerfacecolor()) == to_rgba("white")
    assert 1.0 < diamond.get_xdata()[0] / rows[2]["parameters"] < 1.3
    assert not marked(ax_clean, "D") and "attacked on the first 10,000 test images too" in " ".join(texts(fig))
    plt.close(fig)
    without = robust_figures.plot_capacity(capacity_rows(), published=PUBLISHED)
    assert not marked(without.axes[0], "D") and "10,000 test images too" not in " ".join(texts(without))
    plt.close(without)


def test_capacity_titles_labels_and_units():
    fig = robust_figures.plot_capacity(capacity_rows(), published=PUBLISHED)
    assert len(fig.axes) == 3 and "0.3" in fig.get_suptitle() and "[0, 1] pixels" in fig.get_suptitle()
    for ax in fig.axes:
        assert ax.get_title() and ax.get_xlabel() and ax.get_ylabel()
    assert "ε = 0.3 px" in fig.axes[0].get_ylabel() and "1,000" in fig.axes[0].get_title()
    assert fig.axes[0].get_xscale() == fig.axes[1].get_xscale() == "log"


def test_capacity_refuses_no_runs():
    with pytest.raises(ValueError, match="no capacity-study runs"):
        robust_figures.plot_capacity([], published=PUBLISHED)


def test_dataset_comparison_refuses_bad_spreads():
    spreads = make_dataset_spreads()
    with pytest.raises(ValueError, match=r"Fashion-MNIST.*'std'.*seed_spread"):
        robust_figures.plot_dataset_comparison(
            {**spreads, "Fashion-MNIST": {k: v for k, v in spreads["Fashion-MNIST"].items() if k != "std"}})
    coarse = seed_spread([make_rows(acc=REPORT_ACC[::2], seed=s) for s in range(2)])  # eps 0, 0.1, 0.2, 0.3
    coarse["eps"] = EPS[::2]
    with pytest.raises(ValueError, match="same eps grid"):
        robust_figures.plot_dataset_comparison({"MNIST": spreads["MNIST"], "Fashion-MNIST": coarse})
    shifted = {**spreads["Fashion-MNIST"], "eps": np.array(EPS) + 0.01}  # same length, other values
    with pytest.raises(ValueError, match="same eps grid"):
        robust_figures.plot_dataset_comparison({"MNIST": spreads["MNIST"], "Fashion-MNIST": shifted})
    with pytest.raises(ValueError, match="mean and std"):
        robust_figures.plot_dataset_comparison({"MNIST": {**spreads["MNIST"], "mean": spreads["MNIST"]["mean"][:3]}})
    with pytest.raises(ValueError, match="empty"):
        robust_figures.plot_dataset_comparison({})


# ---------------------------------------------------------------------------------------------------------------
# Images


def assert_perturbation_scale(fig, delta):
    """The bottom image row draws delta on the one shared scale, and its colour bar says so in both units."""
    (cbar,) = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    label = cbar.get_ylabel()
    limit = viz.PERTURBATION_LIMIT
    assert f"±{limit:g}" in label and f"±{limit / 2:g}" in label and "normalized" in label and "px" in label
    tiles = [ax for ax in data_axes(fig) if ax.images]
    im = tiles[-len(delta)].images[0]
    assert im.norm.vmin == -limit and im.norm.vmax == limit and im.get_cmap().name == viz.PERTURBATION_CMAP
    assert np.allclose(im.get_array(), delta[0, 0], atol=1e-6)
    # the colours every other view uses (perturbation_rgb) are the ones drawn here
    assert np.abs(viz.perturbation_rgb(delta[0, 0]).astype(int)
                  - np.round(255 * im.to_rgba(im.get_array())[..., :3]).astype(int)).max() <= 1


def test_explorer_picture_is_figure5_over_the_curve(images):
    x, x_adv, y, pred_clean, pred_adv = images
    state = make_explorer_state(images, eps=0.05, accuracy=62.5)
    fig = viz.plot_explorer(state, EPS, REPORT_ACC)
    figure5 = viz.plot_image_grid(x, x_adv, y, pred_clean, pred_adv, 0.05)
    tiles = [ax for ax in data_axes(fig) if ax.images]
    for a, b in zip(tiles, [ax for ax in data_axes(figure5) if ax.images]):
        assert a.get_title() == b.get_title() and np.array_equal(a.images[0].get_array(), b.images[0].get_array())
    assert_perturbation_scale(fig, (x_adv - x).numpy())
    (curve_ax,) = [ax for ax in data_axes(fig) if not ax.images]
    assert_eps_axis(curve_ax)
    curve = next(line for line in curve_ax.get_lines() if line.get_label().startswith("adversarial"))
    assert np.allclose(curve.get_ydata(), REPORT_ACC)
    marker = next(line for line in curve_ax.get_lines() if line.get_label() == "slider position")
    assert (marker.get_xdata()[0], marker.get_ydata()[0]) == (0.05, 62.5)
    assert "62.5%" in fig.get_suptitle() and "0.025" in fig.get_suptitle()


def test_image_grid_rows_titles_and_perturbation_scale(images):
    x, x_adv, y, pred_clean, pred_adv = images
    fig = viz.plot_image_grid(x, x_adv, y, pred_clean, pred_adv, eps=0.15)
    axes = data_axes(fig)
    assert len(axes) == 3 * K and len(fig.axes) == 3 * K + 1  # plus the perturbation colour bar
    top, middle, bottom = axes[:K], axes[K:2 * K], axes[2 * K:]
    assert top[0].get_title() == f"true {int(y[0])} → pred {int(pred_clean[0])}"
    assert middle[1].get_title() == f"true {int(y[1])} → pred {int(pred_adv[1])}"
    red = [ax for ax in middle if to_rgba(ax.title.get_color()) == to_rgba(viz.ADV)]
    assert [middle.index(ax) for ax in red] == [1, 4]
    assert all(to_rgba(ax.title.get_color()) != to_rgba(viz.ADV) for ax in top)
    assert "perturbation" in bottom[0].get_ylabel()
    assert_perturbation_scale(fig, (x_adv - x).numpy())
    assert np.allclose(top[0].images[0].get_array(), x[0, 0].numpy())
    title = fig.get_suptitle()
    assert "0.15" in title and "0.075" in title and "normalized" in title and "pixel" in title


def test_image_grid_refuses_pixel_range_images(images):
    x, x_adv, y, pred_clean, pred_adv = images
    with pytest.raises(ValueError, match=r"\[-1, 1\]"):
        viz.plot_image_grid(x * 3, x_adv, y, pred_clean, pred_adv, 0.15)
    with pytest.raises(ValueError, match="labels"):
        viz.plot_image_grid(x, x_adv, y[:2], pred_clean, pred_adv, 0.15)


def test_sample_predictions_grid_and_red_mistakes(images):
    x, _, y, _, pred_adv = images
    fig = figures.plot_sample_predictions(x, y, pred_adv, ncols=4)
    assert len(fig.axes) == K  # 2 rows of 4, the 2 unused cells removed
    titles = [ax.get_title() for ax in fig.axes]
    assert titles[1] == f"true {int(y[1])} / pred {int(pred_adv[1])}"
    red = [i for i, ax in enumerate(fig.axes) if to_rgba(ax.title.get_color()) == to_rgba(viz.ADV)]
    assert red == [1, 4]


def test_adversarial_row(images):
    x, x_adv, y, _, pred_adv = images
    fig = robust_figures.plot_adversarial_row(x, x_adv, y, pred_adv, 0.3, "Robust model, PGD-20")
    assert len(fig.axes) == 2 * K
    title = fig.get_suptitle()
    assert "Robust model, PGD-20" in title and "0.3" in title and "0.15" in title
    assert np.allclose(fig.axes[K].images[0].get_array(), x_adv[0, 0].numpy())
    assert fig.axes[0].get_ylabel() == "original" and fig.axes[K].get_ylabel() == "adversarial"


def red_titles(axes) -> list[int]:
    return [i for i, ax in enumerate(axes) if to_rgba(ax.title.get_color()) == to_rgba(viz.ADV)]


def test_class_names_title_every_image(images):
    """With classes, every image title names the classes (long names on two lines, smaller), mistakes still red."""
    x, x_adv, y, pred_clean, pred_adv = images
    name = lambda k: FASHION[int(k)]  # noqa: E731
    grids = {"viz": viz.plot_image_grid(x, x_adv, y, pred_clean, pred_adv, 0.15, classes=FASHION),
             "Figure 5": figures.plot_image_grid(x, x_adv, y, pred_clean, pred_adv, 0.15, classes=FASHION),
             "explorer": viz.plot_explorer(make_explorer_state(images), EPS, REPORT_ACC, classes=FASHION)}
    for where, fig in grids.items():
        tiles = [ax for ax in data_axes(fig) if ax.images]
        top, middle = tiles[:K], tiles[K:2 * K]
        assert [ax.get_title() for ax in top] == [f"true {name(t)}\n→ pred {name(p)}" for t, p in zip(y, pred_clean)]
        assert [ax.get_title() for ax in middle] == [f"true {name(t)}\n→ pred {name(p)}" for t, p in zip(y, pred_adv)]
        assert red_titles(middle) == [1, 4] and red_titles(top) == [], where
        assert all(ax.title.get_fontsize() < 11 for ax in top + middle), where
    fig = figures.plot_sample_predictions(x, y, pred_adv, ncols=4, classes=FASHION)
    assert [ax.get_title() for ax in fig.axes] == [f"true {name(t)}\npred {name(p)}" for t, p in zip(y, pred_adv)]
    assert red_titles(fig.axes) == [1, 4]
    fig = robust_figures.plot_adversarial_row(x, x_adv, y, pred_adv, 0.3, "Robust model, PGD", classes=FASHION)
    assert [ax.get_title() for ax in fig.axes[:K]] == [f"true {name(t)}" for t in y]
    assert fig.axes[K + 1].get_title() == f"true {name(y[1])}\n→ pred {name(pred_adv[1])}"
    assert red_titles(fig.axes[K:]) == [1, 4]
    # short names stay on one line at the usual size
    short = viz.plot_image_grid(x, x_adv, y, pred_clean, pred_adv, 0.15, classes=[f"c{k}" for k in range(10)])
    assert data_axes(short)[K + 1].get_title() == f"true c{int(y[1])} → pred c{int(pred_adv[1])}"
    assert data_axes(short)[K + 1].title.get_fontsize() == 11


def pixels(fig, dpi: int = 50) -> np.ndarray:
    """The figure's RGBA pixels, drawn at a low dpi (fast; a layout change still moves pixels)."""
    fig.set_dpi(dpi)
    fig.canvas.draw()
    return np.asarray(fig.canvas.buffer_rgba()).copy()


def test_digit_names_draw_exactly_what_no_names_draw(images):
    """MNIST's names "0".."9" draw what classes=None draws (the numbers), pixel for pixel; the figures' sizes and
    titles without names are pinned by the tests above and below."""
    x, x_adv, y, pred_clean, pred_adv = images
    cm_clean, cm_adv = make_confusions()
    state = make_explorer_state(images)
    draw = {
        "image grid": lambda **kw: viz.plot_image_grid(x, x_adv, y, pred_clean, pred_adv, 0.15, **kw),
        "Figure 5": lambda **kw: figures.plot_image_grid(x, x_adv, y, pred_clean, pred_adv, 0.15, **kw),
        "explorer": lambda **kw: viz.plot_explorer(state, EPS, REPORT_ACC, **kw),
        "confusion": lambda **kw: figures.plot_confusion_matrices(cm_clean, cm_adv, 0.15, **kw),
        "sample predictions": lambda **kw: figures.plot_sample_predictions(x, y, pred_adv, ncols=4, **kw),
        "adversarial row": lambda **kw: robust_figures.plot_adversarial_row(x, x_adv, y, pred_adv, 0.3, "PGD", **kw),
    }
    for name, f in draw.items():
        assert np.array_equal(pixels(f(classes=DIGITS)), pixels(f(classes=None))), name
        plt.close("all")


def test_figures_keep_their_sizes_without_names(images):
    """Without class names (or with "0".."9") the image figures keep the sizes they always had; long names add
    room for two-line titles."""
    x, x_adv, y, pred_clean, pred_adv = images
    cm_clean, cm_adv = make_confusions()
    state = make_explorer_state(images)
    draw = {
        "image grid": (lambda **kw: viz.plot_image_grid(x, x_adv, y, pred_clean, pred_adv, 0.15, **kw),
                       (1.7 * K + 1.5, 6.6)),
        "Figure 5": (lambda **kw: figures.plot_image_grid(x, x_adv, y, pred_clean, pred_adv, 0.15, **kw),
                     (1.7 * K + 1.5, 6.6)),
        "explorer": (lambda **kw: viz.plot_explorer(state, EPS, REPORT_ACC, **kw), (1.7 * K + 1.5, 10.5)),
        "confusion": (lambda **kw: figures.plot_confusion_matrices(cm_clean, cm_adv, 0.15, **kw), (16, 7)),
        "sample predictions": (lambda **kw: figures.plot_sample_predictions(x, y, pred_adv, ncols=4, **kw),
                               (1.6 * 4, 1.85 * 2 + 0.6)),
        "adversarial row": (lambda **kw: robust_figures.plot_adversarial_row(x, x_adv, y, pred_adv, 0.3, "PGD", **kw),
                            (1.7 * K + 1.0, 4.8)),
    }
    for name, (f, size) in draw.items():
        for classes in (None, DIGITS):
            assert np.allclose(f(classes=classes).get_size_inches(), size), f"{name}, classes={classes}"
        width, height = f(classes=FASHION).get_size_inches()
        assert np.isclose(width, size[0]) and height > size[1], name
        plt.close("all")


def test_classes_must_name_every_label(images):
    x, x_adv, y, pred_clean, pred_adv = images
    with pytest.raises(ValueError, match="no name"):
        viz.plot_image_grid(x, x_adv, y, pred_clean, pred_adv, 0.15, classes=FASHION[:3])
    with pytest.raises(ValueError, match="sequence of names"):
        figures.plot_sample_predictions(x, y, pred_adv, classes="fashion_mnist")
    cm_clean, cm_adv = make_confusions()
    with pytest.raises(ValueError, match="one name per row"):
        figures.plot_confusion_matrices(cm_clean, cm_adv, 0.15, classes=FASHION[:9])


# ---------------------------------------------------------------------------------------------------------------
# Training, confusion, confidence


def test_training_curves_epoch_markers_and_optional_pgd(history):
    fig = figures.plot_training_curves(history)
    loss_ax, acc_ax = fig.axes
    markers = next(line for line in loss_ax.get_lines() if line.get_label() == "mean loss of the epoch")
    assert np.allclose(markers.get_xdata(), [1, 2, 3])
    assert np.allclose(markers.get_ydata(), history["epoch_loss"])
    steps = next(line for line in loss_ax.get_lines() if line.get_label() == "loss per optimizer step")
    assert len(steps.get_xdata()) == len(history["step_loss"])
    assert np.isclose(steps.get_xdata()[-1], 3.0)  # last step ends epoch 3
    assert "epoch" in loss_ax.get_xlabel() and "loss" in loss_ax.get_ylabel()
    assert "%" in acc_ax.get_ylabel()
    assert len(legend_labels(acc_ax)) == 2
    test_line = next(line for line in acc_ax.get_lines() if line.get_label().startswith("test"))
    assert np.allclose(test_line.get_ydata(), history["test_accuracy"])

    fig = figures.plot_training_curves({**history, "pgd_check_accuracy": [40.0, 60.0, 70.0]})
    labels = legend_labels(fig.axes[1])
    assert len(labels) == 3 and any("PGD" in t for t in labels)


def test_confusion_matrices_annotate_every_nonzero_count():
    cm_clean, cm_adv = make_confusions()
    fig = figures.plot_confusion_matrices(cm_clean, cm_adv, 0.15)
    left, right = data_axes(fig)
    assert left.get_title().startswith("Clean")
    assert right.get_title().startswith("FGSM ε = 0.15 (0.075 px)")
    for ax, cm in ((left, cm_clean), (right, cm_adv)):
        assert ax.get_xlabel() == "predicted label" and ax.get_ylabel() == "true label"
        shown = sorted(int(t.get_text()) for t in ax.texts if t.get_text())
        assert shown == sorted(int(v) for v in cm.flatten() if v > 0)
        assert np.array_equal(ax.collections[0].get_array().reshape(10, 10), cm.numpy())
        assert [t.get_text() for t in ax.get_xticklabels()] == list(DIGITS)
        assert [t.get_text() for t in ax.get_yticklabels()] == list(DIGITS)


def test_confusion_matrices_name_the_classes_legibly():
    cm_clean, cm_adv = make_confusions()
    fig = figures.plot_confusion_matrices(cm_clean, cm_adv, 0.15, classes=FASHION)
    fig.canvas.draw()
    for ax, cm in zip(data_axes(fig), (cm_clean, cm_adv)):
        xt, yt = ax.get_xticklabels(), ax.get_yticklabels()
        assert [t.get_text() for t in xt] == list(FASHION) and [t.get_text() for t in yt] == list(FASHION)
        assert all(t.get_rotation() == 45 for t in xt) and all(t.get_rotation() == 0 for t in yt)
        assert all(t.get_fontsize() < 10.5 for t in xt + yt)
        # slanted column names do not overlap their neighbours
        boxes = [t.get_window_extent() for t in xt]
        assert all(a.x0 < b.x0 and a.y1 > b.y0 for a, b in zip(boxes, boxes[1:]))
        assert not any(a.overlaps(b) and a.x1 - b.x0 > 0.6 * (a.x1 - a.x0) for a, b in zip(boxes, boxes[1:]))
        assert np.array_equal(ax.collections[0].get_array().reshape(10, 10), cm.numpy())


def test_confidence_histograms_in_percent_with_means():
    clean, adv = make_confidences()
    fig = figures.plot_confidence_histograms(clean, adv, 0.15)
    ax = fig.axes[0]
    labels = legend_labels(ax)
    assert f"clean mean {100 * clean.mean():.2f}%" in labels
    assert f"adversarial mean {100 * adv.mean():.2f}%" in labels
    vlines = [line for line in ax.get_lines() if line.get_linestyle() == "--"]
    assert sorted(line.get_xdata()[0] for line in vlines) == pytest.approx(sorted([100 * adv.mean(), 100 * clean.mean()]))
    assert ax.get_xlim() == (0, 100)
    heights = sum(p.get_height() for p in ax.patches[:50])
    assert heights == len(clean)  # every clean image lands in a bin
    with pytest.raises(ValueError, match="fractions"):
        figures.plot_confidence_histograms(100 * clean, adv, 0.15)


def test_confidence_roc():
    fpr, tpr, auc, tpr5 = make_roc()
    fig = figures.plot_confidence_roc(fpr, tpr, auc, tpr5, 0.15)
    ax = fig.axes[0]
    title = ax.get_title()
    assert "max-softmax confidence as an attack detector" in title and "0.15" in title and "0.075" in title
    labels = " ".join(legend_labels(ax))
    assert f"AUC = {auc:.3f}" in labels and f"TPR = {100 * tpr5:.1f}%" in labels and "chance" in labels
    marker = next(line for line in ax.get_lines() if line.get_label().startswith("at 5% FPR"))
    assert marker.get_xdata()[0] == 5 and np.isclose(marker.get_ydata()[0], 100 * tpr5)
    roc = ax.get_lines()[0]
    assert np.allclose(roc.get_xdata(), 100 * fpr.numpy()) and np.allclose(roc.get_ydata(), 100 * tpr.numpy())
    assert "%" in ax.get_xlabel() and "%" in ax.get_ylabel()
    with pytest.raises(ValueError, match="fraction"):
        figures.plot_confidence_roc(100 * fpr, tpr, auc, tpr5, 0.15)


# ---------------------------------------------------------------------------------------------------------------
# Saving


def test_save_figure_writes_a_png_atomically_and_closes(tmp_path, rows):
    fig = figures.plot_asr_bars(rows)
    width_in, height_in = fig.get_size_inches()
    target = tmp_path / "figures" / "graph2.png"
    written = viz.save_figure(fig, target, dpi=100)
    assert written == target
    data = target.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    img = mpimg.imread(target)
    h, w = img.shape[:2]
    # bbox_inches="tight" trims or grows the margins a little; the size stays near figsize * dpi
    assert 0.7 * width_in * 100 < w < 1.3 * width_in * 100
    assert 0.7 * height_in * 100 < h < 1.3 * height_in * 100
    assert img[..., :3].std() > 0.05  # something was drawn
    assert sorted(p.name for p in target.parent.iterdir()) == ["graph2.png"]  # no temp files left
    assert fig.number not in plt.get_fignums()


def test_save_figure_failure_keeps_the_old_file_and_closes(tmp_path, rows):
    target = tmp_path / "graph2.png"
    target.write_bytes(b"old")
    fig = figures.plot_asr_bars(rows)

    def broken_savefig(fname, **kwargs):  # dies half way through writing
        with open(fname, "wb") as f:
            f.write(b"\x89PNG partial")
        raise RuntimeError("disk full")

    fig.savefig = broken_savefig
    with pytest.raises(RuntimeError, match="disk full"):
        viz.save_figure(fig, target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["graph2.png"]
    assert fig.number not in plt.get_fignums()


def test_capacity_draws_catastrophic_overfitting_hollow():
    rows = capacity_rows() + [capacity_row("cnn", 2, "cnn", False, 166_406, 0.0, 66.5, "overfit", curve=(4.0, 1.0, 10.0))]
    ax_aa = robust_figures.plot_capacity(rows, published=PUBLISHED, reproduced=REPRODUCED).axes[0]
    squares = [line for line in marked(ax_aa, "s") if len(line.get_xdata()) == 1]
    hollow = [line for line in squares if line.get_markerfacecolor() in ("white", (1.0, 1.0, 1.0, 1.0))]
    assert len(hollow) == 1 and hollow[0].get_ydata()[0] == pytest.approx(0.0)
    assert len(squares) == 2  # the trained cnn seed stays filled
