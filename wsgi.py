"""Production entry in a checkout: ``gunicorn -c gunicorn.conf.py wsgi:app`` and
``flask --app wsgi``; the app is portal.wsgi's, which an installed portal uses."""

from portal.wsgi import app

__all__ = ["app"]
