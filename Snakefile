# The study as a Snakemake workflow: a DAG of jobs, each re-run only when its inputs change.
#
#   snakemake --cores 2 report                    # everything, then publish into report/, figures/, README.md
#   snakemake --cores 2 run --config run_dir=/tmp/quick epochs=1 n_samples=200   # a run elsewhere, not published
#   snakemake --cores 2 seed_study --config seeds=0-9                            # Figure 11's seeds, in parallel
#   snakemake --profile profiles/slurm report    # the same on a Slurm cluster (snakemake-executor-plugin-slurm)
#
# `make report`, `make seeds` and `make quick` call these (see the README). Overrides go in --config NAME=VALUE:
# any notebook parameter (each stage gets those it declares) or a workflow setting (run_dir, seeds,
# threads_per_job); an unknown name stops the workflow before anything runs.
#
# Every job works in a run directory laid out like the repository (data/, artifacts/, figures/, report/), so the
# notebooks' relative default paths hold everywhere. The two models are trained by their own jobs (same function as
# the notebooks call, advlib.stage.train_or_load), so changing a plot or the narrative never retrains a model.
import json
from pathlib import Path

from advlib.pipeline import STAGES, SEED_STUDY_STAGES, ConfigError, parse_seeds, resolve_config

try:
    SETTINGS, PARAMS = resolve_config(config)
    SEEDS = parse_seeds(SETTINGS["seeds"])
except ConfigError as e:
    raise WorkflowError(str(e))

RUN = SETTINGS["run_dir"].rstrip("/")
THREADS = int(SETTINGS["threads_per_job"])
DATA = str(Path("data").resolve())
PY = sys.executable
# what a notebook job runs: every module but the README generator and the HTML export, which no notebook imports
CODE = sorted(str(p) for p in Path("advlib").glob("*.py") if p.stem not in ("readme", "html_report"))
TRAIN_CODE = [f"advlib/{m}.py" for m in ("data", "model", "train", "checkpoint", "stage")]
ROBUST_TRAIN_CODE = TRAIN_CODE + ["advlib/attacks.py"]
REPORT = [f"{RUN}/report/{s}.ipynb" for s in STAGES] + [f"{RUN}/report/index.html"]

# a stage notebook's inputs besides its source and the code: the models it loads, the stages it reads
NEEDS = {
    "01_train": ["artifacts/model.pt"],
    "02_sweep": ["artifacts/model.pt"],
    "03_confidence": ["artifacts/model.pt"],
    "04_visual_grid": ["artifacts/model.pt"],
    "05_defense": ["artifacts/model.pt", "artifacts/robust_model.pt"],
    "07_seed_study": ["figures/seed_study"],
    "06_report": [f"report/{s}.ipynb" for s in STAGES if s != "06_report"],
}


def seed_params(stage, seed):
    return {**PARAMS[stage], "seed": int(seed)}


STANDARD_KEYS = ["seed", "device", "epochs", "batch_size", "lr", "train_subset"]
ROBUST_KEYS = STANDARD_KEYS + ["adv_mode", "adv_eps"]


def run_params(wildcards, stage, keys=None):
    """The parameters of `stage` in this run (the configured ones, or a seed run's: its seed substituted), as
    JSON; only `keys` when given, so that a job re-runs when a parameter it uses changes, and only then."""
    if wildcards.run.startswith("build/seeds/seed_"):
        params = seed_params(stage, wildcards.run.rsplit("_", 1)[1])
    else:
        params = PARAMS[stage]
    return json.dumps({k: v for k, v in params.items() if keys is None or k in keys}, sort_keys=True)


localrules: report, run, seed_study, link_data, publish, publish_seeds, seed_result, seed_input


rule report:
    """Every stage, the narrative and its HTML page, published into report/, figures/ and README.md."""
    input: f"{RUN}/.published"


rule run:
    """Every stage and the HTML page in the run directory, without publishing (for runs elsewhere)."""
    input: REPORT


rule seed_study:
    """Train and sweep once per seed, in parallel; publish figures/seed_study/seed_<k>.json."""
    input: "figures/seed_study/.published"


rule link_data:
    output: directory("{run}/data")
    shell: "mkdir -p '{wildcards.run}' && ln -sfn '{DATA}' '{output}'"


rule model:
    """The standard model: the original report's recipe."""
    input: TRAIN_CODE, data=ancient("{run}/data")
    output: "{run}/artifacts/model.pt"
    params: p=lambda w: run_params(w, "01_train", STANDARD_KEYS)
    threads: THREADS
    resources: mem_mb=2000, runtime=30
    shell: "{PY:q} -m advlib.stage standard --out {output:q} --data-dir {input.data:q} --threads {threads} "
           "--params {params.p:q}"


rule robust_model:
    """The adversarially trained model: independent of the standard model, so both train at the same time."""
    input: ROBUST_TRAIN_CODE, data=ancient("{run}/data")
    output: "{run}/artifacts/robust_model.pt"
    params: p=lambda w: run_params(w, "05_defense", ROBUST_KEYS)
    threads: THREADS
    resources: mem_mb=2000, runtime=60
    shell: "{PY:q} -m advlib.stage robust --out {output:q} --data-dir {input.data:q} --threads {threads} "
           "--params {params.p:q}"


rule seed_input:
    """The report's seed study reads the committed per-seed results (make seeds refreshes them)."""
    input: sorted(str(p) for p in Path("figures/seed_study").glob("seed_*.json"))
    output: directory("{run}/figures/seed_study")
    wildcard_constraints: run="(?!build/seeds/).*"
    shell: "mkdir -p {output:q} && cp {input:q} {output:q}/"


rule notebook:
    """One stage notebook, executed with papermill in the run directory."""
    input:
        source="notebooks/{stage}.ipynb",
        code=CODE,
        data=ancient("{run}/data"),
        needs=lambda w: [f"{w.run}/{n}" for n in NEEDS[w.stage]],
    output: "{run}/report/{stage}.ipynb"
    params: p=lambda w: run_params(w, w.stage)
    wildcard_constraints: stage="|".join(STAGES)
    threads: THREADS
    resources: mem_mb=2000, runtime=30
    shell: "OMP_NUM_THREADS={threads} {PY:q} -m advlib.pipeline notebook {input.source:q} {output:q} "
           "--params {params.p:q}"


rule html:
    """The narrative as one self-contained page; its eps slider works without a kernel."""
    input: "{run}/report/06_report.ipynb", "advlib/html_report.py", "advlib/explorer.py"
    output: "{run}/report/index.html"
    shell: "{PY:q} -m advlib.html_report {input[0]:q} {output:q}"


rule publish:
    """All or nothing: runs only when every job above succeeded."""
    input: REPORT
    output: touch(f"{RUN}/.published")
    shell: "{PY:q} -m advlib.pipeline publish {RUN:q}"


rule seed_result:
    input: "build/seeds/seed_{seed}/report/02_sweep.ipynb", "build/seeds/seed_{seed}/report/01_train.ipynb"
    output: "build/seeds/seed_{seed}.json"
    shell: "cp build/seeds/seed_{wildcards.seed}/figures/metrics.json {output:q}"


rule publish_seeds:
    """Every seed's metrics into figures/seed_study/, together, once all of them have finished."""
    input: expand("build/seeds/seed_{seed}.json", seed=SEEDS)
    output: touch("figures/seed_study/.published")
    shell: "{PY:q} -m advlib.pipeline publish-seeds {input:q}"
