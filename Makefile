# Two commands on a fresh machine: `make demo` (or `make serve`) runs the service, `make test` runs the tests.
# Each creates .venv in the repo root on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# CPU build for local installs; a bare `torch` would pull a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
TINY_MODEL ?= .models/tiny-sd-inpainting

.PHONY: venv test demo serve tiny-model clean bench-serving bench-cold-start bench-gpu load-test

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_PIN)"
	$(BIN)/pip install --quiet -e '.[test]' "$(TORCH_PIN)"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

tiny-model: $(STAMP)
	test -f $(TINY_MODEL)/model_index.json || $(BIN)/python -m scripts.make_tiny_model $(TINY_MODEL)

clean:
	rm -rf $(VENV) .state .models .pytest_cache

demo: $(STAMP)
	$(BIN)/python -m service --demo

serve: $(STAMP)
	$(BIN)/python -m service

bench-serving: $(STAMP)
	$(BIN)/python -m scripts.bench.serving

bench-cold-start: $(STAMP)
	$(BIN)/python -m scripts.bench.cold_start

bench-gpu: $(STAMP)
	$(BIN)/python -m scripts.bench.gpu

load-test: $(STAMP)
	$(BIN)/python -m scripts.load_test
