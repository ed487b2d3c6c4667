"""`make quick` in a copy of the repository of its own (under a path with a space): a small run elsewhere, nothing
published. Its own module and copy, so that `make test`'s second pytest worker runs it beside the workflow tests
that share the `repo_copy` run (tests/conftest.py)."""
from __future__ import annotations

import json

from study.results import load_metrics
from conftest import copy_repo, run_make, tree_digest


def test_make_quick_runs_elsewhere_and_publishes_nothing(tmp_path, data_root):
    repo = copy_repo(tmp_path / "a clone with space")
    before = tree_digest(repo / "report", repo / "figures", repo / "README.md")
    out = tmp_path / "quick run"
    run_make(repo, "quick", f"OUT={out}",
             "CONFIG=train_subset=1000 n_samples=50 eps_grid=[0,0.15,0.3] full_test_set=false pgd_steps=2")
    assert (out / "report" / "index.html").is_file() and (out / "figures" / "graph3_epsilon_vs_accuracy.png").is_file()
    assert not (repo / "build" / "run").exists(), "make quick worked in the report's run directory"
    assert tree_digest(repo / "report", repo / "figures", repo / "README.md") == before
    # 05's PGD curves came from the workflow's PGD jobs, two per model, through the stage cache: the parts together
    # are the curves the notebook reports, and the notebook computed no PGD number itself
    jobs = [json.loads(p.read_text()) for p in (out / "artifacts" / "pgd").glob("*.json")]
    assert sorted((j["model"], j["part"]) for j in jobs) == [("model.pt", 0), ("model.pt", 1), ("robust_model.pt", 0),
                                                              ("robust_model.pt", 1)]
    curves = load_metrics(out / "figures" / "metrics.json")["defense"]["curves"]
    for name, file in (("standard", "model.pt"), ("robust", "robust_model.pt")):
        from_jobs = sorted((r["eps"], r["k"], r["n"]) for j in jobs if j["model"] == file for r in j["pgd"])
        assert from_jobs == sorted((r["eps"], r["k"], r["n"]) for r in curves[name]["pgd"])
    assert len(list((out / "artifacts" / "cache").glob("pgd_accuracy-*.pt"))) == 2 * 3  # 2 models x 3 eps
