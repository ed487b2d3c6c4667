# The study as a Snakemake workflow: a DAG of jobs, each re-run only when its inputs change.
#
#   snakemake --cores 2 report                    # everything, then publish into report/, figures/, README.md
#   snakemake --cores 2 run --config run_dir=/tmp/quick epochs=1 n_samples=200   # a run elsewhere, not published
#   snakemake --cores 2 seed_study --config seeds=0-9                            # Figure 11's seeds, in parallel
#   snakemake --cores 2 robustness capacity       # AutoAttack, sanity checks; 0.3 px capacity study (hours on a CPU)
#                                                 # (capacity: 08_robustness's ablation grid, study/ablation.py)
#   snakemake --profile profiles/slurm report    # the same on a Slurm cluster (snakemake-executor-plugin-slurm)
#   snakemake --cores 2 report --config dataset=fashion_mnist   # the study on Fashion-MNIST: build/fashion_mnist/,
#                                                 # published into report/fashion_mnist/ and figures/fashion_mnist/
#
# `make report`, `make seeds` and `make quick` call these (see the README). Overrides go in --config NAME=VALUE:
# any notebook parameter (each stage gets those it declares) or a workflow setting (run_dir, seeds,
# threads_per_job); an unknown name stops the workflow before anything runs.
#
# Every job works in a run directory laid out like the repository (data/, artifacts/, figures/, report/), so the
# notebooks' relative default paths hold everywhere. The two models are trained by their own jobs (same function as
# the notebooks call, study.models.train_or_load), so changing a plot or the narrative never retrains a model; stage
# 5's PGD curves are jobs too (rule pgd_curve), whose results the notebook finds in the stage cache (study/cache.py).
import json
from pathlib import Path

from study.sources import code_files, constant, figure_digest, notebook_code
from study.workflow import STAGES, ConfigError, parse_seeds, resolve_config, skip_iri_format_checker, subfolder

skip_iri_format_checker()  # reading the notebooks' parameters imports nbformat
try:
    SETTINGS, PARAMS = resolve_config(config)
    SEEDS = parse_seeds(SETTINGS["seeds"])
except ConfigError as e:
    raise WorkflowError(str(e))

RUN = SETTINGS["run_dir"].rstrip("/")
# The data set (a parameter every stage declares): MNIST's results are the repository's report/ and figures/;
# another data set's run folders are under build/<dataset>/ and its results under report/<dataset>/, figures/<dataset>/
DATASET = PARAMS["01_train"]["dataset"]
SUB = subfolder(DATASET)  # "" or "fashion_mnist/"
FIGURES = f"figures/{SUB}".rstrip("/")  # the published results this run reads (seed study, robustness) and writes
SEED_RUNS = f"build/{SUB}seeds"  # one run folder per seed of the seed study
AA_BATCH = constant("advlib.autoattack", "AA_BATCH")  # AutoAttack's batch: one job each (read without torch)
THREADS = int(SETTINGS["threads_per_job"])
DATA = str(Path("data").resolve())
PY = sys.executable
# The code each job runs, derived from the imports of the module its command runs (study.sources): a new module
# that an attack imports becomes an input of every job that reaches the attack, with no list to edit.
TRAIN_CODE = code_files("study.models")  # python -m study.models: both models
ABLATION_CODE = code_files("study.ablation")  # python -m study.ablation: the capacity study's training jobs
ABLATION_EVAL = code_files("study.ablation_eval")  # python -m study.ablation_eval: their evaluation
# 08_robustness reports `make robust`'s results: a data set without them (Fashion-MNIST until it runs) has no stage 8
HAS_ROBUSTNESS = Path(f"{FIGURES}/robustness/sanity.json").is_file()
RUN_STAGES = [s for s in STAGES if s != "08_robustness" or HAS_ROBUSTNESS]
REPORT = [f"{RUN}/report/{s}.ipynb" for s in RUN_STAGES] + [f"{RUN}/report/index.html"]
ROBUST = PARAMS["08_robustness"]  # the robustness evaluation's settings (declared in notebooks/08_robustness.ipynb)
EVAL_CODE = code_files("study.sanity")  # python -m study.sanity: AutoAttack, the sanity checks, the seeds' numbers

