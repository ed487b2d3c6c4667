"""`make quick` in a copy of the repository of its own (under a path with a space): a small run elsewhere, nothing
published. Its own module and copy, so that `make test`'s second pytest worker runs it beside the workflow tests
that share the `repo_copy` run (tests/conftest.py)."""
from __future__ import annotations

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
