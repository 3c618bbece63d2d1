"""How long ``flask backup create``, ``verify`` and ``restore`` take for a few GiB of objects
(docs/operations.md): the recovery time of a lost instance, and how long a backup holds
back deletions.

A temporary instance gets ``--gib`` GiB of random objects in ``--files`` files, and
``--events`` simulated downloads by ``--users`` people (a database of a term's size);
then each command runs once as the operator runs it, in its own process, and the
database and the storage are wiped between the backup and the restore::

    .venv/bin/python bench/run_backup_bench.py --gib 3
    .venv/bin/python bench/run_backup_bench.py --gib 3 --postgres postgresql://postgres@127.0.0.1:5432/postgres

The objects were just written, so the backup reads them from the page cache as far as
memory allows; the restore reads the backup's copies, likewise. Redis: a private
redis-server, or --redis-url.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from download_harness import Run, base_env, postgres_database, start_redis  # noqa: E402

GIB = 1024 ** 3


class RandomStream:
    """``size`` random bytes, read like a file (never held whole)."""

    def __init__(self, size: int) -> None:
        self.left = size

    def read(self, n: int = -1) -> bytes:
        n = self.left if n < 0 else min(n, self.left)
        self.left -= n
        return os.urandom(n)


def flask(env: dict, *args: str) -> tuple[float, str]:
    """Run one ``flask --app wsgi`` command; (wall seconds, its output)."""
    began = time.monotonic()
    done = subprocess.run([str(ROOT / ".venv" / "bin" / "flask"), "--app", "wsgi", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    seconds = time.monotonic() - began
    if done.returncode != 0:
        raise SystemExit(f"flask {' '.join(args)} exited {done.returncode}:\n"
                         f"{done.stdout}\n{done.stderr}")
    return seconds, done.stdout.strip()


def add_objects(env: dict, total: int, files: int) -> None:
    """``files`` files of random bytes, ``total`` bytes in all, through the portal's own
    add_version (each object hashed and stored as an upload would be)."""
    os.environ.update({k: v for k, v in env.items() if k.startswith("PORTAL_")})
    from portal import create_app
    from portal.extensions import db
    from portal.files import add_version
    from portal.storage import get_storage

    app = create_app()
    with app.app_context():
        for i in range(files):
            size = total // files + (total % files if i == 0 else 0)
            add_version(db.session, get_storage(), RandomStream(size),
                        filename=f"lecture-{i:03d}.mp4", title=f"Lecture {i:03d}",
                        category="bench", access="public")
            db.session.commit()
        db.session.remove()
        db.engine.dispose()


def wipe(env: dict, storage: Path, database_url: str) -> None:
    """Lose the instance: its database (the SQLite file; PostgreSQL's public schema, made
    again empty) and its storage."""
    shutil.rmtree(storage)
    if database_url.startswith("sqlite"):
        path = database_url.removeprefix("sqlite:///")
        for suffix in ("", "-wal", "-shm"):
            Path(path + suffix).unlink(missing_ok=True)
        return
    import psycopg

    with psycopg.connect(database_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("DROP SCHEMA public CASCADE")
        conn.execute("CREATE SCHEMA public")


def du(path: Path) -> int:
    """Bytes of the files below ``path``."""
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gib", type=float, default=3.0, help="GiB of objects")
    parser.add_argument("--files", type=int, default=24, help="how many files hold them")
    parser.add_argument("--events", type=int, default=200_000,
                        help="simulated downloads in the database")
    parser.add_argument("--users", type=int, default=2000, help="simulated people")
    parser.add_argument("--postgres", metavar="ADMIN_URL",
                        help="a PostgreSQL server to make a database on (else SQLite)")
    parser.add_argument("--redis-url", help="a Redis to use (else a private redis-server)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    args = parser.parse_args(argv)

    run = Run(keep=args.keep)
    try:
        database_url = (postgres_database(run, args.postgres) if args.postgres
                        else f"sqlite:///{run.tmp / 'portal.db'}")
        storage, backup = run.tmp / "storage", run.tmp / "backup"
        env = {**base_env(), "PORTAL_INSTANCE_PATH": str(run.tmp / "instance"),
               "PORTAL_DATABASE_URL": database_url, "PORTAL_STORAGE_URL": storage.as_uri(),
               "PORTAL_REDIS_URL": args.redis_url or start_redis(run),
               "PORTAL_SECRET_KEY": "bench-secret"}
        flask(env, "db", "upgrade")
        print(f"writing {args.gib} GiB in {args.files} files ...", file=sys.stderr)
        add_objects(env, int(args.gib * GIB), args.files)
        flask(env, "analytics", "simulate", "--events", str(args.events), "--days", "120",
              "--new-users", str(args.users))

        created, line = flask(env, "backup", "create", "--to", str(backup))
        print(line, file=sys.stderr)
        verified, line = flask(env, "backup", "verify", str(backup))
        print(line, file=sys.stderr)
        database = next(backup.glob("database.*"))
        wipe(env, storage, database_url)
        restored, line = flask(env, "backup", "restore", str(backup))
        print(line, file=sys.stderr)
        print(json.dumps({
            "database": "postgresql" if args.postgres else "sqlite",
            "objects_gib": round(du(backup / "objects") / GIB, 2), "files": args.files,
            "database_mib": round(database.stat().st_size / 2**20, 1),
            "events": args.events, "create_s": round(created, 1),
            "verify_s": round(verified, 1), "restore_s": round(restored, 1)}))
    finally:
        run.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
