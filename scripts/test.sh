#!/usr/bin/env bash
# Sets up ./.venv and runs the default (fast) test suite. Extra arguments go to pytest,
# e.g. `bash scripts/test.sh -m slow` for the slow-marked tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/mypy vptsearch  # typed public API (config in pyproject.toml)
exec .venv/bin/python -m pytest "$@"
