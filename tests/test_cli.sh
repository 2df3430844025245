#!/usr/bin/env bash
# The peft program's file commands end to end: inspect, convert, merge (exit codes 0/1/2,
# outputs checked against PEFT's own files). Usage: tests/test_cli.sh PATH/TO/peft
set -uo pipefail
peft="$1"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
check() {  # check NAME COMMAND...: the command must succeed
  local name=$1
  shift
  if "$@" >"$tmp/out" 2>&1; then echo "ok   $name"; else echo "FAIL $name"; cat "$tmp/out"; failures=$((failures + 1)); fi
}
expect_rc() {  # expect_rc NAME RC COMMAND...
  local name=$1 want=$2
  shift 2
  "$@" >"$tmp/out" 2>&1
  local rc=$?
  if [ "$rc" = "$want" ]; then echo "ok   $name"; else echo "FAIL $name: exit $rc, want $want"; cat "$tmp/out"; failures=$((failures + 1)); fi
}
g=tests/data/peft

check "inspect --json lists both adapters and their targets" bash -c \
  "'$peft' inspect --json $g/lora_two_adapters/peft | python3 -c 'import json,sys; d=json.load(sys.stdin); a=d[\"adapters\"]; assert [x[\"name\"] for x in a]==[\"default\",\"other\"], a; assert a[1][\"targets\"]==[\"linear\",\"lm_head\"]; assert a[0][\"parameters\"]==80'"
check "inspect a safetensors file" bash -c "'$peft' inspect $g/lora_seed_example/base.safetensors | grep -q 'linear.weight    F32   \[10, 10\]'"
expect_rc "inspect a missing path exits 1" 1 "$peft" inspect "$tmp/none"
expect_rc "inspect without a path exits 2" 2 "$peft" inspect

check "convert to bfloat16 is byte-identical to PEFT's bfloat16 save" bash -c \
  "'$peft' convert $g/lora_seed_example/peft --dtype bf16 --out $tmp/bf16 && cmp $tmp/bf16/adapter_model.safetensors $g/lora_seed_example/peft_bfloat16/adapter_model.safetensors && cmp $tmp/bf16/adapter_config.json $g/lora_seed_example/peft/adapter_config.json"
check "convert keeps named sub-folders" bash -c \
  "'$peft' convert $g/lora_two_adapters/peft --dtype float16 --out $tmp/f16 && '$peft' inspect $tmp/f16/other/adapter_model.safetensors | grep -q 'F16'"
expect_rc "convert with a bad dtype exits 2" 2 "$peft" convert $g/lora_seed_example/peft --dtype int8 --out "$tmp/x"

check "merge reproduces merged_default.safetensors (DoRA)" bash -c \
  "'$peft' merge --base $g/lora_dora_mlp/base.safetensors --adapter $g/lora_dora_mlp/peft --out $tmp/m.safetensors && '$peft' inspect --json $tmp/m.safetensors | python3 -c 'import json,sys; d=json.load(sys.stdin); assert len(d[\"tensors\"])==6'"
expect_rc "merge without --adapter exits 2" 2 "$peft" merge --base $g/lora_dora_mlp/base.safetensors --out "$tmp/m2.safetensors"
expect_rc "merge of a missing folder exits 1" 1 "$peft" merge --base $g/lora_dora_mlp/base.safetensors --adapter "$tmp/none" --out "$tmp/m3.safetensors"
check "a failed merge wrote nothing" test ! -e "$tmp/m3.safetensors"

# Hugging Face model folders: inspect, generate (a word-level tokenizer over the test Llama's
# 120 ids, so the golden's greedy continuation can be checked from text), embed.
h=tests/data/hf
check "inspect a model folder lists PEFT's default targets" bash -c \
  "'$peft' inspect --json $h/hf_llama_ia3_default_targets/model | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d[\"architecture\"]==\"LlamaForCausalLM\"; t=d[\"default_targets\"][\"IA3\"]; assert t[\"feedforward_modules\"]==[\"down_proj\"]; assert len(t[\"modules\"])==6, t'"
