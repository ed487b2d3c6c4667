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


# The regression checks (tests/test_regression.py). A model trained again on another machine ends its training
# elsewhere (other float rounding), so its numbers are held to the committed seeds' spread, never to one run's
# decimals. The band is the seeds' median ± BAND_K scaled MADs (1.4826 × the median absolute deviation, the sd for
# normal data): one odd seed (BatchNorm's lag, a catastrophic overfit) cannot widen it the way it widens mean ± k sd.
# BAND_K = 6 keeps every committed seed inside the band of the other nine (a test checks this). Only quantities with
# a narrow honest spread get a band: the eval-mode accuracy (45 to 99% over honest seeds) and the FGSM accuracies
# (27 to 88% at eps 0.1) have none; FGSM itself is checked against an autograd oracle on the same model instead.
BAND_K = 6.0
MAD_TO_SD = 1.4826


def seed_band(values, k: float = BAND_K, limits: tuple[float, float] = (0.0, 100.0)) -> tuple[float, float]:
    """(low, high): median ± k × 1.4826 × MAD of the seeds' values, clipped to ``limits`` (accuracies in %)."""
    a = np.asarray(values, dtype=float)
    if a.size == 0:
        raise ValueError("seed_band needs at least one value")
    median = float(np.median(a))
    half = k * MAD_TO_SD * float(np.median(np.abs(a - median)))
    return max(median - half, limits[0]), min(median + half, limits[1])


def band_text(band: tuple[float, float]) -> str:
    """A band as '[97.90, 99.41]% (width 1.51 pp)'."""
    lo, hi = band
    return f"[{lo:.2f}, {hi:.2f}]% (width {hi - lo:.2f} pp)"


def outside_band(label: str, value: float, band: tuple[float, float]) -> list[str]:
    """[] when value lies in band, else one line naming the value, the band's bounds and its width."""
    lo, hi = band
    return [] if lo - 1e-9 <= value <= hi + 1e-9 else [f"{label} {value:.2f}% outside {band_text(band)}"]


def recalibrated_band(seed_study: dict, k: float = BAND_K) -> tuple[float, float]:
    """The seeds' band of the test accuracy with BatchNorm's statistics recomputed (:func:`seed_band`)."""
    return seed_band(seed_study["per_seed_recalibrated_test_accuracy"], k)


def outside_seed_band(recalibrated_accuracy: float, seed_study: dict, k: float = BAND_K) -> list[str]:
    """[] when a re-trained standard model's test accuracy with BatchNorm's statistics recomputed
    (:func:`study.jobs.recalibrated_accuracy`) lies inside the committed seeds' band (:func:`recalibrated_band`),
    else one line with the value, the band's bounds and its width.

    That accuracy measures the weights alone and is narrow over the seeds (98.3 to 99.0%); the eval-mode accuracy is
    not judged: BatchNorm's running averages lag the weights on some seeds (one honest seed at 45%), so a band wide
    enough for every honest seed would admit almost any model. seed_study: metrics.json's ``seed_study`` section."""
    return outside_band("test accuracy, BatchNorm statistics recomputed,", recalibrated_accuracy,
                        recalibrated_band(seed_study, k))


def outside_fgsm_oracle(accuracy: dict[float, float], oracle: dict[float, float], n: int, tolerance: int = 2,
                        differing: dict[float, int] | None = None) -> list[str]:
    """Where advlib's FGSM disagrees with an independent oracle on the same model and the same n images ([] if
    nowhere): per eps of ``oracle``, advlib's accuracy (%) must lie within ``tolerance`` images of the oracle's
    (band: oracle ± 100 × tolerance / n pp), and, when ``differing`` ({eps: images whose prediction differs}) is
    given, at most ``tolerance`` images may be predicted differently. The tolerance covers float rounding only (a
    near-tie flipped by another summation order); a wrong eps or a wrong sign moves hundreds of images.
    accuracy, oracle: {eps (normalized): accuracy %}."""
    out, half = [], 100.0 * tolerance / n
    for eps, want in oracle.items():
        got = next((v for e, v in accuracy.items() if abs(e - eps) < 1e-9), None)
        band = (want - half, want + half)
        if got is None:
            out.append(f"FGSM at eps {eps:g}: advlib gave no accuracy (the oracle's is {want:.2f}%)")
            continue
        out += outside_band(f"FGSM accuracy at eps {eps:g} (oracle {want:.2f}%, ± {tolerance} of {n:,} images):",
                            got, band)
        if differing is not None and differing.get(eps, 0) > tolerance:
            out.append(f"FGSM at eps {eps:g}: {differing[eps]} of {n:,} images predicted otherwise than by the oracle "
                       f"(at most {tolerance} allowed)")
    return out


