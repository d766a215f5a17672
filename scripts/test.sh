#!/usr/bin/env bash
# Sets up everything, then runs the whole test suite against embedded PostgreSQL + pgvector:
# the demo shop's tests, then (in a pytest session of its own: other settings, other apps) the
# django-oscar test shop's. Options are passed to both; with test paths, only the first runs them.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
status=0
.venv/bin/python -m pytest "$@" || status=$?
if [ $# -eq 0 ] || [[ "$1" == -* && "$*" != *"tests/"* ]]; then
    oscar=0
    .venv/bin/python -m pytest --ds=tests.oscar_shop.settings tests/oscar "$@" || oscar=$?
    [ "$status" -eq 0 ] && status=$oscar
fi
exit "$status"
