"""Analytics benchmark: millions of simulated events on PostgreSQL, every endpoint timed.

    .venv/bin/python bench/run_analytics_bench.py [--events 10000000] [--budget 300]
        [--url postgresql+psycopg://postgres@127.0.0.1:5432/test]

Works in its own schema (``bench_analytics``, dropped first) of the test database. A pilot
run measures how fast ``flask analytics simulate`` generates on this machine; when
``--events`` would take longer than ``--budget`` seconds, it generates what fits and says
so. Then every analytics endpoint is requested 7 times as an admin; the median and the
worst must stay under 300 ms (the pages read rollups, never raw events).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from portal import create_app
from portal.analytics import materialise
from portal.analytics.simulate import simulate
from portal.extensions import db
from portal.models import User

SCHEMA = "bench_analytics"
LIMIT_MS = 300.0


def make(url: str, tmp: str):
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{SCHEMA}"'))
    admin.dispose()
    scoped = make_url(url).update_query_dict({"options": f"-csearch_path={SCHEMA}"})
    app = create_app({"DATABASE_URL": scoped.render_as_string(hide_password=False),
                      "INSTANCE_PATH": tmp, "SECRET_KEY": "bench", "TESTING": True,
                      "STORAGE_URL": Path(tmp, "storage").as_uri(),
                      "RATELIMIT_STORAGE_URI": "memory://"})
    with app.app_context():
        db.create_all()
        admin_user = User(username="bench-admin", role="admin", display_name="bench")
        admin_user.set_password("bench-password")
        db.session.add(admin_user)
        db.session.commit()
    return app


def generate(app, events: int, days: int) -> dict:
    settings = materialise.Settings.from_config(app.config)
    with app.app_context(), db.engine.begin() as conn:
        return simulate(conn, settings, events=events, days=days, users=20000, files=400,
                        seed=7)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--budget", type=float, default=300.0,
                        help="seconds of generation at most")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="analytics-bench-")

    app = make(args.url, tmp)
    began = time.monotonic()
    pilot = generate(app, 100_000, args.days)
    rate = pilot["events"] / (time.monotonic() - began)
    app = make(args.url, tmp)  # start again, with the size that fits the budget
    events = args.events
    if events / rate > args.budget:
        events = int(rate * args.budget)
        print(f"# {args.events:,} events would take ~{args.events / rate:.0f}s at "
              f"{rate:,.0f} events/s; generating {events:,} (budget {args.budget:.0f}s)")
    began = time.monotonic()
    report = generate(app, events, args.days)
    spent = time.monotonic() - began
    with app.app_context(), db.engine.begin() as conn:
        conn.execute(text("ANALYZE"))
    print(f"# generated {report['events']:,} events, {report['logical_downloads']:,} logical "
          f"downloads, {report['users']:,} users, {report['files']} files over {args.days} "
          f"days in {spent:.0f}s ({report['events'] / spent:,.0f} events/s)")

    client = app.test_client()
    token = client.get("/login").get_data(as_text=True)
    marker = 'name="csrf-token" content="'
    csrf = token[token.index(marker) + len(marker):].split('"', 1)[0]
    resp = client.post("/login", data={"username": "bench-admin", "password": "bench-password",
                                       "csrf_token": csrf})
    assert resp.status_code == 302, resp.status_code
    with app.app_context():
        top = db.session.execute(text(
            "SELECT file_id FROM analytics_rollups WHERE grain='d' AND grp='' AND file_id<>0 "
            "GROUP BY file_id ORDER BY sum(downloads) DESC LIMIT 1")).scalar()
    endpoints = [
        "/api/analytics/overview?days=7", "/api/analytics/overview?days=30",
        "/api/analytics/overview?days=180",
        "/api/analytics/top-files?days=30", "/api/analytics/top-files?days=180",
        "/api/analytics/top-files?days=30&group=CS2024",
        "/api/analytics/top-files?days=30&category=sim-考试",
        "/api/analytics/series?days=30&step=hour", "/api/analytics/series?days=180&step=day",
        "/api/analytics/series?days=180&step=week",
        "/api/analytics/series?days=90&step=day&group=EE2023",
        "/api/analytics/heatmap?days=28", "/api/analytics/heatmap?days=180",
        "/api/analytics/forecast?weeks=4",
        f"/api/analytics/files/{top}?days=30", f"/api/analytics/files/{top}/detail?days=30",
        f"/api/analytics/files/{top}/detail?days=180",
        f"/api/analytics/series?days=30&file={top}",
        "/api/analytics/top-files?days=30&format=csv",
        "/admin/analytics/", "/admin/analytics/time", f"/admin/analytics/files/{top}",
    ]
    print("\n| endpoint | median ms | worst ms |\n| --- | ---: | ---: |")
    failed = []
    for url in endpoints:
        times = []
        for _ in range(7):
            start = time.perf_counter()
            resp = client.get(url)
            times.append((time.perf_counter() - start) * 1000)
            assert resp.status_code == 200, (url, resp.status_code)
        median, worst = statistics.median(times), max(times)
        print(f"| `{url}` | {median:.1f} | {worst:.1f} |")
        if worst >= LIMIT_MS:
            failed.append(url)
    print(f"\n# {'FAIL: ' + ', '.join(failed) if failed else 'all endpoints'} "
          f"{'over' if failed else 'under'} {LIMIT_MS:.0f} ms")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
