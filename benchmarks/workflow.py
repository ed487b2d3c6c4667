"""The report's workflow (the Snakefile) timed as a user meets it, in a copy of the repository (never this tree):

- from scratch: ``snakemake --cores 2 run --config run_dir=build/bench`` after installation (data linked, venv
  installed, no model and no executed notebook yet): what ``make report`` runs, without publishing; then the same
  on Fashion-MNIST (``dataset=fashion_mnist``, its own run folder), in the same copy, one after the other;
- incremental: the same command again after changing one figure's function in ``study/figures.py`` (its stage
  and the narrative re-run, no model retrains), after changing ``notebooks/06_report.ipynb`` (the narrative), and
  after changing the figures' shared style (every stage notebook re-runs);
- peak memory: each notebook kernel's and each training job's peak resident memory (VmHWM), sampled;
- the seed study as the target counts it, training + sweep per seed: ``snakemake --cores 2
  figures/seed_study/.published --config seeds=0-9`` (the standard model's part of ``make seeds``), or 2 seeds
  extrapolated to 10;
- ``make test`` (only when asked: it takes minutes).
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks.common import ROOT, Settings, Watched, loadavg, watch

CORES = 2  # the targets are stated for 2 cores
RUN_DIR = "build/bench"
SEED_STUDY_SEEDS = 10  # the target's seed count
# Changes Snakemake sees (it compares checksums and params, so a mere touch re-runs nothing): {what: (file, old
# text, new text, description)}. "plot" and "narrative" are the target's; "style" (every figure) is shown beside.
CHANGED = {
    "plot": ("study/figures.py", '"max-softmax confidence (%)"', '"max-softmax confidence, %"',
             "one figure (Figure 8's axis label in study/figures.py)"),
    "narrative": ("notebooks/06_report.ipynb", "## Objective", "## Objective.",
                  "the narrative (notebooks/06_report.ipynb)"),
    "style": ("advlib/viz.py", '"font.size": 11,', '"font.size": 12,',
              "the shared figure style (advlib/viz.py's _STYLE: every figure)"),
}


def change(repo: Path, what: str) -> str:
    """Apply CHANGED[what] in the copy; returns its description."""
    path, old, new, description = CHANGED[what]
    text = (repo / path).read_text()
    if old not in text:
        raise RuntimeError(f"benchmarks/workflow.py: {old!r} is no longer in {path}; update CHANGED")
    (repo / path).write_text(text.replace(old, new, 1))
    return description


def copy_clone(dest: Path) -> Path:
    """What a clone holds (tracked files and new files git does not ignore) copied to dest, with data/ and .venv
    linked to this tree's, as tests/conftest.py's copy_repo does."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (ROOT / name).is_file():  # a file deleted in the working tree is still listed
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, dest / name)
    for name in ("data", ".venv"):
        (dest / name).symlink_to(ROOT / name)
    # make in the copy must never reinstall the shared venv (an editable install from the copy would point it there)
    stamp = ROOT / ".venv" / ".installed"
    if not stamp.is_file() or stamp.stat().st_mtime < (ROOT / "pyproject.toml").stat().st_mtime:
        raise RuntimeError("the venv is older than pyproject.toml: run `make data` first")
    os.utime(dest / "pyproject.toml", (stamp.stat().st_mtime - 60,) * 2)
    return dest


def jobs(watched: Watched) -> dict:
    """{job: {"seconds", "peak_rss_mb"}} from the sampled process tree: each notebook job (its papermill process's
    lifetime; peak: its kernel's) and each model-training job. Lifetimes and peaks are sampled (every 0.2 s)."""
    procs = watched.processes
    out = {}

    def job_of(pid: int) -> str | None:
        cmd = procs[pid]["cmd"]
        if not cmd or cmd.split()[0].endswith("sh"):  # snakemake's bash -c wrapper holds the same words
            return None
        if m := re.search(r"-m study\.workflow notebook \S*?(\w+)\.ipynb", cmd):
            return m.group(1)
        if m := re.search(r"-m study\.jobs pgd --model (\w+)\.pt(?: --part (\d+))?", cmd):
            return f"PGD curve of {m.group(1)}.pt" + (f", part {m.group(2)}" if m.group(2) else "")
        if m := re.search(r"-m study\.models (\w+)", cmd):
            return f"train {m.group(1)} model"
        return None

    for pid, p in procs.items():
        if (name := job_of(pid)) is None:
            continue
        record = {"seconds": p["last_s"] - p["first_s"], "peak_rss_mb": p["peak_rss_mb"]}
        # a fork the job makes to run a helper shows the job's command line until it execs (one run recorded a PGD
        # job as 0.0 s that way): the job is the longest-lived process of its name
        if name not in out or record["seconds"] > out[name]["seconds"]:
            out[name] = record
    for pid, p in procs.items():
        if "ipykernel" in p["cmd"] and procs.get(p["ppid"]) and (name := job_of(p["ppid"])):
            out[name].update(papermill_peak_rss_mb=out[name]["peak_rss_mb"], peak_rss_mb=p["peak_rss_mb"])
    return dict(sorted(out.items()))


