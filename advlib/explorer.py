"""The eps slider: drag eps, watch a handful of images and the whole set's adversarial accuracy change.

:class:`EpsExplorer` holds the numbers. Construction computes the FGSM direction sign(grad_x loss) once for all
images (one backward pass) and the adversarial accuracy of the whole set at every slider position (forward passes
only); :meth:`EpsExplorer.state` then gives everything a view shows at one eps. Three views draw a state:

- :func:`static_figure`: a matplotlib picture (:func:`advlib.viz.plot_explorer`, Figure 5's image grid over the
  accuracy curve), for saving and for renderers that only show images;
- :func:`live_widget`: an ipywidgets slider over :func:`panel_html`, for JupyterLab (needs a running kernel);
- :func:`standalone_html`: one self-contained HTML fragment holding every slider position
  (:func:`standalone_data`) and plain JavaScript; it works with no kernel and no network (an exported page).

``display(explorer)`` in a notebook shows the live widget in JupyterLab and saves the standalone fragment and the
picture in the same output, so that an HTML export (nbconvert falls back to text/html when no widget state is
saved, see :mod:`study.html_report`) shows a working slider. The perturbation's colour scale is the one of every
figure (:data:`advlib.viz.PERTURBATION_LIMIT`), stated under the images.

eps is in normalized units (images in [-1, 1], the study's :data:`advlib.data.BOUNDS`, the default ``bounds``);
every view also gives [0, 1] pixel units. Images in another range need ``bounds=(low, high)`` (then eps is in their
units; the views still label eps as the study's normalized units). Labels are shown as numbers, or as class names
with ``classes`` (:func:`advlib.data.class_names`, e.g. Fashion-MNIST's "Ankle boot"); MNIST's names "0".."9"
change nothing (:func:`advlib.viz.check_classes`).

The HTML views' style and the standalone page's script are package data beside this module, ``explorer.css`` and
``explorer.js``, read at import.
"""
from __future__ import annotations

import base64
import functools
import hashlib
import html
import io
import json
from importlib.resources import files

import numpy as np
import torch
from torch import nn

from advlib import viz
from advlib.attacks import check_batch, fgsm_direction, predict, sweep_direction, to_pixel_eps
from advlib.data import BOUNDS
from advlib.metrics import direct_call


def _asset(name: str) -> str:
    """The text of a file shipped beside this module (package data), without its surrounding blank lines."""
    return files("advlib").joinpath(name).read_text(encoding="utf-8").strip()


# The page's style; every selector starts with .advlib-explorer: the page's own styles (nbconvert's, JupyterLab's)
# must not win.
_CSS = _asset("explorer.css")
# The standalone page's script: rewrites the panel's values from data.frames[i]; formats numbers as panel_html
# does (toFixed = f"{v:.Nf}").
_SCRIPT = _asset("explorer.js")


def _grid(eps_max: float, eps_step: float) -> list[float]:
    n = int(round(eps_max / eps_step))
    return [round(i * eps_step, 6) for i in range(n + 1)]


def precompute(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps_grid: list[float], *,
               bounds: tuple[float, float] = BOUNDS, progress: bool = False) -> dict:
    """What the slider needs before it moves: ``direction`` (x's shape, (N, 1, 32, 32) for the study), FGSM's
    sign(grad) (one backward pass); ``accuracy_curve``, the adversarial accuracy in percent of all N images at
    each eps of eps_grid (normalized units, starting at 0; forward passes only); ``clean_preds``, the N
    predictions at eps_grid[0]. x lies in bounds (default: the study's normalized [-1, 1])."""
    if not eps_grid or eps_grid[0] != 0:
        raise ValueError(f"eps_grid must start at 0 (the clean predictions), got {eps_grid[:1]}")
    direction = fgsm_direction(model, x, y, bounds=bounds)
    sweep = sweep_direction(model, x, y, direction, eps_grid, bounds=bounds, progress=progress)
    return {"direction": direction,
            "accuracy_curve": (100.0 * (sweep.preds == sweep.labels).float().mean(dim=1)).tolist(),
            "clean_preds": sweep.preds[0].tolist()}


