"""Warehouse benchmark: the SQL rebuild against the PySpark job (local[1], local[2]) and the
DuckDB query, on the same simulated events exported to Parquet.

    nice -n 10 .venv/bin/python bench/run_spark_bench.py --events 10000000 [--days 180]
        [--url postgresql+psycopg://postgres@127.0.0.1:5432/test] [--lake /tmp/bench-lake]
        [--skip sql,spark1,...] [--reuse] [--shuffle-partitions N]

Works in its own schema (``bench_spark``, dropped first unless ``--reuse``) of the test
database: ``flask analytics simulate`` generates the events, ``flask analytics export``
writes them to Parquet, then each contender runs in a child process of its own while this
one samples, every 0.2 s, the RSS of that child and all its descendants (the JVM is one):

* ``sql``: ``materialise.rebuild`` (``flask analytics rebuild``: every raw event through
  the Python rules, then the rollups written back); PostgreSQL's own backend is not in the
  tree (its shared buffers would not be comparable anyway);
* ``spark1``, ``spark2``: ``spark_job`` with ``--master local[1]`` / ``local[2]``, writing
  file_days and logical_downloads as Parquet;
* ``duckdb1``, ``duckdb2``: ``duckdb_rollups.file_days`` with 1 / 2 threads.

Each contender's per-file, per-day result is compared with the SQL rollups (``agree``;
with ``sql`` skipped, with the first contender's). One line per contender: seconds (wall),
peak RSS of the tree (MiB).

``--replicate K --from LAKE`` skips the database: it writes K copies of an earlier export
(ids and ``who`` made distinct per copy, so each copy is another population of the same
term) as a new lake with DuckDB, and times Spark and DuckDB on it (the SQL rebuild
has no such data). It shows how the warehouse paths grow with the events when generating
them (``simulate``, ~6k events/s on the shared machine) would take too long.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SCHEMA = "bench_spark"
CONTENDERS = ("sql", "spark1", "spark2", "duckdb1", "duckdb2")


def make_app(url: str, tmp: str):
    """The portal on the bench schema."""
    from portal import create_app

    scoped = make_url(url).update_query_dict({"options": f"-csearch_path={SCHEMA}"})
    return create_app({"DATABASE_URL": scoped.render_as_string(hide_password=False),
                       "INSTANCE_PATH": tmp, "SECRET_KEY": "bench", "TESTING": True,
                       "STORAGE_URL": Path(tmp, "storage").as_uri(),
                       "RATELIMIT_STORAGE_URI": "memory://"})


def sql_rollups(app) -> dict:
    """{(file, local date): (requests, bytes, downloads, completed, users)} as stored."""
    from sqlalchemy import func, select

    from portal.analytics import materialise
    from portal.analytics.models import ALL_FILES, ALL_USERS, Rollup, UserDay
    from portal.extensions import db

    tz = materialise.Settings.from_config(app.config).tz
    out: dict = {}
    with app.app_context(), db.engine.connect() as conn:
        for r in conn.execute(select(Rollup.__table__).where(
                Rollup.grain == "d", Rollup.grp == ALL_USERS, Rollup.file_id != ALL_FILES)):
            out[(r.file_id, str(r.bucket.astimezone(tz).date()))] = [
                r.requests, r.bytes_served, r.downloads, r.completed, 0]
        for file_id, day, n in conn.execute(
                select(UserDay.file_id, UserDay.day, func.count())
                .where(UserDay.file_id != ALL_FILES).group_by(UserDay.file_id, UserDay.day)):
            out.setdefault((file_id, str(day.astimezone(tz).date())), [0, 0, 0, 0, 0])[4] = n
    return {k: tuple(v) for k, v in out.items()}


def as_cells(rows) -> dict:
    """Contender rows (file, day, five counters) as sql_rollups' dict."""
    return {(int(r[0]), str(r[1])): tuple(int(x) for x in r[2:]) for r in rows}


def phase(name: str, args) -> None:
    """Run one contender in this (child) process; its cells go to args.cells as JSON."""
    rows = None
    if name == "sql":
        from portal.analytics import materialise
        from portal.extensions import db

        app = make_app(args.url, args.tmp)
        with app.app_context(), db.engine.begin() as conn:
            materialise.rebuild(conn, materialise.Settings.from_config(app.config))
        rows = [(*k, *v) for k, v in sql_rollups(app).items()]
    elif name.startswith("spark"):
        from portal.analytics import spark_job

        spark = spark_job.session(f"local[{name[-1]}]", "portal-bench", {
            "spark.ui.enabled": "false", "spark.driver.memory": "4g",
            "spark.sql.shuffle.partitions": str(args.shuffle_partitions or 8 * int(name[-1])),
            "spark.local.dir": args.tmp})
        try:
            days, downloads = spark_job.run(spark, args.lake)
            downloads.write.mode("overwrite").parquet(f"{args.tmp}/{name}/logical_downloads")
            days.write.mode("overwrite").parquet(f"{args.tmp}/{name}/file_days")
            rows = [tuple(r) for r in spark.read.parquet(f"{args.tmp}/{name}/file_days")
                    .select("file_id", "day", "requests", "bytes_served", "downloads",
                            "completed", "users").collect()]
        finally:
            spark.stop()
    elif name.startswith("duckdb"):
        from portal.analytics import duckdb_rollups

        rows = duckdb_rollups.file_days(args.lake, threads=int(name[-1]))
    Path(args.cells).write_text(json.dumps([[str(x) for x in r] for r in rows]))


