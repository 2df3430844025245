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
python3 - <<'PY' || status=1
import json, re, sys
passed = failed = skipped = 0
with open("build/meson-logs/testlog.json") as f:
    for line in f:
        rec = json.loads(line)
        m = re.search(r"test cases:\s*(\d+) \|\s*(\d+) passed \|\s*(\d+) failed \|\s*(\d+) skipped",
                      rec.get("stdout", ""))
        if m:
            passed += int(m.group(2)); failed += int(m.group(3)); skipped += int(m.group(4))
        elif rec.get("result") != "OK":
            failed += 1  # crashed or timed out before doctest's summary
print(f"doctest: {passed} passed, {failed} failed, {skipped} skipped")
sys.exit(1 if failed or passed == 0 else 0)
PY
exit $status
