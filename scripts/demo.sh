#!/usr/bin/env bash
# The whole demo on a fresh machine: embedded PostgreSQL, the project's own trained model, a
# drawn catalog embedded by a real Celery worker (an embedded filesystem broker unless
# CELERY_BROKER_URL names Redis/RabbitMQ), the storefront on http://127.0.0.1:8000/ and the
# admin with a printed login.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
PY=.venv/bin/python
$PY manage.py demo_model  # first: every other command's system checks want the model files
$PY manage.py migrate --noinput
$PY manage.py demo_catalog --products "${DEMO_PRODUCTS:-1200}"

# One worker for the demo: it embeds the catalog now and every product saved later.
QUEUE=${CLIP_SEARCH_QUEUE:-clip_search}
.venv/bin/celery -A shop_demo worker -Q "$QUEUE" -P solo -l warning --without-mingle --without-gossip \
    > .data/worker.log 2>&1 &
WORKER=$!
trap 'kill "$WORKER" 2>/dev/null || true' EXIT
$PY manage.py clip_reindex --async --missing --timeout 1800
$PY manage.py clip_tag --missing  # tag suggestions for the admin (no image is read again)

$PY manage.py demo_admin
echo "Storefront: http://127.0.0.1:8000/   (worker log: .data/worker.log)"
# DEBUG is off unless DJANGO_DEBUG=1: --insecure makes runserver serve the static files (admin
# and storefront CSS/JS) anyway. Demo only: a real deployment serves collectstatic's output itself.
$PY manage.py runserver --insecure 127.0.0.1:8000
