# vlm3_nb: the two commands are `make demo` and `make test`. Both run `make setup` first.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE ?= 1
export DEEPEVAL_TELEMETRY_OPT_OUT := YES
export TOKENIZERS_PARALLELISM := false
export PYTHONHASHSEED := 0

CONFIG ?= $(shell $(BIN)/python -c "import vlm3_nb.core as c; print(c.config_path('demo_tiny'))" 2>/dev/null)
DEMO ?= runs/demo

.PHONY: setup test demo lab clean-venv sync-check nbtest pytest

setup: $(STAMP)  ## create or refresh .venv from pyproject.toml (a no-op when nothing changed)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name python3 --display-name "vlm3_nb (.venv)" >/dev/null
	@touch $(STAMP)

sync-check: setup  ## notebooks clean and package in sync with them
	@$(BIN)/nbdev_clean && git diff --quiet --exit-code -- nbs || { echo "FAIL: nbdev_clean changed notebooks (commit cleaned notebooks)"; git status --porcelain nbs; exit 1; }
	@$(BIN)/nbdev_export && test -z "$$(git status --porcelain -- vlm3_nb)" || { echo "FAIL: nbdev_export changed vlm3_nb/ (run nbdev_export and commit)"; git status --porcelain vlm3_nb; exit 1; }

test: setup  ## sync check, notebook tests (slow/gpu skipped), pytest; ends with 'N passed, N failed'
	@PATH=$(CURDIR)/$(BIN):$$PATH bash .ci/test.sh

demo: setup  ## the main job on the embedded default
	@PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/vlm3 demo --out $(DEMO)

lab: setup  ## JupyterLab on nbs/ with the project's kernel
	$(BIN)/jupyter lab --notebook-dir=nbs

clean-venv:
	rm -rf $(VENV)
