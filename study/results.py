"""figures/metrics.json and the other result files: reading, writing and loading the study's numbers.

Each stage notebook writes its own section of metrics.json with :func:`update_metrics`; the narrative notebook and
the README read them back with :func:`load_metrics`. Writes are atomic. The seed study's and the robustness
evaluation's per-run files are read by :func:`load_seed_runs`, :func:`load_robust_seed_runs` and
:func:`load_robustness`. Their tables are in :mod:`study.tables`, the regression bands in :mod:`study.bands`.
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
    """Replace one section of the metrics file (creating it if needed) and return the whole content.

    Stages running at the same time (the pipeline runs independent stages in parallel) each update their own
    section: a lock file beside the metrics file makes the read-modify-write one step."""
    import fcntl

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.parent / f".{path.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        metrics = read_json(path)
        metrics[section] = plain(value)
        metrics = dict(sorted(metrics.items()))  # sections in a fixed order, whichever stage finished first
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


def mean_sd(values) -> dict:
    """{"mean", "std" (sample sd, ddof=1; 0.0 for one value), "values"} of a list of numbers."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        raise ValueError("mean_sd needs at least one value")
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0, "values": a.tolist()}


def load_seed_runs(folder: str | os.PathLike) -> dict[int, dict]:
    """{seed: metrics} from a seed study's ``seed_<k>.json`` files (each with training and sweep sections)."""
    files = sorted(Path(folder).glob("seed_*.json"), key=lambda f: int(f.stem.split("_")[1]))
    if not files:
        raise MissingArtifactError(f"no seed_*.json in {folder}: run `make seeds` first")
    runs = {int(f.stem.split("_")[1]): load_metrics(f, require=("training", "sweep")) for f in files}
    older = sorted(k for k, r in runs.items() if "recalibrated_test_accuracy" not in r["training"])
    if older:
        raise MissingArtifactError(f"seed_{older[0]}.json in {folder} was written before the seed study recorded the "
                                   "accuracy with BatchNorm's statistics recomputed: run `make seeds` again")
    return runs


def row_at(rows: list[dict], eps: float) -> dict:
    """The sweep row for eps (normalized units); KeyError naming the grid if it is not there."""
    for row in rows:
        if abs(row["eps"] - eps) < 1e-9:
            return row
    raise KeyError(f"eps {eps} is not on the sweep grid {[r['eps'] for r in rows]}")


# ---------------------------------------------------------------------------------------------------------------
# The robustness evaluation (make robust -> figures/robustness/)


def load_robustness(folder: str | os.PathLike) -> dict:
    """The committed robustness evaluation: {"autoattack": {model: [result per eps, by eps]}, "sanity": {...},
    "ablation": :func:`load_ablation`}. Models: "standard" and "robust" (the 0.15 px-trained model of 05). Each
    result carries the "model" provenance (training config, history, weights digest) it was computed on."""
    folder = Path(folder)
    files = sorted(folder.glob("autoattack_*.json"))
    if not files or not (folder / "sanity.json").is_file():
        raise MissingArtifactError(f"no robustness results in {folder}: run `make robust` first (hours on a CPU)")
    aa = {}
    for f in files:
        blob = read_json(f)
        name = f.stem[len("autoattack_"):].rsplit("_eps", 1)[0]
        aa.setdefault(name, []).append({**blob["result"], "model": blob["model"]})
    for rows in aa.values():
        rows.sort(key=lambda r: r["eps"])
    return {"autoattack": aa, "sanity": read_json(folder / "sanity.json"), "ablation": load_ablation(folder)}


def load_ablation(folder: str | os.PathLike) -> dict:
    """The 0.3 px capacity study (``make robust``; study.ablation): {"runs": [one result per (configuration, seed),
    in the grid's file order; a run of ablation_whole also has "whole", AutoAttack over its parts merged], "checks":
    {"<name>_s<seed>": Carlini et al.'s attacks on it}, "released": Wong et al.'s released model, its parts merged
    (None when it was not evaluated)}. Merged results carry no per-image flags (they stay in the files). Runs, their
    parts and checks come from ``<folder>/ablation/``, the released model from ``<folder>/anchor/``."""
    folder = Path(folder)
    runs, checks, parts = [], {}, {}
    for f in sorted((folder / "ablation").glob("*.json")):
        blob = read_json(f)
        if f.name.startswith("checklist_"):
            checks[f"{blob['name']}_s{blob['seed']}"] = blob["result"]
        elif f.name.startswith("part_"):
            parts.setdefault((blob["name"], blob["seed"]), []).append(blob)
        else:
            runs.append(blob)
    for run in runs:
        more = parts.pop((run["name"], run["seed"]), [])
        if more:
            run["whole"] = _merged([run, *more], f"{run['name']} seed {run['seed']}")
    if parts:
        raise ValueError(f"AutoAttack parts of runs that are not there: {sorted(parts)}; run `make robust`")
    released = None
    found = [read_json(f) for f in (folder / "anchor").glob("released_from*.json")]
    if found:
        first = min(found, key=lambda p: p["start"])
        released = {"clean": first["clean"], "model": first["model"], "part_size": first["autoattack"]["n"],
                    "parts": [{"start": p["start"], "robust": p["autoattack"]["robust"]}
                              for p in sorted(found, key=lambda p: p["start"])],
                    "first": _brief(first["autoattack"]), "official": _brief(first.get("official")),
                    "autoattack": _merged(found, "the released model")}
    return {"runs": runs, "checks": checks, "released": released}


