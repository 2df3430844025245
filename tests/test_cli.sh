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

echo "cli: $failures failure(s)"
exit $((failures > 0))
