"""study.ablation and study.ablation_eval (the 0.3 px capacity study's grid, configs, contrasts and run status, the
released anchor's loading and its committed evaluation), study.results.load_ablation (the merge of the released
model's parts), the capacity study's tables and the summary's target, and the parameters' mismatch report.

Synthetic inputs, except two tests on Wong et al.'s released checkpoint (data/anchors/, fetched by hand, never
committed: skipped where it is absent) and one on its committed evaluation (skipped until `make robust` wrote it).
Everything runs in a few seconds; the released model's clean accuracy on MNIST's 10,000 test images takes about one.
"""
from __future__ import annotations

import hashlib
import json
import math
from dataclasses import fields
from pathlib import Path

import pytest
import torch
from torch import nn

from advlib.metrics import rate
from advlib.model import ResNetConfig, SmallCNN, SmallCNNConfig, SmallResNet, count_parameters
from advlib.train import TrainConfig
from study import ablation
from study.ablation import (ANCHOR_SHA256, ANCHOR_URL, RECIPE, load_released, model_config, runs, spec,
                            train_config)
from study.ablation_eval import (CHANGES, DIVERGED_CLEAN, DIVERGED_LOSS, OVERFIT_GAP, OVERFIT_TRAIN, PUBLISHED,
                                contrasts, describe, status)
from study.results import load_ablation, robustness_settings_mismatch
from study.tables import (_released_on, ablation_configs, ablation_rows, ablation_table, anchor_table, capacity_summary,
                          diverged_curves)

ROOT = Path(__file__).resolve().parents[2]
ANCHOR = ROOT / "data" / "anchors" / "wong2020_mnist_fgsm.pth"
RELEASED_PART = ROOT / "figures" / "robustness" / "anchor" / "released_from0.json"


# ---------------------------------------------------------------------------------------------------------------
# spec, model_config, train_config


def test_spec_fills_in_the_recipe_and_refuses_unknown_settings():
    assert spec({}) == RECIPE
    assert spec({"width": 2, "seeds": [0, 1]}) == {**RECIPE, "width": 2}  # the seeds are not a setting
    assert spec({"seeds": [3]}) == spec({}) == RECIPE
    assert RECIPE["width"] == 1  # the recipe itself is left alone
    with pytest.raises(ValueError, match=r"unknown ablation settings \['widht'\]") as err:
        spec({"widht": 2})
    assert "width" in str(err.value)  # the known names are listed
    for entry in ({"bn": True}, {"epoch": 3, "lr": 1e-3}, {"seed": 1}):
        with pytest.raises(ValueError, match="unknown ablation settings"):
            spec(entry)
    with pytest.raises(ValueError, match="unknown"):
        model_config({"widht": 2})
    with pytest.raises(ValueError, match="unknown"):
        train_config({"epoch": 2}, seed=0)


def cnn_parameters(w: int) -> int:
    """Wong et al.'s network with every channel and hidden unit count times w, on 28x28 images, counted by hand:
    conv 1->16w (4x4), conv 16w->32w (4x4), fc 32w*7*7 -> 100w, fc 100w -> 10, all with biases."""
    c1, c2, h = 16 * w, 32 * w, 100 * w
    return (16 * c1 + c1) + (16 * c1 * c2 + c2) + (c2 * 7 * 7 * h + h) + (h * 10 + 10)


@pytest.mark.parametrize("width", [1, 2, 3])
def test_cnn_widths_give_wong_et_al_s_network_widened(width):
    config = model_config({"width": width})
    assert isinstance(config, SmallCNNConfig)
    assert (config.image_size, config.channels, config.hidden) == (28, (16 * width, 32 * width), 100 * width)
    model = SmallCNN(config)
    assert count_parameters(model) == cnn_parameters(width)
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_cnn_at_width_one_is_the_published_166k_network():
    assert cnn_parameters(1) == 166_406
    assert count_parameters(SmallCNN(model_config({}))) == 166_406 == PUBLISHED[0]["parameters"]
    assert count_parameters(SmallCNN(model_config({"width": 2}))) == 662_786


def test_resnet_with_and_without_batchnorm():
    with_bn, without = model_config({"arch": "resnet", "batchnorm": True}), model_config({"arch": "resnet"})
    assert isinstance(with_bn, ResNetConfig) and with_bn.batchnorm is True
    assert isinstance(without, ResNetConfig) and without.batchnorm is False
    assert with_bn == ResNetConfig() and without == ResNetConfig(batchnorm=False)
    bn_model, plain = SmallResNet(with_bn), SmallResNet(without)
    assert any(isinstance(m, nn.BatchNorm2d) for m in bn_model.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in plain.modules())
    assert count_parameters(bn_model) == 19_810
    wide = model_config({"arch": "resnet", "width": 2, "batchnorm": True})
    assert wide.stem_channels == 16 and wide.block_channels == (16, 32, 64)
    assert count_parameters(SmallResNet(wide)) == 77_754


def test_cnn_with_batchnorm_and_unknown_architectures_are_refused():
    with pytest.raises(ValueError, match="no BatchNorm"):
        model_config({"batchnorm": True})
    with pytest.raises(ValueError, match="arch must be"):
        model_config({"arch": "vgg"})


def test_train_config_maps_the_recipe():
    expected = TrainConfig(epochs=10, batch_size=100, lr=5e-3, seed=3, device="cpu", adversarial="fgsm_rs",
                           adv_eps=0.3, adv_pgd_steps=7, adv_check_size=2000, adv_holdout=2000,
                           lr_schedule="cyclic", eps_ramp_epochs=0, check_attack="pgd", check_steps=10,
                           check_step_sizes=(0.25, 0.5), attack_bn="eval", clamp_start=False)
    assert train_config({}, seed=3) == expected


