"""Regression checks that can fail, on the models `make test` trains again (in test-artifacts/run, with other float
rounding than the committed run). nbval compares only what is the same on every machine; this is where the trained
numbers are checked, by checks that hold for any honest seed's model on any machine and that a real bug fails:

- FGSM against an oracle: advlib's FGSM sweep on the retrained model must give, at every eps, the accuracy of FGSM
  computed here with torch.autograd on the same model and images, within ORACLE_TOLERANCE images (float rounding).
  Paired on one model, it needs no seed spread: FGSM at twice its eps, or with its sign flipped, moves hundreds of
  images.
- the test accuracy with BatchNorm's statistics recomputed, against the seeds' band (median ± 6 scaled MADs,
  study.bands.seed_band): narrow (width about 1.5 pp on MNIST, 8.5 pp on Fashion-MNIST, whose model `make test`
  trains too in test-artifacts/fashion_mnist/run); a model trained on a fifteenth of the recipe falls below.
- the robust model's clean, PGD and AutoAttack accuracy against the robust seeds' bands: a model whose adversarial
  training did not happen (PGD accuracy near 0) falls tens of points below them.

Not judged: the eval-mode test accuracy (honest seeds span 45 to 99%: BatchNorm's running averages lag the weights
on some seeds) and the FGSM accuracies over seeds (27 to 88% at eps 0.1); a band wide enough for every honest seed
catches nothing there (the old mean ± 4 sd bands were [26, 159]% and [-14, 143]%). Every failure message names the
value, the band's bounds and its width."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from advlib import attacks
from advlib.data import BOUNDS
from advlib.metrics import sweep_metrics
from study.bands import (BAND_K, band_text, outside_fgsm_oracle, outside_robust_band, outside_seed_band,
    recalibrated_band, robust_bands, seed_band, too_wide)
from study.results import load_metrics
from study.jobs import attack_set, recalibrated_accuracy

ROOT = Path(__file__).resolve().parents[2]
TEST_RUN = ROOT / "test-artifacts" / "run"
N_IMAGES = 1000  # the report's attack set
ORACLE_TOLERANCE = 2  # images of N_IMAGES by which advlib's FGSM may differ from the oracle (float rounding only)
# each data set's `make test` run and committed seed study (the recomputed-statistics band is checked for both)
STUDIES = {"mnist": (TEST_RUN, ROOT / "figures" / "metrics.json"),
           "fashion_mnist": (ROOT / "test-artifacts" / "fashion_mnist" / "run",
                             ROOT / "figures" / "fashion_mnist" / "metrics.json")}


def study_of(dataset: str) -> dict:
    """The committed seed study of a data set (its metrics.json's seed_study section)."""
    return load_metrics(STUDIES[dataset][1], require=("seed_study",))["seed_study"]


@pytest.fixture(scope="module")
def seed_study() -> dict:
    return load_metrics(ROOT / "figures" / "metrics.json", require=("seed_study",))["seed_study"]


@pytest.fixture(scope="module")
def retrained() -> Path:
    if not (TEST_RUN / "artifacts" / "model.pt").is_file():
        pytest.skip("no model trained by `make test` in test-artifacts/run (run the tests with `make test`)")
    return TEST_RUN / "artifacts"


# ---------------------------------------------------------------------------------------------------------------
# FGSM against an autograd oracle, on the retrained standard model


def oracle_fgsm(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, eps_list) -> dict[float, torch.Tensor]:
    """{eps: predicted class (N,)} under FGSM written out here, independently of advlib.attacks: eval mode, the
    gradient of the cross-entropy by torch.autograd, x_adv = clamp(x + eps * sign(grad), -1, 1), prediction = the
    argmax of the model's logits on x_adv. x: (N, 1, 32, 32) in [-1, 1]."""
    was_training = model.training
    model.eval()
    try:
        x_in = x.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(x_in), y), x_in)
        with torch.no_grad():
            return {eps: model((x + eps * grad.sign()).clamp(-1, 1)).argmax(1) for eps in eps_list}
    finally:
        model.train(was_training)


@pytest.fixture(scope="module")
def fgsm_case(retrained, seed_study) -> dict:
    """The retrained model, its N_IMAGES attack images, the seed study's eps grid and the oracle's predictions."""
    s = attack_set(retrained, ROOT / "data", n_samples=N_IMAGES)
    eps = seed_study["eps"]
    return {"model": s.model, "x": s.x, "y": s.y, "eps": eps, "oracle": oracle_fgsm(s.model, s.x, s.y, eps)}