def confusion_summary(cm, k: int = 3) -> dict:
    """The k most frequent off-diagonal confusions and the digit that resists best, from a confusion matrix
    (rows: true label, columns: predicted). Ties go to the smaller (true, predicted) pair."""
    cm = np.asarray(cm)
    off = [(int(cm[i, j]), i, j) for i in range(len(cm)) for j in range(len(cm)) if i != j and cm[i, j] > 0]
    off.sort(key=lambda t: (-t[0], t[1], t[2]))
    per_digit = np.diag(cm) / np.maximum(cm.sum(1), 1)
    best = int(np.argmax(per_digit))
    return {"top": [{"n": n, "true": i, "pred": j} for n, i, j in off[:k]],
            "most_robust_digit": best, "most_robust_accuracy": 100.0 * float(per_digit[best])}


def comparison_table(metrics: dict) -> str:
    """The headline table (markdown): the original report, this run with its 95% Wilson interval, the seed
    study's mean ± sd when there is one, and the adversarially trained model. The README and the narrative both
    show this table. eps the sweep grid does not contain are left out."""
    tr, sw, cf = metrics["training"], metrics["sweep"], metrics["confidence"]
    df, ss = metrics.get("defense"), metrics.get("seed_study")
    o = ORIGINAL_REPORT
    # the seed spread leads: it is what a re-run, on this machine or another, should be judged against
    headers = (["quantity", "original report"] + ([f"{len(ss['seeds'])} seeds, mean ± sd"] if ss else [])
               + ["this run [95% CI]"] + (["robust model (adv. training) [95% CI]"] if df else []))

    def seeds(eps: float | None = None) -> list[str]:
        if not ss:
            return []
        if eps is None:
            return [f"{ss['test_accuracy_mean']:.2f} ± {ss['test_accuracy_std']:.2f}%"]
        i = next((i for i, e in enumerate(ss["eps"]) if abs(e - eps) < 1e-9), None)
        return ["—"] if i is None else [f"{ss['adv_accuracy_mean'][i]:.2f} ± {ss['adv_accuracy_std'][i]:.2f}%"]

    def robust(attack: str, eps: float) -> list[str]:
        if not df:
            return []
        try:
            return [fmt_rate(row_at(df["curves"]["robust"][attack], eps))]
        except KeyError:
            return ["—"]

    n_correct = f"first {sw['n_samples']:,} correctly classified test images"
    n_first = (f"first {df['parameters']['n_samples']:,} test images, unfiltered" if df else "")
    rows = [["clean test accuracy (10,000 images)", f"{o['test_accuracy']:.2f}%"] + seeds()
            + [f"{tr['test_accuracy']:.2f}%"] + ([f"{df['clean_test_accuracy']['robust']:.2f}%"] if df else [])]
    if ss and "recalibrated_test_accuracy_mean" in ss:  # a seed study from before it recorded them has no such row
        rows.append(["the same, BatchNorm statistics recomputed on training images", "—",
                     f"{ss['recalibrated_test_accuracy_mean']:.2f} ± {ss['recalibrated_test_accuracy_std']:.2f}%",
                     "—"] + (["—"] if df else []))
    for eps, value in o["adv_accuracy"].items():
        try:
            r = row_at(sw["rows"], eps)
        except KeyError:
            continue
        rows.append([f"FGSM accuracy, ε = {eps} ({r['eps_pixel']:.3f} px), {n_correct}", f"{value:.2f}%"]
                    + seeds(eps) + [fmt_rate(r["adv_accuracy"])] + ["—"] * bool(df))
    if df:
        e = max(df["parameters"]["eps_grid"])
        rows.append([f"FGSM accuracy, ε = {e} ({e / 2:.3f} px), {n_first}", "—"] + (["—"] if ss else [])
                    + [fmt_rate(row_at(df["curves"]["standard"]["fgsm"], e))] + robust("fgsm", e))
        rows.append([f"PGD-{df['parameters']['pgd_steps']} accuracy, ε = {e} ({e / 2:.3f} px), {n_first}", "—"]
                    + (["—"] if ss else []) + [fmt_rate(row_at(df["curves"]["standard"]["pgd"], e))] + robust("pgd", e))
    seeds_blank, robust_blank = ["—"] * bool(ss), ["—"] * bool(df)
    rows += autoattack_rows(metrics, seeds_blank, robust_blank)
    rows.append([f"mean confidence at ε = {cf['focus_eps']}, clean → FGSM", f"{o['clean_confidence']:.1f}% → "
                 f"{o['adv_confidence']:.1f}%" if cf["focus_eps"] == o["focus_eps"] else "—"] + seeds_blank
                + [f"{cf['clean_confidence']:.1f}% → {cf['adv_confidence']:.1f}%"] + robust_blank)
    rows.append([f"confidence as attack detector at ε = {cf['focus_eps']}: ROC AUC / TPR at 5% FPR",
                 "\"cannot threshold\""] + seeds_blank
                + [f"{cf['detector']['auc']:.3f} / {cf['detector']['tpr_at_5fpr']:.1f}%"] + robust_blank)
    return markdown_table(headers, rows)