# Entries that change every setting of the recipe (BatchNorm's statistics in the training attack only with FGSM-RS:
# TrainConfig refuses attack_bn="train" under PGD), with the TrainConfig each must give, written out by hand.
EVERY_SETTING = {
    "pgd": ({"arch": "resnet", "batchnorm": True, "width": 2, "mode": "pgd", "epochs": 4, "batch_size": 50,
             "lr": 1e-3, "eps": 0.2, "ramp_epochs": 2, "pgd_steps": 5, "clamp_start": True, "attack_bn": "eval",
             "holdout": 500, "check_attack": "apgd-ce", "check_steps": 3, "check_step_sizes": [], "seeds": [7]},
            TrainConfig(epochs=4, batch_size=50, lr=1e-3, seed=7, device="cpu", adversarial="pgd", adv_eps=0.2,
                        adv_pgd_steps=5, adv_check_size=500, adv_holdout=500, lr_schedule="cyclic",
                        eps_ramp_epochs=2, check_attack="apgd-ce", check_steps=3, check_step_sizes=(),
                        attack_bn="eval", clamp_start=True)),
    "fgsm_rs": ({"arch": "resnet", "batchnorm": True, "width": 3, "mode": "fgsm_rs", "epochs": 6, "batch_size": 32,
                 "lr": 2e-3, "eps": 0.25, "ramp_epochs": 1.5, "pgd_steps": 3, "clamp_start": True,
                 "attack_bn": "train", "holdout": 1000, "check_attack": "pgd", "check_steps": 20,
                 "check_step_sizes": [0.5, 1.0], "seeds": [7]},
                TrainConfig(epochs=6, batch_size=32, lr=2e-3, seed=7, device="cpu", adversarial="fgsm_rs",
                            adv_eps=0.25, adv_pgd_steps=3, adv_check_size=1000, adv_holdout=1000,
                            lr_schedule="cyclic", eps_ramp_epochs=1.5, check_steps=20, check_step_sizes=(0.5, 1.0),
                            attack_bn="train", clamp_start=True)),
}


@pytest.mark.parametrize("entry, expected", EVERY_SETTING.values(), ids=EVERY_SETTING.keys())
def test_train_config_maps_every_setting_of_an_entry(entry, expected):
    assert set(entry) - {"seeds"} == set(RECIPE)  # the entry names every setting of the recipe
    got = train_config(entry, seed=7)
    mismatched = [f.name for f in fields(TrainConfig) if getattr(got, f.name) != getattr(expected, f.name)]
    assert not mismatched, {k: (getattr(got, k), getattr(expected, k)) for k in mismatched}


NETWORK = {"arch", "width", "batchnorm"}  # the settings model_config reads; every other one is training's


@pytest.mark.parametrize("key", sorted(set(RECIPE) - NETWORK))
def test_every_training_setting_reaches_the_train_config(key):
    other = {"mode": "pgd", "epochs": 4, "batch_size": 50, "lr": 1e-3, "eps": 0.2, "ramp_epochs": 1, "pgd_steps": 5,
             "clamp_start": True, "attack_bn": "train", "holdout": 500, "check_attack": "apgd-ce", "check_steps": 3,
             "check_step_sizes": [0.1]}[key]
    assert other != RECIPE[key]
    entry = {key: other} | ({"check_step_sizes": []} if key == "check_attack" else {})  # APGD has no step sizes
    assert train_config(entry, seed=0) != train_config({"check_step_sizes": []} if key == "check_attack" else {},
                                                       seed=0), key


@pytest.mark.parametrize("key", sorted(NETWORK))
def test_network_settings_leave_the_train_config_alone(key):
    entry = {"arch": {"arch": "resnet"}, "width": {"width": 2}, "batchnorm": {"arch": "resnet", "batchnorm": True}}[key]
    assert train_config(entry, seed=0) == train_config({}, seed=0)


# ---------------------------------------------------------------------------------------------------------------
# contrasts, runs, status

GRID = {
    "base": {"seeds": [0, 1, 2]},
    "wide": {"width": 2},
    "pgd": {"mode": "pgd", "pgd_steps": 5},  # PGD's steps differ from the recipe's 7: the change brings them
    "wide_pgd": {"width": 2, "mode": "pgd", "pgd_steps": 5},  # two changes from base: no contrast with it
    "clamped": {"clamp_start": True},  # against pgd: the attack and the clipping differ
    "resnet_nobn": {"arch": "resnet"},
    "resnet": {"arch": "resnet", "batchnorm": True},  # two changes from base (network and BatchNorm)
    "resnet_bn_train": {"arch": "resnet", "batchnorm": True, "attack_bn": "train"},
    # the check's steps and step sizes come with the change of check
    "base_apgd": {"check_attack": "apgd-ce", "check_steps": 20, "check_step_sizes": []},
}


def test_contrasts_are_exactly_the_pairs_that_differ_in_one_setting():
    assert contrasts(GRID) == [
        (CHANGES["width"], "base", "wide"),
        (CHANGES["mode"], "base", "pgd"),
        (CHANGES["clamp_start"], "base", "clamped"),
        (CHANGES["arch"], "base", "resnet_nobn"),
        (CHANGES["check_attack"], "base", "base_apgd"),
        (CHANGES["mode"], "wide", "wide_pgd"),
        (CHANGES["width"], "pgd", "wide_pgd"),
        (CHANGES["batchnorm"], "resnet_nobn", "resnet"),
        (CHANGES["attack_bn"], "resnet", "resnet_bn_train"),
    ]


def test_contrasts_leave_out_two_change_pairs():
    pairs = {(a, b) for _, a, b in contrasts(GRID)}
    for two_changes in [("base", "wide_pgd"), ("base", "resnet"), ("wide", "pgd"), ("pgd", "clamped"),
                        ("resnet_nobn", "resnet_bn_train"), ("base", "resnet_bn_train")]:
        assert two_changes not in pairs
    # PGD's steps differ from the recipe's, but they come with the change of attack
    assert (CHANGES["mode"], "base", "pgd") in contrasts({"base": {}, "pgd": {"mode": "pgd", "pgd_steps": 40}})
    # the check's steps alone are a setting of their own; with the check they come with it
    assert contrasts({"a": {}, "b": {"check_steps": 20}}) == [("check_steps", "a", "b")]
    assert contrasts({"a": {"width": 2}, "b": {"check_attack": "apgd-ce", "check_step_sizes": []}}) == []
    # a PGD entry whose steps differ from another PGD entry's: two changes
    assert contrasts({"pgd5": {"mode": "pgd", "pgd_steps": 5}, "pgd_wide": {"mode": "pgd", "width": 2}}) == []