def fgsm_disagreement(case: dict) -> tuple[list[str], str]:
    """advlib's FGSM sweep (fgsm_sweep and sweep_metrics, as 02_sweep computes it) against the oracle: the lines of
    outside_fgsm_oracle, and a summary of both accuracies per eps with the band's width."""
    x, y, n = case["x"], case["y"], len(case["y"])
    sweep = attacks.fgsm_sweep(case["model"], x, y, case["eps"], bounds=BOUNDS)
    rows = sweep_metrics(sweep, attacks.predict(case["model"], x)[1])
    got = {r["eps"]: r["adv_accuracy"]["value"] for r in rows}
    want = {eps: 100.0 * float((p == y).float().mean()) for eps, p in case["oracle"].items()}
    differing = {eps: int((sweep.preds[i] != case["oracle"][eps]).sum()) for i, eps in enumerate(case["eps"])}
    summary = (f"band: the oracle's accuracy ± {ORACLE_TOLERANCE} of {n:,} images (width "
               f"{200.0 * ORACLE_TOLERANCE / n:.2f} pp); per eps, advlib / oracle / images predicted otherwise: "
               + "; ".join(f"{e:g}: {got.get(e, float('nan')):.1f} / {want[e]:.1f} / {differing[e]}" for e in want))
    return outside_fgsm_oracle(got, want, n, ORACLE_TOLERANCE, differing), summary


def test_fgsm_agrees_with_an_autograd_oracle_on_the_retrained_model(fgsm_case):
    flagged, summary = fgsm_disagreement(fgsm_case)
    print(summary)
    assert flagged == [], f"{flagged}\n{summary}"


def twice_eps(monkeypatch):
    """A units bug: every eps of the sweep applied twice over (the results still labelled with the eps asked for)."""
    correct = attacks.sweep_direction

    def doubled(model, x, y, direction, eps_list, **kw):
        result = correct(model, x, y, direction, [2 * e for e in eps_list], **kw)
        result.eps = list(eps_list)
        return result

    monkeypatch.setattr(attacks, "sweep_direction", doubled)


def flipped_sign(monkeypatch):
    """FGSM stepping down the loss: a one-character bug."""
    correct = attacks.fgsm_direction
    monkeypatch.setattr(attacks, "fgsm_direction", lambda *a, **kw: -correct(*a, **kw))


@pytest.mark.parametrize("bug", [twice_eps, flipped_sign], ids=lambda f: f.__name__)
def test_the_oracle_catches_a_broken_fgsm(fgsm_case, monkeypatch, bug):
    bug(monkeypatch)
    flagged, summary = fgsm_disagreement(fgsm_case)
    print(summary)
    wrong_accuracy = [v for v in flagged if v.startswith("FGSM accuracy")]
    assert len(wrong_accuracy) == sum(e > 0 for e in fgsm_case["eps"]), f"{bug.__name__}: {flagged}\n{summary}"


def test_outside_fgsm_oracle_flags_what_differs():
    oracle = {0.0: 100.0, 0.1: 64.0}
    assert outside_fgsm_oracle({0.0: 100.0, 0.1: 64.2}, oracle, 1000, tolerance=2) == []
    assert outside_fgsm_oracle({0.0: 100.0, 0.1: 64.3}, oracle, 1000, tolerance=2) != []
    assert outside_fgsm_oracle({0.0: 100.0}, oracle, 1000) != []  # an eps advlib left out
    flagged = outside_fgsm_oracle(oracle, oracle, 1000, tolerance=2, differing={0.0: 0, 0.1: 6})
    assert len(flagged) == 1 and "6 of 1,000" in flagged[0]
    assert "width 0.40 pp" in outside_fgsm_oracle({0.1: 50.0}, {0.1: 64.0}, 1000, tolerance=2)[0]


# ---------------------------------------------------------------------------------------------------------------
# The standard model's test accuracy with BatchNorm's statistics recomputed, against the seeds' band


def rerun_recalibrated_accuracy(artifact_dir: Path, dataset: str = "mnist") -> float:
    """Clean test accuracy of the model in artifact_dir with BatchNorm's statistics recomputed, as the seed study
    records it (study.jobs.recalibrated_accuracy on the same training images)."""
    s = attack_set(artifact_dir, ROOT / "data", n_samples=1, dataset=dataset)
    return recalibrated_accuracy(s.model, ROOT / "data", s.test_x, s.test_y, dataset=dataset)


