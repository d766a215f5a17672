#!/usr/bin/env bash
# Sets up everything, then runs the whole test suite against embedded PostgreSQL + pgvector.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/python -m pytest "$@"
