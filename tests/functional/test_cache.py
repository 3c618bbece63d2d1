"""The hot-file cache and the metadata cache in Redis, with a real S3 origin (rclone):
admission, single-flight fill, chunked range reads, eviction, /metrics, SQL saved per
request, invalidation, and downloads that keep working with Redis down or flushed."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time

import pytest
import redis
import s3server
from sqlalchemy import event

from portal import cache
from portal.extensions import db
from portal.files import add_version
from portal.models import File
from portal.storage import get_storage

s3_server = s3server.s3_server  # the fixtures, used by name
s3_env = s3server.s3_env


@pytest.fixture
def config(config, s3_env):
    """A remote origin (S3), admission after 2 requests, a small budget."""
    config.update(STORAGE_URL=s3_env["url"], CACHE_HOT_MIN_HITS=2,
                  CACHE_HOT_BUDGET_BYTES=3 * 1024 * 1024)
    return config


@pytest.fixture
def r(redis_url):
    """A direct Redis client for inspecting and flushing."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def add_file(app, data: bytes, *, title: str = "Hot", access: str = "public") -> int:
    with app.app_context():
        version = add_version(db.session, get_storage(), io.BytesIO(data), filename="hot.bin",
                              title=title, access=access)
        db.session.commit()
        return version.file_id


def get(client, url, **headers):
    resp = client.get(url, headers=headers)
    try:
        return resp.status_code, resp.data
    finally:
        resp.close()


def stats(app) -> dict:
    with app.app_context():
        return cache.stats()


def test_popular_file_is_cached_and_served_from_chunks(app, client, r):
    data = os.urandom(1_000_000)  # 4 chunks of 256 KiB, the last one partial
    sha = hashlib.sha256(data).hexdigest()
    url = f"/files/{add_file(app, data)}/download"

    assert get(client, url) == (200, data)  # first request: a miss, not admitted yet
    assert not r.exists(f"portal:hot:{sha}:ready")
    assert get(client, url) == (200, data)  # second: admitted, filled once, served
    assert r.exists(f"portal:hot:{sha}:ready")
    assert r.exists(f"portal:hot:{sha}:c:3") and not r.exists(f"portal:hot:{sha}:c:4")
    assert stats(app)["fills"] == 1

    # Ranges inside one chunk, across chunks, at the end, and several at once.
    assert get(client, url, Range="bytes=10-19") == (206, data[10:20])
    assert get(client, url, Range="bytes=262000-530000") == (206, data[262000:530001])
    assert get(client, url, Range="bytes=-5") == (206, data[-5:])
    status, body = get(client, url, Range="bytes=0-0,999999-999999")
    assert status == 206 and data[:1] in body and data[-1:] in body
    s = stats(app)
    assert s["hits"] == 4 and s["misses"] == 2 and s["fills"] == 1
    assert s["hit_bytes"] == 10 + 268001 + 5 + 2


def test_large_files_are_not_admitted(app, client, r):
    app.config["CACHE_HOT_MAX_FILE_BYTES"] = 100_000
    data = os.urandom(200_000)
    url = f"/files/{add_file(app, data)}/download"
    for _ in range(3):
        assert get(client, url) == (200, data)
    assert stats(app)["fills"] == 0 and stats(app)["misses"] == 3


def test_budget_evicts_least_recently_used(app, client, r):
    blobs = [os.urandom(1_200_000) for _ in range(3)]  # budget 3 MiB: two fit, not three
    urls = [f"/files/{add_file(app, b, title=f'T{i}')}/download" for i, b in enumerate(blobs)]
    for url, blob in zip(urls, blobs, strict=True):
        for _ in range(2):
            assert get(client, url) == (200, blob)
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]
    assert not r.exists(f"portal:hot:{shas[0]}:ready")  # the oldest went
    assert not r.exists(f"portal:hot:{shas[0]}:c:0")
    assert r.exists(f"portal:hot:{shas[1]}:ready") and r.exists(f"portal:hot:{shas[2]}:ready")
    assert stats(app)["evictions"] == 1
    assert sum(int(v) for v in r.hvals(cache.HOT_SIZES_KEY)) <= 3 * 1024 * 1024


