"""Trust under crafted input and for untrusted browsers (issue 13): security headers, cookie
flags in production, ids no row can have, and JSON bodies that are not objects.

The same headers through the real nginx of deploy/nginx.conf: test_nginx_xaccel.py; the
conf's add_header rules: tests/unit/test_nginx_conf.py.
"""

from __future__ import annotations

import io
import re
from http.cookies import SimpleCookie
from pathlib import Path

import pytest

from portal.extensions import db
from portal.files import add_version
from portal.security import HSTS, PAGE_CSP
from portal.storage import get_storage
from tests.helpers import csrf_from

ROOT = Path(__file__).resolve().parents[2]

PAGE_HEADERS = {
    "Content-Security-Policy": PAGE_CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "strict-origin-when-cross-origin",
}


def add(app, *, access="public", body=b"%PDF-1.7 timetable", filename="课程表.pdf",
        title="课程表") -> int:
    with app.app_context():
        version = add_version(db.session, get_storage(), io.BytesIO(body), filename=filename,
                              title=title, category="教务", access=access)
        db.session.commit()
        return version.file_id


def assert_page_headers(resp, **expected) -> None:
    """Each page header exactly once, with its value (``Referrer_Policy=...`` overrides)."""
    want = {**PAGE_HEADERS, **{k.replace("_", "-"): v for k, v in expected.items()}}
    for name, value in want.items():
        assert resp.headers.getlist(name) == [value], (resp.request.path, name)


# ---------------------------------------------------------------------------
# Headers
# ---------------------------------------------------------------------------


def test_pages_json_and_errors_carry_the_page_headers(app, client, make_user, login):
    file_id = add(app)
    for path in ("/login", "/", f"/files/{file_id}", "/api/files", f"/api/files/{file_id}",
                 "/healthz", "/no/such/page", "/files/424242", "/static/js/portal.js"):
        with client.get(path) as resp:
            assert_page_headers(resp)
            assert "Strict-Transport-Security" not in resp.headers  # development: no HSTS
    refused = app.test_client().post("/api/links/revoke", json={})  # no session: 401 JSON
    assert refused.status_code == 401 and refused.is_json
    assert_page_headers(refused)
    make_user("amy")
    csrf = login("amy")
    for resp in (client.get("/"), client.get(f"/files/{file_id}"), client.get("/me/downloads"),
                 client.get("/api/files"),
                 client.post(f"/api/files/{file_id}/links", json={},
                             headers={"X-CSRFToken": csrf})):
        assert resp.status_code in (200, 201)
        assert_page_headers(resp)


def test_downloads_keep_their_own_headers(app, client):
    pdf = add(app)
    html = add(app, body=b"<script>alert(1)</script>", filename="page.html", title="page")
    resp = client.get(f"/files/{pdf}/download")
    assert resp.status_code == 200 and resp.headers.getlist("X-Content-Type-Options") == [
        "nosniff"]
    # no page CSP on a file (object-src 'none' would stop a browser's PDF viewer), and the
    # same headers as the fast path sends (test_fast_downloads.py compares them all)
    for name in ("Content-Security-Policy", "X-Frame-Options", "Referrer-Policy"):
        assert name not in resp.headers, name
    resp = client.get(f"/files/{html}/download")
    assert resp.headers.getlist("Content-Security-Policy") == ["sandbox; default-src 'none'"]
    zipped = client.get(f"/files/zip?id={pdf}&id={html}")
    assert zipped.status_code == 200 and "Content-Security-Policy" not in zipped.headers
    # what the download blueprint answers that is not a file is a page
    assert_page_headers(client.get(f"/files/{pdf}/download?version=9"))  # 404 page


def test_signed_link_pages_send_no_referrer(app, client, make_user, login):
    file_id = add(app, access="login")
    make_user("amy")
    csrf = login("amy")
    url = client.post(f"/api/files/{file_id}/links", json={},
                      headers={"X-CSRFToken": csrf}).json["url"]
    anon = app.test_client()
    resp = anon.get(url)
    assert resp.status_code == 200 and resp.data.startswith(b"%PDF")
    assert resp.headers.getlist("Referrer-Policy") == ["no-referrer"]
    assert "Content-Security-Policy" not in resp.headers  # a file: its own headers only
    assert anon.head(url).headers.getlist("Referrer-Policy") == ["no-referrer"]
    ranged = anon.get(url, headers={"Range": "bytes=0-3"})
    assert ranged.status_code == 206 and ranged.headers["Referrer-Policy"] == "no-referrer"
    # the bad-link page: a page (CSP, no framing), and still no referrer from it
    for bad in (url.replace("/d/", "/d/x"), "/d/not-a-token", "/d/not-a-token/x.pdf"):
        resp = anon.get(bad)
        assert resp.status_code == 403
        assert_page_headers(resp, Referrer_Policy="no-referrer")
        assert anon.head(bad).headers.getlist("Referrer-Policy") == ["no-referrer"]


