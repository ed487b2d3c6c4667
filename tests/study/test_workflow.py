"""The workflow end to end, as a user runs it: the README's `make` commands with small parameters in a copy of the
repository whose path has a space (fixture `repo_copy` in conftest.py). Every figure is a real PNG, metrics.json has
every field, the DAG trains the two models independently, re-runs are incremental, publishing is all or nothing,
bad overrides stop the run before anything executes, the seed study fans out, the cluster profile dry-runs, and no
committed notebook carries a machine's path or defines logic."""
from __future__ import annotations

import ast
import json
import os
import re
import shutil
import struct
import subprocess
from pathlib import Path

import nbformat
import pytest

from study import readme, scratch
from study import workflow as pipeline
from study.results import ORIGINAL_REPORT, load_metrics
from conftest import SMALL_PIPELINE_PARAMETERS, config_words, copy_repo, run_make, tree_digest

ROOT = Path(__file__).resolve().parents[2]
SMALL = config_words(SMALL_PIPELINE_PARAMETERS)

FIGURES = [
    "graph1_accuracy_bar_chart.png", "graph2_asr_bar_chart.png", "graph3_epsilon_vs_accuracy.png",
    "graph4_epsilon_vs_asr.png", "graph5_image_grid.png", "graph6_training_curves.png",
    "graph7_confusion_matrices.png", "graph8_confidence_comparison.png", "sample_predictions.png",
    "graph10_defense_robustness.png", "graph10b_robust_examples.png", "graph11_seed_spread.png",
    "graph12_confidence_roc.png",
]
REQUIRED = {
    "training": ["test_accuracy", "train_accuracy", "parameter_count", "n_train", "n_test", "model_config",
                 "history", "parameters", "environment"],
    "sweep": ["n_samples", "eps_grid", "rows", "full_test_set", "parameters"],
    "confidence": ["focus_eps", "clean_confidence", "adv_confidence", "confusion_clean", "confusion_adv",
                   "detector", "asr", "parameters"],
    "visual": ["focus_eps", "labels", "preds_adv", "explorer_curve", "parameters"],
    "defense": ["clean_test_accuracy", "curves", "targeted", "robust_history", "parameters"],
    "seed_study": ["seeds", "eps", "adv_accuracy_mean", "adv_accuracy_std", "comparison_with_original"],
}
ROW_FIELDS = ["eps", "eps_pixel", "n", "adv_accuracy", "asr", "clean_confidence", "adv_confidence"]
RATE_FIELDS = ["value", "ci_low", "ci_high", "k", "n"]
# an absolute path of some machine: /home/..., /root/..., /tmp/..., /work/..., /Users/..., C:\...
MACHINE_PATH = re.compile(r"(?<![\w.~])(/(home|root|tmp|work|Users|var|opt|mnt|private)/[^\s\"']+|[A-Z]:\\\\)")


def snakemake(repo: Path, *args: str, check: bool = True) -> str:
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "snakemake"), "--cores", "2", *args], cwd=repo,
                          capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return done.stdout + done.stderr


def planned_jobs(repo: Path, target: str, *args: str) -> dict[str, int]:
    """{rule: job count} of a dry run of target."""
    out = snakemake(repo, target, "--dry-run", *args, "--quiet", "rules")
    counts = {}
    for line in out.splitlines():
        m = re.fullmatch(r"\s*(\w+)\s+(\d+)\s*", line)
        if m and m.group(1) != "total":
            counts[m.group(1)] = int(m.group(2))
    return counts


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path.name} is not a PNG"
    return struct.unpack(">II", data[16:24])


# ---------------------------------------------------------------------------------------------------------------
# What a run produces


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
    assert sum(map(sum, metrics["confidence"]["confusion_adv"])) == params["n_samples"]
    assert 0.0 <= metrics["confidence"]["detector"]["auc"] <= 1.0
    assert set(metrics["defense"]["curves"]) == {"standard", "robust"}


def test_each_stage_records_the_parameters_it_ran_with(small_pipeline):
    """Taken from the notebook's namespace (defaults + papermill's overrides), not retyped: the overrides show."""
    metrics = json.loads((small_pipeline["figure_dir"] / "metrics.json").read_text())
    p = SMALL_PIPELINE_PARAMETERS
    assert metrics["training"]["parameters"] == {"dataset": "mnist", "seed": p["seed"], "device": "cpu",
                                                 "epochs": p["epochs"], "batch_size": 64, "lr": 0.01,
                                                 "train_subset": p["train_subset"]}
    assert metrics["sweep"]["parameters"]["n_samples"] == p["n_samples"]
    assert metrics["defense"]["parameters"]["pgd_steps"] == p["pgd_steps"]
    for section in ("training", "sweep", "confidence", "visual", "defense"):
        assert not any(k.endswith("_dir") for k in metrics[section]["parameters"]), section