@pytest.mark.parametrize("dataset", STUDIES)
def test_a_retrained_model_lands_inside_the_recalibrated_band(dataset):
    artifacts = STUDIES[dataset][0] / "artifacts"
    if not (artifacts / "model.pt").is_file():
        pytest.skip(f"no {dataset} model trained by `make test` in {artifacts.parent} (run the tests with `make test`)")
    seed_study = study_of(dataset)
    value = rerun_recalibrated_accuracy(artifacts, dataset)
    message = (f"{dataset}: recomputed-statistics accuracy {value:.2f}%, seeds' band "
               f"{band_text(recalibrated_band(seed_study))}")
    print(message)
    assert outside_seed_band(value, seed_study) == [], message


@pytest.mark.parametrize("dataset", STUDIES)
def test_the_recalibrated_band_catches_a_model_trained_on_too_little(dataset, data_root):
    """A model trained on a fifteenth of the recipe (one epoch on 12,000 images: what a training loop stopping early,
    or a data loader dropping most batches, would give) lands below the seeds' recomputed-statistics band, on either
    data set (Fashion-MNIST's band is wider, about 8.5 pp, and such a model lands some 7 pp below it)."""
    from advlib.data import load_dataset
    from advlib.model import ResNetConfig
    from advlib.train import TrainConfig, train

    seed_study = study_of(dataset)
    data = load_dataset(dataset, data_root, splits=("train", "test"), train_subset=12_000)
    model, _, _ = train(data, ResNetConfig(), TrainConfig(epochs=1, seed=0), progress=False)
    value = recalibrated_accuracy(model, data_root, data.test_x, data.test_y, dataset=dataset)
    flagged = outside_seed_band(value, seed_study)
    print(flagged)
    assert flagged and "recomputed" in flagged[0], f"{value:.2f}% inside {band_text(recalibrated_band(seed_study))}"


def test_outside_seed_band_flags_what_lies_outside():
    study = {"per_seed_recalibrated_test_accuracy": [98.6, 98.7, 98.5, 98.8, 98.6, 98.9, 98.4]}
    lo, hi = recalibrated_band(study)  # median 98.6, MAD 0.1: 98.6 ± 0.89
    assert (round(lo, 2), round(hi, 2)) == (97.71, 99.49)
    assert outside_seed_band(98.0, study) == []
    (line,) = outside_seed_band(97.5, study)
    assert "[97.71, 99.49]% (width 1.78 pp)" in line
    assert seed_band([99.0, 99.5, 100.0], k=6) == pytest.approx((95.0522, 100.0))  # 99.5 ± 4.45, clipped at 100%


@pytest.mark.parametrize("dataset", STUDIES)
def test_every_committed_seed_lies_inside_the_band_of_the_others(dataset):
    """The bands admit an honest re-run: each committed seed lies inside the band computed from the other seeds
    (for the recomputed-statistics accuracy and the robust model's clean, PGD and AutoAttack accuracy)."""
    seed_study = study_of(dataset)
    series = {"recomputed-statistics accuracy": seed_study["per_seed_recalibrated_test_accuracy"]}
    series.update({key: seed_study["robust"][key]["values"] for key in ("clean", "pgd", "aa")}
                  if seed_study.get("robust") else {})
    outside = []
    for name, values in series.items():
        for i, value in enumerate(values):
            band = seed_band(values[:i] + values[i + 1:], BAND_K)
            if not band[0] <= value <= band[1]:
                outside.append(f"{name}: seed #{i} at {value:.2f}% outside the others' {band_text(band)}")
    assert outside == []


# ---------------------------------------------------------------------------------------------------------------
# The robust model: clean, PGD and AutoAttack (APGD-CE -> APGD-T) accuracy against the robust seeds' bands


def robust_numbers(model: torch.nn.Module, spread: dict, n_samples: int = N_IMAGES, aa_samples: int | None = None,
                   artifact_dir: Path | None = None) -> dict:
    """study.sanity.seed_metrics of ``model`` with the robust seed study's settings, on the first n_samples test
    images, unfiltered, as the robust seeds are evaluated (AutoAttack on aa_samples images when given). With
    artifact_dir, its PGD number goes through that run's stage cache, where `make test`'s own PGD jobs (05_defense's
    curves, same images, eps and steps) left it."""
    from study.cache import stage_cache
    from advlib.data import load_mnist
    from study.sanity import seed_metrics

    test = load_mnist(ROOT / "data", splits=("test",))
    x, y = test.test_x[:n_samples], test.test_y[:n_samples]
    return seed_metrics(model, x, y, spread["eps"], pgd_steps=spread["pgd_steps"],
                        aa_samples=aa_samples or spread["aa_samples"], seed=0,
                        cache=stage_cache(artifact_dir) if artifact_dir is not None else None)


