#!/usr/bin/env bash
# End-to-end check of `peft convert --to gguf` against llama.cpp (not part of CI: it needs
# llama.cpp's programs, scripts/build_llama_cpp.sh): converts a PEFT LoRA adapter folder trained
# on a GGUF model to llama.cpp's LoRA GGUF, then computes the perplexity of the same text
#   - with llama.cpp:  llama-perplexity -m MODEL --lora ADAPTER.gguf -f TEXT -c CTX
#   - with peft.cpp:   peft perplexity --model MODEL --adapter ADAPTER_DIR --text TEXT --ctx CTX
# (the same windows: both tokenize the whole file, cut it into windows of CTX tokens, put BOS
# first in each and score the second half of each window; KV cache float16 in both), and
# prints both, and the base model's without the adapter, with the relative differences.
#
#   scripts/check_lora_gguf.sh ADAPTER_DIR [TEXT]
#
# Environment: MODEL (default ~/.cache/peft/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf), CTX (256),
# TOL (relative tolerance, 0.01), PEFT (build/tools/peft), LLAMA_BIN (the folder with
# llama-perplexity; default: scripts/build_llama_cpp.sh's), VARIANTS=1 to also check copies of
# the adapter with use_rslora=true and with use_rslora=true + alpha_pattern {"v_proj": 4,
# "down_proj": 24} written into adapter_config.json (the same factors, other PEFT scales: checks
# that the converter folds them into lora_b). REFERENCE=1 also runs llama.cpp's own
# convert_lora_to_gguf.py on the adapter (python3 with torch, transformers, safetensors; the
# base's config.json rebuilt from the GGUF metadata) and compares every tensor with ours: they
# must be equal bit for bit (float32). TEXT defaults to tests/data/gguf/ppl_glosses.txt.
# Besides the perplexities it prints each tool's change from its own base perplexity (the
# adapter's effect; the two tools' base perplexities differ by their quantized arithmetic).
# F32=1 repeats everything on a float32 copy of MODEL (llama-quantize --allow-requantize ... F32),
# where llama.cpp does not round activations to 8 bits: what differs there is the conversion.
# Exit status 1 when a relative difference exceeds TOL or the reference tensors differ.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ $# -ge 1 ] || { sed -n '2,30p' "${BASH_SOURCE[0]}"; exit 2; }
adapter="$1"
text="${2:-$here/tests/data/gguf/ppl_glosses.txt}"
model="${MODEL:-$HOME/.cache/peft/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
ctx="${CTX:-256}"
tol="${TOL:-0.01}"
peft="${PEFT:-$here/build/tools/peft}"
threads="${THREADS:-$(nproc)}"
if [ -z "${LLAMA_BIN:-}" ]; then
  LLAMA_BIN="${PEFT_CACHE:-$HOME/.cache/peft}/llama.cpp/build/bin"
  [ -x "$LLAMA_BIN/llama-perplexity" ] || LLAMA_BIN="$(bash "$here/scripts/build_llama_cpp.sh")"
fi
for f in "$adapter/adapter_config.json" "$model" "$text" "$peft" "$LLAMA_BIN/llama-perplexity"; do
  [ -e "$f" ] || { echo "check_lora_gguf: $f does not exist" >&2; exit 2; }
done
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

llama_ppl() {  # MODEL [--lora FILE]
  local out
  out="$("$LLAMA_BIN/llama-perplexity" -m "$1" "${@:2}" -f "$text" -c "$ctx" -b "$ctx" -t "$threads" 2>&1)" || {
    echo "$out" | tail -20 >&2
    echo "check_lora_gguf: llama-perplexity failed" >&2
    exit 1
  }
  echo "$out" | sed -n 's/.*Final estimate: PPL = \([0-9.]*\).*/\1/p'
}
peft_ppl() {  # MODEL [--adapter DIR]
  "$peft" perplexity --model "$1" "${@:2}" --text "$text" --ctx "$ctx" --threads "$threads" --json |
    sed -n 's/.*"perplexity": *\([0-9.eE+-]*\).*/\1/p'
}
rel() { awk -v a="$1" -v b="$2" 'BEGIN { d = (a - b) / b; if (d < 0) d = -d; printf "%.4f%%", 100 * d }'; }
over() { awk -v a="$1" -v b="$2" -v t="$tol" 'BEGIN { d = (a - b) / b; if (d < 0) d = -d; exit !(d > t) }'; }

status=0
change() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%+.2f%%", 100 * (a / b - 1) }'; }
report() {  # LABEL OURS LLAMA
  local mark=ok effect=""
  if over "$2" "$3"; then mark="FAIL (> $tol)"; status=1; fi
  [ -n "${base_ours:-}" ] && [ -n "${base_llama:-}" ] &&
    effect="$(printf '  vs base: peft.cpp %s, llama.cpp %s' "$(change "$2" "$base_ours")" "$(change "$3" "$base_llama")")"
  printf '%-32s peft.cpp %9.4f  llama.cpp %9.4f  rel. diff %s  %s%s\n' "$1" "$2" "$3" "$(rel "$2" "$3")" "$mark" "$effect"
}

check() {  # LABEL ADAPTER_DIR (on $model)
  "$peft" convert "$2" --to gguf --base "$model" --out "$work/adapter.gguf" >&2
  local ours llama
  ours="$(peft_ppl "$model" --adapter "$2")"
  llama="$(llama_ppl "$model" --lora "$work/adapter.gguf")"
  report "$1" "$ours" "$llama"
}

