#!/usr/bin/env bash
# Builds the libFuzzer targets with clang + ASan + UBSan into build-fuzz/ (or $1) and
# writes their seed corpora (tools/fuzz/make_seeds.py). Usage: tools/fuzz/build.sh [builddir]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
B=${1:-build-fuzz}
if [ ! -d "$B" ]; then
  CXX=${CXX:-clang++} meson setup "$B" -Dfuzz=true -Dcuda=disabled \
    -Db_sanitize=address,undefined -Db_lundef=false -Dbuildtype=debugoptimized \
    -Dcpp_args=-fno-sanitize-recover=all -Dcpp_link_args=-fno-sanitize-recover=all
fi
ninja -C "$B" -j"${JOBS:-2}" tools/fuzz/fuzz_safetensors tools/fuzz/fuzz_config \
  tools/fuzz/fuzz_load_adapter tools/fuzz/fuzz_state_dict tools/fuzz/fuzz_tokenizer tools/fuzz/fuzz_model_folder \
  tools/fuzz/fuzz_gguf
python3 tools/fuzz/make_seeds.py "$B/corpus"
# gguf: the goldens' tiny GGUF files (every type, llama / qwen2 models with tokenizers)
mkdir -p "$B/corpus/gguf"
cp tests/data/gguf/*.gguf "$B/corpus/gguf/"
for t in state_dict tokenizer model_folder; do
  PEFT_FUZZ_WRITE_SEEDS="$B/corpus/$t" "$B/tools/fuzz/fuzz_$t"
done
echo "built: $B/tools/fuzz/fuzz_{safetensors,config,load_adapter,state_dict,tokenizer,model_folder,gguf}; seeds in $B/corpus/"
