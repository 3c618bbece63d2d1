"""Upgrades keep every record: a database built at an early migration (0001) and one at the
previous release's head (0009), each filled through raw SQL in the schema of its day, then
``flask db upgrade`` to this head. Every row comes through with every value it had, and the
pages work on what was there: the catalog, a file's page, a download, a personal document,
the admin's analytics; a disabled account stays disabled.

The tables are written as that era's migration made them (``sa.table`` with the era's
columns, as the migrations themselves write data), never through today's models."""

from __future__ import annotations

import hashlib
import io
import zlib
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from flask_migrate import upgrade
from werkzeug.security import generate_password_hash

from portal import create_app
from portal.extensions import db
from portal.storage import get_storage
from tests.helpers import close_app, every_row, form_sign_in

pytestmark = pytest.mark.databases  # old revisions filled by raw SQL, each dialect's sequences

PASSWORD = "password123"
NOW = datetime.now(UTC).replace(microsecond=0)
DAY = timedelta(days=1)
CONTENTS = {1: b"timetable, first version " * 400, 2: b"timetable, second version " * 500,
            3: b"course notes " * 3000, 4: b"a transcript of records " * 200,
            5: b"an old deleted form " * 100}


def era_rows() -> dict[str, list[dict]]:
    """The records every era since 0001 holds: users (one disabled), a group, files (public
    with two versions, a group's, a personal document, a deleted one) and downloads."""
    hashed = generate_password_hash(PASSWORD, "scrypt:1024:8:1")
    users = [(1, "boss", "admin", True), (2, "teacher", "staff", True),
             (3, "amy", "student", True), (4, "gone", "student", False)]
    versions = [(1, 1, 1, 2), (2, 1, 2, 2), (3, 2, 1, 2), (4, 3, 1, 1), (5, 4, 1, 1)]
    return {
        "groups": [{"id": 1, "name": "CS", "description": "Computer science"}],
        "users": [{"id": i, "username": n, "display_name": n.title(), "password_hash": hashed,
                   "role": r, "active": a, "created_at": NOW - 90 * DAY}
                  for i, n, r, a in users],
        "user_groups": [{"user_id": 2, "group_id": 1}, {"user_id": 3, "group_id": 1}],
        "files": [{"id": i, "title": t, "category": "课程资料", "description": f"about {t}",
                   "access": a, "owner_id": 2, "created_at": NOW - 60 * DAY,
                   "updated_at": NOW - 30 * DAY, "deleted_at": d}
                  for i, t, a, d in [(1, "课程表", "public", None), (2, "Notes", "group:CS", None),
                                     (3, "成绩单", "user:amy", None),
                                     (4, "Old form", "login", NOW - 10 * DAY)]],
        "file_versions": [
            {"id": vid, "file_id": fid, "number": number,
             "sha256": hashlib.sha256(CONTENTS[vid]).hexdigest(),
             "crc32": zlib.crc32(CONTENTS[vid]), "size": len(CONTENTS[vid]),
             "mime_type": "application/pdf", "original_filename": f"v{vid}.pdf",
             "storage_key": hashlib.sha256(CONTENTS[vid]).hexdigest(), "uploader_id": up,
             "created_at": NOW - (40 - vid) * DAY}
            for vid, fid, number, up in versions],
        "download_events": [
            {"id": i, "file_id": fid, "version_id": vid, "user_id": uid, "via_link": False,
             "method": "GET", "status": 200, "range_header": "",
             "bytes_sent": len(CONTENTS[vid]), "client_ip": "10.0.0.7",
             "user_agent": "Mozilla/5.0", "started_at": NOW - i * DAY,
             "ended_at": NOW - i * DAY + timedelta(seconds=3)}
            for i, fid, vid, uid in [(1, 1, 2, 3), (2, 2, 3, 3), (3, 3, 4, 3), (4, 1, 1, None)]],
    }


