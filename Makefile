# embedgate: `make run` serves the bundled model; `make test` runs the whole suite.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch lies on disk on our build machines; elsewhere this pin fetches
# PyPI's torch 2.13.0 (CUDA on Linux). Override with TORCH_SPEC= to keep an installed torch.
TORCH_SPEC ?= torch==2.13.0
HOST ?= 127.0.0.1
PORT ?= 8080
PYTEST_ARGS ?=
SOAK_SECONDS ?= 600
BASE ?= HEAD
# PEERS=1: `make bench` also installs LiteLLM's proxy and infinity-emb, each in a throwaway venv, and
# measures them the same way in the same run.
PEERS ?=

.PHONY: run test lint bench bench-ab soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.local-installed: pyproject.toml | $(BIN)/python
	$(if $(TORCH_SPEC),$(BIN)/pip install --quiet "$(TORCH_SPEC)")
	$(BIN)/pip install --quiet -e ".[local]"
	touch $@

$(VENV)/.dev-installed: pyproject.toml $(VENV)/.local-installed
	$(BIN)/pip install --quiet -e ".[dev,local]"
	touch $@

run: $(VENV)/.local-installed
	$(BIN)/embedgate serve --host $(HOST) --port $(PORT) $(if $(CONFIG),--config $(CONFIG))

test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check proxy providers tests bench testkit
	$(BIN)/mypy proxy providers

bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench.gateway $(if $(PEERS),--peers)
	$(BIN)/python -m bench.run
	$(BIN)/python -m bench.local $(if $(PEERS),--peers)

# Two versions side by side under one alternating load (bench/ab.py): the working tree against BASE.
bench-ab: $(VENV)/.dev-installed
	$(BIN)/python -m bench.ab $(BASE) $(if $(ROUNDS),--rounds $(ROUNDS)) $(if $(LARGEST),--largest)

# Not part of `make test`: steady load through two replicas, upstream failures, a Redis restart.
soak: $(VENV)/.dev-installed
	$(BIN)/python -m bench.soak --seconds $(SOAK_SECONDS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
