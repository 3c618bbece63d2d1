"""Production entry: ``gunicorn -c gunicorn.conf.py wsgi:app`` and ``flask --app wsgi``."""

import sys

from portal import ConfigError, create_app

try:
    app = create_app()
except ConfigError as exc:  # a clear line, not a traceback
    sys.exit(f"portal: configuration error: {exc}")