def test_single_flight_fill_reads_the_origin_once(app, r):
    data = os.urandom(600_000)
    file_id = add_file(app, data)
    sha = hashlib.sha256(data).hexdigest()
    with app.app_context():
        storage = get_storage()
        reads = []
        gate = threading.Event()

        def slow_origin(start, stop):
            reads.append((start, stop))
            gate.wait(5)
            return storage.read_range(sha, start, stop)

        results = []

        def fill():
            with app.app_context():
                results.append(cache.hot_fill(sha, len(data), slow_origin, 1 << 30))

        first = threading.Thread(target=fill)
        first.start()
        for _ in range(500):
            if r.exists(f"portal:hot:{sha}:fill"):
                break
            time.sleep(0.01)
        assert cache.hot_fill(sha, len(data), slow_origin, 1 << 30) is False  # lock taken
        gate.set()
        first.join(10)
        assert results == [True] and reads == [(0, len(data))]
        assert not r.exists(f"portal:hot:{sha}:fill")  # released
    assert file_id


def test_origin_with_wrong_bytes_is_not_cached(app, r):
    with app.app_context():
        sha = "0" * 64
        assert cache.hot_fill(sha, 5, lambda a, b: iter([b"hello"]), 1 << 30) is False
        assert not r.exists(f"portal:hot:{sha}:ready") and not r.exists(f"portal:hot:{sha}:c:0")


def test_flushall_mid_download_finishes_from_the_origin(app, client, r):
    data = os.urandom(2_000_000)  # 8 chunks: read 4 per round trip
    url = f"/files/{add_file(app, data)}/download"
    get(client, url)
    get(client, url)
    resp = client.get(url)
    try:
        chunks = iter(resp.response)
        first = next(chunks)
        r.flushall()
        body = first + b"".join(chunks)
    finally:
        resp.close()
    assert body == data
    assert stats(app)["fallbacks"] == 1
    assert get(client, url) == (200, data)  # and afterwards, from the origin again
    assert get(client, url, Range="bytes=5-9") == (206, data[5:10])


def test_redis_down_downloads_still_work(app, client):
    data = os.urandom(400_000)
    url = f"/files/{add_file(app, data)}/download"
    dead = f"redis://127.0.0.1:{s3server.free_port_for_dead_endpoint()}/0"
    with app.app_context():
        app.extensions["portal_redis"], live = cache.make_client(dead), cache.client()
    try:
        for _ in range(3):
            assert get(client, url) == (200, data)
        assert get(client, url, Range="bytes=100-199") == (206, data[100:200])
        status, _ = get(client, "/metrics")
        assert status == 200
    finally:
        app.extensions["portal_redis"].close()
        app.extensions["portal_redis"] = live


def test_local_origin_keeps_sendfile_and_skips_redis(app, client, r, tmp_path):
    from portal.storage.local import LocalStorage

    local = LocalStorage(tmp_path / "local")
    s3 = app.extensions["portal_storage"]
    app.extensions["portal_storage"] = local
    try:
        data = os.urandom(100_000)
        url = f"/files/{add_file(app, data)}/download"
        for _ in range(3):
            assert get(client, url) == (200, data)
        assert stats(app)["hits"] == stats(app)["misses"] == 0
        assert not r.keys("portal:hot:*")
        app.config["CACHE_HOT_LOCAL"] = True  # opt-in: the cache then serves local files too
        for _ in range(3):
            assert get(client, url) == (200, data)
        assert stats(app)["fills"] == 1
    finally:
        app.extensions["portal_storage"] = s3


def test_metrics_endpoint_exposes_cache_counters(app, client):
    data = os.urandom(10_000)
    url = f"/files/{add_file(app, data)}/download"
    for _ in range(3):
        get(client, url)
    resp = client.get("/metrics")
    text = resp.get_data(as_text=True)
    resp.close()
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    assert "portal_redis_up 1.0" in text
    assert "portal_cache_hits_total 1.0" in text
    assert "portal_cache_misses_total 2.0" in text
    assert "portal_cache_fills_total 1.0" in text


