"""The papermill pipeline end to end, on small parameters, in a temporary directory (fixture `small_pipeline`
in conftest.py): every stage runs, every figure is a real PNG, metrics.json has every field; plus the pipeline's
error paths and the README's generated table."""
from __future__ import annotations

import json
import struct
from pathlib import Path

import nbformat
import pytest

from advlib import pipeline, readme
from advlib.results import ORIGINAL_REPORT, load_metrics

ROOT = Path(__file__).resolve().parents[1]

FIGURES = [
    "graph1_accuracy_bar_chart.png", "graph2_asr_bar_chart.png", "graph3_epsilon_vs_accuracy.png",
    "graph4_epsilon_vs_asr.png", "graph5_image_grid.png", "graph6_training_curves.png",
    "graph7_confusion_matrices.png", "graph8_confidence_comparison.png", "sample_predictions.png",
    "graph10_defense_robustness.png", "graph10b_robust_examples.png", "graph12_confidence_roc.png",
]

REQUIRED = {
    "training": ["test_accuracy", "train_accuracy", "parameter_count", "n_train", "n_test", "model_config",
                 "history", "parameters", "environment"],
    "sweep": ["n_samples", "eps_grid", "rows", "full_test_set", "parameters"],
    "confidence": ["focus_eps", "clean_confidence", "adv_confidence", "confusion_clean", "confusion_adv",
                   "detector", "asr", "parameters"],
    "visual": ["focus_eps", "labels", "preds_adv", "explorer_curve", "parameters"],
    "defense": ["clean_test_accuracy", "curves", "targeted", "robust_history", "parameters"],
}
ROW_FIELDS = ["eps", "eps_pixel", "n", "adv_accuracy", "asr", "clean_confidence", "adv_confidence"]
RATE_FIELDS = ["value", "ci_low", "ci_high", "k", "n"]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("name", FIGURES)
def test_every_figure_is_a_sensible_png(small_pipeline, name):
    width, height = png_size(small_pipeline["figure_dir"] / name)
    assert 400 <= width <= 4000 and 250 <= height <= 4000, (name, width, height)


def test_metrics_has_every_field(small_pipeline):
    metrics = json.loads((small_pipeline["figure_dir"] / "metrics.json").read_text())
    for section, keys in REQUIRED.items():
        missing = [k for k in keys if k not in metrics[section]]
        assert not missing, f"metrics.json[{section!r}] lacks {missing}"
    params = small_pipeline["parameters"]
    sweep = metrics["sweep"]
    assert [r["eps"] for r in sweep["rows"]] == params["eps_grid"]
    for row in sweep["rows"]:
        assert all(k in row for k in ROW_FIELDS)
        assert row["n"] == params["n_samples"]
        for rate in (row["adv_accuracy"], row["asr"]):
            assert all(k in rate for k in RATE_FIELDS)
            assert rate["ci_low"] <= rate["value"] <= rate["ci_high"]
        assert row["adv_accuracy"]["value"] + row["asr"]["value"] == pytest.approx(100.0)
    assert sweep["rows"][0]["adv_accuracy"]["value"] == 100.0  # eps = 0 changes nothing on correct images
    assert len(sweep["full_test_set"]["rows"]) == len(params["eps_grid"])
    assert len(metrics["training"]["history"]["epoch_loss"]) == params["epochs"]
    assert metrics["training"]["n_train"] == params["train_subset"]
    assert metrics["training"]["parameters"]["seed"] == params["seed"]
    assert metrics["training"]["environment"]["torch"]
    assert sum(map(sum, metrics["confidence"]["confusion_adv"])) == params["n_samples"]
    assert 0.0 <= metrics["confidence"]["detector"]["auc"] <= 1.0
    assert set(metrics["defense"]["curves"]) == {"standard", "robust"}


def test_executed_notebooks_have_no_errors_and_the_injected_parameters(small_pipeline):
    for stage in pipeline.STAGES:
        nb = nbformat.read(small_pipeline["notebook_dir"] / f"{stage}.ipynb", as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.output_type == "error"]
        assert not errors, f"{stage}: {errors[0]['ename']}: {errors[0]['evalue']}"
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected, f"{stage} ran without the overriding parameters"


