"""How much CPU recording one download nginx sent on a grant costs: the import of nginx's
log (portal/analytics/nginxlog.py, recorder.py, materialise.py) on its own, one process,
nothing else running.

Writes N grant lines of one signed-in user downloading one 64 KiB file (the load of the
download benchmark's c) to a log file, then flushes them into a fresh database the way
``flask analytics flush`` does, and prints the wall and CPU time per line::

    .venv/bin/python bench/run_import_bench.py --lines 60000 --repeat 3
    .venv/bin/python bench/run_import_bench.py --postgres postgresql://postgres@127.0.0.1:5432/test

Redis: a private redis-server (the download benchmark's), or --redis-url.
"""

from __future__ import annotations

import argparse
import io
import json
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.run_download_bench import Run, postgres_database, start_redis  # noqa: E402


def grant_lines(path: Path, n: int, user_id: int, file_id: int, version_id: int) -> None:
    """n lines as deploy/nginx.conf's portal_grants format writes them, 20,000 a second."""
    start = 1764554400  # 2025-12-01 02:00 UTC
    with open(path, "w") as fh:
        for i in range(n):
            moment = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(start + i // 20000))
            fh.write(json.dumps({
                "grant": f"{user_id} {file_id} {version_id} 65536", "id": uuid.uuid4().hex,
                "status": 200, "bytes": 65536, "time": moment, "seconds": "0.001",
                "range": "", "ip": "127.0.0.1", "ua": "wrk/4.1.0", "referer": ""}) + "\n")


def once(args: argparse.Namespace, run: Run, redis_url: str) -> tuple[float, float, int]:
    """One import into a fresh database: (wall seconds, CPU seconds, events stored)."""
    from portal import create_app
    from portal.extensions import db
    from portal.files import add_version
    from portal.models import User
    from portal.storage import get_storage

    tmp = Path(tempfile.mkdtemp(dir=run.tmp))
    log = tmp / "portal_events.log"
    url = (postgres_database(run, args.postgres) if args.postgres
           else f"sqlite:///{tmp / 'portal.db'}")
    app = create_app({"SECRET_KEY": "bench", "INSTANCE_PATH": str(tmp / "instance"),
                      "DATABASE_URL": url, "REDIS_URL": redis_url,
                      "RATELIMIT_STORAGE_URI": redis_url, "STORAGE_URL": (tmp / "st").as_uri(),
                      "SENDFILE": "x-accel", "ANALYTICS_NGINX_LOG": str(log),
                      "ANALYTICS_BACKGROUND_FLUSH": False})
    with app.app_context():
        db.create_all()
        user = User(username="student", display_name="student", role="student")
        db.session.add(user)
        version = add_version(db.session, get_storage(), io.BytesIO(b"x" * 65536),
                              filename="bench.pdf", title="bench", category="bench",
                              access="public")
        db.session.commit()
        ids = user.id, version.file_id, version.id
    app.extensions["portal_redis"].flushdb()
    grant_lines(log, args.lines, *ids)
    rec = app.extensions["portal_analytics"]
    wall, cpu, stored = time.perf_counter(), time.process_time(), 0
    while written := rec.flush(nginx=True):
        stored += written
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    rec.close_journal()
    with app.app_context():
        db.session.remove()
        db.engine.dispose()
    return wall, cpu, stored


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lines", type=int, default=60_000)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--postgres", default=None, metavar="ADMIN_URL",
                   help="a throw-away PostgreSQL database created through ADMIN_URL")
    p.add_argument("--redis-url", default=None)
    args = p.parse_args(argv)
    run = Run()
    try:
        redis_url = args.redis_url or start_redis(run)
        results = []
        for _ in range(args.repeat):
            wall, cpu, stored = once(args, run, redis_url)
            if stored != args.lines:
                print(f"bench: {stored} of {args.lines} lines stored", file=sys.stderr)
                return 1
            results.append((wall, cpu))
            print(f"  {stored:,} lines: {wall:.2f} s wall, {cpu:.2f} s CPU = "
                  f"{1e6 * wall / stored:.1f} µs wall, {1e6 * cpu / stored:.1f} µs CPU a line",
                  flush=True)
        best = min(results)
        print(f"best of {args.repeat}: {1e6 * best[0] / args.lines:.1f} µs wall, "
              f"{1e6 * best[1] / args.lines:.1f} µs CPU a line; median wall "
              f"{1e6 * statistics.median(w for w, _ in results) / args.lines:.1f} µs")
    finally:
        run.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
