"""Absolute URLs from PORTAL_PUBLIC_URL, never from the Host header (signed links, the API,
CAS's service URL, OIDC's redirect URI); CAS tickets never in the logs; single logout only
for tickets the portal itself validated.

Against the real CAS server (tests/casserver.py): the service URL a spoofed Host would have
made is refused by CAS, so the whole round trip is checked, not only the redirect. The logs
are those of a real gunicorn (its access and error log) behind the deploy nginx."""

from __future__ import annotations

import logging
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
from casserver import USERS, cas_server
from oidcserver import TEST_CLIENT_CALLBACK, oidc_provider
from servers import Gunicorn, Nginx, make_instance, wait_for
from sqlalchemy import func, select

from portal.extensions import db
from portal.models import AuditEntry, RevokedToken
from tests.helpers import add_file, cas_logout_request, csrf_from, free_port

__all__ = ["cas_server", "oidc_provider"]

#: A public address the test CAS accepts services at, and not the test client's own host.
PUBLIC = "https://localhost:8443"
SPOOFED = {"Host": "evil.example"}
STUDENT, PASSWORD = "2023101", USERS["2023101"][0]


@pytest.fixture
def cas_app(make_app, config, cas_server):
    """Local and CAS sign-in, the portal's public address set."""
    config.update(AUTH_METHODS=["local", "cas"], CAS_SERVER_URL=cas_server.url, PUBLIC_URL=PUBLIC)
    return make_app()


def service_of(client, next_url: str = "/", headers: dict | None = None) -> str:
    """GET /login/cas: the service URL the portal asks CAS to send the ticket to."""
    resp = client.get(f"/login/cas?next={next_url}", headers=headers)
    assert resp.status_code == 302, resp.data[:300]
    assert "evil" not in resp.headers["Location"]
    return parse_qs(urlsplit(resp.headers["Location"]).query)["service"][0]


def come_back(client, location: str, headers: dict | None = None):
    """Follow CAS's redirect back to the portal (its path and query)."""
    parts = urlsplit(location)
    return client.get(f"{parts.path}?{parts.query}", headers=headers)


def ticket_of(location: str) -> str:
    return parse_qs(urlsplit(location).query)["ticket"][0]


def signed_in(client, headers: dict | None = None) -> bool:
    return client.get("/login", headers=headers).status_code == 302


def test_a_spoofed_host_changes_no_cas_service_url(cas_app, cas_server):
    """The service URL is the public one whatever the Host; CAS issues the ticket for it
    and the portal validates it for the same URL, Host spoofed again."""
    client = cas_app.test_client()
    service = service_of(client, "/files/1", SPOOFED)
    assert service.startswith(f"{PUBLIC}/login/cas/callback?")
    location = cas_server.ticket_for(service, STUDENT, PASSWORD)
    assert location.startswith(f"{PUBLIC}/login/cas/callback?")
    resp = come_back(client, location, SPOOFED)
    assert resp.status_code == 302 and resp.headers["Location"] == "/files/1"
    assert signed_in(client, SPOOFED)  # (the test client keeps the cookie per host)


def test_a_spoofed_host_changes_no_oidc_redirect_uri(make_app, config, oidc_provider):
    """OIDC's redirect URI is the public one too (the real provider refuses any other)."""
    public = TEST_CLIENT_CALLBACK.removesuffix("/login/oidc/callback")
    config.update(AUTH_METHODS=["oidc"], PUBLIC_URL=public, **oidc_provider.settings())
    resp = make_app().test_client().get("/login/oidc", headers=SPOOFED)
    assert resp.status_code == 302, resp.data[:300]
    query = parse_qs(urlsplit(resp.headers["Location"]).query)
    assert query["redirect_uri"] == [TEST_CLIENT_CALLBACK]


def sign_in_form(client, headers: dict | None = None) -> str:
    """Sign alice in with the password form; the CSRF token of the next page."""
    token = csrf_from(client.get("/login", headers=headers).get_data(as_text=True))
    resp = client.post("/login", headers=headers, data={
        "username": "alice", "password": "password123", "csrf_token": token})
    assert resp.status_code == 302, resp.data[:300]
    return csrf_from(client.get("/", headers=headers).get_data(as_text=True))


def test_signed_links_and_the_api_name_the_public_url(make_app, config, make_user):
    """POST /api/files/<id>/links and /api/files hand out the public address, whatever
    Host the request names."""
    app = make_app(PUBLIC_URL=PUBLIC)
    file_id = add_file(app, b"timetable", access="login", filename="t.pdf")
    make_user("alice")
    client = app.test_client()
    csrf = sign_in_form(client, SPOOFED)  # (the test client keeps the cookie per host)
    link = client.post(f"/api/files/{file_id}/links", json={},
                       headers={"X-CSRFToken": csrf, **SPOOFED})
    assert link.status_code == 201, link.data
    assert link.json["url"].startswith(f"{PUBLIC}/d/") and "evil" not in link.json["url"]
    listed = client.get("/api/files", headers=SPOOFED).json["files"]
    assert [f["download_url"] for f in listed] == [f"{PUBLIC}/files/{file_id}/download"]
    # The link works, asked for by its path.
    assert app.test_client().get(urlsplit(link.json["url"]).path).data == b"timetable"


