#!/usr/bin/env bash
# The GPU check, one command on a machine with an NVIDIA GPU (driver, nvcc, cuBLAS):
#   1. builds with the CUDA backend (-Dcuda=enabled, build folder $BUILD, default build-cuda);
#   2. runs the CUDA test suite (tests/test_cuda.cpp): here a skipped test is a failure;
#   3. runs the PEFT golden parity cases (tests/data/peft/) with `peft parity --device cuda`;
#   4. a short LoRA fine-tune on cuda (`peft pretrain` on the CPU, `peft finetune --device cuda`);
#   5. `peft bench lora-layer --device cuda --dtype bfloat16 --shape 8192x4096x16 --mixed 8`
#      against PyTorch + PEFT on the same GPU when `python3 -c "import torch, peft"` finds a
#      CUDA torch (else ours only, and the line says so).
# Ends with one line "gpu_check: ..." and exits non-zero if any step failed.
# Environment: BUILD (build folder), PEFT_BENCH_PYTHON (the Python with torch + peft),
# GPU_CHECK_SKIP_BENCH=1 (skip step 5), GPU_CHECK_TRAIN_STEPS (default 200).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
PEFT_DEPS_ONLY=1 source scripts/deps.sh  # the Debian packages, when missing
set +e
BUILD=${BUILD:-build-cuda}
PY=${PEFT_BENCH_PYTHON:-python3}
logs=$(mktemp -d /tmp/gpu_check.XXXXXX)
status=0
summary=()

note() { echo "== gpu_check: $*"; }

# 1. build
note "building $BUILD with -Dcuda=enabled"
if [ -d "$BUILD" ]; then
  meson configure "$BUILD" -Dcuda=enabled >"$logs/setup.txt" 2>&1
else
  meson setup "$BUILD" -Dcuda=enabled >"$logs/setup.txt" 2>&1
fi || { cat "$logs/setup.txt"; echo "gpu_check: FAILED: meson setup (log $logs/setup.txt)"; exit 1; }
ninja -C "$BUILD" >"$logs/build.txt" 2>&1 ||
  { tail -40 "$logs/build.txt"; echo "gpu_check: FAILED: build (log $logs/build.txt)"; exit 1; }
grep -q "cuda_backend.o" "$BUILD/build.ninja" ||
  { echo "gpu_check: FAILED: $BUILD does not compile runtime/cuda (meson's summary should say CUDA backend: YES)"; exit 1; }
peft="$BUILD/tools/peft"
nvidia-smi -L 2>/dev/null || note "nvidia-smi not found"

# 2. the CUDA test suite; a skip means no device was visible, which is a failure here
note "tests/test_cuda"
"$BUILD/tests/test_cuda" >"$logs/test_cuda.txt" 2>&1
rc=$?
tail -5 "$logs/test_cuda.txt"
line=$(grep -E "test cases:" "$logs/test_cuda.txt" | tail -1)
passed=$(sed -n 's/.*| *\([0-9]*\) passed.*/\1/p' <<<"$line")
failed=$(sed -n 's/.*| *\([0-9]*\) failed.*/\1/p' <<<"$line")
skipped=$(sed -n 's/.*| *\([0-9]*\) skipped.*/\1/p' <<<"$line")
passed=${passed:-0} failed=${failed:-0} skipped=${skipped:-0}
if [ "$rc" -ne 0 ] || [ "$failed" -ne 0 ] || [ "$skipped" -ne 0 ] || [ "$passed" -eq 0 ]; then
  status=1
  if [ "$skipped" -ne 0 ]; then  # nothing below can run either
    echo "gpu_check: FAILED: no CUDA device visible: test_cuda skipped $skipped cases; nothing ran on a GPU"
    exit 1
  fi
  summary+=("cuda tests FAILED: $passed passed/$failed failed (log $logs/test_cuda.txt)")
else
  summary+=("cuda tests $passed passed/0 failed")
fi

# 3. golden parity on cuda
cases=(tests/data/peft/*/)
if [ -e "${cases[0]}" ]; then
  note "peft parity --device cuda on ${#cases[@]} cases"
  "$peft" parity --device cuda "${cases[@]}" >"$logs/parity.txt" 2>&1
  prc=$?
  grep -E "^FAIL" "$logs/parity.txt" | head -20
  pline=$(tail -1 "$logs/parity.txt")
  if [ "$prc" -ne 0 ]; then
    status=1
    summary+=("parity FAILED: $pline (log $logs/parity.txt)")
  else
    summary+=("parity $pline")
  fi
else
  summary+=("parity: no cases in tests/data/peft")
fi

# 4. a short LoRA fine-tune on cuda
steps=${GPU_CHECK_TRAIN_STEPS:-200}
words=/usr/share/dict/american-english
if [ -f "$words" ]; then
  note "LoRA fine-tune on cuda ($steps steps)"
  out="$logs/train"
  mkdir -p "$out"
  if "$peft" pretrain --data "$words" --out "$out/base.safetensors" --steps 100 >"$logs/train.txt" 2>&1 &&
     "$peft" finetune --base "$out/base.safetensors" --data "$words" --out "$out/lora" --steps "$steps" \
       --device cuda >>"$logs/train.txt" 2>&1; then
    tline=$(grep "held-out loss" "$logs/train.txt" | tail -1 | sed 's/^finetune: //; s/; wrote.*//')
    tps=$(sed -n 's/.*"tokens_per_second": \([0-9.e+]*\).*/\1/p' "$out/lora/report.json")
    summary+=("train ok ($tline, ${tps%.*} tok/s)")
  else
    status=1
    tail -5 "$logs/train.txt"
    summary+=("train FAILED (log $logs/train.txt)")
  fi
else
  summary+=("train skipped: $words missing (apt-get install wamerican)")
fi

# 5. the LoRA layer against PyTorch + PEFT on the same GPU
if [ "${GPU_CHECK_SKIP_BENCH:-0}" = 1 ]; then
  summary+=("bench skipped (GPU_CHECK_SKIP_BENCH=1)")
else
  bench_args=(bench lora-layer --device cuda --dtype bfloat16 --shape 8192x4096x16 --mixed 8)
  if "$PY" -c "import torch, peft, sys; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    export PEFT_BENCH_PYTHON="$PY"
  else
    note "$PY cannot import torch (with CUDA) and peft: timing ours only"
    bench_args+=(--no-python)
  fi
  note "peft ${bench_args[*]}"
  if "$peft" "${bench_args[@]}" >"$logs/bench.txt" 2>&1; then
    cat "$logs/bench.txt"
    bline=$(grep "^lora-layer " "$logs/bench.txt" | tail -1)
    summary+=("bench ${bline:-no summary line} (targets: LoRA <= 1.10x base, base <= 1.05x PyTorch's, mixed <= 1.30x base; PEFT 0.21: LoRA 1.51x base)")
  else
    status=1
    tail -20 "$logs/bench.txt"
    summary+=("bench FAILED (log $logs/bench.txt)")
  fi
fi

line="gpu_check: "
for s in "${summary[@]}"; do line+="$s; "; done
echo "${line%; }"
exit $status
