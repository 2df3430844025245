#!/usr/bin/env bash
# Decoder fine-tuning end to end on the tiny GGUF llama (Q8_0, byte tokenizer): `peft
# dictd-data`, `peft finetune --model` (report fields, learning, refusals) and the Trainer
# example of docs/training.md (examples/finetune_decoder.cpp: a rerun resumes from its last
# checkpoint and writes the adapter bits of the first run).
# Usage: tests/test_finetune_decoder.sh PATH/TO/peft PATH/TO/finetune_decoder
set -uo pipefail
peft="$1"
example="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
check() {  # check NAME COMMAND...: the command must succeed
  local name=$1
  shift
  if "$@" >"$tmp/out" 2>&1; then echo "ok   $name"; else echo "FAIL $name"; cat "$tmp/out"; failures=$((failures + 1)); fi
}
expect_failure() {  # expect_failure NAME RC PATTERN COMMAND...
  local name=$1 want=$2 pattern=$3
  shift 3
  "$@" >"$tmp/out" 2>&1
  local rc=$?
  if [ "$rc" = "$want" ] && grep -q -- "$pattern" "$tmp/out"; then echo "ok   $name"; else
    echo "FAIL $name: exit $rc (want $want), want '$pattern' in:"; cat "$tmp/out"; failures=$((failures + 1)); fi
}
tiny=tests/data/gguf/tiny_llama.q8_0.gguf

# --- dictd-data: tests/data/dictd/mini holds 10 entries, one ("CUI BONO?") without "WORD, "
check "dictd-data: 9 entries, 3 held out" bash -c \
  "'$peft' dictd-data --dict tests/data/dictd/mini --out $tmp/dict --heldout-fraction 0.3 --seed 1 | grep -q '9 entries (1 without a .WORD, . first line skipped): 6 train, 3 held out' && test \$(wc -l <$tmp/dict/train.jsonl) = 6 && test \$(wc -l <$tmp/dict/heldout.jsonl) = 3"
check "dictd-data: the first paragraph on one line, the prompt names the word" bash -c \
  "cat $tmp/dict/*.jsonl | grep -qF '{\"messages\":[{\"content\":\"Define ABACUS the way the Devil'\"'\"'s Dictionary would.\",\"role\":\"user\"},{\"content\":\"ABACUS, n. In Rome, an instrument for counting beads.\",\"role\":\"assistant\"}]}'"
check "dictd-data: another seed, another split of the same examples" bash -c \
  "'$peft' dictd-data --dict tests/data/dictd/mini --out $tmp/dict2 --heldout-fraction 0.3 --seed 2 >/dev/null && ! cmp -s $tmp/dict/heldout.jsonl $tmp/dict2/heldout.jsonl && test \"\$(cat $tmp/dict/*.jsonl | sort)\" = \"\$(cat $tmp/dict2/*.jsonl | sort)\""
expect_failure "dictd-data: a prompt without {word} is a usage error" 2 "must contain {word}" \
  "$peft" dictd-data --dict tests/data/dictd/mini --out "$tmp/x" --prompt "Define it"

# --- finetune --model on the tiny llama: prompt/completion pairs
for i in $(seq 0 39); do
  printf '{"prompt": "Q%d: ", "completion": "%s"}\n' "$i" "$(printf "%$((3 + i % 5))s" | tr ' ' "$(printf "\\x$(printf %x $((97 + i % 7)))")")"
done >"$tmp/qa.jsonl"
ft=(finetune --model "$tiny" --data "$tmp/qa.jsonl" --steps 8 --batch 4 --lr 5e-3 --r 4 --max-length 32 --samples 1 --max-new-tokens 4)
check "finetune --model: trains, writes adapter, loss.svg, report.json" "$peft" "${ft[@]}" --out "$tmp/ft"
check "finetune --model: report.json has the issue's fields, and the eval loss fell" python3 -c "
import json, sys
r = json.load(open('$tmp/ft/report.json'))
for k in ('eval_loss_before', 'eval_loss_after', 'train_examples', 'eval_examples', 'truncated', 'steps', 'seconds_per_step', 'peak_rss_bytes'):
    assert k in r, k
