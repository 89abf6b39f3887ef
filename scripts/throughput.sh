#!/usr/bin/env bash
# The main job, from a fresh machine: set up ./.venv, build, run benchmarks/throughput.py (args pass through).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python benchmarks/throughput.py "$@"