def autoattack_rows(metrics: dict, seeds_blank: list[str], robust_blank: list[str]) -> list[list[str]]:
    """The comparison table's AutoAttack rows (headline eps of 08_robustness), and the robust model's seed means."""
    rb, ss = metrics.get("robustness"), metrics.get("seed_study")
    rows = []
    if rb:
        aa = rb["autoattack"]
        for eps in rb["parameters"]["aa_eps"]:
            found = {m: next((r for r in aa.get(m, []) if abs(r["eps"] - eps) < 1e-9), None)
                     for m in ("standard", "robust")}
            cell = {m: "—" if r is None else fmt_rate(r["accuracy"]) for m, r in found.items()}
            n = {r["n"] for r in found.values() if r is not None}
            where = f"first {n.pop():,} test images, unfiltered" if len(n) == 1 else "n differs: see stage 8"
            rows.append([f"AutoAttack accuracy, ε = {eps:g} ({eps / 2:g} px), {where}", "—"] + seeds_blank
                        + [cell["standard"]] + ([cell["robust"]] if robust_blank else []))
    rs = (ss or {}).get("robust")
    if rs and robust_blank:
        rows.append([f"robust model over {len(rs['seeds'])} seeds, ε = {rs['eps']:g}: PGD-{rs['pgd_steps']} "
                     f"(first {rs['n']:,} test images)", "—"] + seeds_blank + ["—"]
                    + [f"{rs['pgd']['mean']:.1f} ± {rs['pgd']['std']:.1f}%"])
        rows.append([f"robust model over {len(rs['seeds'])} seeds, ε = {rs['eps']:g}: APGD-CE → APGD-T "
                     f"(first {rs['aa_samples']:,} test images)", "—"] + seeds_blank + ["—"]
                    + [f"{rs['aa']['mean']:.1f} ± {rs['aa']['std']:.1f}%"])
    return rows


def row_at(rows: list[dict], eps: float) -> dict:
    """The sweep row for eps (normalized units); KeyError naming the grid if it is not there."""
    for row in rows:
        if abs(row["eps"] - eps) < 1e-9:
            return row
    raise KeyError(f"eps {eps} is not on the sweep grid {[r['eps'] for r in rows]}")


