"""The warm download path in front of Flask (portal/download/fast.py) answers exactly as the
Flask view does, and leaves to the view everything it does not serve itself.

Two apps on one database and Redis: ``app`` with the fast path and worker copies on, ``view``
with PORTAL_FAST_DOWNLOADS off. Every request goes to both; status, headers and bytes must be
equal, and ``FastDownloads.served`` says which path answered. The test client has no
sendfile, so a stand-in for gunicorn's file_wrapper (``Sendfile`` below) sends what
portal/sendfile.py sends: the file's next ``length`` bytes. The real gunicorn runs the fast
path in the functional tests with curl, wget and aria2c (their servers keep the worker
copies on) and in bench/run_download_bench.py.
"""

from __future__ import annotations

import time

import pytest

from portal import cache
from portal.analytics.recorder import recorder
from portal.extensions import db
from portal.models import DownloadEvent, File, User
from tests.helpers import add_file, csrf_from, fetch, signed_in, wait_for, warm

DATA = bytes(range(256)) * 256  # 64 KiB


@pytest.fixture
def config(config):
    config["CACHE_LOCAL_SECONDS"] = 30  # off by default under TESTING
    return config


@pytest.fixture
def view(make_app):
    return make_app(FAST_DOWNLOADS=False)


@pytest.fixture
def world(app, view, make_user):
    make_user("amy", groups=["CS"])
    files = {
        "login": add_file(app, DATA, "login", filename="高等数学 期末复习.pdf"),
        "group": add_file(app, DATA[:1000], "group:CS", filename="notes.txt"),
        "public_html": add_file(app, b"<script>alert(1)</script>", "public",
                                filename="page.html"),
        "other_group": add_file(app, DATA[:10], "group:EE", filename="x.bin"),
    }
    return files


def fast_count(app) -> int:
    return app.extensions["portal_fast_door"].served


ETAG_CASES = [
    # (name, headers, method, query, served by the fast path)
    ("full", {}, "GET", "", True),
    ("first 100", {"Range": "bytes=0-99"}, "GET", "", True),
    ("suffix", {"Range": "bytes=-10"}, "GET", "", True),
    ("open end", {"Range": "bytes=65000-"}, "GET", "", True),
    ("clamped", {"Range": "bytes=65000-999999"}, "GET", "", True),
    ("invalid range ignored", {"Range": "bytes=abc"}, "GET", "", True),
    ("unknown unit", {"Range": "items=0-1"}, "GET", "", True),
    ("if-range match", {"Range": "bytes=10-19", "If-Range": "ETAG"}, "GET", "", True),
    ("if-range other", {"Range": "bytes=10-19", "If-Range": '"other"'}, "GET", "", True),
    ("if-match passes", {"If-Match": "ETAG"}, "GET", "", True),
    ("multi-range", {"Range": "bytes=0-1,10-11"}, "GET", "", False),
    ("not modified", {"If-None-Match": "ETAG"}, "GET", "", False),
    ("if-match fails", {"If-Match": '"nope"'}, "GET", "", False),
    ("unsatisfiable", {"Range": "bytes=999999-"}, "GET", "", False),
    ("head", {}, "HEAD", "", False),
    ("older version", {}, "GET", "?version=1", False),
    # a download manager reusing the browser's session: no cookie write, the fast path
    ("other client", {"User-Agent": "curl/8.0"}, "GET", "", True),
]


@pytest.mark.parametrize(("name", "headers", "method", "query", "fast"), ETAG_CASES,
                         ids=[c[0] for c in ETAG_CASES])
def test_signed_in_answers_equal_the_view(app, view, world, name, headers, method, query,
                                          fast):
    url = f"/files/{world['login']}/download"
    fast_client, view_client = signed_in(app, "amy"), signed_in(view, "amy")
    warm(app, fast_client, url)
    etag = fast_client.head(url).headers["ETag"]
    headers = {k: v.replace("ETAG", etag) for k, v in headers.items()}
    before = fast_count(app)
    got = fetch(fast_client, url + query, headers, method)
    want = fetch(view_client, url + query, headers, method)
    assert got == want
    assert fast_count(app) - before == (1 if fast else 0)
    if name == "full":
        assert got[2] == DATA and ("Vary", "Cookie") in got[1]


@pytest.mark.parametrize(("user", "key", "status", "fast"), [
    ("amy", "group", 200, True),  # a member of CS
    ("amy", "other_group", 404, False),  # not a member of EE: the view refuses
    (None, "public_html", 200, True),  # anonymous, active content: sandboxed attachment
    (None, "login", 302, False),  # anonymous: the view sends them to sign in
])
def test_access_rules_and_refusals(app, view, world, user, key, status, fast):
    url = f"/files/{world[key]}/download"
    fast_client, view_client = signed_in(app, user), signed_in(view, user)
    warm(app, fast_client, url)
    before = fast_count(app)
    got, want = fetch(fast_client, url), fetch(view_client, url)
    assert got[0] == want[0] == status
    if status != 404:  # the 404 page carries each session's CSRF token
        assert got == want
    assert fast_count(app) - before == (1 if fast else 0)
    if key == "public_html":
        assert ("Content-Security-Policy", "sandbox; default-src 'none'") in got[1]


