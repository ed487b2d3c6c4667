"""End to end: the report's pipeline (advlib.pipeline.run_pipeline: papermill over the stage notebooks) after
installation, timed per stage, in a child process, on a copy of the notebooks in a temporary folder, so the
committed notebooks, figures and artifacts are never touched. Peak memory of the whole report comes with it."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, Settings, loadavg, run_child


def pipeline_missing() -> str | None:
    """Why the pipeline cannot be measured, or None."""
    try:
        from advlib import pipeline
    except ImportError as e:
        return f"advlib.pipeline is not importable ({e})"
    if not hasattr(pipeline, "run_pipeline"):
        return "advlib.pipeline has no run_pipeline()"
    missing = [s for s in getattr(pipeline, "STAGES", []) if not (ROOT / "notebooks" / f"{s}.ipynb").is_file()]
    if missing:
        return f"stage notebooks missing: {missing}"
    return None


def run(settings: Settings, data_root: str, say=print) -> dict:
    if not settings.pipeline:
        return {"not_measured": f"skipped in --{settings.mode} mode (the full report takes minutes)"}
    reason = pipeline_missing()
    if reason:
        return {"not_measured": reason}
    from advlib.pipeline import STAGES

    load = [loadavg()]
    with tempfile.TemporaryDirectory(prefix="advlib-bench-e2e-") as tmp:
        notebooks = Path(tmp) / "notebooks"
        notebooks.mkdir()
        for stage in STAGES:
            shutil.copy2(ROOT / "notebooks" / f"{stage}.ipynb", notebooks)
        say(f"  python -m advlib.pipeline equivalent: {len(STAGES)} stages into {tmp} ...")
        report = run_child(["pipeline", "--data-root", str(Path(data_root).resolve()), "--notebook-dir",
                            str(notebooks), "--work-dir", tmp], timeout=3600)
    load.append(loadavg())
    upper = report["self_peak_rss_mb"] + report["children_peak_rss_mb"]
    return {"stages": STAGES, "stage_seconds": report["stage_seconds"], "pipeline_seconds": report["seconds"],
            "process_wall_s": report["wall_s"], "papermill_process_peak_rss_mb": report["self_peak_rss_mb"],
            "largest_kernel_peak_rss_mb": report["children_peak_rss_mb"],
            "peak_rss_upper_bound_mb": upper, "sampled_tree_rss_peak_mb": report["tree_rss_peak_mb"],
            "loadavg": load,
            "note": "kernels run one after another; upper bound = papermill process peak + largest kernel peak"}