# 05_defense's PGD curves, in PGD_PARTS jobs per model (part k: eps_grid[k::PGD_PARTS]): they run beside the
# training and the other stages (the robust model's on both cores once it is trained), and fill the stage cache
# (study.cache) where the notebook finds them
PGD_PARTS = 2
PGD_CURVES = [f"artifacts/pgd/{m}_part{k}.json" for m in ("model", "robust_model") for k in range(PGD_PARTS)]
PGD_CODE = code_files("study.jobs")  # python -m study.jobs: the PGD curves, a seed's numbers

# a stage notebook's inputs besides its source and the code: the models it loads, the stages it reads
NEEDS = {
    "01_train": ["artifacts/model.pt"],
    "02_sweep": ["artifacts/model.pt"],
    "03_confidence": ["artifacts/model.pt"],
    "04_visual_grid": ["artifacts/model.pt"],
    "05_defense": ["artifacts/model.pt", "artifacts/robust_model.pt"] + PGD_CURVES,
    "07_seed_study": ["figures/seed_study"],  # + the other data set's seeds, below
    "08_robustness": ["figures/robustness", "artifacts/model.pt", "artifacts/robust_model.pt",
                      "report/05_defense.ipynb"],  # stage 5's FGSM and PGD curves, beside AutoAttack
    "06_report": [f"report/{s}.ipynb" for s in RUN_STAGES if s != "06_report"],
}
# 07_seed_study's comparison of data sets (MNIST's report only): the other data set's published seed study
COMPARE = PARAMS["07_seed_study"]["compare_with"] if DATASET == "mnist" else None
if COMPARE and not any(Path(f"figures/{COMPARE}/seed_study").glob("seed_*.json")):
    COMPARE = None  # not published yet: 07_seed_study says so and draws no Figure 14
if COMPARE:
    NEEDS["07_seed_study"].append(f"figures/{COMPARE}/seed_study")


def seed_params(stage, seed):
    """A stage's parameters in seed `seed`'s run: the configured ones, with the seed substituted."""
    return {**PARAMS[stage], "seed": int(seed)}


STANDARD_KEYS = ["dataset", "seed", "device", "epochs", "batch_size", "lr", "train_subset"]
SWEEP_KEYS = ["dataset", "n_samples", "eps_grid", "device"]  # 02_sweep's, for a seed's numbers
PGD_KEYS = ["dataset", "n_samples", "eps_grid", "pgd_steps", "seed", "device"]  # 05_defense's, for its PGD curves
ROBUST_KEYS = STANDARD_KEYS + ["adv_mode", "adv_eps"]


def run_params(wildcards, stage, keys=None):
    """The parameters of `stage` in this run (the configured ones, or a seed run's: its seed substituted), as
    JSON; only `keys` when given, so that a job re-runs when a parameter it uses changes, and only then."""
    if wildcards.run.startswith(f"{SEED_RUNS}/seed_"):
        params = seed_params(stage, wildcards.run.rsplit("_", 1)[1])
    else:
        params = PARAMS[stage]
    return json.dumps({k: v for k, v in params.items() if keys is None or k in keys}, sort_keys=True)


# A run directory is never the repository's figures/ folder: the committed results there (figures/robustness/*.json)
# would otherwise look like outputs of a run named "figures".
wildcard_constraints:
    run=r"(?!figures(/|$)).+"


localrules: report, run, pgd_curves, seed_study, robustness, capacity, link_data, publish, publish_seeds,
    publish_robust_seeds, publish_robustness, publish_capacity, seed_input, robustness_input, autoattack_merge,
    released_anchor


rule report:
    """Every stage, the narrative and its HTML page, published into report/, figures/ and README.md."""
    input: f"{RUN}/.published"


