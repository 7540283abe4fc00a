# diffusion-seg — `make help` lists the targets. Every target sets up .venv first (once).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
ARGS ?=
PYTEST_ARGS ?=
# One pytest worker per core, at most 4 (pytest-xdist); XDIST= runs the tests in one process.
XDIST ?= -n auto --maxprocesses=4

.DEFAULT_GOAL := help
.PHONY: help setup train eval test test-fast bench verify-weights study docs docs-serve clean distclean

help: ## Show this help
	@grep -hE '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  Pass Hydra overrides with ARGS='model=pdn trainer.max_epochs=5', eval needs CKPT=path."

# Re-installs only when pyproject.toml changes: a second `make` call does not reinstall.
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev,docs,prepare,cluster]"
	@# Optional (the crf extra): built from source, skipped where it cannot build.
	$(PY) -m pip install --quiet "pydensecrf2>=1.1" || echo "skipped: pydensecrf2 did not build (optional: task.inference.crf_params.backend=pydensecrf2; the lattice and exact CRF backends need nothing)"
	@# The docs tests' browser (Debian's chromium), where it can be installed: root with apt-get.
	@command -v chromium >/dev/null || { test "$$(id -u)" = 0 && command -v apt-get >/dev/null \
	  && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null 2>&1 \
	    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null 2>&1; }; } \
	  || echo "skipped: chromium not installed (the docs' browser test is skipped; apt-get install chromium)"
	@touch $(STAMP)

setup: $(STAMP) ## Create .venv and install the package (editable) with its dev, docs, prepare and cluster extras

train: $(STAMP) ## Train + evaluate the quickstart experiment on the built-in dataset (~4 min on 2 CPU cores)
	$(PY) -m diffusion_seg.train experiment=quickstart $(ARGS)

eval: $(STAMP) ## Evaluate a checkpoint: make eval CKPT=logs/train/runs/<run>/checkpoints/last.ckpt
	@test -n "$(CKPT)" || { echo "usage: make eval CKPT=path/to/file.ckpt [ARGS=...]"; exit 2; }
	$(PY) -m diffusion_seg.eval ckpt_path=$(CKPT) $(ARGS)

test: $(STAMP) ## Run the whole test suite (CPU, offline)
	WANDB_MODE=offline $(PY) -m pytest $(XDIST) $(PYTEST_ARGS)

test-fast: $(STAMP) ## Run the tests not marked slow
	WANDB_MODE=offline $(PY) -m pytest -m "not slow" $(XDIST) $(PYTEST_ARGS)

study: $(STAMP) ## The built-in studies under the from-scratch recipe on CPU: seven heads, PDN layers x neighbours, DifNet walks (33 runs train: 3 seeds, 60 epochs, far from the cue; time on 2 cores: docs/studies.md), reports in experiments/reports; STUDIES="..." for others
	bash experiments/builtin_studies.sh $(ARGS)

verify-weights: $(STAMP) ## Rerun the pretraining recorded in weights/ and compare (about 2.5 min on 2 cores)
	$(PY) -m diffusion_seg.pretrain --verify --out weights/test_resnet_textures.safetensors

bench: $(STAMP) ## Benchmarks: make bench ARGS="train --quick" (pdn | difnet | train | gpu | data); make bench ARGS="gpu" on a CUDA machine
	$(PY) -m diffusion_seg.bench $(ARGS)

docs: $(STAMP) ## Build the docs site into site/ (strict: a broken link or reference fails)
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs build --strict

docs-serve: $(STAMP) ## Serve the docs with live reload on http://127.0.0.1:8000
	NO_MKDOCS_2_WARNING=1 $(PY) -m mkdocs serve

clean: ## Remove run logs and caches (keeps .venv)
	rm -rf logs outputs multirun site .pytest_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

distclean: clean ## Also remove .venv
	rm -rf $(VENV) *.egg-info
