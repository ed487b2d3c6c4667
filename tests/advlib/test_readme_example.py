"""The README's "Use advlib on your own model" example runs as written: here, and in a clean virtual environment
that has only the library and its core dependencies (which proves that list is all the example needs, and that the
study's stack stays out of a bare `pip install`).

The example is read from README.md (the first ```python block after the section's heading), never copied.
"""
from __future__ import annotations

import json
import linecache
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[2]
HEADING = "## Use advlib on your own model"

# what the bare library must not bring along (each belongs to an extra: plot, explorer, autoattack, study, test)
NOT_IN_A_BARE_INSTALL = ("matplotlib", "seaborn", "ipywidgets", "jupyterlab", "ipykernel", "papermill", "nbconvert",
                         "snakemake", "autoattack", "torchattacks", "pytest", "importlinter")

# the torch pair the Makefile installs (this machine serves them from its disk; an unpinned torch downloads GBs)
TORCH_PINS = ("torch==2.14.1", "torchvision==0.29.1")


def readme_example() -> str:
    """The code of the first ```python block after the section's heading in README.md."""
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    start = text.find("\n" + HEADING + "\n")
    assert start >= 0, f"README.md has no section {HEADING!r}"
    match = re.compile(r"^```python\n(.*?)^```", re.S | re.M).search(text, start)
    assert match, f"no ```python block after {HEADING!r} in README.md"
    nxt = text.find("\n## ", start + 1)
    assert nxt < 0 or match.start() < nxt, f"the first ```python block after {HEADING!r} is in another section"
    return match.group(1)


# Checks of what the README's text says the example returns, run after it (on its namespace).
CHECKS = """
_eps, _n = 8 / 255, len(x)
for _name, _img in (("x_adv", x_adv), ("x_pgd", x_pgd)):
    assert _img.shape == x.shape, (_name, _img.shape)
    assert (_img - x).abs().max().item() <= _eps + 1e-6, _name + " leaves the eps-ball"
    assert _img.min().item() >= 0 and _img.max().item() <= 1, _name + " leaves bounds (0, 1)"
assert tuple(sweep.preds.shape) == (4, _n) and tuple(sweep.confidences.shape) == (4, _n), sweep.preds.shape
assert tuple(preds.shape) == (_n,) and tuple(confidences.shape) == (_n,)
"""


def test_readme_example_runs_here(capsys):
    """(a) In this environment, in a fresh namespace, as a reader pastes it."""
    code = readme_example()
    filename = "<README.md: Use advlib on your own model>"
    linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)  # tracebacks show its lines
    namespace = {"__name__": "__main__"}
    torch.manual_seed(0)
    exec(compile(code, filename, "exec"), namespace)
    exec(compile(CHECKS, "checks", "exec"), namespace)
    assert capsys.readouterr().out.strip(), "the example prints the accuracy at each eps"


def _run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def _tail(proc: subprocess.CompletedProcess, n: int = 4000) -> str:
    return (proc.stdout + proc.stderr)[-n:]


@pytest.mark.slow
def test_readme_example_in_a_bare_venv(tmp_path):
    """(b) In a clean venv (no system site-packages) with torch, torchvision and `pip install <repo>` without
    extras: the example runs, and none of the extras' packages is installed."""
    try:
        _bare_venv_example(tmp_path)
    finally:
        shutil.rmtree(tmp_path, ignore_errors=True)  # the venv is GBs (torch and its CUDA libraries)


def _bare_venv_example(tmp_path: Path) -> None:
    times = {}
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["OMP_NUM_THREADS"] = "1"
    venv = tmp_path / "bare venv"  # a path with a space, as a clone's may have
    python = venv / "bin" / "python"

    t = time.perf_counter()
    _run([sys.executable, "-m", "venv", str(venv)], check=True, env=env)
    times["venv"] = time.perf_counter() - t
    print(f"venv: {times['venv']:.1f} s", flush=True)

    # Can pip get the pinned pair here at all (from this machine's disk or the network)? Resolving the two pins
    # alone answers without downloading them; if not, the test cannot run here.
    proc = _run([str(python), "-m", "pip", "install", "--dry-run", "--no-deps", "--quiet", *TORCH_PINS], env=env)
    if proc.returncode != 0:
        pytest.skip(f"pip finds no {' and '.join(TORCH_PINS)} here (no network and no local copy): "
                    f"{_tail(proc, 600)}")

    t = time.perf_counter()
    proc = _run([str(python), "-m", "pip", "install", "--quiet", *TORCH_PINS], env=env)
    times["torch"] = time.perf_counter() - t
    print(f"torch: {times['torch']:.1f} s", flush=True)
    assert proc.returncode == 0, f"pip install {' '.join(TORCH_PINS)} failed:\n{_tail(proc)}"

    # Install from a copy of the distribution's files: `pip install <repo>` would build in the repository itself
    # (setuptools writes build/ and *.egg-info there; build/ is the workflow's).
    src = tmp_path / "advlib source"
    src.mkdir()
    for path in (REPO_ROOT / "pyproject.toml", REPO_ROOT / "README.md", *REPO_ROOT.glob("LICEN[CS]E*")):
        shutil.copy2(path, src / path.name)
    for package in ("advlib", "study"):
        shutil.copytree(REPO_ROOT / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    t = time.perf_counter()
    proc = _run([str(python), "-m", "pip", "install", "--quiet", str(src)], env=env)
    times["advlib"] = time.perf_counter() - t
    print(f"advlib: {times['advlib']:.1f} s", flush=True)
    assert proc.returncode == 0, f"pip install <repo> (no extras) failed:\n{_tail(proc)}"

    # the package data (pyproject.toml's [tool.setuptools.package-data]): the explorer's CSS and JS
    assets = sorted(p.name for p in (REPO_ROOT / "advlib").iterdir() if p.suffix in (".css", ".js"))
    probe = ("import importlib.metadata as md, importlib.util, importlib.resources, json\n"
             f"names, assets = {list(NOT_IN_A_BARE_INSTALL)!r}, {assets!r}\n"
             "print(json.dumps({'found': [n for n in names if importlib.util.find_spec(n) is not None],\n"
             "                  'missing': [a for a in assets\n"
             "                              if not (importlib.resources.files('advlib') / a).is_file()],\n"
             "                  'dists': sorted(d.metadata['Name'] for d in md.distributions())}))\n")
    proc = _run([str(python), "-c", probe], env=env, cwd=tmp_path)
    assert proc.returncode == 0, _tail(proc)
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert not report["found"], (f"a bare `pip install advlib` installed {report['found']}; the venv holds "
                                 f"{report['dists']}")
    assert not report["missing"], f"the installed advlib lacks its package data {report['missing']}"

    script = tmp_path / "example.py"
    script.write_text("import torch\ntorch.manual_seed(0)\n" + readme_example() + CHECKS
                      + "import advlib, os\nprint('ADVLIB_FILE=' + os.path.realpath(advlib.__file__))\n")
    t = time.perf_counter()
    proc = _run([str(python), str(script)], env=env, cwd=tmp_path, timeout=600)
    times["example"] = time.perf_counter() - t
    print(f"example: {times['example']:.1f} s", flush=True)
    assert proc.returncode == 0, f"the README example failed in the bare venv:\n{_tail(proc)}"
    advlib_file = proc.stdout.split("ADVLIB_FILE=")[-1].strip()
    assert Path(advlib_file).is_relative_to(venv.resolve()), f"imported advlib from {advlib_file}, not the venv"
    print("bare venv, seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in times.items())
          + f"; {len(report['dists'])} distributions: {', '.join(report['dists'])}")