rule run:
    """Every stage and the HTML page in the run directory, without publishing (for runs elsewhere)."""
    input: REPORT


rule pgd_curves:
    """Both models and 05_defense's PGD curves in the run directory (make test trains these before nbval)."""
    input: [f"{RUN}/{c}" for c in PGD_CURVES]


rule seed_study:
    """Train and sweep once per seed, in parallel, the robust model too; publish figures/seed_study/seed_<k>.json
    and robust_<k>.json (figures/<dataset>/seed_study/ for another data set)."""
    input: f"{FIGURES}/seed_study/.published", f"{FIGURES}/seed_study/.published_robust"


rule robustness:
    """AutoAttack on both models and Carlini et al.'s sanity checks, on the first aa_samples test images
    (unfiltered): about an hour of CPU, so it is its own command (make robust); publishes figures/robustness/."""
    input: f"{FIGURES}/robustness/.published"


rule capacity:
    """The capacity study at the standard threat model (0.3 px): every (configuration, seed) of 08_robustness's
    ablation grid trained and attacked with AutoAttack (hours of CPU; make robust runs it after the robustness
    evaluation), published into figures/robustness/ablation/; and, when its file is there, Wong et al.'s released
    checkpoint attacked on the whole test set (rule released_anchor)."""
    input: f"{FIGURES}/robustness/.published_capacity"


rule released_anchor:
    """AutoAttack on Wong et al.'s released MNIST model (data/anchors/, fetched by hand: never committed), over the
    first released_parts * ablation_samples test images, one job per part; published into
    figures/robustness/anchor/released_from<k>.json."""
    input: f"{FIGURES}/robustness/.published_released"


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
    shell: "{PY:q} -m study.models standard --out {output:q} --data-dir {input.data:q} --threads {threads} "
           "--params {params.p:q}"


rule robust_model:
    """The adversarially trained model: independent of the standard model, so both train at the same time."""
    input: TRAIN_CODE, data=ancient("{run}/data")
    output: "{run}/artifacts/robust_model.pt"
    params: p=lambda w: run_params(w, "05_defense", ROBUST_KEYS)
    threads: THREADS
    resources: mem_mb=2000, runtime=60
    shell: "{PY:q} -m study.models robust --out {output:q} --data-dir {input.data:q} --threads {threads} "
           "--params {params.p:q}"


rule pgd_curve:
    """05_defense's PGD curve of one model, into the stage cache; the notebook finds it there."""
    input: PGD_CODE, model="{run}/artifacts/{model}.pt", images="{run}/artifacts/model.pt",
           data=ancient("{run}/data")
    output: "{run}/artifacts/pgd/{model}_part{part}.json"
    params: p=lambda w: run_params(w, "05_defense", PGD_KEYS)
    wildcard_constraints: model="model|robust_model", part=r"\d+"
    threads: THREADS
    resources: mem_mb=1500, runtime=20
    shell: "{PY:q} -m study.jobs pgd --model {wildcards.model}.pt --part {wildcards.part} --parts {PGD_PARTS} "
           "--out {output:q} "
           "--artifact-dir {wildcards.run:q}/artifacts --data-dir {input.data:q} --threads {threads} "
           "--params {params.p:q}"


rule seed_input:
    """The report's seed study reads the committed per-seed results (make seeds refreshes them)."""
    input: sorted(str(p) for p in Path(f"{FIGURES}/seed_study").glob("*.json"))  # seed_<k>.json, robust_<k>.json
    output: directory("{run}/figures/seed_study")
    wildcard_constraints: run=f"(?!{SEED_RUNS}/).*"
    shell: "mkdir -p {output:q} && cp {input:q} {output:q}/"


rule compare_input:
    """The other data set's committed per-seed results, for MNIST's comparison of data sets (07_seed_study)."""
    input: sorted(str(p) for p in Path(f"figures/{COMPARE}/seed_study").glob("seed_*.json")) if COMPARE else []
    output: directory("{run}/figures/{other}/seed_study")
    wildcard_constraints: other=COMPARE or "(?!)"
    shell: "mkdir -p {output:q} && cp {input:q} {output:q}/"


