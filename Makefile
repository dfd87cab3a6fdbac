# Two commands on a fresh machine: `make demo` (or `make serve`) runs the service, `make test` runs the tests.
# Each creates .venv in the repo root on first use.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH_PIN ?= torch==2.13.0
# Where torch comes from. PyPI's Linux torch is a CUDA build (several GB with its nvidia wheels), so
# `auto` adds PyTorch's CPU index when it answers, else uses the configured indexes as they are.
# A CUDA build: TORCH_INDEX=https://download.pytorch.org/whl/cu128 (or TORCH_INDEX=default for PyPI's).
TORCH_INDEX ?= auto
TORCH_CPU_INDEX := https://download.pytorch.org/whl/cpu
TINY_MODEL ?= .models/tiny-sd-inpainting

.PHONY: venv test demo serve tiny-model clean bench-serving bench-floor bench-cold-start bench-gpu bench-mask load-test deploy teardown

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	@index="$(TORCH_INDEX)"; \
	if [ "$$index" = auto ]; then \
	  if $(BIN)/python -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=5)" 2>/dev/null; \
	  then index=$(TORCH_CPU_INDEX); \
	  else index=default; echo "note: $(TORCH_CPU_INDEX) is not reachable; torch comes from the configured indexes"; fi; \
	fi; \
	if [ "$$index" = default ]; then set -- ; else set -- --extra-index-url "$$index"; fi; \
	echo "$(BIN)/pip install $$* $(TORCH_PIN)"; \
	$(BIN)/pip install "$$@" "$(TORCH_PIN)"
	$(BIN)/pip install -e '.[test]' "$(TORCH_PIN)"
	@$(BIN)/python -c "import torch; print('torch', torch.__version__, '(CUDA build)' if torch.version.cuda else '(CPU build)')"
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest

tiny-model: $(STAMP)
	test -f $(TINY_MODEL)/model_index.json || $(BIN)/python -m scripts.make_tiny_model $(TINY_MODEL)

clean:
	rm -rf $(VENV) .state .models .pytest_cache .image-venvs

demo: $(STAMP)
	$(BIN)/python -m service --demo

serve: $(STAMP)
	$(BIN)/python -m service

bench-serving: $(STAMP)
	$(BIN)/python -m scripts.bench.serving

bench-floor: $(STAMP)
	$(BIN)/python -m scripts.bench.floor

bench-cold-start: $(STAMP)
	$(BIN)/python -m scripts.bench.cold_start

bench-gpu: $(STAMP)
	$(BIN)/python -m scripts.bench.gpu

bench-mask: $(STAMP)
	$(BIN)/python -m scripts.bench.mask_model $(ARGS)

load-test: $(STAMP)
	$(BIN)/python -m scripts.load_test

deploy: $(STAMP)
	$(BIN)/python -m scripts.modal_deploy

teardown: $(STAMP)
	$(BIN)/python -m scripts.modal_teardown $(ARGS)