@pytest.mark.parametrize("entry, expected", [
    ({}, "Wong et al.'s CNN; FGSM-RS"),
    ({"arch": "resnet", "width": 2, "ramp_epochs": 4}, "SmallResNet 2×, no BatchNorm; FGSM-RS, ε ramp over 4 epochs"),
    ({"arch": "resnet", "batchnorm": True, "mode": "pgd", "pgd_steps": 5},
     "SmallResNet, BatchNorm (attack with running statistics); PGD-5"),
    ({"clamp_start": True}, "Wong et al.'s CNN; FGSM-RS, start clipped to [0, 1]"),
    ({"arch": "resnet", "ramp_epochs": 4, "check_attack": "apgd-ce", "check_steps": 20, "check_step_sizes": []},
     "SmallResNet, no BatchNorm; FGSM-RS, ε ramp over 4 epochs, kept by an APGD-CE-20 check"),
])
def test_describe_names_what_differs_from_the_recipe(entry, expected):
    assert describe(entry) == expected


def test_runs_lists_every_configuration_and_seed_in_order():
    assert runs(GRID)[:4] == [("base", 0), ("base", 1), ("base", 2), ("wide", 0)]
    assert len(runs(GRID)) == 3 + 8
    assert runs({"a": {"seeds": [4, 2]}, "b": {}}) == [("a", 4), ("a", 2), ("b", 0)]


@pytest.mark.parametrize("losses, clean, expected", [
    ([0.9, 0.4, 0.3], 98.0, "trained"),
    ([0.9, 2.1, 2.3], 98.0, "diverged"),  # the last epoch near chance, whatever the kept model's accuracy
    ([2.5, 2.4, 0.3], 98.0, "trained"),  # only the last epoch counts
    ([0.9, 0.4, 0.3], 40.0, "collapsed"),  # below 50% clean in eval mode, yet it fits its own training batches
    ([0.9, 0.4, DIVERGED_LOSS], DIVERGED_CLEAN, "trained"),  # the thresholds themselves are not divergence
    ([0.9, 0.4, DIVERGED_LOSS + 0.01], 99.0, "diverged"),
    ([0.9, 0.4, 0.3], DIVERGED_CLEAN - 0.01, "collapsed"),
])
def test_status(losses, clean, expected):
    robust = {"check_accuracy": [40.0, 80.0, 85.0], "train_accuracy": [50.0, 80.0, 90.0]}
    assert status({"epoch_loss": losses, **robust}, clean) == expected


def test_status_tells_divergence_from_an_eval_mode_collapse():
    """Below 50% clean: a model that does not fit its own training batches either has diverged; one that fits them
    (a BatchNorm model whose running statistics come from adversarial batches) has collapsed in eval mode."""
    base = {"epoch_loss": [0.9, 0.4, 0.1], "check_accuracy": [1.0, 0.0, 0.0]}
    assert status({**base, "train_accuracy": [60.0, 90.0, 97.6]}, 9.7) == "collapsed"
    assert status({**base, "train_accuracy": [11.0, 11.0, OVERFIT_TRAIN]}, 9.7) == "diverged"


@pytest.mark.parametrize("check, train_acc, expected", [
    ([4.0, 1.0, 10.0], [40.0, 86.0, 94.0], "overfit"),  # fits its FGSM batches, never robust on held-out images
    ([8.0, 12.0, 21.0], [40.0, 86.0, 95.8], "overfit"),  # the clipped start: a check of 21% is no robust epoch
    ([4.0, 1.0, 94.0 - OVERFIT_GAP], [40.0, 86.0, 94.0], "trained"),  # the gap itself is not overfitting
    ([4.0, 1.0, 10.0], [20.0, 30.0, OVERFIT_TRAIN], "trained"),  # cannot fit its own batches either: not overfitting
    ([81.0, 2.0, 1.0], [60.0, 90.0, 95.0], "trained"),  # robust once: early stopping keeps that epoch
])
def test_status_names_catastrophic_overfitting_from_the_start(check, train_acc, expected):
    history = {"epoch_loss": [0.9, 0.4, 0.2], "check_accuracy": check, "train_accuracy": train_acc}
    assert status(history, 66.0) == expected


# ---------------------------------------------------------------------------------------------------------------
# The released anchor


def test_sha256_is_the_files_digest(tmp_path):
    f = tmp_path / "blob"
    data = bytes(range(256)) * 5000  # more than one read block
    f.write_bytes(data)
    assert ablation.sha256(f) == hashlib.sha256(data).hexdigest()


def test_load_released_without_the_file_says_where_to_get_it(tmp_path):
    missing = tmp_path / "anchors" / "fgsm.pth"
    with pytest.raises(FileNotFoundError) as err:
        load_released(missing)
    assert ANCHOR_URL in str(err.value) and str(missing) in str(err.value)


def test_load_released_refuses_another_file_by_its_digest(tmp_path):
    """A loadable state_dict of the right network, with other weights: only the SHA-256 tells it apart."""
    other = tmp_path / "fgsm.pth"
    torch.manual_seed(0)
    torch.save(SmallCNN().state_dict(), other)
    digest = hashlib.sha256(other.read_bytes()).hexdigest()
    with pytest.raises(ValueError, match="SHA-256") as err:
        load_released(other)
    assert digest in str(err.value) and ANCHOR_SHA256 in str(err.value) and ANCHOR_URL in str(err.value)


needs_anchor = pytest.mark.skipif(not ANCHOR.is_file(), reason=f"Wong et al.'s released checkpoint is not in "
                                  f"{ANCHOR.relative_to(ROOT)} (fetched by hand from {ANCHOR_URL}; never committed)")


@needs_anchor
def test_the_released_model_loads_as_the_published_network():
    model = load_released(ANCHOR)
    assert isinstance(model, SmallCNN) and not model.training
    assert count_parameters(model) == 166_406
    assert ablation.sha256(ANCHOR) == ANCHOR_SHA256


