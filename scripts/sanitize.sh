#!/usr/bin/env bash
# The whole test suite under AddressSanitizer + UndefinedBehaviorSanitizer (gcc), in
# build-asan/ (configured once). Any sanitizer report aborts the test that triggers it
# (-fno-sanitize-recover=all, halt_on_error), so the run fails. Ends with the same
# "doctest: N passed, N failed, N skipped" line as scripts/test.sh.
# Usage: scripts/sanitize.sh [meson test args, e.g. a suite name]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Needs the packages scripts/deps.sh installs (run scripts/test.sh or quickstart.sh once).
B=${PEFT_ASAN_BUILD:-build-asan}
# Without CUDA: nvcc's objects are not instrumented, and the CUDA runtime under ASan needs
# protect_shadow_gap=0 and reports its own allocations as leaks.
if [ ! -f "$B/build.ninja" ]; then
  meson setup "$B" -Db_sanitize=address,undefined -Dbuildtype=debugoptimized -Dcuda=disabled \
    -Dcpp_args=-fno-sanitize-recover=all -Dcpp_link_args=-fno-sanitize-recover=all >/dev/null
fi
ninja -C "$B" >/dev/null || ninja -C "$B"  # on failure, show the errors
# detect_leaks: LeakSanitizer on; OpenMP's and oneDNN's process-lifetime pools are not leaks
# of ours, so they are suppressed by library name (tools/fuzz/lsan.supp).
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:detect_stack_use_after_return=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tools/fuzz/lsan.supp:print_suppressions=0}
start=$(date +%s)
status=0
meson test -C "$B" --print-errorlogs --num-processes 1 --timeout-multiplier 3 "$@" || status=$?
python3 - "$B" <<'PY' || status=1
import json, re, sys
passed = failed = skipped = 0
with open(sys.argv[1] + "/meson-logs/testlog.json") as f:
    for line in f:
        rec = json.loads(line)
        m = re.search(r"test cases:\s*(\d+) \|\s*(\d+) passed \|\s*(\d+) failed \|\s*(\d+) skipped",
                      rec.get("stdout", ""))
        if m:
            passed += int(m.group(2)); failed += int(m.group(3)); skipped += int(m.group(4))
        elif rec.get("result") != "OK":
            failed += 1  # a sanitizer abort or a timeout before doctest's summary
print(f"doctest: {passed} passed, {failed} failed, {skipped} skipped (ASan+UBSan)")
sys.exit(1 if failed or passed == 0 else 0)
PY
echo "sanitize.sh: tests took $(( $(date +%s) - start )) s"
exit $status
