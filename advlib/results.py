"""figures/metrics.json: the one file every number in the figures, the report and the README comes from.

Each stage notebook writes its own section with :func:`update_metrics`; the narrative notebook and the README
read them back with :func:`load_metrics`. Writes are atomic.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from advlib.io import atomic_write_json

# section -> the notebook that writes it (for clear "run this first" errors)
SECTION_SOURCES = {
    "training": "01_train.ipynb",
    "sweep": "02_sweep.ipynb",
    "confidence": "03_confidence.ipynb",
    "visual": "04_visual_grid.ipynb",
    "defense": "05_defense.ipynb",
}


class MissingArtifactError(FileNotFoundError):
    """An earlier stage's output is missing. Shown in notebooks as one clear line, not a traceback."""

    def _render_traceback_(self) -> list[str]:  # IPython calls this instead of printing a traceback
        return [f"\x1b[31mMissingArtifactError\x1b[0m: {self}"]


def plain(obj: Any, digits: int = 6) -> Any:
    """Tensors, numpy values and nested containers -> JSON-ready Python, floats rounded to `digits` decimals."""
    if isinstance(obj, torch.Tensor):
        obj = obj.detach().cpu().tolist()
    elif isinstance(obj, np.ndarray):
        obj = obj.tolist()
    elif isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, dict):
        return {str(k): plain(v, digits) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v, digits) for v in obj]
    if isinstance(obj, float):
        return None if math.isnan(obj) else round(obj, digits)
    return obj


def read_json(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it and re-run `make report`") from None


def update_metrics(path: str | os.PathLike, section: str, value: Any) -> dict:
    """Replace one section of the metrics file (creating it if needed) and return the whole content."""
    metrics = read_json(path)
    metrics[section] = plain(value)
    atomic_write_json(path, metrics)
    return metrics


def load_metrics(path: str | os.PathLike, require: tuple[str, ...] = ()) -> dict:
    """Read the metrics file; raise MissingArtifactError naming the notebook to run for a missing section."""
    metrics = read_json(path)
    for section in require:
        if section not in metrics:
            source = SECTION_SOURCES.get(section, "the earlier stage notebooks")
            raise MissingArtifactError(f"{path} has no '{section}' results yet: run notebooks/{source} first "
                                       "(or `make report` for the whole pipeline)")
    return metrics


def require_file(path: str | os.PathLike, source: str) -> Path:
    """Return path if it exists, else raise MissingArtifactError telling which notebook makes it."""
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(f"{path} not found: run notebooks/{source} first (or `make report`)")
    return path


# The original report's published numbers (quoted from it, for the "original vs this run" comparison).
# eps in normalized units; rates in percent; 1,000 correctly classified test images per eps.
ORIGINAL_REPORT = {
    "test_accuracy": 98.41,
    "train_accuracy": 98.40,
    "epoch_loss": [0.214, 0.064, 0.051],
    "adv_accuracy": {0.05: 88.67, 0.1: 59.39, 0.15: 32.86, 0.3: 10.61},  # 0.1 from its ASR of 40.61%
    "focus_eps": 0.15,
    "clean_confidence": 98.4,
    "adv_confidence": 82.01,
    "n_samples": 1000,
}


def markdown_table(headers: list[str], rows: list[list]) -> str:
    """A GitHub-flavoured markdown table (cells are str()-ed)."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt_rate(r: dict, digits: int = 2) -> str:
    """A rate dict as '32.90% [30.0, 35.9]' (value and 95% Wilson interval)."""
    return f"{r['value']:.{digits}f}% [{r['ci_low']:.1f}, {r['ci_high']:.1f}]"


def row_at(rows: list[dict], eps: float) -> dict:
    """The sweep row for eps (normalized units); KeyError naming the grid if it is not there."""
    for row in rows:
        if abs(row["eps"] - eps) < 1e-9:
            return row
    raise KeyError(f"eps {eps} is not on the sweep grid {[r['eps'] for r in rows]}")
