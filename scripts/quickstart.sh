#!/usr/bin/env bash
# README command 1: install what is missing, build, run the main job.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
source scripts/deps.sh
exec build/tools/peft demo "$@"