if [ "${VARIANTS:-0}" = 1 ]; then
  cp -r "$adapter" "$work/rslora"
  sed -i 's/"use_rslora": *false/"use_rslora": true/' "$work/rslora/adapter_config.json"
  grep -q '"use_rslora": *true' "$work/rslora/adapter_config.json" || { echo "cannot set use_rslora" >&2; exit 2; }
  cp -r "$work/rslora" "$work/patterns"
  sed -i 's/"alpha_pattern": *{}/"alpha_pattern": {"v_proj": 4, "down_proj": 24}/' "$work/patterns/adapter_config.json"
  grep -q '"v_proj": 4' "$work/patterns/adapter_config.json" || { echo "cannot set alpha_pattern" >&2; exit 2; }
fi

run_all() {  # on $model
  echo "model $model"
  echo "text  $text (ctx $ctx)"
  base_ours="" base_llama=""
  local b_ours b_llama
  b_ours="$(peft_ppl "$model")"
  b_llama="$(llama_ppl "$model")"
  report "base model (no adapter)" "$b_ours" "$b_llama"
  base_ours="$b_ours" base_llama="$b_llama"
  check "adapter $(basename "$adapter")" "$adapter"
  if [ "${VARIANTS:-0}" = 1 ]; then
    check "same weights, use_rslora=true" "$work/rslora"
    check "rslora + alpha_pattern" "$work/patterns"
  fi
}
run_all
if [ "${F32:-0}" = 1 ]; then
  # llama.cpp's quantized matrix products round the activations to 8 bits (ours, on 256-token
  # windows, multiply dequantized tiles in float32): on a float32 copy of the model both compute
  # in float32, and what remains is the conversion's own error
  "$LLAMA_BIN/llama-quantize" --allow-requantize "$model" "$work/model-f32.gguf" F32 "$threads" >"$work/quantize.log" 2>&1 ||
    { tail -5 "$work/quantize.log" >&2; echo "check_lora_gguf: llama-quantize failed" >&2; exit 1; }
  model="$work/model-f32.gguf"
  run_all
  rm -f "$work/model-f32.gguf"
  model="${MODEL:-$HOME/.cache/peft/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf}"
fi

if [ "${REFERENCE:-0}" = 1 ]; then
  src="${PEFT_CACHE:-$HOME/.cache/peft}/llama.cpp/src"
  [ -f "$src/convert_lora_to_gguf.py" ] || src="$(bash "$here/scripts/fetch_llama_cpp_src.sh")"
  mkdir -p "$work/base_config"
  "$peft" convert "$adapter" --to gguf --base "$model" --out "$work/ours.gguf" >&2
  python3 - "$src" "$model" "$work/base_config/config.json" <<'PY'
import json, sys
sys.path.insert(0, sys.argv[1] + "/gguf-py")
import gguf
r = gguf.GGUFReader(sys.argv[2])
arch = r.fields["general.architecture"].contents()
v = lambda k: r.fields[f"{arch}.{k}"].contents()
names = [t.name for t in r.tensors]
cfg = {"architectures": ["LlamaForCausalLM" if arch == "llama" else "Qwen2ForCausalLM"], "model_type": arch,
       "hidden_size": v("embedding_length"), "intermediate_size": v("feed_forward_length"),
       "num_hidden_layers": v("block_count"), "num_attention_heads": v("attention.head_count"),
       "num_key_value_heads": v("attention.head_count_kv"), "rms_norm_eps": v("attention.layer_norm_rms_epsilon"),
       "rope_theta": v("rope.freq_base"), "max_position_embeddings": v("context_length"),
       "vocab_size": len(r.fields["tokenizer.ggml.tokens"].data), "tie_word_embeddings": "output.weight" not in names,
       "hidden_act": "silu", "torch_dtype": "float32"}
json.dump(cfg, open(sys.argv[3], "w"))
PY
  python3 "$src/convert_lora_to_gguf.py" --base "$work/base_config" --outtype f32 --outfile "$work/ref.gguf" "$adapter" \
    >"$work/ref.log" 2>&1 || { tail -20 "$work/ref.log" >&2; echo "check_lora_gguf: convert_lora_to_gguf.py failed" >&2; exit 1; }
  python3 - "$src" "$work/ref.gguf" "$work/ours.gguf" <<'PY' || status=1
import sys
sys.path.insert(0, sys.argv[1] + "/gguf-py")
import gguf, numpy as np
ref, ours = gguf.GGUFReader(sys.argv[2]), gguf.GGUFReader(sys.argv[3])
kv = lambda r: {f.name: f.contents() for f in r.fields.values() if not f.name.startswith("GGUF.")}
tr, to = {t.name: t for t in ref.tensors}, {t.name: t for t in ours.tensors}
bad = sorted(n for n in tr if n not in to or tr[n].tensor_type != to[n].tensor_type
             or not np.array_equal(np.asarray(tr[n].data), np.asarray(to[n].data)))
extra = sorted(set(to) - set(tr))
kr, ko = kv(ref), kv(ours)
keys = [k for k in kr if k != "general.name" and kr[k] != ko.get(k)]
print(f"convert_lora_to_gguf.py reference: {len(tr)} tensors, {len(bad)} differ, {len(extra)} extra; "
      f"metadata differing: {keys or 'none'} (general.name: {kr.get('general.name')!r} there, not written by peft.cpp)")
for n in bad[:5]: print("  differs:", n)
sys.exit(1 if bad or extra or keys else 0)
PY
fi

exit $status
