"""The S3 backend against a real S3 server (rclone serve s3): storage operations, the whole
download path, and the ``storage check`` / ``storage migrate`` commands."""

from __future__ import annotations

import hashlib
import io
import os
import zlib

import pytest
import s3server
from s3server import free_port_for_dead_endpoint

from portal.extensions import db
from portal.files import add_version
from portal.storage import StorageError, get_storage, storage_from_url
from portal.storage.s3 import S3Storage

s3_server = s3server.s3_server  # the fixtures, used by name
s3_env = s3server.s3_env


@pytest.fixture
def storage(s3_env):
    """An S3Storage on a fresh bucket of the rclone server."""
    backend = S3Storage(s3_env["bucket"], "portal")
    yield backend
    backend.close()


def test_put_dedupe_open_range_delete(storage):
    data = os.urandom(300_000)
    first = storage.put(io.BytesIO(data))
    assert first.created
    assert first.sha256 == first.key == hashlib.sha256(data).hexdigest()
    assert first.crc32 == zlib.crc32(data)
    assert first.size == len(data)
    again = storage.put(io.BytesIO(data))
    assert (again.key, again.created) == (first.key, False)
    assert storage.exists(first.key)
    assert storage.size(first.key) == len(data)
    assert storage.local_path(first.key) is None
    assert b"".join(storage.read_range(first.key, 1000, 200_001)) == data[1000:200_001]
    assert b"".join(storage.read_range(first.key, 5, 5)) == b""
    with storage.open(first.key) as fh:
        assert fh.read(10) == data[:10]
        fh.seek(250_000)
        assert fh.read() == data[250_000:]
        fh.seek(-3, io.SEEK_END)
        assert fh.read() == data[-3:]
    storage.check()
    storage.delete(first.key)
    assert not storage.exists(first.key)
    storage.delete(first.key)  # idempotent
    with pytest.raises(StorageError):
        storage.read_range(first.key, 0, 10)
    with pytest.raises(StorageError):
        storage.size(first.key)


def test_objects_are_content_addressed_under_the_prefix(storage, s3_server):
    stored = storage.put(io.BytesIO(b"hello s3"))
    key = stored.key
    on_disk = s3_server.root / storage.bucket / "portal" / "objects" / key[:2] / key[2:4] / key
    assert on_disk.read_bytes() == b"hello s3"


def test_multipart_upload_of_a_large_file(storage):
    data = os.urandom(17 * 1024 * 1024 + 3)  # above the 16 MiB multipart threshold
    stored = storage.put(io.BytesIO(data))
    assert stored.created and stored.size == len(data)
    tail = b"".join(storage.read_range(stored.key, len(data) - 100_000, len(data)))
    assert tail == data[-100_000:]


def test_invalid_keys_never_reach_s3(storage):
    for bad in ("../etc/passwd", "A" * 64, ""):
        with pytest.raises(StorageError):
            storage.exists(bad)


def test_storage_error_when_the_server_is_down(s3_env, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port_for_dead_endpoint()}")
    dead = S3Storage(s3_env["bucket"], "portal")
    try:
        with pytest.raises(StorageError):
            dead.check()
        with pytest.raises(StorageError):
            dead.put(io.BytesIO(b"x"))
        with pytest.raises(StorageError):
            dead.read_range("a" * 64, 0, 1)
        with pytest.raises(StorageError):
            dead.exists("a" * 64)
    finally:
        dead.close()


def test_registry_builds_s3_from_the_url(s3_env):
    backend = storage_from_url(s3_env["url"])
    try:
        assert isinstance(backend, S3Storage)
        assert (backend.bucket, backend.prefix) == (s3_env["bucket"], "portal")
        backend.check()
    finally:
        backend.close()


# ---------------------------------------------------------------------------
# The download path with PORTAL_STORAGE_URL=s3://...
# ---------------------------------------------------------------------------


@pytest.fixture
def config(config, s3_env):
    """The test app's settings, with its storage in a fresh bucket."""
    config["STORAGE_URL"] = s3_env["url"]
    return config


@pytest.fixture
def app(app):
    """The test app; its S3 connection pool is closed afterwards."""
    yield app
    app.extensions["portal_storage"].close()


def add_public(app, data: bytes, name: str = "notes.pdf", title: str = "Notes") -> int:
    """Store a public file through the normal path; returns its id."""
    with app.app_context():
        version = add_version(db.session, get_storage(), io.BytesIO(data), filename=name,
                              title=title, access="public")
        db.session.commit()
        return version.file_id


