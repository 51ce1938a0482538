# Common commands. Every target does its own set-up: a fresh clone needs only python3 >= 3.10.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# pip prints a warning for each local index directory this machine's pip.conf lists; hide those.
PIP_QUIET := grep -v "is ignored: it is neither a file nor a directory" || true
PYTEST_ARGS ?=

.PHONY: help setup models test test-fast reproduce bench-gpu clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-12s %s\n", $$1, $$2}'

setup: $(STAMP)  ## create .venv and install the project (editable) with every extra; idempotent

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@echo "installing hivtp[all] into $(VENV) (first time: a few minutes, ~7 GB)"
	@$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt -e ".[all]" 2>&1 | { $(PIP_QUIET); }
	@$(PY) -c "import hivtp, transformers, torch; print('hivtp', hivtp.__version__, '| torch', torch.__version__, '| transformers', transformers.__version__)"
	@touch $(STAMP)

models: setup  ## build the offline checkpoints under artifacts/models (seconds)
	$(PY) scripts/build_models.py

test: setup  ## the whole test suite (CPU, no network)
	$(PY) -m pytest $(PYTEST_ARGS)

test-fast: setup  ## skip the real-shape (7B / ViT-L) tests
	$(PY) -m pytest -m "not slow" $(PYTEST_ARGS)

reproduce: setup models  ## the offline experiment end to end (CPU, minutes)
	$(PY) scripts/reproduce.py

clean:  ## remove build outputs (keeps .venv)
	rm -rf artifacts .pytest_cache build *.egg-info