rule robustness_input:
    """The report reads the committed robustness results (make robust refreshes them), the capacity study's
    ablation/ and anchor/ folders included."""
    input: sorted(str(p) for p in Path(f"{FIGURES}/robustness").rglob("*.json"))
    output: directory("{run}/figures/robustness")
    params: files=lambda w, input: [str(Path(f).relative_to(f"{FIGURES}/robustness")) for f in input]
    shell: "mkdir -p {output:q} && tar -C {FIGURES}/robustness -cf - {params.files:q} | tar -C {output:q} -xf -"


rule notebook:
    """One stage notebook, executed with papermill in the run directory."""
    input:
        source="notebooks/{stage}.ipynb",
        code=lambda w: notebook_code(f"notebooks/{w.stage}.ipynb")[0],
        data=ancient("{run}/data"),
        needs=lambda w: [f"{w.run}/{n}" for n in NEEDS[w.stage]],
    output: "{run}/report/{stage}.ipynb"
    # code: the files its imports reach, but the figure modules; plots: the digest of the figure code it reaches,
    # function by function (study.sources.figure_digest). Snakemake re-runs a job whose params changed, so editing
    # one figure re-runs only the stages that draw it
    params: p=lambda w: run_params(w, w.stage), plots=lambda w: figure_digest(f"notebooks/{w.stage}.ipynb")
    wildcard_constraints: stage="|".join(STAGES)
    threads: THREADS
    resources: mem_mb=2000, runtime=30
    shell: "OMP_NUM_THREADS={threads} {PY:q} -m study.workflow notebook {input.source:q} {output:q} "
           "--params {params.p:q}"


rule html:
    """The narrative as one self-contained page; its eps slider works without a kernel. It links to the other data
    sets' pages."""
    input: "{run}/report/06_report.ipynb", code_files("study.html_report")
    output: "{run}/report/index.html"
    shell: "{PY:q} -m study.html_report {input[0]:q} {output:q} --dataset {DATASET}"


rule publish:
    """All or nothing: runs only when every job above succeeded."""
    input: REPORT
    output: touch(f"{RUN}/.published")
    params: stages=",".join(RUN_STAGES)
    shell: "{PY:q} -m study.workflow publish {RUN:q} --dataset {DATASET} --stages {params.stages}"


rule seed_result:
    """One seed's numbers for the seed study: 01_train's test accuracy and 02_sweep's FGSM sweep of the seed's
    model, by the calls the notebooks make (study.jobs.seed_record), without their figures."""
    input: PGD_CODE, model=f"{SEED_RUNS}/seed_{{seed}}/artifacts/model.pt",
           data=ancient(f"{SEED_RUNS}/seed_{{seed}}/data")
    output: f"{SEED_RUNS}/seed_{{seed}}.json"
    params: train=lambda w: json.dumps({k: seed_params("01_train", w.seed)[k] for k in STANDARD_KEYS}),
            sweep=lambda w: json.dumps({k: PARAMS["02_sweep"][k] for k in SWEEP_KEYS})
    threads: THREADS
    resources: mem_mb=1500, runtime=10
    shell: "{PY:q} -m study.jobs seed --artifact-dir {SEED_RUNS}/seed_{wildcards.seed}/artifacts "
           "--data-dir {input.data:q} --threads {threads} --params {params.sweep:q} --train-params {params.train:q} "
           "--out {output:q}"


def seed_robust_params(seed):
    """A seed's robust-model evaluation settings: 05_defense's (the images, eps and PGD steps of its Figure 10)
    and 08_robustness's seed_aa_samples."""
    defense = seed_params("05_defense", seed)
    keep = {k: defense[k] for k in ("dataset", "seed", "device", "adv_eps", "pgd_steps")}
    return json.dumps({**keep, "aa_samples": defense["n_samples"], "seed_aa_samples": ROBUST["seed_aa_samples"]},
                      sort_keys=True)