def test_hsts_only_in_production(app, make_app):
    file_id = add(app)
    production = make_app(ENV="production").test_client()
    for path in ("/login", "/", f"/files/{file_id}", "/api/files", "/d/not-a-token"):
        resp = production.get(path)
        assert resp.headers.getlist("Strict-Transport-Security") == [HSTS], path
        assert resp.headers["Content-Security-Policy"] == PAGE_CSP
    assert "Strict-Transport-Security" not in app.test_client().get("/login").headers


def test_templates_have_no_inline_script_or_style():
    # The CSP allows neither: code lives in static/js, styles in static/css. JSON data blocks
    # (<script type="application/json">) are not run and are fine.
    offenders = []
    for path in sorted((ROOT / "templates").rglob("*.html")):
        text = path.read_text()
        for pattern in (r"\son[a-z]+\s*=", r"javascript:", r"\sstyle\s*=", r"<style\b",
                        r"<script(?![^>]*\bsrc=)(?![^>]*type=\"application/json\")[^>]*>"):
            offenders += [f"{path.relative_to(ROOT)}: {m.group(0)}"
                          for m in re.finditer(pattern, text, re.IGNORECASE)]
    assert offenders == []


# ---------------------------------------------------------------------------
# Cookies
# ---------------------------------------------------------------------------


def sign_in(client, username: str, *, remember: bool = True):
    """The real sign-in form; the response that sets the cookies."""
    token = csrf_from(client.get("/login").get_data(as_text=True))
    form = {"username": username, "password": "password123", "csrf_token": token}
    if remember:
        form["remember"] = "y"
    resp = client.post("/login", data=form)
    assert resp.status_code == 302, resp.get_data(as_text=True)[:300]
    return resp


def cookie_flags(resp) -> dict[str, dict[str, str | bool]]:
    """{cookie name: its attributes, lower-cased} from every Set-Cookie of a response."""
    found = {}
    for header in resp.headers.getlist("Set-Cookie"):
        jar = SimpleCookie()
        jar.load(header)
        for name, morsel in jar.items():
            found[name] = {k: v for k, v in morsel.items() if v}
    return found


def test_production_cookies_are_secure_httponly_lax(make_app, make_user):
    app = make_app(ENV="production")
    make_user("amy")
    flags = cookie_flags(sign_in(app.test_client(), "amy"))
    assert set(flags) >= {"session", "remember_token"}, flags
    for name in ("session", "remember_token"):
        assert flags[name]["secure"] is True, name
        assert flags[name]["httponly"] is True, name
        assert flags[name]["samesite"] == "Lax", name


def test_development_cookies_are_httponly_lax_not_secure(app, make_user):
    make_user("amy")
    flags = cookie_flags(sign_in(app.test_client(), "amy"))
    for name in ("session", "remember_token"):
        assert flags[name].get("secure") is None, name
        assert flags[name]["httponly"] is True and flags[name]["samesite"] == "Lax", name


def test_an_operator_may_turn_secure_off(config, monkeypatch, make_app, make_user):
    # A TLS-less test bed in production mode: PORTAL_SESSION_COOKIE_SECURE=false wins.
    monkeypatch.setenv("PORTAL_SESSION_COOKIE_SECURE", "false")
    app = make_app(ENV="production")
    assert app.config["SESSION_COOKIE_SECURE"] is False
    assert app.config["REMEMBER_COOKIE_SECURE"] is True
    make_user("amy")
    flags = cookie_flags(sign_in(app.test_client(), "amy"))
    assert flags["session"].get("secure") is None and flags["remember_token"]["secure"] is True
    assert flags["session"]["samesite"] == "Lax"


@pytest.mark.parametrize("key,value", [("SESSION_COOKIE_SECURE", "yes"),
                                       ("REMEMBER_COOKIE_HTTPONLY", 2),
                                       ("SESSION_COOKIE_SAMESITE", "lax-ish")])
def test_bad_cookie_settings_stop_startup(config, key, value):
    from portal import ConfigError, create_app

    with pytest.raises(ConfigError, match=f"PORTAL_{key}"):
        create_app({**config, key: value})


# ---------------------------------------------------------------------------
# Crafted ids: 404, never a 500, on every route kind that takes one
# ---------------------------------------------------------------------------

#: Past 64 bits, past 32 bits (PostgreSQL's INTEGER), just past it, Arabic-Indic digits,
#: zero, and a number written with full-width digits.
CRAFTED_IDS = ["9223372036854775808", "99999999999", "2147483648", "١٢", "0", "１２"]

