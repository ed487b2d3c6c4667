"""The pieces the workflow (``Snakefile``) is made of: parameters, one notebook run, and publishing.

The study is a Snakemake workflow (see the Snakefile and the README). Each job runs in a *run directory* laid out
like the repository (``data -> the verified MNIST``, ``artifacts/``, ``figures/``, ``report/``), so the notebooks'
default relative paths (``../data``, ``../figures``, ``../artifacts``) are right in every run and no machine path is
ever injected. Only when every job has succeeded does :func:`publish` copy the run's executed notebooks, figures and
metrics.json into the repository and regenerate the README's tables. A notebook run by hand in the repository's
notebooks/ or report/ works in the scratch run folder build/scratch/ instead (:func:`study.scratch.run_dirs`), never in figures/.

    python -m study.workflow notebook notebooks/02_sweep.ipynb build/run/report/02_sweep.ipynb --params '{...}'
    python -m study.workflow publish build/run
    python -m study.workflow scratch report/06_report.ipynb    # make lab
"""
from __future__ import annotations

import argparse
import ast
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

from advlib.io import atomic_write_bytes

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = ROOT / "notebooks"

STAGES = ["01_train", "02_sweep", "03_confidence", "04_visual_grid", "05_defense", "07_seed_study", "08_robustness",
          "06_report"]
REPORT_NOTEBOOK = "06_report"
# settings of the workflow itself (not notebook parameters), with their defaults (run_dir: MNIST's; another data
# set's run folder is build/<dataset>/run, see run_folder)
WORKFLOW_SETTINGS = {"run_dir": "build/run", "seeds": "0-9", "threads_per_job": 1}
DEFAULT_DATASET = "mnist"  # the study's own; every other data set publishes into report/<name>/ and figures/<name>/


def subfolder(dataset: str) -> str:
    """Where a data set's results live under report/, figures/ and build/: "" for MNIST (the repository's own
    folders), "fashion_mnist/" for Fashion-MNIST."""
    return "" if dataset == DEFAULT_DATASET else f"{dataset}/"


def run_folder(dataset: str) -> str:
    """A data set's default run folder: build/run for MNIST, build/<dataset>/run for another."""
    return f"build/{subfolder(dataset)}run"


def skip_iri_format_checker() -> None:
    """Save about 1.2 s in every process that imports nbformat (papermill, nbconvert, Snakefile parsing).

    nbformat validates notebooks with jsonschema, whose format checkers import ``rfc3987_syntax`` when it is
    installed; that module compiles some 35 Earley grammars at import (python-jsonschema/jsonschema#1428) for the
    "iri" formats, which no notebook schema uses. Marked absent, jsonschema skips that checker (it imports it under
    ``suppress(ImportError)``). Call it before those imports, in a command-line process only: a library import must
    not change what a user's own jsonschema validates."""
    sys.modules.setdefault("rfc3987_syntax", None)


def code_cells(notebook: str | os.PathLike) -> list[dict]:
    """A notebook's code cells as {"source": str, "tags": list}, read as plain JSON: nbformat would cost a stage
    kernel a second of imports (see :func:`skip_iri_format_checker`) for what is only a lookup."""
    nb = json.loads(Path(notebook).read_text(encoding="utf-8"))
    return [{"source": "".join(c["source"]) if isinstance(c["source"], list) else c["source"],
             "tags": c.get("metadata", {}).get("tags", [])} for c in nb["cells"] if c["cell_type"] == "code"]


def declared_parameters(notebook: str | os.PathLike) -> dict:
    """{name: default} of the assignments in a notebook's cell tagged ``parameters`` (literal values only)."""
    cells = [c for c in code_cells(notebook) if "parameters" in c["tags"]]
    if not cells:
        raise ValueError(f"{notebook} has no cell tagged 'parameters'")
    out = {}
    for node in ast.parse(cells[0]["source"]).body:
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Name):
                    out[target.id] = ast.literal_eval(node.value)
    return out


class ConfigError(ValueError):
    """A workflow setting or notebook parameter that does not exist or has a bad value."""


def stage_parameters(notebook_dir: str | os.PathLike = NOTEBOOK_DIR) -> dict[str, dict]:
    """{stage: {parameter: default}} from each stage notebook's ``parameters`` cell."""
    return {s: declared_parameters(Path(notebook_dir) / f"{s}.ipynb") for s in STAGES}


