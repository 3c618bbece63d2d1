"""Sign-in throttling (portal/auth/throttle.py) with the Flask test client, one client per
address (``REMOTE_ADDR``): a stranger's failures lock only their own address out of an
account, the per-account ceiling delays and never refuses, Redis down or frozen is no 500.
The same through the real nginx and gunicorn: test_proxy_throttle.py."""

from __future__ import annotations

import time

import pytest
import redis
from flask import request
from flask_login.utils import _create_identifier
from servers import PrivateRedis
from sqlalchemy import select
from werkzeug.middleware.proxy_fix import ProxyFix

from portal.auth import throttle
from portal.download.fast import FastDownloads
from portal.extensions import db
from portal.models import AuditEntry, User
from tests.helpers import csrf_from, free_port

PASSWORD = "password123"


def add_user(app, name: str) -> None:
    with app.app_context():
        user = User(username=name, display_name=name)
        user.set_password(PASSWORD)
        db.session.add(user)
        db.session.commit()


def visitor(app, address: str):
    """A browser of its own at this client address."""
    client = app.test_client()
    client.environ_base["REMOTE_ADDR"] = address
    return client


def sign_in(client, username: str, password: str, headers: dict | None = None):
    """GET the form for its CSRF token, POST it; (response, seconds the POST took)."""
    token = csrf_from(client.get("/login").get_data(as_text=True))
    started = time.monotonic()
    resp = client.post("/login", data={"username": username, "password": password,
                                       "csrf_token": token}, headers=headers or {})
    return resp, time.monotonic() - started


def status(client, username: str, password: str) -> int:
    return sign_in(client, username, password)[0].status_code


def test_a_strangers_failures_lock_only_their_address_for_that_account(make_app):
    app = make_app(LOGIN_LIMIT_ACCOUNT="3 per minute")
    add_user(app, "alice")
    add_user(app, "bob")
    attacker, owner = visitor(app, "198.51.100.7"), visitor(app, "203.0.113.20")
    assert [status(attacker, "alice", f"guess-{i}") for i in range(3)] == [200] * 3
    refused, _ = sign_in(attacker, "alice", PASSWORD)  # even the right password
    assert refused.status_code == 429
    assert 0 < int(refused.headers["Retry-After"]) <= 60
    assert "alice" not in refused.get_data(as_text=True)
    # The owner, from their own address, is not locked out; the attacker's address still is
    # for alice, and only for alice.
    assert status(owner, "alice", PASSWORD) == 302
    assert status(attacker, "alice", "guess-x") == 429
    assert status(attacker, "bob", "guess-y") == 200
    with app.app_context():
        seen = [(e.action, e.client_ip) for e in db.session.scalars(
            select(AuditEntry).order_by(AuditEntry.id))]
    # refused attempts check no password and write nothing
    assert seen == [("login.failure", "198.51.100.7")] * 3 + [
        ("login.success", "203.0.113.20"), ("login.failure", "198.51.100.7")]


def test_a_success_clears_its_counter_and_gives_its_counts_back(make_app):
    app = make_app(LOGIN_LIMIT_ACCOUNT="3 per minute", LOGIN_LIMIT_IP="4 per minute")
    add_user(app, "alice")
    owner = visitor(app, "203.0.113.21")
    assert [status(owner, "alice", "typo-1"), status(owner, "alice", "typo-2")] == [200, 200]
    assert status(owner, "alice", PASSWORD) == 302
    owner.post("/logout", data={"csrf_token": csrf_from(owner.get("/").get_data(as_text=True))})
    # The (alice, address) counter starts afresh (else typo-4 would be its 3rd failure and
    # refused), and the success did not use up the address's allowance (else the 4 per minute
    # would refuse typo-4): both pass, and only the address's 4th failure is refused.
    assert [status(owner, "alice", f"typo-{i}") for i in range(3, 5)] == [200, 200]
    refused, _ = sign_in(owner, "alice", "typo-5")
    assert refused.status_code == 429
    for _ in range(5):  # successes never count towards the limits
        assert status(visitor(app, "203.0.113.22"), "alice", PASSWORD) == 302


