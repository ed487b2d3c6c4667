"""The eps slider's numbers against fgsm + predict as the oracle, and its three views (static picture, live widget,
standalone HTML) against its numbers. The browser tests (tests/e2e) check what a reader sees."""
from __future__ import annotations

import base64
import html
import io
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from advlib import viz
from advlib.attacks import fgsm, predict
from advlib.data import BOUNDS
from advlib.explorer import (EpsExplorer, frame, panel_html, standalone_data, standalone_html, static_figure,
                             static_png)

N_SHOW = 5
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
DIGITS = tuple(str(d) for d in range(10))  # advlib.data.class_names("mnist")


@pytest.fixture(scope="module")
def explorer(trained_model, test_batch):
    x, y = test_batch
    return EpsExplorer(trained_model, x[:200], y[:200], n_show=N_SHOW, eps_step=0.01, initial_eps=0.1,
                       progress=False)


def decode(uri: str) -> np.ndarray:
    assert uri.startswith("data:image/png;base64,")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))


def grey(x: torch.Tensor) -> np.ndarray:
    """(1, H, W) in [-1, 1] -> (H, W) uint8, computed here independently of the explorer."""
    return np.round(((x[0] + 1) / 2).clamp(0, 1).numpy() * 255).astype(np.uint8)


@pytest.mark.parametrize("eps", [0.0, 0.03, 0.1, 0.3])
def test_state_equals_fgsm_oracle(explorer, eps):
    x, y = explorer.x, explorer.y
    state = explorer.state(eps)
    x_adv = fgsm(explorer.model, x, y, eps, bounds=BOUNDS)
    preds, confs = predict(explorer.model, x_adv)
    assert state["eps"] == pytest.approx(eps)
    assert state["eps_pixel"] == pytest.approx(eps / 2)
    assert state["adv_accuracy"] == pytest.approx(100.0 * (preds == y).float().mean().item())
    assert state["asr"] == pytest.approx(100.0 - state["adv_accuracy"])
    assert state["preds"] == preds[:N_SHOW].tolist()
    assert state["clean_preds"] == predict(explorer.model, x[:N_SHOW])[0].tolist()
    assert state["confidences"] == pytest.approx((100 * confs[:N_SHOW]).tolist(), abs=1e-4)
    assert torch.allclose(state["x_adv"], x_adv[:N_SHOW]) and torch.equal(state["x"], x[:N_SHOW])


def test_slider_snaps_to_its_grid(explorer):
    assert explorer.state(0.0349)["eps"] == pytest.approx(0.03)
    assert explorer.state(5.0)["eps"] == pytest.approx(0.3)  # clipped to the slider's range
    assert explorer.state(-1.0)["eps"] == 0.0
    assert len(explorer.eps_grid) == len(explorer.accuracy_curve) == 31


def test_standalone_data_equals_state_at_every_position(explorer):
    data = standalone_data(explorer)
    assert data["eps_grid"] == explorer.eps_grid and len(data["frames"]) == len(explorer.eps_grid)
    assert data["initial"] == explorer.snap(0.1) and data["n"] == 200
    assert data["labels"] == explorer.y[:N_SHOW].tolist()
    for eps, f in zip(explorer.eps_grid, data["frames"]):
        s = explorer.state(eps)
        for key in ("eps", "eps_pixel", "adv_accuracy", "asr", "preds", "confidences"):
            assert f[key] == s[key], f"{key} at eps {eps}"
        for k in range(N_SHOW):  # the pictures are the state's images, decoded back
            assert np.array_equal(decode(f["adversarial"][k]), grey(s["x_adv"][k]))
            assert np.array_equal(decode(f["perturbation"][k]), viz.perturbation_rgb((s["x_adv"] - s["x"])[k, 0]))
    assert json.loads(json.dumps(data)) == data  # plain JSON: what the page embeds


