#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set up ./.venv, build, run pytest. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
.venv/bin/python -m pytest -q tests "$@"