def test_executed_notebooks_have_no_errors_and_only_the_overrides_injected(small_pipeline):
    for stage in pipeline.STAGES:
        nb = nbformat.read(small_pipeline["notebook_dir"] / f"{stage}.ipynb", as_version=4)
        errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                  if o.output_type == "error"]
        assert not errors, f"{stage}: {errors[0]['ename']}: {errors[0]['evalue']}"
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        if stage in ("01_train", "02_sweep"):
            assert injected and "n_samples" in injected[0].source or "epochs" in injected[0].source, stage
        for cell in injected:
            assert "_dir" not in cell.source, f"{stage} was given a path: {cell.source}"


def test_report_takes_its_numbers_from_metrics(small_pipeline):
    """The narrative notebook shows the run's own numbers (here from the tiny run, far from the original's)."""
    nb = nbformat.read(small_pipeline["notebook_dir"] / "06_report.ipynb", as_version=4)
    text = "\n".join(o.get("data", {}).get("text/markdown", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []))
    metrics = load_metrics(small_pipeline["figure_dir"] / "metrics.json")
    assert f"{metrics['training']['test_accuracy']:.2f}%" in text
    assert f"{metrics['training']['parameter_count']:,} parameters" in text
    assert f"{ORIGINAL_REPORT['test_accuracy']:.2f}%" in text  # the comparison table


def test_run_writes_no_machine_path_into_the_notebooks(small_pipeline):
    for path in sorted(small_pipeline["notebook_dir"].glob("*.ipynb")):
        found = MACHINE_PATH.search(path.read_text())
        assert not found, f"{path.name} contains the machine path {found.group(0)!r}"


# ---------------------------------------------------------------------------------------------------------------
# Publishing: all or nothing


def test_make_report_publishes_the_run_into_the_repository(repo_copy):
    run = repo_copy / "build" / "run"
    for stage in pipeline.STAGES:
        assert (repo_copy / "report" / f"{stage}.ipynb").read_bytes() == (run / "report" / f"{stage}.ipynb").read_bytes()
    assert (repo_copy / "report" / "index.html").is_file()
    assert (repo_copy / "figures" / "metrics.json").read_bytes() == (run / "figures" / "metrics.json").read_bytes()
    metrics = load_metrics(run / "figures" / "metrics.json")
    assert f"| {metrics['training']['test_accuracy']:.2f}% |" in (repo_copy / "README.md").read_text()


def test_publish_refuses_an_unfinished_run(tmp_path):
    (tmp_path / "run" / "report").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="not a finished run"):
        pipeline.publish(tmp_path / "run", root=tmp_path)


def test_publish_leaves_a_killed_jobs_temporary_file_behind(tmp_path, monkeypatch):
    """run_notebook writes into a hidden temporary file first; a job killed mid-run leaves it in the run folder.
    Publishing copies the results, never such a file."""
    run = tmp_path / "run"
    (run / "report").mkdir(parents=True)
    (run / "figures").mkdir()
    for stage in pipeline.STAGES:
        (run / "report" / f"{stage}.ipynb").write_text(stage)
    (run / "report" / ".02_sweep.k1ll3d.ipynb").write_text("half a notebook")
    (run / "figures" / "metrics.json").write_text("{}")
    (tmp_path / "README.md").write_text("readme")
    monkeypatch.setattr(readme, "render", lambda text, metrics, bench, others=(): text)
    published = pipeline.publish(run, root=tmp_path)
    assert sorted(p.name for p in (tmp_path / "report").iterdir()) == sorted(f"{s}.ipynb" for s in pipeline.STAGES)
    assert all(not p.name.startswith(".") for p in published)


# ---------------------------------------------------------------------------------------------------------------
# A notebook run by hand (JupyterLab, make lab) works in the scratch run folder build/scratch/


def _repository(root: Path) -> Path:
    """A minimal checkout after `make report`: Snakefile, notebooks/, published figures/ and report/, the run's
    models and stage cache in build/run/artifacts/."""
    (root / "notebooks").mkdir(parents=True)
    (root / "Snakefile").write_text("")
    (root / "data").mkdir()
    (root / "figures" / "seed_study").mkdir(parents=True)
    (root / "figures" / "metrics.json").write_text('{"published": 1}')
    (root / "figures" / "seed_study" / "seed_0.json").write_text("{}")
    (root / "report").mkdir()
    (root / "report" / "06_report.ipynb").write_text("published notebook")
    (root / "build" / "run" / "artifacts" / "cache").mkdir(parents=True)
    (root / "build" / "run" / "artifacts" / "model.pt").write_bytes(b"the run's model")
    return root