# ---------------------------------------------------------------------------------------------------------------
# The robustness evaluation (make robust -> figures/robustness/)


def load_robustness(folder: str | os.PathLike) -> dict:
    """The committed robustness evaluation: {"autoattack": {model: [result per eps, by eps]}, "capacity":
    [{"width", "model", "result"} by width], "sanity": {...}}. Models: "standard", "robust" (the 0.15 px-trained
    model of 05) and "threat_w<k>" (the capacity study at the standard threat model). Each result carries the
    "model" provenance (training config, history, weights digest) it was computed on."""
    folder = Path(folder)
    files = sorted(folder.glob("autoattack_*.json"))
    if not files or not (folder / "sanity.json").is_file():
        raise MissingArtifactError(f"no robustness results in {folder}: run `make robust` first (hours on a CPU)")
    aa, capacity = {}, []
    for f in files:
        blob = read_json(f)
        name = f.stem[len("autoattack_"):].rsplit("_eps", 1)[0]
        if name.startswith("threat_w"):
            capacity.append({"width": int(name[len("threat_w"):]), "model": blob["model"], "result": blob["result"]})
        else:
            aa.setdefault(name, []).append({**blob["result"], "model": blob["model"]})
    for rows in aa.values():
        rows.sort(key=lambda r: r["eps"])
    capacity.sort(key=lambda c: c["width"])
    return {"autoattack": aa, "capacity": capacity, "sanity": read_json(folder / "sanity.json")}


def autoattack_table(aa: dict, curves: dict | None = None, eps: list[float] | None = None) -> str:
    """Markdown: per eps (normalized and px) of ``eps`` (default: every eps of ``aa``), each model's AutoAttack
    accuracy [95% CI], beside its FGSM and PGD accuracy from 05_defense's ``curves`` ({model: {"fgsm", "pgd": rows}})
    when given. One table, one n: every number in it is on the same images, whose count the header states (a
    ValueError names the cells that are not); a grid on fewer images is its own table, never set beside this one."""
    models = [m for m in ("standard", "robust") if m in aa] + sorted(set(aa) - {"standard", "robust"})
    all_eps = sorted({r["eps"] for m in models for r in aa[m]}) if eps is None else sorted(eps)
    cells: dict[tuple, dict] = {}
    for e in all_eps:
        for m in models:
            for attack in ("fgsm", "pgd") if curves is not None else ():
                try:
                    cells[(e, m, attack)] = row_at(curves[m][attack], e)
                except KeyError:
                    pass
            r = next((r for r in aa[m] if abs(r["eps"] - e) < 1e-9), None)
            if r is not None:
                cells[(e, m, "aa")] = r["accuracy"]
    sizes = {c["n"] for (_, _, a), c in cells.items() if a == "aa"}
    if len(sizes) > 1:
        raise ValueError("a table mixes sample sizes " + ", ".join(
            f"{m} AutoAttack at eps {e:g}: n = {c['n']}" for (e, m, a), c in sorted(cells.items()) if a == "aa"))
    note = ""
    other = sorted({c["n"] for (_, _, a), c in cells.items() if a != "aa"} - sizes)
    if other and sizes:  # curves of a run on other images (a small run beside the committed results): left out
        cells = {k: c for k, c in cells.items() if k[2] == "aa" or c["n"] in sizes}
        note = (f" Stage 5's FGSM and PGD curves of this run are on n = {', '.join(f'{k:,}' for k in other)} "
                "images, not these: they are left out.")
    sizes = sizes or {c["n"] for c in cells.values()}
    n = f"n = {sizes.pop():,}" if sizes else "no results"
    headers = ["ε (normalized)", "ε (px)"]
    for m in models:
        headers += ([f"{m}: FGSM", f"{m}: PGD"] if curves is not None else []) + [f"{m}: AutoAttack [95% CI]"]
    rows = []
    for e in all_eps:
        row = [f"{e:g}", f"{e / 2:g}"]
        for m in models:
            for attack in ("fgsm", "pgd", "aa") if curves is not None else ("aa",):
                c = cells.get((e, m, attack))
                row.append("—" if c is None else (fmt_rate(c, 1) if attack == "aa" else f"{c['value']:.1f}%"))
        rows.append(row)
    return f"All on the same {n} images.{note}\n\n" + markdown_table(headers, rows)


