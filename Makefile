# The README's two commands: `make demo` (the main job) and `make test`.
# Each creates .venv if absent and installs what it needs; no GPU or hub access required.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.lab-installed
# Without CUDA, the CPU wheel of torch 2.13.0 (no multi-GB CUDA download). Elsewhere, point pip at
# a CPU index: make test TORCH_PIP_ARGS="--index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
TORCH_PIP_ARGS ?=
OUT ?= runs/demo

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then \
		echo "CUDA found: installing the default torch build"; $(PY) -m pip install "torch>=2.4"; \
	else \
		echo "no CUDA: installing CPU $(TORCH_SPEC)"; $(PY) -m pip install $(TORCH_PIP_ARGS) "$(TORCH_SPEC)"; \
	fi
	$(PY) -m pip install -e ".[test,slurm,ray,browser,gpu,quant,runtimes,caches]"
	@touch $(STAMP)

install: $(STAMP)

# no per-cell timeout: a slow or busy machine takes longer, it does not fail; quanto's C++ extension
# is built first with a progress line; one failing notebook never stops the others; index.html lists
# every artifact at the end
demo: $(STAMP)
	$(PY) -m lab demo --out $(OUT)
	@echo "next: source $(VENV)/bin/activate && python -m lab --help   (or $(PY) -m lab ...)"

test: $(STAMP)
	$(PY) -m pytest

clean:
	rm -rf runs .pytest_cache
