"""study.sources: the code a job or a cached function depends on is derived from imports, so a stale key is
impossible: a new module that an attack imports changes the cache key and the jobs' inputs, with no list to edit."""
from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest

from study import sources

ROOT = sources.ROOT


@pytest.fixture
def tree(tmp_path) -> Path:
    """A copy of the project's packages and notebooks, to edit."""
    for name in ("advlib", "study", "notebooks"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_a_new_module_an_attack_imports_changes_the_keys_and_the_jobs(tree):
    attacks = tree / "advlib" / "attacks.py"
    new = tree / "advlib" / "new_step.py"
    before = {m: sources.code_digest(m, root=tree) for m in ("study.jobs", "study.models", "advlib.metrics")}
    jobs_before = sources.code_files("study.jobs", root=tree)
    nb_before = sources.notebook_code(tree / "notebooks" / "02_sweep.ipynb", tree)[0]
    assert "advlib/new_step.py" not in jobs_before
    new.write_text("def step(x):\n    return x\n")
    assert sources.code_digest("study.jobs", root=tree) == before["study.jobs"], "an unused module is no input"
    text = attacks.read_text()
    attacks.write_text(text.replace("import torch\n", "import torch\n\nfrom advlib.new_step import step  # noqa\n", 1))
    for module, digest in before.items():  # PGD jobs, training (adversarial training attacks), the metrics' cache
        assert sources.code_digest(module, root=tree) != digest, module
    assert "advlib/new_step.py" in sources.code_files("study.jobs", root=tree)
    assert "advlib/new_step.py" in sources.notebook_code(tree / "notebooks" / "02_sweep.ipynb", tree)[0]
    assert "advlib/new_step.py" not in nb_before
    # the new module's content is part of the key from then on
    after = sources.code_digest("study.jobs", root=tree)
    new.write_text("def step(x):\n    return 2 * x\n")
    assert sources.code_digest("study.jobs", root=tree) != after


def test_the_cache_key_of_a_function_follows_its_file(tree):
    metrics = tree / "advlib" / "metrics.py"
    before = sources.file_digest(metrics, root=tree)
    (tree / "advlib" / "attacks.py").write_text((tree / "advlib" / "attacks.py").read_text() + "\n# edited\n")
    assert sources.file_digest(metrics, root=tree) != before
    before = sources.file_digest(metrics, root=tree)
    (tree / "study" / "results.py").write_text((tree / "study" / "results.py").read_text() + "\n# edited\n")
    assert sources.file_digest(metrics, root=tree) == before, "the library's numbers never depend on the study"


def test_imports_inside_functions_count(tree):
    (tree / "advlib" / "lazy.py").write_text("X = 1\n")
    model = tree / "advlib" / "model.py"
    model.write_text(model.read_text() + "\n\ndef _late():\n    from advlib import lazy\n    return lazy.X\n")
    assert "advlib/lazy.py" in sources.code_files("study.models", root=tree)


def test_a_package_init_only_reexports():
    """What reached_modules assumes: a package's __init__ holds a docstring, imports, __all__ and __version__, nothing that
    runs code of its own (so importing one of its modules depends on the __init__'s text, not on what it imports)."""
    for init in (ROOT / "advlib" / "__init__.py", ROOT / "study" / "__init__.py"):
        for node in ast.parse(init.read_text()).body:
            ok = isinstance(node, (ast.Import, ast.ImportFrom)) or (
                isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)) or (
                isinstance(node, ast.Assign) and [t.id for t in node.targets if isinstance(t, ast.Name)] in (["__all__"], ["__version__"])
                and isinstance(node.value, (ast.List, ast.Tuple, ast.Constant)))
            assert ok, f"{init.relative_to(ROOT)} line {node.lineno}: only imports, a docstring, __all__ and __version__"


def test_the_library_reaches_no_study_module():
    for path in sorted((ROOT / "advlib").glob("*.py")):
        module = f"advlib.{path.stem}" if path.stem != "__init__" else "advlib"
        reached = sources.code_files(module)
        assert not [f for f in reached if f.startswith("study/")], (module, reached)


def test_figure_modules_enter_a_notebook_by_the_functions_it_reaches():
    code, figures = sources.notebook_code(ROOT / "notebooks" / "03_confidence.ipynb")
    assert figures and all(sources.draws(ROOT / f) for f in figures)
    assert not any(sources.draws(ROOT / f) for f in code)
    assert "advlib/attacks.py" in code


def test_each_job_reaches_what_it_runs_and_no_more():
    """The workflow's code inputs (the Snakefile's TRAIN_CODE, PGD_CODE, EVAL_CODE): training reaches the attacks
    (adversarial training) but not the metrics, figures or results; a metric or a table never retrains a model."""
    train = sources.code_files("study.models")
    assert {"advlib/train.py", "advlib/attacks.py", "advlib/iterative.py", "study/models.py"} <= set(train)
    assert not [f for f in train if f in ("advlib/metrics.py", "advlib/viz.py", "advlib/explorer.py")
                or f.startswith(("study/results", "study/tables", "study/figures", "study/jobs"))], train
    pgd = sources.code_files("study.jobs")
    assert {"advlib/metrics.py", "advlib/iterative.py", "study/cache.py", "study/jobs.py"} <= set(pgd)
    assert not [f for f in pgd if sources.draws(ROOT / f)], "the PGD jobs draw nothing"
    assert "advlib/autoattack.py" in sources.code_files("study.sanity")
    # the capacity study's training jobs (ABLATION_CODE) reach training, not its evaluation: a change to an attack
    # of the ensemble, a check or a table re-evaluates those models, never retrains them
    ablation = sources.code_files("study.ablation")
    assert {"advlib/train.py", "study/models.py", "study/ablation.py"} <= set(ablation)
    assert not [f for f in ablation if f in ("advlib/autoattack.py", "advlib/metrics.py", "study/sanity.py",
                                             "study/ablation_eval.py") or f.startswith(("study/results", "study/tables"))], ablation
    assert {"advlib/autoattack.py", "study/sanity.py", "study/ablation.py"} <= set(sources.code_files("study.ablation_eval"))


def test_a_modules_resources_are_its_inputs_too():
    """The explorer reads its page style and script from explorer.css and explorer.js beside it: a change to either
    re-runs the stages that show the slider, as a change to explorer.py does."""
    assert {"advlib/explorer.css", "advlib/explorer.js"} <= set(sources.code_files("advlib.explorer"))
    code, _ = sources.notebook_code(ROOT / "notebooks" / "06_report.ipynb")
    assert {"advlib/explorer.css", "advlib/explorer.js"} <= set(code)
    assert "advlib/explorer.css" not in sources.code_files("study.models")
