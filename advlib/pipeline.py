"""Run the study: the stage notebooks, in order, with papermill.

    python -m advlib.pipeline                       # the whole report, notebooks written back in place
    python -m advlib.pipeline --seed 1 --eps-grid 0,0.1,0.2,0.3
    python -m advlib.pipeline -p epochs 1 -p n_samples 200 --output-dir /tmp/run   # a quick run elsewhere
    python -m advlib.pipeline --seed-study 0,1,2,3,4                              # issue: seed-to-seed spread

Each stage's notebook starts with a cell tagged ``parameters``; an override is passed only to the stages that
declare it. A notebook is replaced only once it has run to the end (atomic rename), so a failed stage leaves
the committed notebook intact and its partial output in ``<artifact_dir>/failed/``.
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

STAGES = ["01_train", "02_sweep", "03_confidence", "04_visual_grid", "05_defense", "06_report"]
SEED_STUDY_STAGES = ["01_train", "02_sweep"]
SEED_STUDY_NOTEBOOK = "07_seed_study"
ROOT = Path(__file__).resolve().parents[1]


def declared_parameters(notebook: Path) -> list[str]:
    """The names assigned in a notebook's cell tagged `parameters`."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    cells = [c for c in nb.cells if "parameters" in c.get("metadata", {}).get("tags", [])]
    if not cells:
        raise ValueError(f"{notebook} has no cell tagged 'parameters'")
    tree = ast.parse(cells[0].source)
    return [t.id for node in tree.body if isinstance(node, ast.Assign) for t in node.targets if isinstance(t, ast.Name)]


def run_stage(notebook: Path, output: Path, parameters: dict, cwd: Path, progress: bool = True) -> float:
    """Execute one notebook with papermill into output (atomically); return the wall time in seconds."""
    import papermill as pm

    known = declared_parameters(notebook)
    params = {k: v for k, v in parameters.items() if k in known}
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=".ipynb", dir=output.parent)
    os.close(fd)
    start = time.perf_counter()
    try:
        pm.execute_notebook(str(notebook), tmp, parameters=params, cwd=str(cwd), progress_bar=progress,
                            kernel_name="python3", log_output=False)
    except BaseException:
        failed = Path(parameters.get("artifact_dir", cwd / "../artifacts"))
        if not failed.is_absolute():
            failed = cwd / failed
        (failed / "failed").mkdir(parents=True, exist_ok=True)
        shutil.move(tmp, failed / "failed" / notebook.name)
        print(f"stage {notebook.stem} failed; its partial output is in {failed / 'failed' / notebook.name}",
              file=sys.stderr)
        raise
    os.chmod(tmp, 0o644)  # mkstemp's 0600 would make the committed report private
    os.replace(tmp, output)
    return time.perf_counter() - start


def run_pipeline(notebook_dir: str | os.PathLike = ROOT / "notebooks", output_dir: str | os.PathLike | None = None,
                 parameters: dict | None = None, stages: list[str] | None = None, progress: bool = True) -> dict:
    """Run the stage notebooks in order. Returns {stage: seconds}.

    Args:
        notebook_dir: where the source notebooks are (relative paths inside them resolve from there).
        output_dir: where the executed notebooks go; default: back in place (they are the committed report).
        parameters: overrides, e.g. {"seed": 1, "eps_grid": [0, 0.1]}; each goes to the stages that declare it.
        stages: subset of STAGES to run, in the given order.
    """
    notebook_dir = Path(notebook_dir).resolve()
    output_dir = Path(output_dir).resolve() if output_dir is not None else notebook_dir
    parameters = dict(parameters or {})
    os.environ["PYTHONHASHSEED"] = "0"
    stages = stages or STAGES
    unknown = [s for s in stages if not (notebook_dir / f"{s}.ipynb").is_file()]
    if unknown:
        raise ValueError(f"no notebook for stage(s) {unknown} in {notebook_dir}; "
                         f"stages are {STAGES + [SEED_STUDY_NOTEBOOK]}")
    seconds = {}
    for i, stage in enumerate(stages, 1):
        print(f"[{i}/{len(stages)}] {stage} ...", flush=True)
        seconds[stage] = run_stage(notebook_dir / f"{stage}.ipynb", output_dir / f"{stage}.ipynb", parameters,
                                   cwd=notebook_dir, progress=progress)
        print(f"[{i}/{len(stages)}] {stage} done in {seconds[stage]:.0f} s", flush=True)
    return seconds


