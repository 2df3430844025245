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
# the real SmolLM2-135M-Instruct GGUF (Q4_1) and llama.cpp's vocabulary files for the GGUF tests
PEFT_SMOLLM2_GGUF="$(bash scripts/fetch_smollm2.sh)"
PEFT_LLAMA_CPP_SRC="$(bash scripts/fetch_llama_cpp_src.sh)"
export PEFT_SMOLLM2_GGUF PEFT_LLAMA_CPP_SRC
status=0
meson test -C build --print-errorlogs --num-processes 1 "$@" || status=$?
python3 scripts/doctest_summary.py build || status=1
exit $status
