"""``campus-portal``: the one command of an installed portal (the wheel, the container image,
the systemd units).

- ``campus-portal serve [GUNICORN OPTION...]``: gunicorn with the portal's gunicorn.conf.py
  (gevent workers, the analytics flusher beside them) on PORTAL_BIND. The embedded default
  (no PORTAL_DATABASE_URL: SQLite in the instance folder) is brought up to date first, as
  scripts/run.sh does; a shared database is migrated only by ``migrate``, once, by whoever
  deploys, never by each node as it starts.
- ``campus-portal migrate [--wait SECONDS]``: ``db upgrade``, once the database answers (a
  database container may still be starting beside it).
- any other ``campus-portal COMMAND...``: the portal's Flask command line, what ``flask
  --app wsgi COMMAND...`` is in a checkout (``user create``, ``analytics flush --follow``).

Each ends by replacing this process, so the signals of a service manager or of a container's
init reach gunicorn or the command itself.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from .settings import ConfigError, from_environ

USAGE = """\
Usage: campus-portal serve [GUNICORN OPTION...]   serve the portal (gunicorn, PORTAL_BIND)
       campus-portal migrate [--wait SECONDS]      create or upgrade the schema (default 120)
       campus-portal COMMAND [ARG...]             one of the portal's commands (below)
"""

FLASK = [sys.executable, "-m", "flask", "--app", "portal.wsgi"]


def serve_command(options: list[str]) -> list[str]:
    """gunicorn with the packaged (or the checkout's) gunicorn.conf.py and ``options``."""
    from . import bundled

    return [sys.executable, "-m", "gunicorn", "-c", str(bundled("gunicorn.conf.py")),
            *options, "portal.wsgi:app"]


def wait_for_database(url: str, seconds: float) -> None:
    """Return once a connection to ``url`` opens; SystemExit with the last error after
    ``seconds``."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.exc import SQLAlchemyError

    engine = create_engine(url)
    deadline = time.monotonic() + seconds
    try:
        while True:
            try:
                with engine.connect() as conn:
                    conn.execute(text("SELECT 1"))
                return
            except SQLAlchemyError as exc:
                if time.monotonic() > deadline:
                    reason = getattr(exc, "orig", None) or exc
                    sys.exit(f"campus-portal migrate: the database did not answer within "
                             f"{seconds:g} s: {reason}")
            time.sleep(1)
    finally:
        engine.dispose()


def main(argv: list[str] | None = None) -> None:
    """Run ``campus-portal`` (the console script)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        sys.stdout.write(USAGE + "\n")
        sys.stdout.flush()
    try:
        database_url = from_environ().database_url
    except ConfigError as exc:  # the line wsgi.py would give, before anything starts
        sys.exit(f"portal: configuration error: {exc}")
    command = [*FLASK, *args]
    if args[:1] == ["migrate"]:
        parser = argparse.ArgumentParser(prog="campus-portal migrate",
                                         description="Create or upgrade the schema (db upgrade).")
        parser.add_argument("--wait", type=float, default=120.0, metavar="SECONDS",
                            help="how long to wait for the database to answer (default 120)")
        wait = parser.parse_args(args[1:]).wait
        if database_url:
            wait_for_database(database_url, wait)
        command = [*FLASK, "db", "upgrade"]
    elif args[:1] == ["serve"]:
        if not database_url:
            upgraded = subprocess.run([*FLASK, "db", "upgrade"], check=False)
            if upgraded.returncode:
                sys.exit(upgraded.returncode)
        command = serve_command(args[1:])
    os.execv(command[0], command)