@needs_anchor
def test_the_released_model_gives_the_published_clean_accuracy(data_root):
    """98.50% on MNIST's 10,000 test images, the AutoAttack paper's number for it, on images in [0, 1]."""
    from study.ablation_eval import test_images

    model = load_released(ANCHOR)
    x, y = test_images(str(data_root))
    assert x.shape == (10_000, 1, 28, 28) and float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    correct = 0
    with torch.no_grad():
        for i in range(0, len(x), 1000):
            correct += int((model(x[i:i + 1000]).argmax(1) == y[i:i + 1000]).sum())
    assert correct == 9_850, correct
    assert 100 * correct / len(y) == pytest.approx(PUBLISHED[0]["clean"])


@pytest.mark.skipif(not RELEASED_PART.is_file(), reason=f"{RELEASED_PART.relative_to(ROOT)} is not committed yet "
                    "(`make robust` with the released checkpoint in data/anchors/ writes it)")
def test_the_committed_released_evaluation_agrees_with_the_official_driver():
    part = json.loads(RELEASED_PART.read_text())
    assert part["model"]["sha256"] == ANCHOR_SHA256
    assert part["model"]["parameters"] == 166_406 and part["start"] == 0
    ours, official = part["autoattack"], part["official"]
    assert len(official["robust_flags"]) == len(ours["robust_flags"]) == ours["n"] == official["n"] > 0
    assert official["robust_flags"] == ours["robust_flags"]  # image for image
    assert official["agree"] == ours["n"] and official["robust"] == ours["robust"] == sum(ours["robust_flags"])


# ---------------------------------------------------------------------------------------------------------------
# load_ablation


def aa_result(flags: list[bool], eps: float = 0.3, clean: int | None = None) -> dict:
    """An advlib.autoattack result on len(flags) images: APGD-CE breaks every image it attacks but the robust."""
    n, robust = len(flags), sum(flags)
    clean = n if clean is None else clean
    return {"eps": eps, "eps_pixel": eps, "n": n, "clean": clean, "robust": robust, "accuracy": rate(robust, n),
            "per_attack": [{"attack": "apgd-ce", "attacked": clean, "broke": clean - robust, "seconds": 1.0},
                           {"attack": "apgd-t", "attacked": robust, "broke": 0, "seconds": 2.0}],
            "robust_flags": flags}


def released_part(start: int, flags: list[bool], official: bool = False) -> dict:
    out = {"clean": rate(9_850, 10_000), "autoattack": aa_result(flags), "start": start,
           "model": {"checkpoint": ANCHOR_URL, "sha256": ANCHOR_SHA256, "parameters": 166_406}}
    if official:
        out["official"] = {"robust": sum(flags), "n": len(flags), "robust_flags": flags, "agree": len(flags)}
    return out


def run_result(name: str, seed: int, entry: dict, *, aa: float = 82.0, clean: float = 98.5, losses=(0.8, 0.4),
               n: int = 1000, eps: float = 0.3, parameters: int = 166_406, check: float | None = None,
               epoch_seconds: float = 60.0) -> dict:
    """What ``study.ablation_eval evaluate`` writes for one (configuration, seed); the held-out check at the kept
    (last) epoch is ``check`` (default: aa); each epoch took ``epoch_seconds``."""
    check = aa if check is None else check
    k = round(aa * n / 100)
    flags = [True] * k + [False] * (n - k)
    history = {"epoch_loss": list(losses), "train_accuracy": [50.0] * len(losses),
               "test_accuracy": [clean - 1.0] * (len(losses) - 1) + [clean],
               "check_accuracy": [check - 2.0] * (len(losses) - 1) + [check], "kept_epoch": len(losses),
               "seconds": [epoch_seconds] * len(losses), "selection": "train[58000:60000]", "trained_on": "train[0:58000]"}
    clean_rate = rate(round(clean * 100), 10_000)
    return {"clean": clean_rate, "autoattack": aa_result(flags, eps=eps, clean=n), "start": 0, "name": name,
            "seed": seed, "spec": spec(entry), "parameters": parameters, "history": history}


def write(path: Path, blob: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(blob))


def test_load_ablation_reads_runs_checks_and_merges_the_released_parts(tmp_path):
    write(tmp_path / "ablation" / "cnn_s0.json", run_result("cnn", 0, {}))
    write(tmp_path / "ablation" / "cnn_s1.json", run_result("cnn", 1, {}))
    write(tmp_path / "ablation" / "checklist_cnn_s0.json", {"name": "cnn", "seed": 0, "result": {"n": 1000}})
    # written out of order: merged in order of their first image
    write(tmp_path / "anchor" / "released_from3.json", released_part(3, [False, True, True]))
    write(tmp_path / "anchor" / "released_from0.json", released_part(0, [True, True, False], official=True))
    ab = load_ablation(tmp_path)
    assert [(r["name"], r["seed"]) for r in ab["runs"]] == [("cnn", 0), ("cnn", 1)]
    assert ab["checks"] == {"cnn_s0": {"n": 1000}}
    rel = ab["released"]
    assert rel["part_size"] == 3 and rel["parts"] == [{"start": 0, "robust": 2}, {"start": 3, "robust": 2}]
    whole = rel["autoattack"]
    assert (whole["n"], whole["robust"], whole["clean"]) == (6, 4, 6)
    assert whole["accuracy"] == rate(4, 6)
    assert whole["per_attack"][0] == {"attack": "apgd-ce", "attacked": 6, "broke": 2, "seconds": 2.0}
    assert rel["first"]["n"] == 3 and rel["first"]["robust"] == 2
    assert rel["official"]["agree"] == 3
    for result in (whole, rel["first"], rel["official"]):
        assert "robust_flags" not in result  # the per-image flags stay in the files
    assert rel["clean"] == rate(9_850, 10_000) and rel["model"]["sha256"] == ANCHOR_SHA256


def test_load_ablation_without_the_released_model(tmp_path):
    write(tmp_path / "ablation" / "cnn_s0.json", run_result("cnn", 0, {}))
    ab = load_ablation(tmp_path)
    assert ab["released"] is None and len(ab["runs"]) == 1 and ab["checks"] == {}
    write(tmp_path / "anchor" / "released_from0.json", released_part(0, [True, False]))
    rel = load_ablation(tmp_path)["released"]
    assert rel["official"] is None and rel["autoattack"]["n"] == rel["first"]["n"] == 2


