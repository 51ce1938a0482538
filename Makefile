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
# `make test` runs the suite in this many processes (pytest-xdist; a test file stays in one process, so
# its module fixtures load once; files start in tests/conftest.py's order, longest first, not xdist's
# largest-count-first). Each gets its share of torch's threads (tests/conftest.py).
TEST_WORKERS ?= 2
XDIST := $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder,)

.PHONY: help setup models data toy-model toy-siblings toy-trajectories calibrate latency-cpu test test-fast reproduce reproduce-paper figures sweep bench-gpu clean

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

test: setup  ## the whole test suite (CPU, no network; TEST_WORKERS=1 runs it in one process)
	$(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: setup  ## skip the real-shape (7B / ViT-L) tests
	$(PY) -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

reproduce: setup models  ## the offline experiment end to end (CPU, minutes); FULL=1: 1000 questions per benchmark, every ablation point
	$(PY) scripts/reproduce.py $(if $(filter 1 yes true,$(FULL)),--full,)

data: setup  ## build the offline mini-benchmarks under artifacts/data (POPE, GQA, MME, ScienceQA-IMG schemas; 1000 questions each)
	$(PY) scripts/build_data.py --size 1000 --seed 0

toy-model: setup  ## train the small LLaVA on the plain procedural world (the benchmarks ask in the textured one; 4,000 steps, 2 CPU cores: 43 min on the Xeon that trained the shipped one, more on slower machines; bit-identical only on the same CPU and thread count)
	$(PY) scripts/train_toy.py

toy-siblings: setup  ## retrain the shipped toy's siblings (hivtp.zoo.TOY_SIBLING_RECIPES: make toy-model's recipe at seeds 1 and 2) into hivtp/zoo/trained (2 cores: about 43 min each; bit-identical only on the CPU and thread count that trained them, an Intel Xeon at two threads)
	for name in $$($(PY) -c "from hivtp.zoo import TOY_SIBLINGS; print(*TOY_SIBLINGS)"); do $(PY) scripts/train_toy.py --sibling $$name; done

toy-trajectories: setup  ## offline method rows on the shipped toy and its siblings, same 1,800 questions, intervals over toys and questions (2 cores: about 16 min) -> results/toy_trajectories.{json,md}
	$(PY) scripts/toy_trajectories.py --out results/toy_trajectories.json

calibrate: setup  ## the offline testbed's calibration targets on the shipped toy (300 held-out questions per family, CIs) -> results/toy_calibration.json
	$(PY) -m hivtp.toy.calibrate --per-family 300 --out results/toy_calibration.json

latency-cpu: setup  ## CPU latency of every method on tiny-llava (random weights), interleaved -> results/latency/cpu-tiny
	$(PY) -m hivtp.latency --model tiny-llava --random-weights --threads 1 --repeats 10 --warmup 2 --new-tokens 16 \
	  --methods none hivtp hivtp:budget=64 hivtp:budget=128 hivtp:budget=192 --faithful --out results/latency/cpu-tiny

reproduce-paper: setup  ## the paper profile (GPU + model hub); DRY_RUN=1 only composes the configs
	$(PY) scripts/reproduce.py --profile paper $(if $(filter 1 yes true,$(DRY_RUN)),--dry-run,)

figures: setup  ## regenerate every table and figure from the CSVs under results/
	$(PY) scripts/figures.py

sweep: setup  ## a Hydra multirun sweep: make sweep SWEEP=geometry ARGS="+experiment=offline model=toy-llava" (no model=: random-weight tiny-llava)
	$(PY) -m hivtp.run -m $(ARGS) +sweep=$(SWEEP)

bench-gpu:  ## every GPU measurement (latency at the 7B shapes), most important first within BUDGET_S s (480); torch+transformers only
	bash scripts/bench_gpu.sh

clean:  ## remove build outputs (keeps .venv)
	rm -rf artifacts .pytest_cache build *.egg-info
