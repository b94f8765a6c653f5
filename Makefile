# One command per job on a fresh machine: `make demo`, `make test`, `make bench`, `make reproduce`.
# Everything runs in a local virtual environment (.venv) with the CPU build of torch.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg

.PHONY: install demo test bench reproduce figures clean

install: $(VENV)/.installed

# Pin the CPU build of torch first: an unpinned torch pulls a multi-GB CUDA build.
$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[test,model]"
	touch $@

demo: install
	$(PY) -m captum_attnflow.demo --out demo_output

test: install
	$(PY) -m pytest -q --doctest-modules captum_attnflow tests

bench: install
	$(PY) benchmarks/bench.py

# Both protocols x 3 training seeds at the scale of the committed docs/results (2 epochs instead
# of 8; see docs/results/sva.md). Full scale (8 epochs): SVA_ARGS="--threads 1".
SVA_ARGS ?= --epochs 2 --threads 1
reproduce: install
	$(PY) -m captum_attnflow.experiments.sva all $(SVA_ARGS) --results-dir docs/results

figures: install
	$(PY) docs/make_figures.py

clean:
	rm -rf $(VENV) demo_output runs .pytest_cache