rule seed_robust:
    """A seed's robust model: clean, PGD and AutoAttack (APGD-CE -> APGD-T) accuracy (study.sanity.seed_metrics)."""
    input: EVAL_CODE, model=f"{SEED_RUNS}/seed_{{seed}}/artifacts/robust_model.pt",
           data=ancient(f"{SEED_RUNS}/seed_{{seed}}/data")
    output: f"{SEED_RUNS}/robust_{{seed}}.json"
    params: p=lambda w: seed_robust_params(w.seed)
    threads: THREADS
    resources: mem_mb=2000, runtime=60
    shell: "{PY:q} -m study.sanity seed --model {input.model:q} --params {params.p:q} "
           "--data-dir {input.data:q} --threads {threads} --out {output:q}"


rule publish_seeds:
    """Every seed's metrics into figures/seed_study/ (figures/<dataset>/seed_study/), together, once all of them
    have finished."""
    input: expand(f"{SEED_RUNS}/seed_{{seed}}.json", seed=SEEDS)
    output: touch(f"{FIGURES}/seed_study/.published")
    shell: "{PY:q} -m study.workflow publish-files {FIGURES}/seed_study --replace 'seed_*.json' {input:q}"


rule publish_robust_seeds:
    """Every seed's robust-model numbers into figures/seed_study/robust_<k>.json (figures/<dataset>/...), together."""
    input: expand(f"{SEED_RUNS}/robust_{{seed}}.json", seed=SEEDS)
    output: touch(f"{FIGURES}/seed_study/.published_robust")
    shell: "{PY:q} -m study.workflow publish-files {FIGURES}/seed_study --replace 'robust_*.json' {input:q}"


# ---------------------------------------------------------------------------------------------------------------
# The robustness evaluation (make robust): AutoAttack per model and eps, in parts of AutoAttack's batch (250
# images) that run in parallel; each part's result is exactly the official driver's on its images.

MODEL_FILES = {"standard": "model.pt", "robust": "robust_model.pt"}
AA_KEYS = ["dataset", "seed", "device", "aa_samples"]
SANITY_KEYS = AA_KEYS + ["sanity_eps", "sanity_eps_sweep", "square_samples"]
ABLATION_KEYS = ["seed", "device", "ablation_eps", "ablation_samples"]


def aa_images(model, eps):
    """How many attack-set images AutoAttack runs on for (model, eps)."""
    return ROBUST["aa_samples"] if float(eps) in ROBUST["aa_eps"] else ROBUST["aa_grid_samples"]


def aa_parts(run, model, eps):
    """The part files of one AutoAttack result: one per AutoAttack batch of images."""
    starts = range(0, aa_images(model, eps), AA_BATCH)
    return [f"{run}/robustness/parts/{model}_eps{eps}_from{s}.json" for s in starts]


def aa_results():
    """The AutoAttack results of the standard and the robust model, at every eps of aa_eps and aa_grid_eps."""
    pairs = [(m, e) for m in ("standard", "robust") for e in ROBUST["aa_eps"] + ROBUST["aa_grid_eps"]]
    return [f"{RUN}/robustness/autoattack_{m}_eps{e:g}.json" for m, e in pairs]


def capacity_results():
    """The capacity study's results: one per (configuration, seed) of the ablation grid."""
    return ([f"{RUN}/ablation/{name}_s{seed}.json" for name, entry in ROBUST["ablation"].items()
             for seed in entry.get("seeds", [0])]
            + [f"{RUN}/ablation/checks/checklist_{run}.json" for run in ROBUST["ablation_checklist"]]
            + [f"{RUN}/ablation/parts/part_{run}_from{k * ROBUST['ablation_samples']}.json"
               for run in ROBUST["ablation_whole"] for k in range(1, ROBUST["released_parts"])])


