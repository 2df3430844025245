#!/usr/bin/env bash
# The test suite under ThreadSanitizer (gcc), in build-tsan/ (configured once): among them
# the concurrency stress test (tests/test_concurrency.cpp: 8 threads of mixed-batch forwards
# while a 9th loads and deletes adapters). Any data race report fails the test that triggers
# it (halt_on_error), so the run fails. Ends with one "doctest: N passed, N failed, N skipped
# (TSan)" line, as scripts/sanitize.sh.
# OpenMP runs with one thread (OMP_NUM_THREADS=PEFT_NUM_THREADS=1): libgomp is not built with
# TSan, so its barriers are invisible to it and every parallel kernel would be a false report.
# The races checked are between the threads the tests start themselves.
# Usage: scripts/tsan.sh [meson test args, e.g. a suite name; default: every suite but cli]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Needs the packages scripts/deps.sh installs (run scripts/test.sh or quickstart.sh once).
B=${PEFT_TSAN_BUILD:-build-tsan}
if [ ! -f "$B/build.ninja" ]; then
  meson setup "$B" -Db_sanitize=thread -Dbuildtype=debugoptimized -Dcuda=disabled >/dev/null
fi
ninja -C "$B" >/dev/null || ninja -C "$B"  # on failure, show the errors
export OMP_NUM_THREADS=1 PEFT_NUM_THREADS=1
# tests that raise the OpenMP thread count themselves keep one thread under TSan
export PEFT_TSAN_SINGLE_THREAD=1
export TSAN_OPTIONS=${TSAN_OPTIONS:-halt_on_error=1:second_deadlock_stack=1}
# gcc 12's TSan cannot map its shadow memory with the kernel's wider ASLR (mmap_rnd_bits > 28):
# run without address randomisation there.
RUN=()
if [ "$(cat /proc/sys/vm/mmap_rnd_bits 2>/dev/null || echo 28)" -gt 28 ]; then
  RUN=(--wrapper "setarch $(uname -m) -R")
fi
# The cli suite runs the peft program through a shell script; the program's own threads are
# covered by the suites that link the same library.
[ $# -eq 0 ] && set -- runtime io nn adapters train tools reliability transformers
start=$(date +%s)
status=0
meson test -C "$B" --print-errorlogs --num-processes 1 --timeout-multiplier 3 "${RUN[@]}" "$@" || status=$?
python3 scripts/doctest_summary.py "$B" TSan || status=1
echo "tsan.sh: tests took $(( $(date +%s) - start )) s"
exit $status