def test_run_dirs_leaves_a_run_folders_paths_alone(tmp_path, monkeypatch):
    """The workflow (build/run/report), nbval (test-artifacts/nbval/report), the scratch folder itself: the
    notebooks' relative defaults are right there and come back unchanged."""
    repo = _repository(tmp_path / "repo")
    for folder in (repo / "build" / "run" / "report", tmp_path / "elsewhere" / "report",
                   repo / "build" / "scratch" / "report"):
        folder.mkdir(parents=True, exist_ok=True)
        monkeypatch.chdir(folder)
        assert scratch.run_dirs("../data", "../artifacts", "../figures") == ("../data", "../artifacts", "../figures")
    assert not (tmp_path / "elsewhere" / "build").exists()


@pytest.mark.parametrize("folder", ["notebooks", "report"])
def test_a_hand_run_finds_the_models_and_writes_only_into_the_scratch_folder(tmp_path, monkeypatch, folder):
    from advlib.io import atomic_write_bytes

    repo = _repository(tmp_path / "a repo")
    published = tree_digest(repo / "figures", repo / "report") | tree_digest(repo / "build" / "run")
    monkeypatch.chdir(repo / folder)
    data, artifacts, figures, seeds = scratch.run_dirs("../data", "../artifacts", "../figures",
                                                        "../figures/seed_study")
    assert (data, artifacts, figures, seeds) == ("../build/scratch/data", "../build/scratch/artifacts",
                                                 "../build/scratch/figures", "../build/scratch/figures/seed_study")
    assert Path(data).resolve() == (repo / "data").resolve()
    assert (Path(artifacts) / "model.pt").read_bytes() == b"the run's model"  # make report's model
    assert (Path(artifacts) / "cache").resolve() == (repo / "build" / "run" / "artifacts" / "cache").resolve()
    assert json.loads((Path(figures) / "metrics.json").read_text()) == {"published": 1}
    assert (Path(seeds) / "seed_0.json").is_file()
    # what a hand run writes: figures, metrics.json, and a model trained with other parameters (written as
    # checkpoints are: a new file renamed over the path)
    atomic_write_bytes(Path(figures) / "metrics.json", b'{"hand run": 1}')
    atomic_write_bytes(Path(figures) / "graph1_accuracy_bar_chart.png", b"png")
    atomic_write_bytes(Path(artifacts) / "model.pt", b"a hand-trained model")
    assert tree_digest(repo / "figures", repo / "report") | tree_digest(repo / "build" / "run") == published
    # the next hand run keeps them ...
    assert scratch.run_dirs("../artifacts", "../figures") == (artifacts, figures)
    assert (Path(figures) / "metrics.json").read_text() == '{"hand run": 1}'
    assert (Path(artifacts) / "model.pt").read_bytes() == b"a hand-trained model"
    # ... until make report publishes newer ones
    later = (Path(figures) / "metrics.json").stat().st_mtime + 10
    for path in (repo / "figures" / "metrics.json", repo / "build" / "run" / "artifacts" / "model.pt"):
        path.write_bytes(path.read_bytes())
        os.utime(path, (later, later))
    scratch.run_dirs("../artifacts", "../figures")
    assert (Path(figures) / "metrics.json").read_text() == '{"published": 1}'
    assert (Path(artifacts) / "model.pt").read_bytes() == b"the run's model"
    # an absolute path elsewhere stays as it is
    assert scratch.run_dirs(str(tmp_path), "../figures") == (str(tmp_path), figures)


def test_make_lab_opens_a_copy_of_the_narrative_in_the_scratch_folder(tmp_path, monkeypatch, capsys):
    repo = _repository(tmp_path / "repo")
    monkeypatch.chdir(repo)
    assert pipeline.main(["scratch", "report/06_report.ipynb"]) == 0
    assert "1 executed notebook(s) in build/scratch/report/" in capsys.readouterr().out
    copy = repo / "build" / "scratch" / "report" / "06_report.ipynb"
    assert copy.read_text() == "published notebook" and not copy.is_symlink()
    assert (repo / "build" / "scratch" / "artifacts" / "model.pt").is_symlink()
    makefile = (ROOT / "Makefile").read_text()
    lab = makefile[makefile.index("\nlab:"):].split("\n\n")[0]
    assert "study.workflow scratch" in lab and "jupyter\" lab build/scratch/report/06_report.ipynb" in lab, lab


@pytest.mark.parametrize("stage", pipeline.STAGES)
def test_every_notebook_run_by_hand_takes_its_folders_in_the_scratch_folder(stage, tmp_path, monkeypatch):
    """The parameters cell of each source notebook, run in the repository's notebooks/: every folder it declares
    lies in build/scratch/."""
    repo = _repository(tmp_path / "repo")
    monkeypatch.chdir(repo / "notebooks")
    cell = next(c for c in nbformat.read(ROOT / "notebooks" / f"{stage}.ipynb", as_version=4).cells
                if "parameters" in c.metadata.get("tags", []))
    namespace = {}
    exec(compile(cell.source, f"{stage} parameters", "exec"), namespace)
    folders = {k: v for k, v in namespace.items() if k.endswith("_dir")}
    assert folders and set(folders) == {k for k in pipeline.declared_parameters(ROOT / "notebooks" / f"{stage}.ipynb")
                                        if k.endswith("_dir")}
    outside = {k: v for k, v in folders.items() if not v.startswith("../build/scratch/")}
    assert not outside, f"{stage} run by hand would use {outside} (outside build/scratch/)"


