#!/usr/bin/env bash
# Data-parallel training under mpirun (registered only in builds with MPI): `-n 2` must give
# the adapter of `-n 1` with the same global batch (float32 summation order aside), and ranks
# started with different settings, or a rank that fails, must stop the whole job with a
# message naming the rank. Usage: tests/test_mpi.sh PATH/TO/peft MPIRUN
# The finetune-embed part runs on the real all-MiniLM-L6-v2 when PEFT_MINILM_DIR is set.
set -uo pipefail
peft="$1"
mpirun="$2"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failures=0
# root in containers; --oversubscribe: two ranks on fewer cores; one thread per rank
launch() { "$mpirun" --allow-run-as-root --oversubscribe -x PEFT_NUM_THREADS=1 "$@"; }
check() {  # check NAME COMMAND...: the command must succeed
  local name=$1
  shift
  if "$@" >"$tmp/out" 2>&1; then echo "ok   $name"; tail -n 1 "$tmp/out"; else echo "FAIL $name"; cat "$tmp/out"; failures=$((failures + 1)); fi
}
expect_failure() {  # expect_failure NAME PATTERN COMMAND...: non-zero exit, PATTERN in the output
  local name=$1 pattern=$2
  shift 2
  "$@" >"$tmp/out" 2>&1
  local rc=$?
  if [ "$rc" != 0 ] && grep -q -- "$pattern" "$tmp/out"; then
    echo "ok   $name"
    grep -- "$pattern" "$tmp/out" | head -n 1
  else
    echo "FAIL $name: exit $rc, want non-zero and '$pattern'"; cat "$tmp/out"; failures=$((failures + 1))
  fi
}
compare="python3 tests/compare_safetensors.py"
# same_gradients REPORT_A REPORT_B: the averaged gradient norms in report.json agree: step 1
# (same weights on both sides) to 1e-6 relative, later steps to 1e-4 (Adam magnifies the float32
# rounding of the earlier steps). Adam's update barely depends on the gradient's scale, so a
# wrong factor in the average (a sum, or a missing x ranks) shows here and not in the adapters.
same_gradients() { python3 -c "
import json, sys
a, b = (json.load(open(sys.argv[i]))['gradient_norms'] for i in (1, 2))
if len(a) != len(b) or not a: sys.exit(f'gradient_norms: {a} vs {b}')
for i, (x, y) in enumerate(zip(a, b)):
    tol = 1e-6 if i == 0 else 1e-4
    if abs(x - y) > tol * abs(x): sys.exit(f'step {i + 1}: gradient norm {x} vs {y} (tolerance {tol} relative)')
print(f'{len(a)} steps: gradient norms agree (step 1: {abs(a[0] - b[0]) / abs(a[0]):.1e} relative)')" "$1" "$2"; }
# Under scripts/sanitize.sh: OpenMPI's own allocations are suppressed by library name, and
# their stacks reach an OpenMPI frame only with the slow unwinder (the plugins lack frame pointers).
if [ -n "${LSAN_OPTIONS:-}" ]; then export LSAN_OPTIONS="$LSAN_OPTIONS:fast_unwind_on_malloc=0"; fi

# --- the character-level job: a small base model, 6 LoRA steps on 3,000 French words
head -n 3000 /usr/share/dict/french >"$tmp/fr.txt"
"$peft" pretrain --data /usr/share/dict/american-english --out "$tmp/base.safetensors" --steps 40 --batch 64 \
  --hidden 64 >/dev/null 2>&1 || { echo "FAIL pretrain"; exit 1; }
# ft_on DATA [STEPS] [BATCH]: the finetune arguments (mktemp paths have no spaces)
ft_on() { echo finetune --base "$tmp/base.safetensors" --steps "${2:-6}" --batch "${3:-64}" --lr 1e-2 --data "$1"; }
ft=($(ft_on "$tmp/fr.txt"))
check "finetune under mpirun -n 1" launch -n 1 "$peft" "${ft[@]}" --out "$tmp/lm1"
check "finetune under mpirun -n 2" launch -n 2 "$peft" "${ft[@]}" --out "$tmp/lm2"
check "mpirun -n 2 gives the adapter of -n 1 (1e-5 relative)" \
  $compare "$tmp/lm1/adapter_model.safetensors" "$tmp/lm2/adapter_model.safetensors" 1e-5
check "mpirun -n 1 gives the adapter of a plain run, bit for bit" bash -c \
  "PEFT_NUM_THREADS=1 '$peft' ${ft[*]} --out '$tmp/lm0' && cmp '$tmp/lm0/adapter_model.safetensors' '$tmp/lm1/adapter_model.safetensors'"
check "mpirun -n 2 has the gradients of -n 1" same_gradients "$tmp/lm1/report.json" "$tmp/lm2/report.json"
check "only rank 0 wrote: report.json says 2 ranks" grep -q '"ranks": 2' "$tmp/lm2/report.json"

# --- faults: every rank stops, the message names the rank and what differs; nothing written
expect_failure "ranks given different --steps stop with a message naming rank 1 and --steps" \
  "rank 1 differs from rank 0 in --steps (rank 0: 6)" \
  launch -n 1 "$peft" "${ft[@]}" --out "$tmp/mismatch" : -n 1 "$peft" $(ft_on "$tmp/fr.txt" 7) --out "$tmp/mismatch"
check "the mismatched job wrote nothing" test ! -e "$tmp/mismatch"
head -n 2000 /usr/share/dict/french >"$tmp/fr2.txt"
expect_failure "ranks given different data stop with a message naming it" \
  "rank 1 differs from rank 0 in --data (the training examples)" \
  launch -n 1 "$peft" "${ft[@]}" --out "$tmp/mismatch" : -n 1 "$peft" $(ft_on "$tmp/fr2.txt") --out "$tmp/mismatch"
expect_failure "a rank that fails stops the job with a message naming it" \
  "error on rank 1 of 2: cannot read word list" \
  launch -n 1 "$peft" "${ft[@]}" --out "$tmp/dead" : -n 1 "$peft" $(ft_on "$tmp/missing.txt") --out "$tmp/dead"
check "the failed job wrote nothing" test ! -e "$tmp/dead"
expect_failure "a batch that does not split over the ranks is refused" "does not split evenly over 2 ranks" \
  launch -n 2 "$peft" $(ft_on "$tmp/fr.txt" 6 63) --out "$tmp/odd"

# --- finetune --model: causal-LM SFT of the tiny GGUF llama; the ranks' shards score different
#     numbers of tokens, so the average must weight them (dropout 0: the ranks' masks differ)
for i in $(seq 0 39); do
  printf '{"prompt": "Question %d: ", "completion": "%s"}\n' "$i" "$(head -c $((2 + (i * 7) % 11)) /dev/zero | tr '\0' "$(printf "\\x$(printf %x $((97 + i % 7)))")")"
done >"$tmp/qa.jsonl"
dec=(finetune --model tests/data/gguf/tiny_llama.q8_0.gguf --data "$tmp/qa.jsonl" --steps 4 --batch 4 --lr 5e-3 --r 4
  --dropout 0 --max-length 48 --samples 0)
# every product as float32 sgemm: below 32 rows (a rank's half batch) the quantized linear would
# otherwise quantize the activations to 8 bits, as llama.cpp does, and -n 2 would differ from -n 1
launch_dec() { PEFT_QUANT_SGEMM_ROWS=1 launch -x PEFT_QUANT_SGEMM_ROWS "$@"; }
check "finetune --model under mpirun -n 1" launch_dec -n 1 "$peft" "${dec[@]}" --out "$tmp/d1"
check "finetune --model under mpirun -n 2" launch_dec -n 2 "$peft" "${dec[@]}" --out "$tmp/d2"
check "finetune --model: -n 2 has the gradients of -n 1 (token-weighted average)" \
  same_gradients "$tmp/d1/report.json" "$tmp/d2/report.json"
check "finetune --model: -n 2 gives the adapter of -n 1 (1e-5 relative)" \
  $compare "$tmp/d1/adapter/adapter_model.safetensors" "$tmp/d2/adapter/adapter_model.safetensors" 1e-5

# --- finetune-embed on the real MiniLM: the in-batch-negatives loss spans the global batch
if [ -z "${PEFT_MINILM_DIR:-}" ] || [ ! -f "${PEFT_MINILM_DIR}/model.safetensors" ]; then
  echo "skip finetune-embed under mpirun: PEFT_MINILM_DIR is not set (scripts/fetch_minilm.sh downloads the model)"
else
  # the model without its dropout: each rank draws its own masks, which no single run reproduces
  mkdir -p "$tmp/minilm"
  for f in "$PEFT_MINILM_DIR"/*; do ln -s "$f" "$tmp/minilm/"; done
  rm "$tmp/minilm/config.json"
  sed -E 's/"(hidden|attention_probs)_dropout_prob": *[0-9.]+/"\1_dropout_prob": 0.0/' "$PEFT_MINILM_DIR/config.json" \
    >"$tmp/minilm/config.json"
  printf 'id\tquery\tdoc\n' >"$tmp/train.tsv"
  words=(cat dog tree river stone cloud bread chair lamp apple violin garden engine candle mirror ladder)
  for w in "${words[@]}"; do printf 'x\ta thing called %s\t%s\n' "$w" "$w" >>"$tmp/train.tsv"; done
  for w in "${words[@]}"; do printf 'x\tsomething like a %s\t%s\n' "$w" "$w" >>"$tmp/train.tsv"; done
  head -n 9 "$tmp/train.tsv" >"$tmp/heldout.tsv"
  fe=(finetune-embed --model "$tmp/minilm" --train "$tmp/train.tsv" --heldout "$tmp/heldout.tsv" --steps 3 --batch 16
    --warmup 1 --checkpoint-every 0 --examples 0)
  check "finetune-embed under mpirun -n 1" launch -n 1 "$peft" "${fe[@]}" --out "$tmp/e1"
  check "finetune-embed under mpirun -n 2" launch -n 2 "$peft" "${fe[@]}" --out "$tmp/e2"
  check "finetune-embed: -n 2 has the global batch's loss of -n 1 (1e-5 relative)" python3 -c "
import json, sys
a, b = (json.load(open(sys.argv[i]))['final_loss'] for i in (1, 2))
sys.exit(0 if abs(a - b) <= 1e-5 * abs(a) else f'final loss {a} vs {b}')" "$tmp/e1/report.json" "$tmp/e2/report.json"
  check "finetune-embed: -n 2 has the gradients of -n 1 (x ranks before the average)" \
    same_gradients "$tmp/e1/report.json" "$tmp/e2/report.json"
  # Adam's first steps divide by the root of tiny squared gradients, which magnifies the float32
  # rounding of sums over 8 rows instead of 16 (measured 1e-5 to 1e-4 on lora_B); a wrong
  # gradient (e.g. a loss over the shard only) is off by far more than 1e-3
  check "finetune-embed: -n 2 gives the adapter of -n 1 (1e-3 relative)" \
    $compare "$tmp/e1/adapter/adapter_model.safetensors" "$tmp/e2/adapter/adapter_model.safetensors" 1e-3
fi

if [ "$failures" -ne 0 ]; then
  echo "$failures mpi check(s) failed"
  exit 1
fi
echo "all mpi checks passed"