def ablation_params(name, *more):
    """What one configuration's jobs read: its own entry of the grid (without its list of seeds), the evaluation's
    settings and the parameters named in ``more``: adding a configuration or a seed retrains nothing else."""
    keys = ABLATION_KEYS + list(more)
    entry = {k: v for k, v in ROBUST["ablation"][name].items() if k != "seeds"}
    return json.dumps({"ablation": {name: entry}, **{k: ROBUST[k] for k in keys}}, sort_keys=True)


rule ablation_model:
    """One (configuration, seed) of the capacity study, trained at 0.3 px on 28x28 images in [0, 1]."""
    input: ABLATION_CODE, data=ancient("{run}/data")
    output: "{run}/ablation/{name}_s{seed}.pt"
    wildcard_constraints: name=r"[A-Za-z0-9_]+", seed=r"\d+"
    params: p=lambda w: ablation_params(w.name)
    threads: THREADS
    resources: mem_mb=2000, runtime=240
    shell: "{PY:q} -m study.ablation train --name {wildcards.name} --seed {wildcards.seed} --out {output:q} "
           "--data-dir {input.data:q} --threads {threads} --params {params.p:q}"


rule ablation_eval:
    """Its clean test accuracy, training curves and AutoAttack on the first ablation_samples test images."""
    input: ABLATION_EVAL, model="{run}/ablation/{name}_s{seed}.pt", data=ancient("{run}/data")
    output: "{run}/ablation/{name}_s{seed}.json"
    wildcard_constraints: name=r"[A-Za-z0-9_]+", seed=r"\d+"
    params: p=lambda w: ablation_params(w.name)
    threads: THREADS
    resources: mem_mb=2000, runtime=120
    shell: "{PY:q} -m study.ablation_eval evaluate --name {wildcards.name} --seed {wildcards.seed} --model {input.model:q} "
           "--out {output:q} --data-dir {input.data:q} --threads {threads} --params {params.p:q}"


rule ablation_part:
    """A run of ablation_whole ("<name>_s<seed>") attacked on a further slice of test images, [start, start +
    ablation_samples): with its first slice (ablation_eval) the released model's images, the whole test set."""
    input: ABLATION_EVAL, model="{run}/ablation/{name}_s{seed}.pt", data=ancient("{run}/data")
    output: "{run}/ablation/parts/part_{name}_s{seed}_from{start}.json"
    wildcard_constraints: name=r"[A-Za-z0-9_]+", seed=r"\d+", start=r"\d+"
    params: p=lambda w: ablation_params(w.name)
    threads: THREADS
    resources: mem_mb=2000, runtime=120
    shell: "{PY:q} -m study.ablation_eval evaluate --name {wildcards.name} --seed {wildcards.seed} --model {input.model:q} "
           "--start {wildcards.start} --out {output:q} --data-dir {input.data:q} --threads {threads} --params {params.p:q}"


rule ablation_source:
    """The checklist's transfer source: Wong et al.'s network trained without attack (study.ablation.SOURCE)."""
    input: ABLATION_CODE, data=ancient("{run}/data")
    output: "{run}/ablation/source.pt"
    params: p=json.dumps({k: ROBUST[k] for k in ABLATION_KEYS}, sort_keys=True)
    threads: THREADS
    resources: mem_mb=2000, runtime=30
    shell: "{PY:q} -m study.ablation source --out {output:q} --data-dir {input.data:q} --threads {threads} "
           "--params {params.p:q}"


rule ablation_checklist:
    """Carlini et al.'s checks (the step-size row included) on a run of ablation_checklist ("<name>_s<seed>")."""
    input: ABLATION_EVAL, model="{run}/ablation/{name}_s{seed}.pt", source="{run}/ablation/source.pt",
           data=ancient("{run}/data")
    output: "{run}/ablation/checks/checklist_{name}_s{seed}.json"
    wildcard_constraints: name=r"[A-Za-z0-9_]+", seed=r"\d+"
    params: p=lambda w: ablation_params(w.name, "square_samples")
    threads: THREADS
    resources: mem_mb=2000, runtime=120
    shell: "{PY:q} -m study.ablation_eval checklist --name {wildcards.name} --seed {wildcards.seed} --model {input.model:q} "
           "--source {input.source:q} --out {output:q} --data-dir {input.data:q} --threads {threads} --params {params.p:q}"