def run_seed_study(seeds: list[int], out_dir: str | os.PathLike = ROOT / "figures" / "seed_study",
                   parameters: dict | None = None, progress: bool = True) -> dict:
    """Train and sweep once per seed (stages 01 and 02, in artifacts/seed_study/seed_<k>/), copy each run's
    metrics.json to out_dir/seed_<k>.json, then run the seed-study notebook that draws their spread.
    Returns {seed: seconds}."""
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    seconds = {}
    for seed in seeds:
        work = ROOT / "artifacts" / "seed_study" / f"seed_{seed}"
        params = {**(parameters or {}), "seed": seed, "figure_dir": str(work / "figures"), "artifact_dir": str(work)}
        print(f"=== seed {seed} ===", flush=True)
        times = run_pipeline(output_dir=work / "notebooks", parameters=params, stages=SEED_STUDY_STAGES,
                             progress=progress)
        shutil.copyfile(work / "figures" / "metrics.json", out_dir / f"seed_{seed}.json")
        seconds[seed] = sum(times.values())
    run_pipeline(parameters={"seed_study_dir": str(out_dir)}, stages=[SEED_STUDY_NOTEBOOK], progress=progress)
    return seconds


def _value(text: str):
    """Command-line values: Python/JSON literals when they parse (1, 0.5, None, [0, 0.1]), else the string."""
    for parse in (json.loads, ast.literal_eval):
        try:
            return parse(text)
        except (ValueError, SyntaxError):
            pass
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the adversarial-MNIST study's notebooks with papermill.")
    parser.add_argument("--seed", type=int, help="seed for training and attacks (default: the notebooks' 0)")
    parser.add_argument("--eps-grid", help="comma-separated eps values, normalized units, e.g. 0,0.05,0.1")
    parser.add_argument("--device", help="cpu or cuda")
    parser.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="any notebook parameter, e.g. -p epochs 1 -p n_samples 200")
    parser.add_argument("--stages", help=f"comma-separated subset of {','.join(STAGES)}")
    parser.add_argument("--notebook-dir", default=str(ROOT / "notebooks"), help="where the stage notebooks are")
    parser.add_argument("--output-dir", help="write executed notebooks here instead of in place")
    parser.add_argument("--seed-study", help="comma-separated seeds: run the seed study instead of the report")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)

    params = {name: _value(value) for name, value in args.param}
    if args.seed is not None:
        params["seed"] = args.seed
    if args.device:
        params["device"] = args.device
    if args.eps_grid:
        try:
            params["eps_grid"] = [float(e) for e in args.eps_grid.split(",")]
        except ValueError:
            parser.error(f"--eps-grid must be comma-separated numbers, got {args.eps_grid!r}")
    import papermill as pm

    try:
        if args.seed_study:
            seeds = [int(s) for s in args.seed_study.split(",")]
            run_seed_study(seeds, parameters=params, progress=not args.no_progress)
            print(f"seed study: figures/graph11_seed_spread.png, per-seed metrics in figures/seed_study/")
            return 0
        stages = args.stages.split(",") if args.stages else None
        seconds = run_pipeline(notebook_dir=args.notebook_dir, output_dir=args.output_dir, parameters=params, stages=stages,
                               progress=not args.no_progress)
    except pm.PapermillExecutionError as e:
        print(f"\nerror in {e.exec_count and f'cell {e.exec_count}'}: {e.ename}: {e.evalue}", file=sys.stderr)
        return 1
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    figure_dir = params.get("figure_dir", ROOT / "figures")
    if args.output_dir is None and "figure_dir" not in params and stages is None:
        from advlib import readme  # the full report in place: refresh the README's generated tables too

        readme.main([])
    print(f"\ndone in {sum(seconds.values()):.0f} s: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print(f"figures and metrics.json: {figure_dir}\nexecuted notebooks: {args.output_dir or args.notebook_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
