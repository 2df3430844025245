#!/usr/bin/env bash
# README command 1: install what is missing, build, run the main job:
# pretrain a character-level language model on English words (cached in
# out/), fine-tune a French and a German LoRA adapter, compare held-out loss,
# and sample words from both adapters in one mixed batch.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/deps.sh
peft=build/tools/peft
dict=/usr/share/dict
mkdir -p out
$peft pretrain --data $dict/american-english --out out/base.safetensors --steps 1500
$peft finetune --base out/base.safetensors --data $dict/french --out out/french --steps 400
$peft finetune --base out/base.safetensors --data $dict/ngerman --out out/german --steps 400

field() { sed -n "s/.*\"$2\": \([0-9.e+-]*\).*/\1/p" "$1/report.json"; }
echo
echo "held-out loss (nats/char)   base model   LoRA adapter   trainable"
for lang in french german; do
  printf "%-27s %10.4f %14.4f   %s of %s\n" "$lang" "$(field out/$lang heldout_loss_base)" \
    "$(field out/$lang heldout_loss_tuned)" "$(field out/$lang trainable_parameters)" \
    "$(field out/$lang total_parameters)"
done
echo
echo "samples, one batch, each row with its own adapter:"
$peft generate --base out/base.safetensors --adapter out/french --adapter out/german --n 6
