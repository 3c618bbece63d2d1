"""No stored object is deleted while a backup runs.

Objects are immutable and content-addressed, so a backup needs only this: every object its
database snapshot references still exists when it is copied. The only code that deletes
objects is ``files.delete_unreferenced`` (after a put whose version never got committed, or
a discarded pending version). It deletes inside a
*deletion window*; a backup holds the *backup hold* from before its snapshot until its last
object is copied. The two exclude each other:

- the backup waits for open deletion windows (each lasts one query and one delete), so a
  deletion either ended before the snapshot or starts after the copy;
- a deletion never waits for a backup: while one runs the window is refused and the object
  is kept (an orphan, which costs only its space).

The lock lives where every node and process meets: PostgreSQL advisory locks (one key per
schema, so two portals in one database do not share it), or for SQLite, whose processes
share one machine, an ``flock`` on a file beside the database. A backup that dies releases
it with its connection or its process.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine

#: The advisory lock's key: a hash of this text and the schema's name.
_PG_KEY = "hashtextextended('portal.objects:' || current_schema(), 0)"


def lock_file(engine: Engine) -> Path | None:
    """The file a SQLite database's processes lock (None for an in-memory database)."""
    database = engine.url.database
    if not database or database == ":memory:":
        return None
    return Path(f"{database}.objects-lock")


@contextlib.contextmanager
def backup_hold(engine: Engine) -> Iterator[None]:
    """Held from before a backup's snapshot to its last copied object: waits for the
    deletions under way, then refuses new ones until the block ends."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            conn.execute(text(f"SELECT pg_advisory_lock({_PG_KEY})"))
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text(f"SELECT pg_advisory_unlock({_PG_KEY})"))
                conn.commit()
        return
    path = lock_file(engine)
    if path is None:
        yield
        return
    with _locked(path, fcntl.LOCK_EX):
        yield


@contextlib.contextmanager
def deletion_window(engine: Engine) -> Iterator[Connection | None]:
    """A connection in which an object may be checked and deleted (no backup starts
    before the block ends), or None while a backup runs: keep the object then."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            got = conn.execute(text(f"SELECT pg_try_advisory_lock_shared({_PG_KEY})")).scalar()
            conn.commit()
            if not got:
                yield None
                return
            try:
                yield conn
            finally:
                conn.rollback()
                conn.execute(text(f"SELECT pg_advisory_unlock_shared({_PG_KEY})"))
                conn.commit()
        return
    path = lock_file(engine)
    with contextlib.ExitStack() as stack:
        if path is not None and not stack.enter_context(
                _locked(path, fcntl.LOCK_SH | fcntl.LOCK_NB)):
            yield None
            return
        yield stack.enter_context(engine.connect())


@contextlib.contextmanager
def _locked(path: Path, how: int) -> Iterator[bool]:
    """``flock(how)`` on ``path`` for the block: True when taken (False only for LOCK_NB
    when someone else holds it)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(fd, how)
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(fd)  # closing releases the lock