# ---------------------------------------------------------------------------
# Metadata cache: no SQL for the file and version lookup; invalidated on every change
# ---------------------------------------------------------------------------


@pytest.fixture
def statements(app):
    """Every SQL statement the app's engine runs, in order."""
    seen: list[str] = []

    def record(conn, cursor, statement, params, context, executemany):
        seen.append(statement)

    with app.app_context():
        engine = db.engine
    event.listen(engine, "before_cursor_execute", record)
    yield seen
    event.remove(engine, "before_cursor_execute", record)


def lookups(statements: list[str]) -> list[str]:
    """The SELECTs of the file and version lookup (not the download event INSERT)."""
    return [s for s in statements if s.lstrip().upper().startswith("SELECT")
            and ("files" in s or "file_versions" in s)]


def test_cached_range_request_runs_no_sql_lookup(app, client, statements):
    data = os.urandom(50_000)
    url = f"/files/{add_file(app, data)}/download"
    get(client, url, Range="bytes=0-1023")
    assert lookups(statements)  # first time: from the database
    statements.clear()
    for start in range(0, 10_240, 1024):
        assert get(client, url, Range=f"bytes={start}-{start + 1023}") == (
            206, data[start:start + 1024])
    assert lookups(statements) == []
    # what remains per request: the download event (an INSERT, written when the body closes)
    assert all(s.lstrip().upper().startswith("INSERT") for s in statements)
    assert stats(app)["meta_hits"] >= 10


def test_new_version_is_seen_at_once(app, client):
    url = f"/files/{add_file(app, b'version one' * 100, title='Doc')}/download"
    assert get(client, url) == (200, b"version one" * 100)
    add_file(app, b"version two" * 100, title="Doc")
    assert get(client, url) == (200, b"version two" * 100)


def test_access_change_and_delete_invalidate(app, client, make_user):
    file_id = add_file(app, b"public for now", title="Memo")
    url = f"/files/{file_id}/download"
    assert get(client, url)[0] == 200
    with app.app_context():  # an admin edit elsewhere in the code: a plain ORM change
        db.session.get(File, file_id).access = "login"
        db.session.commit()
    status, _ = get(client, url)
    assert status == 302  # anonymous: to the login page now
    with app.app_context():
        db.session.get(File, file_id).access = "public"
        db.session.commit()
    assert get(client, url)[0] == 200
    with app.app_context():
        from portal.models import utcnow

        db.session.get(File, file_id).deleted_at = utcnow()
        db.session.commit()
    assert get(client, url)[0] in (302, 404)


def test_rolled_back_change_keeps_the_cache(app, client, r):
    file_id = add_file(app, b"stable", title="Stable")
    url = f"/files/{file_id}/download"
    get(client, url)
    with app.app_context():
        key = cache.meta_key(file_id)
    assert r.exists(key)
    with app.app_context():
        db.session.get(File, file_id).access = "login"
        db.session.flush()
        db.session.rollback()
    assert r.exists(key)
    assert get(client, url) == (200, b"stable")


# ---------------------------------------------------------------------------
# User cache: a signed-in download runs no SQL at all; every change is seen at once
# ---------------------------------------------------------------------------


def selects(statements: list[str]) -> list[str]:
    """The SELECTs run, less the worker's confirmation of the database's change log
    (coherence.py: one one-row query at most every COHERENCE_SECONDS, whatever the traffic)."""
    return [s for s in statements if s.lstrip().upper().startswith("SELECT")
            and "FROM portal_state" not in s]


def test_signed_in_download_runs_no_sql(app, client, make_user, login, statements, r):
    make_user("carol", groups=["CS"])
    data = b"members only" * 100
    url = f"/files/{add_file(app, data, access='group:CS')}/download"
    login("carol")
    assert get(client, url) == (200, data)  # fills the user and the metadata cache
    statements.clear()
    for _ in range(3):
        assert get(client, url) == (200, data)
        assert get(client, url, Range="bytes=0-9") == (206, data[:10])
    assert selects(statements) == []
    assert r.keys("portal:*:user:*:auth")  # no password hash in it
    assert all(b"password" not in r.get(key) for key in r.keys("portal:*:user:*:auth"))


