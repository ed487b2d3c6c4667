"""Shared pieces of the benchmarks: run settings, timing statistics, the machine record, child processes.

Timing rules used everywhere: warm-up runs first (not timed), then several timed repetitions; a result is
reported as its median with the spread (min, max, quartiles) and every raw run. Wall-clock time
(time.perf_counter) is what is reported; the machine's load average is recorded next to each section because
other processes on a 2-core machine change wall times a lot.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
from benchmarks import EPS_GRID  # noqa: F401 - re-exported for the section modules


@dataclass(frozen=True)
class Settings:
    """How much work each section does. ``full`` is the real measurement; ``smoke`` only proves it runs."""

    mode: str
    train_steps: int  # optimizer steps per timed training run (batch 64)
    train_repeats: int
    epoch_seeds: int  # one epoch of each pipeline for seeds 0..epoch_seeds-1, judged for accuracy
    train_images_for_accuracy: int | None  # None: all of them (the "full epoch")
    test_images_for_accuracy: int | None  # None: all 10,000
    sweep_images: int  # the "1,000 correctly classified test images"
    loop_repeats: int  # the per-image loop is slow: fewer repetitions
    sweep_repeats: int
    full_sweep_images: int  # the "whole test set"
    full_sweep_repeats: int
    peer_batch: int  # torchattacks batch size on the whole test set (one batch of 10,000 needs ~5 GB)
    slider_moves: int
    slider_builds: int
    workflow: bool  # run the Snakemake workflow (from scratch, incremental, seed study) in a copy of the repository
    workflow_config: tuple[str, ...]  # its --config words (none: the report's own parameters)
    matmul_n: int


QUICK_WORKFLOW = ("epochs=1", "train_subset=5000", "n_samples=200", "pgd_steps=3")  # as `make quick`
SETTINGS = {
    "full": Settings("full", train_steps=300, train_repeats=3, epoch_seeds=3, train_images_for_accuracy=None,
                     test_images_for_accuracy=None, sweep_images=1000, loop_repeats=3, sweep_repeats=5,
                     full_sweep_images=10_000, full_sweep_repeats=3, peer_batch=1000, slider_moves=200,
                     slider_builds=3, workflow=True, workflow_config=(), matmul_n=2048),
    "quick": Settings("quick", train_steps=100, train_repeats=2, epoch_seeds=2, train_images_for_accuracy=12_800,
                      test_images_for_accuracy=None, sweep_images=1000, loop_repeats=1, sweep_repeats=3,
                      full_sweep_images=10_000, full_sweep_repeats=1, peer_batch=1000, slider_moves=100,
                      slider_builds=1, workflow=True, workflow_config=QUICK_WORKFLOW, matmul_n=1024),
    "smoke": Settings("smoke", train_steps=3, train_repeats=1, epoch_seeds=2, train_images_for_accuracy=640,
                      test_images_for_accuracy=500, sweep_images=16, loop_repeats=1, sweep_repeats=1,
                      full_sweep_images=64, full_sweep_repeats=1, peer_batch=32, slider_moves=5, slider_builds=1,
                      workflow=False, workflow_config=(), matmul_n=128),
}


# ---------------------------------------------------------------------------------------------------------------
# Statistics


def percentile(samples: list[float], q: float) -> float:
    """The q-th percentile (0-100) of samples, interpolating linearly between order statistics."""
    s = sorted(samples)
    pos = q / 100 * (len(s) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summarize(samples: list[float]) -> dict:
    """median, min, max, first and third quartile (linear interpolation) and the raw runs."""
    return {"median": percentile(samples, 50), "min": min(samples), "max": max(samples),
            "q1": percentile(samples, 25), "q3": percentile(samples, 75), "n": len(samples), "runs": list(samples)}


def time_interleaved(runs: dict[str, Callable[[], object]], repeats: int, warmup: bool = True,
                     self_timed: bool = False) -> tuple[dict, dict]:
    """Time several methods fairly on a machine whose load changes: an untimed warm-up call of each (unless
    warmup is False, e.g. when an earlier section already ran them), then `repeats` rounds in which each runs
    once in turn. self_timed: each run returns its own seconds (so that its setup -- a fresh model, worker
    processes, warm-up steps -- stays outside the timing); otherwise the whole call is timed.
    Returns ({name: seconds summary}, {name: last result})."""
    results = {name: run() for name, run in runs.items()} if warmup else {}
    seconds = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            results[name] = run()
            seconds[name].append(results[name] if self_timed else time.perf_counter() - start)
    return {name: summarize(s) for name, s in seconds.items()}, results


def per_second(seconds: dict, work: float) -> dict:
    """A seconds summary -> a work-per-second summary (the slowest run gives the min)."""
    return summarize([work / t for t in seconds["runs"]])


# ---------------------------------------------------------------------------------------------------------------
# The machine


def loadavg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def package_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def machine_info() -> dict:
    from advlib.checkpoint import git_revision
    from advlib.parallel import usable_cores

    return {
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "python": platform.python_version(),
        "torch": str(torch.__version__),
        "torchvision": package_version("torchvision"),
        "torchattacks": package_version("torchattacks"),
        "torch_num_threads": torch.get_num_threads(),
        "torch_num_interop_threads": torch.get_num_interop_threads(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "git_revision": git_revision(ROOT),
        "loadavg_at_start": loadavg(),
    }


# ---------------------------------------------------------------------------------------------------------------
# Child processes (peak memory, the workflow runs)


def _process_tree(pid: int) -> dict[int, dict]:
    """{pid: {"ppid", "cmd", "rss", "hwm"}} of pid and all its descendants (Linux /proc; rss and hwm in bytes:
    resident memory now and at its peak so far)."""
    out, todo = {}, [pid]
    while todo:
        p = todo.pop()
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{p}/status").read_text().splitlines())
            cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
            out[p] = {"ppid": int(status["PPid"]), "cmd": cmd,
                      "rss": int(status.get("VmRSS", "0 kB").split()[0]) * 1024,
                      "hwm": int(status.get("VmHWM", "0 kB").split()[0]) * 1024}
            for task in Path(f"/proc/{p}/task").iterdir():
                todo += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, KeyError):
            continue  # the process ended meanwhile
    return out


@dataclass
class Watched:
    """A finished child process and what sampling its process tree saw. processes: {pid: {"ppid", "cmd",
    "peak_rss_mb" (its VmHWM when last seen: a peak in its last sampling interval is missed), "first_s", "last_s"
    (seconds after the start at which it was first and last seen)}}."""

    returncode: int
    stdout: str
    stderr: str
    wall_s: float
    tree_rss_peak_mb: float  # the largest sum of resident memory over the whole tree at one moment
    processes: dict


def watch(cmd: list[str], *, cwd: Path = ROOT, env: dict | None = None, timeout: float,
          interval: float = 0.2) -> Watched:
    """Run cmd, sampling its process tree every `interval` seconds; raise RuntimeError (with stderr's tail) when it
    runs past `timeout` seconds."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen, peak, done = {}, [0], threading.Event()

    def sample():
        while not done.wait(interval):
            now = time.perf_counter() - start
            tree = _process_tree(proc.pid)
            peak[0] = max(peak[0], sum(p["rss"] for p in tree.values()))
            for pid, p in tree.items():
                rec = seen.setdefault(pid, {"ppid": p["ppid"], "cmd": p["cmd"], "peak_rss_mb": 0, "first_s": now})
                rec["cmd"] = p["cmd"] or rec["cmd"]  # a forked child shows its own command line after exec
                rec["peak_rss_mb"] = max(rec["peak_rss_mb"], p["hwm"] / 2**20)
                rec["last_s"] = now

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"`{' '.join(cmd)}` ran past {timeout:.0f} s; stderr tail:\n{err[-2000:]}") from None
    finally:
        done.set()
        sampler.join()
    return Watched(proc.returncode, out, err, time.perf_counter() - start, peak[0] / 2**20, seen)


def run_child(args: list[str], timeout: float) -> dict:
    """Run ``python -m benchmarks.child ARGS`` (with this process's torch thread count, through OMP_NUM_THREADS)
    and return its JSON report (its last stdout line), plus wall_s (the whole process, imports included) and
    tree_rss_peak_mb (sampled)."""
    cmd = [sys.executable, "-m", "benchmarks.child", *args]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}  # the same threads as this process
    done = watch(cmd, env=env, timeout=timeout)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"`{' '.join(cmd)}` failed (exit {done.returncode}); stderr tail:\n{done.stderr[-2000:]}")
    return {**json.loads(lines[-1]), "wall_s": done.wall_s, "tree_rss_peak_mb": done.tree_rss_peak_mb}


def settings_dict(settings: Settings) -> dict:
    return asdict(settings)
