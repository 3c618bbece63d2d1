"""One namespace per database: two databases on one Redis, and a database restored from a
backup, never read each other's cached entries (same ids, other rules and bytes)."""

from __future__ import annotations

import contextlib
import io
import sqlite3

import pytest

from portal import create_app
from portal.extensions import db
from portal.files import add_version
from portal.models import File, PortalState
from portal.storage import get_storage
from tests.helpers import close_app

pytestmark = pytest.mark.databases  # a database's identity, stored in it


def portal_on(config: dict, path, **settings):
    """An app on its own SQLite database (the schema created), on the test's Redis."""
    app = create_app({**config, "DATABASE_URL": f"sqlite:///{path}", **settings})
    with app.app_context():
        db.create_all()
    return app


def sqlite_copy(source, target) -> None:
    """A consistent copy of a SQLite database in WAL mode (its online backup API)."""
    with contextlib.closing(sqlite3.connect(source)) as src, \
            contextlib.closing(sqlite3.connect(target)) as dst:
        src.backup(dst)


def add(app, data: bytes, access: str) -> int:
    with app.app_context():
        version = add_version(db.session, get_storage(), io.BytesIO(data), filename="a.pdf",
                              title="A", access=access)
        db.session.commit()
        return version.file_id


def test_two_databases_on_one_redis_keep_apart(config, tmp_path):
    first = portal_on(config, tmp_path / "one.db", STORAGE_URL=(tmp_path / "s1").as_uri())
    second = portal_on(config, tmp_path / "two.db", STORAGE_URL=(tmp_path / "s2").as_uri())
    try:
        assert add(first, b"public timetable", "public") == 1
        assert add(second, b"someone's transcript", "user:someone") == 1
        one, two = first.test_client(), second.test_client()
        for _ in range(3):  # each fills its cache in turn, same ids, same Redis
            assert one.get("/files/1/download").data == b"public timetable"
            assert two.get("/files/1/download").status_code == 302  # personal: sign in
        assert (first.extensions["portal_coherence"].prefix
                != second.extensions["portal_coherence"].prefix)
    finally:
        close_app(first)
        close_app(second)


def test_a_restored_backup_gets_a_new_namespace(config, tmp_path):
    path = tmp_path / "portal.db"
    app = portal_on(config, path)
    try:
        file_id = add(app, b"public notes", "public")
        client = app.test_client()
        assert client.get(f"/files/{file_id}/download").status_code == 200
        sqlite_copy(path, tmp_path / "backup.db")  # the nightly backup
        with app.app_context():  # after it, the file becomes personal
            db.session.get(File, file_id).access = "user:someone"
            db.session.commit()
        assert client.get(f"/files/{file_id}/download").status_code == 302
        identity = app.extensions["portal_coherence"].identity
    finally:
        close_app(app)
    # the database is restored from the backup; a new process starts on it, on the same Redis
    for leftover in (path, path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")):
        leftover.unlink(missing_ok=True)
    sqlite_copy(tmp_path / "backup.db", path)
    restored = portal_on(config, path)
    try:
        client = restored.test_client()
        # the backup says public: served, and not from the newer timeline's entries either
        assert client.get(f"/files/{file_id}/download").data == b"public notes"
        co = restored.extensions["portal_coherence"]
        assert co.identity != identity  # the generation went backwards: a new identity
        with restored.app_context():
            assert db.session.get(PortalState, 1).identity == co.identity
    finally:
        close_app(restored)