GET_ROUTES = ["/files/{}/download", "/files/{}", "/api/files/{}", "/admin/files/{}",
              "/admin/users/{}", "/api/analytics/files/{}", "/api/analytics/files/{}/detail",
              "/admin/analytics/files/{}", "/files/zip?id={}", "/files/zip?id=1&id={}"]
POST_ROUTES = ["/api/files/{}/links", "/admin/files/{}/delete", "/admin/files/{}/restore",
               "/admin/groups/{}/delete"]


@pytest.mark.parametrize("crafted", CRAFTED_IDS)
def test_crafted_ids_are_404(app, client, make_user, login, crafted):
    add(app)  # file 1 exists
    make_user("root", role="admin")
    csrf = login("root")
    for route in GET_ROUTES:
        url = route.format(crafted)
        assert client.get(url).status_code == 404, url
        assert client.head(url).status_code == 404, url
    for route in POST_ROUTES:
        url = route.format(crafted)
        assert client.post(url, json={}, headers={"X-CSRFToken": csrf}).status_code == 404, url
    # the range's edges: the largest id is a plain missing file, the smallest a real one
    assert client.get(f"/files/{2**31 - 1}/download").status_code == 404
    assert client.get("/files/1/download").status_code == 200


@pytest.mark.parametrize("crafted", CRAFTED_IDS)
def test_crafted_ids_are_404_without_a_session(client, crafted):
    for route in ("/files/{}/download", "/files/{}", "/api/files/{}"):
        url = route.format(crafted)
        assert client.get(url).status_code == 404, url
    # a zip of ids the visitor cannot read asks them to sign in, as for any missing file
    assert client.get(f"/files/zip?id={crafted}").status_code == 302


# ---------------------------------------------------------------------------
# JSON bodies of the link API
# ---------------------------------------------------------------------------

NOT_OBJECTS = [b"[]", b'["url"]', b'"x"', b"1", b"null", b"true", b"{", b"not json", b"\xff"]


@pytest.fixture
def signed_in(app, client, make_user, login):
    """(client, CSRF token, a file id) for amy, who may read the file."""
    file_id = add(app, access="login")
    make_user("amy")
    return client, login("amy"), file_id


@pytest.mark.parametrize("body", NOT_OBJECTS)
@pytest.mark.parametrize("content_type", ["application/json", "text/plain"])
def test_non_object_json_is_400(signed_in, body, content_type):
    client, csrf, file_id = signed_in
    for url in (f"/api/files/{file_id}/links", "/api/links/revoke"):
        resp = client.post(url, data=body, content_type=content_type,
                           headers={"X-CSRFToken": csrf})
        assert resp.status_code == 400, (url, body)
        assert resp.is_json and resp.json["error"], (url, body)


@pytest.mark.parametrize("version", [True, False, 1.5, "abc", 0, -1, "0", "", None, [1],
                                     {"n": 1}, "١"])
def test_a_version_that_is_not_a_whole_number_is_400(signed_in, version):
    client, csrf, file_id = signed_in
    resp = client.post(f"/api/files/{file_id}/links", json={"version": version},
                       headers={"X-CSRFToken": csrf})
    assert resp.status_code == 400 and "version" in resp.json["error"]


def test_good_link_bodies_still_work(signed_in):
    client, csrf, file_id = signed_in
    headers = {"X-CSRFToken": csrf}
    for kwargs in ({}, {"json": {}}, {"json": {"version": 1}}, {"json": {"version": "1"}},
                   {"data": b'{"version": 1}', "content_type": "text/plain"},
                   {"data": b"{}"}):
        resp = client.post(f"/api/files/{file_id}/links", headers=headers, **kwargs)
        assert resp.status_code == 201, (kwargs, resp.data)
        assert resp.json["version"] == 1
    # curl -d without a JSON Content-Type sends a form: refused with a hint, not ignored
    resp = client.post(f"/api/files/{file_id}/links", data=b'{"version": 1}', headers=headers,
                       content_type="application/x-www-form-urlencoded")
    assert resp.status_code == 400 and "Content-Type" in resp.json["error"]
    # a version that does not exist is a 404, as it always was
    assert client.post(f"/api/files/{file_id}/links", json={"version": 2},
                       headers=headers).status_code == 404
    assert client.post(f"/api/files/{file_id}/links", json={"version": 10**40},
                       headers=headers).status_code == 404
    # an object without a usable url is the old "link invalid", not a crash
    resp = client.post("/api/links/revoke", json={"url": 5}, headers=headers)
    assert resp.status_code == 400 and resp.json["error"] == "link invalid"
    too_big = b'{"url": "' + b"x" * (70 * 1024) + b'"}'
    assert client.post("/api/links/revoke", data=too_big, content_type="application/json",
                       headers=headers).status_code == 413
