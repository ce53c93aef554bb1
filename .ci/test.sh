#!/usr/bin/env bash
# Runs every check `make test` promises and always ends with one line: "N passed, N failed".
# Checks: nbdev_clean and nbdev_export leave no diff, each notebook passes nbdev_test, pytest passes.
set -uo pipefail
export HF_HUB_OFFLINE=1 DEEPEVAL_TELEMETRY_OPT_OUT=YES TOKENIZERS_PARALLELISM=false
passed=0; failed=0
ok()   { passed=$((passed+1)); echo "PASS  $1"; }
bad()  { failed=$((failed+1)); echo "FAIL  $1"; }

# 1. sync: notebooks are clean, and the package is what the notebooks export
nbdev_clean >/dev/null 2>&1
if [ -z "$(git status --porcelain -- nbs)" ]; then ok "nbdev_clean leaves no diff"; else bad "nbdev_clean changed: $(git status --porcelain -- nbs | tr '\n' ' ')"; fi
nbdev_export >/dev/null 2>&1
if [ -z "$(git status --porcelain -- vlm3_nb)" ]; then ok "nbdev_export leaves no diff"; else bad "nbdev_export changed: $(git status --porcelain -- vlm3_nb | tr '\n' ' ')"; fi

# 2. each notebook is a test (slow and gpu cells skipped via tst_flags)
for nb in $(find nbs -name '*.ipynb' ! -name '_*' ! -path '*/.ipynb_checkpoints/*' | sort); do
  t0=$(date +%s)
  if out=$(nbdev_test --n_workers 0 --path "$nb" 2>&1); then ok "$nb ($(( $(date +%s)-t0 ))s)"; else bad "$nb"; echo "$out" | tail -40; fi
done

# 3. pytest: what is driven from outside (CLI, servers, papermill)
if [ -d tests ] && ls tests/test_*.py >/dev/null 2>&1; then
  pytest -q -p no:cacheprovider tests > /tmp/vlm3_pytest.log 2>&1; rc=$?
  tail -25 /tmp/vlm3_pytest.log
  p=$(grep -oE '[0-9]+ passed' /tmp/vlm3_pytest.log | tail -1 | grep -oE '[0-9]+' || echo 0)
  f=$(grep -oE "[0-9]+ (failed|errors?)" /tmp/vlm3_pytest.log | awk "{s+=\$1} END{print s+0}")
  passed=$((passed+p)); failed=$((failed+${f:-0}))
  if [ $rc -ne 0 ] && [ "${f:-0}" = 0 ]; then failed=$((failed+1)); echo "FAIL  pytest exited $rc"; fi
fi

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
