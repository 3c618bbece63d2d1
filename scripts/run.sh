#!/usr/bin/env bash
# Install into .venv, prepare the embedded default (SQLite + instance/storage), seed the demo
# on first start, and serve the portal with gunicorn on PORTAL_BIND (http://127.0.0.1:5000).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
install_into_venv run.sh
export FLASK_APP=wsgi
# The embedded default's folder: PORTAL_INSTANCE_PATH when set (as the app reads it), else ./instance.
instance=${PORTAL_INSTANCE_PATH:-instance}
.venv/bin/flask db upgrade
# static/ under hashed names with gzip copies, into the instance folder (docs/deploy.md).
.venv/bin/flask static build
if [ ! -e "$instance/.demo-seeded" ]; then
  echo "run.sh: seeding the demo: users, documents, a 100 MB recording, 60 days of downloads" \
       "(first start only: a few seconds)..."
  .venv/bin/flask demo && mkdir -p "$instance" && touch "$instance/.demo-seeded"
fi
bind=${PORTAL_BIND:-127.0.0.1:5000}
# A busy port would end in gunicorn's bare bind error: say what to do instead.
if ! .venv/bin/python - "$bind" <<'PY'
import socket, sys
host, _, port = sys.argv[1].rpartition(":")
with socket.socket(socket.AF_INET6 if ":" in host.strip("[]") else socket.AF_INET) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind((host.strip("[]") or "0.0.0.0", int(port)))
    except OSError as exc:
        sys.exit(f"run.sh: cannot listen on {sys.argv[1]} ({exc.strerror}); another server "
                 "holds it? Stop it, or choose another address: PORTAL_BIND=127.0.0.1:5001 "
                 "bash scripts/run.sh")
PY
then
  exit 1
fi
echo "Campus portal: http://$bind  (demo users admin / staff / student, password demo12345)"
exec .venv/bin/gunicorn -c gunicorn.conf.py --bind "$bind" wsgi:app