@pytest.mark.parametrize("starts", [(0, 4), (2, 4), (0, 2, 6), (2,)])
def test_load_ablation_refuses_parts_that_are_not_consecutive(tmp_path, starts):
    for s in starts:
        write(tmp_path / "anchor" / f"released_from{s}.json", released_part(s, [True, False]))
    with pytest.raises(ValueError, match="not consecutive"):
        load_ablation(tmp_path)


def run_part(name: str, seed: int, start: int, aa: float, n: int = 3) -> dict:
    """AutoAttack of a run of ablation_whole on test images [start, start + n)."""
    return {**run_result(name, seed, {}, aa=aa, n=n), "start": start}


def test_load_ablation_merges_a_runs_parts_over_the_test_set(tmp_path):
    write(tmp_path / "ablation" / "cnn_s0.json", run_result("cnn", 0, {}, aa=100 * 2 / 3, n=3))
    write(tmp_path / "ablation" / "cnn_s1.json", run_result("cnn", 1, {}, aa=100.0, n=3))
    write(tmp_path / "ablation" / "part_cnn_s0_from6.json", run_part("cnn", 0, 6, aa=0.0))  # out of order
    write(tmp_path / "ablation" / "part_cnn_s0_from3.json", run_part("cnn", 0, 3, aa=100 / 3))
    ab = load_ablation(tmp_path)
    assert [(r["name"], r["seed"]) for r in ab["runs"]] == [("cnn", 0), ("cnn", 1)]  # parts are not runs
    s0, s1 = ab["runs"]
    assert s0["autoattack"]["n"] == 3 and "whole" not in s1
    whole = s0["whole"]
    assert (whole["n"], whole["robust"]) == (9, 3) and whole["accuracy"] == rate(3, 9) and "robust_flags" not in whole
    assert whole["per_attack"][0]["attacked"] == 9
    row = rows_of(*ab["runs"])
    assert row[0]["whole"] == whole and row[1]["whole"] is None
    assert row[0]["aa_seconds"] == 3 * row[1]["aa_seconds"] > 0  # the job time of all its slices


@pytest.mark.parametrize("files, error", [
    ({"part_cnn_s0_from6.json": 6}, "not consecutive"),  # a slice missing
    ({"part_cnn_s1_from3.json": 3}, "parts of runs that are not there"),  # no such run
])
def test_load_ablation_refuses_parts_it_cannot_merge(tmp_path, files, error):
    write(tmp_path / "ablation" / "cnn_s0.json", run_result("cnn", 0, {}, n=3))
    for f, start in files.items():
        name, seed = f[len("part_"):].split("_from")[0].rsplit("_s", 1)
        write(tmp_path / "ablation" / f, run_part(name, int(seed), start, aa=100.0))
    with pytest.raises(ValueError, match=error):
        load_ablation(tmp_path)


# ---------------------------------------------------------------------------------------------------------------
# Tables and the summary


def rows_of(*results: dict) -> list[dict]:
    return ablation_rows(list(results))


def test_ablation_configs_average_only_the_trained_seeds():
    rows = rows_of(run_result("cnn", 0, {}, aa=80.0, clean=98.0), run_result("cnn", 1, {}, aa=84.0, clean=99.0),
                   run_result("cnn", 2, {}, aa=11.0, clean=98.0, losses=(0.8, 2.2)),
                   run_result("wide", 0, {"width": 2}, aa=85.0, parameters=662_786))
    assert [r["status"] for r in rows] == ["trained", "trained", "diverged", "trained"]
    cnn, wide = ablation_configs(rows)
    assert (cnn["name"], cnn["seeds"], cnn["failed"]) == ("cnn", [0, 1, 2], [2])
    assert cnn["autoattack"]["mean"] == pytest.approx(82.0) and cnn["autoattack"]["std"] == pytest.approx(math.sqrt(8))
    assert cnn["autoattack"]["values"] == pytest.approx([80.0, 84.0])
    assert cnn["clean"]["mean"] == pytest.approx(98.5)
    assert cnn["train_seconds"]["values"] == [120.0] * 3  # the time every seed took, diverged or not
    assert wide["parameters"] == 662_786 and wide["autoattack"]["mean"] == pytest.approx(85.0)
    assert wide["autoattack"]["std"] == 0.0 and wide["failed"] == []


def test_ablation_configs_of_an_all_diverged_configuration_have_no_numbers():
    rows = rows_of(run_result("bad", 0, {}, aa=0.0, clean=11.0), run_result("bad", 1, {}, losses=(2.3, 2.3)))
    (bad,) = ablation_configs(rows)
    assert bad["clean"] is None and bad["autoattack"] is None and bad["failed"] == [0, 1]


def test_ablation_table_and_diverged_curves_name_the_diverged_runs():
    ok, bad = run_result("cnn", 0, {}), run_result("resnet_nobn", 1, {"arch": "resnet"}, aa=2.0, clean=11.0,
                                                     losses=(2.30, 2.31))
    rows = rows_of(ok, bad)
    table = ablation_table(rows).splitlines()
    assert len(table) == 2 + 2
    assert table[2].endswith("| trained |") and "diverged" not in table[2]
    assert "`resnet_nobn`" in table[3] and table[3].endswith("| **diverged** |")
    curves = diverged_curves(rows)
    assert "`resnet_nobn` seed 1" in curves and "**diverged**" in curves and "cnn" not in curves.split("(")[0]
    assert "2.30 → 2.31" in curves and "10.0% → 11.0%" in curves and "on its own training batches 50% → 50%" in curves
    assert diverged_curves(rows_of(ok)) == "No run diverged or overfit catastrophically."


def summary(rows: list[dict], contrast: list[tuple[str, str, str]] = (), released: dict | None = None) -> str:
    return capacity_summary({"rows": rows, "configs": ablation_configs(rows), "contrasts": list(contrast),
                             "released": released}, PUBLISHED)


RESNET = {"arch": "resnet", "batchnorm": True}


