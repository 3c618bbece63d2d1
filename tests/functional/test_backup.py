"""``flask backup create|verify|restore`` through the app's own command line, on SQLite and
PostgreSQL: a backup restores every row and object, verify finds what is damaged, restore
refuses what it must, the configuration keeps no secret, and no object a backup needs is
deleted while it runs. The same under a real gunicorn with clients running:
test_backup_live.py."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import threading
from pathlib import Path

import pytest
import s3server
from alembic.script import ScriptDirectory
from flask_migrate import upgrade
from sqlalchemy import select, text

from portal import create_app
from portal.backup.configuration import without_secrets
from portal.backup.guard import backup_hold
from portal.extensions import db
from portal.files import discard
from portal.models import FileVersion, PortalState, RevokedToken, User
from portal.storage import get_storage
from tests.helpers import (
    add_file,
    close_app,
    csrf_from,
    every_row,
    form_sign_in,
    wipe_database,
)

pytestmark = pytest.mark.databases  # each database is dumped and restored its own way

s3_server, s3_env = s3server.s3_server, s3server.s3_env  # fixtures, used by name

#: What the analytics pages read, compared before the backup and after the restore.
ANALYTICS = ("/api/analytics/top-files?days=30", "/api/analytics/series?days=30",
             "/api/analytics/heatmap?days=30", "/api/analytics/files/{public}?days=30")


@pytest.fixture
def portal(config):
    """The app on a database built by the migrations (what a backup reads)."""
    app = create_app(config)
    with app.app_context():
        upgrade()
    yield app
    close_app(app)


def sign_in(app, username: str):
    """A client signed in through the form; (client, its CSRF token)."""
    client = app.test_client()
    resp = form_sign_in(client, username, "password123")
    assert resp.status_code == 302, resp.get_data(as_text=True)[:300]
    return client, csrf_from(client.get("/").get_data(as_text=True))


def make_user(app, name: str, role: str = "student", groups=()) -> None:
    result = app.test_cli_runner().invoke(args=[
        "user", "create", name, "--password", "password123", "--role", role,
        *(arg for group in groups for arg in ("--group", group))])
    assert result.exit_code == 0, result.output


def populate(app) -> dict:
    """Users, groups, files with versions, a revoked and a live signed link, a disabled
    user, download history: what a restore must bring back. Returns what the test needs."""
    make_user(app, "boss", "admin")
    make_user(app, "teacher", "staff", ["CS"])
    make_user(app, "amy", groups=["CS"])
    make_user(app, "gone")
    public = add_file(app, b"timetable v1 " * 1000, "public", filename="timetable.pdf")
    add_file(app, b"timetable v2 " * 1200, "public", filename="timetable.pdf")  # a version
    group = add_file(app, b"CS notes " * 5000, "group:CS", filename="notes.pdf")
    personal = add_file(app, b"transcript " * 300, "user:amy", filename="transcript.pdf")
    amy, csrf = sign_in(app, "amy")
    links = [amy.post(f"/api/files/{personal}/links", headers={"X-CSRFToken": csrf}).json["url"]
             for _ in range(2)]
    assert amy.post("/api/links/revoke", json={"url": links[0]},
                    headers={"X-CSRFToken": csrf}).status_code == 200
    for file_id in (public, group, personal):
        assert amy.get(f"/files/{file_id}/download").status_code == 200
    with app.app_context():
        gone = db.session.scalar(select(User).where(User.username == "gone"))
        gone.active = False
        db.session.commit()
    result = app.test_cli_runner().invoke(args=["analytics", "simulate", "--events", "400",
                                                "--days", "20"])
    assert result.exit_code == 0, result.output
    assert app.test_cli_runner().invoke(args=["analytics", "flush"]).exit_code == 0
    return {"public": public, "personal": personal, "amy": amy,
            "revoked": "/" + links[0].split("/", 3)[3], "live": "/" + links[1].split("/", 3)[3]}


def analytics_answers(app, public: int) -> dict:
    admin, _ = sign_in(app, "boss")
    answers = {}
    for path in ANALYTICS:
        resp = admin.get(path.format(public=public))
        assert resp.status_code == 200, (path, resp.status_code)
        answers[path] = resp.json
    return answers


def cli(app, *args: str):
    return app.test_cli_runner().invoke(args=list(args))


def stored(app) -> dict[str, str]:
    """SHA-256 of the bytes of every object the database references, read back."""
    with app.app_context():
        storage = get_storage()
        found = {}
        for key in db.session.scalars(select(FileVersion.storage_key).distinct()):
            with storage.open(key) as fh:
                found[key] = hashlib.sha256(fh.read()).hexdigest()
        return found


def lose_everything(app, config, pg_admin) -> None:
    """The instance is gone: app closed, database wiped, storage and instance folders
    removed."""
    close_app(app)
    wipe_database(config["DATABASE_URL"], pg_admin)
    shutil.rmtree(Path(config["STORAGE_URL"].removeprefix("file://")), ignore_errors=True)
    shutil.rmtree(config["INSTANCE_PATH"], ignore_errors=True)


def test_restore_brings_back_every_row_and_object_and_ends_sessions(portal, config, pg_admin,
                                                                    tmp_path):
    seeded = populate(portal)
    analytics = analytics_answers(portal, seeded["public"])
    rows, objects = every_row(portal), stored(portal)
    with portal.app_context():
        identity = db.session.get(PortalState, 1).identity
    assert seeded["amy"].get(seeded["live"]).status_code == 200

    made = cli(portal, "backup", "create", "--to", str(tmp_path / "b"))
    assert made.exit_code == 0, made.output
    checked = cli(portal, "backup", "verify", str(tmp_path / "b"))
    assert checked.exit_code == 0 and checked.output.startswith("ok:"), checked.output
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["database"]["identity"] == identity
    assert sorted(key for key, _, _ in manifest["objects"]) == sorted(objects)

    lose_everything(portal, config, pg_admin)
    app = create_app(config)
    try:
        restored = cli(app, "backup", "restore", str(tmp_path / "b"))
        assert restored.exit_code == 0, restored.output
        assert stored(app) == objects  # every object byte-identical
        after = every_row(app)
        assert after.keys() == rows.keys()
        for table in rows:
            if table not in ("users", "portal_state"):
                assert after[table] == rows[table], table
        with app.app_context():
            state = db.session.get(PortalState, 1)
            assert state.identity != identity  # a new namespace in Redis
            users = {u.username: u for u in db.session.scalars(select(User))}
            assert not users["gone"].active
        assert len(after["users"]) == len(rows["users"])
        assert analytics_answers(app, seeded["public"]) == analytics

        # Sessions and links of before the restore have ended; revoked stays revoked.
        old_session = app.test_client()
        old_session.set_cookie("session", seeded["amy"].get_cookie("session").value)
        assert old_session.get(f"/files/{seeded['personal']}/download").status_code == 302
        assert app.test_client().get(seeded["live"]).status_code == 403
        assert app.test_client().get(seeded["revoked"]).status_code == 403
        with app.app_context():
            assert db.session.scalar(select(RevokedToken).where(RevokedToken.kind == "link"))
        amy, _ = sign_in(app, "amy")  # signing in again works
        assert amy.get(f"/files/{seeded['personal']}/download").status_code == 200
        assert form_sign_in(app.test_client(), "gone", "password123").status_code == 403
    finally:
        close_app(app)


def test_verify_names_a_missing_or_altered_object(portal, tmp_path):
    populate(portal)
    assert cli(portal, "backup", "create", "--to", str(tmp_path / "b")).exit_code == 0
    objects = sorted((tmp_path / "b" / "objects").rglob("*"))
    blobs = [path for path in objects if path.is_file()]
    missing, altered = blobs[0], blobs[1]
    missing.unlink()
    altered.write_bytes(altered.read_bytes()[:-1] + b"?")
    checked = cli(portal, "backup", "verify", str(tmp_path / "b"))
    assert checked.exit_code == 1
    assert f"object {missing.name}:" in checked.output
    assert f"object {altered.name}: its bytes do not hash to" in checked.output


def test_verify_finds_a_damaged_database_or_manifest(portal, tmp_path):
    populate(portal)
    assert cli(portal, "backup", "create", "--to", str(tmp_path / "b")).exit_code == 0
    backup = tmp_path / "b"
    dump = next(backup.glob("database.*"))
    data = bytearray(dump.read_bytes())
    middle = len(data) // 2  # every bit flipped: zeros written over a free page change nothing
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    dump.write_bytes(bytes(data))
    checked = cli(portal, "backup", "verify", str(backup))
    assert checked.exit_code == 1 and f"{dump.name}: SHA-256" in checked.output

    manifest = backup / "manifest.json"
    manifest.write_text(manifest.read_text().replace('"format"', '"formats"'))
    checked = cli(portal, "backup", "verify", str(backup))
    assert checked.exit_code == 1
    assert "manifest.json does not match manifest.sha256" in checked.output


def test_verify_reads_the_dump_itself(portal, tmp_path):
    """A dump whose checksum was recomputed after damage (the manifest agrees with it) is
    still found unreadable."""
    populate(portal)
    assert cli(portal, "backup", "create", "--to", str(tmp_path / "b")).exit_code == 0
    backup = tmp_path / "b"
    dump = next(backup.glob("database.*"))
    dump.write_bytes(dump.read_bytes()[:4096])
    manifest = json.loads((backup / "manifest.json").read_text())
    manifest["files"][dump.name] = {"sha256": hashlib.sha256(dump.read_bytes()).hexdigest(),
                                    "size": dump.stat().st_size}
    rewrite_manifest(backup, manifest)
    checked = cli(portal, "backup", "verify", str(backup))
    assert checked.exit_code == 1 and f"{dump.name}: " in checked.output, checked.output
    assert "SHA-256" not in checked.output


def rewrite_manifest(backup: Path, manifest: dict) -> None:
    data = json.dumps(manifest).encode()
    (backup / "manifest.json").write_bytes(data)
    (backup / "manifest.sha256").write_text(hashlib.sha256(data).hexdigest() + "\n")


def test_restore_refuses_a_database_that_is_not_empty(portal, config, tmp_path):
    populate(portal)
    assert cli(portal, "backup", "create", "--to", str(tmp_path / "b")).exit_code == 0
    rows = every_row(portal)
    refused = cli(portal, "backup", "restore", str(tmp_path / "b"))
    assert refused.exit_code == 1
    assert refused.output.count("\n") == 1 and "the database is not empty" in refused.output
    assert every_row(portal) == rows


def test_restore_refuses_a_backup_from_a_newer_portal(portal, config, pg_admin, tmp_path):
    populate(portal)
    assert cli(portal, "backup", "create", "--to", str(tmp_path / "b")).exit_code == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    manifest["database"]["revision"] = "9999_from_the_future"
    rewrite_manifest(tmp_path / "b", manifest)
    lose_everything(portal, config, pg_admin)
    app = create_app(config)
    try:
        refused = cli(app, "backup", "restore", str(tmp_path / "b"))
        assert refused.exit_code == 1 and "made by a newer portal" in refused.output
        with app.app_context():
            from portal.backup.database import tables_of

            assert tables_of(db.engine) == []
    finally:
        close_app(app)


def test_the_configuration_keeps_no_secret(portal, tmp_path, monkeypatch):
    secrets = {"PORTAL_SECRET_KEY": "s3cr3t-signing", "PORTAL_LDAP_BIND_PASSWORD": "ldap-pw-9",
               "PORTAL_OIDC_CLIENT_SECRET": "oidc-cs-7", "AWS_SECRET_ACCESS_KEY": "aws-sk-5",
               "AWS_ACCESS_KEY_ID": "aws-ak-3", "AWS_SESSION_TOKEN": "aws-st-1"}
    for name, value in secrets.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("PORTAL_REDIS_URL", "redis://:redis-pw-8@127.0.0.1:6379/0")
    monkeypatch.setenv("PORTAL_LINK_TTL_SECONDS", "3600")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    kept = without_secrets()
    assert kept["settings"]["PORTAL_LINK_TTL_SECONDS"] == "3600"
    assert kept["settings"]["AWS_DEFAULT_REGION"] == "us-east-1"
    assert kept["settings"]["PORTAL_REDIS_URL"] == "redis://:***@127.0.0.1:6379/0"
    assert set(secrets) <= set(kept["left_out"])
    assert cli(portal, "backup", "create", "--to", str(tmp_path / "b")).exit_code == 0
    written = b"".join(path.read_bytes() for path in (tmp_path / "b").iterdir()
                       if path.is_file())
    for value in [*secrets.values(), "redis-pw-8"]:
        assert value.encode() not in written, value


def test_no_object_is_deleted_while_a_backup_runs(portal):
    """discard (a put whose version never committed) keeps the object while a backup holds
    the guard, deletes it otherwise, and never deletes one a committed version uses."""
    with portal.app_context():
        storage = get_storage()
        loose = storage.put(io.BytesIO(b"never committed"))
        used_id = add_file(portal, b"committed bytes", "public")
        used_key = db.session.get(FileVersion, used_id).storage_key
        again = storage.put(io.BytesIO(b"committed bytes"))
        assert again.key == used_key
        in_use = dataclasses.replace(again, created=True)  # as a racing put saw it

        held, release = threading.Event(), threading.Event()
        engine = db.engine

        def backup():
            with backup_hold(engine):
                held.set()
                release.wait(60)

        thread = threading.Thread(target=backup)
        thread.start()
        try:
            assert held.wait(60)
            discard(db.session, storage, loose)
            assert storage.exists(loose.key)  # kept: a backup is running
        finally:
            release.set()
            thread.join(60)
        discard(db.session, storage, in_use)
        assert storage.exists(used_key)  # a committed version refers to it
        discard(db.session, storage, loose)
        assert not storage.exists(loose.key)


def test_a_backup_waits_for_a_deletion_under_way(portal):
    """The backup's hold is taken only once a deletion window has closed."""
    from portal.backup.guard import deletion_window

    with portal.app_context():
        order = []
        window_open, closing = threading.Event(), threading.Event()
        engine = db.engine

        def deleting():
            with deletion_window(engine) as conn:
                assert conn is not None
                window_open.set()
                closing.wait(60)
                order.append("deleted")

        thread = threading.Thread(target=deleting)
        thread.start()
        assert window_open.wait(60)
        backup = threading.Thread(target=lambda: _hold_once(engine, order))
        backup.start()
        backup.join(0.5)  # it must still be waiting
        assert backup.is_alive() and order == []
        closing.set()
        thread.join(60)
        backup.join(60)
        assert order == ["deleted", "backup"]


