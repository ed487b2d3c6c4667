"""A regression check that can fail: the numbers of a model trained again (by `make test`, in test-artifacts/run,
with other float rounding than the committed run) must fall inside the committed seed study's band, mean ± 4 sd.
nbval compares only what is the same on every machine; this is where the trained numbers are checked."""
from __future__ import annotations

from pathlib import Path

import pytest

from advlib import attacks
from advlib.metrics import sweep_metrics
from advlib.results import load_metrics, outside_robust_band, outside_seed_band
from advlib.stage import attack_set, recalibrated_accuracy

ROOT = Path(__file__).resolve().parents[1]
TEST_RUN = ROOT / "test-artifacts" / "run"


def rerun_numbers(artifact_dir: Path) -> tuple[float, dict[float, float]]:
    """Clean test accuracy and FGSM accuracy per eps of the model in artifact_dir, on the report's 1,000 images."""
    s = attack_set(artifact_dir, ROOT / "data", n_samples=1000)
    eps_grid = load_metrics(ROOT / "figures" / "metrics.json", require=("seed_study",))["seed_study"]["eps"]
    _, clean_conf = attacks.predict(s.model, s.x)
    rows = sweep_metrics(attacks.fgsm_sweep(s.model, s.x, s.y, eps_grid), clean_conf)
    test_accuracy = 100.0 * float((attacks.predict(s.model, s.test_x)[0] == s.test_y).float().mean())
    return test_accuracy, {r["eps"]: r["adv_accuracy"]["value"] for r in rows}


def rerun_recalibrated_accuracy(artifact_dir: Path) -> float:
    """Clean test accuracy of the model in artifact_dir with BatchNorm's statistics recomputed, as the seed study
    records it (advlib.stage.recalibrated_accuracy on the same training images)."""
    s = attack_set(artifact_dir, ROOT / "data", n_samples=1)
    return recalibrated_accuracy(s.model, ROOT / "data", s.test_x, s.test_y)


@pytest.fixture(scope="module")
def seed_study() -> dict:
    return load_metrics(ROOT / "figures" / "metrics.json", require=("seed_study",))["seed_study"]


@pytest.fixture(scope="module")
def retrained() -> Path:
    if not (TEST_RUN / "artifacts" / "model.pt").is_file():
        pytest.skip("no model trained by `make test` in test-artifacts/run (run the tests with `make test`)")
    return TEST_RUN / "artifacts"


def test_a_retrained_model_lands_inside_the_seed_band(retrained, seed_study):
    """Eval-mode accuracy has a wide band (BatchNorm's running averages lag the weights on some seeds); the
    accuracy with the statistics recomputed has a narrow one, which a model trained wrongly would miss."""
    test_accuracy, adv = rerun_numbers(retrained)
    recalibrated = rerun_recalibrated_accuracy(retrained)
    assert outside_seed_band(test_accuracy, adv, seed_study, recalibrated_accuracy=recalibrated) == []


def test_the_recalibrated_band_catches_a_model_trained_on_too_little(seed_study, data_root):
    """A model trained on a fifteenth of the recipe (one epoch on 12,000 images: what a training loop stopping early,
    or a data loader dropping most batches, would give) lands below the seeds' recomputed-statistics band, although
    its eval-mode accuracy may still lie inside the wide eval-mode band."""
    from advlib.data import load_mnist
    from advlib.model import ResNetConfig
    from advlib.train import TrainConfig, train

    data = load_mnist(data_root, splits=("train", "test"), train_subset=12_000)
    model, _, _ = train(data, ResNetConfig(), TrainConfig(epochs=1, seed=0), progress=False)
    recalibrated = recalibrated_accuracy(model, data_root, data.test_x, data.test_y)
    assert any("recomputed" in v for v in outside_seed_band(98.0, {}, seed_study, recalibrated_accuracy=recalibrated))


def test_the_band_catches_a_broken_fgsm(retrained, seed_study, monkeypatch):
    """FGSM with its sign flipped (a step down the loss, a one-character bug): the accuracies stay near 100%, far
    above the band at the larger eps. (A random direction is not caught at every eps: random ±eps noise hurts this
    model too, and the seed-to-seed spread is wide.)"""
    correct_direction = attacks.fgsm_direction

    def flipped(model, x, y, *, targeted=False):
        return -correct_direction(model, x, y, targeted=targeted)

    monkeypatch.setattr(attacks, "fgsm_direction", flipped)
    test_accuracy, adv = rerun_numbers(retrained)
    assert any("FGSM" in v for v in outside_seed_band(test_accuracy, adv, seed_study))