# ---------------------------------------------------------------------------------------------------------------
# Overrides are checked before anything runs


def test_a_misspelled_override_is_rejected_with_the_names_that_exist(repo_copy):
    done = run_make(repo_copy, "report", "CONFIG=epoch=1", check=False)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "unknown parameter(s) ['epoch']" in out and "epochs" in out
    assert "rule model" not in out


def test_a_focus_eps_off_the_grid_is_refused_up_front(repo_copy):
    done = run_make(repo_copy, "report", "CONFIG=eps_grid=[0,0.02,0.04,0.08,0.16,0.32]", check=False)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "focus_eps = 0.15" in out and "not on eps_grid" in out
    assert "rule model" not in out


def test_resolve_config_gives_each_stage_its_declared_parameters():
    settings, params = pipeline.resolve_config({"epochs": 1, "eps_grid": [0, 0.1], "focus_eps": 0.1, "seeds": "0-2"})
    assert settings["seeds"] == "0-2"
    assert params["01_train"]["epochs"] == 1 and params["05_defense"]["epochs"] == 1
    assert "epochs" not in params["02_sweep"]
    assert params["02_sweep"]["eps_grid"] == [0, 0.1] and params["03_confidence"]["focus_eps"] == 0.1
    with pytest.raises(pipeline.ConfigError, match="unknown parameter"):
        pipeline.resolve_config({"eps": 0.1})


@pytest.mark.parametrize("key", ["ablation_checklist", "ablation_whole"])
def test_resolve_config_refuses_capacity_runs_outside_the_grid(key):
    grid = {"a": {"seeds": [0, 1]}, "b": {}}
    none = {"ablation": grid, "ablation_checklist": [], "ablation_whole": []}
    settings, params = pipeline.resolve_config({**none, key: ["a_s1", "b_s0"]})
    assert params["08_robustness"][key] == ["a_s1", "b_s0"]
    for bad in (["a_s2"], ["c_s0"], ["b"]):  # a seed the grid does not train, a configuration, no seed
        with pytest.raises(pipeline.ConfigError, match=f"{key} names \\{bad!r}\\, which the ablation grid does not"):
            pipeline.resolve_config({**none, key: bad})


@pytest.mark.parametrize("text, seeds", [("0-9", list(range(10))), ("0,3,5", [0, 3, 5]), (7, [7]),
                                         ("2-3,8", [2, 3, 8]), ([1, 2], [1, 2])])
def test_parse_seeds(text, seeds):
    assert pipeline.parse_seeds(text) == seeds


@pytest.mark.parametrize("bad", ["a-b", "", "3-"])
def test_parse_seeds_rejects_nonsense(bad):
    with pytest.raises(pipeline.ConfigError):
        pipeline.parse_seeds(bad)


# the parameters that study.models's config builders read from a stage's recorded parameters
CONFIG_READS = {"standard_config": {"seed", "device", "epochs", "batch_size", "lr"},
                "robust_config": {"seed", "device", "epochs", "batch_size", "lr", "adv_mode", "adv_eps"}}


def workflow_reads() -> set[str]:
    """The parameters the Snakefile's own jobs read: ROBUST["name"] and the names in its *_KEYS lists."""
    text = (ROOT / "Snakefile").read_text()
    names = set(re.findall(r'ROBUST\["(\w+)"\]', text))
    for keys in re.findall(r"^\w+_KEYS = (?:\w+ \+ )?\[(.*?)\]", text, flags=re.M):
        names |= set(re.findall(r'"(\w+)"', keys))
    return names


def test_every_declared_parameter_is_used():
    """A parameter a stage declares but never reads would silently ignore an override (and is not recorded as if
    it mattered). The robustness evaluation's settings are read by the workflow's jobs (Snakefile)."""
    reads = workflow_reads()
    assert {"ablation", "ablation_samples", "aa_grid_samples", "seed_aa_samples", "sanity_eps"} <= reads, reads
    for stage, params in pipeline.stage_parameters().items():
        nb = nbformat.read(ROOT / "notebooks" / f"{stage}.ipynb", as_version=4)
        body = [c for c in nb.cells if c.cell_type == "code" and "parameters" not in c.metadata.get("tags", [])]
        nodes = [n for c in body for n in ast.walk(ast.parse(c.source))]
        used = {n.id for n in nodes if isinstance(n, ast.Name)}
        for call in (n for n in nodes if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)):
            used |= CONFIG_READS.get(call.func.id, set())
        unused = [p for p in params if p not in used and p not in reads]
        assert not unused, f"{stage} declares {unused} but never uses them"


