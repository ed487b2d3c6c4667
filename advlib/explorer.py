"""The eps slider: drag eps, watch a handful of digits and the 1,000-image accuracy change.

Construction computes the FGSM direction sign(grad_x loss) once for all images (one backward pass) and the
adversarial accuracy of the whole set at every slider position (forward passes only). A move then costs a
lookup, one forward pass over the handful of shown images and one redraw: no gradient, no sweep.

eps is in normalized units (images in [-1, 1]); the status line also gives [0, 1] pixel units.
"""
from __future__ import annotations

import base64
import io

import numpy as np
import torch
from torch import nn

from advlib.attacks import check_batch, fgsm_direction, predict, sweep_direction, to_pixel_eps


def _grid(eps_max: float, eps_step: float) -> list[float]:
    n = int(round(eps_max / eps_step))
    return [round(i * eps_step, 6) for i in range(n + 1)]


class EpsExplorer:
    """Interactive FGSM explorer over a set of correctly classified images.

    Args:
        model: trained classifier (put in eval mode while attacked; its mode is restored).
        x: (N, 1, 32, 32) float in [-1, 1], e.g. the 1,000 correctly classified test images; y: (N,) labels.
        n_show: how many of the first images to display.
        eps_max, eps_step: slider range and resolution, normalized units.
        initial_eps: where the slider starts.

    Use ``display(explorer)`` in a notebook (a static render shows a PNG of the current state), or
    ``explorer.update(eps)`` (the slider's callback) and ``explorer.state(eps)`` (numbers only) from code.
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, n_show: int = 8,
                 eps_max: float = 0.3, eps_step: float = 0.005, initial_eps: float = 0.15, progress: bool = True):
        check_batch(x, y)
        if not 1 <= n_show <= len(x):
            raise ValueError(f"n_show must lie in 1..{len(x)}, got {n_show}")
        self.model, self.x, self.y, self.n_show = model, x, y, n_show
        self.eps_grid = _grid(eps_max, eps_step)
        self.eps_step = eps_step
        self.direction = fgsm_direction(model, x, y)  # (N, 1, 32, 32): the only gradient ever computed
        sweep = sweep_direction(model, x, y, self.direction, self.eps_grid, progress=progress)
        correct = (sweep.preds == sweep.labels).float().mean(dim=1)  # (E,)
        self.accuracy_curve = (100.0 * correct).tolist()  # adversarial accuracy (%) at each grid eps
        self._widgets = None
        self.current = self.state(initial_eps)

    # -- numbers --------------------------------------------------------------------------------------------
    def snap(self, eps: float) -> int:
        """Index of the grid eps nearest to eps."""
        return int(min(max(round(eps / self.eps_step), 0), len(self.eps_grid) - 1))

    def state(self, eps: float) -> dict:
        """Everything the display shows at eps (snapped to the slider grid)."""
        i = self.snap(eps)
        eps = self.eps_grid[i]
        xs, ys = self.x[: self.n_show], self.y[: self.n_show]
        x_adv = (xs + eps * self.direction[: self.n_show]).clamp(-1, 1)
        pred, conf = predict(self.model, x_adv)  # the same forward path as the sweep behind accuracy_curve
        acc = self.accuracy_curve[i]
        return {"eps": eps, "eps_pixel": to_pixel_eps(eps), "n": len(self.x), "adv_accuracy": acc,
                "asr": 100.0 - acc, "labels": ys.tolist(), "preds": pred.tolist(),
                "confidences": (100.0 * conf).tolist(), "x_adv": x_adv}

    # -- drawing --------------------------------------------------------------------------------------------
    # The live view is plain HTML (tiny PNG data URIs and an inline SVG curve): building it takes milliseconds,
    # where a matplotlib redraw of the same panel takes hundreds.
    @staticmethod
    def _png_uri(img: np.ndarray, cmap=None) -> str:
        """(32, 32) array in [0, 1] -> data URI of a 96x96 PNG (grey, or RGB through cmap)."""
        from PIL import Image

        arr = cmap(img)[..., :3] if cmap is not None else img
        pil = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8)).resize((96, 96), Image.NEAREST)
        buf = io.BytesIO()
        pil.save(buf, format="png", compress_level=1)
        return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()

    def _curve_svg(self, state: dict, width: int = 560, height: int = 170) -> str:
        left, right, top, bottom = 46, 10, 10, 36
        def px(eps, acc):
            x = left + (width - left - right) * eps / self.eps_grid[-1]
            return x, top + (height - top - bottom) * (1 - acc / 100.0)
        points = " ".join("%.1f,%.1f" % px(e, a) for e, a in zip(self.eps_grid, self.accuracy_curve))
        mx, my = px(state["eps"], state["adv_accuracy"])
        x0, y100 = px(0, 100)
        x1, y0 = px(self.eps_grid[-1], 0)
        ticks = "".join(f'<text x="{px(e, 0)[0]:.1f}" y="{y0 + 14}" font-size="10" text-anchor="middle">{e:.2f}</text>'
                        for e in np.linspace(0, self.eps_grid[-1], 7))
        yticks = "".join(f'<text x="{left - 4}" y="{px(0, a)[1] + 3:.1f}" font-size="10" text-anchor="end">{a}</text>'
                         for a in (0, 25, 50, 75, 100))
        return (f'<svg class="advlib-explorer-curve" width="{width}" height="{height}" '
                f'xmlns="http://www.w3.org/2000/svg" style="background:white">'
                f'<rect x="{left}" y="{top}" width="{x1 - left}" height="{y0 - top}" fill="none" stroke="#999"/>'
                f'<line x1="{x0}" y1="{y100:.1f}" x2="{x1}" y2="{y100:.1f}" stroke="green" stroke-dasharray="4"/>'
                f'<polyline points="{points}" fill="none" stroke="#d62728" stroke-width="2"/>'
                f'<circle cx="{mx:.1f}" cy="{my:.1f}" r="5" fill="black"/>{ticks}{yticks}'
                f'<text x="{(left + x1) / 2}" y="{height - 4}" font-size="11" text-anchor="middle">'
                f'ε (normalized units; pixel units = ε/2) — red: adversarial accuracy, green: clean, dot: slider</text>'
                f'<text x="12" y="{(top + y0) / 2}" font-size="11" text-anchor="middle" '
                f'transform="rotate(-90 12 {(top + y0) / 2})">accuracy (%)</text></svg>')

    def panel_html(self, state: dict | None = None) -> str:
        """The images (original, adversarial, perturbation x10) with labels, and the accuracy curve, as HTML."""
        import matplotlib

        s = state or self.current
        k = self.n_show
        xs = (self.x[:k, 0] * 0.5 + 0.5).numpy()
        adv = (s["x_adv"][:, 0] * 0.5 + 0.5).numpy()
        cmap = matplotlib.colormaps["seismic"]
        rows = {"original": [self._png_uri(xs[c]) for c in range(k)],
                "adversarial": [self._png_uri(adv[c]) for c in range(k)],
                "perturbation ×10": [self._png_uri(np.clip(0.5 + 10 * (adv[c] - xs[c]), 0, 1), cmap)
                                     for c in range(k)]}
        html = ['<table class="advlib-explorer-grid" style="border-collapse:collapse;text-align:center">']
        for name, uris in rows.items():
            cells = "".join(f'<td style="padding:2px"><img src="{u}" width="72" height="72"/></td>' for u in uris)
            html.append(f'<tr><th style="text-align:right;padding-right:6px">{name}</th>{cells}</tr>')
            if name == "adversarial":
                caps = "".join(
                    f'<td style="font-size:11px;color:{"black" if p == t else "#d62728"}">'
                    f'true {t} → <b>{p}</b> ({c:.0f}%)</td>'
                    for t, p, c in zip(s["labels"], s["preds"], s["confidences"]))
                html.append(f'<tr class="advlib-explorer-labels"><th></th>{caps}</tr>')
        html.append("</table>")
        html.append(self._curve_svg(s))
        return "".join(html)

    def figure(self, state: dict | None = None):
        """A matplotlib Figure of the same view (for saving, and for static renderings of the notebook)."""
        from matplotlib.figure import Figure

        s = state or self.current
        k = self.n_show
        fig = Figure(figsize=(1.4 * k, 6.2), dpi=100)
        gs = fig.add_gridspec(4, k, height_ratios=[1, 1, 1, 1.6], hspace=0.6, wspace=0.1)
        xs = self.x[:k, 0]
        adv = s["x_adv"][:, 0]
        for c in range(k):
            for r, (img, kw) in enumerate([((xs[c] * 0.5 + 0.5), dict(cmap="gray", vmin=0, vmax=1)),
                                           ((adv[c] * 0.5 + 0.5), dict(cmap="gray", vmin=0, vmax=1)),
                                           ((10 * (adv[c] - xs[c]) / 2).clamp(-1, 1), dict(cmap="seismic", vmin=-1, vmax=1))]):
                ax = fig.add_subplot(gs[r, c])
                ax.imshow(img.numpy(), **kw)
                ax.set_xticks([])
                ax.set_yticks([])
                if c == 0:
                    ax.set_ylabel(["original", "adversarial", "perturb. ×10"][r], fontsize=9)
                if r == 0:
                    ax.set_title(f"true {s['labels'][c]}", fontsize=9)
                if r == 1:
                    ok = s["preds"][c] == s["labels"][c]
                    ax.set_title(f"pred {s['preds'][c]} ({s['confidences'][c]:.0f}%)", fontsize=9,
                                 color="black" if ok else "red")
        ax = fig.add_subplot(gs[3, :])
        ax.plot(self.eps_grid, self.accuracy_curve, color="tab:red", lw=2, label="adversarial accuracy")
        ax.axhline(100, color="tab:green", ls="--", lw=1, label="clean accuracy")
        ax.plot([s["eps"]], [s["adv_accuracy"]], "o", color="black", ms=8, label="slider position")
        ax.set_xlabel("ε (normalized units, images in [-1, 1]); pixel units = ε / 2")
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 105)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper right", fontsize=8)
        fig.suptitle(f"FGSM ε = {s['eps']:.3f} normalized ({s['eps_pixel']:.4f} in [0, 1] pixels): "
                     f"adversarial accuracy {s['adv_accuracy']:.1f}% on {s['n']} images", fontsize=11)
        return fig

    def render(self, state: dict | None = None) -> bytes:
        """PNG bytes of :meth:`figure`."""
        buf = io.BytesIO()
        self.figure(state).savefig(buf, format="png", bbox_inches="tight")
        return buf.getvalue()

    def status_html(self, state: dict | None = None) -> str:
        s = state or self.current
        preds = " · ".join(f"{p} ({c:.0f}%)" for p, c in zip(s["preds"], s["confidences"]))
        return (f'<div class="advlib-explorer-status">ε = <b>{s["eps"]:.3f}</b> normalized '
                f'(= {s["eps_pixel"]:.4f} in [0, 1] pixel units) · adversarial accuracy '
                f'<b>{s["adv_accuracy"]:.2f}%</b> · ASR <b>{s["asr"]:.2f}%</b> on {s["n"]} images</div>'
                f'<div class="advlib-explorer-preds">predicted: {preds}</div>')

    # -- the widget -----------------------------------------------------------------------------------------
    @property
    def widget(self):
        """The ipywidgets VBox(slider, status, image); built on first use."""
        if self._widgets is None:
            import ipywidgets as W

            slider = W.FloatSlider(value=self.current["eps"], min=0.0, max=self.eps_grid[-1], step=self.eps_step,
                                   readout_format=".3f", continuous_update=True, description="ε (normalized)",
                                   style={"description_width": "initial"}, layout=W.Layout(width="520px"))
            status = W.HTML(self.status_html())
            image = W.HTML(self.panel_html())
            slider.observe(lambda change: self.update(change["new"]), names="value")
            self._widgets = (W.VBox([slider, status, image]), slider, status, image)
        return self._widgets[0]

    def update(self, eps: float) -> dict:
        """The slider's callback: recompute the state at eps and redraw. Returns the state."""
        self.current = self.state(eps)
        if self._widgets is not None:
            _, _, status, image = self._widgets
            image.value = self.panel_html()
            status.value = self.status_html()
        return self.current

    def _repr_mimebundle_(self, **kwargs):
        # The live widget for JupyterLab, plus a PNG and HTML of the current state so that a static rendering
        # (GitHub, nbconvert without widget state) shows the last state instead of "Error displaying widget".
        bundle = self.widget._repr_mimebundle_(**kwargs)
        png = self.render()
        bundle["image/png"] = base64.b64encode(png).decode()
        bundle["text/plain"] = f"EpsExplorer at ε = {self.current['eps']:.3f} (normalized)"
        return bundle
