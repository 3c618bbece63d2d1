"""Worker-local copies of the download metadata and user keys (cache.LocalCopies): a warm
download reads nothing from Redis, and every invalidation -- from this process or from
another app on the same Redis (another worker or node) -- reaches the copies through
pub/sub. Real Redis, real listener threads; two apps in one process stand for two workers."""

from __future__ import annotations

import time

import pytest
import redis

from portal import cache
from portal.extensions import db
from portal.models import File, User
from tests.helpers import add_file, csrf_from, free_port, wait_for


@pytest.fixture
def config(config):
    config["CACHE_LOCAL_SECONDS"] = 30  # off by default under TESTING
    return config


@pytest.fixture
def other(make_app):
    """A second app on the same database and Redis: another worker, or another node."""
    return make_app()


@pytest.fixture
def r(redis_url):
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def mgets(r) -> int:
    return int(r.info("commandstats").get("cmdstat_mget", {}).get("calls", 0))


def warm(app, client, url: str) -> cache.LocalCopies:
    copies = app.extensions["portal_local_copies"]
    client.get(url)  # starts the listener
    wait_for(lambda: copies.ready)
    assert client.get(url).status_code == 200  # stores the copies
    return copies


def test_warm_download_reads_nothing_from_redis(app, client, make_user, login, r):
    make_user("amy")
    data = b"lecture notes " * 1000
    url = f"/files/{add_file(app, data)}/download"
    login("amy")
    warm(app, client, url)
    before = mgets(r)
    for _ in range(5):
        resp = client.get(url, headers={"Range": "bytes=0-9"})
        assert resp.status_code == 206 and resp.get_data() == data[:10]
    assert mgets(r) == before
    assert app.extensions["portal_local_copies"].hits >= 5


def test_change_in_another_app_reaches_the_copies(app, other, client, make_user, login):
    user_id = make_user("ben")
    file_id = add_file(app, b"x" * 100)
    url = f"/files/{file_id}/download"
    login("ben")
    copies = warm(app, client, url)
    meta = cache.meta_key(file_id, namespace(app))
    assert meta in copies._values
    with other.app_context():  # an admin on another node makes the file personal to amy
        db.session.get(File, file_id).access = "user:amy"
        db.session.commit()
    wait_for(lambda: meta not in copies._values)
    assert client.get(url).status_code == 404
    with other.app_context():  # ... and gives it back, then disables ben
        db.session.get(File, file_id).access = "login"
        db.session.commit()
    wait_for(lambda: meta not in copies._values)
    assert client.get(url).status_code == 200
    assert client.get(url).status_code == 200  # copies stored again
    with other.app_context():
        db.session.get(User, user_id).active = False
        db.session.commit()
    wait_for(lambda: cache.user_keys(user_id, namespace(app))[0] not in copies._values)
    assert client.get(url).status_code == 302  # signed out: to the login page


def test_change_in_this_app_is_seen_at_once(app, client, make_user, login):
    make_user("cat")
    file_id = add_file(app, b"y" * 100)
    url = f"/files/{file_id}/download"
    login("cat")
    warm(app, client, url)
    with app.app_context():
        db.session.get(File, file_id).access = "user:nobody"
        db.session.commit()
    assert client.get(url).status_code == 404  # no waiting for the listener


def test_a_read_that_raced_an_invalidation_is_not_kept(app):
    copies = app.extensions["portal_local_copies"]
    with app.test_request_context():
        copies.get_many(["k"])
    wait_for(lambda: copies.ready)
    epoch = copies.epoch  # a reader starts its round trip here ...
    copies.drop(["k"])  # ... an invalidation arrives before its answer
    copies.put_many(["k"], [b"old"], epoch)
    assert copies.get_many(["k"]) is None
    copies.put_many(["k"], [b"new"], copies.epoch)
    assert copies.get_many(["k"]) == [b"new"]


def test_lost_subscription_clears_the_copies_and_resubscribes(app, client, make_user, login,
                                                              r):
    make_user("dan")
    url = f"/files/{add_file(app, b'z' * 100)}/download"
    login("dan")
    copies = warm(app, client, url)
    assert copies._values
    epoch = copies.epoch
    r.client_kill_filter(_type="pubsub")  # Redis drops the listener's connection
    wait_for(lambda: copies.epoch != epoch)
    assert not copies._values  # a message may have been missed: nothing is trusted
    wait_for(lambda: copies.ready)  # subscribed again
    assert client.get(url).status_code == 200


def namespace(app) -> str:
    """The app's key prefix (its database's identity), once it has confirmed it."""
    co = app.extensions["portal_coherence"]
    assert co.current()
    return co.prefix


def warm_link(app, client, make_user, login, name: str):
    """A user's signed link, used by a download manager until this worker holds copies of
    what it needs: (url, csrf, manager client, copies, the link's nonce)."""
    from portal.download import links

    make_user(name)
    file_id = add_file(app, b"w" * 500)
    csrf = login(name)
    url = client.post(f"/api/files/{file_id}/links", headers={"X-CSRFToken": csrf}).json["url"]
    manager = app.test_client()
    path = "/" + url.split("/", 3)[3]
    copies = warm(app, manager, path)
    claims = links.verify_signature(app.config["SECRET_KEY"], 3600, path.split("/")[2])
    return url, csrf, manager, copies, claims.nonce


def test_revoked_link_is_refused_at_once(app, client, make_user, login):
    url, csrf, manager, _, _ = warm_link(app, client, make_user, login, "eve")
    resp = client.post("/api/links/revoke", json={"url": url}, headers={"X-CSRFToken": csrf})
    assert resp.status_code == 200 and resp.json == {"revoked": True}
    assert manager.get("/" + url.split("/", 3)[3]).status_code == 403  # this process: at once


def test_revocation_elsewhere_reaches_the_copies(app, other, client, make_user, login):
    from portal.download import links

    url, _, manager, _, _ = warm_link(app, client, make_user, login, "fay")
    path = "/" + url.split("/", 3)[3]
    with other.app_context():  # another node revokes the link
        claims = links.verify(other.config["SECRET_KEY"], 3600, path.split("/")[2])
        links.revoke(db.session, claims, 3600)
        db.session.commit()
    revoked_at = time.monotonic()
    wait_for(lambda: manager.get(path).status_code == 403, what="the revocation", interval=0.01)
    # this worker learnt it from the database's change log, within its confirmation interval
    assert time.monotonic() - revoked_at <= app.config["COHERENCE_SECONDS"] + 0.5


def test_redis_down_downloads_still_work(make_app):
    """No Redis: the listener never subscribes, so no copy is used, and every lookup goes
    to the database (and the sign-in limits to memory)."""
    dead = f"redis://127.0.0.1:{free_port()}/0"  # a port nothing listens on
    app = make_app(REDIS_URL=dead, RATELIMIT_STORAGE_URI="memory://")
    from portal.models import User

    with app.app_context():
        user = User(username="gil", display_name="gil", role="student")
        user.set_password("password123")
        db.session.add(user)
        db.session.commit()
    data = b"d" * 2000
    url = f"/files/{add_file(app, data)}/download"
    client = app.test_client()
    token = csrf_from(client.get("/login").get_data(as_text=True))
    assert client.post("/login", data={"username": "gil", "password": "password123",
                                       "csrf_token": token}).status_code == 302
    for _ in range(3):
        resp = client.get(url, headers={"Range": "bytes=10-19"})
        assert (resp.status_code, resp.get_data()) == (206, data[10:20])
    assert app.extensions["portal_local_copies"].ready is False
