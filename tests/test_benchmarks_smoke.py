"""`python -m benchmarks --smoke` keeps working and writes results of the documented shape.

A smoke run measures nothing worth asserting on (tiny sizes, a shared machine), so no test here looks at
seconds: only at the structure of results.json and results.md.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
TARGET_IDS = {"sweep_vs_per_image_loop", "sweep_vs_peer", "sweep_identical", "sweep_full_seconds",
              "training_speedup", "training_accuracy", "slider_p95", "end_to_end", "report_peak_memory"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, data_root) -> Path:
    out = tmp_path_factory.mktemp("bench")
    done = subprocess.run([sys.executable, "-m", "benchmarks", "--smoke", "--out", str(out),
                           "--data-root", str(data_root)], cwd=REPO_ROOT, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def results(smoke) -> dict:
    return json.loads((smoke / "results.json").read_text())


def is_stats(d) -> bool:
    return isinstance(d, dict) and {"median", "min", "max", "q1", "q3", "n"} <= set(d) and d["min"] <= d["max"]


def test_machine_and_mode_recorded(results):
    assert results["mode"] == "smoke"
    m = results["machine"]
    for key in ("cpu_model", "logical_cores", "torch", "torch_num_threads", "loadavg_at_start"):
        assert key in m, key
    assert len(results["loadavg_at_end"]) == 3


def test_every_target_judged_or_explained(results):
    targets = {t["id"]: t for t in results["targets"]}
    assert set(targets) == TARGET_IDS
    for t in targets.values():
        assert t["met"] in (True, False, None), t
        if t["met"] is None:
            assert t["measured"] is None and t["note"], t  # not measured says why
        else:
            assert isinstance(t["measured"], (int, float)), t
    # the end-to-end run is skipped in a smoke run, and says so
    assert targets["end_to_end"]["met"] is None and "smoke" in targets["end_to_end"]["note"]


def test_training_section(results):
    tr = results["sections"]["training"]
    assert {"num_workers_0", "num_workers_2"} == set(tr["textbook"])
    for run in [*tr["textbook"].values(), tr["advlib"]]:
        assert is_stats(run["seconds"]) and is_stats(run["images_per_s"])
    ep = tr["epoch"]
    for k in ("textbook", "advlib"):
        assert len(ep[k]) == ep["seeds"] == 1 and 0 <= ep[k][0]["test_accuracy"] <= 100
    assert ep["difference_se_pp"] is None  # one seed: no spread to judge by


def test_accuracy_difference_is_judged_against_the_seed_spread():
    from benchmarks.report import targets
    from benchmarks.train_speed import accuracy_comparison

    cmp = accuracy_comparison([97.0, 97.4, 96.8], [97.5, 97.9, 97.3])
    assert cmp["accuracy_difference_pp"] == pytest.approx(-0.5)
    # both samples have variance 0.0933...: se = sqrt(2 * 0.09333 / 3)
    assert cmp["difference_se_pp"] == pytest.approx((2 * 0.28 / 3 / 3) ** 0.5)

    def judged(epoch):
        t = {t["id"]: t for t in targets({"sections": {"training": {"epoch": epoch}}})}
        return t["training_accuracy"]["met"]

    assert judged(cmp) is False  # 0.5 pp apart with a 0.25 pp standard error: not within noise
    assert judged(accuracy_comparison([97.0, 98.0, 96.0], [97.5, 98.5, 96.5])) is True  # same gap, large spread
    assert judged(accuracy_comparison([97.0], [97.5])) is True  # one seed: the fixed 1 pp band


def test_sweep_sections(results):
    for key in ("sweep_subset", "sweep_full"):
        sw = results["sections"][key]
        assert len(sw["eps"]) == 7 and sw["adversarial_evaluations"] == 7 * sw["images"]
        assert is_stats(sw["methods"]["advlib"]["seconds"])
        peer = sw["methods"]["torchattacks"]
        assert is_stats(peer.get("seconds")) or "not_measured" in peer
        acc = sw["agreement"]["adv_accuracy"]
        assert all(len(v) == 7 for v in acc.values())
        assert isinstance(sw["agreement"]["identical_accuracies"], bool)
    loop = results["sections"]["sweep_subset"]["methods"]["per_image_loop"]
    assert is_stats(loop["seconds"]) and loop["seconds_per_image_per_eps"] > 0
    assert "estimated_seconds" in results["sections"]["sweep_full"]["methods"]["per_image_loop"]


def test_slider_memory_efficiency_sections(results):
    s = results["sections"]
    assert is_stats(s["slider"]["construction_seconds"]) and "p95" in s["slider"]["move_seconds"]
    for job in ("training", "sweep"):
        assert s["memory"][job]["self_peak_rss_mb"] > 0
    ef = s["efficiency"]
    assert ef["flops"]["forward_per_image"] > 0 and ef["matmul"]["best_gflops"] > 0
    assert all(0 < v["fraction_of_matmul"] for v in ef["achieved"].values())
    assert "not_measured" in s["end_to_end"]


def test_markdown_has_the_target_table(smoke, results):
    md = (smoke / "results.md").read_text()
    assert "| target | goal | measured | met |" in md
    assert md.count("\n| ") >= len(results["targets"]) + 1