def _hold_once(engine, order: list) -> None:
    with backup_hold(engine):
        order.append("backup")


def test_a_backup_of_s3_storage_lists_objects_and_restore_needs_them(config, s3_env, pg_admin,
                                                                      tmp_path):
    """Without --objects a backup of s3:// storage keeps each object's key and SHA-256 only
    (the bucket keeps the bytes, and its versions): verify reads them from the bucket, and
    restore refuses, before writing anything, when one is gone."""
    config.update(STORAGE_URL=s3_env["url"], UPLOAD_DIR=str(tmp_path / "uploads"))
    app = create_app(config)
    with app.app_context():
        upgrade()
    populate(app)
    assert cli(app, "backup", "create", "--to", str(tmp_path / "b")).exit_code == 0
    manifest = json.loads((tmp_path / "b" / "manifest.json").read_text())
    assert manifest["storage"]["objects"] == "listed" and manifest["objects"]
    assert not (tmp_path / "b" / "objects").exists()
    assert cli(app, "backup", "verify", str(tmp_path / "b")).exit_code == 0
    gone = manifest["objects"][0][0]
    with app.app_context():
        get_storage().delete(gone)
    checked = cli(app, "backup", "verify", str(tmp_path / "b"))
    assert checked.exit_code == 1 and f"object {gone}:" in checked.output

    close_app(app)
    wipe_database(config["DATABASE_URL"], pg_admin)
    app = create_app(config)
    try:
        refused = cli(app, "backup", "restore", str(tmp_path / "b"))
        assert refused.exit_code == 1 and f"e.g. {gone}: not in the storage" in refused.output
        with app.app_context():
            from portal.backup.database import tables_of

            assert tables_of(db.engine) == []
    finally:
        close_app(app)