# ---------------------------------------------------------------------------------------------------------------
# The DAG, incremental re-runs, the seed fan-out, the cluster


def test_the_two_models_train_independently(repo_copy):
    dot = snakemake(repo_copy, "--dag", "--forceall", "report", "--config", *SMALL.split())
    labels = dict(re.findall(r"\t(\d+)\[label = \"(\w+)", dot))
    edges = re.findall(r"\t(\d+) -> (\d+)", dot)
    model = [i for i, rule in labels.items() if rule == "model"]
    robust = [i for i, rule in labels.items() if rule == "robust_model"]
    assert len(model) == 1 and len(robust) == 1
    assert (model[0], robust[0]) not in edges and (robust[0], model[0]) not in edges
    assert {model[0], robust[0]} <= {a for a, _ in edges}  # both feed later jobs
    # 05_defense's PGD curves: two jobs per model; the standard model's do not wait for the robust model
    curves = [i for i, rule in labels.items() if rule == "pgd_curve"]
    assert len(curves) == 4
    standard_curves = [c for c in curves if (robust[0], c) not in edges]
    assert len(standard_curves) == 2 and all((model[0], c) in edges for c in standard_curves)


def test_rerun_is_incremental(repo_copy):
    """A job re-runs when the content of one of its inputs changes (Snakemake compares checksums, so a mere touch
    re-runs nothing); a model only when its own training inputs change."""
    config = ["--config", *SMALL.split()]
    assert planned_jobs(repo_copy, "report", *config) == {}, "a finished run has nothing left to do"
    plot = repo_copy / "study" / "figures.py"  # Figure 8's axis label
    style = repo_copy / "advlib" / "viz.py"  # the shared figure style
    narrative = repo_copy / "notebooks" / "06_report.ipynb"
    stage = repo_copy / "study" / "jobs.py"
    attacks, new_module = repo_copy / "advlib" / "attacks.py", repo_copy / "advlib" / "new_step.py"
    plot_text, style_text, attacks_text = plot.read_text(), style.read_text(), attacks.read_text()
    narrative_text, stage_text = narrative.read_text(), stage.read_text()
    try:
        plot.write_text(plot_text + "\n# a comment in the plotting code\n")  # nothing a notebook runs
        assert planned_jobs(repo_copy, "report", *config) == {}
        # one figure's function: its stage (03) and the narrative that shows the figure
        plot.write_text(plot_text.replace('"max-softmax confidence (%)"', '"max-softmax confidence, %"', 1))
        assert planned_jobs(repo_copy, "report", *config) == {"notebook": 2, "html": 1, "publish": 1, "report": 1}
        # the shared style: every stage, and still no model or PGD curve
        plot.write_text(plot_text)
        style.write_text(style_text.replace('"font.size": 11,', '"font.size": 12,', 1))
        jobs = planned_jobs(repo_copy, "report", *config)
        assert jobs == {"notebook": len(pipeline.STAGES), "html": 1, "publish": 1, "report": 1}, jobs
        style.write_text(style_text)
        # the attack stages' prologue and the PGD job: the attack jobs re-run, the models do not retrain
        stage.write_text(stage_text + "\n\ndef a_new_helper():\n    return None\n")
        jobs = planned_jobs(repo_copy, "report", *config)
        assert "model" not in jobs and "robust_model" not in jobs and jobs.get("pgd_curve") == 4, jobs
        stage.write_text(stage_text)
        # a new module that the attacks import: every job reaching the attacks re-runs, with no list edited
        new_module.write_text("STEP = 1\n")
        assert planned_jobs(repo_copy, "report", *config) == {}, "a module nothing imports is no input"
        attacks.write_text(attacks_text.replace("import torch\n", "import torch\n\nimport advlib.new_step  # noqa\n", 1))
        jobs = planned_jobs(repo_copy, "report", *config)
        assert jobs.get("model") == 1 and jobs.get("robust_model") == 1 and jobs.get("pgd_curve") == 4, jobs
        assert jobs.get("notebook", 0) >= 5, jobs  # at least the five stages that attack
        attacks.write_text(attacks_text)
        new_module.unlink()
        narrative.write_text(narrative_text.replace("## Objective", "## Objective (edited)"))
        assert planned_jobs(repo_copy, "report", *config) == {"notebook": 1, "html": 1, "publish": 1, "report": 1}
    finally:
        plot.write_text(plot_text)
        style.write_text(style_text)
        attacks.write_text(attacks_text)
        new_module.unlink(missing_ok=True)
        narrative.write_text(narrative_text)
        stage.write_text(stage_text)
    assert planned_jobs(repo_copy, "report", *config) == {}, "restoring the content restores the state"
    forced = planned_jobs(repo_copy, "report", "--forceall", *config)
    assert forced["model"] == 1 and forced["robust_model"] == 1


