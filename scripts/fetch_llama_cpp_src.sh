#!/usr/bin/env bash
# Fetches llama.cpp's source from the PyPI source package llama-cpp-python==0.3.36 (its
# vendor/llama.cpp) into ${PEFT_CACHE:-~/.cache/peft}/llama.cpp/src once, and prints that folder.
# The tests read its vocabulary-only GGUF files (models/ggml-vocab-*.gguf, with llama.cpp's own
# expected tokenizations) and chat templates; scripts/build_llama_cpp.sh builds it.
set -euo pipefail
cache="${PEFT_CACHE:-$HOME/.cache/peft}"
dest="$cache/llama.cpp/src"
if [ -f "$dest/CMakeLists.txt" ] && [ -d "$dest/models" ]; then
  echo "$dest"
  exit 0
fi
mkdir -p "$cache/llama.cpp"
tmp="$(mktemp -d "$cache/.fetch.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
echo "peft.cpp: downloading llama-cpp-python==0.3.36 (PyPI source package, ~77 MB)" >&2
python3 -m pip download --no-deps --no-binary :all: --disable-pip-version-check --quiet --dest "$tmp" \
  llama-cpp-python==0.3.36 >&2
tar -xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp"
rm -rf "$dest"
mv "$tmp/llama_cpp_python-0.3.36/vendor/llama.cpp" "$dest"
echo "$dest"