def test_the_ceiling_delays_and_never_refuses(make_app, monkeypatch):
    app = make_app(LOGIN_LIMIT_ACCOUNT="2 per minute", LOGIN_LIMIT_ACCOUNT_CEILING="4 per minute")
    add_user(app, "alice")
    add_user(app, "bob")
    waits = []  # the delay of every attempt that got past the limits (wall time varies by load)
    real_pause = throttle.pause
    monkeypatch.setattr(throttle, "pause",
                        lambda verdict: waits.append(verdict.delay) or real_pause(verdict))
    for address in ("198.51.100.1", "198.51.100.2"):  # a guesser spread over two addresses
        client = visitor(app, address)
        for i in range(2):
            assert status(client, "alice", f"guess-{i}") == 200
    assert waits == [0.0] * 4  # below the ceiling nobody waits
    # Past the ceiling: an address at its own limit is still refused, and at once ...
    assert status(visitor(app, "198.51.100.1"), "alice", "guess-3") == 429
    assert len(waits) == 4
    # ... a fresh address is delayed, not refused: a wrong password is checked after the wait,
    resp, seconds = sign_in(visitor(app, "198.51.100.3"), "alice", "guess-4")
    assert resp.status_code == 200 and seconds >= throttle.CEILING_DELAY_SECONDS
    # and the owner with the right password gets in, after a longer wait (one more failure).
    resp, owner_seconds = sign_in(visitor(app, "203.0.113.30"), "alice", PASSWORD)
    assert resp.status_code == 302 and owner_seconds >= 2 * throttle.CEILING_DELAY_SECONDS
    assert waits[4:] == [throttle.CEILING_DELAY_SECONDS, 2 * throttle.CEILING_DELAY_SECONDS]
    # Other accounts are not slowed down.
    assert status(visitor(app, "198.51.100.3"), "bob", PASSWORD) == 302
    assert waits[6:] == [0.0]


@pytest.mark.parametrize("excess,delay", [(0, 1.0), (0.25, 2.0), (0.5, 3.0), (1, 5.0), (7, 5.0)])
def test_the_delay_grows_with_the_failures_and_is_capped(excess, delay):
    assert throttle.ceiling_delay(excess) == pytest.approx(delay)


def test_ip_limit_covers_all_accounts_of_one_address(make_app):
    app = make_app(LOGIN_LIMIT_IP="4 per minute")
    add_user(app, "alice")
    sprayer = visitor(app, "198.51.100.50")
    assert [status(sprayer, f"user{i}", "guess") for i in range(4)] == [200] * 4
    refused, _ = sign_in(sprayer, "alice", PASSWORD)
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert status(visitor(app, "198.51.100.51"), "alice", PASSWORD) == 302


def test_counters_expire_and_are_made_by_counter_key(make_app, redis_url):
    app = make_app()
    ipv6 = visitor(app, "2001:db8::1")  # colons in the address
    assert status(ipv6, "a:b", "guess") == 200
    r = redis.Redis.from_url(redis_url)
    keys = sorted(k.decode() for k in r.keys("portal:login:*"))
    ttls = {k: r.ttl(k) for k in keys}
    sizes = {k: r.zcard(k) for k in keys}
    r.close()
    made = throttle._counters(throttle.Attempt("a:b", "2001:db8::1"), app.config)
    assert keys == sorted(c.key for c in made) and len(keys) == 4  # 2 pair, 1 address, 1 ceiling
    assert "portal:login:pair:a%3Ab:2001%3Adb8%3A%3A1:5/60" in keys
    assert all(sizes[k] == 1 for k in keys)  # the one failure, in each
    assert all(0 < ttls[c.key] <= c.seconds for c in made)  # every counter goes away by itself
    # Quoting keeps subjects apart that a plain join would mix up.
    assert (throttle.counter_key("pair", ("a:b", "c"), 5, 60)
            != throttle.counter_key("pair", ("a", "b:c"), 5, 60))