def test_group_changes_are_seen_at_once(app, client, make_user, login):
    from portal.models import Group, User

    user_id = make_user("dave", groups=["CS"])
    url = f"/files/{add_file(app, b'cs notes', access='group:CS')}/download"
    login("dave")
    assert get(client, url)[0] == 200
    with app.app_context():  # from the group's side: the user row is not touched
        group = db.session.query(Group).filter_by(name="CS").one()
        group.members.clear()
        db.session.commit()
    assert get(client, url)[0] != 200
    with app.app_context():  # from the user's side
        user = db.session.get(User, user_id)
        user.groups.append(db.session.query(Group).filter_by(name="CS").one())
        db.session.commit()
    assert get(client, url)[0] == 200
    with app.app_context():  # a rename changes what the rule names
        group = db.session.query(Group).filter_by(name="CS").one()
        group.name = "CS-old"
        db.session.commit()
    assert get(client, url)[0] != 200


def test_snapshot_loaded_before_a_change_is_never_used(app, make_user):
    """A reader that loaded the user before an admin's commit and stores the snapshot after
    it must not bring the old row back (the version read first no longer matches)."""
    from portal.models import User

    user_id = make_user("erin")
    with app.test_request_context():
        def stale_load():
            with app.app_context():  # the admin disables erin meanwhile
                db.session.get(User, user_id).active = False
                db.session.commit()
            return {"id": user_id, "active": True}

        assert cache.user_snapshot(user_id, stale_load)["active"] is True
        fresh = cache.user_snapshot(user_id, lambda: {"id": user_id, "active": False})
        assert fresh["active"] is False


def test_redis_down_signed_in_downloads_still_work(app, client, make_user, login):
    from portal.models import User

    user_id = make_user("frank")
    data = os.urandom(20_000)
    url = f"/files/{add_file(app, data, access='login')}/download"
    login("frank")
    assert get(client, url) == (200, data)
    dead = f"redis://127.0.0.1:{s3server.free_port_for_dead_endpoint()}/0"
    with app.app_context():
        app.extensions["portal_redis"], live = cache.make_client(dead), cache.client()
    try:
        assert get(client, url) == (200, data)
        with app.app_context():
            db.session.get(User, user_id).active = False
            db.session.commit()
        assert get(client, url)[0] == 302  # disabled: the database says so, Redis or not
    finally:
        app.extensions["portal_redis"].close()
        app.extensions["portal_redis"] = live


def test_signed_link_and_older_version_downloads_run_no_sql(app, client, make_user, login,
                                                           statements):
    """A download manager's many ranged requests on a signed link, and ?version=N, are
    answered from the metadata cache: the deny-list, the user, the access rule and the
    version in one Redis round trip, no SQL."""
    make_user("gina", groups=["CS"])
    one, two = b"first version " * 300, b"second version " * 300
    file_id = add_file(app, one, title="Slides", access="group:CS")
    add_file(app, two, title="Slides", access="group:CS")
    csrf = login("gina")
    link = client.post(f"/api/files/{file_id}/links", json={"version": 1},
                       headers={"X-CSRFToken": csrf}).json["url"]
    path = "/" + link.split("/", 3)[3]
    manager = app.test_client()  # a download manager: no cookie
    assert get(manager, path) == (200, one)  # fills the caches
    assert get(client, f"/files/{file_id}/download?version=1") == (200, one)
    statements.clear()
    for start in range(0, 1600, 400):
        assert get(manager, path, Range=f"bytes={start}-{start + 399}") == (
            206, one[start:start + 400])
    assert selects(statements) == []
    assert get(client, f"/files/{file_id}/download?version=1", Range="bytes=0-9") == (
        206, one[:10])
    assert get(client, f"/files/{file_id}/download?version=2") == (200, two)
    assert get(client, f"/files/{file_id}/download?version=2") == (200, two)
    assert get(client, f"/files/{file_id}/download?version=3")[0] == 404
    # version 2 is the current one, in the file's cached entry; only the missing version 3
    # looked in the database
    assert len([s for s in selects(statements) if "file_versions" in s]) == 1