def robust_summary(numbers: dict, spread: dict) -> str:
    return "; ".join(f"{label} {numbers[key]['value']:.2f}% (n = {numbers[key]['n']:,}), band {band_text(band)}"
                     + (" (too wide to judge: not a check)" if too_wide(band) else "")
                     for key, (label, band) in robust_bands(spread).items())


@pytest.fixture(scope="module")
def robust_spread(seed_study) -> dict:
    assert seed_study.get("robust"), "the committed seed study has no robust model: run `make seeds`"
    return seed_study["robust"]


def test_a_retrained_robust_model_lands_inside_the_seed_band(retrained, robust_spread):
    from advlib.checkpoint import load_checkpoint

    model = load_checkpoint(retrained / "robust_model.pt").model
    numbers = robust_numbers(model, robust_spread, n_samples=robust_spread.get("n", N_IMAGES), artifact_dir=retrained)
    print(robust_summary(numbers, robust_spread))
    assert numbers["aa"]["n"] == robust_spread["aa_samples"]
    assert outside_robust_band(numbers, robust_spread) == [], robust_summary(numbers, robust_spread)


def test_the_robust_band_catches_a_model_without_adversarial_training(robust_spread, data_root, monkeypatch):
    """If adversarial training silently stopped working (advlib.train.adversarial_batch handing back the clean
    batch), the "robust" model is a standard one: its PGD and AutoAttack accuracy fall far below the bands. The
    robust recipe is trained here with that bug, on 6,000 training images for one epoch (seconds; the full recipe
    with the same bug lands at PGD 0.1%, AutoAttack 0%, clean 98.1%), its BatchNorm statistics recomputed (after
    79 steps the running averages lag the weights far behind), and evaluated on the first 200 test images
    (AutoAttack on 20). Its PGD and AutoAttack accuracy are 0%, tens of points below their bands; its clean accuracy
    (about 88% after so short a training) may miss its band too, which this test does not need."""
    import advlib.train as train_module
    from advlib.data import load_mnist
    from advlib.model import ResNetConfig
    from advlib.train import TrainConfig, recalibrate_batchnorm

    monkeypatch.setattr(train_module, "adversarial_batch", lambda model, x, y, config, generator, eps=None, bounds=None: x)
    data = load_mnist(data_root, splits=("train",), train_subset=6000)
    config = TrainConfig(epochs=1, seed=0, adversarial="fgsm_rs", adv_eps=robust_spread["eps"])
    model, _, _ = train_module.train(data, ResNetConfig(), config, progress=False)
    recalibrate_batchnorm(model, data.train_u8)
    numbers = robust_numbers(model, robust_spread, n_samples=200, aa_samples=20)
    flagged = outside_robust_band(numbers, robust_spread)
    print(flagged)
    summary = robust_summary(numbers, robust_spread)
    assert any("PGD-" in v for v in flagged), summary
    aa_label, aa_band = robust_bands(robust_spread)["aa"]
    assert too_wide(aa_band) or any("APGD" in v for v in flagged), summary


def test_outside_robust_band_flags_what_lies_outside():
    spread = {"eps": 0.3, "pgd_steps": 20, **{k: {"values": [m - 1, m, m + 1, m - 0.5, m + 0.5]} for k, m in
                                               (("clean", 98.0), ("pgd", 85.0), ("aa", 80.0))}}
    inside = {"clean": {"value": 97.0}, "pgd": {"value": 88.0}, "aa": {"value": 77.0}}
    assert outside_robust_band(inside, spread) == []
    flagged = outside_robust_band({**inside, "pgd": {"value": 0.5}, "aa": {"value": 70.0}}, spread)
    assert len(flagged) == 2 and "PGD-20" in flagged[0] and "APGD" in flagged[1]
    assert "[80.55, 89.45]% (width 8.90 pp)" in flagged[0]  # 85 ± 6 × 1.4826 × 0.5
    wide = {**spread, "aa": {"values": [60.0, 70.0, 80.0, 90.0, 78.0]}}  # 78 ± 6 × 1.4826 × 8: wider than 50 pp
    assert too_wide(robust_bands(wide)["aa"][1])
    assert [v for v in outside_robust_band({**inside, "aa": {"value": 5.0}}, wide) if "APGD" in v] == []
