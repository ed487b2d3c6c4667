"""advlib.metrics against hand values, a second formula and scikit-learn."""
from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from sklearn.metrics import roc_auc_score as sk_roc_auc_score
from sklearn.metrics import roc_curve as sk_roc_curve

from advlib import attacks, metrics
from advlib.attacks import SweepResult, fgsm, predict
from advlib.iterative import pgd
from advlib.data import BOUNDS
from advlib.metrics import (accuracy, confusion_matrix, first_test_images, rate,
                            robust_rows, robust_curves, roc_auc, roc_curve, select_correct,
                            sweep_metrics, tpr_at_fpr, wilson_interval)

Z95 = 1.959963984540054


def wilson_closed_form(k: int, n: int, z: float = Z95) -> tuple[float, float]:
    """Wilson (1927) in its other algebraic form, in percent:
    (2k + z^2 -+ z sqrt(z^2 + 4k(n-k)/n)) / (2(n + z^2))."""
    root = z * math.sqrt(z * z + 4 * k * (n - k) / n)
    return (100 * (2 * k + z * z - root) / (2 * (n + z * z)), 100 * (2 * k + z * z + root) / (2 * (n + z * z)))


# ---------------------------------------------------------------------------------------------------------------
# Wilson intervals


@pytest.mark.parametrize("k, n, low, high", [
    (0, 10, 0.0, 27.753),
    (5, 10, 23.659, 76.341),
    (10, 10, 72.247, 100.0),
    (1, 10, 1.788, 40.415),
])
def test_wilson_hand_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(low, abs=1e-3) and hi == pytest.approx(high, abs=1e-3)


@pytest.mark.parametrize("k, n, low, high", [
    # Newcombe (1998), Statistics in Medicine 17:857-872, Table I, method 3 (Wilson score without continuity
    # correction), published as proportions to four decimals
    (81, 263, 0.2553, 0.3662),
    (15, 148, 0.0624, 0.1605),
    (0, 20, 0.0, 0.1611),
    (1, 29, 0.0061, 0.1718),
])
def test_wilson_published_values(k, n, low, high):
    lo, hi = wilson_interval(k, n)
    assert lo == pytest.approx(100 * low, abs=0.006) and hi == pytest.approx(100 * high, abs=0.006)


def test_wilson_bounds_exact_at_the_ends():
    # no 99.99999999999999 in a results file: all successes reach 100 exactly, none reach 0 exactly
    for n in (1, 10, 263, 10000):
        assert wilson_interval(n, n)[1] == 100.0
        assert wilson_interval(0, n)[0] == 0.0


@pytest.mark.parametrize("k, n", [(0, 1), (1, 1), (0, 10), (3, 10), (5, 10), (10, 10), (0, 300), (299, 300),
                                  (150, 300), (7, 1000), (9999, 10000)])
def test_wilson_matches_closed_form(k, n):
    lo, hi = wilson_interval(k, n)
    elo, ehi = wilson_closed_form(k, n)
    assert lo == pytest.approx(max(0.0, elo), abs=1e-3)
    assert hi == pytest.approx(min(100.0, ehi), abs=1e-3)
    assert 0.0 <= lo <= 100.0 * k / n <= hi <= 100.0
    if k == 0:
        assert lo == 0.0
    if k == n:
        assert hi == 100.0