mkdir -p "$tmp/llama"
cp $h/hf_llama_lora_all_linear/model/* "$tmp/llama/"
python3 - "$tmp/llama/tokenizer.json" <<'PY'
import json, sys
vocab = {f"t{i}": i for i in range(120)}
json.dump({"version": "1.0", "truncation": None, "padding": None, "added_tokens": [], "normalizer": None,
           "pre_tokenizer": {"type": "WhitespaceSplit"}, "post_processor": None, "decoder": None,
           "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "t0"}}, open(sys.argv[1], "w"))
PY
check "generate --model streams the golden's greedy continuation" bash -c \
  "'$peft' generate --model $tmp/llama --adapter $h/hf_llama_lora_all_linear/peft --prompt 't1 t9 t44 t3 t70' --max-new-tokens 8 | grep -qx 't1 t9 t44 t3 t70t111 t48 t96 t107 t111 t96 t35 t56'"
check "generate --model with two adapters prints one row each" bash -c \
  "'$peft' generate --model $tmp/llama --adapter $h/hf_llama_lora_all_linear/peft --adapter $h/hf_llama_lora_all_linear/peft --prompt 't1 t9' --max-new-tokens 3 | grep -c '^\[' | grep -qx 2"
expect_rc "generate --model mixing a LoRA and an IA3 adapter exits 1" 1 "$peft" generate --model "$tmp/llama" \
  --adapter $h/hf_llama_lora_all_linear/peft --adapter $h/hf_llama_ia3_default_targets/peft --prompt 't1' --max-new-tokens 2
expect_rc "generate --model on an encoder exits 1" 1 "$peft" generate --model $h/hf_bert_lora_default_targets/model --prompt "t1"
expect_rc "generate --model without --prompt exits 2" 2 "$peft" generate --model "$tmp/llama"
expect_rc "embed without text exits 2" 2 "$peft" embed --model "$tmp/llama"
expect_rc "embed on a folder without tokenizer.json exits 1" 1 "$peft" embed --model $h/hf_bert_lora_default_targets/model "hello"

# GGUF files (tests/data/gguf: tiny llama / qwen2 with byte-level vocabularies)
q=tests/data/gguf
check "inspect a GGUF file: architecture, heads, types with bytes, tokenizer" bash -c \
  "'$peft' inspect $q/tiny_llama.q8_0.gguf > $tmp/i.txt && grep -q 'GGUF v3' $tmp/i.txt && grep -q 'heads 4 (kv 2)' $tmp/i.txt && grep -q 'Q8_0 ' $tmp/i.txt && grep -q 'tokenizer: gpt2' $tmp/i.txt"
check "inspect --json of a GGUF file" bash -c \
  "'$peft' inspect --json $q/tiny_llama.q4_k_m.gguf | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d[\"kind\"]==\"gguf\"; assert \"Q4_K\" in d[\"types\"] and \"Q6_K\" in d[\"types\"], d[\"types\"]; assert d[\"head_count_kv\"]==2; assert d[\"metadata\"][\"tokenizer.ggml.tokens\"][\"length\"]==256'"
check "generate --ids from a GGUF file: the prompt's ids and 5 new ones" bash -c \
  "'$peft' generate --model $q/tiny_qwen2.q8_0.gguf --prompt 'hello' --max-new-tokens 5 --ids > $tmp/g.txt && [ \"\$(head -1 $tmp/g.txt)\" = '104 101 108 108 111' ] && [ \"\$(sed -n 2p $tmp/g.txt | wc -w)\" = 5 ]"
expect_rc "generate --chat without a chat template exits 1" 1 "$peft" generate --model $q/tiny_qwen2.q8_0.gguf --prompt hi --chat
expect_rc "generate --system without --chat exits 2" 2 "$peft" generate --model $q/tiny_qwen2.q8_0.gguf --prompt hi --system x
check "perplexity --json: windows of --ctx, the second halves scored" bash -c \
  "head -c 3000 $q/ppl_glosses.txt > $tmp/t.txt && '$peft' perplexity --model $q/tiny_llama.q8_0.gguf --text $tmp/t.txt --ctx 64 --json | python3 -c 'import json,sys; d=json.load(sys.stdin); assert d[\"ctx\"]==64 and d[\"tokens\"]==d[\"windows\"]*31 and d[\"windows\"]==d[\"text_tokens\"]//64, d; assert 1 < d[\"perplexity\"] < 1e6'"
expect_rc "perplexity of a text shorter than two windows exits 1" 1 "$peft" perplexity --model $q/tiny_llama.q8_0.gguf --text $q/tiny_models.json --ctx 4096
expect_rc "perplexity with --ctx 2 exits 2" 2 "$peft" perplexity --model $q/tiny_llama.q8_0.gguf --text $q/ppl_glosses.txt --ctx 2

# peft bench transformer (issue 30): our side only, on the real MiniLM when scripts/test.sh fetched it
expect_rc "bench transformer with an unknown case exits 2" 2 "$peft" bench transformer --cases nope --no-python
expect_rc "bench transformer on a folder without config.json exits 1" 1 "$peft" bench transformer --model-dir "$tmp" --no-python
if [ -n "${PEFT_MINILM_DIR:-}" ] && [ -f "${PEFT_MINILM_DIR}/model.safetensors" ]; then
  check "bench transformer --no-python: forward, embed and load rows of the real MiniLM" bash -c \
    "'$peft' bench transformer --model-dir '$PEFT_MINILM_DIR' --no-python --cases forward,embed,load --rounds 1 --reps 1 --markdown > $tmp/bt.md && grep -q '^| minilm forward 32x64 |' $tmp/bt.md && grep -q '^| minilm embed 1x16 |' $tmp/bt.md && grep -q '^| minilm load |.*RSS growth' $tmp/bt.md"
else
  echo "skip bench transformer on MiniLM: PEFT_MINILM_DIR is not set (scripts/fetch_minilm.sh)"
fi

# peft serve (issue 31) on the real MiniLM: an embedding over HTTP equals `peft embed`'s bit for
# bit (the golden's adapter), and SIGTERM stops it with exit 0
if [ -n "${PEFT_MINILM_DIR:-}" ] && [ -f "${PEFT_MINILM_DIR}/model.safetensors" ]; then
  mkdir -p "$tmp/serve_adapters" && cp -r $h/hf_minilm_lora_real/peft "$tmp/serve_adapters/golden"
  "$peft" serve --model "$PEFT_MINILM_DIR" --adapter-dir "$tmp/serve_adapters" --port 0 --served-name minilm \
    > "$tmp/serve.out" 2> "$tmp/serve.err" &
  serve_pid=$!
  for _ in $(seq 1 100); do grep -q 'on http://' "$tmp/serve.out" 2>/dev/null && break; sleep 0.1; done
  port=$(sed -n 's|.*on http://127.0.0.1:\([0-9]*\).*|\1|p' "$tmp/serve.out")
  "$peft" embed --model "$PEFT_MINILM_DIR" --adapter $h/hf_minilm_lora_real/peft --out "$tmp/emb.safetensors" \
    "a cat sat on the mat" "definition search" > /dev/null
  check "serve: /v1/embeddings with an adapter is bit-equal to peft embed --adapter" python3 - "$port" "$tmp/emb.safetensors" <<'PY'
import json, struct, sys, urllib.request
port, path = sys.argv[1], sys.argv[2]
req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/embeddings", method="POST",
    data=json.dumps({"model": "minilm:golden", "input": ["a cat sat on the mat", "definition search"]}).encode(),
    headers={"Content-Type": "application/json"})
got = [d["embedding"] for d in json.load(urllib.request.urlopen(req))["data"]]
raw = open(path, "rb").read()
n = struct.unpack("<Q", raw[:8])[0]
meta = json.loads(raw[8:8 + n])["embeddings"]
rows, cols = meta["shape"]
vals = struct.unpack(f"<{rows * cols}f", raw[8 + n + meta["data_offsets"][0]:8 + n + meta["data_offsets"][1]])
want = [list(vals[i * cols:(i + 1) * cols]) for i in range(rows)]
assert [struct.pack("<f", v) for r in got for v in r] == [struct.pack("<f", v) for r in want for v in r], "bits differ"
PY
  kill -TERM $serve_pid
  wait $serve_pid
  rc=$?
  check "serve: SIGTERM stops it with exit 0" bash -c "[ $rc = 0 ] && grep -q 'peft serve: stopped' $tmp/serve.out"
else
  echo "skip serve on MiniLM: PEFT_MINILM_DIR is not set (scripts/fetch_minilm.sh)"
fi
expect_rc "serve without --model exits 2" 2 "$peft" serve --port 0
expect_rc "serve with an unknown --chat-template exits 1" 1 "$peft" serve --model $q/tiny_llama.q8_0.gguf --port 0 --chat-template nonsense

echo "cli: $failures failure(s)"
exit $((failures > 0))
