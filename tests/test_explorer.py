"""The eps slider's logic, against fgsm + predict as the oracle (the browser test checks the rendering)."""
from __future__ import annotations

import pytest
import torch

from advlib.attacks import fgsm, predict
from advlib.explorer import EpsExplorer


@pytest.fixture(scope="module")
def explorer(trained_model, test_batch):
    x, y = test_batch
    return EpsExplorer(trained_model, x[:200], y[:200], n_show=5, eps_step=0.01, initial_eps=0.1, progress=False)


@pytest.mark.parametrize("eps", [0.0, 0.03, 0.1, 0.3])
def test_state_equals_fgsm_oracle(explorer, eps):
    x, y = explorer.x, explorer.y
    state = explorer.state(eps)
    x_adv = fgsm(explorer.model, x, y, eps)
    preds, confs = predict(explorer.model, x_adv)
    assert state["eps"] == pytest.approx(eps)
    assert state["eps_pixel"] == pytest.approx(eps / 2)
    assert state["adv_accuracy"] == pytest.approx(100.0 * (preds == y).float().mean().item())
    assert state["asr"] == pytest.approx(100.0 - state["adv_accuracy"])
    assert state["preds"] == preds[:5].tolist()
    assert state["confidences"] == pytest.approx((100 * confs[:5]).tolist(), abs=1e-4)
    assert torch.allclose(state["x_adv"], x_adv[:5])


def test_slider_snaps_to_its_grid(explorer):
    assert explorer.state(0.0349)["eps"] == pytest.approx(0.03)
    assert explorer.state(5.0)["eps"] == pytest.approx(0.3)  # clipped to the slider's range
    assert explorer.state(-1.0)["eps"] == 0.0
    assert len(explorer.eps_grid) == len(explorer.accuracy_curve) == 31


def test_update_is_the_callback_and_redraws(explorer):
    widget = explorer.widget
    slider, status, panel = widget.children
    slider.value = 0.2  # what dragging does
    assert explorer.current["eps"] == pytest.approx(0.2)
    assert "ε = <b>0.200</b>" in status.value
    assert f"{explorer.current['adv_accuracy']:.2f}%" in status.value
    assert panel.value.count("<img") == 3 * 5 and "advlib-explorer-curve" in panel.value
    state = explorer.update(0.05)
    assert "ε = <b>0.050</b>" in status.value and state is explorer.current


def test_static_rendering_carries_a_picture(explorer):
    bundle = explorer._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert bundle["image/png"] and "EpsExplorer" in bundle["text/plain"]


def test_bad_arguments(trained_model, test_batch):
    x, y = test_batch
    with pytest.raises(ValueError, match="n_show"):
        EpsExplorer(trained_model, x[:10], y[:10], n_show=11, progress=False)
    with pytest.raises(ValueError, match="range"):
        EpsExplorer(trained_model, x[:10] * 3, y[:10], progress=False)