@pytest.mark.parametrize("aa, clean, minutes, met", [
    (80.0, 98.0, 30.0, True),  # the targets themselves are met
    (91.0, 99.2, 12.0, True),
    (79.9, 99.0, 12.0, False),
    (85.0, 97.9, 12.0, False),
    (91.0, 99.2, 30.5, False),  # robust and accurate, but trained too long
    (40.0, 90.0, 12.0, False),
])
def test_capacity_summary_states_whether_the_target_is_met(aa, clean, minutes, met):
    text = summary(rows_of(run_result("resnet", 0, RESNET, aa=aa, clean=clean, parameters=19_810,
                                      epoch_seconds=30 * minutes),
                           run_result("resnet_nobn", 0, {"arch": "resnet"}, aa=aa - 5, clean=clean - 2)))
    assert "`resnet`" in text and "≥ 80% with ≥ 98% clean" in text
    assert f"clean, trained in {minutes:.1f} min: the target" in text, text
    assert ("the target (≥ 80% with ≥ 98% clean, trained in ≤ 30 min) is met." in text) is met, text
    assert ("is not met." in text) is (not met), text


def test_capacity_summary_finds_the_run_that_meets_the_target_even_if_another_is_more_robust():
    """More robust but below the clean target (85%, 97%) and a run that meets both (81%, 99%): the target is met."""
    text = summary(rows_of(run_result("resnet", 0, RESNET, aa=85.0, clean=97.0),
                           run_result("resnet_w2", 0, RESNET | {"width": 2}, aa=81.0, clean=99.0)))
    assert "`resnet_w2`" in text and "is met." in text, text


def test_capacity_summary_gives_the_best_configuration_seed_by_seed():
    """The target is claimed for a run; the sentence after it says how many seeds of that configuration meet it."""
    nobn = {"arch": "resnet", "ramp_epochs": 4}
    rows = rows_of(run_result("resnet_nobn_ramp", 0, nobn, aa=82.8, clean=98.9),
                   run_result("resnet_nobn_ramp", 1, nobn, aa=79.0, clean=98.7),
                   run_result("resnet_nobn_ramp", 2, nobn, aa=0.0, clean=11.0, losses=(2.30, 2.30)),
                   run_result("resnet", 0, RESNET, aa=60.0, clean=99.0))
    text = summary(rows)
    assert "`resnet_nobn_ramp` seed 0" in text and "is met." in text, text
    assert ("Its configuration, seed by seed: 82.8% (98.90% clean, 2.0 min), 79.0% (98.70% clean, 2.0 min), 0.0% "
            "(11.00% clean, 2.0 min, diverged); mean 80.9 ± 2.7% over the seeds that neither diverged nor collapsed; 1 of 3 seeds meet the "
            "target.") in text, text
    assert "Its configuration" not in summary(rows[:1])  # one seed: no spread to state


def test_capacity_summary_counts_neither_the_cnn_nor_diverged_runs_for_the_target():
    rows = rows_of(run_result("cnn", 0, {}, aa=95.0, clean=99.0),  # Wong et al.'s network, not the study's
                   run_result("resnet", 0, RESNET, aa=95.0, clean=99.0, losses=(0.5, 2.2)),  # diverged
                   run_result("resnet_nobn", 0, {"arch": "resnet"}, aa=60.0, clean=98.5))
    text = summary(rows)
    assert "`resnet_nobn`" in text and "is not met." in text
    assert "Diverged" in text and "`resnet` seed 0" in text


def test_capacity_summary_reads_the_contrasts_and_says_diverged():
    rows = rows_of(run_result("resnet_nobn", 0, {"arch": "resnet"}, aa=61.0),
                   run_result("resnet", 0, RESNET, aa=3.0, clean=11.0))
    text = summary(rows, contrasts({"resnet_nobn": {"arch": "resnet"}, "resnet": RESNET}))
    assert "- BatchNorm: `resnet_nobn` 61.0% → `resnet` diverged" in text


def test_capacity_summary_contrasts_give_the_spread_and_the_failed_seeds():
    """A configuration's mean leaves its diverged seeds out: the contrast line says how many there were."""
    nobn = {"arch": "resnet"}
    rows = rows_of(*(run_result("resnet_nobn", s, nobn, aa=a) for s, a in ((0, 60.0), (1, 64.0))),
                   run_result("resnet_nobn", 2, nobn, aa=2.0, clean=11.0, losses=(2.30, 2.31)),
                   *(run_result("resnet", s, RESNET, aa=3.0, clean=11.0) for s in (0, 1, 2)),
                   run_result("resnet_nobn_ramp", 0, nobn | {"ramp_epochs": 4}, aa=80.0),
                   run_result("resnet_nobn_ramp", 1, nobn | {"ramp_epochs": 4}, aa=1.0, clean=11.0,
                              losses=(2.30, 2.31)))
    grid = {"resnet_nobn": nobn, "resnet": RESNET, "resnet_nobn_ramp": nobn | {"ramp_epochs": 4}}
    text = summary(rows, contrasts(grid))
    assert ("- BatchNorm: `resnet_nobn` 62.0 ± 2.8% (2 seeds; 1 of 3 diverged or collapsed) → `resnet` diverged "
            "or collapsed on all 3 seeds") in text, text
    assert ("- an ε ramp: `resnet_nobn` 62.0 ± 2.8% (2 seeds; 1 of 3 diverged or collapsed) → `resnet_nobn_ramp` "
            "80.0% (1 seed; 1 of 2 diverged or collapsed)") in text, text
    # the means over the survivors say +18 pp for the ramp; over every seed it is a loss: no change raised it
    assert "No single change raised AutoAttack averaged over every seed." in text, text
    rows += rows_of(run_result("resnet_nobn_ramp", 2, nobn | {"ramp_epochs": 4}, aa=91.0))
    text = summary(rows, contrasts(grid))
    assert ("Of the single changes, the largest gain in AutoAttack comes from an ε ramp: `resnet_nobn` → "
            "`resnet_nobn_ramp`, 42.0% → 57.3% averaged over every seed, a diverged or collapsed one at its measured "
            "value (+15.3 pp).") in text, text


