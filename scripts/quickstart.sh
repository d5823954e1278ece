#!/usr/bin/env bash
# Sets up ./.venv and runs the offline quickstart: a real Ray Tune + Optuna/ASHA search on the
# built-in mini suite with the shipped tiny backbone, tracked in MLflow, winners exported.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --runtime
exec .venv/bin/vptsearch launch --space search_spaces/mini_deep.yaml "$@"