def test_outside_seed_band_flags_what_lies_outside():
    study = {"test_accuracy_mean": 98.5, "test_accuracy_std": 0.2, "eps": [0.0, 0.1],
             "adv_accuracy_mean": [100.0, 67.0], "adv_accuracy_std": [0.0, 8.0]}
    assert outside_seed_band(98.0, {0.0: 100.0, 0.1: 40.0}, study) == []
    assert len(outside_seed_band(97.0, {0.1: 99.5}, study)) == 2
    assert outside_seed_band(98.5, {0.3: 0.0}, study) == []  # an eps the study does not have is not judged
    recal = {**study, "recalibrated_test_accuracy_mean": 98.6, "recalibrated_test_accuracy_std": 0.15}
    assert outside_seed_band(98.0, {}, recal, recalibrated_accuracy=98.2) == []
    assert len(outside_seed_band(98.0, {}, recal, recalibrated_accuracy=97.5)) == 1


# ---------------------------------------------------------------------------------------------------------------
# The robust model: clean, PGD and AutoAttack (APGD-CE -> APGD-T) accuracy against the robust seeds' band


def robust_numbers(artifact_dir: Path, spread: dict, aa_samples: int | None = None,
                   checkpoint: str = "robust_model.pt") -> dict:
    """robust_eval.seed_metrics of the robust model in artifact_dir (or another checkpoint there), with the seed
    study's settings (AutoAttack on aa_samples images instead when given). Its PGD number goes through the run's
    stage cache, where `make test`'s own PGD jobs (05_defense's curves, same images, eps and steps) left it."""
    from advlib.cache import stage_cache
    from advlib.checkpoint import load_checkpoint
    from advlib.robust_eval import seed_metrics

    s = attack_set(artifact_dir, ROOT / "data", n_samples=1000)
    model = load_checkpoint(artifact_dir / checkpoint).model
    return seed_metrics(model, s.x, s.y, spread["eps"], pgd_steps=spread["pgd_steps"],
                        aa_samples=aa_samples or spread["aa_samples"], seed=0, cache=stage_cache(artifact_dir))


@pytest.fixture(scope="module")
def robust_spread(seed_study) -> dict:
    assert seed_study.get("robust"), "the committed seed study has no robust model: run `make seeds`"
    return seed_study["robust"]


def test_a_retrained_robust_model_lands_inside_the_seed_band(retrained, robust_spread):
    numbers = robust_numbers(retrained, robust_spread)
    assert numbers["aa"]["n"] == robust_spread["aa_samples"]
    assert outside_robust_band(numbers, robust_spread) == []


def test_the_robust_band_catches_a_model_without_adversarial_training(retrained, robust_spread):
    """If adversarial training silently stopped working (adversarial_batch handing back the clean batch), the
    "robust" model would be a standard one: its PGD and AutoAttack accuracy fall far below the band. (A PGD with its
    sign flipped is not caught: it leaves about the clean accuracy, inside this band's ±4 sd of the robust seeds'
    PGD accuracy, 86 ± 17 pp; the FGSM band above catches a sign flip.)"""
    numbers = robust_numbers(retrained, robust_spread, aa_samples=10, checkpoint="model.pt")
    flagged = outside_robust_band(numbers, robust_spread)
    assert any("PGD" in v for v in flagged) and any("APGD" in v for v in flagged), flagged


def test_outside_robust_band_flags_what_lies_outside():
    spread = {"eps": 0.3, "pgd_steps": 20, **{k: {"mean": m, "std": 1.0} for k, m in
                                               (("clean", 98.0), ("pgd", 85.0), ("aa", 80.0))}}
    inside = {"clean": {"value": 97.0}, "pgd": {"value": 88.0}, "aa": {"value": 77.0}}
    assert outside_robust_band(inside, spread) == []
    assert len(outside_robust_band({**inside, "pgd": {"value": 95.0}, "aa": {"value": 70.0}}, spread)) == 2