@pytest.mark.parametrize("store", ["redis", "memory"])
def test_windows_move_and_retry_after_is_when_the_oldest_failure_leaves(make_app, store):
    """Moving windows, driven through throttle.check with an explicit clock, in Redis and in
    the memory fallback alike: no reset at a minute boundary, and Retry-After says when the
    next attempt will be let through."""
    dead = {"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",
            "RATELIMIT_STORAGE_URI": "memory://"} if store == "memory" else {}
    app = make_app(LOGIN_LIMIT_ACCOUNT="2 per minute", LOGIN_LIMIT_IP="100 per minute",
                   LOGIN_LIMIT_ACCOUNT_CEILING="50 per hour", **dead)
    attempt = throttle.Attempt("alice", "198.51.100.80")
    start = 1_800_000_050.0  # 10 s before a minute boundary
    with app.test_request_context():
        assert throttle.check(attempt, now=start).retry_after is None
        assert throttle.check(attempt, now=start + 5).retry_after is None
        assert throttle.check(attempt, now=start + 15).retry_after == 45  # past the boundary
        assert throttle.check(attempt, now=start + 59).retry_after == 1
        assert throttle.check(attempt, now=start + 60.5).retry_after is None  # first one left
        assert throttle.check(attempt, now=start + 61).retry_after == 4  # until start+5 leaves
        verdict = throttle.check(throttle.Attempt("alice", "203.0.113.80"), now=start + 62)
        assert verdict.retry_after is None  # another address
        assert verdict.in_redis == (store == "redis")
        throttle.succeeded(verdict)
        again = throttle.check(throttle.Attempt("alice", "203.0.113.80"), now=start + 63)
        assert again.retry_after is None


def test_a_flood_cannot_grow_the_ceiling_counter(make_app, redis_url):
    app = make_app(LOGIN_LIMIT_ACCOUNT_CEILING="3 per minute")
    with app.test_request_context():
        delays = [throttle.check(throttle.Attempt("alice", f"198.51.100.{i}"), now=1e9 + i).delay
                  for i in range(20)]
        [ceiling] = [c for c in throttle._counters(throttle.Attempt("alice", "-"), app.config)
                     if c.kind == throttle.ACCOUNT]
    assert delays[:3] == [0.0] * 3 and delays[3] == throttle.CEILING_DELAY_SECONDS
    assert delays[-1] == throttle.CEILING_MAX_DELAY_SECONDS
    r = redis.Redis.from_url(redis_url)
    assert r.zcard(ceiling.key) == 6  # twice the ceiling: where the delay stops growing
    r.close()


def test_redis_down_counts_in_memory_and_is_never_a_500(make_app):
    dead = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    app = make_app(REDIS_URL=dead, RATELIMIT_STORAGE_URI="memory://",
                   LOGIN_LIMIT_ACCOUNT="2 per minute")
    add_user(app, "alice")
    attacker = visitor(app, "198.51.100.60")
    assert [status(attacker, "alice", f"g{i}") for i in range(3)] == [200, 200, 429]
    assert status(visitor(app, "203.0.113.60"), "alice", PASSWORD) == 302


def test_frozen_redis_costs_little_and_is_never_a_500(make_app, tmp_path):
    with PrivateRedis(tmp_path / "redis") as private:
        app = make_app(REDIS_URL=private.url, RATELIMIT_STORAGE_URI="memory://",
                       LOGIN_LIMIT_ACCOUNT="2 per minute")
        add_user(app, "alice")
        attacker = visitor(app, "198.51.100.70")
        assert status(attacker, "alice", "g0") == 200  # counted in Redis
        private.freeze()  # Redis accepts connections and never answers
        try:
            resp, first = sign_in(attacker, "alice", "g1")
            assert resp.status_code == 200
            resp, second = sign_in(attacker, "alice", "g2")
            assert resp.status_code == 200  # memory counts from here (1 of 2)
            resp, seconds = sign_in(visitor(app, "203.0.113.70"), "alice", PASSWORD)
            assert resp.status_code == 302
            # The throttle's own cost: one socket timeout, then memory without asking Redis
            # for REDIS_RETRY_SECONDS.
            app.extensions.pop("portal_login_throttle")
            costs = []
            with app.test_request_context():
                for _ in range(3):
                    started = time.monotonic()
                    throttle.check(throttle.Attempt("carol", "198.51.100.71"))
                    costs.append(time.monotonic() - started)
        finally:
            private.thaw()
        assert first < 5 and second < 5 and seconds < 5
        # (a socket timeout is 0.5 s: the later checks stay well below one)
        assert costs[0] < 1.5 and costs[1] < 0.25 and costs[2] < 0.25, costs


