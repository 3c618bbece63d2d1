"""The baseline for the download benchmarks: a bare Flask app that answers with send_file.

No login, no database, no access rules, no download events: just Werkzeug's ``send_file``
(conditional requests and single ranges included) on the portal's content-addressed storage
folder. bench/run_download_bench.py serves it with the portal's own ``gunicorn.conf.py``
(``gunicorn -c gunicorn.conf.py bench.baseline_app:app``), so worker class, worker count and
the zero-copy sendfile patch are the same as for the portal.

``BENCH_STORAGE_DIR`` is the storage root (the folder that holds ``objects/``).
"""

from __future__ import annotations

import os
from pathlib import Path

from flask import Flask, abort, send_file

app = Flask(__name__)
OBJECTS = Path(os.environ.get("BENCH_STORAGE_DIR", "instance/storage")) / "objects"


@app.get("/")
def index():
    """Readiness probe."""
    return "ok\n"


@app.get("/f/<key>")
def fetch(key: str):
    """The stored object with this SHA-256 key, as send_file serves it."""
    if len(key) != 64 or not all(c in "0123456789abcdef" for c in key):
        abort(404)
    path = OBJECTS / key[:2] / key[2:4] / key
    if not path.is_file():
        abort(404)
    return send_file(path, mimetype="application/octet-stream", as_attachment=True,
                     download_name=f"{key[:12]}.bin", conditional=True)
