"""The workflow on Fashion-MNIST, run the same way as the MNIST workflow test: the README's
`make report CONFIG="dataset=fashion_mnist ..."` with the small parameters, in the copy of the repository where
MNIST's small report has already run (fixture `repo_copy` in conftest.py, shared with tests/study/test_workflow.py).
The run publishes into report/fashion_mnist/ and figures/fashion_mnist/ (without stage 8: Fashion-MNIST has no
robustness evaluation), leaves every MNIST file as it was, names the classes, links the two reports to each other
and adds a Fashion-MNIST column to the README's table. An unknown data set stops `make report` before anything
runs."""
from __future__ import annotations

import html
import re
import shutil
from pathlib import Path

import nbformat
import pytest

from study import workflow as pipeline
from study.results import load_metrics
from conftest import SMALL_PIPELINE_PARAMETERS, config_words, run_make, tree_digest
from test_workflow import FIGURES, MACHINE_PATH, SMALL, planned_jobs, png_size

FM = "fashion_mnist"
FM_STAGES = [s for s in pipeline.STAGES if s != "08_robustness"]  # no `make robust` results for Fashion-MNIST
FM_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
              "Ankle boot")  # advlib.data.DATASETS["fashion_mnist"].classes, typed here so that the test checks it


def mnist_files(repo: Path) -> dict[str, str]:
    """{file: SHA-256} of MNIST's published files (report/ and figures/ but their fashion_mnist/ folders) and of its
    run folder's notebooks and figures (build/run/)."""
    files = tree_digest(repo / "report", repo / "figures", repo / "build" / "run" / "report",
                        repo / "build" / "run" / "figures")
    others = (repo / "report" / FM, repo / "figures" / FM)
    return {p: h for p, h in files.items() if not any(Path(p).is_relative_to(o) for o in others)}


@pytest.fixture(scope="module")
def fashion_run(repo_copy) -> dict:
    """repo_copy after `make report CONFIG="dataset=fashion_mnist <small>"`, with the MNIST files from before it."""
    repo = repo_copy
    before = mnist_files(repo)
    seeds = repo / "figures" / FM / "seed_study"
    stand_in = not any(seeds.glob("seed_*.json"))
    if stand_in:
        # 07_seed_study reads the published Fashion-MNIST seed study (`make seeds CONFIG="dataset=fashion_mnist"`),
        # which the copy lacks when the repository has not published it yet: MNIST's seeds stand in for it
        seeds.mkdir(parents=True, exist_ok=True)
        for path in sorted((repo / "figures" / "seed_study").glob("seed_*.json")):
            shutil.copy2(path, seeds / path.name)
    run_make(repo, "report", f"CONFIG=dataset={FM} {config_words(SMALL_PIPELINE_PARAMETERS)}")
    left = planned_jobs(repo, "report", "--config", f"dataset={FM}", *SMALL.split())
    if stand_in:
        # the stand-ins (which the run published again) are no Fashion-MNIST results: removed, MNIST's
        # 07_seed_study finds the comparison input it ran with, and so do the workflow tests after this module
        shutil.rmtree(seeds)
    return {"root": repo, "before": before, "left": left, "run": repo / "build" / FM / "run",
            "report": repo / "report" / FM, "figures": repo / "figures" / FM}


def outputs(nb) -> list[dict]:
    return [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]


def hrefs(page: Path) -> set[str]:
    return set(re.findall(r'href="([^"]+)"', page.read_text(encoding="utf-8")))


# ---------------------------------------------------------------------------------------------------------------
# MNIST's results stay as they were


def test_the_fashion_mnist_run_leaves_every_mnist_file_as_it_was(fashion_run):
    after = mnist_files(fashion_run["root"])
    assert after == fashion_run["before"], "the Fashion-MNIST run changed MNIST's files: " + ", ".join(
        sorted(p for p in set(after) | set(fashion_run["before"]) if after.get(p) != fashion_run["before"].get(p)))
    assert fashion_run["run"].is_dir() and (fashion_run["run"] / "report" / "06_report.ipynb").is_file()


def test_both_runs_have_nothing_left_to_do(fashion_run):
    """The Fashion-MNIST run finished, in its own run folder (build/fashion_mnist/run), and invalidated no MNIST job."""
    assert fashion_run["left"] == {}, "the Fashion-MNIST run left jobs to do"
    assert planned_jobs(fashion_run["root"], "report", "--config", *SMALL.split()) == {}


# ---------------------------------------------------------------------------------------------------------------
# What the run publishes


def test_fashion_mnist_report_is_published_without_stage_8(fashion_run):
    names = sorted(p.name for p in fashion_run["report"].iterdir())
    assert names == sorted([f"{s}.ipynb" for s in FM_STAGES] + ["index.html"]), names
    for stage in FM_STAGES:
        published = fashion_run["report"] / f"{stage}.ipynb"
        assert published.read_bytes() == (fashion_run["run"] / "report" / f"{stage}.ipynb").read_bytes(), stage
    assert not (fashion_run["run"] / "report" / "08_robustness.ipynb").exists()


