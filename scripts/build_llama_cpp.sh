#!/usr/bin/env bash
# Builds llama.cpp, the reference for GGUF, from the PyPI source package llama-cpp-python==0.3.36
# (its vendor/llama.cpp) into ${PEFT_CACHE:-~/.cache/peft}/llama.cpp/, once, and prints the folder
# that holds its programs (llama-tokenize, llama-perplexity, llama-bench, llama-simple,
# llama-quantize) and our reference helpers (peft-llama-logits, peft-ggml-dequant from
# tools/reference/). Not part of CI: ~10 minutes on one core.
#
# This VM may advertise AMX and fault on it, so the build is not -march=native: AVX2, FMA, F16C,
# AVX-512 (F, BW, VL, DQ, VNNI, VBMI, BF16) and AVX-VNNI where the CPU has them, AMX off.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${PEFT_CACHE:-$HOME/.cache/peft}"
dest="$cache/llama.cpp"
bin="$dest/build/bin"
jobs="${PEFT_BUILD_JOBS:-1}"
progs=(llama-tokenize llama-perplexity llama-bench llama-simple llama-quantize)
have_all=1
for p in "${progs[@]}" peft-llama-logits peft-ggml-dequant; do [ -x "$bin/$p" ] || have_all=0; done
if [ "$have_all" = 1 ] && [ "$bin/peft-llama-logits" -nt "$here/tools/reference/llama_logits.cpp" ] &&
   [ "$bin/peft-ggml-dequant" -nt "$here/tools/reference/ggml_dequant.cpp" ]; then
  echo "$bin"
  exit 0
fi
mkdir -p "$cache"
bash "$here/scripts/fetch_llama_cpp_src.sh" >/dev/null
flag() { grep -qw "$1" /proc/cpuinfo && echo ON || echo OFF; }
avx512=$(flag avx512f)
cmake -S "$dest/src" -B "$dest/build" -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=OFF \
  -DGGML_AVX=ON -DGGML_AVX2="$(flag avx2)" -DGGML_FMA="$(flag fma)" -DGGML_F16C="$(flag f16c)" \
  -DGGML_BMI2="$(flag bmi2)" -DGGML_AVX_VNNI="$(flag avx_vnni)" -DGGML_AVX512="$avx512" \
  -DGGML_AVX512_VNNI="$(flag avx512_vnni)" -DGGML_AVX512_VBMI="$(flag avx512vbmi)" \
  -DGGML_AVX512_BF16="$(flag avx512_bf16)" -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF \
  -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_SERVER=OFF \
  -DBUILD_SHARED_LIBS=OFF >&2
cmake --build "$dest/build" -j "$jobs" --target "${progs[@]}" >&2
# our reference helpers (logits dumper, ggml dequantizer), linked against the same static libraries
for tool in llama_logits:peft-llama-logits ggml_dequant:peft-ggml-dequant; do
  c++ -O2 -std=c++17 -o "$bin/${tool#*:}" "$here/tools/reference/${tool%%:*}.cpp" \
    -I"$dest/src/include" -I"$dest/src/ggml/include" \
    "$dest/build/src/libllama.a" "$dest/build/ggml/src/libggml.a" "$dest/build/ggml/src/libggml-cpu.a" \
    "$dest/build/ggml/src/libggml-base.a" -fopenmp -lpthread -ldl >&2
done
echo "$bin"