def per_attack_table(result: dict) -> str:
    """Markdown: which attack of the ensemble broke how many images first (and what it cost) in one result."""
    rows = [["clean mistakes", "—", str(result["n"] - result["clean"]), "—"]]
    rows += [[r["attack"], f"{r['attacked']:,}", f"{r['broke']:,}", f"{r['seconds']:.0f}"] for r in result["per_attack"]]
    rows.append(["still correct (robust)", "—", f"{result['robust']:,} of {result['n']:,}", "—"])
    return markdown_table(["attack (in order)", "images attacked", "broken first by it",
                           "seconds (wall time of its jobs)"], rows)


def checklist_table(rows: list[dict]) -> str:
    """Markdown of :func:`study.sanity.checklist` rows (each check names its tolerance)."""
    return markdown_table(["check (Carlini et al. 2019)", "numbers", "verdict"],
                          [[r["check"], r["numbers"], "passed" if r["passed"] else "**FAILED**"] for r in rows])


def capacity_rows(capacity: list[dict]) -> list[dict]:
    """One row per width of the capacity study: parameters, clean test accuracy of the kept epoch, its PGD-10
    check, AutoAttack accuracy (rate dict) at the threat model's eps, training seconds."""
    out = []
    for c in capacity:
        h = c["model"]["history"]
        kept = (h["kept_epoch"] or len(h["test_accuracy"])) - 1
        out.append({"width": c["width"], "parameters": c["model"]["parameters"],
                    "clean_test_accuracy": h["test_accuracy"][kept] if h["test_accuracy"] else None,
                    "pgd_check": h["pgd_check_accuracy"][kept] if h["pgd_check_accuracy"] else None,
                    "kept_epoch": kept + 1, "epochs": len(h["test_accuracy"]), "eps": c["result"]["eps"],
                    "autoattack": c["result"]["accuracy"], "train_seconds": sum(h["seconds"]),
                    "aa_seconds": sum(r["seconds"] for r in c["result"]["per_attack"])})
    return out


def capacity_table(rows: list[dict]) -> str:
    return markdown_table(
        ["width", "parameters", "clean test accuracy (kept epoch)", "PGD-10 check (held-out train)",
         "AutoAttack accuracy [95% CI] (n)", "training (s, wall)"],
        [[f"{r['width']}×", f"{r['parameters']:,}",
          "—" if r["clean_test_accuracy"] is None else f"{r['clean_test_accuracy']:.2f}% (epoch {r['kept_epoch']}"
          f" of {r['epochs']})",
          "—" if r["pgd_check"] is None else f"{r['pgd_check']:.1f}%",
          f"{fmt_rate(r['autoattack'], 1)} ({r['autoattack']['n']})", f"{r['train_seconds']:.0f}"] for r in rows])


def load_robust_seed_runs(folder: str | os.PathLike) -> dict[int, dict]:
    """{seed: robust-model numbers} from a seed study's robust_<k>.json files (robust_eval.seed_metrics), or {}."""
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
    if [c["width"] for c in rb["capacity"]] != sorted(params["tm_widths"]):
        out.append(f"capacity study widths {[c['width'] for c in rb['capacity']]}, parameters ask {params['tm_widths']}")
    want = {"epochs": params["tm_epochs"], "lr": params["tm_lr"], "adv_eps": params["tm_eps"], "seed": params["seed"],
            "eps_ramp_epochs": params["tm_ramp_epochs"], "adversarial": params["tm_mode"],
            "adv_pgd_steps": params["tm_pgd_steps"]}
    for c in rb["capacity"]:
        have = {k: c["model"]["train_config"].get(k) for k in want}
        if have != want:
            out.append(f"capacity model {c['width']}x trained with {have}, parameters ask {want}")
        if c["result"]["n"] != params["tm_samples"]:
            out.append(f"capacity model {c['width']}x: {c['result']['n']} images, parameters ask {params['tm_samples']}")
    s = rb["sanity"]["result"]
    if (s["eps"], [r["eps"] for r in s["sweep"]], s["square_vs_apgd"]["n"]) != (
            params["sanity_eps"], list(params["sanity_eps_sweep"]), params["square_samples"]):
        out.append("sanity checks: computed at other settings (sanity_eps, sanity_eps_sweep, square_samples)")
    return out