def test_fashion_mnist_metrics_and_figures_are_published(fashion_run):
    figures = fashion_run["figures"]
    metrics = load_metrics(figures / "metrics.json")
    assert metrics["training"]["parameters"]["dataset"] == FM
    assert metrics["training"]["n_train"] == SMALL_PIPELINE_PARAMETERS["train_subset"]
    for section in ("sweep", "confidence", "visual", "defense"):
        assert metrics[section]["parameters"]["dataset"] == FM, section
    assert "robustness" not in metrics
    for name in FIGURES:
        width, height = png_size(figures / name)
        assert 400 <= width <= 4000 and 250 <= height <= 4000, (name, width, height)
    assert not (figures / "graph14_dataset_comparison.png").exists(), "Figure 14 is MNIST's report's"
    assert (figures / "metrics.json").read_bytes() == (fashion_run["run"] / "figures" / "metrics.json").read_bytes()


def test_fashion_mnist_notebooks_have_no_errors_and_no_machine_path(fashion_run):
    for stage in FM_STAGES:
        path = fashion_run["report"] / f"{stage}.ipynb"
        nb = nbformat.read(path, as_version=4)
        errors = [o for o in outputs(nb) if o.output_type == "error"]
        assert not errors, f"{stage}: {errors[0]['ename']}: {errors[0]['evalue']}"
        injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
        assert injected and f'dataset = "{FM}"' in injected[0].source, stage
        assert "_dir" not in injected[0].source, f"{stage} was given a path: {injected[0].source}"
        found = MACHINE_PATH.search(path.read_text())
        assert not found, f"{path.name} contains the machine path {found.group(0)!r}"


def test_the_narrative_names_the_fashion_mnist_classes(fashion_run):
    nb = nbformat.read(fashion_run["report"] / "06_report.ipynb", as_version=4)
    markdown = [o.get("data", {}).get("text/markdown", "") for o in outputs(nb)]
    text = "\n".join(markdown)
    assert "Fashion-MNIST" in text and "Ankle boot" in text  # the data set's sentence names every class
    confusion = next(m for m in markdown if "most frequent adversarial confusions" in m)
    listed = confusion.split("confusions: ", 1)[1].split(". The class", 1)[0].split(", ")
    pairs = [re.fullmatch(r"(.+) → (.+) \(\d+ images?\)", item) for item in listed]
    assert all(pairs) and all(m.group(1) in FM_CLASSES and m.group(2) in FM_CLASSES for m in pairs), confusion
    best = re.search(r"The class that resists best is (.+?) \(", confusion)
    assert best and best.group(1) in FM_CLASSES, confusion
    # the explorer's kernel-free page (its text/html output) captions its images with the names
    page = next(h for h in (o.get("data", {}).get("text/html", "") for o in outputs(nb)) if "advlib-explorer" in h)
    captions = re.findall(r'<div class="advlib-explorer-caption[^"]*"[^>]*>true ([^<]+)<br>→ <b>([^<]+)</b>', page)
    assert captions and all(html.unescape(t) in FM_CLASSES and html.unescape(p) in FM_CLASSES for t, p in captions)


def test_the_two_reports_link_to_each_other(fashion_run):
    root = fashion_run["root"]
    fm_page, mnist_page = fashion_run["report"] / "index.html", root / "report" / "index.html"
    assert "../index.html" in hrefs(fm_page) and (fm_page.parent / "../index.html").resolve() == mnist_page.resolve()
    assert mnist_page.is_file()
    # MNIST's page, published by MNIST's run before this Fashion-MNIST run, links to where Fashion-MNIST's now is
    assert "fashion_mnist/index.html" in hrefs(mnist_page)
    assert (mnist_page.parent / "fashion_mnist" / "index.html").is_file()
    title = re.search(r"<title>(.*?)</title>", fm_page.read_text(encoding="utf-8"), re.S).group(1)
    assert "Fashion-MNIST" in html.unescape(title), title


def test_readme_has_a_fashion_mnist_column(fashion_run):
    text = (fashion_run["root"] / "README.md").read_text()
    block = text[text.index("<!-- results:start -->"):text.index("<!-- results:end -->")]
    header = next(line for line in block.splitlines() if line.startswith("| quantity"))
    assert "| Fashion-MNIST: standard model" in header and "original report" in header, header
    # MNIST's own numbers lead; the column holds the Fashion-MNIST run's clean accuracy
    mnist = load_metrics(fashion_run["root"] / "figures" / "metrics.json")
    fm = load_metrics(fashion_run["figures"] / "metrics.json")
    clean = next(line for line in block.splitlines() if line.startswith("| clean test accuracy"))
    assert f"| {mnist['training']['test_accuracy']:.2f}% |" in clean
    assert f"{fm['training']['test_accuracy']:.2f}%" in clean.rsplit("|", 2)[1], clean
    assert "dataset=fashion_mnist" in block


# ---------------------------------------------------------------------------------------------------------------
# An unknown data set is refused before anything runs


def test_an_unknown_data_set_stops_make_report_before_anything_runs(repo_copy):
    before = tree_digest(repo_copy / "report", repo_copy / "figures", repo_copy / "README.md")
    done = run_make(repo_copy, "report", "CONFIG=dataset=cifar10", check=False)
    assert done.returncode != 0
    out = done.stdout + done.stderr
    assert "'cifar10'" in out and "'mnist'" in out and "'fashion_mnist'" in out, out[-2000:]
    assert "rule model" not in out and "rule notebook" not in out
    assert not (repo_copy / "build" / "cifar10").exists()
    assert tree_digest(repo_copy / "report", repo_copy / "figures", repo_copy / "README.md") == before