def test_capacity_summary_names_the_runs_whose_check_autoattack_undercuts():
    """A check far above AutoAttack at the kept epoch: masked gradients the check could not see."""
    nobn = {"arch": "resnet"}
    w2 = run_result("w2", 0, nobn | {"width": 2}, aa=0.6)
    w2["history"].update(check_accuracy=[91.6, 5.0], kept_epoch=1)  # the kept epoch's check counts, not the last
    rows = rows_of(w2, run_result("w1", 0, nobn, aa=67.6, check=94.4),
                   run_result("w1", 1, nobn, aa=82.8, check=94.6),  # 11.8 points: the usual gap
                   run_result("w1", 2, nobn, aa=75.0, check=95.0),  # exactly the gap: not more than it
                   run_result("bad", 0, nobn, aa=0.0, clean=11.0, losses=(2.30, 2.31), check=60.0))  # diverged
    text = summary(rows)
    assert ("The early-stopping check stood more than 20 points above AutoAttack (gradients masked for the check's "
            "attack, not for AutoAttack's): `w2` seed 0 (check 91.6%, AutoAttack 0.6%), `w1` seed 0 (check 94.4%, "
            "AutoAttack 67.6%).") in text, text
    assert "early-stopping check stood" not in summary(rows[2:4])


def test_capacity_summary_and_anchor_table_report_the_released_model(tmp_path):
    write(tmp_path / "anchor" / "released_from0.json",
          released_part(0, [True] * 83 + [False] * 17, official=True))
    write(tmp_path / "anchor" / "released_from100.json", released_part(100, [True] * 82 + [False] * 18))
    released = load_ablation(tmp_path)["released"]
    rows = rows_of(run_result("cnn", 0, {}, aa=82.0), run_result("cnn", 1, {}, aa=84.0))
    text = summary(rows, released=released)
    assert "82.93%" in text and "official driver agrees on 100 of 100 images" in text
    assert "82.50% of the first 200" in text and "83.0 ± 1.4%" in text
    assert "inside the released model's interval" in text
    table = anchor_table(released, ablation_configs(rows), PUBLISHED)
    assert table.count("published (AutoAttack paper") == len(PUBLISHED)
    assert "first 100 test images" in table and "first 200 test images" in table and "seeds 0, 1" in table


@pytest.mark.parametrize("seed_aa, where, above", [
    ((95.0, 72.0), "lies above", 1),  # [88.8, 97.8] against the released model's [60.4, 78.1]
    ((82.0, 72.0), "overlaps", 0),  # [73.3, 88.3]: its value above the released interval, not its interval
    ((45.0, 40.0), "lies below", 0),
])
def test_capacity_summary_compares_the_best_smallresnet_with_the_released_model_on_the_same_images(
        tmp_path, seed_aa, where, above):
    write(tmp_path / "anchor" / "released_from0.json", released_part(0, [True] * 70 + [False] * 30))
    write(tmp_path / "anchor" / "released_from100.json", released_part(100, [True] * 90 + [False] * 10))
    released = load_ablation(tmp_path)["released"]
    nobn = {"arch": "resnet", "ramp_epochs": 4}
    rows = rows_of(*(run_result("resnet_nobn_ramp", seed, nobn, aa=aa, n=100, parameters=19_642)
                     for seed, aa in enumerate(seed_aa)))
    text = summary(rows, released=released)
    assert (f"On the same 100 images Wong et al.'s released model (166,406 parameters) keeps 70.0% [60.4, 78.1]: "
            f"this run's interval {where} the released model's ({above} of 2 seeds of its configuration lie above "
            "it).") in text, text
    assert "The published 82.93% counts the whole test set, on which the released model keeps 80.00% here (first " \
           "200 images)." in text, text
    # other images than the released model's first ones: no comparison
    assert "On the same" not in summary(rows_of(run_result("resnet_nobn_ramp", 0, nobn, aa=95.0, n=1000)),
                                        released=released)


@pytest.mark.parametrize("whole_aa, parameters, reached, apart", [
    (90.0, 19_642, "is reached", "lie apart"),  # [89.4, 90.6] against the released model's [79.2, 80.8]
    (82.0, 19_642, "is not reached", "lie apart"),  # below the published 82.93%
    (81.0, 19_642, "is not reached", "overlap"),
    (90.0, 200_000, "is not reached", "lie apart"),  # more parameters than Wong et al.'s network
])
def test_capacity_summary_states_the_moonshot_on_the_whole_test_set(tmp_path, whole_aa, parameters, reached, apart):
    for k in range(10):  # the released model on the whole test set, 80% of each slice of 1,000
        write(tmp_path / "anchor" / f"released_from{1000 * k}.json", released_part(1000 * k, [True] * 800 + [False] * 200))
    released = load_ablation(tmp_path)["released"]
    run = run_result("resnet_nobn_pgd_ramp", 0, {"arch": "resnet"}, aa=whole_aa, n=10_000, parameters=parameters)
    run["whole"] = run.pop("autoattack")
    run["autoattack"] = run_result("x", 0, {}, aa=whole_aa, n=1000)["autoattack"]
    text = summary(rows_of(run), released=released)
    assert (f"On the first 10,000 test images `resnet_nobn_pgd_ramp` seed 0 ({parameters:,} parameters) keeps "
            f"{whole_aa:.2f}%") in text, text
    assert f"Wong et al.'s released model 80.00% [79.2, 80.8] on the same images (the two intervals {apart})." in text
    assert (f"The moonshot (above the published 82.93% with fewer than 166,406 parameters), judged on all 10,000 test "
            f"images as the published figure is, {reached}.") in text, text
    # a part of the test set attacked so far: compared on the same images, the moonshot not judged
    partial = {**run, "whole": run_result("x", 0, {}, aa=whole_aa, n=3000)["autoattack"]}
    text = summary(rows_of(partial), released=released)
    assert f"On the first 3,000 test images `resnet_nobn_pgd_ramp` seed 0" in text, text
    assert "80.00% [78.5, 81.4] on the same images" in text and "is not measured yet" in text, text
    assert "On the first" not in summary(rows_of(run_result("resnet_nobn_pgd_ramp", 0, {"arch": "resnet"})),
                                         released=released)  # no run of ablation_whole


