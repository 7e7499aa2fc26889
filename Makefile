# The README's commands. `make run` and `make test` each set up .venv on first use.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: help setup run test test-fast lint format clean

help:  ## list the commands
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 12

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)  ## create .venv and install the project with its dev tools

run: setup  ## run the whole pipeline on the embedded synthetic thermal data, then show the metrics
	$(BIN)/python -m pipeline compose
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/dvc repro
	$(BIN)/dvc metrics show reports/evaluate/metrics.json
	@cat reports/benchmark/benchmark.md
	@echo "All metrics: $(BIN)/dvc metrics show   Runs: $(BIN)/mlflow ui --backend-store-uri sqlite:///mlflow.db"

test: setup  ## run the test suite (CPU, tiny data; the real-data tests need ../shared/datasets)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -n auto --maxprocesses 4

test-fast: setup  ## skip the slow tests (real datasets, longer training)
	PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/python -m pytest -n auto --maxprocesses 4 -m "not slow"

lint: setup  ## ruff check and format check
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: setup  ## apply ruff's formatting and fixes
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

clean:  ## remove pipeline outputs (not .venv, not mlflow.db)
	rm -rf data/prepared reports runs models .dvc/tmp
