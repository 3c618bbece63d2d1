"""A backup taken from a real gunicorn while clients download and a tus upload runs, the
instance then lost and restored: on SQLite and PostgreSQL, with file:// and s3:// storage
(rclone serve s3; the backup then goes to a bucket too).

What must hold after the restore: every object the backup references byte-identical by
SHA-256; the analytics API answering as it did before the backup; revoked links and
disabled users still refused; every session and signed link of before ended (docs/
operations.md); nothing cached about the lost timeline served, though Redis kept it; the
unfinished upload resumable from the offset the backup holds.

The analytics comparison needs a fixed point: the workers' background flush is off
(PORTAL_ANALYTICS_BACKGROUND_FLUSH=false, PORTAL_ANALYTICS_FLUSHER=workers), so the events
of the downloads running during the backup wait in Redis and the tables the analytics
pages read hold what they held when the answers were taken.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import urllib.error
import urllib.parse

import pytest
import s3server
from servers import PASSWORD, Browser, Gunicorn, Instance, make_instance, request, write_random
from sqlalchemy import select

from portal.backup.place import place_of
from portal.extensions import db
from portal.models import FileVersion, User
from portal.storage import get_storage
from tests.helpers import (
    PG_URL,
    close_app,
    temporary_schema,
    unavailable,
    wait_for,
    wipe_database,
)

# PostgreSQL too: each database is dumped and restored its own way
pytestmark = [pytest.mark.slow, pytest.mark.databases]

s3_server, s3_env = s3server.s3_server, s3server.s3_env  # fixtures, used by name

ANALYTICS = ("/api/analytics/top-files?days=30", "/api/analytics/series?days=30",
             "/api/analytics/heatmap?days=30", "/api/analytics/files/{big}?days=30")
BIG = 6 * 1024 * 1024  # downloaded over and over, 4 MiB/s in all, while the backup runs
CHUNK = 64 * 1024  # the tus client's PATCH size


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path, pg_admin):
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'portal.db'}"
        return
    if not PG_URL:
        unavailable("needs PORTAL_TEST_DATABASE_URL")
    with temporary_schema(pg_admin, "bk") as url:
        yield url


@pytest.fixture(params=["file", "s3"])
def storage(request, tmp_path):
    """(PORTAL_ and AWS_ variables, the backup's place, a function giving a new, empty
    storage URL for the instance the backup is restored into)."""
    if request.param == "file":
        yield ({"PORTAL_STORAGE_URL": (tmp_path / "storage").as_uri()}, str(tmp_path / "backup"),
               lambda: (tmp_path / "storage").as_uri())
        return
    s3 = request.getfixturevalue("s3_env")  # this process reaches the bucket too
    server = request.getfixturevalue("s3_server")
    env = {"PORTAL_STORAGE_URL": s3["url"], "PORTAL_UPLOAD_DIR": str(tmp_path / "uploads"),
           "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
           "AWS_EC2_METADATA_DISABLED": "true", **server.env()}
    yield (env, f"s3://{server.new_bucket()}/backups/today",
           lambda: f"s3://{server.new_bucket()}/portal")


def portal_env(database_url: str, storage_env: dict) -> dict:
    return {"PORTAL_DATABASE_URL": database_url, **storage_env,
            "PORTAL_ANALYTICS_BACKGROUND_FLUSH": "false", "PORTAL_ANALYTICS_FLUSHER": "workers",
            "PORTAL_DOWNLOAD_LIMITS": json.dumps({"anonymous": {"rate": "4M"}})}


def cli(instance: Instance, redis_url: str, *commands: list[str]) -> list[str]:
    """Run ``flask`` commands in this process on another node's app of the instance (much
    quicker than a process each); their outputs."""
    app = instance.node_app(redis_url)
    outputs = []
    try:
        for args in commands:
            result = app.test_cli_runner().invoke(args=args)
            assert result.exit_code == 0, (args, result.output)
            outputs.append(result.output)
    finally:
        close_app(app)
    return outputs


def populate(instance: Instance, redis_url: str) -> dict:
    """Users and groups, files and versions, a disabled user, download history."""
    files = instance.root / "files"
    files.mkdir(parents=True, exist_ok=True)
    (files / "users.csv").write_text(
        "username,display_name,role,groups,password\n"
        f"boss,Boss,admin,,{PASSWORD}\nteacher,Teacher,staff,CS,{PASSWORD}\n"
        f"amy,Amy,student,CS,{PASSWORD}\ngone,Gone,student,,{PASSWORD}\n")
    write_random(files / "lecture.mp4", BIG)
    (files / "timetable.pdf").write_bytes(b"version one " * 900)
    (files / "v2" / "timetable.pdf").parent.mkdir()
    (files / "v2" / "timetable.pdf").write_bytes(b"version two " * 1100)
    write_random(files / "notes.pdf", 300_000)
    write_random(files / "transcript.pdf", 20_000)
    added = cli(instance, redis_url, ["user", "import", str(files / "users.csv")],
                ["file", "add", str(files / "lecture.mp4"), str(files / "timetable.pdf"),
                 "--access", "public"],
                ["file", "add", str(files / "v2" / "timetable.pdf"), "--access", "public"],
                ["file", "add", str(files / "notes.pdf"), "--access", "group:CS"],
                ["file", "add", str(files / "transcript.pdf"), "--access", "user:amy"],
                ["analytics", "simulate", "--events", "300", "--days", "20"])
    ids = [int(line.split("\t")[0]) for out in added[1:5] for line in out.splitlines()]
    app = instance.node_app(redis_url)
    try:
        with app.app_context():
            db.session.scalar(select(User).where(User.username == "gone")).active = False
            db.session.commit()
    finally:
        close_app(app)
    return {"big": ids[0], "timetable": ids[1], "notes": ids[3], "personal": ids[4]}


def stored_hashes(instance: Instance, redis_url: str) -> dict[str, str]:
    """SHA-256 of what the storage holds of every object the database references."""
    app = instance.node_app(redis_url)
    try:
        with app.app_context():
            storage = get_storage()
            found = {}
            for key in db.session.scalars(select(FileVersion.storage_key).distinct()):
                digest = hashlib.sha256()
                for chunk in storage.read_range(key, 0, storage.size(key)):
                    digest.update(chunk)
                found[key] = digest.hexdigest()
    finally:
        close_app(app)
    return found


def analytics_answers(base_url: str, ids: dict) -> dict:
    admin = Browser(base_url).login("boss")
    answers = {}
    for path in ANALYTICS:
        status, body = admin._open(path.format(**ids))
        assert status == 200
        answers[path] = json.loads(body)
    return answers


def status_of(base_url: str, path: str, cookie: str | None = None) -> int:
    headers = {"Cookie": f"session={cookie}"} if cookie else {}
    return request(base_url, "GET", path, headers)[0]


def refused_sign_in(base_url: str, name: str) -> int:
    try:
        Browser(base_url).login(name)
    except urllib.error.HTTPError as exc:
        exc.close()
        return exc.code
    return 200


class Downloads:
    """Clients downloading the big public file over and over, each checking every byte."""

    def __init__(self, base_url: str, path: str, sha: str, clients: int = 2) -> None:
        self.base_url, self.path, self.sha = base_url, path, sha
        self.stop = threading.Event()
        self.done = [0] * clients
        self.errors: list[str] = []
        self.threads = [threading.Thread(target=self._run, args=(i,)) for i in range(clients)]

    def _run(self, index: int) -> None:
        while not self.stop.is_set():
            try:
                status, _, body = request(self.base_url, "GET", self.path, timeout=120)
            except OSError as exc:
                self.errors.append(repr(exc))
                continue
            if status != 200 or hashlib.sha256(body).hexdigest() != self.sha:
                self.errors.append(f"{status}, {len(body)} bytes")
            self.done[index] += 1

    def __enter__(self) -> Downloads:
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(180)


class Upload:
    """A tus upload sent in small PATCHes, stopping one chunk before its end until told."""

    def __init__(self, browser: Browser, data: bytes) -> None:
        self.browser, self.data = browser, data
        self.path = browser.tus_create(len(data), filename="exam.pdf", title="Exam",
                                       access="group:CS")
        self.offset = 0
        self.finish = threading.Event()
        self.errors: list[str] = []
        self.thread = threading.Thread(target=self._run)

    def _run(self) -> None:
        try:
            while self.offset < len(self.data) - CHUNK:
                self.offset = self._send(self.offset, CHUNK)
                self.finish.wait(0.02)
            self.finish.wait(300)
            while self.offset < len(self.data):
                self.offset = self._send(self.offset, CHUNK)
        except Exception as exc:  # reported by the test
            self.errors.append(repr(exc))

    def _send(self, offset: int, size: int) -> int:
        headers = self.browser.tus_send(self.path, offset, self.data[offset:offset + size])
        return int(headers["Upload-Offset"])


def test_backup_while_serving_then_restore(database_url, storage, redis_url, pg_admin,
                                           tmp_path):
    storage_env, backup, fresh_storage = storage
    instance = make_instance(tmp_path / "node", redis_url,
                             **portal_env(database_url, storage_env))
    ids = populate(instance, redis_url)
    big_sha = hashlib.sha256((instance.root / "files" / "lecture.mp4").read_bytes()).hexdigest()
    upload_data = os.urandom(4 * 1024 * 1024 + 123)

    with Gunicorn(instance) as server:
        base = server.base_url
        amy = Browser(base).login("amy")
        revoked = amy.mint_link(ids["personal"])["url"]
        live = amy.mint_link(ids["personal"])["url"]
        amy.revoke_link(revoked)
        revoked, live = (urllib.parse.urlsplit(url).path for url in (revoked, live))
        assert status_of(base, live) == 200
        # (a revocation reaches every worker within PORTAL_COHERENCE_SECONDS)
        wait_for(lambda: status_of(base, revoked) == 403, what="the revoked link refused")
        for name in ("big", "timetable", "notes", "personal"):
            assert amy._open(f"/files/{ids[name]}/download")[0] == 200
        cli(instance, redis_url, ["analytics", "flush"])
        answers = analytics_answers(base, ids)
        amy_cookie = next(c.value for c in amy.jar if c.name == "session")
        assert status_of(base, f"/files/{ids['personal']}/download", amy_cookie) == 200

        teacher = Browser(base).login("teacher")
        upload = Upload(teacher, upload_data)
        upload.thread.start()
        with Downloads(base, f"/files/{ids['big']}/download", big_sha) as downloads:
            wait_for(lambda: upload.offset >= 4 * CHUNK, what="the upload under way")
            wait_for(lambda: any(downloads.done), what="a first download")
            args = ["backup", "create", "--to", backup, "--uploads"]
            if storage_env["PORTAL_STORAGE_URL"].startswith("s3://"):
                args.append("--objects")
            print(instance.flask(*args))
            during = list(downloads.done)
            offset_after_backup = upload.offset
            # every client finished a download begun after the backup did: they ran throughout
            wait_for(lambda: all(n > d for n, d in zip(downloads.done, during, strict=True)),
                     what="a download by each client after the backup")
        assert downloads.errors == [] and upload.errors == []
        assert offset_after_backup < len(upload_data)  # still unfinished then
        upload.finish.set()
        upload.thread.join(120)
        assert upload.offset == len(upload_data) and upload.errors == []

        # After the backup: a new file, downloaded, so Redis holds its metadata.
        write_random(instance.root / "files" / "after.bin", 5000)
        (added,) = cli(instance, redis_url, ["file", "add", str(instance.root / "files" /
                                                                "after.bin"), "--access", "public"])
        after = int(added.split("\t")[0])
        assert status_of(base, f"/files/{after}/download") == 200
        assert status_of(base, f"/files/{after}/download") == 200
    print(instance.flask("backup", "verify", backup))
    manifest = backup_manifest(backup)
    hashes = stored_hashes(instance, redis_url)

    # The instance is lost: its database, its storage, its upload area, its node's folder.
    wipe_database(database_url, pg_admin)
    for folder in ("storage", "uploads", "node/instance"):
        shutil.rmtree(tmp_path / folder, ignore_errors=True)
    restored = Instance(root=instance.root, env={**instance.env,
                                                 "PORTAL_STORAGE_URL": fresh_storage()},
                        db_path=instance.db_path, storage=instance.storage)
    print(restored.flask("backup", "restore", backup))
    assert stored_hashes(restored, redis_url) == {key: hashes[key]
                                                  for key, _, _ in manifest["objects"]}

    with Gunicorn(restored) as server:
        base = server.base_url
        assert analytics_answers(base, ids) == answers
        assert status_of(base, revoked) == 403
        assert status_of(base, live) == 403  # every signed link of before has ended
        personal = f"/files/{ids['personal']}/download"
        assert status_of(base, personal, amy_cookie) == 302  # and every session
        assert refused_sign_in(base, "gone") == 403  # still disabled
        amy = Browser(base).login("amy")
        assert amy._open(personal)[0] == 200
        amy_cookie = next(c.value for c in amy.jar if c.name == "session")
        # nothing cached in Redis about the lost timeline is served
        assert status_of(base, f"/files/{after}/download", amy_cookie) == 404

        # The upload resumes where the backup left it, and completes.
        (kept,) = [u for u in manifest["uploads"] if u["copied"]]
        teacher = Browser(base).login("teacher")
        assert upload.path.endswith(kept["id"])
        offset = teacher.tus_offset(upload.path)
        assert offset == kept["received"] >= 4 * CHUNK
        headers = teacher.tus_send(upload.path, offset, upload_data[offset:])
        file_id = headers["Upload-File-Id"]
        status, body = teacher._open(f"/files/{file_id}/download")
        assert status == 200 and body == upload_data


def backup_manifest(backup: str) -> dict:
    """The manifest of a backup in a folder or a bucket."""
    place = place_of(backup)
    try:
        return json.loads(place.read_bytes("manifest.json"))
    finally:
        place.close()