def test_standalone_html_is_self_contained(explorer):
    page = standalone_html(explorer)
    assert page == standalone_html(explorer)  # deterministic: the same numbers give the same output
    embedded = re.search(r'<script type="application/json" class="advlib-explorer-data">(.*?)</script>', page, re.S)
    assert json.loads(embedded.group(1)) == standalone_data(explorer)
    assert '<input type="range" min="0" max="30" step="1" value="10"' in page  # arrow keys move one grid step
    assert not re.search(r'(src|href)=["\']?(https?:)?//', page), "the fragment loads something from a network"
    assert re.search(r"@import|url\(", page) is None
    imgs = re.findall(r"<img [^>]*>", page)
    assert len(imgs) == 3 * N_SHOW and all(re.search(r'alt="[^"]+"', i) for i in imgs)


def test_update_is_the_callback_and_redraws(explorer):
    widget = explorer.widget
    slider, panel = widget.children
    slider.value = 0.2  # what dragging does
    assert explorer.current["eps"] == pytest.approx(0.2)
    assert 'ε = <b class="advlib-v-eps">0.200</b>' in panel.value
    assert f"{explorer.current['adv_accuracy']:.2f}%" in panel.value
    assert panel.value.count("<img") == 3 * N_SHOW and "advlib-explorer-curve" in panel.value
    state = explorer.update(0.05)
    assert '<b class="advlib-v-eps">0.050</b>' in panel.value and state is explorer.current
    assert panel.value.endswith(panel_html(explorer, state))  # the markup the standalone page starts from


def test_display_carries_widget_standalone_html_and_picture(explorer):
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["text/html"] == standalone_html(explorer)
    assert bundle["image/png"] and "EpsExplorer" in bundle["text/plain"]
    assert base64.b64decode(bundle["image/png"]) == static_png(explorer)


