"""The WSGI entry: ``gunicorn ... portal.wsgi:app`` and ``flask --app portal.wsgi``, in a
checkout (where the top-level wsgi.py re-exports it) and installed from the wheel alike."""

import sys

from portal import ConfigError, create_app

try:
    app = create_app()
except ConfigError as exc:  # a clear line, not a traceback
    sys.exit(f"portal: configuration error: {exc}")
