"""CUDA end to end (issue 10, defect 5): attacks, metrics, one training step and the explorer on a GPU, compared
with the same computation on the CPU.

Every test is marked ``cuda`` and skipped when no GPU is present. GPU and CPU kernels round differently, so
results are compared with tolerances: continuous outputs within float32 rounding, predictions (and whether an
image is classified correctly) agreeing on at least MIN_AGREEMENT of the images, where a near-tie or a near-zero
gradient may tip the other way.
"""
from __future__ import annotations

import copy
import math

import pytest
import torch

from advlib.attacks import fgsm, fgsm_direction, fgsm_sweep, predict, sweep_direction
from advlib.iterative import pgd
from advlib.data import BOUNDS, MNIST
from advlib.metrics import (accuracy, confusion_matrix, robust_rows, robust_curves, roc_auc, roc_curve,
                            select_correct, sweep_metrics)
from advlib.train import TrainConfig, train

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU here (torch.cuda.is_available() is False)"),
]

MIN_AGREEMENT = 0.99  # fraction of images whose prediction must be the same on both devices
EPS_GRID = [0.0, 0.05, 0.1, 0.2, 0.3]  # normalized units


@pytest.fixture(scope="module")
def cpu(trained_model, test_batch):
    """The trained model and the 512-image test batch on the CPU (a private copy of the model)."""
    x, y = test_batch
    return copy.deepcopy(trained_model), x, y


@pytest.fixture(scope="module")
def gpu(cpu):
    """The same model and batch on the GPU."""
    model, x, y = cpu
    return copy.deepcopy(model).cuda(), x.cuda(), y.cuda()


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """Fraction of entries equal in a (any device) and b."""
    return (a.cpu() == b.cpu()).float().mean().item()


def test_predict(cpu, gpu):
    pred_c, conf_c = predict(*cpu[:2])
    pred_g, conf_g = predict(*gpu[:2])
    assert pred_g.device.type == conf_g.device.type == "cuda"
    assert agreement(pred_g, pred_c) >= MIN_AGREEMENT
    assert torch.allclose(conf_g.cpu(), conf_c, atol=1e-4)
    assert accuracy(*gpu) == pytest.approx(accuracy(*cpu), abs=100 * (1 - MIN_AGREEMENT))
    chosen_g, chosen_c = select_correct(*gpu, 100).tolist(), select_correct(*cpu, 100).tolist()
    assert len(set(chosen_g) & set(chosen_c)) >= 100 * MIN_AGREEMENT - 1  # a near-tie may swap an image


@pytest.mark.parametrize("targeted", [False, True])
def test_fgsm(cpu, gpu, targeted):
    (model_c, x_c, y_c), (model_g, x_g, y_g) = cpu, gpu
    labels_c, labels_g = ((y_c + 1) % 10, (y_g + 1) % 10) if targeted else (y_c, y_g)
    adv_c = fgsm(model_c, x_c, labels_c, 0.2, targeted=targeted, bounds=BOUNDS)
    adv_g = fgsm(model_g, x_g, labels_g, 0.2, targeted=targeted, bounds=BOUNDS)
    assert adv_g.device.type == "cuda"
    assert (adv_g - x_g).abs().max().item() <= 0.2 + 1e-6 and adv_g.abs().max().item() <= 1
    assert agreement(adv_g, adv_c) >= 0.99  # pixels: only near-zero gradients may take the other sign
    assert agreement(predict(model_g, adv_g)[0], predict(model_c, adv_c)[0]) >= MIN_AGREEMENT
    direction = fgsm_direction(model_g, x_g, labels_g, targeted=targeted, bounds=BOUNDS)
    assert agreement(direction, fgsm_direction(model_c, x_c, labels_c, targeted=targeted, bounds=BOUNDS)) >= 0.99


def test_sweep(cpu, gpu):
    (model_c, x_c, y_c), (model_g, x_g, y_g) = cpu, gpu
    result_c = fgsm_sweep(model_c, x_c, y_c, EPS_GRID, bounds=BOUNDS)
    result_g = fgsm_sweep(model_g, x_g, y_g, EPS_GRID, bounds=BOUNDS)
    assert result_g.preds.device.type == "cuda"
    for i in range(len(EPS_GRID)):
        assert agreement(result_g.preds[i], result_c.preds[i]) >= MIN_AGREEMENT, EPS_GRID[i]
    # any direction, the same on both devices
    d = torch.randn(x_c.shape, generator=torch.Generator().manual_seed(0)).sign()
    swept_c = sweep_direction(model_c, x_c, y_c, d, EPS_GRID, bounds=BOUNDS)
    swept_g = sweep_direction(model_g, x_g, y_g, d.cuda(), EPS_GRID, bounds=BOUNDS)
    assert agreement(swept_g.preds, swept_c.preds) >= MIN_AGREEMENT
    assert torch.allclose(swept_g.confidences.cpu(), swept_c.confidences, atol=1e-3)
    # the summaries take CUDA results as they are
    clean_conf = predict(model_g, x_g)[1]
    for row_g, row_c in zip(sweep_metrics(result_g, clean_conf), sweep_metrics(result_c, predict(model_c, x_c)[1])):
        assert row_g["adv_accuracy"]["value"] == pytest.approx(row_c["adv_accuracy"]["value"], abs=1.0)
    rows = robust_rows(predict(model_g, x_g)[0], result_g)
    assert [r["eps"] for r in rows] == EPS_GRID and all(r["n"] == len(y_g) for r in rows)


