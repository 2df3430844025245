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
python3 scripts/doctest_summary.py "$B" ASan+UBSan || status=1
echo "sanitize.sh: tests took $(( $(date +%s) - start )) s"
exit $status
