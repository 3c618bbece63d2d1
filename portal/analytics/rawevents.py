"""The raw ``download_events`` rows: their columns, and the idempotent insert that tells
which rows of a batch are new (``materialise.store`` materialises only those)."""

from __future__ import annotations

from functools import lru_cache

from sqlalchemy import Connection, func, select

from ..models import DownloadEvent

EVENT_COLUMNS = ("event_key", "file_id", "version_id", "user_id", "via_link", "method",
                 "status", "range_header", "served_ranges", "size", "bytes_sent", "client_ip",
                 "user_agent", "ua_class", "referrer", "served_from", "link_id", "started_at",
                 "ended_at")


def insert_new_events(conn: Connection, rows: list[dict]) -> list[dict]:
    """Insert the events not stored yet; return those (the others were flushed before).

    One executemany of INSERT ... ON CONFLICT (event_key) DO NOTHING through the driver:
    the unique index decides, whatever the planner knows of the table (a lookup of the
    stored keys first was fast on SQLite but, on a PostgreSQL table grown faster than its
    statistics, a sequential scan per batch). When fewer rows were written than given (a
    batch read twice), the new ones are those with an id above the largest before: under
    the writers' lock (``materialise.serialise_writers``; SQLite has one writer) nothing
    else writes events meanwhile."""
    fresh: dict[str, dict] = {}
    unkeyed = []  # an event without a key cannot be recognised: always new (as before)
    for row in rows:
        if row.get("event_key") is None:
            unkeyed.append(row)
        else:
            fresh.setdefault(row["event_key"], row)  # a key twice in a batch: the first wins
    new = [*fresh.values(), *unkeyed]
    if not new:
        return []
    table = DownloadEvent.__table__
    before = conn.execute(select(func.max(table.c.id))).scalar() or 0
    sql, processors = _event_insert(conn.dialect)
    written = conn.exec_driver_sql(sql, [
        tuple(row.get(c) if p is None else p(row.get(c)) for c, p in processors)
        for row in new]).rowcount
    if written == len(new):
        return new
    stored = set(conn.execute(select(table.c.event_key).where(table.c.id > before)).scalars())
    return [row for row in new if row.get("event_key") is None or row["event_key"] in stored]


@lru_cache(maxsize=4)
def _event_insert(dialect) -> tuple[str, list]:
    """The driver's own INSERT of an event row (none when its key is stored), and each
    column's bind processor.

    Why not ``conn.execute(table.insert(), rows)``: SQLAlchemy's per-row parameter
    handling was a third of the cost of importing nginx's lines at peak load (cProfile);
    the values are prepared here once with the same processors, then executemany."""
    table = DownloadEvent.__table__
    mark = "%s" if dialect.paramstyle in ("pyformat", "format") else "?"
    sql = (f"INSERT INTO {table.name} ({', '.join(EVENT_COLUMNS)}) "
           f"VALUES ({', '.join(mark for _ in EVENT_COLUMNS)}) "
           "ON CONFLICT (event_key) DO NOTHING")
    return sql, [(c, table.c[c].type.bind_processor(dialect)) for c in EVENT_COLUMNS]