rule released_part:
    """AutoAttack on Wong et al.'s released checkpoint, test images [start, start + ablation_samples); on the first
    part the official driver runs too, and the two must agree image for image."""
    input: ABLATION_EVAL, checkpoint=ancient("data/anchors/wong2020_mnist_fgsm.pth"), data=ancient("{run}/data")
    output: "{run}/ablation/released_from{start}.json"
    params: p=json.dumps({k: ROBUST[k] for k in ABLATION_KEYS}, sort_keys=True),
            official=lambda w: "--official" if int(w.start) == 0 else ""  # the first part: the official driver too
    threads: THREADS
    resources: mem_mb=2000, runtime=120
    shell: "{PY:q} -m study.ablation_eval released --checkpoint {input.checkpoint:q} --start {wildcards.start} "
           "{params.official} "
           "--out {output:q} --data-dir {input.data:q} --threads {threads} --params {params.p:q}"


rule autoattack_part:
    input: EVAL_CODE, model=lambda w: f"{w.run}/artifacts/{MODEL_FILES[w.model]}",
           data=ancient("{run}/data")
    output: "{run}/robustness/parts/{model}_eps{eps}_from{start}.json"
    params: p=json.dumps({k: ROBUST[k] for k in AA_KEYS}, sort_keys=True), stop=lambda w: min(int(w.start) + AA_BATCH, aa_images(w.model, w.eps))
    threads: THREADS
    resources: mem_mb=2000, runtime=120
    shell: "{PY:q} -m study.sanity autoattack --model {input.model:q} --eps {wildcards.eps} "
           "--start {wildcards.start} --stop {params.stop} --params {params.p:q} --data-dir {input.data:q} "
           "--threads {threads} --out {output:q}"


rule autoattack_merge:
    input: lambda w: aa_parts(w.run, w.model, w.eps)
    output: "{run}/robustness/autoattack_{model}_eps{eps}.json"
    shell: "{PY:q} -m study.sanity merge {input:q} --out {output:q}"


rule sanity_checks:
    input: EVAL_CODE, model="{run}/artifacts/robust_model.pt",
           source="{run}/artifacts/model.pt", data=ancient("{run}/data")
    output: "{run}/robustness/sanity.json"
    params: p=json.dumps({k: ROBUST[k] for k in SANITY_KEYS}, sort_keys=True)
    threads: THREADS
    resources: mem_mb=2000, runtime=120
    shell: "{PY:q} -m study.sanity sanity --model {input.model:q} --source {input.source:q} "
           "--params {params.p:q} --data-dir {input.data:q} --threads {threads} --out {output:q}"


rule publish_robustness:
    """All or nothing, as the report: the results replace the earlier ones of both models together."""
    input: aa_results(), f"{RUN}/robustness/sanity.json"
    output: touch(f"{FIGURES}/robustness/.published")
    shell: "{PY:q} -m study.workflow publish-files {FIGURES}/robustness --replace 'autoattack_[rs]*.json' {input:q}"


rule publish_capacity:
    """The capacity study's results replace the earlier ones together."""
    input: capacity_results()
    output: touch(f"{FIGURES}/robustness/.published_capacity")
    shell: "{PY:q} -m study.workflow publish-files {FIGURES}/robustness/ablation --replace '*.json' {input:q}"


rule publish_released:
    """The released anchor's parts, together."""
    input: [f"{RUN}/ablation/released_from{k * ROBUST['ablation_samples']}.json" for k in range(ROBUST["released_parts"])]
    output: touch(f"{FIGURES}/robustness/.published_released")
    shell: "{PY:q} -m study.workflow publish-files {FIGURES}/robustness/anchor --replace '*.json' {input:q}"