def release_rows() -> dict[str, list[dict]]:
    """What the previous release (0009) adds: session generations and sources, an audit
    log, an unfinished upload, analytics, revoked tokens, the change log, a CAS ticket."""
    rows = era_rows()
    for user in rows["users"]:
        user.update(session_gen=3 if user["username"] == "gone" else 1,
                    auth_source="ldap" if user["username"] == "teacher" else "local")
    for event in rows["download_events"]:
        event.update(event_key=f"{event['id']:032x}", size=event["bytes_sent"],
                     served_ranges=f"0-{event['bytes_sent'] - 1}", ua_class="browser",
                     referrer="", served_from="origin", link_id=None)
    day = (NOW - 3 * DAY).replace(hour=0, minute=0, second=0)
    rows.update({
        "audit_log": [{"id": 1, "at": NOW - 20 * DAY, "actor_id": 1, "action": "user.disabled",
                       "target": "gone", "detail": "", "client_ip": "10.0.0.1"}],
        "uploads": [{"id": "a" * 32, "user_id": 2, "size": 1000, "received": 400,
                     "filename": "draft.pdf", "title": "Draft", "category": "", "access": "login",
                     "description": "", "file_id": None, "raw_metadata": "filename ZHJhZnQucGRm",
                     "version_id": None, "created_at": NOW - DAY, "updated_at": NOW - DAY,
                     "completed_at": None}],
        "analytics_rollups": [
            {"grain": "d", "bucket": day, "file_id": 1, "grp": "", "requests": 9,
             "bytes_served": 90_000, "cache_hits": 2, "downloads": 7, "completed": 6}],
        "analytics_user_days": [{"day": day, "file_id": 1, "user_key": "u:3", "user_id": 3}],
        "analytics_file_users": [{"file_id": 1, "user_key": "u:3", "user_id": 3,
                                  "first_day": day, "last_day": day}],
        "logical_downloads": [
            {"id": 1, "user_key": "u:3", "user_id": 3, "file_id": 1, "version_id": 2,
             "size": len(CONTENTS[2]), "started_at": NOW - DAY, "last_at": NOW - DAY,
             "counted_at": NOW - DAY, "ranges": f"0-{len(CONTENTS[2]) - 1}",
             "covered": len(CONTENTS[2]), "completion": 1.0, "events": 1, "counted": True,
             "completed": True, "ua_class": "browser"}],
        "change_log": [{"id": 1, "generation": 5, "subject": "user:4", "at": NOW - DAY}],
        "revoked_tokens": [{"nonce": "b" * 16, "kind": "link", "user_id": 3,
                            "revoked_at": NOW - DAY, "expires_at": NOW + DAY}],
        "sso_sessions": [{"ticket": "ST-1-abc", "nonce": "c" * 16, "user_id": 2,
                          "expires_at": NOW + DAY}],
    })
    return rows


def insert(rows: dict[str, list[dict]]) -> None:
    """Write the rows as plain INSERTs into tables of exactly those columns."""
    def kind(value):
        if isinstance(value, datetime):
            return sa.DateTime(timezone=True)
        if isinstance(value, bool):
            return sa.Boolean()
        return None

    with db.engine.begin() as conn:
        for name, table_rows in rows.items():
            table = sa.table(name, *(sa.column(column, kind(value))
                                     for column, value in table_rows[0].items()))
            conn.execute(sa.insert(table), table_rows)
        if "change_log" in rows:  # the generation the change log has reached
            conn.execute(sa.text("UPDATE portal_state SET generation = 5 WHERE id = 1"))
        if conn.dialect.name == "postgresql":  # where the ids' sequences would stand
            for name, table_rows in rows.items():
                if isinstance(table_rows[0].get("id"), int):
                    conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{name}', "
                                         f"'id'), (SELECT max(id) FROM {name}))"))


def store_contents() -> None:
    storage = get_storage()
    for data in CONTENTS.values():
        storage.put(io.BytesIO(data))


def projected(rows: dict[str, list[dict]], like: dict[str, list[dict]]) -> dict:
    """``rows`` restricted to the tables and columns of ``like``."""
    return {name: sorted(({c: row[c] for c in like[name][0]} for row in rows[name]),
                         key=lambda row: repr(sorted(row.items())))
            for name in like if like[name]}


def sign_in(app, username: str):
    """A client that posted the sign-in form; (client, the answer's status)."""
    client = app.test_client()
    return client, form_sign_in(client, username, PASSWORD).status_code


@pytest.mark.parametrize(("start", "rows"), [("0001_initial", era_rows),
                                             ("0009_sso", release_rows)])
def test_upgrade_keeps_every_record_and_the_pages_work(config, start, rows):
    app = create_app(config)
    try:
        with app.app_context():
            upgrade(revision=start)
            store_contents()
            written = rows()
            insert(written)
        before = projected(every_row(app), written)
        assert sum(map(len, before.values())) == sum(map(len, written.values()))
        with app.app_context():
            upgrade()
        assert projected(every_row(app), written) == before

        amy, status = sign_in(app, "amy")
        assert status == 302
        catalog = amy.get("/").get_data(as_text=True)
        assert "课程表" in catalog and "Notes" in catalog and "Old form" not in catalog
        assert "课程表" in amy.get("/files/1").get_data(as_text=True)
        download = amy.get("/files/1/download")
        assert download.status_code == 200 and download.get_data() == CONTENTS[2]
        assert amy.get("/files/1/download?version=1").get_data() == CONTENTS[1]
        assert amy.get("/files/3/download").get_data() == CONTENTS[4]
        assert sign_in(app, "gone")[1] == 403

        boss, status = sign_in(app, "boss")
        assert status == 302
        assert boss.get("/admin/analytics/").status_code == 200
        top = boss.get("/api/analytics/top-files?days=30")
        assert top.status_code == 200
        if start == "0009_sso":  # the release's rollups are what the analytics show
            assert [(f["file_id"], f["downloads"]) for f in top.json] == [(1, 7)]
        assert boss.get("/api/analytics/files/1?days=30").status_code == 200
    finally:
        close_app(app)