def test_fast_downloads_are_recorded(app, world):
    url = f"/files/{world['login']}/download"
    client = signed_in(app, "amy")
    warm(app, client, url)
    before = fast_count(app)
    assert client.get(url, headers={"Range": "bytes=0-99"}).status_code == 206
    assert fast_count(app) == before + 1
    assert recorder(app).flush() >= 1
    with app.app_context():
        rows = db.session.query(DownloadEvent).filter_by(file_id=world["login"], status=206,
                                                         bytes_sent=100).all()
        assert len(rows) == 1
        assert rows[0].user_id is not None and rows[0].ua_class == "manager"
        assert rows[0].served_ranges == "0-99"


def test_a_disabled_user_or_a_changed_rule_stops_the_fast_path(app, view, world):
    url = f"/files/{world['login']}/download"
    client = signed_in(app, "amy")
    warm(app, client, url)
    before = fast_count(app)
    assert client.get(url).status_code == 200 and fast_count(app) == before + 1
    copies = app.extensions["portal_local_copies"]
    with app.app_context():
        meta = cache.meta_key(world["login"])
    with view.app_context():  # another worker or node changes the rule
        db.session.get(File, world["login"]).access = "user:nobody"
        db.session.commit()
    wait_for(lambda: meta not in copies._values)
    assert client.get(url).status_code == 404
    with view.app_context():
        db.session.get(File, world["login"]).access = "login"
        user = db.session.query(User).filter_by(username="amy").one()
        user.active = False
        db.session.commit()
    wait_for(lambda: not any(":user:" in k and k.endswith(":auth") for k in copies._values))
    assert client.get(url).status_code == 302  # signed out
    assert client.get(url).status_code == 302


def test_an_expired_session_cookie_is_not_served(make_app, make_user):
    app = make_app(PERMANENT_SESSION_LIFETIME=2)
    make_user("amy")
    url = f"/files/{add_file(app, DATA, 'login', filename='a.bin')}/download"
    client = signed_in(app, "amy")
    warm(app, client, url)
    before = fast_count(app)
    assert client.get(url).status_code == 200 and fast_count(app) == before + 1
    time.sleep(3.1)  # the cookie signed at sign-in is now too old (whole seconds: > 2)
    assert client.get(url).status_code == 302
    assert fast_count(app) == before + 1


def test_remember_me_cookie_is_left_to_flask_login(app, view, world):
    url = f"/files/{world['login']}/download"
    client = signed_in(app, None)
    token = csrf_from(client.get("/login").get_data(as_text=True))
    client.post("/login", data={"username": "amy", "password": "password123",
                                "remember": "y", "csrf_token": token})
    assert client.get_cookie("remember_token") is not None
    warm(app, client, url)
    client.delete_cookie(app.config["SESSION_COOKIE_NAME"])  # the browser was closed
    before = fast_count(app)
    resp = client.get(url)
    assert resp.status_code == 200 and resp.get_data() == DATA
    assert fast_count(app) == before  # Flask-Login restored the session from the cookie
    assert client.get(url).status_code == 200 and fast_count(app) == before + 1


def test_a_visitors_session_is_taken_as_it_is(app, world):
    """A visitor's session without Flask-Login's identifier: downloads leave it alone (no
    "basic" non-fresh mark), so the fast path answers from the first request, no cookie."""
    url = f"/files/{world['public_html']}/download"
    warm(app, signed_in(app, None), url)
    visitor = signed_in(app, None)
    with visitor.session_transaction() as session:  # chose a language, saw no other page
        session["lang"] = "en"
    before = fast_count(app)
    for _ in range(2):
        resp = visitor.get(url)
        assert resp.status_code == 200 and "Set-Cookie" not in resp.headers
    assert fast_count(app) == before + 2


def test_forged_session_cookie_is_refused(app, world):
    url = f"/files/{world['login']}/download"
    client = signed_in(app, "amy")
    warm(app, client, url)
    name = app.config["SESSION_COOKIE_NAME"]
    good = client.get_cookie(name).value
    client.set_cookie(name, good[:-2] + ("AA" if not good.endswith("AA") else "BB"))
    before = fast_count(app)
    assert client.get(url).status_code == 302
    assert fast_count(app) == before


def test_a_download_manager_reusing_the_session_gets_no_cookie(app, world):
    """aria2c with the browser's cookie: another User-Agent on every request. Downloads take
    the session as it is (no "basic" non-fresh mark, no Set-Cookie); pages still do."""
    url = f"/files/{world['login']}/download"
    client = signed_in(app, "amy")
    warm(app, client, url)
    before = fast_count(app)
    for agent in ("aria2/1.37.0", "Wget/1.21", "IDM/6.42"):
        resp = client.get(url, headers={"User-Agent": agent})
        assert resp.status_code == 200 and "Set-Cookie" not in resp.headers
    assert fast_count(app) == before + 3
    page = client.get("/", headers={"User-Agent": "aria2/1.37.0"})
    assert "Set-Cookie" in page.headers  # a page: the session is marked non-fresh


def test_strong_protection_still_ends_a_session_another_client_presents(make_app, make_user):
    app = make_app(SESSION_PROTECTION="strong", CACHE_LOCAL_SECONDS=30)
    make_user("amy")
    url = f"/files/{add_file(app, DATA, 'login', filename='a.bin')}/download"
    client = signed_in(app, "amy")
    warm(app, client, url)
    assert client.get(url).status_code == 200
    assert client.get(url, headers={"User-Agent": "aria2/1.37.0"}).status_code == 302