def resolve_config(config: dict, notebook_dir: str | os.PathLike = NOTEBOOK_DIR) -> tuple[dict, dict]:
    """Split the workflow's config into (settings, {stage: parameters}).

    Every key must be a workflow setting or a parameter some stage declares; anything else raises ConfigError
    listing the names that exist (a misspelled override is an error, never a silent no-op). Each stage gets its
    declared defaults with the overrides it declares applied."""
    declared = stage_parameters(notebook_dir)
    known = sorted({name for params in declared.values() for name in params})
    unknown = sorted(k for k in config if k not in known and k not in WORKFLOW_SETTINGS)
    if unknown:
        raise ConfigError(f"unknown parameter(s) {unknown}. Notebook parameters: {', '.join(known)}. "
                          f"Workflow settings: {', '.join(WORKFLOW_SETTINGS)}.")
    config = {k: literal(v) for k, v in config.items()}
    dataset = config.get("dataset", DEFAULT_DATASET)
    check_dataset_parameter(dataset, declared)
    settings = {k: config.get(k, v) for k, v in WORKFLOW_SETTINGS.items()}
    settings["run_dir"] = config.get("run_dir", run_folder(dataset))
    per_stage = {s: {k: config.get(k, v) for k, v in params.items()} for s, params in declared.items()}
    check_focus_eps(per_stage)
    check_ablation_runs(per_stage["08_robustness"])
    return settings, per_stage


def check_dataset_parameter(dataset, declared: dict[str, dict]) -> None:
    """The data set must be one advlib.data knows, and every stage must declare it (so that all of them run on the
    same data). Read without importing torch: the Snakefile calls this."""
    from study.sources import dict_keys

    known = dict_keys("advlib.data", "DATASETS")
    if dataset not in known:
        raise ConfigError(f"dataset = {dataset!r} is not a data set advlib knows: use one of {known} "
                          f"(e.g. --config dataset={known[-1]})")
    missing = [s for s, params in declared.items() if "dataset" not in params]
    if missing:
        raise ConfigError(f"the stages {missing} do not declare the parameter dataset: add `dataset = "
                          f"\"{DEFAULT_DATASET}\"` to their parameters cell")


def literal(value):
    """A command-line value as Python: '1' -> 1, '0.5' -> 0.5, 'None'/'null' -> None, 'true'/'false' -> True/False,
    lists element by element and dicts value by value (Snakemake's --config hands over strings, inside a dict
    too: {"width": "2", "batchnorm": "false"}); anything else stays a string ('fgsm_rs')."""
    if isinstance(value, list):
        return [literal(v) for v in value]
    if isinstance(value, dict):
        return {k: literal(v) for k, v in value.items()}
    if value in ("false", "False"):
        return False
    if not isinstance(value, str):
        return value
    for parse in (json.loads, ast.literal_eval):
        try:
            return literal(parse(value)) if isinstance(parse(value), (list, dict)) else parse(value)
        except (ValueError, SyntaxError, TypeError):
            pass
    return value


def check_focus_eps(per_stage: dict[str, dict]) -> None:
    """The report discusses one focus eps in detail; it must lie on the sweep's eps grid. Checked before anything
    runs, so a bad combination costs nothing."""
    grid = per_stage["02_sweep"]["eps_grid"]
    if not isinstance(grid, list) or not grid or not all(isinstance(e, (int, float)) and e >= 0 for e in grid):
        raise ConfigError(f"eps_grid must be a non-empty list of eps >= 0 (normalized units), got {grid!r}")
    for stage, params in per_stage.items():
        focus = params.get("focus_eps")
        if focus is not None and not any(abs(focus - e) < 1e-9 for e in grid):
            raise ConfigError(f"focus_eps = {focus} (used by {stage}) is not on eps_grid {grid}: the report "
                              f"discusses the focus eps from the sweep. Add it to the grid or set focus_eps to one "
                              f"of {grid} (e.g. --config focus_eps={grid[len(grid) // 2]}).")


def check_ablation_runs(params: dict) -> None:
    """The capacity study's runs that get more than AutoAttack on the first images (``ablation_checklist``:
    Carlini et al.'s checks; ``ablation_whole``: AutoAttack on the whole test set), "<name>_s<seed>", must be runs
    of its grid (``ablation``). Checked before anything runs."""
    grid = params.get("ablation", {})
    have = [f"{name}_s{seed}" for name, entry in grid.items() for seed in entry.get("seeds", [0])]
    for key in ("ablation_checklist", "ablation_whole"):
        unknown = [r for r in params.get(key, []) if r not in have]
        if unknown:
            raise ConfigError(f"{key} names {unknown}, which the ablation grid does not train (its runs: "
                              f"{', '.join(have)}). Name runs of the grid, or add the configuration and seed to "
                              f"ablation (e.g. --config {key}=[{have[0] if have else '<name>_s<seed>'}]).")


