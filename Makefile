# Two commands after `git clone`:  make report  (figures + executed notebooks)   make test  (the test suite)
# Both create or reuse the virtual environment .venv, install the project and fetch the verified MNIST data.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
ARGS ?=

.PHONY: report test data seeds bench lab clean-artifacts

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	# torch first, pinned: pip takes these two from this machine's disk; an unpinned torch would download GBs
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[test]"
	touch $(STAMP)

data: $(STAMP)  ## fetch and verify MNIST into data/ (no-op when already there)
	$(PY) -m advlib.data --root data

report: data  ## run the stage notebooks with papermill: figures/, figures/metrics.json, notebooks/*.ipynb
	$(PY) -m advlib.pipeline $(ARGS)

# nbval re-executes the committed notebooks and compares their outputs. It runs copies (with a copy of figures/ and
# a link to data/) so that the test run never overwrites the committed figures and metrics. nbval reads a cell's
# output messages only after the cell ends and the kernel's message queue drops the overflow, so progress bars
# update every 30 s here (TQDM_MININTERVAL) instead of ten times a second.
NBVAL_DIR := test-artifacts/nbval

test: data  ## unit tests, pipeline and browser tests, then nbval over copies of the committed notebooks
	rm -rf $(NBVAL_DIR) && mkdir -p $(NBVAL_DIR)
	cp -r notebooks figures $(NBVAL_DIR)/ && ln -s $(CURDIR)/data $(NBVAL_DIR)/data
	TQDM_MININTERVAL=30 $(PY) -m pytest tests --nbval $(NBVAL_DIR)/notebooks --nbval-current-env \
		--nbval-sanitize-with notebooks/nbval_sanitize.cfg --nbval-cell-timeout 1800

seeds: data  ## the seed study (5 seeds of training + sweep, about 15 minutes): figures/graph11_seed_spread.png
	$(PY) -m advlib.pipeline --seed-study 0,1,2,3,4 $(ARGS)

bench: data  ## speed and memory benchmarks: benchmarks/results.json and results.md
	$(PY) -m pip install --quiet -e ".[bench]"
	$(PY) -m benchmarks $(ARGS)

lab: data  ## open JupyterLab on the notebooks
	$(VENV)/bin/jupyter lab notebooks/06_report.ipynb

clean-artifacts:
	rm -rf artifacts
