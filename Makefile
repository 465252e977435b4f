# Three entry points, each self-contained on a fresh machine:
#   make demo   create .venv, install lmforge, train the default model, print samples
#   make test   create .venv, install lmforge with its test extras, run the linters (ruff, the
#               import contracts of the layers, the type checker) and the tests
#   make bench  create .venv, install lmforge with its test extras, run every benchmark in
#               benchmarks/ one at a time (under 45 minutes on 2 cores) and write
#               benchmarks/results/DATE-HOST.md; options in BENCH_ARGS, e.g.
#               make bench BENCH_ARGS="--list" or BENCH_ARGS="--only generate,serve_engine"
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test bench lint install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q -e ".[test]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-test: $(VENV)/.installed-test

demo: install
	$(BIN)/lmforge train

lint: install-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/lint-imports
	$(BIN)/mypy

test: lint
	$(BIN)/pytest -n 2 --dist loadfile  # two workers, each test file on one of them

bench: install-test
	$(BIN)/python benchmarks/run_all.py $(BENCH_ARGS)

clean:
	rm -rf $(VENV) runs data .pytest_cache