def test_download_from_s3_full_range_multirange_if_range(app, client):
    data = os.urandom(700_000)
    file_id = add_public(app, data)
    url = f"/files/{file_id}/download"

    full = client.get(url)
    assert full.status_code == 200 and full.data == data
    etag = full.headers["ETag"]
    assert etag == f'"{hashlib.sha256(data).hexdigest()}"'
    assert full.headers["Accept-Ranges"] == "bytes"

    part = client.get(url, headers={"Range": "bytes=100-299999"})
    assert part.status_code == 206 and part.data == data[100:300000]
    assert part.headers["Content-Range"] == f"bytes 100-299999/{len(data)}"

    multi = client.get(url, headers={"Range": "bytes=0-9,600000-600009"})
    assert multi.status_code == 206
    assert multi.mimetype == "multipart/byteranges"
    assert data[:10] in multi.data and data[600000:600010] in multi.data

    same = client.get(url, headers={"Range": "bytes=500000-", "If-Range": etag})
    assert same.status_code == 206 and same.data == data[500000:]
    changed = client.get(url, headers={"Range": "bytes=500000-", "If-Range": '"other"'})
    assert changed.status_code == 200 and changed.data == data

    head = client.head(url)
    assert head.status_code == 200 and head.headers["Content-Length"] == str(len(data))
    for resp in (full, part, multi, same, changed, head):
        resp.close()


def test_missing_object_answers_503(app, client):
    data = b"will vanish" * 1000
    file_id = add_public(app, data)
    with app.app_context():
        get_storage().delete(hashlib.sha256(data).hexdigest())
    resp = client.get(f"/files/{file_id}/download")
    assert resp.status_code == 503
    resp.close()


# ---------------------------------------------------------------------------
# flask storage check / migrate
# ---------------------------------------------------------------------------


def test_storage_check_command(app, runner, monkeypatch):
    result = runner.invoke(args=["storage", "check"])
    assert result.exit_code == 0 and result.output.strip() == "ok"
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port_for_dead_endpoint()}")
    dead = storage_from_url(app.config["STORAGE_URL"])
    app.extensions["portal_storage"], live = dead, app.extensions["portal_storage"]
    try:
        result = runner.invoke(args=["storage", "check"])
        assert result.exit_code == 1
        assert "storage:" in result.output and "not usable" in result.output
    finally:
        app.extensions["portal_storage"] = live
        dead.close()


@pytest.mark.parametrize("verify", [False, True])
def test_storage_migrate_local_to_s3(tmp_path, database_url, redis_url, s3_env, verify):
    from portal import create_app

    local_app = create_app({
        "TESTING": True, "INSTANCE_PATH": str(tmp_path / "inst"), "SECRET_KEY": "t",
        "DATABASE_URL": database_url, "REDIS_URL": redis_url,
        "STORAGE_URL": (tmp_path / "local").as_uri(), "RATELIMIT_STORAGE_URI": redis_url})
    blobs = [os.urandom(200_000), os.urandom(3_000_000), b"small"]
    with local_app.app_context():
        db.create_all()
        for i, blob in enumerate(blobs):
            add_version(db.session, get_storage(), io.BytesIO(blob), filename=f"f{i}.bin",
                        title=f"F{i}", access="login")
        # a second version with the same bytes as the first: stored (and copied) once
        add_version(db.session, get_storage(), io.BytesIO(blobs[0]), filename="f0.bin",
                    title="F0", access="login")
        db.session.commit()
    runner = local_app.test_cli_runner()
    args = ["storage", "migrate", "--to", s3_env["url"]] + (["--verify"] if verify else [])
    try:
        first = runner.invoke(args=args)
        assert first.exit_code == 0, first.output
        checked = 3 if verify else 0
        assert f"copied 3, already present 0, verified {checked}, failed 0" in first.output
        again = runner.invoke(args=args)
        assert again.exit_code == 0, again.output
        assert f"copied 0, already present 3, verified {checked}, failed 0" in again.output

        target = storage_from_url(s3_env["url"])
        try:
            for blob in blobs:
                key = hashlib.sha256(blob).hexdigest()
                assert b"".join(target.read_range(key, 0, len(blob))) == blob
        finally:
            target.close()
    finally:
        with local_app.app_context():
            db.session.remove()
            db.engine.dispose()


def test_storage_migrate_refuses_corrupt_source(tmp_path, database_url, redis_url, s3_env):
    from portal import create_app

    local_app = create_app({
        "TESTING": True, "INSTANCE_PATH": str(tmp_path / "inst"), "SECRET_KEY": "t",
        "DATABASE_URL": database_url, "REDIS_URL": redis_url,
        "STORAGE_URL": (tmp_path / "local").as_uri(), "RATELIMIT_STORAGE_URI": redis_url})
    blob = os.urandom(50_000)
    key = hashlib.sha256(blob).hexdigest()
    try:
        with local_app.app_context():
            db.create_all()
            add_version(db.session, get_storage(), io.BytesIO(blob), filename="a.bin",
                        title="A", access="login")
            db.session.commit()
            path = get_storage().local_path(key)
        with open(path, "r+b") as fh:  # bit rot on the source
            fh.write(b"\0\0\0\0")
        result = local_app.test_cli_runner().invoke(
            args=["storage", "migrate", "--to", s3_env["url"]])
        assert result.exit_code == 1
        assert "failed 1" in result.output and f"failed {key}" in result.output
        target = storage_from_url(s3_env["url"])
        try:
            assert not target.exists(key)
        finally:
            target.close()
    finally:
        with local_app.app_context():
            db.session.remove()
            db.engine.dispose()