def test_wilson_symmetry_and_width():
    for n in (10, 57, 300):
        for k in range(0, n + 1, max(1, n // 7)):
            lo, hi = wilson_interval(k, n)
            lo2, hi2 = wilson_interval(n - k, n)
            assert lo == pytest.approx(100 - hi2, abs=1e-9) and hi == pytest.approx(100 - lo2, abs=1e-9)
    # more trials, narrower interval
    widths = [wilson_interval(n // 2, n)[1] - wilson_interval(n // 2, n)[0] for n in (10, 100, 1000)]
    assert widths[0] > widths[1] > widths[2]


def test_wilson_other_z():
    lo, hi = wilson_interval(5, 10, z=1.0)
    elo, ehi = wilson_closed_form(5, 10, z=1.0)
    assert (lo, hi) == pytest.approx((elo, ehi), abs=1e-9)


@pytest.mark.parametrize("k, n, match", [(0, 0, "n must be positive"), (1, -5, "n must be positive"),
                                         (-1, 10, "k must lie"), (11, 10, "k must lie")])
def test_wilson_rejects_bad_counts(k, n, match):
    with pytest.raises(ValueError, match=match):
        wilson_interval(k, n)
    with pytest.raises(ValueError, match=match):
        rate(k, n)


def test_rate_dict():
    r = rate(3, 12)
    assert set(r) == {"value", "ci_low", "ci_high", "k", "n"}
    assert r["value"] == 25.0 and r["k"] == 3 and r["n"] == 12
    assert (r["ci_low"], r["ci_high"]) == wilson_interval(3, 12)
    assert r["ci_low"] < r["value"] < r["ci_high"]
    assert isinstance(rate(torch.tensor(3).item(), 12)["k"], int)


# ---------------------------------------------------------------------------------------------------------------
# Confusion matrix


def test_confusion_matrix_matches_sklearn():
    gen = torch.Generator().manual_seed(0)
    y_true = torch.randint(0, 10, (500,), generator=gen)
    y_pred = torch.where(torch.rand(500, generator=gen) < 0.7, y_true, torch.randint(0, 10, (500,), generator=gen))
    cm = confusion_matrix(y_true, y_pred)
    assert cm.shape == (10, 10) and cm.dtype == torch.int64
    expected = sk_confusion_matrix(y_true.numpy(), y_pred.numpy(), labels=list(range(10)))
    assert cm.tolist() == expected.tolist()
    assert cm.sum().item() == 500
    assert cm.sum(1).tolist() == torch.bincount(y_true, minlength=10).tolist()  # rows are true labels


def test_confusion_matrix_missing_classes_and_orientation():
    cm = confusion_matrix(torch.tensor([2, 2, 7]), torch.tensor([2, 5, 7]))
    assert cm[2, 5] == 1 and cm[5, 2] == 0  # (true 2, predicted 5)
    assert cm.trace() == 2
    expected = sk_confusion_matrix([2, 2, 7], [2, 5, 7], labels=list(range(10)))
    assert cm.tolist() == expected.tolist()


@pytest.mark.parametrize("y_true, y_pred, name", [
    ([0, 1], [10, 1], "y_pred"),  # true 0, predicted 10 would be counted as (1, 0)
    ([1, 1], [-1, 1], "y_pred"),  # true 1, predicted -1 would be counted as (0, 9)
    ([10, 1], [0, 1], "y_true"),
    ([-1, 1], [0, 1], "y_true"),
])
def test_confusion_matrix_rejects_out_of_range_labels(y_true, y_pred, name):
    with pytest.raises(ValueError, match=f"{name} must hold labels in 0..9"):
        confusion_matrix(torch.tensor(y_true), torch.tensor(y_pred))


def test_confusion_matrix_other_class_count_and_empty():
    cm = confusion_matrix(torch.tensor([0, 2, 2]), torch.tensor([1, 2, 0]), num_classes=3)
    assert cm.tolist() == [[0, 1, 0], [0, 0, 0], [1, 0, 1]]
    assert confusion_matrix(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)).sum() == 0


def test_confusion_matrix_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        confusion_matrix(torch.tensor([1, 2]), torch.tensor([1, 2, 3]))


# ---------------------------------------------------------------------------------------------------------------
# ROC: positives are adversarial images, which should score LOW


def _scores(seed=0, n_neg=300, n_pos=200, ties=False):
    gen = torch.Generator().manual_seed(seed)
    neg = torch.rand(n_neg, generator=gen, dtype=torch.float64) * 0.5 + 0.5
    pos = torch.rand(n_pos, generator=gen, dtype=torch.float64) * 0.8 + 0.1
    if ties:  # round so that many scores coincide, within and across the classes
        neg, pos = (neg * 10).round() / 10, (pos * 10).round() / 10
    return neg, pos


def _sklearn_inputs(neg, pos):
    labels = [0] * len(neg) + [1] * len(pos)
    scores = torch.cat([neg, pos]).numpy()
    return labels, -scores  # sklearn: a higher score means positive; ours: lower confidence means adversarial


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_roc_auc_matches_sklearn(seed, ties):
    neg, pos = _scores(seed, ties=ties)
    labels, sk_scores = _sklearn_inputs(neg, pos)
    assert roc_auc(neg, pos) == pytest.approx(sk_roc_auc_score(labels, sk_scores), abs=1e-12)


def test_roc_auc_extremes():
    assert roc_auc([0.9, 0.8], [0.1, 0.2]) == 1.0  # adversarial always less confident: perfect detector
    assert roc_auc([0.1, 0.2], [0.9, 0.8]) == 0.0
    assert roc_auc([0.5, 0.5], [0.5]) == 0.5  # all tied
    assert roc_auc([0.9, 0.3], [0.5]) == 0.5


@pytest.mark.parametrize("ties", [False, True])
def test_roc_curve_matches_sklearn(ties):
    neg, pos = _scores(2, ties=ties)
    fpr, tpr = roc_curve(neg, pos)
    labels, sk_scores = _sklearn_inputs(neg, pos)
    sk_fpr, sk_tpr, _ = sk_roc_curve(labels, sk_scores, drop_intermediate=False)
    assert fpr.tolist() == pytest.approx(sk_fpr.tolist(), abs=1e-12)
    assert tpr.tolist() == pytest.approx(sk_tpr.tolist(), abs=1e-12)


def test_roc_curve_endpoints_monotone_and_area():
    neg, pos = _scores(3)
    fpr, tpr = roc_curve(neg.tolist(), pos.tolist())  # plain lists are accepted too
    assert fpr.dtype == tpr.dtype == torch.float64 and fpr.shape == tpr.shape
    assert (fpr[0].item(), tpr[0].item()) == (0.0, 0.0)
    assert (fpr[-1].item(), tpr[-1].item()) == (1.0, 1.0)
    assert (fpr.diff() >= 0).all() and (tpr.diff() >= 0).all()
    assert ((fpr >= 0) & (fpr <= 1) & (tpr >= 0) & (tpr <= 1)).all()
    # the trapezoid area under the curve is the AUC
    assert torch.trapezoid(tpr, fpr).item() == pytest.approx(roc_auc(neg, pos), abs=1e-12)


def test_tpr_at_fpr_brute_force():
    neg, pos = _scores(4)
    fpr, tpr = roc_curve(neg, pos)
    for max_fpr in (0.0, 0.01, 0.05, 0.2, 1.0):
        # brute force: the best threshold t such that at most max_fpr of clean images have confidence <= t
        best = 0.0
        for t in torch.cat([neg, pos]).tolist():
            if (neg <= t).double().mean().item() <= max_fpr + 1e-12:
                best = max(best, (pos <= t).double().mean().item())
        assert tpr_at_fpr(fpr, tpr, max_fpr) == pytest.approx(best, abs=1e-12), max_fpr
    assert tpr_at_fpr(fpr, tpr, 1.0) == 1.0


def test_tpr_at_fpr_hand_example():
    # clean 0.9, 0.8, 0.3; adversarial 0.2, 0.4, 0.85
    fpr, tpr = roc_curve([0.9, 0.8, 0.3], [0.2, 0.4, 0.85])
    assert tpr_at_fpr(fpr, tpr, 0.0) == pytest.approx(1 / 3)  # t = 0.2 flags one adversarial, no clean image
    assert tpr_at_fpr(fpr, tpr, 0.34) == pytest.approx(2 / 3)  # t = 0.4 costs one clean image in three
    assert tpr_at_fpr(fpr, tpr, 0.05) == tpr_at_fpr(fpr, tpr, 0.0)


# ---------------------------------------------------------------------------------------------------------------
# Sweep summaries (synthetic SweepResult: 10 images, 3 eps)


@pytest.fixture
def synthetic_sweep():
    labels = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
    preds = torch.stack([
        labels.clone(),  # eps 0: all correct
        torch.tensor([0, 1, 2, 3, 4, 5, 6, 0, 0, 0]),  # 7 correct
        torch.tensor([1, 1, 0, 0, 0, 0, 0, 0, 0, 0]),  # 1 correct (image 1)
    ])
    confidences = torch.tensor([[0.9] * 10, [0.8] * 10, [0.5] * 5 + [0.7] * 5])
    return SweepResult(eps=[0.0, 0.1, 0.3], labels=labels, preds=preds, confidences=confidences)


def test_sweep_metrics(synthetic_sweep):
    rows = sweep_metrics(synthetic_sweep, clean_confidences=torch.full((10,), 0.95))
    assert len(rows) == 3
    assert set(rows[0]) == {"eps", "eps_pixel", "n", "adv_accuracy", "asr", "clean_confidence", "adv_confidence"}
    assert [r["eps"] for r in rows] == [0.0, 0.1, 0.3]
    assert [r["eps_pixel"] for r in rows] == pytest.approx([0.0, 0.05, 0.15])
    assert all(r["n"] == 10 for r in rows)
    assert [r["adv_accuracy"]["value"] for r in rows] == pytest.approx([100.0, 70.0, 10.0])
    for r in rows:
        assert r["asr"]["value"] == pytest.approx(100.0 - r["adv_accuracy"]["value"])
        assert r["asr"]["k"] + r["adv_accuracy"]["k"] == r["n"]
        assert r["adv_accuracy"] == rate(r["adv_accuracy"]["k"], 10)
        assert r["clean_confidence"] == pytest.approx(95.0)
    assert [r["adv_confidence"] for r in rows] == pytest.approx([90.0, 80.0, 60.0])


def test_robust_accuracy_counts_clean_mistakes(synthetic_sweep):
    # the model gets images 0 and 1 wrong when clean: they are failures at every eps, even if the attack
    # "fixes" them (image 1 is predicted correctly at eps 0.3)
    clean_preds = torch.tensor([9, 0, 2, 3, 4, 5, 6, 7, 8, 9])
    rows = robust_rows(clean_preds, synthetic_sweep)
    assert [r["eps"] for r in rows] == [0.0, 0.1, 0.3]
    assert [r["k"] for r in rows] == [8, 5, 0]
    assert [r["value"] for r in rows] == pytest.approx([80.0, 50.0, 0.0])
    assert all(r["n"] == 10 for r in rows)
    assert (rows[1]["ci_low"], rows[1]["ci_high"]) == wilson_interval(5, 10)
    # with no clean mistakes it is the adversarial accuracy
    all_right = robust_rows(synthetic_sweep.labels, synthetic_sweep)
    assert [r["value"] for r in all_right] == pytest.approx([100.0, 70.0, 10.0])


# ---------------------------------------------------------------------------------------------------------------
# accuracy and select_correct (on the trained fixture)


def test_accuracy_counts_by_hand(trained_model, test_batch, monkeypatch):
    x, y = test_batch
    with torch.no_grad():
        hand = 100.0 * (trained_model(x).argmax(1) == y).sum().item() / len(y)
    assert accuracy(trained_model, x, y) == pytest.approx(hand, abs=1e-4)
    monkeypatch.setattr(attacks, "CHUNK", 100)  # in chunks: the same count
    assert accuracy(trained_model, x, y) == pytest.approx(hand, abs=1e-4)


def test_select_correct(trained_model, test_batch):
    x, y = test_batch
    with torch.no_grad():
        correct = (trained_model(x).argmax(1) == y).nonzero().flatten().tolist()
    assert 0 < len(correct) < len(y)  # the fixture makes some mistakes, so the selection is not trivial
    idx = select_correct(trained_model, x, y, 50)
    assert idx.tolist() == correct[:50]  # the first 50 correct ones, in test-set order
    preds, _ = predict(trained_model, x[idx])
    assert torch.equal(preds, y[idx])
    assert select_correct(trained_model, x, y, len(correct)).tolist() == correct
    with pytest.raises(ValueError, match=f"only {len(correct)} images"):
        select_correct(trained_model, x, y, len(correct) + 1)


def test_first_test_images_keeps_the_mistakes_and_refuses_what_does_not_fit(trained_model, test_batch):
    """The unfiltered protocol (robust accuracy): the first n images as they come, clean mistakes included."""
    x, y = test_batch
    fx, fy = first_test_images(x, y, 100)
    assert torch.equal(fx, x[:100]) and torch.equal(fy, y[:100])
    assert (predict(trained_model, fx)[0] != fy).any()  # a mistake of the model stays in the set
    for bad in (0, len(x) + 1):
        with pytest.raises(ValueError, match="n_samples must lie in 1"):
            first_test_images(x, y, bad)


def test_attack_set_names_its_protocol_and_refuses_an_unknown_one(tmp_path, trained_model, data_root):
    from advlib.checkpoint import save_checkpoint
    from study.jobs import attack_set

    save_checkpoint(tmp_path / "model.pt", trained_model)
    first = attack_set(tmp_path, data_root, n_samples=200, select="first")
    correct = attack_set(tmp_path, data_root, n_samples=200)
    assert first.idx.tolist() == list(range(200)) and "unfiltered" in repr(first)
    assert (predict(trained_model, correct.x)[0] == correct.y).all() and "correctly classified" in repr(correct)
    with pytest.raises(ValueError, match="select must be one of"):
        attack_set(tmp_path, data_root, n_samples=10, select="correct_ones")


def test_select_correct_stops_early_with_the_same_choice(trained_model, test_batch, monkeypatch):
    x, y = test_batch
    with torch.no_grad():
        correct = (trained_model(x).argmax(1) == y).nonzero().flatten().tolist()
    seen = []
    real = metrics.predict
    monkeypatch.setattr(metrics, "predict", lambda m, xb: seen.append(len(xb)) or real(m, xb))
    monkeypatch.setattr(metrics, "SELECT_BLOCK", 16)  # blocks smaller than the set: several of them
    assert select_correct(trained_model, x, y, 20).tolist() == correct[:20]
    assert sum(seen) < len(x) and all(k == 16 for k in seen[:-1])  # stopped once 20 were found
    seen.clear()
    assert select_correct(trained_model, x, y, len(correct)).tolist() == correct  # every block needed
    assert sum(seen) == len(x)


# ---------------------------------------------------------------------------------------------------------------
# ROC at scale: 10,000 + 10,000 scores with ties, against scikit-learn, in little memory


def _large_scores():
    neg, pos = _scores(5, n_neg=10_000, n_pos=10_000)
    return (neg * 1000).round() / 1000, (pos * 1000).round() / 1000  # 3 decimals: thousands of ties


def test_roc_large_with_ties_matches_sklearn():
    neg, pos = _large_scores()
    assert len(torch.unique(torch.cat([neg, pos]))) < 1000  # the ties are really there
    labels, sk_scores = _sklearn_inputs(neg, pos)
    fpr, tpr = roc_curve(neg, pos)
    sk_fpr, sk_tpr, _ = sk_roc_curve(labels, sk_scores, drop_intermediate=False)
    assert fpr.tolist() == pytest.approx(sk_fpr.tolist(), abs=1e-12)
    assert tpr.tolist() == pytest.approx(sk_tpr.tolist(), abs=1e-12)
    assert roc_auc(neg, pos) == pytest.approx(sk_roc_auc_score(labels, sk_scores), abs=1e-12)


ROC_MEMORY_SCRIPT = """
import torch
from advlib.metrics import roc_auc, roc_curve

def status_mb(key):  # this process's resident memory (VmRSS) or its peak (VmHWM), from /proc
    line = next(l for l in open("/proc/self/status") if l.startswith(key + ":"))
    return int(line.split()[1]) / 1024

gen = torch.Generator().manual_seed(0)
neg = (torch.rand(10_000, generator=gen, dtype=torch.float64) * 1000).round() / 1000
pos = (torch.rand(10_000, generator=gen, dtype=torch.float64) * 1000).round() / 1000
roc_curve(neg[:10], pos[:10]), roc_auc(neg[:10], pos[:10])  # load every kernel before the baseline
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak to the current resident memory
before = status_mb("VmRSS")
roc_curve(neg, pos), roc_auc(neg, pos)
print(status_mb("VmHWM") - before)
"""


def test_roc_memory_at_10k_plus_10k():
    # A fresh process whose peak resident memory (Linux's VmHWM, reset just before) measures the ROC alone.
    # (getrusage's ru_maxrss would not do: a child process inherits its parent's peak.)
    import os
    import subprocess
    import sys

    if not os.access("/proc/self/clear_refs", os.W_OK):
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak resident memory")
    done = subprocess.run([sys.executable, "-c", ROC_MEMORY_SCRIPT], capture_output=True, text=True, check=True)
    peak_mb = float(done.stdout.strip())
    assert peak_mb < 100, f"roc_curve + roc_auc on 10,000 + 10,000 scores raised peak memory by {peak_mb:.0f} MB"


def test_roc_accepts_tensors_of_any_shape_and_returns_cpu_float64():
    neg, pos = _scores(6)
    fpr, tpr = roc_curve(neg.float()[None], pos.float().numpy())
    assert fpr.device.type == tpr.device.type == "cpu" and fpr.dtype == tpr.dtype == torch.float64
    assert roc_auc(neg.float()[None], pos.float().numpy()) == pytest.approx(roc_auc(neg.float(), pos.float()), abs=0)


# ---------------------------------------------------------------------------------------------------------------
# robust_curves: FGSM and PGD curves over a whole set, clean mistakes counted as failures


def robustness_oracle(model, x, y, eps_grid, pgd_steps, seed):
    """Every image attacked, one attack call per eps; an image counts if right both clean and attacked."""
    clean_ok = predict(model, x)[0] == y
    rows = {"fgsm": [], "pgd": []}
    for eps in eps_grid:
        for name, x_adv in (("fgsm", fgsm(model, x, y, eps, bounds=BOUNDS)),
                            ("pgd", pgd(model, x, y, eps, steps=pgd_steps, seed=seed, bounds=BOUNDS) if eps > 0
                             else x)):
            ok = clean_ok & (predict(model, x_adv)[0] == y)
            rows[name].append({"eps": eps, **rate(int(ok.sum()), len(y))})
    return rows


def test_robustness_equals_attacking_everything(trained_model, test_batch):
    x, y = test_batch
    x, y = x[:128], y[:128]
    assert (predict(trained_model, x)[0] != y).any()  # some clean mistakes: the skipping is exercised
    eps_grid = [0.0, 0.1, 0.3]
    got = robust_curves(trained_model, x, y, eps_grid, pgd_steps=3, seed=4, bounds=BOUNDS)
    assert got == robustness_oracle(trained_model, x, y, eps_grid, pgd_steps=3, seed=4)
    assert [r["eps"] for r in got["pgd"]] == eps_grid and all(r["n"] == 128 for r in got["pgd"])
    assert all(p["k"] <= f["k"] for p, f in zip(got["pgd"][1:], got["fgsm"][1:]))  # PGD at least as strong here


def test_robustness_spends_pgd_steps_only_on_correct_images(model_copy, test_batch):
    x, y = test_batch
    x, y = x[:64], y[:64]
    n_correct = int((predict(model_copy, x)[0] == y).sum())
    assert 0 < n_correct < len(y)
    gradient_images = []
    model_copy.register_forward_pre_hook(
        lambda module, inputs: gradient_images.append(len(inputs[0])) if torch.is_grad_enabled() else None)
    robust_curves(model_copy, x, y, [0.0, 0.1, 0.2], pgd_steps=2, seed=0, bounds=BOUNDS)
    # FGSM's one gradient pass over all images, then 2 steps at each of the 2 non-zero eps on the correct ones
    assert sum(gradient_images) == len(y) + 2 * 2 * n_correct


# ---------------------------------------------------------------------------------------------------------------
# Seed statistics