def test_one_perturbation_scale_in_every_view(explorer):
    """Defect 6: the static picture, the live view, the standalone page and Figure 5 draw x_adv - x with the same
    colours, stated on the colour bar in both units. eps = 0.05 lies below the saturation, so scales that differ
    show different colours."""
    s = explorer.state(0.05)
    delta = (s["x_adv"] - s["x"]).numpy()
    limit = viz.PERTURBATION_LIMIT
    norm = np.clip(delta / limit, -1, 1) * 0.5 + 0.5  # the oracle: the diverging map over [-limit, limit]
    want = np.round(255 * viz.mpl.colormaps[viz.PERTURBATION_CMAP](norm)[..., :3]).astype(int)  # (K, 1, H, W, 3)

    def tiles(fig):
        images = [ax.images[0] for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
        return [np.round(255 * im.to_rgba(im.get_array())[..., :3]).astype(int) for im in images[-N_SHOW:]]

    figure5 = viz.plot_image_grid(s["x"], s["x_adv"], s["labels"], s["clean_preds"], s["preds"], s["eps"])
    views = {"Figure 5": tiles(figure5), "static picture": tiles(static_figure(explorer, s)),
             "live and standalone HTML": [decode(u).astype(int) for u in frame(explorer, s)["perturbation"]]}
    for name, got in views.items():
        for k in range(N_SHOW):
            # up to one step of the 256-entry colour map (pixels on a bin edge); another scale is 50+ off
            assert np.abs(got[k] - want[k, 0]).max() <= 8, f"{name}: image {k} is on another colour scale"
    panel = panel_html(explorer, s)
    assert f"±{limit:g}" in panel and f"±{limit / 2:g} in [0, 1] px" in panel


def small_explorer(trained_model, test_batch, **kwargs) -> EpsExplorer:
    x, y = test_batch
    return EpsExplorer(trained_model, x[:40], y[:40], n_show=4, eps_max=0.3, eps_step=0.05, initial_eps=0.15,
                       progress=False, **kwargs)


def alts(markup: str) -> list[str]:
    return [html.unescape(a) for a in re.findall(r'<img [^>]*alt="([^"]*)"', markup)]


def test_neutral_wording_without_names(explorer):
    s = explorer.current
    want = []
    for t, p, c in zip(s["labels"], s["preds"], s["confidences"]):
        want += [f"original image, true label {t}",
                 f"FGSM image at ε = {s['eps']:.3f}, true {t}, predicted {p} ({c:.0f}%)",
                 f"perturbation x_adv − x of the image with true label {t} at ε = {s['eps']:.3f}"]
    assert alts(panel_html(explorer, s)) == want
    assert "digit" not in " ".join(alts(standalone_html(explorer)))
    assert "classes" not in standalone_data(explorer) and explorer.classes is None


def test_class_names_in_every_view(trained_model, test_batch):
    named = small_explorer(trained_model, test_batch, classes=FASHION)
    s = named.current
    name = lambda k: FASHION[k]  # noqa: E731
    assert s["labels"] == test_batch[1][:4].tolist()  # the state keeps the numbers
    panel = panel_html(named, s)
    preds = " · ".join(f"{html.escape(name(p))} ({c:.0f}%)" for p, c in zip(s["preds"], s["confidences"]))
    assert f'<span class="advlib-v-preds">{preds}</span>' in panel
    captions = re.findall(r'<div class="advlib-explorer-caption[^"]*"[^>]*>(.*?)</div>', panel)
    assert captions == [f"true {html.escape(name(t))}<br>→ <b>{html.escape(name(p))}</b> ({c:.0f}%)"
                        for t, p, c in zip(s["labels"], s["preds"], s["confidences"])]
    want = []
    for t, p, c in zip(s["labels"], s["preds"], s["confidences"]):
        want += [f"original image, true label {name(t)}",
                 f"FGSM image at ε = {s['eps']:.3f}, true {name(t)}, predicted {name(p)} ({c:.0f}%)",
                 f"perturbation x_adv − x of the image with true label {name(t)} at ε = {s['eps']:.3f}"]
    assert alts(panel) == want
    data = standalone_data(named)
    assert data["classes"] == list(FASHION) and data["labels"] == s["labels"]  # the page's script maps them
    embedded = re.search(r'<script type="application/json" class="advlib-explorer-data">(.*?)</script>',
                         standalone_html(named), re.S)
    assert json.loads(embedded.group(1))["classes"] == list(FASHION)
    tiles = [ax for ax in static_figure(named).axes if ax.images and ax.get_label() != "<colorbar>"]
    assert [ax.get_title() for ax in tiles[4:8]] == [f"true {name(t)}\n→ pred {name(p)}"
                                                     for t, p in zip(s["labels"], s["preds"])]


def test_digit_names_change_nothing(trained_model, test_batch):
    plain = small_explorer(trained_model, test_batch)
    digits = small_explorer(trained_model, test_batch, classes=DIGITS)
    assert digits.classes is None
    assert standalone_html(digits) == standalone_html(plain)
    assert static_png(digits) == static_png(plain)


def test_bad_arguments(trained_model, test_batch):
    x, y = test_batch
    with pytest.raises(ValueError, match="n_show"):
        EpsExplorer(trained_model, x[:10], y[:10], n_show=11, progress=False)
    with pytest.raises(ValueError, match="range"):
        EpsExplorer(trained_model, x[:10] * 3, y[:10], progress=False)
    with pytest.raises(ValueError, match="no name"):
        EpsExplorer(trained_model, x[:10], y[:10], progress=False, classes=FASHION[:2])


class _PixelInput(torch.nn.Module):
    """The study's model seen from [0, 1] pixels: forward(x01) = model(2 * x01 - 1)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x01: torch.Tensor) -> torch.Tensor:
        return self.model(x01 * 2 - 1)


def test_bounds_keyword(trained_model, test_batch):
    """Images in another range: bounds=(0, 1), eps in their units; the numbers are fgsm's and predict's with the same
    bounds. The default stays the study's normalized [-1, 1]."""
    x, y = test_batch
    x01, y = (x[:40] + 1) / 2, y[:40]
    model = _PixelInput(trained_model)
    explorer = EpsExplorer(model, x01, y, n_show=3, eps_max=0.1, eps_step=0.05, initial_eps=0.05, progress=False,
                           bounds=(0, 1))
    for eps in explorer.eps_grid:
        state = explorer.state(eps)
        x_adv = fgsm(model, x01, y, eps, bounds=(0, 1))
        assert torch.equal(state["x_adv"], x_adv[:3])
        assert state["adv_accuracy"] == pytest.approx(100.0 * (predict(model, x_adv)[0] == y).float().mean().item())
    with pytest.raises(ValueError, match=r"outside bounds=\(0, 1\)"):
        EpsExplorer(trained_model, x[:10], y[:10], progress=False, bounds=(0, 1))
