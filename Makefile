# Two commands do all the set-up: `make run` (the main job) and `make test` (`make test-fast` while working).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
RUN_ARGS ?=

.PHONY: run run-frozen test test-fast docs setup system-deps lint bench clean-venv

$(VENV)/.installed: pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# torch is pinned; pip takes these two from local disk on this machine kind
	$(PY) -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install -q -e ".[test]"
	@touch $@

setup: $(VENV)/.installed system-deps

system-deps:
	@bash scripts/system_deps.sh

# the reference protocol (fine-tuned top); its report shows the frozen protocol's run beside it when
# `make run-frozen` has written runs/frozen first
run: setup
	$(VENV)/bin/vfe run --protocol reference --name reference \
		$(if $(wildcard runs/frozen/results.json),--compare-with runs/frozen) $(RUN_ARGS)

run-frozen: setup
	$(VENV)/bin/vfe run --protocol frozen --name frozen $(RUN_ARGS)

test: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q

# everything but the tests marked slow (full `vfe run`s, attacks, exports, scikit-learn's estimator checks,
# the docs site build): about 1.5 minutes on 2 cores
test-fast: setup
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q -m "not slow"

docs: setup
	$(VENV)/bin/mkdocs build --strict

lint: setup
	$(VENV)/bin/ruff check src tests benchmarks scripts

bench: setup
	$(PY) benchmarks/bench_extraction.py
	$(PY) benchmarks/bench_corruptions.py