def _brief(result: dict | None) -> dict | None:
    """A result without its per-image flags (they stay in the files)."""
    return result and {k: v for k, v in result.items() if k != "robust_flags"}


def _merged(parts: list[dict], what: str) -> dict:
    """AutoAttack over ``parts`` (each {"start", "autoattack"}), which must be consecutive slices of the same size
    from image 0: one result, without its per-image flags."""
    from advlib.autoattack import merge_parts

    parts = sorted(parts, key=lambda p: p["start"])
    starts, n = [p["start"] for p in parts], parts[0]["autoattack"]["n"]
    if starts != list(range(0, n * len(parts), n)):
        raise ValueError(f"{what}: its parts start at {starts}, not consecutive slices of {n} images from image 0")
    return _brief(merge_parts([p["autoattack"] for p in parts]))


def load_robust_seed_runs(folder: str | os.PathLike) -> dict[int, dict]:
    """{seed: robust-model numbers} from a seed study's robust_<k>.json files (study.sanity.seed_metrics), or {}."""
    files = sorted(Path(folder).glob("robust_*.json"), key=lambda f: int(f.stem.split("_")[1]))
    return {int(f.stem.split("_")[1]): read_json(f)["result"] for f in files}


def robust_seed_spread(runs: dict[int, dict]) -> dict:
    """Mean ± sd across seeds of the robust model's clean, PGD and AutoAttack (APGD-CE -> APGD-T) accuracy."""
    first = runs[min(runs)]
    return {"seeds": sorted(runs), "eps": first["eps"], "pgd_steps": first["pgd_steps"], "n": first["n"],
            "aa_samples": first["aa"]["n"], "aa_attacks": first["aa_attacks"],
            **{k: mean_sd([runs[s][k]["value"] for s in sorted(runs)]) for k in ("clean", "pgd", "aa")}}


def robustness_settings_mismatch(rb: dict, params: dict) -> list[str]:
    """How the committed robustness results (:func:`load_robustness`) differ from 08_robustness's parameters
    ``params`` (empty: they were computed with exactly these settings). A difference means `make robust` has not
    been re-run since the parameters changed."""
    out = []
    want_eps = sorted(set(params["aa_eps"]) | set(params["aa_grid_eps"]))
    for m in ("standard", "robust"):
        rows = rb["autoattack"].get(m, [])
        if sorted(r["eps"] for r in rows) != want_eps:
            out.append(f"{m}: AutoAttack at eps {sorted(r['eps'] for r in rows)}, parameters ask {want_eps}")
        for r in rows:
            n = params["aa_samples"] if r["eps"] in params["aa_eps"] else params["aa_grid_samples"]
            if r["n"] != n:
                out.append(f"{m} at eps {r['eps']:g}: {r['n']} images, parameters ask {n}")
    from study.ablation import runs as grid_runs, spec

    have = {(r["name"], r["seed"]): r for r in rb["ablation"]["runs"]}
    want = grid_runs(params["ablation"])
    if sorted(have) != sorted(want):
        out.append(f"capacity study: runs {sorted(have)}, parameters ask {sorted(want)}")
    whole = params.get("ablation_whole", [])  # these runs are attacked on released_parts slices of the test set
    for (name, seed), r in have.items():
        if name in params["ablation"] and spec(r["spec"]) != spec(params["ablation"][name]):
            out.append(f"capacity study {name}: trained as {r['spec']}, parameters ask {spec(params['ablation'][name])}")
        if r["autoattack"]["n"] != params["ablation_samples"] or abs(r["autoattack"]["eps"] - params["ablation_eps"]) > 1e-12:
            out.append(f"capacity study {name} seed {seed}: AutoAttack on {r['autoattack']['n']} images at eps "
                       f"{r['autoattack']['eps']:g}, parameters ask {params['ablation_samples']} at {params['ablation_eps']:g}")
        n = (r.get("whole") or r["autoattack"])["n"]
        if f"{name}_s{seed}" in whole and n != params["released_parts"] * params["ablation_samples"]:
            out.append(f"capacity study {name} seed {seed}: AutoAttack on the first {n:,} test images, ablation_whole "
                       f"asks {params['released_parts'] * params['ablation_samples']:,}")
        elif r.get("whole") and f"{name}_s{seed}" not in whole:
            out.append(f"capacity study {name} seed {seed}: attacked on {n:,} test images, ablation_whole does not "
                       "name it")
    s = rb["sanity"]["result"]
    if (s["eps"], [r["eps"] for r in s["sweep"]], s["square_vs_apgd"]["n"]) != (
            params["sanity_eps"], list(params["sanity_eps_sweep"]), params["square_samples"]):
        out.append("sanity checks: computed at other settings (sanity_eps, sanity_eps_sweep, square_samples)")
    return out
