#!/usr/bin/env bash
# Installs the Debian 12 packages peft.cpp needs, only when something is missing,
# then configures ./build once (not with PEFT_DEPS_ONLY=1). Sourced by quickstart.sh,
# test.sh and gpu_check.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PEFT_PACKAGES=(g++ meson ninja-build cmake pkg-config libeigen3-dev libdnnl-dev
  nlohmann-json3-dev doctest-dev wamerican wfrench wngerman python3 python3-pip
  libpcre2-dev libutf8proc-dev zlib1g-dev libcpp-httplib-dev wordnet-base dict-devil libopenmpi-dev openmpi-bin)

missing=()
for p in "${PEFT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "peft.cpp: installing ${missing[*]}" >&2
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}" >/dev/null
fi

if [ "${PEFT_DEPS_ONLY:-0}" != 1 ]; then
  if [ ! -f build/build.ninja ]; then
    meson setup build >/dev/null
  fi
  ninja -C build >/dev/null || ninja -C build  # on failure, show the errors
fi
