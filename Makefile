# The README's commands. `make demo` runs the whole study on the embedded default;
# `make test` installs what it needs and runs the CPU test suite.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.13.0
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
export MLFLOW_DISABLE_TELEMETRY := true
export TOKENIZERS_PARALLELISM := false
export DS_ACCELERATOR := cpu
export TORCH_EXTENSIONS_DIR := $(CURDIR)/.cache/torch_extensions
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1

.PHONY: setup test demo bench ui clean

setup: $(STAMP)

# Re-run the install only when the project's dependencies change.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[dev]'
	@touch $(STAMP)

test: setup
	$(PY) -m pytest -q

FAMILIES := llava llava_next llava_next_video llava_onevision qwen2_vl qwen2_5_vl internvl

demo: setup
	@for f in $(FAMILIES); do $(PY) -m train.tiny --family $$f --out models/tiny-$$f || exit 1; done
	$(PY) -m train.smoke $(addprefix models/tiny-,$(FAMILIES))

bench: setup
	$(PY) -m pytest -q -m bench tests/benchmarks -s

ui: setup
	$(VENV)/bin/mlflow ui --host 127.0.0.1 --port $${PORT:-5000} \
	  --backend-store-uri sqlite:///$(CURDIR)/mlruns/mlflow.db \
	  --default-artifact-root $(CURDIR)/mlruns/artifacts

clean:
	rm -rf ckpt shards models mlruns report bench-results.md .pytest_cache