class EpsExplorer:
    """FGSM over a set of (normally correctly classified) images, at every position of an eps slider.

    Args:
        model: trained classifier (put in eval mode while attacked; its mode is restored). Any device.
        x: (N, 1, 32, 32) float in [-1, 1] on the model's device, e.g. the 1,000 correctly classified test images;
            y: (N,) labels.
        bounds: the range of x, default the study's normalized [-1, 1] (:data:`advlib.data.BOUNDS`); the
            adversarial images are clipped to it.
        n_show: how many of the first images the views display.
        eps_max, eps_step: slider range and resolution, normalized units.
        initial_eps: where the slider starts.
        classes: the class names every view shows for the labels (label k -> classes[k], e.g.
            :func:`advlib.data.class_names`); None (or "0".."9") shows the label numbers.

    Attributes: ``eps_grid`` (the slider's eps, normalized), ``accuracy_curve`` (adversarial accuracy in percent
    of all N images at each), ``current`` (the state the live widget shows), ``classes`` (the names shown, None for
    the label numbers).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, n_show: int = 8,
                 eps_max: float = 0.3, eps_step: float = 0.005, initial_eps: float = 0.15, progress: bool = True,
                 cache=None, bounds: tuple[float, float] = BOUNDS, classes=None):
        self.bounds = check_batch(x, y, bounds=bounds)
        if not 1 <= n_show <= len(x):
            raise ValueError(f"n_show must lie in 1..{len(x)}, got {n_show}")
        self.classes = viz.check_classes(classes, y)  # predictions: checked when shown
        self.model, self.x, self.y, self.n_show = model, x, y, n_show
        self.eps_grid = _grid(eps_max, eps_step)  # starts at 0: the clean predictions
        self.eps_step = eps_step
        pre = (cache or direct_call)(precompute, model, x, y, self.eps_grid, bounds=self.bounds, progress=progress)
        self.direction = pre["direction"]  # (N, 1, 32, 32): the only gradient ever computed
        self.accuracy_curve = pre["accuracy_curve"]  # (E,) percent
        self.clean_preds = pre["clean_preds"][:n_show]
        self._widget = None
        self.current = self.state(initial_eps)

    def snap(self, eps: float) -> int:
        """Index of the grid eps nearest to eps (clipped to the slider's range)."""
        return int(min(max(round(eps / self.eps_step), 0), len(self.eps_grid) - 1))

    def state(self, eps: float) -> dict:
        """Everything a view shows at eps, snapped to the slider grid; numbers, lists and CPU tensors only.

        Keys: eps (normalized) and eps_pixel ([0, 1] units); n (images behind the rates); adv_accuracy and asr
        (percent of the n images); for the n_show shown images: labels, clean_preds, preds (ints), confidences
        (percent, of the predicted class), x and x_adv ((n_show, 1, 32, 32) in bounds, on the CPU).
        """
        i = self.snap(eps)
        eps = self.eps_grid[i]
        xs = self.x[: self.n_show]
        x_adv = (xs + eps * self.direction[: self.n_show]).clamp(*self.bounds)
        pred, conf = predict(self.model, x_adv)  # the same forward path as the sweep behind accuracy_curve
        acc = self.accuracy_curve[i]
        return {"eps": eps, "eps_pixel": to_pixel_eps(eps), "n": len(self.x), "adv_accuracy": acc,
                "asr": 100.0 - acc, "labels": self.y[: self.n_show].tolist(), "clean_preds": self.clean_preds,
                "preds": pred.tolist(), "confidences": (100.0 * conf).tolist(),
                "x": xs.detach().cpu(), "x_adv": x_adv.detach().cpu()}

    @property
    def widget(self):
        """The live ipywidgets view (:func:`live_widget`), built on first use."""
        if self._widget is None:
            self._widget = live_widget(self)
        return self._widget

    def update(self, eps: float) -> dict:
        """The slider's callback: recompute the state at eps and redraw the live view. Returns the state."""
        self.current = self.state(eps)
        if self._widget is not None:
            self._widget.children[1].value = _live_panel(self, self.current)
        return self.current

    def _repr_mimebundle_(self, **kwargs):
        # JupyterLab renders the widget; nbconvert without saved widget state takes text/html, the kernel-free
        # slider; renderers with neither take the picture.
        bundle = self.widget._repr_mimebundle_(**kwargs)
        bundle["text/html"] = standalone_html(self)
        bundle["image/png"] = base64.b64encode(static_png(self)).decode()
        bundle["text/plain"] = f"EpsExplorer at ε = {self.current['eps']:.3f} (normalized)"
        return bundle


# ---------------------------------------------------------------------------------------------------------------
# The static picture


def static_figure(explorer: EpsExplorer, state: dict | None = None):
    """A matplotlib Figure of the state (default: the current one): Figure 5's grid over the accuracy curve."""
    return viz.plot_explorer(state or explorer.current, explorer.eps_grid, explorer.accuracy_curve,
                             classes=explorer.classes)


def static_png(explorer: EpsExplorer, state: dict | None = None) -> bytes:
    """PNG bytes of :func:`static_figure`."""
    import matplotlib.pyplot as plt

    fig = static_figure(explorer, state)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=80, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------------
# HTML: one panel markup for the live widget and the standalone page


def png_uri(img: np.ndarray) -> str:
    """(H, W) uint8 grey or (H, W, 3) uint8 RGB -> data URI of a PNG at native size (the page scales it up)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(img).save(buf, format="png")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def _grey(img: torch.Tensor) -> np.ndarray:
    """(1, H, W) in [-1, 1] -> (H, W) uint8."""
    return np.round((img[0].numpy() * 0.5 + 0.5).clip(0, 1) * 255).astype(np.uint8)


def frame(explorer: EpsExplorer, state: dict) -> dict:
    """What changes with the slider, as JSON-ready data: the state's numbers and the shown images as PNG data URIs
    (adversarial in grey, perturbation x_adv - x on the shared colour scale), plus the curve marker's position."""
    delta = state["x_adv"] - state["x"]
    return {"eps": state["eps"], "eps_pixel": state["eps_pixel"], "adv_accuracy": state["adv_accuracy"],
            "asr": state["asr"], "preds": state["preds"], "confidences": state["confidences"],
            "adversarial": [png_uri(_grey(a)) for a in state["x_adv"]],
            "perturbation": [png_uri(rgb) for rgb in viz.perturbation_rgb(delta[:, 0])],
            "marker": _curve_xy(explorer, state["eps"], state["adv_accuracy"])}


# the accuracy curve's SVG canvas: width, height and the plot area's margins (left, right, top, bottom)
_SVG_W, _SVG_H, _SVG_MARGINS = 480, 190, (46, 34, 10, 40)


def _curve_xy(explorer: EpsExplorer, eps: float, acc: float) -> list[float]:
    """SVG coordinates of the point (eps normalized, accuracy percent) on the curve's canvas."""
    left, right, top, bottom = _SVG_MARGINS
    return [round(left + (_SVG_W - left - right) * eps / explorer.eps_grid[-1], 1),
            round(top + (_SVG_H - top - bottom) * (1 - acc / 100.0), 1)]


def _curve_svg(explorer: EpsExplorer, state: dict) -> str:
    left, right, top, bottom = _SVG_MARGINS
    x0, y0 = _curve_xy(explorer, 0, 0)
    x1, y100 = _curve_xy(explorer, explorer.eps_grid[-1], 100)
    points = " ".join("%.1f,%.1f" % tuple(_curve_xy(explorer, e, a))
                      for e, a in zip(explorer.eps_grid, explorer.accuracy_curve))
    mx, my = _curve_xy(explorer, state["eps"], state["adv_accuracy"])
    yc = _curve_xy(explorer, 0, explorer.accuracy_curve[0])[1]  # clean accuracy: eps_grid[0] == 0
    ticks = "".join(f'<text x="{_curve_xy(explorer, e, 0)[0]}" y="{y0 + 15}" text-anchor="middle">'
                    f'{e:.2g}<tspan fill="#888"> ({to_pixel_eps(e):.3g})</tspan></text>'
                    for e in np.linspace(0, explorer.eps_grid[-1], 4))
    yticks = "".join(f'<text x="{left - 5}" y="{_curve_xy(explorer, 0, a)[1] + 4}" text-anchor="end">{a}</text>'
                     for a in (0, 25, 50, 75, 100))
    return (f'<svg class="advlib-explorer-curve" viewBox="0 0 {_SVG_W} {_SVG_H}" role="img" font-size="13" '
            f'aria-label="adversarial accuracy against ε, with the slider position marked" '
            f'xmlns="http://www.w3.org/2000/svg">'
            f'<rect x="{x0}" y="{y100}" width="{x1 - x0:.1f}" height="{y0 - y100:.1f}" fill="none" stroke="#bbb"/>'
            f'<line x1="{x0}" y1="{yc}" x2="{x1}" y2="{yc}" stroke="{viz.CLEAN}" stroke-dasharray="4"/>'
            f'<polyline points="{points}" fill="none" stroke="{viz.ADV}" stroke-width="2"/>'
            f'<circle class="advlib-explorer-marker" cx="{mx}" cy="{my}" r="6" fill="black"/>{ticks}{yticks}'
            f'<text x="{(x0 + x1) / 2}" y="{_SVG_H - 6}" text-anchor="middle">ε, normalized '
            f'<tspan fill="#888">([0, 1] pixel units)</tspan></text>'
            f'<text x="12" y="{(y0 + y100) / 2}" text-anchor="middle" '
            f'transform="rotate(-90 12 {(y0 + y100) / 2})">accuracy (%)</text></svg>')


def _name(explorer: EpsExplorer, label: int) -> str:
    """A label as the views show it: its class name (HTML-escaped), or its number."""
    return html.escape(viz.class_label(label, explorer.classes))


def _alt(kind: str, label: str, eps: float, pred: str | None = None, conf: float | None = None) -> str:
    """An image's alt text; label and pred as shown (:func:`_name`). The page's script writes the same words."""
    if kind == "original":
        return f"original image, true label {label}"
    if kind == "adversarial":
        return f"FGSM image at ε = {eps:.3f}, true {label}, predicted {pred} ({conf:.0f}%)"
    return f"perturbation x_adv − x of the image with true label {label} at ε = {eps:.3f}"


# With class names, a caption breaks after the true class ("true Ankle boot" over "→ Sneaker (87%)") and, in bold
# when wrong, takes up to five lines in its 76px column: the captions get a smaller font and the room, the row
# legend's matching cell the same height. The standalone page's script breaks its captions the same way.
_NAMES_CAPTION_STYLE = ' style="height:72px;font-size:11px;line-height:14px"'
_NAMES_CAPROW_STYLE = ' style="height:72px"'


def _caption(explorer: EpsExplorer, t: int, p: int, c: float) -> str:
    if explorer.classes is None:
        return f"true {t} →<br><b>{p}</b> ({c:.0f}%)"
    return f"true {_name(explorer, t)}<br>→ <b>{_name(explorer, p)}</b> ({c:.0f}%)"


def panel_html(explorer: EpsExplorer, state: dict) -> str:
    """The explorer at one state as HTML: status line, predictions, the shown images (original, adversarial with
    its prediction, perturbation), the colour scale and the accuracy curve with the slider's marker. Both the live
    widget and the standalone page show exactly this markup; the standalone page's script rewrites its values.
    Labels are the explorer's class names where it has them."""
    f = frame(explorer, state)
    e = state["eps"]
    name = functools.partial(_name, explorer)
    tall, tall_row = ("", "") if explorer.classes is None else (_NAMES_CAPTION_STYLE, _NAMES_CAPROW_STYLE)
    preds = " · ".join(f"{name(p)} ({c:.0f}%)" for p, c in zip(state["preds"], state["confidences"]))
    cards = ['<div class="advlib-explorer-rows" aria-hidden="true"><span>original</span><span>FGSM adversarial</span>'
             f'<span class="advlib-explorer-caprow"{tall_row}>true → predicted<br>(confidence)</span>'
             '<span>perturbation</span></div>']
    for j, (t, p, c) in enumerate(zip(state["labels"], state["preds"], state["confidences"])):
        orig = png_uri(_grey(state["x"][j]))
        wrong = " advlib-explorer-wrong" if p != t else ""
        cards.append(
            f'<div class="advlib-explorer-digit">'
            f'<img src="{orig}" alt="{_alt("original", name(t), e)}"/>'
            f'<img class="advlib-explorer-adv" src="{f["adversarial"][j]}" '
            f'alt="{_alt("adversarial", name(t), e, name(p), c)}"/>'
            f'<div class="advlib-explorer-caption{wrong}"{tall}>{_caption(explorer, t, p, c)}</div>'
            f'<img class="advlib-explorer-pert" src="{f["perturbation"][j]}" alt="{_alt("perturbation", name(t), e)}"/>'
            f'</div>')
    limit = viz.PERTURBATION_LIMIT
    return (f'<div class="advlib-explorer-status">ε = <b class="advlib-v-eps">{e:.3f}</b> normalized (= '
            f'<span class="advlib-v-epspx">{state["eps_pixel"]:.4f}</span> in [0, 1] pixel units) · adversarial '
            f'accuracy <b class="advlib-v-acc">{state["adv_accuracy"]:.2f}%</b> · ASR '
            f'<b class="advlib-v-asr">{state["asr"]:.2f}%</b> on {state["n"]} images</div>'
            f'<div class="advlib-explorer-preds">predicted: <span class="advlib-v-preds">{preds}</span></div>'
            f'<div class="advlib-explorer-rowlegend">each column, top to bottom: original, FGSM adversarial, '
            f'true → predicted (confidence), perturbation</div>'
            f'<div class="advlib-explorer-grid">{"".join(cards)}</div>'
            f'<div class="advlib-explorer-scale">perturbation colours: <span>−{limit:g}</span>'
            f'<i style="background:{viz.perturbation_css_gradient()}"></i><span>+{limit:g}</span>'
            f'<span>({html.escape(viz.perturbation_label())}; white = unchanged, red = brighter, '
            f'blue = darker)</span></div>'
            f'<div class="advlib-explorer-legend"><span style="color:{viz.ADV}">━ adversarial accuracy of all '
            f'{state["n"]} images</span> · <span style="color:{viz.CLEAN}">╌ clean (ε = 0)</span> · '
            f'● slider</div>'
            + _curve_svg(explorer, state))


def _live_panel(explorer: EpsExplorer, state: dict) -> str:
    return f"<style>\n{_CSS}\n</style>" + panel_html(explorer, state)


def live_widget(explorer: EpsExplorer):
    """ipywidgets VBox(FloatSlider, HTML panel) for JupyterLab; moving the slider calls ``explorer.update``."""
    import ipywidgets as W

    slider = W.FloatSlider(value=explorer.current["eps"], min=0.0, max=explorer.eps_grid[-1],
                           step=explorer.eps_step, readout_format=".3f", continuous_update=True,
                           description="ε (normalized)", style={"description_width": "initial"},
                           layout=W.Layout(width="520px", max_width="100%"))
    panel = W.HTML(_live_panel(explorer, explorer.current))
    slider.observe(lambda change: explorer.update(change["new"]), names="value")
    box = W.VBox([slider, panel])
    box.add_class("advlib-explorer")
    return box


# ---------------------------------------------------------------------------------------------------------------
# The standalone page: every slider position precomputed, plain JavaScript, no kernel, no network


def standalone_data(explorer: EpsExplorer) -> dict:
    """Every slider position as JSON-ready data: ``eps_grid``, ``initial`` (index of the current state),
    ``n``, ``labels`` and ``frames`` (one :func:`frame` per grid eps, equal to ``explorer.state(eps)``'s numbers);
    with class names also ``classes`` (label k -> classes[k]), which the page shows instead of the numbers."""
    data = {"eps_grid": explorer.eps_grid, "initial": explorer.snap(explorer.current["eps"]),
            "n": len(explorer.x), "labels": explorer.current["labels"],
            "frames": [frame(explorer, explorer.state(e)) for e in explorer.eps_grid]}
    if explorer.classes is not None:
        data["classes"] = list(explorer.classes)
    return data


def standalone_html(explorer: EpsExplorer) -> str:
    """One self-contained HTML fragment: a range input over the slider grid (arrow keys move it one step) and the
    panel, driven by :func:`standalone_data` inlined as JSON and a few lines of plain JavaScript. No request leaves
    the page. Without JavaScript it shows the current state (the input stays hidden)."""
    data = standalone_data(explorer)
    payload = json.dumps(data, separators=(",", ":")).replace("</", "<\\/")  # never closes its <script>
    uid = hashlib.sha1(payload.encode()).hexdigest()[:12]  # stable across runs with the same numbers
    last, i = len(explorer.eps_grid) - 1, data["initial"]
    return (f'<div class="advlib-explorer" id="advlib-explorer-{uid}"><style>\n{_CSS}\n</style>'
            f'<label class="advlib-explorer-slider" hidden>ε (normalized) <input type="range" min="0" '
            f'max="{last}" step="1" value="{i}" aria-label="FGSM ε, normalized units, step {explorer.eps_step:g}">'
            f'<output class="advlib-explorer-readout">{explorer.eps_grid[i]:.3f}</output></label>'
            + panel_html(explorer, explorer.state(explorer.eps_grid[i]))
            + f'<script type="application/json" class="advlib-explorer-data">{payload}</script>'
            f'<script>{_SCRIPT}</script></div>')
