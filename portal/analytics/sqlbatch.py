"""How analytics sends many keys or rows to SQL: IN lists and executemany batches of
bounded size (the writers and the queries alike), and the dialect's upsert."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite

#: Keys per IN list: far below SQLite's parameter limit; exact keys plan as index probes.
IN_LIST = 500
#: Rows per executemany of an INSERT (rollups, user-days, spans, gaps, file-detail cells).
INSERT_BATCH = 2000


def chunks(items: Sequence, size: int) -> Iterator[Sequence]:
    """``items`` in consecutive slices of at most ``size``."""
    for start in range(0, len(items), size):
        yield items[start:start + size]


def insert_in_batches(conn: Connection, stmt, rows: list[dict]) -> None:
    """Execute ``stmt`` for ``rows``, INSERT_BATCH rows per executemany."""
    for batch in chunks(rows, INSERT_BATCH):
        conn.execute(stmt, batch)


def upsert(conn: Connection):
    """The dialect's INSERT (both have on_conflict_do_nothing / on_conflict_do_update)."""
    return postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