def tree_rss_kib(root: int) -> int:
    """RSS of a process and all its descendants, in KiB."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry))
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                rss[int(entry)] = int(line.split()[1])
    total, todo = 0, [root]
    while todo:
        pid = todo.pop()
        total += rss.get(pid, 0)
        todo += children.get(pid, [])
    return total


def measure(name: str, args) -> dict:
    """Run a contender as a child; wall seconds, peak tree RSS and its cells."""
    cells = Path(args.tmp) / f"{name}.json"
    command = [sys.executable, __file__, "--phase", name, "--url", args.url, "--lake",
               args.lake, "--tmp", args.tmp, "--cells", str(cells),
               "--shuffle-partitions", str(args.shuffle_partitions)]
    began = time.monotonic()
    child = subprocess.Popen(command, env={**os.environ, "PYSPARK_PYTHON": sys.executable})
    peak = 0
    while child.poll() is None:
        peak = max(peak, tree_rss_kib(child.pid))
        time.sleep(0.2)
    seconds = time.monotonic() - began
    if child.returncode != 0:
        return {"name": name, "seconds": seconds, "peak_mib": peak / 1024, "cells": None}
    return {"name": name, "seconds": seconds, "peak_mib": peak / 1024,
            "cells": as_cells(json.loads(cells.read_text()))}


def prepare(args) -> None:
    """Fresh schema, simulated events, Parquet export (each step timed)."""
    from portal.analytics import export, materialise
    from portal.analytics.simulate import simulate
    from portal.extensions import db
    from portal.storage import get_storage

    admin = create_engine(args.url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA IF EXISTS "{SCHEMA}" CASCADE'))
        conn.execute(text(f'CREATE SCHEMA "{SCHEMA}"'))
    admin.dispose()
    app = make_app(args.url, args.tmp)
    with app.app_context():
        db.create_all()
        began = time.monotonic()
        with db.engine.begin() as conn:
            report = simulate(conn, materialise.Settings.from_config(app.config),
                              events=args.events, days=args.days, users=20000, files=400,
                              storage=get_storage(), seed=7)
        print(f"# simulate: {report} in {time.monotonic() - began:.0f}s", flush=True)
        began = time.monotonic()
        with db.engine.connect() as conn:
            done = export.export(conn, export.FolderTarget(args.lake))
        print(f"# export: {sum(done.written.values())} events in {len(done.written)} days, "
              f"{time.monotonic() - began:.0f}s", flush=True)


def replicate(source: str, lake: str, copies: int) -> int:
    """Write ``copies`` disjoint copies of the export at ``source`` to ``lake`` (same
    layout); returns the events written."""
    import duckdb

    from portal.analytics import duckdb_rollups

    conn = duckdb.connect()
    conn.execute("SET enable_progress_bar = false")
    base = duckdb_rollups.source(source)
    top = conn.execute(f"SELECT max(id) FROM {base}").fetchone()[0]
    conn.execute(
        f"COPY (SELECT * REPLACE (id + k * {top} AS id, who || '#' || k AS who) "
        f"FROM {base}, range({copies}) AS r(k)) TO '{lake}' "
        "(FORMAT parquet, PARTITION_BY (day), COMPRESSION zstd, OVERWRITE_OR_IGNORE)")
    conn.close()
    return lake_events(lake)


def lake_events(lake: str) -> int:
    """The number of events in an earlier run's export (from the Parquet footers)."""
    import duckdb

    from portal.analytics import duckdb_rollups

    with duckdb.connect() as conn:
        return conn.execute(f"SELECT count(*) FROM {duckdb_rollups.source(lake)}").fetchone()[0]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="postgresql+psycopg://postgres@127.0.0.1:5432/test")
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--days", type=int, default=180)
    parser.add_argument("--lake", default=None, help="the Parquet export's folder")
    parser.add_argument("--skip", default="", help="contenders to leave out, comma-separated")
    parser.add_argument("--reuse", action="store_true",
                        help="keep the schema and the export of an earlier run")
    parser.add_argument("--replicate", type=int, default=0, metavar="K",
                        help="time Spark and DuckDB on K copies of the export at --from")
    parser.add_argument("--from", dest="source", help="the export to replicate")
    parser.add_argument("--shuffle-partitions", type=int, default=0, metavar="N",
                        help="Spark's shuffle partitions (default: 8 per core); with 16 the "
                             "sorts of 48 M events ran a 4 GiB driver out of heap")
    parser.add_argument("--phase", choices=CONTENDERS, help=argparse.SUPPRESS)
    parser.add_argument("--tmp", help=argparse.SUPPRESS)
    parser.add_argument("--cells", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        phase(args.phase, args)
        return 0
    with tempfile.TemporaryDirectory(prefix="spark-bench-") as tmp:
        args.tmp = tmp
        args.lake = args.lake or str(Path(tmp) / "lake")
        skip = set(args.skip.split(","))
        if args.replicate:
            began = time.monotonic()
            args.events = replicate(args.source, args.lake, args.replicate)
            print(f"# replicated {args.events} events in {time.monotonic() - began:.0f}s",
                  flush=True)
            skip.add("sql")
        elif not args.reuse:
            prepare(args)
        else:
            args.events = lake_events(args.lake)
        results = [measure(name, args) for name in CONTENDERS if name not in skip]
    reference = next((r["cells"] for r in results if r["cells"] is not None), None)
    print(f"| contender ({args.events:,} events) | seconds | peak RSS (MiB) | agrees |")
    print("| --- | ---: | ---: | --- |")
    for r in results:
        agrees = ("failed" if r["cells"] is None else "reference" if r["cells"] is reference
                  else "yes" if r["cells"] == reference else "NO")
        print(f"| {r['name']} | {r['seconds']:.1f} | {r['peak_mib']:.0f} | {agrees} |")
    return 0 if all(r["cells"] is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
