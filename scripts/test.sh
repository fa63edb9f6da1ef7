#!/usr/bin/env bash
# The test command: set up what is missing, then lint, type-check and run the
# whole suite (unit tests and integration tests with real namespaces and packets).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
. .venv/bin/activate
echo "== ruff"; ruff check src tests benchmarks; ruff format --check src tests benchmarks
echo "== mypy"; mypy
echo "== pytest"; pytest -q -ra "$@"
