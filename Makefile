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

# Defaults point at what `make demo` produced, so every target works right after it.
DEMO ?= runs/demo
CONFIG ?= demo_tiny
BACKEND ?= local
MODEL ?= $(DEMO)/model-tiny
ADAPTER ?= $(DEMO)/train/adapter
DATA ?= $(DEMO)/manual/vlm_val.jsonl
IMAGES ?= $(DEMO)/manual
PROBES ?= $(DEMO)/manual/manual_probes.json
JUDGE ?= none
EVAL_OUT ?= runs/eval
MODEL_A ?= $(DEMO)/eval-baseline
MODEL_B ?= $(DEMO)/eval-finetuned
PORT ?= 8000
EVAL_ARGS = --model $(MODEL) $(if $(ADAPTER),--adapter $(ADAPTER)) --data $(DATA) --images-root $(IMAGES) --probes $(PROBES) --judge $(JUDGE) --config $(CONFIG)
SUITE = $(BIN)/deepeval test run vlm3_nb/deepeval_suite/test_vlm.py --model $(MODEL) $(if $(ADAPTER),--adapter $(ADAPTER)) --data $(DATA) --images-root $(IMAGES) --probes $(PROBES) --judge $(JUDGE) --config $(CONFIG) --out $(EVAL_OUT)

.PHONY: setup test test-slow demo demo-reasoning demo-cobra lab clean-venv sync-check preflight train train-dev eval eval-quick eval-probes eval-compare serve serve-local

setup: $(STAMP)  ## create or refresh .venv from pyproject.toml (a no-op when nothing changed)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile -e '.[dev]'
	@# pip byte-compiles the 6 GB it installs on one core (~2 of setup's ~4 minutes); compileall does it on every core.
	@# A few files that are not Python 3 (test data inside packages) fail to compile, as they do under pip: ignored.
	@$(BIN)/python -m compileall -qq -j 0 $(VENV)/lib/python*/site-packages >/dev/null 2>&1 || true
	$(BIN)/python -m ipykernel install --prefix $(VENV) --name python3 --display-name "vlm3_nb (.venv)" >/dev/null
	@touch $(STAMP)

sync-check: setup  ## notebooks clean and package in sync with them
	@$(BIN)/nbdev_clean && git diff --quiet --exit-code -- nbs || { echo "FAIL: nbdev_clean changed notebooks (commit cleaned notebooks)"; git status --porcelain nbs; exit 1; }
	@$(BIN)/nbdev_export && test -z "$$(git status --porcelain -- vlm3_nb)" || { echo "FAIL: nbdev_export changed vlm3_nb/ (run nbdev_export and commit)"; git status --porcelain vlm3_nb; exit 1; }

test: setup  ## sync check, notebook tests (slow/gpu skipped), pytest; ends with 'N passed, N failed'
	@PATH=$(CURDIR)/$(BIN):$$PATH bash .ci/test.sh

test-slow: setup  ## the minutes-long end-to-end pytest checks that `make test` leaves out (papermill reports, caption and scratchpad CLI runs)
	@PATH=$(CURDIR)/$(BIN):$$PATH HF_HUB_OFFLINE=1 DEEPEVAL_TELEMETRY_OPT_OUT=YES $(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadfile -m slow tests

demo: setup  ## the main job on the embedded default
	@PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/vlm3 demo --out $(DEMO)

preflight: setup  ## what training $(CONFIG) will cost before paying for a GPU
	$(BIN)/vlm3 preflight --config $(CONFIG)

train-dev: setup  ## quick run: 1 epoch, 100 samples (as in the seed)
ifeq ($(BACKEND),modal)
	$(BIN)/modal run vlm3_nb/modal_app.py --dataset-id $(HF_DATASET_REPO) --epochs 1 --max-samples 100
else
	$(BIN)/vlm3 train --config $(CONFIG) training.epochs=1 --max-samples 100
endif

train: setup  ## full training; BACKEND=modal trains on a Modal GPU from HF_DATASET_REPO
ifeq ($(BACKEND),modal)
	$(BIN)/modal run vlm3_nb/modal_app.py --dataset-id $(HF_DATASET_REPO) --epochs 3
else
	$(BIN)/vlm3 train --config $(CONFIG)
endif

eval: setup  ## full eval of MODEL (+ADAPTER) on DATA and PROBES into EVAL_OUT, then its report
	$(BIN)/vlm3 eval $(EVAL_ARGS) --out $(EVAL_OUT)
	$(BIN)/vlm3 report $(EVAL_OUT)

eval-quick: setup  ## the seed's DeepEval suite on a subset
	$(SUITE) -k "torque or procedure" --max-samples 20

eval-probes: setup  ## the seed's DeepEval suite on the manual probes only
	$(SUITE) -k manual_probe

eval-compare: setup  ## compare two eval folders (default: the demo's baseline vs fine-tuned)
	$(BIN)/vlm3 compare $(MODEL_A) $(MODEL_B) --out reports/compare

serve: setup  ## serve VLM3Model on Modal while this runs (needs `modal token new`)
	$(BIN)/modal serve vlm3_nb/modal_app.py

serve-local: setup  ## OpenAI-compatible server on 127.0.0.1:$(PORT); needs VLM3_API_TOKEN
	$(BIN)/vlm3 serve --model $(MODEL) $(if $(ADAPTER),--adapter $(ADAPTER)) --port $(PORT)

demo-reasoning: setup  ## structured reasoning on the embedded default: llava-cot synth, train, 4 QA + 4 caption evals, four-way report
	@PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/vlm3 demo-reasoning --out runs/demo-reasoning --reports reports/demo-reasoning

demo-cobra: setup  ## the Cobra + LLaVA-CoT guide on the embedded default: synth set, align, finetune from its checkpoint, 4 QA + 4 caption evals, report
	@PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/vlm3 demo-cobra --out runs/demo-cobra --reports reports/demo-cobra

lab: setup  ## JupyterLab on nbs/ with the project's kernel
	$(BIN)/jupyter lab --notebook-dir=nbs

clean-venv:
	rm -rf $(VENV)

# The GPU bench: `make gpu-wheels` here, then `make bench-gpu` (or `python3 -m vlm3_nb bench gpu`) on a GPU machine with the
# working tree and wheels/gpu/ (git-ignored) carried; README "GPU" has the exact device-tool command.
.PHONY: bench-gpu gpu-wheels
GPU_PY = $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)

bench-gpu:  ## every GPU figure in one process (< 8 min on one H100/H200, no network): reports/bench/gpu-<device>.json
	PYTHONUNBUFFERED=1 $(GPU_PY) -m vlm3_nb bench gpu --out reports/bench

gpu-wheels: setup  ## the wheels the bare GPU machine lacks (bitsandbytes, timm, fastcore, qwen-vl-utils) into wheels/gpu/ (< 60 MiB)
	$(BIN)/python -c "from vlm3_nb.bench_gpu import download_wheels; s = download_wheels(); [print(f'{v:8.2f} MiB  {k}') for k, v in s.items()]; print(f'{sum(s.values()):8.2f} MiB  wheels/gpu/')"