def test_report_takes_its_numbers_from_metrics(small_pipeline):
    """The narrative notebook shows the run's own numbers (here from the tiny run, far from the original's)."""
    nb = nbformat.read(small_pipeline["notebook_dir"] / "06_report.ipynb", as_version=4)
    text = "\n".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
    metrics = load_metrics(small_pipeline["figure_dir"] / "metrics.json")
    assert f"{metrics['training']['test_accuracy']:.2f}%" in text
    assert f"{metrics['training']['parameter_count']:,} parameters" in text
    assert f"{ORIGINAL_REPORT['test_accuracy']:.2f}%" in text  # the comparison table


def test_a_stage_without_its_input_names_the_notebook_to_run(tmp_path):
    work = tmp_path / "notebooks"
    work.mkdir()
    (work / "02_sweep.ipynb").write_bytes((ROOT / "notebooks" / "02_sweep.ipynb").read_bytes())
    import papermill as pm

    with pytest.raises(pm.PapermillExecutionError) as err:
        pipeline.run_pipeline(notebook_dir=work, stages=["02_sweep"], progress=False,
                              parameters={"artifact_dir": str(tmp_path / "none"), "figure_dir": str(tmp_path / "f"),
                                          "data_dir": str(ROOT / "data")})
    assert err.value.ename == "MissingArtifactError"
    assert "01_train.ipynb" in err.value.evalue
    # the source notebook is left as it was; the partial run is kept for inspection
    assert nbformat.read(work / "02_sweep.ipynb", as_version=4) == nbformat.read(
        ROOT / "notebooks" / "02_sweep.ipynb", as_version=4)
    assert (tmp_path / "none" / "failed" / "02_sweep.ipynb").is_file()


def test_unknown_stage_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="no notebook for stage"):
        pipeline.run_pipeline(notebook_dir=tmp_path, stages=["99_nope"])


def test_every_stage_declares_the_shared_parameters():
    for stage in pipeline.STAGES[:-1]:
        declared = pipeline.declared_parameters(ROOT / "notebooks" / f"{stage}.ipynb")
        for name in ("seed", "device", "data_dir", "artifact_dir", "figure_dir"):
            assert name in declared, f"{stage} does not declare {name}"


def test_nbval_markers_are_ones_nbval_recognises():
    """nbval only honours a comment that is exactly a marker: "# NBVAL_IGNORE_OUTPUT: why" is silently ignored."""
    from nbval.plugin import comment_markers

    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        for index, cell in enumerate(nbformat.read(path, as_version=4).cells):
            for line in cell.source.splitlines():
                word = line.strip().lstrip("#").strip()
                if line.strip().startswith("#") and word.startswith(("NBVAL", "PYTEST_VALIDATE")):
                    assert word in comment_markers, f"{path.name} cell {index}: {line!r} is not an nbval marker"


@pytest.mark.parametrize("text, value", [("1", 1), ("0.5", 0.5), ("None", None), ("[0, 0.1]", [0, 0.1]),
                                         ("fgsm_rs", "fgsm_rs"), ("true", True)])
def test_command_line_values(text, value):
    assert pipeline._value(text) == value


def test_readme_tables_are_generated_from_the_committed_metrics():
    metrics_path = ROOT / "figures" / "metrics.json"
    if not metrics_path.is_file():
        pytest.skip("no committed figures/metrics.json yet (run make report)")
    text = (ROOT / "README.md").read_text()
    bench = ROOT / "benchmarks" / "results.md"
    expected = readme.render(text, load_metrics(metrics_path), bench.read_text() if bench.is_file() else None)
    assert text == expected, "README's generated blocks are stale: run `python -m advlib.readme`"


def test_readme_takes_only_the_targets_table_from_the_benchmarks():
    md = ("# Benchmarks (full run)\n\nMachine: 2 cores.\n\n## Targets\n\n| target | met |\n|---|---|\n| sweep | yes |\n\n"
          "## Training\n\n| pipeline | images/s |\n|---|---|\n| advlib | 1 |\n")
    block = readme.bench_block(md)
    assert block.startswith("| target | met |\n|---|---|\n| sweep | yes |\n\nMachine: 2 cores.")
    assert "images/s" not in block and "benchmarks/results.md" in block
