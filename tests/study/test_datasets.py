"""The study on another data set than MNIST (the parameter `dataset`), without training anything: the workflow's
configuration gives every stage the data set and its own run folder, publishing another data set writes only into
report/<dataset>/ and figures/<dataset>/ (and the README) and never touches MNIST's published files, a hand run of
another data set's notebook works in that data set's scratch folder, a model trained on one data set is refused by
a stage of another, and the README's table gains one column for the other data set (and no "original report" one
for a run that is not MNIST's)."""
from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from study import readme, scratch
from study import workflow as pipeline
from study.results import load_metrics
from study.tables import comparison_table, dataset_of, dataset_sentence

ROOT = Path(__file__).resolve().parents[2]
COMMITTED_METRICS = ROOT / "figures" / "metrics.json"
FM = "fashion_mnist"
FM_TITLE = "Fashion-MNIST"
NO_ROBUSTNESS = [s for s in pipeline.STAGES if s != "08_robustness"]  # a data set `make robust` has not evaluated


def digest(root: Path) -> dict[str, str]:
    """{path relative to root: SHA-256} of every file under root."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def mnist_metrics() -> dict:
    if not COMMITTED_METRICS.is_file():
        pytest.skip("no committed figures/metrics.json yet (run make report)")
    return load_metrics(COMMITTED_METRICS)


def as_dataset(metrics: dict, dataset: str) -> dict:
    """A deep copy of metrics that says it was computed on dataset."""
    other = copy.deepcopy(metrics)
    other["training"]["parameters"]["dataset"] = dataset
    return other


# ---------------------------------------------------------------------------------------------------------------
# The configuration


def test_fashion_mnist_has_its_own_run_folder_and_every_stage_gets_the_data_set():
    settings, params = pipeline.resolve_config({"dataset": FM})
    assert settings["run_dir"] == "build/fashion_mnist/run"
    assert set(params) == set(pipeline.STAGES)
    assert {s: p["dataset"] for s, p in params.items()} == {s: FM for s in pipeline.STAGES}
    # MNIST, the default, keeps the repository's run folder; a run folder given explicitly wins
    settings, params = pipeline.resolve_config({})
    assert settings["run_dir"] == "build/run" and {p["dataset"] for p in params.values()} == {"mnist"}
    settings, _ = pipeline.resolve_config({"dataset": FM, "run_dir": "elsewhere/run"})
    assert settings["run_dir"] == "elsewhere/run"
    assert pipeline.subfolder("mnist") == "" and pipeline.subfolder(FM) == "fashion_mnist/"


def test_an_unknown_data_set_is_refused_with_the_known_names():
    with pytest.raises(pipeline.ConfigError) as err:
        pipeline.resolve_config({"dataset": "cifar10"})
    message = str(err.value)
    assert "'cifar10'" in message and "'mnist'" in message and "'fashion_mnist'" in message
    assert "--config dataset=" in message


def test_every_stage_must_declare_the_data_set():
    declared = pipeline.stage_parameters()
    pipeline.check_dataset_parameter(FM, declared)  # the repository's notebooks all declare it
    without = {**declared, "02_sweep": {k: v for k, v in declared["02_sweep"].items() if k != "dataset"}}
    with pytest.raises(pipeline.ConfigError, match=r"\['02_sweep'\] do not declare the parameter dataset"):
        pipeline.check_dataset_parameter(FM, without)


# ---------------------------------------------------------------------------------------------------------------
# Publishing another data set: report/<dataset>/, figures/<dataset>/ and the README only

README = "# The study\n\n<!-- results:start -->\nold table\n<!-- results:end -->\n\nThe end.\n"


def published_repository(root: Path) -> Path:
    """A repository after MNIST's `make report`: MNIST's executed notebooks and page in report/, its figures,
    seed study and metrics.json (the committed ones) in figures/, and a README with the results block."""
    (root / "report").mkdir(parents=True)
    for stage in pipeline.STAGES:
        (root / "report" / f"{stage}.ipynb").write_text(f"MNIST's {stage}")
    (root / "report" / "index.html").write_text("MNIST's page")
    (root / "figures" / "seed_study").mkdir(parents=True)
    (root / "figures" / "metrics.json").write_bytes(COMMITTED_METRICS.read_bytes())
    (root / "figures" / "graph1_accuracy_bar_chart.png").write_bytes(b"MNIST's figure 1")
    (root / "figures" / "seed_study" / "seed_0.json").write_text('{"mnist seed": 0}')
    (root / "README.md").write_text(README)
    return root


def finished_run(run: Path, dataset: str, stages=pipeline.STAGES, metrics: dict | None = None) -> Path:
    """A run folder as the workflow leaves it after every job of `stages` succeeded on `dataset`, with the other data
    set's published seed study that MNIST's 07_seed_study reads (figures/<other>/seed_study/, an input)."""
    (run / "report").mkdir(parents=True)
    for stage in stages:
        (run / "report" / f"{stage}.ipynb").write_text(f"{dataset}'s {stage}")
    (run / "report" / "index.html").write_text(f"{dataset}'s page")
    (run / "figures" / "seed_study").mkdir(parents=True)
    (run / "figures" / "metrics.json").write_text(json.dumps(metrics or as_dataset(mnist_metrics(), dataset)))
    (run / "figures" / "graph1_accuracy_bar_chart.png").write_bytes(f"{dataset}'s figure 1".encode())
    (run / "figures" / "seed_study" / "seed_0.json").write_text(json.dumps({f"{dataset} seed": 0}))
    other = FM if dataset == "mnist" else "mnist"
    (run / "figures" / other / "seed_study").mkdir(parents=True)
    (run / "figures" / other / "seed_study" / "seed_0.json").write_text(json.dumps({f"{other} seed (input)": 0}))
    return run


def test_publishing_fashion_mnist_leaves_every_mnist_file_as_it_was(tmp_path):
    root = published_repository(tmp_path / "repo")
    run = finished_run(tmp_path / "repo" / "build" / "fashion_mnist" / "run", FM, NO_ROBUSTNESS)
    before = digest(root)
    published = pipeline.publish(run, root=root, dataset=FM, stages=NO_ROBUSTNESS)
    after = digest(root)
    changed = {p for p in set(before) | set(after) if before.get(p) != after.get(p)}
    outside = {p for p in changed if not p.startswith(("report/fashion_mnist/", "figures/fashion_mnist/",
                                                       "build/"))}
    assert outside == {"README.md"}, f"publishing Fashion-MNIST changed {sorted(outside)}"
    mnist = {p: h for p, h in before.items() if not p.startswith("build/")}
    assert {p: after[p] for p in mnist if p != "README.md"} == {p: h for p, h in mnist.items() if p != "README.md"}
    # the run's results, under the data set's folders
    report, figures = root / "report" / FM, root / "figures" / FM
    assert sorted(p.name for p in report.iterdir()) == sorted([f"{s}.ipynb" for s in NO_ROBUSTNESS] + ["index.html"])
    assert (report / "01_train.ipynb").read_text() == "fashion_mnist's 01_train"
    assert dataset_of(json.loads((figures / "metrics.json").read_text())) == FM
    assert (figures / "seed_study" / "seed_0.json").read_text() == '{"fashion_mnist seed": 0}'
    assert (figures / "graph1_accuracy_bar_chart.png").read_bytes() == b"fashion_mnist's figure 1"
    # MNIST's seed study that the run held as an input is no result of it: published nowhere
    assert not (figures / "mnist").exists() and not (root / "figures" / "mnist").exists()
    assert all(p.is_relative_to(report) or p.is_relative_to(figures) or p == root / "README.md"
               for p in published), published
    # the README's table: MNIST's numbers, and a column for Fashion-MNIST
    text = (root / "README.md").read_text()
    assert "old table" not in text and text.startswith("# The study\n") and text.endswith("The end.\n")
    header = next(line for line in text.splitlines() if line.startswith("| quantity"))
    assert "original report" in header and f"{FM_TITLE}: standard model" in header
    assert f"| {mnist_metrics()['training']['test_accuracy']:.2f}% |" in text


def test_publishing_mnist_leaves_the_other_data_sets_input_behind(tmp_path):
    """MNIST's 07_seed_study reads Fashion-MNIST's published seeds (run/figures/fashion_mnist/seed_study/): an input,
    which publishing never copies into figures/fashion_mnist/ (it would overwrite Fashion-MNIST's results)."""
    root = published_repository(tmp_path / "repo")
    run = finished_run(tmp_path / "run", "mnist", metrics=mnist_metrics())
    published = pipeline.publish(run, root=root)
    assert not (root / "figures" / FM).exists(), "an MNIST publish copied the run's figures/fashion_mnist/ input"
    assert not any("fashion_mnist" in p.parts for p in published), published
    assert (root / "report" / "06_report.ipynb").read_text() == "mnist's 06_report"
    assert (root / "figures" / "seed_study" / "seed_0.json").read_text() == '{"mnist seed": 0}'
    # with Fashion-MNIST published, an MNIST publish leaves its files alone too, and keeps its README column
    fm_run = finished_run(tmp_path / "fm run", FM, NO_ROBUSTNESS)
    pipeline.publish(fm_run, root=root, dataset=FM, stages=NO_ROBUSTNESS)
    fm_files = digest(root / "report" / FM) | digest(root / "figures" / FM)
    assert "metrics.json" in fm_files and "06_report.ipynb" in fm_files
    pipeline.publish(run, root=root)
    assert digest(root / "report" / FM) | digest(root / "figures" / FM) == fm_files
    assert f"{FM_TITLE}: standard model" in (root / "README.md").read_text()


def test_publish_takes_the_stages_the_run_holds(tmp_path):
    root = published_repository(tmp_path / "repo")
    before = digest(root)
    run = finished_run(tmp_path / "run", FM, NO_ROBUSTNESS)
    # by default every stage, 08_robustness included: this run is not finished
    with pytest.raises(FileNotFoundError, match=r"not a finished run .*08_robustness"):
        pipeline.publish(run, root=root, dataset=FM)
    # a run that lacks another stage is refused even when 08_robustness is not asked for
    (run / "report" / "02_sweep.ipynb").unlink()
    with pytest.raises(FileNotFoundError, match=r"not a finished run .*02_sweep"):
        pipeline.publish(run, root=root, dataset=FM, stages=NO_ROBUSTNESS)
    assert digest(root) == before, "a refused publish changed the repository"
    (run / "report" / "02_sweep.ipynb").write_text("fashion_mnist's 02_sweep")
    pipeline.publish(run, root=root, dataset=FM, stages=NO_ROBUSTNESS)
    assert not (root / "report" / FM / "08_robustness.ipynb").exists()
    assert (root / "report" / FM / "02_sweep.ipynb").is_file()


def test_publish_command_names_the_data_sets_folders(tmp_path, monkeypatch, capsys):
    root = published_repository(tmp_path / "repo")
    run = finished_run(root / "build" / "fashion_mnist" / "run", FM, NO_ROBUSTNESS)
    monkeypatch.chdir(root)
    with pytest.raises(SystemExit, match="unknown stages"):
        pipeline.main(["publish", "build/fashion_mnist/run", "--dataset", FM, "--stages", "01_train,09_extra"])
    assert not (root / "report" / FM).exists()
    assert pipeline.main(["publish", "build/fashion_mnist/run", "--dataset", FM,
                          "--stages", ",".join(NO_ROBUSTNESS)]) == 0
    assert "into report/fashion_mnist/, figures/fashion_mnist/ and README.md" in capsys.readouterr().out
    assert (root / "report" / FM / "06_report.ipynb").is_file() and run.is_dir()


# ---------------------------------------------------------------------------------------------------------------
# A hand run of another data set's notebook works in that data set's scratch folder


def fm_repository(root: Path) -> Path:
    """A checkout after MNIST's and Fashion-MNIST's `make report`: both published, both run folders' models."""
    (root / "notebooks").mkdir(parents=True)
    (root / "Snakefile").write_text("")
    (root / "data").mkdir()
    for sub, name in (("", "MNIST"), ("fashion_mnist/", FM_TITLE)):
        (root / "figures" / sub / "seed_study").mkdir(parents=True, exist_ok=True)
        (root / "figures" / sub / "metrics.json").write_text(json.dumps({"published": name}))
        (root / "figures" / sub / "seed_study" / "seed_0.json").write_text(json.dumps({"seed of": name}))
        (root / "report" / sub).mkdir(parents=True, exist_ok=True)
        (root / "report" / sub / "06_report.ipynb").write_text(f"{name}'s published notebook")
        (root / "build" / sub / "run" / "artifacts").mkdir(parents=True)
        (root / "build" / sub / "run" / "artifacts" / "model.pt").write_bytes(f"{name}'s model".encode())
    return root


@pytest.mark.parametrize("declared", ["mnist", FM])
def test_a_notebook_of_the_fashion_mnist_report_works_in_its_scratch_folder(tmp_path, monkeypatch, declared):
    """report/fashion_mnist/06_report.ipynb run by hand: its parameters cell declares the defaults ("../figures",
    and dataset = "mnist" before papermill's injected cell), yet it reads and writes Fashion-MNIST's scratch folder."""
    repo = fm_repository(tmp_path / "a repo")
    published = digest(repo / "figures") | digest(repo / "report")
    monkeypatch.chdir(repo / "report" / FM)
    data, artifacts, figures, seeds = scratch.run_dirs("../data", "../artifacts", "../figures",
                                                        "../figures/seed_study", dataset=declared)
    fm_scratch = "../../build/fashion_mnist/scratch"
    assert (data, artifacts, figures, seeds) == (f"{fm_scratch}/data", f"{fm_scratch}/artifacts",
                                                 f"{fm_scratch}/figures", f"{fm_scratch}/figures/seed_study")
    assert Path(data).resolve() == (repo / "data").resolve()
    assert (Path(artifacts) / "model.pt").read_bytes() == b"Fashion-MNIST's model"
    assert json.loads((Path(figures) / "metrics.json").read_text()) == {"published": FM_TITLE}
    assert json.loads((Path(seeds) / "seed_0.json").read_text()) == {"seed of": FM_TITLE}
    assert not (Path(figures) / FM).exists(), "the scratch folder copied figures/fashion_mnist/ into itself"
    assert not (repo / "build" / "scratch").exists(), "a Fashion-MNIST hand run made MNIST's scratch folder"
    (Path(figures) / "metrics.json").write_text('{"hand run": 1}')
    assert digest(repo / "figures") | digest(repo / "report") == published


def test_a_source_notebook_run_by_hand_takes_the_scratch_folder_of_its_data_set(tmp_path, monkeypatch):
    repo = fm_repository(tmp_path / "repo")
    for folder in ("notebooks", "report"):
        monkeypatch.chdir(repo / folder)
        assert scratch.run_dirs("../figures", dataset=FM) == ("../build/fashion_mnist/scratch/figures",)
        assert scratch.run_dirs("../figures") == ("../build/scratch/figures",)
    fm = json.loads((repo / "build" / "fashion_mnist" / "scratch" / "figures" / "metrics.json").read_text())
    mnist = json.loads((repo / "build" / "scratch" / "figures" / "metrics.json").read_text())
    assert fm == {"published": FM_TITLE} and mnist == {"published": "MNIST"}
    # Fashion-MNIST's scratch figures are a copy of figures/fashion_mnist/ alone, none of MNIST's files
    assert digest(repo / "build" / "fashion_mnist" / "scratch" / "figures") == digest(repo / "figures" / FM)


# ---------------------------------------------------------------------------------------------------------------
# A model trained on one data set is refused by a stage of another


@pytest.fixture
def fm_checkpoint(tmp_path) -> Path:
    """An untrained SmallResNet saved as 01_train saves a Fashion-MNIST model (metadata dataset)."""
    import torch

    from advlib.checkpoint import save_checkpoint
    from advlib.model import SmallResNet

    torch.manual_seed(0)
    return save_checkpoint(tmp_path / "artifacts" / "model.pt", SmallResNet(),
                           metadata={"seed": 0, "train_subset": 100, "dataset": FM})


def test_check_dataset_refuses_a_model_of_another_data_set(fm_checkpoint, tmp_path):
    from advlib.checkpoint import load_checkpoint, save_checkpoint
    from study.models import check_dataset, checkpoint_dataset

    ckpt = load_checkpoint(fm_checkpoint)
    assert checkpoint_dataset(ckpt) == FM
    check_dataset(ckpt, FM, fm_checkpoint)  # the right data set passes
    with pytest.raises(ValueError, match="--config dataset=mnist") as err:
        check_dataset(ckpt, "mnist", fm_checkpoint)
    assert "trained on Fashion-MNIST" in str(err.value) and str(fm_checkpoint) in str(err.value)
    # a checkpoint from before the parameter (no dataset in its metadata) is MNIST's
    old = save_checkpoint(tmp_path / "old.pt", ckpt.model, metadata={"seed": 0})
    old_ckpt = load_checkpoint(old)
    assert checkpoint_dataset(old_ckpt) == "mnist"
    check_dataset(old_ckpt, "mnist", old)
    with pytest.raises(ValueError, match="--config dataset=fashion_mnist"):
        check_dataset(old_ckpt, FM, old)


def test_attack_set_refuses_a_model_of_another_data_set_before_loading_data(fm_checkpoint, tmp_path):
    from study.jobs import attack_set

    # no data folder at all: the refusal comes first, naming the fix
    with pytest.raises(ValueError, match=r"trained on Fashion-MNIST.*--config dataset=mnist"):
        attack_set(fm_checkpoint.parent, tmp_path / "no data", n_samples=10, dataset="mnist")


# ---------------------------------------------------------------------------------------------------------------
# The README's comparison table


def rows_of(table: str) -> list[list[str]]:
    return [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()]


def test_comparison_table_gets_one_column_for_the_other_data_set():
    mnist = mnist_metrics()
    other = as_dataset(mnist, FM)
    plain, both = rows_of(comparison_table(mnist)), rows_of(comparison_table(mnist, other, FM_TITLE))
    assert both[0][:-1] == plain[0], "the other data set's column is not the last one added"
    assert both[0][-1].startswith(f"{FM_TITLE}: standard model") and "original report" in both[0]
    assert len(both) == len(plain) and all(len(r) == len(both[0]) for r in both)
    assert [r[:-1] for r in both[2:]] == plain[2:], "the other column changed MNIST's cells"
    # the same numbers (a copy): the clean accuracy row carries them in the other column too
    clean = both[2]
    assert clean[0].startswith("clean test accuracy") and f"{mnist['training']['test_accuracy']:.2f}%" in clean[-1]
    assert sum(r[-1] != "—" for r in both[2:]) >= 3


def test_a_fashion_mnist_table_has_no_original_report_column():
    fm = as_dataset(mnist_metrics(), FM)
    assert dataset_of(fm) == FM and dataset_of(mnist_metrics()) == "mnist"
    table = rows_of(comparison_table(fm))
    assert "original report" not in table[0]
    assert table[0][0] == "quantity" and "this run [95% CI]" in table[0]
    assert all(len(r) == len(table[0]) for r in table)
    mnist_table = rows_of(comparison_table(mnist_metrics()))
    assert len(mnist_table[0]) == len(table[0]) + 1
    assert "\"cannot threshold\"" not in comparison_table(fm)  # the original report's words are MNIST's only


def test_readme_shows_the_published_other_data_sets(tmp_path):
    root = published_repository(tmp_path / "repo")
    assert readme.other_datasets(root) == []
    fm = as_dataset(mnist_metrics(), FM)
    (root / "figures" / FM).mkdir()
    (root / "figures" / FM / "metrics.json").write_text(json.dumps(fm))
    assert readme.other_datasets(root) == [(FM_TITLE, fm)]
    text = readme.render(README, mnist_metrics(), None, readme.other_datasets(root))
    assert f"{FM_TITLE}: standard model" in text and "dataset=fashion_mnist" in text
    # a Fashion-MNIST run publishing: MNIST's published metrics lead, the run's own fill the column
    run = copy.deepcopy(fm)
    run["training"]["test_accuracy"] = 12.34
    mnist, others = readme.both_metrics(root, FM, run)
    assert dataset_of(mnist) == "mnist" and others == [(FM_TITLE, run)]


def test_dataset_sentence_names_the_classes():
    fm = dataset_sentence(FM, 60_000, 10_000)
    assert fm.startswith(f"{FM_TITLE}: 60,000 training and 10,000 test images") and "Ankle boot" in fm
    assert "handwritten digits" in dataset_sentence("mnist", 3_000, 10_000)