def test_figure_digest_follows_the_functions_a_notebook_reaches(tmp_path):
    """A stage depends on the figure functions it names, those they call, and everything in a figure module that is
    not a function; changing one figure's function changes the digest of the stages that draw it, and only theirs."""
    from study import sources

    for name in ("advlib", "study", "notebooks"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    figure_files = sorted({f for s in pipeline.STAGES
                           for f in sources.notebook_code(tmp_path / "notebooks" / f"{s}.ipynb", tmp_path)[1]})
    texts = {f: (tmp_path / f).read_text() for f in figure_files}

    def digests() -> dict[str, str]:
        return {s: sources.figure_digest(tmp_path / "notebooks" / f"{s}.ipynb", tmp_path) for s in pipeline.STAGES}

    before = digests()

    def changed(old: str, new: str) -> set[str]:
        """The stages whose digest changes when `old` becomes `new` in the figure module holding it."""
        (where,) = [f for f, t in texts.items() if old in t]
        (tmp_path / where).write_text(texts[where].replace(old, new, 1))
        after = digests()
        (tmp_path / where).write_text(texts[where])
        return {s for s in pipeline.STAGES if after[s] != before[s]}

    for f, t in texts.items():  # a comment at the end of a figure module changes nothing
        (tmp_path / f).write_text(t + "\n# a comment\n")
        assert digests() == before, f
        (tmp_path / f).write_text(t)
    assert changed('"max-softmax confidence (%)"', '"confidence (%)"') == {"03_confidence"}
    assert changed('"Figure 3: ', '"Fig. 3: ') == {"02_sweep"}
    # a helper called by a figure's function: the stages drawing such figures
    helper = changed("def log_y(ax) -> None:\n", "def log_y(ax) -> None:\n    pass\n")
    assert "03_confidence" in helper and "07_seed_study" not in helper
    # the explorer's picture is drawn through advlib.explorer: the stages that show the slider
    assert changed("def plot_explorer(", "def plot_explorer(  # edited\n") == {"04_visual_grid", "06_report"}
    # the shared style: every stage that draws
    assert changed('"font.size": 11,', '"font.size": 12,') == set(pipeline.STAGES)


def test_seed_study_fans_out_one_training_per_seed(repo_copy):
    jobs = planned_jobs(repo_copy, "seed_study", "--config", "seeds=0-3", *SMALL.split())
    # one training and one evaluation job per seed; no notebook runs (the seed study reads numbers, not figures)
    assert jobs["model"] == 4 and jobs["seed_result"] == 4 and jobs["publish_seeds"] == 1, jobs
    assert "notebook" not in jobs, jobs
    assert jobs["robust_model"] == 4 and jobs["seed_robust"] == 4 and jobs["publish_robust_seeds"] == 1, jobs


def test_robustness_evaluation_fans_out_in_autoattack_batches(tmp_path):
    """make robust: AutoAttack in jobs of 250 images (AutoAttack's batch) per model and eps, one sanity-check job,
    one publish; the capacity study (its own target, which make robust runs too): one training and one evaluation
    job per (configuration, seed) of the ablation grid, one transfer source, one checklist per entry of
    ablation_checklist, AutoAttack on further slices of the test set for each run of ablation_whole, one publish, and no AutoAttack part of the robustness evaluation. Dry runs only, in a fresh
    copy of the repository (nothing trained there: the plans hold the training jobs too)."""
    repo = copy_repo(tmp_path / "a copy")
    grid = {"a": {"seeds": [0, 1, 2]}, "b": {"arch": "resnet"}, "c": {"width": 2, "seeds": [4, 5]}}
    config = ("--config", "aa_samples=500", "aa_eps=[0.3]", "aa_grid_eps=[0.1]", "aa_grid_samples=100",
              f"ablation={json.dumps(grid)}", "ablation_checklist=[a_s2,c_s4]", "ablation_samples=100",
              "ablation_whole=[c_s5]", "released_parts=4")
    # the grid reaches the stage's parameters (Snakemake's own parsing of --config, then the workflow's reader);
    # its leaves arrive as YAML strings, which the job counts do not depend on
    from snakemake.cli import parse_config

    ablation = pipeline.resolve_config(parse_config(config[1:]))[1]["08_robustness"]["ablation"]
    assert list(ablation) == ["a", "b", "c"] and [len(e.get("seeds", [0])) for e in ablation.values()] == [3, 1, 2]
    jobs = planned_jobs(repo, "robustness", *config)
    # standard and robust: eps 0.3 on 500 images = 2 parts each, eps 0.1 on 100 = 1 part each
    assert jobs["autoattack_part"] == 2 * 2 + 2 * 1 and jobs["autoattack_merge"] == 2 * 2, jobs
    assert jobs["sanity_checks"] == 1 and jobs["publish_robustness"] == 1, jobs
    assert not {rule for rule in jobs if rule.startswith("ablation") or "capacity" in rule}, jobs
    jobs = planned_jobs(repo, "capacity", *config)
    assert jobs["ablation_model"] == jobs["ablation_eval"] == 3 + 1 + 2, jobs
    assert jobs["ablation_source"] == 1 and jobs["ablation_checklist"] == 2 and jobs["publish_capacity"] == 1, jobs
    assert jobs["ablation_part"] == 4 - 1, jobs  # c_s5 on 3 further slices of 100 test images
    assert not {"autoattack_part", "sanity_checks", "released_part", "publish_robustness"} & set(jobs), jobs


def test_a_failed_stage_publishes_nothing(repo_copy):
    before = tree_digest(repo_copy / "report", repo_copy / "figures") | tree_digest(repo_copy / "README.md")
    # target class 10 is refused by the targeted FGSM inside 05_defense, after the other stages have run
    done = run_make(repo_copy, "report", f"CONFIG={SMALL} target_class=10", check=False)
    assert done.returncode != 0
    assert "05_defense" in done.stdout + done.stderr
    assert (repo_copy / "build" / "run" / "report" / "05_defense.failed.ipynb").is_file()
    after = tree_digest(repo_copy / "report", repo_copy / "figures") | tree_digest(repo_copy / "README.md")
    assert after == before, "a failed run changed the committed report"


def test_make_seeds_runs_and_publishes_every_seed(repo_copy):
    # AutoAttack's APGD-CE -> APGD-T on 10 images per seed, not 100: the fan-out is under test here, not the attack
    run_make(repo_copy, "seeds", "SEEDS=0-1", f"CONFIG={SMALL} seed_aa_samples=10")
    published = sorted(p.name for p in (repo_copy / "figures" / "seed_study").glob("seed_*.json"))
    assert published == ["seed_0.json", "seed_1.json"]
    metrics = load_metrics(repo_copy / "figures" / "metrics.json")
    assert metrics["seed_study"]["seeds"] == [0, 1]
    # seed 0 of the study is the same run as the report's seed 0: same configuration, same numbers
    seed0 = load_metrics(repo_copy / "figures" / "seed_study" / "seed_0.json")
    assert seed0["training"]["test_accuracy"] == metrics["training"]["test_accuracy"]
    assert seed0["sweep"]["rows"] == metrics["sweep"]["rows"]
    # a seed run computes what the seed study reads (study.jobs.seed_record), not the stages' figures
    assert "full_test_set" not in seed0["sweep"]
    assert not (repo_copy / "build" / "seeds" / "seed_0" / "report").exists()


def test_seed_job_asks_for_the_training_parameters(capsys, tmp_path):
    from study.jobs import main

    with pytest.raises(SystemExit):
        main(["seed", "--out", str(tmp_path / "seed.json"), "--params", "{}", "--artifact-dir", str(tmp_path)])
    assert "seed needs --train-params" in capsys.readouterr().err
    assert not (tmp_path / "seed.json").exists()
    with pytest.raises(SystemExit):  # and a PGD curve names the model it attacks, as before the seed job shared main
        main(["pgd", "--out", str(tmp_path / "pgd.json"), "--params", "{}", "--artifact-dir", str(tmp_path)])
    assert "pgd needs --model" in capsys.readouterr().err


def test_cluster_profile_dry_run_shows_the_jobs_it_would_submit(repo_copy):
    done = run_make(repo_copy, "dry-run-cluster")
    out = done.stdout + done.stderr
    assert "slurm_partition" in out and "rule model" in out and "rule robust_model" in out


# ---------------------------------------------------------------------------------------------------------------
# The committed notebooks


def committed_notebooks() -> list[Path]:
    return sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "report").rglob("*.ipynb"))


