#!/usr/bin/env bash
# Install into .venv, prepare the embedded default (SQLite + instance/storage), seed the demo
# on first start, and serve the portal on http://127.0.0.1:5000 with gunicorn.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e . 2>&1 | grep -v '^WARNING: Location' || true
export FLASK_APP=wsgi
# The embedded default's folder: PORTAL_INSTANCE_PATH when set (as the app reads it), else ./instance.
instance=${PORTAL_INSTANCE_PATH:-instance}
.venv/bin/flask db upgrade
if [ ! -e "$instance/.demo-seeded" ]; then
  .venv/bin/flask demo && mkdir -p "$instance" && touch "$instance/.demo-seeded"
fi
echo "Campus portal: http://127.0.0.1:5000  (demo users admin / staff / student, password demo12345)"
exec .venv/bin/gunicorn -c gunicorn.conf.py --bind "${PORTAL_BIND:-127.0.0.1:5000}" wsgi:app