def parse_seeds(text: str | int | list) -> list[int]:
    """'0-9' -> [0..9]; '0,3,5' -> [0, 3, 5]; 7 -> [7]; a list passes through (checked)."""
    if isinstance(text, int):
        return [text]
    if isinstance(text, list):
        parts = [str(s) for s in text]
    else:
        parts = [p.strip() for p in str(text).split(",") if p.strip()]
    seeds = []
    for part in parts:
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", part)
        if not m:
            raise ConfigError(f"seeds must look like 0-9 or 0,3,5, got {text!r}")
        lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
        seeds.extend(range(lo, hi + 1))
    if not seeds:
        raise ConfigError(f"no seeds in {text!r}")
    return sorted(set(seeds))


# ---------------------------------------------------------------------------------------------------------------
# One notebook


def strip_machine_paths(nb, source: str, output: str) -> None:
    """Replace papermill's absolute input/output paths in a notebook's metadata by repository-relative ones."""
    meta = nb.metadata.get("papermill", {})
    meta["input_path"], meta["output_path"] = source, output
    for key in ("start_time", "end_time", "duration"):  # when and how long: the benchmarks measure that
        meta.pop(key, None)


def run_notebook(source: str | os.PathLike, output: str | os.PathLike, parameters: dict, *,
                 progress: bool = False) -> Path:
    """Execute ``source`` with papermill into ``output`` (atomically), working in output's folder. Only the
    parameters that differ from the notebook's defaults are injected. A failed run leaves its partial notebook
    beside the output as ``<name>.failed.ipynb`` and raises."""
    import nbformat
    import papermill as pm

    source, output = Path(source), Path(output)
    defaults = declared_parameters(source)
    injected = {k: v for k, v in parameters.items() if k in defaults and v != defaults[k]}
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.stem}.", suffix=".ipynb", dir=output.parent)
    os.close(fd)
    try:
        pm.execute_notebook(str(source), tmp, parameters=injected, cwd=str(output.parent), progress_bar=progress,
                            kernel_name="python3", log_output=False)
    except BaseException:
        failed = output.with_suffix(".failed.ipynb")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide it from the user who looks into it
        shutil.move(tmp, failed)
        print(f"{source.name} failed; its partial output is in {failed}", file=sys.stderr)
        raise
    nb = nbformat.read(tmp, as_version=4)
    strip_machine_paths(nb, f"notebooks/{source.name}", f"report/{output.name}")
    atomic_write_bytes(output, nbformat.writes(nb).encode())
    os.unlink(tmp)
    return output


# ---------------------------------------------------------------------------------------------------------------
# Publishing


def publish(run_dir: str | os.PathLike, root: str | os.PathLike = ROOT, dataset: str = DEFAULT_DATASET,
            stages: list[str] = STAGES) -> list[Path]:
    """Copy a finished run's executed notebooks (+ HTML page), figures and metrics.json into the repository
    ``root``: report/ and figures/ for MNIST, report/<dataset>/ and figures/<dataset>/ for another data set (whose
    run never touches MNIST's files); then regenerate the README's tables. Every file is first copied next to its
    target under a temporary name and only then renamed into place, so an error while copying leaves the
    committed report as it was. ``stages``: the notebooks a finished run holds (every stage but 08_robustness
    for a data set that `make robust` has not evaluated). Returns the published paths."""
    from study import readme
    from study.sources import dict_keys

    run_dir, root = Path(run_dir), Path(root)
    report, figures = root / "report" / subfolder(dataset), root / "figures" / subfolder(dataset)
    # other data sets' published results that a run read (the MNIST seed study's comparison): inputs, not results
    others = set(dict_keys("advlib.data", "DATASETS")) - {dataset}

    def result(p: Path) -> bool:  # a hidden file is a temporary one that a killed job left behind, never a result
        return p.is_file() and not p.name.startswith(".") and p.relative_to(run_dir / "figures").parts[0] not in others

    pairs = [(p, report / p.name) for p in sorted((run_dir / "report").glob("*.ipynb"))
             if not p.name.endswith(".failed.ipynb") and not p.name.startswith(".")]
    pairs += [(p, report / p.name) for p in (run_dir / "report").glob("*.html") if not p.name.startswith(".")]
    pairs += [(p, figures / p.relative_to(run_dir / "figures")) for p in sorted((run_dir / "figures").rglob("*"))
              if result(p)]
    missing = [s for s in stages if not (run_dir / "report" / f"{s}.ipynb").is_file()]
    if missing:
        raise FileNotFoundError(f"{run_dir} is not a finished run (no executed {missing}); nothing was published")
    staged = []
    try:
        for src, dst in pairs:
            dst.parent.mkdir(parents=True, exist_ok=True)
            tmp = dst.with_name(f".{dst.name}.publish")
            shutil.copyfile(src, tmp)
            staged.append((tmp, dst))
        readme_path = root / "README.md"
        run_metrics = json.loads((run_dir / "figures" / "metrics.json").read_text())
        mnist, others = readme.both_metrics(root, dataset, run_metrics)
        new_readme = readme.render(readme_path.read_text(), mnist, readme.bench_markdown(root), others)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, dst in staged:
        os.replace(tmp, dst)
    atomic_write_bytes(readme_path, new_readme.encode())
    return [dst for _, dst in staged] + [readme_path]