@pytest.mark.parametrize("path", committed_notebooks(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_committed_notebook_contains_an_absolute_path(path):
    found = MACHINE_PATH.search(path.read_text())
    assert not found, f"{path.name} contains the machine path {found.group(0)!r}"


def test_the_absolute_path_check_catches_papermill_metadata():
    assert MACHINE_PATH.search('"input_path": "/work/main/notebooks/01_train.ipynb"')
    assert MACHINE_PATH.search('seed_study_dir = "/home/me/project/figures/seed_study"')
    assert not MACHINE_PATH.search('data_dir = "../data"  # 1/2 of /x')


@pytest.mark.parametrize("path", sorted((ROOT / "notebooks").glob("*.ipynb")), ids=lambda p: p.name)
def test_source_notebooks_only_call(path):
    """Logic lives in advlib: no notebook defines a function, a lambda or a class; sources carry no outputs."""
    nb = nbformat.read(path, as_version=4)
    for i, cell in enumerate(c for c in nb.cells if c.cell_type == "code"):
        tree = ast.parse(cell.source)
        defs = [type(n).__name__ for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.Lambda, ast.ClassDef))]
        assert not defs, f"{path.name} code cell {i} defines {defs}"
        assert not cell.get("outputs"), f"{path.name} code cell {i} has outputs: sources are kept clean"