def robust_bands(spread: dict, k: float = BAND_K) -> dict[str, tuple[str, tuple[float, float]]]:
    """{key: (label, band)} of the robust model's clean, PGD and AutoAttack (APGD-CE -> APGD-T) accuracy: the robust
    seeds' median ± k scaled MADs (:func:`seed_band`). spread: the seed_study section's "robust"
    (:func:`robust_seed_spread`, whose "values" are the seeds' numbers)."""
    labels = {"clean": "clean accuracy", "pgd": f"PGD-{spread['pgd_steps']} accuracy",
              "aa": "APGD-CE -> APGD-T accuracy"}
    return {key: (label, seed_band(spread[key]["values"], k)) for key, label in labels.items()}


MAX_BAND_WIDTH = 50.0  # pp: a band covering more than half of [0, 100]% would judge nothing; it is not used


def too_wide(band: tuple[float, float]) -> bool:
    """Whether a band is too wide to be a check (wider than MAX_BAND_WIDTH percentage points)."""
    return band[1] - band[0] > MAX_BAND_WIDTH


def outside_robust_band(numbers: dict, spread: dict, k: float = BAND_K) -> list[str]:
    """The robust-model numbers of a re-run (:func:`study.sanity.seed_metrics`) outside the committed robust
    seeds' bands (:func:`robust_bands`), one line each with the value, the band's bounds and its width ([] if
    none). A band wider than MAX_BAND_WIDTH is no check and judges nothing (AutoAttack on 100 images, whose seeds
    spread over tens of points: :func:`too_wide`). What the bands catch: a model whose adversarial training did not
    happen (PGD accuracy near 0, tens of points below the band's lower end) or went badly wrong; their upper ends
    reach 100%, so an attack that stopped working (PGD accuracy near the clean one) is not caught here."""
    out = []
    for key, (label, band) in robust_bands(spread, k).items():
        if not too_wide(band):
            out += outside_band(f"robust model {label} at eps {spread['eps']:g}:", numbers[key]["value"], band)
    return out


