"""The split between the library and the study: advlib never imports study, and the bare library imports none of
the study's (or the extras') heavy packages.

Two independent checks: import-linter's static contract (pyproject.toml, [tool.importlinter]: every import
statement of advlib, function-level ones included), and what ``import advlib`` really loads in a fresh interpreter.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]

# packages that only the study or an extra needs: importing the library must not load them
NOT_IMPORTED_BY_ADVLIB = ("study", "matplotlib", "seaborn", "ipywidgets", "papermill", "snakemake", "nbconvert",
                          "autoattack", "pyautoattack", "torchattacks")


def test_advlib_does_not_import_study_lint_imports():
    """The forbidden contract of pyproject.toml holds (lint-imports exits 0 and says the contract is kept)."""
    lint_imports = Path(sys.executable).parent / "lint-imports"
    if not lint_imports.exists():
        pytest.fail(f"{lint_imports} is missing: install the test extra (pip install -e '.[study,test]')")
    proc = subprocess.run([str(lint_imports), "--no-cache", "--no-logo"], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=300)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"lint-imports failed (exit {proc.returncode}):\n{out}"
    assert "0 broken" in out and "KEPT" in out, out


def _modules_loaded_by(code: str) -> set[str]:
    """The top-level names in sys.modules after running ``code`` in a fresh interpreter (from the repo root)."""
    script = code + "\nimport json, sys\nprint(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))\n"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return set(json.loads(proc.stdout.strip().splitlines()[-1]))


def test_import_advlib_loads_neither_study_nor_heavy_packages():
    loaded = _modules_loaded_by("import advlib")
    assert "advlib" in loaded
    unexpected = sorted(loaded & set(NOT_IMPORTED_BY_ADVLIB))
    assert not unexpected, f"`import advlib` imported {unexpected}"


def test_no_advlib_module_imports_study():
    """Importing every module of advlib (the extras' too: viz, explorer) never loads study."""
    code = ("import pkgutil, importlib, advlib\n"
            "for m in pkgutil.iter_modules(advlib.__path__):\n"
            "    importlib.import_module('advlib.' + m.name)\n")
    loaded = _modules_loaded_by(code)
    assert "study" not in loaded, "an advlib module imported study"