def test_trusted_proxies_take_the_client_from_x_forwarded(make_app, tmp_path):
    behind = make_app(TRUSTED_PROXIES=1)
    direct = make_app(TRUSTED_PROXIES=0)
    assert isinstance(behind.wsgi_app, ProxyFix)  # the outermost wrapper ...
    # ... in front of the request counter (portal/observe.py) and the fast path
    assert isinstance(behind.wsgi_app.app.wsgi_app, FastDownloads)
    assert isinstance(direct.wsgi_app.wsgi_app, FastDownloads)
    (tmp_path / "timetable.txt").write_text("周一 数据结构")
    result = behind.test_cli_runner().invoke(
        args=["file", "add", str(tmp_path / "timetable.txt"), "--access", "public"])
    assert result.exit_code == 0, result.output
    seen = []
    for app in (behind, direct):
        app.before_request(lambda: seen.append((request.remote_addr, request.scheme,
                                                _create_identifier())))
    headers = {"X-Forwarded-For": "198.51.100.99, 192.0.2.1", "X-Forwarded-Proto": "https",
               "X-Forwarded-Host": "evil.example", "User-Agent": "probe"}
    urls = [visitor(app, "127.0.0.1").get(
        "/api/files/1", headers=headers).json["download_url"] for app in (behind, direct)]
    # One proxy: its entry (the last) is the client; X-Forwarded-Host is never believed.
    assert urls == ["https://localhost/files/1/download", "http://localhost/files/1/download"]
    (addr_behind, scheme_behind, id_behind), (addr_direct, scheme_direct, id_direct) = seen
    assert (addr_behind, scheme_behind) == ("192.0.2.1", "https")
    assert (addr_direct, scheme_direct) == ("127.0.0.1", "http")
    # Flask-Login's session identifier reads the X-Forwarded-For header itself: ProxyFix
    # leaves the header alone, so it does not change.
    assert id_behind == id_direct
    add_user(behind, "alice")
    resp, _ = sign_in(visitor(behind, "127.0.0.1"), "alice",
                      "guess", headers={"X-Forwarded-For": "192.0.2.7"})
    assert resp.status_code == 200
    with behind.app_context():
        assert db.session.scalars(select(AuditEntry.client_ip).where(
            AuditEntry.action == "login.failure")).all() == ["192.0.2.7"]


def test_the_throttle_page_says_it_is_sign_in_and_how_long_to_wait(make_app):
    app = make_app(LOGIN_LIMIT_ACCOUNT="2 per 10 minutes")
    add_user(app, "alice")
    attacker = visitor(app, "198.51.100.9")
    assert [status(attacker, "alice", f"guess-{i}") for i in range(2)] == [200, 200]
    token = csrf_from(attacker.get("/login?next=/me/downloads").get_data(as_text=True))
    refused = attacker.post("/login?next=/me/downloads", data={
        "username": "alice", "password": "guess-3", "csrf_token": token},
        headers={"Accept-Language": "en"})
    assert refused.status_code == 429
    wait = int(refused.headers["Retry-After"])
    minutes = -(-wait // 60)
    assert 5 <= minutes <= 10
    page = refused.get_data(as_text=True)
    assert "Too many sign-in attempts" in page
    assert f"Wait {minutes} minutes, then sign in again." in page
    assert 'href="/login?next=/me/downloads" id="back">Back to sign-in</a>' in page
    assert "Back to the catalog" not in page
    zh = attacker.post("/login", data={"username": "alice", "password": "guess-4",
                                       "csrf_token": token}).get_data(as_text=True)
    assert "登录尝试次数过多" in zh and f"请等待 {minutes} 分钟" in zh and "返回登录" in zh
