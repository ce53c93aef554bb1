#!/usr/bin/env bash
# Runs every check `make test` promises and always ends with one line: "N passed, N failed".
# Checks: nbdev_clean and nbdev_export leave no diff, each notebook passes nbdev_test, pytest passes.
# The machine has 2 cores and every test model is tiny, so work runs two at a time with one thread each.
set -uo pipefail
export HF_HUB_OFFLINE=1 DEEPEVAL_TELEMETRY_OPT_OUT=YES TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
JOBS=${VLM3_TEST_JOBS:-2}
passed=0; failed=0
ok()   { passed=$((passed+1)); echo "PASS  $1"; }
bad()  { failed=$((failed+1)); echo "FAIL  $1"; }
t_all=$(date +%s)

# 1. sync: notebooks are clean, and the package is what the notebooks export
nbdev_clean >/dev/null 2>&1
if [ -z "$(git status --porcelain -- nbs)" ]; then ok "nbdev_clean leaves no diff"; else bad "nbdev_clean changed: $(git status --porcelain -- nbs | tr '\n' ' ')"; fi
nbdev_export >/dev/null 2>&1
if [ -z "$(git status --porcelain -- vlm3_nb)" ]; then ok "nbdev_export leaves no diff"; else bad "nbdev_export changed: $(git status --porcelain -- vlm3_nb | tr '\n' ' ')"; fi

# 2. each notebook is a test (slow and gpu cells skipped via tst_flags): $JOBS long-lived interpreters, longest first (.ci/nbtest.py)
nbs=$(find nbs -name '*.ipynb' ! -name '_*' ! -path '*/.ipynb_checkpoints/*' | sort)
nblog=$(mktemp); python .ci/nbtest.py -j "$JOBS" $nbs > "$nblog" 2>&1
while IFS= read -r line; do
  case "$line" in PASS\ *) ok "${line#PASS }";; FAIL\ *) bad "${line#FAIL }";; *) echo "$line";; esac
done < "$nblog"
grep -q "^PASS \|^FAIL " "$nblog" || bad "notebooks: .ci/nbtest.py printed no result"
echo "notebooks done after $(( $(date +%s)-t_all ))s"

# 3. pytest: what is driven from outside (CLI, servers, papermill, torchrun), $JOBS workers, one test file per worker
if [ -d tests ] && ls tests/test_*.py >/dev/null 2>&1; then
  pytest -q -p no:cacheprovider -n "$JOBS" --dist loadfile --durations=15 -m "not slow" tests > /tmp/vlm3_pytest.log 2>&1; rc=$?
  tail -45 /tmp/vlm3_pytest.log
  p=$(grep -oE '[0-9]+ passed' /tmp/vlm3_pytest.log | tail -1 | grep -oE '[0-9]+' || echo 0)
  f=$(grep -oE "[0-9]+ (failed|errors?)" /tmp/vlm3_pytest.log | awk "{s+=\$1} END{print s+0}")
  passed=$((passed+p)); failed=$((failed+${f:-0}))
  if [ $rc -ne 0 ] && [ "${f:-0}" = 0 ]; then failed=$((failed+1)); echo "FAIL  pytest exited $rc"; fi
fi

echo "total $(( $(date +%s)-t_all ))s"
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