def autoattack_summary(rb: dict, curves: dict, pgd_steps: int) -> str:
    """The narrative's AutoAttack paragraph (markdown) from metrics.json's ``robustness`` section ``rb``: per headline
    eps both models' AutoAttack accuracy beside stage 5's PGD (``curves``), which attack broke how many images
    first, the APGD cross-check, and the sanity checklist."""
    aa, x, checks = rb["autoattack"], rb["apgd_crosscheck"], rb["sanity"]["checks"]

    def at(model: str, eps: float) -> dict:
        return next(r for r in aa[model] if abs(r["eps"] - eps) < 1e-9)

    def pgd_at(model: str, eps: float, n: int) -> str:
        try:
            row = row_at(curves[model]['pgd'], eps)
        except KeyError:
            return "not on stage 5's grid"
        return f"{row['value']:.1f}%" + (f", on {row['n']:,} other images" if row["n"] != n else " on the same images")

    lines = []
    for eps in rb["parameters"]["aa_eps"]:
        r, s = at("robust", eps), at("standard", eps)
        first = ", ".join(f"{p['attack']} {p['broke']}" for p in r["per_attack"] if p["broke"])
        lines.append(f"- **ε = {eps:g} ({eps / 2:g} px)**: the robust model keeps **{fmt_rate(r['accuracy'], 1)}** "
                     f"under AutoAttack on {r['n']:,} images (PGD-{pgd_steps}: {pgd_at('robust', eps, r['n'])}); the "
                     f"standard model {fmt_rate(s['accuracy'], 1)}. Images broken first, by attack: {first or 'none'}.")
    failed = [k["check"] for k in checks if not k["passed"]]
    zero = next((k.get("zero_at") for k in checks if "zero_at" in k), None)
    sn, mp = rb["sanity"]["numbers"], rb["sanity"]["numbers"].get("margin_pgd")
    tol = next((k["tolerance"] for k in checks if k.get("key") == "order"), 0.0)
    gap = sn["pgd"]["value"] - at("robust", rb["sanity"]["eps"])["accuracy"]["value"]
    confirmed = all(k["passed"] for k in checks if k.get("key") == "independent")
    why = (f" PGD-{sn['pgd']['steps']} from one start leaves {gap:.1f} pp more than AutoAttack at "
           f"ε = {rb['sanity']['eps']:g}: on its own it overstates this model's robustness, so the number to report is "
           "AutoAttack's" + (", which the independent attack confirms" if mp and confirmed else "") + "."
           if gap > tol else "")
    return ("The robust model was evaluated again with the field's standard ensemble, AutoAttack (APGD-CE, APGD-T, "
            "FAB-T and the gradient-free Square attack, the official code; stage 8), on the first test images, "
            "unfiltered (a clean mistake counts as a failure, as published numbers count):\n\n" + "\n".join(lines)
            + f"\n\nAPGD-CE from AutoAttack and from torchattacks (a port of the official code, so this checks the "
              f"wrapping and units, not the attack) agree on {x['agree']:,} of {x['n']:,} images "
              f"({fmt_rate(x['autoattack']['accuracy'], 1)} vs {fmt_rate(x['torchattacks']['accuracy'], 1)})."
            + (f" This project's own attack, written independently (margin loss, its own step schedule, "
               f"{mp['restarts']} restarts of {mp['steps']} steps), leaves {fmt_rate(mp, 1)} at "
               f"ε = {rb['sanity']['eps']:g}." if mp else "")
            + " The sanity checks of Carlini et al.: "
            + (f"all {len(checks)} pass" if not failed else f"{len(failed)} of {len(checks)} FAIL ({'; '.join(failed)})")
            + (f"; PGD accuracy reaches ~0 at ε = {zero:g} ({zero / 2:g} px)." if zero is not None else ".")
            + why + "\n\n" + checklist_table(checks))


def capacity_summary(rb: dict, target_robust: float = 80.0, target_clean: float = 98.0) -> str:
    """The narrative's paragraph on the standard threat model and the capacity study (markdown)."""
    tm = rb["parameters"]["tm_eps"]
    there = [f"{r['accuracy']['value']:.1f}% ({name})" for name in ("robust", "standard")
             for r in rb["autoattack"].get(name, []) if abs(r["eps"] - tm) < 1e-9]
    cap = rb["capacity"]
    met = any(r["autoattack"]["value"] >= target_robust and (r["clean_test_accuracy"] or 0) >= target_clean
              for r in cap)
    return (f"**The standard threat model, ε = {tm / 2:g} px ({tm:g} normalized).** "
            + (f"The models above fall to {' and '.join(there)} under AutoAttack there: the robust model was "
               "trained at a smaller ε. " if there else "")
            + "Trained for it (Figure 13; one seed per width, AutoAttack on the first "
            + f"{cap[0]['autoattack']['n'] if cap else 0} test images the standard model classifies correctly, an "
            "earlier protocol than the unfiltered one above: this study is to be redone), the same architecture reaches "
            + "; ".join(f"{r['autoattack']['value']:.1f}% AutoAttack accuracy with {r['clean_test_accuracy']:.2f}% "
                        f"clean at {r['width']}× width ({r['parameters']:,} parameters)" for r in cap)
            + (f". The target (≥ {target_robust:g}% AutoAttack, ≥ {target_clean:g}% clean) is met." if met else
               f". The target (≥ {target_robust:g}% AutoAttack with ≥ {target_clean:g}% clean; Wong et al.'s "
               "166k-parameter model reaches 82.9%) is not met at these widths and this training budget."))