assert r['train_examples'] == 38 and r['eval_examples'] == 2, (r['train_examples'], r['eval_examples'])  # 5% held out
assert r['steps'] == 8 and r['truncated'] == 0 and r['peak_rss_bytes'] > 0 and r['seconds_per_step'] > 0
assert r['eval_loss_after'] < r['eval_loss_before'], (r['eval_loss_before'], r['eval_loss_after'])
assert len(r['samples']) == 1 and set(r['samples'][0]) == {'prompt', 'base', 'tuned'}
assert r['base_dtype'] == 'q8_0', r['base_dtype']"
check "finetune --model: the adapter folder is PEFT's (config names the targets q_proj, v_proj)" bash -c \
  "test -s $tmp/ft/adapter/adapter_model.safetensors && test -s $tmp/ft/loss.svg && python3 -c \"import json; c = json.load(open('$tmp/ft/adapter/adapter_config.json')); assert sorted(c['target_modules']) == ['q_proj', 'v_proj'] and c['r'] == 4, c\""
check "finetune --model: the same command gives the same adapter bits" bash -c \
  "'$peft' ${ft[*]} --out $tmp/ft2 >/dev/null && cmp $tmp/ft/adapter/adapter_model.safetensors $tmp/ft2/adapter/adapter_model.safetensors"
check "convert --to gguf: the finetuned adapter as llama.cpp's LoRA file" bash -c \
  "'$peft' convert $tmp/ft/adapter --to gguf --base $tiny --out $tmp/ft.gguf >/dev/null && '$peft' inspect $tmp/ft.gguf | grep -q 'F32       8 tensors' && grep -qa 'adapter.lora.alpha' $tmp/ft.gguf && grep -qa 'blk.1.attn_v.weight.lora_b' $tmp/ft.gguf"
expect_failure "finetune --model --resume without a checkpoint says so" 1 "no checkpoint" \
  "$peft" "${ft[@]}" --out "$tmp/none" --resume
expect_failure "finetune --model: --max-length beyond the model's positions is a usage error" 2 "exceeds the model's" \
  "$peft" finetune --model "$tiny" --data "$tmp/qa.jsonl" --max-length 100000 --out "$tmp/x"
printf '{"prompt": "a", "completion": "b"}\n{"prompt": "a"\n' >"$tmp/bad.jsonl"
expect_failure "finetune --model: a malformed line names file and line" 1 "bad.jsonl:2" \
  "$peft" finetune --model "$tiny" --data "$tmp/bad.jsonl" --out "$tmp/x"

# --- the docs/training.md example: 30 steps (checkpoint at 20); a rerun resumes at 20
check "example: finetune_decoder trains and writes a PEFT folder" bash -c \
  "'$example' '$tiny' $tmp/qa.jsonl $tmp/ex 30 >$tmp/ex.log && test -s $tmp/ex/adapter/adapter_model.safetensors"
check "example: the eval loss fell" python3 -c "
import re
m = re.search(r'eval loss ([0-9.]+) -> ([0-9.]+)', open('$tmp/ex.log').read())
assert m and float(m[2]) < float(m[1]), m"
check "example: a rerun resumes from the step-20 checkpoint with the same adapter bits" bash -c \
  "cp $tmp/ex/adapter/adapter_model.safetensors $tmp/first.safetensors && '$example' '$tiny' $tmp/qa.jsonl $tmp/ex 30 | grep -q 'resumed at step 20' && cmp $tmp/first.safetensors $tmp/ex/adapter/adapter_model.safetensors"

if [ "$failures" != 0 ]; then echo "$failures failed"; exit 1; fi
echo "all passed"
