#!/usr/bin/env bash
# Runs one fuzz target for SECONDS (default 600) on its corpus; findings land in
# build-fuzz/findings/TARGET/. Usage: tools/fuzz/run.sh TARGET [SECONDS] [builddir]
#   TARGET: safetensors | config | load_adapter | state_dict | tokenizer | model_folder | gguf
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
T=$1
S=${2:-600}
B=${3:-build-fuzz}
mkdir -p "$B/findings/$T" "$B/corpus/$T"
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:allocator_may_return_null=0}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-halt_on_error=1:print_stacktrace=1}
# -rss_limit_mb: an input that needs more memory than this is a finding (absurd allocation).
exec nice -n 10 "$B/tools/fuzz/fuzz_$T" "$B/corpus/$T" -max_total_time="$S" -timeout=10 \
  -rss_limit_mb=2048 -malloc_limit_mb=1024 -max_len=65536 -print_final_stats=1 \
  -artifact_prefix="$B/findings/$T/" ${FUZZ_ARGS:-}
