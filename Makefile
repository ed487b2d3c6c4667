# Two commands after `git clone`:  make report  (figures, executed notebooks, HTML page)   make test  (the tests)
# Both create or reuse the virtual environment .venv, install the project and fetch the verified MNIST and
# Fashion-MNIST data. `make report CONFIG="dataset=fashion_mnist"` runs the study on Fashion-MNIST (report/fashion_mnist/).
# The study itself is a Snakemake workflow (Snakefile); these targets call it with the machine's cores.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
SNAKEMAKE := $(VENV)/bin/snakemake
STAMP := $(VENV)/.installed
CORES ?= 2
CONFIG ?=
SEEDS ?= 0-9
OUT ?= build/quick
QUICK := epochs=1 train_subset=5000 n_samples=200 pgd_steps=3
SMK = "$(SNAKEMAKE)" --cores $(CORES) --printshellcmds --show-failed-logs $(if $(FORCE),--forceall)

.PHONY: report quick seeds robust test test-lib data bench lab dry-run-cluster clean-build

$(STAMP): pyproject.toml
	test -x "$(PY)" || "$(PYTHON)" -m venv "$(VENV)"
	"$(PY)" -m pip install --quiet --upgrade pip
	# torch first, pinned: pip takes these two from this machine's disk; an unpinned torch would download GBs
	"$(PY)" -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	# the library, every extra the study uses and the tests' tools (pyproject.toml's study and test extras)
	"$(PY)" -m pip install --quiet -e ".[study,test]"
	touch "$(STAMP)"

data: $(STAMP)  ## fetch and verify MNIST and Fashion-MNIST into data/ (no-op when already there)
	"$(PY)" -m advlib.download --root data --dataset mnist fashion_mnist

report: data  ## the whole study, published into report/, figures/ and README.md when every job succeeded
	$(SMK) report $(if $(CONFIG),--config $(CONFIG))

quick: data  ## a small run in $(OUT), nothing published (override with CONFIG="...")
	$(SMK) run --config run_dir="$(OUT)" $(QUICK) $(CONFIG)

seeds: data  ## the seed study (SEEDS=0-9 by default), one job per seed in parallel, then the report again
	$(SMK) seed_study --config seeds=$(SEEDS) $(CONFIG)
	$(SMK) report $(if $(CONFIG),--config $(CONFIG))

# the released anchor (Wong et al.'s checkpoint) only where its file was fetched by hand (README: Robustness evaluation)
ANCHOR := data/anchors/wong2020_mnist_fgsm.pth

robust: data  ## AutoAttack, sanity checks, the 0.3 px capacity study (hours on 2 cores), then the report again
	$(SMK) robustness capacity $(if $(wildcard $(ANCHOR)),released_anchor) $(if $(CONFIG),--config $(CONFIG))
	$(SMK) report $(if $(CONFIG),--config $(CONFIG))

dry-run-cluster: data  ## the jobs the Slurm profile would submit (needs no cluster)
	"$(SNAKEMAKE)" --profile profiles/slurm --dry-run report

# make test: the unit, workflow and browser tests, then nbval over copies of the executed notebooks, on two pytest
# workers (tests/conftest.py says how the tests are shared between them).
# nbval re-executes them against models trained once, here, by the workflow's own training jobs: the notebooks load
# them instead of training again, and find 05_defense's PGD curves in the stage cache (study/cache.py), filled by
# the workflow's own PGD jobs. It compares only the outputs that are the same on every machine (cells tagged
# nbval-check-output; --nbval-lax); the numbers have their own tests. The test jobs run two at a time, one torch
# thread each, as the report's (OMP_NUM_THREADS=2 make test: one job at a time, two threads, other float rounding).
TEST_RUN := test-artifacts/run
TEST_RUN_FM := test-artifacts/fashion_mnist/run
NBVAL_DIR := test-artifacts/nbval
NBVAL_FM := $(NBVAL_DIR)/fashion_mnist

# torch threads of the test jobs and of the nbval kernels: the same, as the stage cache keys on the thread count
TEST_THREADS ?= $(or $(OMP_NUM_THREADS),1)

test: data  ## everything CI runs
	$(SMK) --config run_dir=$(TEST_RUN) threads_per_job=$(TEST_THREADS) -- pgd_curves
	$(SMK) --config run_dir=$(TEST_RUN_FM) dataset=fashion_mnist threads_per_job=$(TEST_THREADS) -- pgd_curves
	rm -rf "$(NBVAL_DIR)" && mkdir -p "$(NBVAL_DIR)/report" "$(NBVAL_FM)"
	cp report/*.ipynb "$(NBVAL_DIR)/report/" && cp -r figures "$(NBVAL_DIR)/"
	ln -sfn ../../data "$(NBVAL_DIR)/data" && ln -sfn ../run/artifacts "$(NBVAL_DIR)/artifacts"
	cp -r report/fashion_mnist "$(NBVAL_FM)/report" && cp -r figures/fashion_mnist "$(NBVAL_FM)/figures"
	ln -sfn ../../../data "$(NBVAL_FM)/data" && ln -sfn ../../fashion_mnist/run/artifacts "$(NBVAL_FM)/artifacts"
	OMP_NUM_THREADS=$(TEST_THREADS) TQDM_MININTERVAL=30 "$(PY)" -m pytest -n $(CORES) --dist loadscope --durations=15 tests \
		"$(NBVAL_DIR)/report" "$(NBVAL_FM)/report" --nbval-lax --nbval-current-env --nbval-cell-timeout 1800

test-lib: data  ## the library's fast lane: tests/advlib without the slow tests (under a minute on 2 cores)
	OMP_NUM_THREADS=1 "$(PY)" -m pytest -n $(CORES) -m "not slow" tests/advlib

bench: data  ## speed and memory benchmarks: benchmarks/results.json and results.md
	"$(PY)" -m pip install --quiet -e ".[bench]"
	"$(PY)" -m benchmarks $(ARGS)

# make lab: JupyterLab on copies of the executed notebooks in the scratch run folder build/scratch/ (git-ignored),
# beside the models of the last `make report` and a copy of figures/ (study.scratch.scratch_run). It opens the
# narrative: Run All makes the slider live; nothing done there (JupyterLab saves as it goes) changes report/ or
# figures/. `make report` publishes.
lab: data  ## JupyterLab on a copy of the executed narrative in build/scratch/ (Run All makes the slider live)
	"$(PY)" -m study.workflow scratch report/*.ipynb
	"$(VENV)/bin/jupyter" lab build/scratch/report/06_report.ipynb

clean-build:
	rm -rf build test-artifacts .snakemake
