"""Backups: ``flask --app wsgi backup create|verify|restore`` (docs/operations.md).

- ``guard.py``: no object is deleted while a backup runs (the one lock both sides take).
- ``database.py``: the snapshot (SQLite's online backup API, ``pg_dump`` on an exported
  snapshot), its check, and putting it back.
- ``place.py``: a backup's folder or S3 prefix and its layout.
- ``configuration.py``: the PORTAL_ settings without their secrets.
- ``manifest.py``: what a backup holds, with the SHA-256 of every file.
- ``create.py``, ``verify.py``, ``restore.py``: the three commands' work; ``cli.py``: the
  commands themselves.

Only ``guard`` is imported by the rest of the portal (``files.discard``); the others are
imported by the commands.
"""