# ---------------------------------------------------------------------------
# The worker's own memory in front of Redis (cache.HotMemory)
# ---------------------------------------------------------------------------


@pytest.fixture
def memory_app(make_app):
    """The app with a 1 MiB in-worker tier (off by default under TESTING)."""
    return make_app(CACHE_HOT_MEMORY_BYTES=1_000_000, CACHE_HOT_MEMORY_MAX_FILE_BYTES=600_000)


def redis_calls(r) -> int:
    return sum(int(v["calls"]) for k, v in r.info("commandstats").items()
               if k in ("cmdstat_mget", "cmdstat_eval", "cmdstat_evalsha", "cmdstat_get"))


def test_hot_content_is_served_from_worker_memory(memory_app, r):
    from portal.analytics.recorder import recorder

    app, client = memory_app, memory_app.test_client()
    data = os.urandom(300_000)
    url = f"/files/{add_file(app, data)}/download"
    assert get(client, url) == (200, data)  # a miss, not admitted
    assert get(client, url) == (200, data)  # admitted: Redis filled, and the memory from it
    memory = app.extensions["portal_hot_memory"]
    assert memory.held_bytes() == len(data)
    before = redis_calls(r)
    for start in (0, 1000, 299_990):
        assert get(client, url, Range=f"bytes={start}-{start + 9}") == (
            206, data[start:start + 10])
    assert get(client, url) == (200, data)
    # only the metadata prefetch went to Redis (one MGET each), never the bytes
    assert redis_calls(r) - before == 4
    memory.report()
    s = stats(app)
    assert (s["memory_hits"], s["hits"], s["misses"]) == (4, 4, 2)  # the 2nd filled the cache
    recorder(app).flush()
    with app.app_context():
        from portal.models import DownloadEvent

        served = [e.served_from for e in db.session.query(DownloadEvent).order_by(
            DownloadEvent.id)]
    assert served == ["origin"] + ["cache"] * 5
    r.flushdb()  # Redis loses everything: the copy is still right (contents never change)
    assert get(client, url, Range="bytes=5-9") == (206, data[5:10])


def test_worker_memory_keeps_to_its_budget(memory_app):
    app, client = memory_app, memory_app.test_client()
    blobs = [os.urandom(400_000) for _ in range(3)]  # 1 MB budget: two fit, not three
    for i, blob in enumerate(blobs):
        url = f"/files/{add_file(app, blob, title=f'M{i}')}/download"
        for _ in range(3):
            assert get(client, url) == (200, blob)
    memory = app.extensions["portal_hot_memory"]
    shas = [hashlib.sha256(b).hexdigest() for b in blobs]
    assert memory.get(shas[0]) is None and memory.get(shas[1]) == blobs[1]
    assert memory.held_bytes() == 800_000
    big = os.urandom(700_000)  # over CACHE_HOT_MEMORY_MAX_FILE_BYTES: Redis only
    url = f"/files/{add_file(app, big, title='Big')}/download"
    for _ in range(3):
        assert get(client, url) == (200, big)
    assert memory.get(hashlib.sha256(big).hexdigest()) is None


def test_a_missing_id_costs_what_a_forbidden_one_costs(app, client, make_user, login, statements,
                                                       r):
    """A file that does not exist is cached like one that may not be read (an entry saying
    so), so that neither its answer nor its cost tells which ids exist; creating the file
    makes that entry stale at once."""
    make_user("erin")
    forbidden = add_file(app, b"someone's transcript", title="T", access="user:someone")
    login("erin")
    missing = forbidden + 1
    for file_id in (forbidden, missing):
        assert get(client, f"/files/{file_id}/download")[0] == 404
    statements.clear()
    for _ in range(3):
        for file_id in (forbidden, missing):
            assert get(client, f"/files/{file_id}/download")[0] == 404
    assert lookups(statements) == []  # both answered from the cache, the same way
    with app.app_context():
        assert r.exists(cache.meta_key(missing)) and r.exists(cache.meta_key(forbidden))
    created = add_file(app, b"new timetable", title="New")  # takes the missing id
    assert created == missing
    assert get(client, f"/files/{missing}/download") == (200, b"new timetable")