def test_a_backup_of_an_older_schema_is_migrated_at_restore(config, pg_admin, tmp_path):
    """A backup made at the previous release's head (0009) comes back at this one's."""
    app = create_app(config)
    with app.app_context():
        upgrade(revision="0009_sso")
        db.session.execute(text(
            "INSERT INTO users (username, display_name, password_hash, role, active, "
            "created_at, session_gen, auth_source) VALUES ('old', 'Old', NULL, 'student', "
            "true, '2026-01-05 10:00:00+00:00', 4, 'local')"))
        db.session.commit()
    made = cli(app, "backup", "create", "--to", str(tmp_path / "b"))
    assert made.exit_code == 0 and "0009_sso" in made.output, made.output
    close_app(app)
    wipe_database(config["DATABASE_URL"], pg_admin)
    app = create_app(config)
    try:
        restored = cli(app, "backup", "restore", str(tmp_path / "b"))
        assert restored.exit_code == 0, restored.output
        with app.app_context():
            head = ScriptDirectory(app.extensions["migrate"].directory).get_current_head()
            assert f"migrated to {head}" in restored.output
            assert db.session.scalar(text("SELECT version_num FROM alembic_version")) == head
            old = db.session.scalar(select(User).where(User.username == "old"))
            assert old.session_gen == 5 and old.display_name == "Old"
    finally:
        close_app(app)
