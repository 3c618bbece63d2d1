"""The per-file, per-day rollups of the Parquet export as one DuckDB query: one machine,
no cluster, for exports up to a few hundred million events.

    python -m portal.analytics.duckdb_rollups DIR [--out file_days.parquet]

The same rules as ``spark_job.py`` (whose docstring explains each step) and ``logical.py``,
step for step in SQL; ``tests/functional/test_analytics_warehouse.py`` checks that the
three agree.
"""

from __future__ import annotations

import argparse
import sys

from .spark_job import JobRules

# {events}: the read_parquet(...) source; the rules come in as $parameters.
QUERY = """
WITH events AS (
    SELECT id, who, file_id, version_id, method, status, size, bytes_sent, served_ranges,
           started_at, ended_at, coalesce(ended_at, started_at) AS last_at
    FROM {events}
),
parts AS (  -- the well-formed served ranges of each event, in order, half-open
    SELECT id, pos,
           CAST(regexp_extract(part, '^([0-9]+)-', 1) AS BIGINT) AS a,
           CAST(regexp_extract(part, '-([0-9]+)$', 1) AS BIGINT) + 1 AS b
    FROM (SELECT id, trim(unnest(string_split(served_ranges, ','))) AS part,
                 generate_subscripts(string_split(served_ranges, ','), 1) AS pos
          FROM events)
    WHERE regexp_full_match(part, '[0-9]+-[0-9]+')
),
good_parts AS (SELECT * FROM parts WHERE b > a),
asked AS (SELECT id, sum(b - a) AS asked FROM good_parts GROUP BY id),
plan AS (  -- what a finished 200 or 206 planned to send
    SELECT p.id, e.bytes_sent, p.pos, p.a, p.b
    FROM good_parts p JOIN events e USING (id)
    WHERE e.status = 206 AND e.ended_at IS NOT NULL
    UNION ALL
    SELECT id, bytes_sent, 0, 0, size FROM events WHERE status = 200 AND ended_at IS NOT NULL
),
cut AS (
    SELECT id, a, CASE WHEN bytes_sent = -1 THEN b - a
                       ELSE least(b - a, greatest(0, greatest(bytes_sent, 0) - prior)) END
                  AS take
    FROM (SELECT *, coalesce(sum(b - a) OVER (PARTITION BY id ORDER BY pos ROWS BETWEEN
                 UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS prior FROM plan)
),
pieces AS (SELECT id, a, a + take AS b FROM cut WHERE take > 0),
got AS (SELECT id, sum(b - a) AS got FROM pieces GROUP BY id),
marked AS (
    SELECT e.*, coalesce(asked.asked, 0) AS asked, coalesce(got.got, 0) AS got,
           max(e.last_at) OVER (PARTITION BY who, version_id ORDER BY started_at, last_at, id
                                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS reach
    FROM events e LEFT JOIN asked USING (id) LEFT JOIN got USING (id)
),
grouped AS (
    SELECT *,
           sum(CASE WHEN reach IS NULL OR started_at > reach + to_microseconds($idle_us)
                    THEN 1 ELSE 0 END)
               OVER (PARTITION BY who, version_id ORDER BY started_at, last_at, id
                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS session,
           NOT (method <> 'GET' OR status NOT IN (200, 206)
                OR (status = 206 AND asked <= $probe_max AND asked < size))
               AND (ended_at IS NULL OR got >= $min_bytes) AS counts
    FROM marked
),
covered AS (
    SELECT who, version_id, session, sum(greatest(0, b - greatest(a, coalesce(far, -1))))
               AS covered
    FROM (SELECT g.who, g.version_id, g.session, p.a, p.b,
                 max(p.b) OVER (PARTITION BY g.who, g.version_id, g.session ORDER BY p.a, p.b
                                ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS far
          FROM pieces p JOIN grouped g USING (id))
    GROUP BY ALL
),
downloads AS (
    SELECT s.*, coalesce(c.covered, 0) AS covered,
           s.counted_at IS NOT NULL
               AND (s.size <= 0 OR coalesce(c.covered, 0) >= s.size * $complete_ratio)
               AS completed
    FROM (SELECT who, version_id, session,
                 arg_min(file_id, (started_at, last_at, id)) AS file_id,
                 arg_min(size, (started_at, last_at, id)) AS size,
                 min(started_at) FILTER (WHERE counts) AS counted_at
          FROM grouped GROUP BY who, version_id, session) s
    LEFT JOIN covered c USING (who, version_id, session)
),
served AS (
    SELECT file_id, CAST(timezone($tz, started_at) AS DATE) AS day, count(*) AS requests,
           sum(CASE WHEN bytes_sent <> -1 THEN bytes_sent WHEN ended_at IS NULL THEN 0
                    WHEN status = 200 THEN size ELSE asked END) AS bytes_served
    FROM marked GROUP BY ALL
),
counted AS (
    SELECT file_id, CAST(timezone($tz, counted_at) AS DATE) AS day, count(*) AS downloads,
           count(*) FILTER (WHERE completed) AS completed, count(DISTINCT who) AS users
    FROM downloads WHERE counted_at IS NOT NULL GROUP BY ALL
)
SELECT file_id, day, coalesce(requests, 0) AS requests,
       coalesce(bytes_served, 0) AS bytes_served, coalesce(downloads, 0) AS downloads,
       coalesce(completed, 0) AS completed, coalesce(users, 0) AS users
FROM served FULL JOIN counted USING (file_id, day)
ORDER BY file_id, day
"""


def source(path: str) -> str:
    """The read_parquet(...) of an export's root (a folder, or s3:// with httpfs)."""
    root = path.rstrip("/")
    quoted = f"{root}/day=*/*.parquet".replace("'", "''")
    return f"read_parquet('{quoted}', hive_partitioning = true)"


def parameters(rules: JobRules) -> dict:
    """The query's $parameters."""
    return {"idle_us": int(rules.idle_minutes * 60_000_000), "probe_max": rules.probe_max_bytes,
            "min_bytes": rules.min_bytes, "complete_ratio": rules.complete_ratio,
            "tz": rules.timezone}


def file_days(path: str, rules: JobRules | None = None, *, connection=None, threads=None):
    """The rollups as a DuckDB relation's rows: [(file_id, day, requests, bytes_served,
    downloads, completed, users)], sorted."""
    import duckdb

    rules = rules or JobRules()

    conn = connection or duckdb.connect()
    if threads:
        conn.execute(f"SET threads = {int(threads)}")
    return conn.execute(QUERY.format(events=source(path)), parameters(rules)).fetchall()


def main(argv: list[str] | None = None) -> int:
    """Print the rollups as CSV, or write them to Parquet with --out."""
    import duckdb

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("events", help="the export's root folder")
    parser.add_argument("--out", help="write Parquet here instead of printing CSV")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--timezone", default=JobRules().timezone)
    args = parser.parse_args(argv)
    conn = duckdb.connect()
    if args.threads:
        conn.execute(f"SET threads = {args.threads}")
    rules = JobRules(timezone=args.timezone)
    relation = conn.sql(QUERY.format(events=source(args.events)), params=parameters(rules))
    if args.out:
        relation.write_parquet(args.out)
    else:
        relation.write_csv("/dev/stdout")
    return 0


if __name__ == "__main__":
    sys.exit(main())
