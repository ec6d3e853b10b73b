#!/usr/bin/env bash
# Set up .venv if needed, lint (ruff, config in pyproject.toml), then run the CPU test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
python -m ruff check da3gs tests
python -m pytest -q "$@"
