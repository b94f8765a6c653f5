# One command per job on a fresh machine: `make demo`, `make test`, `make bench`, `make reproduce`.
# Everything runs in a local virtual environment (.venv) with the CPU build of torch, at the
# versions locked in constraints.txt (CONSTRAINTS= for the newest releases instead).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_VERSION ?= 2.13.0
# PyPI's torch for Linux is the CUDA build (GBs): take the CPU build from PyTorch's own index where
# it answers (tools/install_torch.py probes it for at most 5 s). For CUDA, e.g.
# `make install TORCH_INDEX=https://download.pytorch.org/whl/cu126`; empty = pip's default index.
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
CONSTRAINTS ?= constraints.txt
OLDEST_VENV ?= .venv-oldest
PYTEST = -m pytest -q -p no:cacheprovider
export TORCH_INDEX
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg

.PHONY: install lint demo test test-fast test-slow test-oldest bench reproduce faithfulness tutorials figures docs lock clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml $(CONSTRAINTS) tools/install_torch.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) tools/install_torch.py $(TORCH_VERSION)
	# docs: the docs tests (docstring rewriting, the strict site build) run in the same environment.
	$(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[test,model,docs]"
	touch $@

# Static checks CI runs before the tests: ruff and mypy (config of both in pyproject.toml).
lint: install
	$(PY) -m ruff check .
	$(PY) -m mypy

demo: install
	$(PY) -m captum_attnflow.demo --out demo_output

# Everything, fast tests (and doctests) first; `make test-fast` is the edit loop (no `slow` marker).
test: test-fast test-slow

test-fast: install
	$(PY) $(PYTEST) --doctest-modules captum_attnflow tests -m "not slow"

test-slow: install
	$(PY) $(PYTEST) tests -m slow

# The fast tests in a second environment at the oldest versions setup.cfg allows (constraints-oldest.txt).
test-oldest: $(OLDEST_VENV)/.installed
	$(OLDEST_VENV)/bin/python $(PYTEST) tests -m "not slow"

$(OLDEST_VENV)/.installed: setup.cfg pyproject.toml constraints-oldest.txt tools/install_torch.py
	$(PYTHON) -m venv $(OLDEST_VENV)
	$(OLDEST_VENV)/bin/python -m pip install -q --upgrade pip
	$(OLDEST_VENV)/bin/python tools/install_torch.py $(TORCH_VERSION)
	$(OLDEST_VENV)/bin/python -m pip install -q -c constraints-oldest.txt -e ".[test,model]"
	touch $@

bench: install
	$(PY) benchmarks/bench.py

# Both protocols x 3 training seeds at the scale of the committed docs/results (2 epochs instead
# of 8; see docs/results/sva.md). Full scale (8 epochs): SVA_ARGS="--threads 1".
SVA_ARGS ?= --epochs 2 --threads 1
reproduce: install
	$(PY) -m captum_attnflow.experiments.sva all $(SVA_ARGS) --results-dir docs/results

# Issue 20's faithfulness table (AOPC, blank-out, parameter randomisation by edge weighting) on the SVA
# model, MiniLM and a ViT on digits, 3 seeds each, at the committed scale (docs/results/faithfulness.md).
# Trained models are kept in runs/faithfulness/models and reused; FAITHFULNESS_ARGS=--quick for a smoke run.
FAITHFULNESS_ARGS ?= --results-dir docs/results
faithfulness: install
	$(PY) -m captum_attnflow.experiments.faithfulness $(FAITHFULNESS_ARGS)

# The notebooks in JupyterLab (installed into .venv on first use; ipywidgets draws the progress bars).
tutorials: install
	$(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[notebooks]"
	$(VENV)/bin/jupyter lab tutorials/

figures: install
	$(PY) docs/make_figures.py

# The documentation site (mkdocs.yml: guides in docs/, API reference from the docstrings) into
# site/; --strict turns every warning (a broken link, a missing page) into an error.
docs: install
	$(PY) -m pip install -q $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e ".[docs]"
	$(PY) -m mkdocs build --strict --site-dir site

# Rewrite constraints.txt from the environment that just passed `make test CONSTRAINTS=`.
lock:
	{ echo "# Versions tested together (make test, CI); used by every make target. Regenerate: make lock"; \
	  $(PY) -m pip freeze --exclude-editable | grep -v '^captum-attnflow' | sed 's/+cpu$$//'; } > constraints.txt

clean:
	rm -rf $(VENV) $(OLDEST_VENV) demo_output runs site .pytest_cache
