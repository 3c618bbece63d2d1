"""CAS sign-in against a real django-cas-server (tests/casserver.py): the redirect, ticket
validation by the portal over HTTP, attribute and role mapping, the next page kept
same-site, replayed and bad tickets, CAS down, auto-create off, and single logout.

The Flask test client stands in for the browser here; CAS's own single-logout POST cannot
reach it, so that request is built as CAS builds it (the real one is in
tests/e2e/test_cas_browser.py, where CAS posts to a real gunicorn)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from casserver import USERS, cas_server
from sqlalchemy import select, update

from portal.extensions import db
from portal.models import UNUSABLE_PASSWORD, User
from tests.helpers import add_file, audit_details, cas_logout_request, free_port

__all__ = ["cas_server"]


@pytest.fixture
def cas_app(make_app, config, cas_server):
    """An app with local and CAS sign-in on (the role map gives faculty the staff role)."""
    config.update(AUTH_METHODS=["local", "cas"], CAS_SERVER_URL=cas_server.url,
                  SSO_ROLE_MAP={"staff": ["eduPersonAffiliation=faculty"]})
    return make_app()


def start(client, next_url=None):
    """GET /login/cas: the service URL CAS is asked to send the ticket to."""
    resp = client.get("/login/cas" + (f"?next={next_url}" if next_url else ""))
    assert resp.status_code == 302
    return parse_qs(urlsplit(resp.headers["Location"]).query)["service"][0]


def back(client, location):
    """Follow CAS's redirect back to the portal (path and query of ``location``)."""
    parts = urlsplit(location)
    return client.get(f"{parts.path}?{parts.query}")


def failures(app):
    return audit_details(app, "login.failure")


def test_login_page_offers_cas(cas_app):
    page = cas_app.test_client().get("/login?next=/files/3").get_data(as_text=True)
    assert 'href="/login/cas?next=/files/3"' in page and 'name="password"' in page


def test_cas_sign_in_maps_the_user_and_keeps_next(cas_app, cas_server):
    file_id = add_file(cas_app, b"cs notes", access="group:dept-cs", filename="cs.txt")
    client = cas_app.test_client()
    service = start(client, f"/files/{file_id}")
    assert parse_qs(urlsplit(service).query)["next"] == [f"/files/{file_id}"]
    location = cas_server.ticket_for(service, "2023101", USERS["2023101"][0])
    resp = back(client, location)
    assert resp.status_code == 302 and resp.headers["Location"] == f"/files/{file_id}"
    assert client.get(f"/files/{file_id}/download").data == b"cs notes"
    with cas_app.app_context():
        user = db.session.scalar(select(User).where(User.username == "2023101"))
        assert (user.display_name, user.role, user.auth_source) == ("张伟", "student", "cas")
        assert user.group_names == {"cs2023a", "dept-cs"}
        assert user.password_hash == UNUSABLE_PASSWORD
    teacher = cas_app.test_client()
    back(teacher, cas_server.ticket_for(start(teacher), "t900", USERS["t900"][0]))
    with cas_app.app_context():
        assert db.session.scalar(select(User.role).where(User.username == "t900")) == "staff"


def test_next_stays_on_the_site(cas_app):
    service = start(cas_app.test_client(), "https://evil.example/steal")
    assert "evil" not in service
    assert parse_qs(urlsplit(service).query)["next"] == ["/"]


def test_replayed_and_bad_tickets_are_clear_pages(cas_app, cas_server):
    client = cas_app.test_client()
    location = cas_server.ticket_for(start(client), "2023101", USERS["2023101"][0])
    assert back(client, location).status_code == 302
    replay = back(cas_app.test_client(), location)
    assert replay.status_code == 400
    bogus = cas_app.test_client().get("/login/cas/callback?ticket=ST-not-a-real-ticket")
    assert bogus.status_code == 400
    assert [d.split("; ")[1] for d in failures(cas_app)] == ["replayed", "bad_ticket"]


def test_cas_down_is_a_clear_page(make_app, config):
    config.update(AUTH_METHODS=["cas"], CAS_SERVER_URL=f"http://127.0.0.1:{free_port()}/cas/")
    app = make_app()
    resp = app.test_client().get("/login/cas/callback?ticket=ST-1-abc")
    assert resp.status_code == 503
    assert "unavailable" in failures(app)[-1]
    assert 'name="password"' not in app.test_client().get("/login").get_data(as_text=True)


def test_auto_create_off_and_disabled_users_are_refused(cas_app, cas_server, make_user):
    cas_app.config["SSO_AUTO_CREATE"] = False
    client = cas_app.test_client()
    resp = back(client, cas_server.ticket_for(start(client), "2023101", USERS["2023101"][0]))
    assert resp.status_code == 403 and "unknown_user" in failures(cas_app)[-1]
    make_user("t900", password=None, active=False)
    with cas_app.app_context():  # an account reserved for CAS (user create --method cas)
        db.session.execute(update(User).where(User.username == "t900").values(
            auth_source="cas"))
        db.session.commit()
    resp = back(client, cas_server.ticket_for(start(client), "t900", USERS["t900"][0]))
    assert resp.status_code == 403 and "disabled" in failures(cas_app)[-1]


def test_single_logout_ends_that_session(cas_app, cas_server):
    client = cas_app.test_client()
    location = cas_server.ticket_for(start(client), "2023101", USERS["2023101"][0])
    back(client, location)
    assert client.get("/login").status_code == 302  # signed in
    ticket = parse_qs(urlsplit(location).query)["ticket"][0]
    saml = cas_logout_request(ticket, "2023101")
    resp = cas_app.test_client().post("/login/cas/callback", data={"logoutRequest": saml})
    assert resp.status_code == 204
    assert client.get("/login").status_code == 200  # the session is refused now
    assert cas_app.test_client().post("/login/cas/callback",
                                      data={"logoutRequest": "<not xml"}).status_code == 200


def test_bad_tickets_are_throttled_per_address(make_app, config, cas_server):
    config.update(AUTH_METHODS=["cas"], CAS_SERVER_URL=cas_server.url,
                  LOGIN_LIMIT_ACCOUNT="3 per minute")
    client = make_app().test_client()
    codes = [client.get(f"/login/cas/callback?ticket=ST-forged-{n}").status_code
             for n in range(4)]
    assert codes == [400, 400, 400, 429]
