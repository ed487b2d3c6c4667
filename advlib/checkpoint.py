"""Checkpoints without pickled code.

The original report pickled the whole model; unpickling a stranger's file runs their code. Here a checkpoint
is a dict of tensors, numbers, strings and lists only: the weights, the optimizer state, the architecture
config (so the model is rebuilt from it), the training history and metadata (seed, versions, git revision).
It is loaded with ``torch.load(..., weights_only=True)``, which refuses anything else, and written atomically.
"""
from __future__ import annotations

import ast
import datetime as _dt
import importlib.metadata
import importlib.util
import os
import pickle
import platform
import subprocess
from dataclasses import dataclass
from pathlib import Path

import torch

from advlib.io import atomic_torch_save
from torch import nn

from advlib.model import ARCHITECTURES, architecture_of
from advlib.train import History

FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, truncated, unsafe or incompatible."""


def git_revision(cwd: str | os.PathLike | None = None) -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=cwd, capture_output=True, text=True,
                             timeout=5)
        return out.stdout.strip() or None if out.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None


def installed_version(package: str) -> str | None:
    """``package.__version__`` as the package would report it (for torchvision with its build suffix, such as
    "0.29.1+cu130"), read from its version.py without importing it: importing torchvision takes about 2 s, most of
    an evaluation job's start-up, as it imports torch._dynamo. Falls back to the installed distribution's version,
    then None (not installed)."""
    spec = importlib.util.find_spec(package)
    if spec is None:
        return None
    for folder in spec.submodule_search_locations or []:
        version_file = Path(folder) / "version.py"
        if version_file.is_file():
            for node in ast.parse(version_file.read_text()).body:
                if (isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant)
                        and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)):
                    return str(node.value.value)
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def environment_info() -> dict:
    """Library versions and machine facts that made a result."""
    import numpy

    return {  # advlib's version as installed: `import advlib` here would make training depend on the whole package
        "advlib": installed_version("advlib"),
        "torch": str(torch.__version__),
        "torchvision": installed_version("torchvision"),
        "numpy": numpy.__version__,
        "python": platform.python_version(),
        "git_revision": git_revision(Path(__file__).parent),
        "threads": torch.get_num_threads(),
    }


@dataclass
class Checkpoint:
    model: nn.Module  # a SmallResNet or SmallCNN (advlib.model.ARCHITECTURES), rebuilt from the stored config, eval mode
    history: History
    train_config: dict
    metadata: dict
    optimizer_state: dict | None


def save_checkpoint(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
                    history: History | None = None, train_config: dict | None = None,
                    metadata: dict | None = None) -> Path:
    """Write the checkpoint atomically: a crash mid-save leaves the previous file intact. ``model``: one of
    advlib.model's architectures (:data:`~advlib.model.ARCHITECTURES`), recorded with its config."""
    blob = {
        "format_version": FORMAT_VERSION,
        "architecture": architecture_of(getattr(model, "config", None)),
        "model_config": model.config.to_dict(),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "optimizer_state": optimizer.state_dict() if optimizer is not None else None,
        "history": (history or History()).to_dict(),
        "train_config": dict(train_config or {}),
        "metadata": {"saved_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                     **environment_info(), **(metadata or {})},
    }
    return atomic_torch_save(blob, path)


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> Checkpoint:
    """Load a checkpoint written by :func:`save_checkpoint` and rebuild its model.

    Raises:
        CheckpointError: missing, truncated, not a checkpoint, containing code (refused unexecuted), or from an
            incompatible version.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}: run the training notebook (notebooks/01_train.ipynb) "
                              "or `make report` first")
    try:
        blob = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(f"{path} is not a plain-data checkpoint and was refused without running it "
                              f"(it contains pickled objects): {str(e).splitlines()[0]}") from None
    except Exception as e:  # noqa: BLE001 - garbage bytes also raise IndexError, KeyError, struct.error, ...
        raise CheckpointError(f"{path} is truncated or not a checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else 'no detail'}); retrain to recreate it") from None
    if not isinstance(blob, dict) or "state_dict" not in blob or "model_config" not in blob:
        raise CheckpointError(f"{path} is not an advlib checkpoint (no state_dict/model_config)")
    if blob.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {blob.get('format_version')!r}, this advlib reads "
                              f"{FORMAT_VERSION}; retrain with this version")
    architecture = blob.get("architecture", "SmallResNet")  # checkpoints from before SmallCNN: SmallResNet
    if architecture not in ARCHITECTURES:
        raise CheckpointError(f"{path} holds a {architecture!r}, which this advlib does not know (it knows "
                              f"{sorted(ARCHITECTURES)}); load it with the advlib version that wrote it")
    try:
        model_type, config_type = ARCHITECTURES[architecture]
        model = model_type(config_type.from_dict(blob["model_config"]))
        model.load_state_dict(blob["state_dict"])
    except (ValueError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path} does not fit the model it describes: {str(e).splitlines()[0]}") from None
    model.to(device).eval()
    return Checkpoint(model=model, history=History.from_dict(blob.get("history", {})),
                      train_config=blob.get("train_config", {}), metadata=blob.get("metadata", {}),
                      optimizer_state=blob.get("optimizer_state"))
