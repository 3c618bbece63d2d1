"""Which database errors mean "unavailable, try again" (503) and which are bugs (500).

The driver errors are real ones, raised by sqlite3 and SQLAlchemy; PostgreSQL's are told apart
by their SQLSTATE, given here as psycopg gives it (tests/functional/test_postgres_restart.py
sees the real ones during a restart).
"""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import (
    IntegrityError,
    InterfaceError,
    OperationalError,
    PendingRollbackError,
    ProgrammingError,
)
from sqlalchemy.exc import TimeoutError as PoolTimeoutError

from portal.errors import database_unavailable


def sqlite_error(tmp_path, sql: str, *, locked: bool = False) -> BaseException:
    """The SQLAlchemy error for running ``sql`` on a SQLite file (held by another writer)."""
    path = tmp_path / "db.sqlite"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY)")
    holder.execute("INSERT OR IGNORE INTO t VALUES (1)")
    if locked:
        holder.execute("BEGIN EXCLUSIVE")
    engine = create_engine(f"sqlite:///{path}", connect_args={"timeout": 0})
    try:
        with engine.begin() as conn:
            conn.execute(text(sql))
    except Exception as exc:
        return exc
    finally:
        engine.dispose()
        holder.close()
    pytest.fail(f"{sql} did not fail")


class PgError(Exception):
    """Stands for a psycopg error: what SQLAlchemy wraps, with its SQLSTATE."""

    def __init__(self, sqlstate: str | None) -> None:
        super().__init__(f"sqlstate {sqlstate}")
        self.sqlstate = sqlstate


def wrapped(kind, sqlstate: str | None, invalidated: bool = False):
    return kind("SELECT 1", {}, PgError(sqlstate), connection_invalidated=invalidated)


def test_sqlite_busy_is_unavailable(tmp_path):
    exc = sqlite_error(tmp_path, "INSERT INTO t VALUES (2)", locked=True)
    assert isinstance(exc, OperationalError) and "locked" in str(exc)
    assert database_unavailable(exc)


@pytest.mark.parametrize("sql", ["SELECT * FROM missing", "SELEC 1"])
def test_sqlite_query_bugs_are_not(tmp_path, sql):
    exc = sqlite_error(tmp_path, sql)
    assert isinstance(exc, OperationalError)  # sqlite3 says OperationalError for these too
    assert not database_unavailable(exc)


def test_a_constraint_is_not(tmp_path):
    exc = sqlite_error(tmp_path, "INSERT INTO t VALUES (1)")
    assert isinstance(exc, IntegrityError)
    assert not database_unavailable(exc)


@pytest.mark.parametrize("sqlstate,expected", [
    (None, True),  # connection refused: no server answered
    ("57P01", True),  # admin_shutdown: pg_ctl stop/restart -m fast
    ("57P03", True),  # cannot_connect_now: the database system is starting up
    ("08006", True),  # connection_failure
    ("53300", True),  # too_many_connections
    ("40001", False),  # serialization_failure: the caller's business, not an outage
    ("22012", False),  # division_by_zero
])
def test_postgres_sqlstates(sqlstate, expected):
    assert database_unavailable(wrapped(OperationalError, sqlstate)) is expected


def test_a_lost_connection_is_unavailable_whatever_the_class():
    assert database_unavailable(wrapped(ProgrammingError, "42P01", invalidated=True))
    assert not database_unavailable(wrapped(ProgrammingError, "42P01"))
    assert database_unavailable(wrapped(InterfaceError, None))


def test_pool_and_session_states():
    assert database_unavailable(PoolTimeoutError("QueuePool limit reached"))
    lost = PendingRollbackError("Can't reconnect until invalid transaction is rolled back.",
                                code="8s2b")
    assert database_unavailable(lost)
    flush_failed = PendingRollbackError("This Session's transaction has been rolled back due "
                                        "to a previous exception during flush.", code="7s2a")
    assert not database_unavailable(flush_failed)
    assert not database_unavailable(ValueError("not a database error"))