def test_without_a_public_url_development_keeps_the_requests_address(app, client, make_user):
    """Unset (development, the demo): the request's own scheme and host, as before."""
    file_id = add_file(app, b"timetable", access="login", filename="t.pdf")
    make_user("alice")
    csrf = sign_in_form(client)
    link = client.post(f"/api/files/{file_id}/links", json={}, headers={"X-CSRFToken": csrf})
    assert link.json["url"].startswith("http://localhost/d/")


def test_single_logout_acts_only_on_tickets_the_portal_validated(cas_app, cas_server):
    """A ticket CAS issued that never came back to the portal, and one nobody issued, end
    nothing; the ticket the portal validated ends that session."""
    client = cas_app.test_client()
    location = cas_server.ticket_for(service_of(client), STUDENT, PASSWORD)
    come_back(client, location)
    assert signed_in(client)
    stray = cas_server.ticket_for(service_of(cas_app.test_client()), "t900", USERS["t900"][0])
    for ticket in (ticket_of(stray), "ST-1-forged", ticket_of(location) + "x"):
        resp = cas_app.test_client().post("/login/cas/callback",
                                          data={"logoutRequest": cas_logout_request(ticket)})
        assert resp.status_code == 200
    assert signed_in(client)
    with cas_app.app_context():
        assert db.session.scalar(select(func.count()).select_from(RevokedToken)) == 0
        assert db.session.scalar(select(func.count()).select_from(AuditEntry).where(
            AuditEntry.action == "logout.single")) == 0
    resp = cas_app.test_client().post(
        "/login/cas/callback", data={"logoutRequest": cas_logout_request(ticket_of(location))})
    assert resp.status_code == 204 and not signed_in(client)


def test_cas_down_keeps_the_ticket_out_of_the_log_and_the_audit(make_app, config, caplog):
    """CAS unreachable: the error names the validation URL; its ticket is redacted."""
    config.update(AUTH_METHODS=["cas"], CAS_SERVER_URL=f"http://127.0.0.1:{free_port()}/cas/")
    app = make_app()
    with caplog.at_level(logging.WARNING):
        resp = app.test_client().get("/login/cas/callback?next=/&ticket=ST-1-secret-value")
    assert resp.status_code == 503
    with app.app_context():
        details = [e.detail for e in db.session.scalars(select(AuditEntry))]
    assert any("unavailable" in d for d in details)
    assert any("ticket=[redacted]" in d for d in details), details
    assert not any("secret-value" in d for d in details), details
    assert "CAS validation" in caplog.text and "secret-value" not in caplog.text


def test_tickets_never_reach_the_logs(tmp_path, redis_url, cas_server):
    """A real sign-in through the deploy nginx and gunicorn: neither nginx's access log nor
    gunicorn's (access and error) holds the ticket; both say a ticket came."""
    instance = make_instance(tmp_path / "site", redis_url,
                             PORTAL_AUTH_METHODS='["local", "cas"]',
                             PORTAL_CAS_SERVER_URL=cas_server.url)
    server = Gunicorn(instance, workers=1)
    proxy = Nginx(tmp_path / "nginx", server)
    server.env["PORTAL_PUBLIC_URL"] = proxy.base_url
    server.env["PORTAL_TRUSTED_PROXIES"] = "1"
    with server, proxy:
        resp = requests.get(f"{proxy.base_url}/login/cas?next=/", allow_redirects=False,
                            headers=SPOOFED, timeout=10)
        service = parse_qs(urlsplit(resp.headers["Location"]).query)["service"][0]
        assert service.startswith(f"{proxy.base_url}/login/cas/callback?")
        location = cas_server.ticket_for(service, STUDENT, PASSWORD)
        ticket = ticket_of(location)
        resp = requests.get(location, allow_redirects=False, timeout=10)
        assert resp.status_code == 302 and resp.headers["Location"] == "/"
        nginx_log = proxy.workdir / "logs" / "portal_access.log"

        def logged() -> bool:  # nginx writes its buffer within a second
            return (nginx_log.exists() and "/login/cas/callback" in nginx_log.read_text()
                    and "/login/cas/callback" in server.log.read_text())

        wait_for(logged, 60, "the callback's lines in both logs")
    for log in (nginx_log, server.log):
        text = log.read_text()
        assert ticket not in text, log
        assert "ticket=[redacted]" in text, log