def test_the_stage_prologue_exists_once():
    """Attack stages get their model and images from study.jobs.attack_set, never by hand."""
    for stage in ("02_sweep", "03_confidence", "04_visual_grid", "05_defense"):
        source = "\n".join(c.source for c in nbformat.read(ROOT / "notebooks" / f"{stage}.ipynb", as_version=4).cells)
        assert "attack_set(" in source and "select_correct" not in source and "load_checkpoint" not in source


def test_nbval_compares_only_cells_marked_deterministic():
    """nbval runs in --nbval-lax mode: only cells tagged nbval-check-output are compared. Those cells must not
    print a number derived from training (a float, a rate), which would differ on another machine."""
    from nbval.plugin import comment_markers, metadata_tags

    assert "nbval-check-output" in metadata_tags
    makefile = (ROOT / "Makefile").read_text()
    assert "--nbval-lax" in makefile
    for path in sorted((ROOT / "report").glob("*.ipynb")):
        for i, cell in enumerate(nbformat.read(path, as_version=4).cells):
            if "nbval-check-output" not in cell.metadata.get("tags", []):
                continue
            text = "".join(o.get("text", "") + o.get("data", {}).get("text/plain", "") for o in cell.get("outputs", []))
            # configuration values (learning rate, eps, the eps ramp's 0.0 epochs) are the same on every machine
            floats = [f for f in re.findall(r"\d+\.\d+", text) if f not in ("0.01", "0.3", "0.15", "0.1", "0.0")]
            assert not floats, f"{path.name} cell {i} is compared by nbval but prints {floats}"


def test_readme_tables_are_generated_from_the_committed_metrics():
    metrics_path = ROOT / "figures" / "metrics.json"
    if not metrics_path.is_file():
        pytest.skip("no committed figures/metrics.json yet (run make report)")
    text = (ROOT / "README.md").read_text()
    expected = readme.render(text, load_metrics(metrics_path), readme.bench_markdown(ROOT), readme.other_datasets(ROOT))
    assert text == expected, "README's generated blocks are stale: run `python -m study.readme`"


def test_readme_takes_only_the_targets_table_from_the_benchmarks():
    md = ("# Benchmarks (full run)\n\nMachine: 2 cores.\n\n## Targets\n\n| target | met |\n|---|---|\n| sweep | yes |\n\n"
          "## Training\n\n| pipeline | images/s |\n|---|---|\n| advlib | 1 |\n")
    block = readme.bench_block(md)
    assert block.startswith("| target | met |\n|---|---|\n| sweep | yes |\n\nMachine: 2 cores.")
    assert "images/s" not in block and "benchmarks/results.md" in block


@pytest.mark.parametrize("text, value", [("1", 1), ("0.5", 0.5), ("None", None), ("null", None), ("true", True),
                                         ("[0, 0.1]", [0, 0.1]), (["0.0", "0.05"], [0.0, 0.05]),
                                         ("fgsm_rs", "fgsm_rs"), ("0-9", "0-9"), ("false", False),
                                         # a dict from --config arrives with string values (the capacity study's grid)
                                         ({"r": {"batchnorm": "false", "width": "2", "seeds": ["0", "1"],
                                                 "arch": "resnet"}},
                                          {"r": {"batchnorm": False, "width": 2, "seeds": [0, 1], "arch": "resnet"}}),
                                         ('{"a": {"ramp_epochs": 4}}', {"a": {"ramp_epochs": 4}})])
def test_command_line_values_become_python(text, value):
    """Snakemake's --config hands values over as strings; the stages get numbers, lists and None."""
    assert pipeline.literal(text) == value


def test_publish_files_replaces_the_earlier_study_as_a_whole(tmp_path):
    folder = tmp_path / "seed_study"
    folder.mkdir()
    for k in (0, 1, 2):
        (folder / f"seed_{k}.json").write_text("old")
    new = []
    for k in (0, 5):
        (tmp_path / f"seed_{k}.json").write_text(f"new {k}")
        new.append(tmp_path / f"seed_{k}.json")
    pipeline.publish_files(new, folder)
    assert sorted(p.name for p in folder.iterdir()) == ["seed_0.json", "seed_5.json"]
    assert (folder / "seed_5.json").read_text() == "new 5"
