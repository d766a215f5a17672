#!/usr/bin/env bash
# Sets up everything, then runs the demo shop on http://127.0.0.1:8000/ (embedded PostgreSQL).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python manage.py migrate --noinput
.venv/bin/python manage.py demo_model
.venv/bin/python manage.py demo_admin
exec .venv/bin/python manage.py runserver 127.0.0.1:8000