def test_pgd(cpu, gpu):
    (model_c, x_c, y_c), (model_g, x_g, y_g) = cpu, gpu
    mask = torch.arange(len(y_c)) % 2 == 0
    adv_c = pgd(model_c, x_c, y_c, 0.1, steps=5, seed=3, mask=mask, bounds=BOUNDS)
    adv_g = pgd(model_g, x_g, y_g, 0.1, steps=5, seed=3, mask=mask.cuda(), bounds=BOUNDS)
    assert adv_g.device.type == "cuda"
    assert (adv_g - x_g).abs().max().item() <= 0.1 + 1e-6 and adv_g.abs().max().item() <= 1
    assert torch.equal(adv_g[~mask.cuda()], x_g[~mask.cuda()])
    # the random start comes from a CPU generator: the same on both devices
    start_c = pgd(model_c, x_c, y_c, 0.1, steps=1, step_size=0.0, seed=3, bounds=BOUNDS)
    start_g = pgd(model_g, x_g, y_g, 0.1, steps=1, step_size=0.0, seed=3, bounds=BOUNDS)
    assert torch.allclose(start_g.cpu(), start_c, atol=1e-6)
    correct_c = predict(model_c, adv_c)[0] == y_c
    correct_g = predict(model_g, adv_g)[0] == y_g
    assert agreement(correct_g, correct_c) >= MIN_AGREEMENT


def test_robustness(cpu, gpu):
    got_c = robust_curves(*cpu, [0.0, 0.1, 0.3], pgd_steps=3, seed=0, bounds=BOUNDS)
    got_g = robust_curves(*gpu, [0.0, 0.1, 0.3], pgd_steps=3, seed=0, bounds=BOUNDS)
    for attack in ("fgsm", "pgd"):
        for row_g, row_c in zip(got_g[attack], got_c[attack]):
            assert row_g["eps"] == row_c["eps"] and row_g["n"] == row_c["n"]
            assert abs(row_g["k"] - row_c["k"]) <= math.ceil((1 - MIN_AGREEMENT) * row_c["n"]), (attack, row_g["eps"])


def test_roc_and_confusion_matrix(cpu, gpu):
    (model_c, x_c, y_c), (model_g, x_g, y_g) = cpu, gpu
    clean = predict(model_g, x_g)[1]
    adversarial = predict(model_g, fgsm(model_g, x_g, y_g, 0.1, bounds=BOUNDS))[1]
    fpr_g, tpr_g = roc_curve(clean, adversarial)
    fpr_c, tpr_c = roc_curve(clean.cpu(), adversarial.cpu())
    assert torch.equal(fpr_g.cpu(), fpr_c) and torch.equal(tpr_g.cpu(), tpr_c)
    assert roc_auc(clean, adversarial) == roc_auc(clean.cpu(), adversarial.cpu())
    pred_g = predict(model_g, x_g)[0]
    assert torch.equal(confusion_matrix(y_g, pred_g).cpu(), confusion_matrix(y_c, pred_g.cpu()))


@pytest.mark.parametrize("adversarial", [None, "pgd", "fgsm_rs"])
def test_one_training_epoch(mnist_small, adversarial):
    config = TrainConfig(device="cuda", epochs=1, adversarial=adversarial, adv_pgd_steps=2, adv_check_size=64)
    model, optimizer, history = train(mnist_small, config=config, progress=False)
    assert all(p.device.type == "cuda" for p in model.parameters())
    assert len(history.step_loss) == math.ceil(len(mnist_small.train_x) / config.batch_size)
    assert all(math.isfinite(loss) for loss in history.step_loss)
    assert len(history.test_accuracy) == 1 and 0 <= history.test_accuracy[0] <= 100
    if adversarial is not None:
        assert len(history.pgd_check_accuracy) == 1 and history.kept_epoch == 1
    x = mnist_small.test_x[:32].cuda()
    assert predict(model, x)[0].device.type == "cuda"


def test_explorer(cpu, gpu):
    from advlib.explorer import EpsExplorer

    (model_c, x_c, y_c), (model_g, x_g, y_g) = cpu, gpu
    explorer_g = EpsExplorer(model_g, x_g, y_g, progress=False)
    explorer_c = EpsExplorer(model_c, x_c, y_c, progress=False)
    state_g, state_c = explorer_g.state(0.1), explorer_c.state(0.1)
    assert state_g["eps"] == state_c["eps"] == 0.1
    assert state_g["adv_accuracy"] == pytest.approx(state_c["adv_accuracy"], abs=100 * (1 - MIN_AGREEMENT))
    assert state_g["labels"] == state_c["labels"]
    assert len(state_g["preds"]) == explorer_g.n_show
    # every view renders from CUDA tensors: the display bundle holds the live widget, the kernel-free HTML and
    # the static picture
    explorer_g.update(0.2)
    bundle = explorer_g._repr_mimebundle_()
    assert bundle["image/png"] and bundle["text/html"]