def publish_files(results: list[str | os.PathLike], folder: str | os.PathLike, replace: str = "*.json") -> None:
    """Result files into ``folder`` under their names, replacing the earlier set (the files matching ``replace``)
    as a whole: copied under temporary names first, then the old files removed and the new ones renamed into
    place. The seed study (figures/seed_study/) and the robustness evaluation (figures/robustness/) publish so."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    staged = []
    for src in map(Path, results):
        tmp = folder / f".{src.name}.tmp"
        shutil.copyfile(src, tmp)
        staged.append((tmp, folder / src.name))
    for old in folder.glob(replace):
        old.unlink()
    for tmp, dst in staged:
        os.replace(tmp, dst)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The workflow's steps (the Snakefile calls these).")
    sub = parser.add_subparsers(dest="command", required=True)
    nb = sub.add_parser("notebook", help="execute one notebook with papermill")
    nb.add_argument("source")
    nb.add_argument("output")
    nb.add_argument("--params", default="{}", help="JSON object of parameters")
    pub = sub.add_parser("publish", help="copy a finished run into report/, figures/ and the README")
    pub.add_argument("run_dir")
    pub.add_argument("--stages", default=",".join(STAGES), help="the stages the run holds, comma-separated")
    pub.add_argument("--dataset", default=DEFAULT_DATASET, help="the run's data set: another than MNIST publishes "
                     "into report/<dataset>/ and figures/<dataset>/")
    files = sub.add_parser("publish-files", help="replace the result files in a folder of figures/ (seed study, "
                           "robustness evaluation) by these, together")
    files.add_argument("folder", help="figures/seed_study or figures/robustness")
    files.add_argument("--replace", default="*.json", help="the earlier files these replace (a glob in folder)")
    files.add_argument("results", nargs="+")
    scratch = sub.add_parser("scratch", help="prepare the scratch run folder build/scratch/ of hand runs (make lab) "
                             "and copy executed notebooks into its report/")
    scratch.add_argument("notebooks", nargs="*", help="executed notebooks to copy, e.g. report/06_report.ipynb")
    args = parser.parse_args(argv)
    skip_iri_format_checker()
    from study.scratch import SCRATCH_DIR, scratch_run

    if args.command == "notebook":
        run_notebook(args.source, args.output, json.loads(args.params))
    elif args.command == "scratch":
        folder = scratch_run(Path.cwd(), args.notebooks)  # make lab runs in the repository
        print(f"{SCRATCH_DIR}/: the models of the last `make report` (linked), a copy of figures/, and of "
              f"{len(args.notebooks)} executed notebook(s) in {SCRATCH_DIR}/report/")
        if not (folder / "artifacts" / "model.pt").exists():
            print(f"{SCRATCH_DIR}/artifacts/ has no model yet: run `make report` first", file=sys.stderr)
    elif args.command == "publish-files":
        if Path(args.folder).parts[0] != "figures" or len(Path(args.folder).parts) not in (2, 3):
            raise SystemExit(f"publish-files publishes into a folder of figures/ or figures/<dataset>/, "
                             f"got {args.folder!r}")
        publish_files(args.results, Path.cwd() / args.folder, args.replace)  # the workflow runs in the repository
        print(f"published {len(args.results)} files into {args.folder}/")
    else:
        unknown = sorted(set(args.stages.split(",")) - set(STAGES))
        if unknown:
            raise SystemExit(f"unknown stages {unknown}: the stages are {', '.join(STAGES)}")
        published = publish(args.run_dir, root=Path.cwd(), dataset=args.dataset, stages=args.stages.split(","))  # the workflow runs in the repository
        sub_ = subfolder(args.dataset)
        print(f"published {len(published)} files from {args.run_dir} into report/{sub_}, figures/{sub_} and README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