def test_released_on_the_first_images_needs_parts_that_cover_them():
    parts = [{"start": 0, "robust": 790}, {"start": 1000, "robust": 810}]
    rel = {"part_size": 1000, "parts": parts}
    assert _released_on(rel, 2000) == rate(1600, 2000) and _released_on(rel, 1000) == rate(790, 1000)
    assert _released_on(rel, 3000) is None and _released_on(rel, 1500) is None and _released_on(None, 1000) is None


# ---------------------------------------------------------------------------------------------------------------
# robustness_settings_mismatch


def robustness(params: dict, runs_: list[dict]) -> dict:
    """load_robustness's result computed with exactly ``params``, the capacity study's runs given."""
    aa = {m: [{"eps": e, "n": params["aa_samples"] if e in params["aa_eps"] else params["aa_grid_samples"]}
              for e in sorted(set(params["aa_eps"]) | set(params["aa_grid_eps"]))] for m in ("standard", "robust")}
    sanity = {"result": {"eps": params["sanity_eps"], "sweep": [{"eps": e} for e in params["sanity_eps_sweep"]],
                         "square_vs_apgd": {"n": params["square_samples"]}}}
    return {"autoattack": aa, "sanity": sanity, "ablation": {"runs": runs_, "checks": {}, "released": None}}


PARAMS = {"aa_eps": [0.3], "aa_grid_eps": [0.1], "aa_samples": 1000, "aa_grid_samples": 50, "sanity_eps": 0.3,
          "sanity_eps_sweep": [0.3, 1.0], "square_samples": 100, "ablation_eps": 0.3, "ablation_samples": 1000,
          "ablation": {"cnn": {"seeds": [0, 1]}, "resnet": RESNET}}


def grid_runs() -> list[dict]:
    return [run_result("cnn", 0, {"seeds": [0, 1]}), run_result("cnn", 1, {"seeds": [0, 1]}),
            run_result("resnet", 0, RESNET)]


def test_robustness_settings_match_when_every_run_is_there():
    assert robustness_settings_mismatch(robustness(PARAMS, grid_runs()), PARAMS) == []


def test_robustness_settings_mismatch_reports_a_missing_run():
    got = robustness_settings_mismatch(robustness(PARAMS, grid_runs()[:2]), PARAMS)
    assert len(got) == 1 and got[0].startswith("capacity study: runs") and "('resnet', 0)" in got[0], got
    more = {**PARAMS, "ablation": {**PARAMS["ablation"], "wide": {"width": 2}}}
    got = robustness_settings_mismatch(robustness(more, grid_runs()), more)
    assert len(got) == 1 and "('wide', 0)" in got[0], got
    # a seed added: its run is missing; the configuration's other runs still have its settings
    seeds = {**PARAMS, "ablation": {**PARAMS["ablation"], "resnet": {**RESNET, "seeds": [0, 1]}}}
    got = robustness_settings_mismatch(robustness(seeds, grid_runs()), seeds)
    assert len(got) == 1 and got[0].startswith("capacity study: runs") and "('resnet', 1)" in got[0], got


def test_robustness_settings_mismatch_reports_a_changed_configuration():
    changed = {**PARAMS, "ablation": {**PARAMS["ablation"], "resnet": {**RESNET, "ramp_epochs": 4}}}
    got = robustness_settings_mismatch(robustness(changed, grid_runs()), changed)
    assert len(got) == 1 and got[0].startswith("capacity study resnet: trained as") and "'ramp_epochs': 4" in got[0]


def test_robustness_settings_mismatch_reports_another_autoattack_setting():
    runs_ = grid_runs()
    runs_[2] = run_result("resnet", 0, RESNET, n=500)
    got = robustness_settings_mismatch(robustness(PARAMS, runs_), PARAMS)
    assert got == ["capacity study resnet seed 0: AutoAttack on 500 images at eps 0.3, parameters ask 1000 at 0.3"]
    runs_[2] = run_result("resnet", 0, RESNET, eps=0.2)
    (got,) = robustness_settings_mismatch(robustness(PARAMS, runs_), PARAMS)
    assert "at eps 0.2" in got


def test_robustness_settings_mismatch_reports_a_run_not_attacked_on_the_whole_test_set():
    params = {**PARAMS, "ablation_whole": ["cnn_s1"], "released_parts": 4}
    runs_ = grid_runs()
    got = robustness_settings_mismatch(robustness(params, runs_), params)
    assert got == ["capacity study cnn seed 1: AutoAttack on the first 1,000 test images, ablation_whole asks 4,000"]
    runs_[1]["whole"] = {**runs_[1]["autoattack"], "n": 4000}
    assert robustness_settings_mismatch(robustness(params, runs_), params) == []
    got = robustness_settings_mismatch(robustness(PARAMS, runs_), {**PARAMS, "ablation_whole": []})
    assert got == ["capacity study cnn seed 1: attacked on 4,000 test images, ablation_whole does not name it"]


def test_a_run_caught_in_catastrophic_overfitting_is_named_in_the_table_curves_and_summary():
    """A run whose held-out check never rose while it fitted its own FGSM batches (the retrained anchor's seed 2):
    its status comes from its curves, and the table, the curves and the summary say so."""
    bad = run_result("cnn", 2, {}, aa=0.0, clean=66.5)
    bad["history"]["check_accuracy"] = [4.0, 1.0, 10.0][: len(bad["history"]["epoch_loss"])]
    bad["history"]["train_accuracy"] = [86.0, 94.0][: len(bad["history"]["epoch_loss"])]
    rows = rows_of(run_result("cnn", 0, {}), bad)
    assert [r["status"] for r in rows] == ["trained", "overfit"]
    assert ablation_table(rows).splitlines()[3].endswith("| **catastrophic overfitting** |")
    assert "`cnn` seed 2" in diverged_curves(rows) and "catastrophic overfitting" in diverged_curves(rows)
    text = summary(rows)
    assert "catastrophic overfitting that early stopping could not undo" in text and "`cnn` seed 2" in text
    assert "0.0% (catastrophic overfitting)" in text
