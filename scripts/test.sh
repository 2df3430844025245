#!/usr/bin/env bash
# README command 2: install what is missing, build, run every test suite.
# Ends with one line "doctest: N passed, N failed, N skipped" (test cases over
# all suites) and exits non-zero when any test failed.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/deps.sh
# the real all-MiniLM-L6-v2 for the hf_minilm_lora_real case (downloaded once into the cache)
PEFT_MINILM_DIR="$(bash scripts/fetch_minilm.sh)"
export PEFT_MINILM_DIR
status=0
meson test -C build --print-errorlogs --num-processes 1 "$@" || status=$?
python3 scripts/doctest_summary.py build || status=1
exit $status
