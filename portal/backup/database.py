"""The database's part of a backup: a consistent snapshot, a check that it is readable, and
putting it back into an empty database.

SQLite: Python's ``sqlite3`` online backup API copies every page in one step, inside one
read transaction (WAL mode: writers go on meanwhile). PostgreSQL: ``pg_dump`` in its custom
format, started on a snapshot exported by a REPEATABLE READ transaction, so that what the
backup reads itself (the objects to copy, the uploads, the identity) comes from exactly the
state pg_dump writes. Only the portal's schema is dumped (``-n``), the extensions it uses
(pg_trgm) are noted and created again at restore.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import inspect, text
from sqlalchemy.engine import Connection, Engine, make_url

from .place import BackupError

#: The major version in ``pg_dump --version``'s answer.
_VERSION = re.compile(r"\(PostgreSQL\)\s+(\d+)")
TOOL_TIMEOUT = 6 * 3600  # a dump or restore of a very large database may take hours


@dataclass
class Snapshot:
    """What a snapshot holds, read from the snapshot itself."""

    name: str  # its file in the backup: database.sqlite or database.dump
    path: Path  # where it was written
    facts: dict  # dialect, revision, identity, generation; PostgreSQL: schema, extensions
    objects: list[tuple[str, str, int]] = field(default_factory=list)  # (key, sha256, size)
    uploads: list[tuple[str, int, int]] = field(default_factory=list)  # (id, received, size)


def snapshot(engine: Engine, workdir: Path, pg_bin: str | None = None) -> Snapshot:
    """Take the snapshot into ``workdir``; BackupError when it cannot be taken."""
    if engine.dialect.name == "postgresql":
        return _snapshot_postgres(engine, workdir, pg_bin)
    return _snapshot_sqlite(engine, workdir)


def _snapshot_sqlite(engine: Engine, workdir: Path) -> Snapshot:
    source = engine.url.database
    if not source or source == ":memory:" or not Path(source).exists():
        raise BackupError(f"no SQLite database file at {source!r}")
    path = workdir / "database.sqlite"
    try:
        with contextlib.closing(sqlite3.connect(source, timeout=60)) as src, \
                contextlib.closing(sqlite3.connect(path)) as dst:
            src.backup(dst)  # every page in one step: one consistent read transaction
            dst.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy the SQLite database: {exc}") from exc
    from sqlalchemy import create_engine

    copy = create_engine(f"sqlite:///{path}")
    try:
        with copy.connect() as conn:
            facts, objects, uploads = _read_facts(conn)
    finally:
        copy.dispose()
    return Snapshot("database.sqlite", path, {"dialect": "sqlite", **facts}, objects, uploads)


def _snapshot_postgres(engine: Engine, workdir: Path, pg_bin: str | None) -> Snapshot:
    path = workdir / "database.dump"
    with engine.connect() as conn:
        conn = conn.execution_options(isolation_level="REPEATABLE READ",
                                      postgresql_readonly=True)
        with conn.begin():
            exported = conn.execute(text("SELECT pg_export_snapshot()")).scalar_one()
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            server = conn.execute(text("SHOW server_version_num")).scalar_one()
            extensions = [list(row) for row in conn.execute(text(
                "SELECT e.extname, n.nspname FROM pg_extension e JOIN pg_namespace n "
                "ON n.oid = e.extnamespace WHERE e.extname <> 'plpgsql' ORDER BY 1"))]
            tool = pg_tool("pg_dump", int(server) // 10000, pg_bin)
            url, env = libpq_target(engine)
            _run([tool, "--format=custom", f"--snapshot={exported}", f'--schema="{schema}"',
                  "--no-owner", "--no-privileges", f"--file={path}", f"--dbname={url}"],
                 env, "pg_dump")
            facts, objects, uploads = _read_facts(conn)
    server_version = f"{int(server) // 10000}.{int(server) % 10000}"
    return Snapshot("database.dump", path,
                    {"dialect": "postgresql", "schema": schema, "server_version": server_version,
                     "extensions": extensions, **facts}, objects, uploads)


def _read_facts(conn: Connection) -> tuple[dict, list, list]:
    """The migration, identity and generation, the objects versions reference and the
    unfinished uploads, of whatever era the schema is."""
    tables = set(inspect(conn).get_table_names())
    if "alembic_version" not in tables or "file_versions" not in tables:
        raise BackupError("the database has no portal schema (run flask db upgrade)")
    revision = conn.execute(text("SELECT version_num FROM alembic_version")).scalar()
    identity = generation = None
    if "portal_state" in tables:
        identity, generation = conn.execute(text(
            "SELECT identity, generation FROM portal_state WHERE id = 1")).one()
    objects = [tuple(row) for row in conn.execute(text(
        "SELECT DISTINCT storage_key, sha256, size FROM file_versions ORDER BY storage_key"))]
    uploads = []
    if "uploads" in tables:
        uploads = [tuple(row) for row in conn.execute(text(
            "SELECT id, received, size FROM uploads WHERE completed_at IS NULL ORDER BY id"))]
    return ({"revision": revision, "identity": identity, "generation": generation},
            objects, uploads)


# --- checking -------------------------------------------------------------------------------


def readable(facts: dict, path: Path, pg_bin: str | None = None) -> str | None:
    """None when the snapshot file reads back whole, else what is wrong (one line): SQLite's
    ``PRAGMA integrity_check`` on a copy, ``pg_restore --list`` for a dump."""
    if facts.get("dialect") == "postgresql":
        tool = pg_tool("pg_restore", None, pg_bin)
        done = subprocess.run([tool, "--list", str(path)], capture_output=True, text=True,
                              timeout=TOOL_TIMEOUT, check=False)
        if done.returncode != 0:
            return f"pg_restore --list fails: {_last_line(done.stderr)}"
        if f"TABLE DATA {facts.get('schema')} alembic_version" not in done.stdout:
            return "the dump holds no alembic_version table of its schema"
        return None
    with tempfile.TemporaryDirectory(prefix="portal-verify-") as tmp:
        copy = Path(tmp) / "check.sqlite"
        shutil.copyfile(path, copy)  # the check must not write to the backup
        try:
            with contextlib.closing(sqlite3.connect(copy)) as conn:
                result = [row[0] for row in conn.execute("PRAGMA integrity_check")]
                if result != ["ok"]:
                    return f"PRAGMA integrity_check: {'; '.join(result)[:300]}"
                revision = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        except sqlite3.Error as exc:
            return f"not a readable SQLite database: {exc}"
        if not revision or revision[0] != facts.get("revision"):
            return f"its migration is {revision and revision[0]!r}, the manifest says " \
                   f"{facts.get('revision')!r}"
    return None


def tables_of(engine: Engine) -> list[str]:
    """The tables the database (PostgreSQL: the current schema) holds."""
    with engine.connect() as conn:
        return inspect(conn).get_table_names()


# --- restoring ------------------------------------------------------------------------------


def check_target(engine: Engine, facts: dict) -> None:
    """BackupError when the snapshot cannot go into this database: another kind, or (for
    PostgreSQL) another schema name, which a dump carries in every statement."""
    if engine.dialect.name != facts.get("dialect"):
        raise BackupError(f"the backup is of a {facts.get('dialect')} database; "
                          f"PORTAL_DATABASE_URL is {engine.dialect.name}")
    if engine.dialect.name == "postgresql":
        with engine.connect() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        if schema != facts.get("schema"):
            raise BackupError(f"the backup is of schema {facts.get('schema')!r}; this "
                              f"database's is {schema!r} (restore into a schema of that name)")


def restore(engine: Engine, facts: dict, path: Path, pg_bin: str | None = None) -> None:
    """Put the snapshot into the (empty) database; BackupError when it cannot."""
    check_target(engine, facts)
    if engine.dialect.name == "postgresql":
        _restore_postgres(engine, facts, path, pg_bin)
        return
    target = engine.url.database
    engine.dispose()
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as src, \
                contextlib.closing(sqlite3.connect(target)) as dst:
            src.backup(dst)
    except sqlite3.Error as exc:
        raise BackupError(f"cannot write the SQLite database {target}: {exc}") from exc


def _restore_postgres(engine: Engine, facts: dict, path: Path, pg_bin: str | None) -> None:
    schema = facts["schema"]
    with engine.connect() as conn:
        server = int(conn.execute(text("SHOW server_version_num")).scalar_one())
        have = set(conn.execute(text("SELECT extname FROM pg_extension")).scalars())
        spaces = set(conn.execute(text("SELECT nspname FROM pg_namespace")).scalars())
        for name, where in facts.get("extensions") or ():
            if name not in have and where in spaces:
                conn.execute(text(f'CREATE EXTENSION IF NOT EXISTS "{name}" '
                                  f'WITH SCHEMA "{where}"'))
        conn.commit()
    tool = pg_tool("pg_restore", server // 10000, pg_bin)
    url, env = libpq_target(engine)
    _run([tool, "--no-owner", "--no-privileges", "--exit-on-error", "--single-transaction",
          f'--schema={schema}', f"--dbname={url}", str(path)], env, "pg_restore")


# --- PostgreSQL's tools ---------------------------------------------------------------------


def libpq_target(engine: Engine) -> tuple[str, dict]:
    """The connection URI pg_dump and pg_restore take (the password goes in PGPASSWORD,
    not on their command line, which every user of the machine can read)."""
    url = make_url(engine.url.render_as_string(hide_password=False))
    env = dict(os.environ)
    if url.password:
        env["PGPASSWORD"] = url.password
    uri = url.set(drivername="postgresql", password=None).render_as_string()
    return uri, env


def tool_major(path: str) -> int | None:
    """The PostgreSQL major version a client tool belongs to (``pg_dump --version``)."""
    try:
        done = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=30,
                              check=False)
    except OSError:
        return None
    found = _VERSION.search(done.stdout)
    return int(found.group(1)) if found else None


def _candidates(name: str, pg_bin: str | None) -> Iterator[str]:
    if pg_bin:
        yield str(Path(pg_bin) / name)
        return
    for path in sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{name}")):
        yield str(path)
    on_path = shutil.which(name)
    if on_path:
        yield on_path


def pg_tool(name: str, server_major: int | None, pg_bin: str | None = None) -> str:
    """The ``pg_dump`` or ``pg_restore`` to run: of the server's major version when there is
    one (Debian keeps each version's tools in /usr/lib/postgresql/<major>/bin), else the
    oldest newer one (they read older servers and dumps); for no server, the newest.
    ``pg_bin`` names the folder to take it from."""
    found = {}
    for path in _candidates(name, pg_bin):
        major = tool_major(path)
        if major is not None:
            found.setdefault(major, path)
    if server_major is None and found:
        return found[max(found)]
    if server_major in found:
        return found[server_major]
    newer = sorted(major for major in found if server_major is not None and major > server_major)
    if newer:
        return found[newer[0]]
    where = f" in {pg_bin}" if pg_bin else ""
    wanted = f" {server_major} or newer" if server_major else ""
    raise BackupError(f"no {name}{wanted} found{where}: install the PostgreSQL client "
                      f"(postgresql-client-{server_major or 'N'}) or give --pg-bin DIR")


def _run(cmd: list[str], env: dict, what: str) -> None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, env=env,
                              timeout=TOOL_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BackupError(f"{what} failed: {exc}") from exc
    if done.returncode != 0:
        raise BackupError(f"{what} failed: {_last_line(done.stderr)}")


def _last_line(text_: str) -> str:
    lines = [line for line in text_.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "(no message)"