def snakemake(repo: Path, target: str, config: list[str], timeout: float) -> dict:
    cmd = [sys.executable, "-m", "snakemake", "--cores", str(CORES), target, *(["--config", *config] if config else [])]
    done = watch(cmd, cwd=repo, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {done.returncode}) in {repo}:\n{done.stderr[-3000:]}")
    return {"command": " ".join(["snakemake", *cmd[3:]]), "seconds": done.wall_s, "jobs": jobs(done)}


def run(settings: Settings, say=print, all_seeds: bool = False, scratch_only: bool = False) -> dict:
    """The workflow section. all_seeds: the seed study with all 10 seeds (else 2, extrapolated). scratch_only: only
    the two runs from scratch (MNIST, Fashion-MNIST), without the incremental runs and the seed study."""
    if not settings.workflow:
        return {"not_measured": f"skipped in --{settings.mode} mode (the workflow takes minutes)"}
    load = [loadavg()]
    config = [f"run_dir={RUN_DIR}", *settings.workflow_config]
    section = {"cores": CORES, "config": config}
    with tempfile.TemporaryDirectory(prefix="advlib-bench-workflow-") as tmp:
        repo = copy_clone(Path(tmp) / "repo")
        say(f"  from scratch: snakemake --cores {CORES} run --config {' '.join(config)} (in {repo}) ...")
        section["from_scratch"] = snakemake(repo, "run", config, timeout=3600)
        fm_config = [f"run_dir={RUN_DIR}_fashion_mnist", "dataset=fashion_mnist", *settings.workflow_config]
        say(f"  Fashion-MNIST from scratch: snakemake --cores {CORES} run --config {' '.join(fm_config)} ...")
        section["fashion_mnist_from_scratch"] = snakemake(repo, "run", fm_config, timeout=3600)
        for what in () if scratch_only else CHANGED:
            description = change(repo, what)
            say(f"  again after changing {description} ...")
            section[f"after_{what}_change"] = {"changed": description, **snakemake(repo, "run", config, timeout=1800)}
        seeds = SEED_STUDY_SEEDS if all_seeds else 2
        if scratch_only:
            seeds = 0
        say(f"  seed study, seeds 0-{seeds - 1} ..." if seeds else "  (--scratch-only: no seed study)")
        # the target's seed study: training + sweep per seed (publish_seeds); `make seeds` also retrains and
        # attacks the robust model per seed (publish_robust_seeds), which the target does not count
        if seeds:
            study = snakemake(repo, "figures/seed_study/.published", [f"seeds=0-{seeds - 1}",
                                                                       *settings.workflow_config], timeout=7200)
            section["seed_study"] = {**study, "seeds": seeds, "extrapolated": seeds != SEED_STUDY_SEEDS,
                                     "seconds_for_10_seeds": study["seconds"] * SEED_STUDY_SEEDS / seeds}
    kernels = {k: v for k, v in section["from_scratch"]["jobs"].items() if "papermill_peak_rss_mb" in v}
    largest = max(kernels, key=lambda k: kernels[k]["peak_rss_mb"]) if kernels else None
    section["largest_kernel"] = {"stage": largest, "peak_rss_mb": kernels[largest]["peak_rss_mb"]} if largest else None
    load.append(loadavg())
    section["loadavg"] = load
    return section


def make_test(say=print) -> dict:
    """`make test` in a copy of the repository (the test models are trained there from scratch), timed."""
    with tempfile.TemporaryDirectory(prefix="advlib-bench-make-test-") as tmp:
        repo = copy_clone(Path(tmp) / "repo")
        # this benchmark rewrites results.md after every section: the copy gets the committed one, which the README
        # test compares with the README (a half-written one would fail it)
        for name in ("results.json", "results.md"):
            committed = subprocess.run(["git", "show", f"HEAD:benchmarks/{name}"], cwd=ROOT, capture_output=True)
            if committed.returncode == 0:
                (repo / "benchmarks" / name).write_bytes(committed.stdout)
        say(f"  make test in {repo} ...")
        done = watch(["make", "--no-print-directory", "test"], cwd=repo, timeout=3600, interval=1.0)
    # what failed, and why (pytest's "E" lines), beside the tail: the tail alone keeps only the summary
    why = [line for line in done.stdout.splitlines() if line.startswith(("E ", "FAILED ", "ERROR "))]
    return {"seconds": done.wall_s, "returncode": done.returncode, "failures": why[:60],
            "stdout_tail": done.stdout[-2000:]}
