"""OIDC sign-in against a real provider (the oidc-provider npm package under node,
tests/oidcserver.py): code flow with PKCE, ID token validation by Authlib, claims mapping,
the next page kept same-site, a replayed code, a provider whose clock is an hour ahead, a
provider that is down, a refused sign-in."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from oidcserver import TEST_CLIENT_CALLBACK, oidc_provider, start_provider
from sqlalchemy import select

from portal.extensions import db
from portal.models import UNUSABLE_PASSWORD, User
from tests.helpers import add_file, audit_details, free_port

__all__ = ["oidc_provider"]


@pytest.fixture
def oidc_app(make_app, config, oidc_provider):
    """An app with local and OIDC sign-in on (faculty get the staff role)."""
    config.update(AUTH_METHODS=["local", "oidc"], **oidc_provider.settings(),
                  SSO_ROLE_MAP={"staff": ["affiliation=faculty"]})
    return make_app()


def begin(client, next_url=None):
    """GET /login/oidc: the authorization URL the browser is sent to."""
    resp = client.get("/login/oidc" + (f"?next={next_url}" if next_url else ""))
    assert resp.status_code == 302, resp.get_data(as_text=True)[:300]
    return resp.headers["Location"]


def back(client, location):
    parts = urlsplit(location)
    return client.get(f"{parts.path}?{parts.query}")


def failures(app):
    return audit_details(app, "login.failure")


def test_oidc_sign_in_with_pkce_maps_claims_and_keeps_next(oidc_app, oidc_provider):
    file_id = add_file(oidc_app, b"b notes", access="group:cs2023b", filename="b.txt")
    client = oidc_app.test_client()
    authorize = begin(client, f"/files/{file_id}")
    query = parse_qs(urlsplit(authorize).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert "nonce" in query and "state" in query
    location = oidc_provider.sign_in(authorize, "2023201", TEST_CLIENT_CALLBACK)
    resp = back(client, location)
    assert resp.status_code == 302 and resp.headers["Location"] == f"/files/{file_id}"
    assert client.get(f"/files/{file_id}/download").data == b"b notes"
    with oidc_app.app_context():
        user = db.session.scalar(select(User).where(User.username == "2023201"))
        assert (user.display_name, user.role, user.auth_source) == ("李雷", "student", "oidc")
        assert user.group_names == {"cs2023b"} and user.password_hash == UNUSABLE_PASSWORD
    teacher = oidc_app.test_client()
    oidc_provider.portal_sign_in(teacher, "t901")
    with oidc_app.app_context():
        assert db.session.scalar(select(User.role).where(User.username == "t901")) == "staff"


def test_next_stays_on_the_site_and_the_page_lists_oidc(oidc_app, oidc_provider):
    page = oidc_app.test_client().get("/login").get_data(as_text=True)
    assert 'href="/login/oidc?next=/"' in page
    client = oidc_app.test_client()
    location = oidc_provider.sign_in(begin(client, "//evil.example/x"), "2023201",
                                     TEST_CLIENT_CALLBACK)
    assert back(client, location).headers["Location"] == "/"


def test_replayed_code_and_forged_state_are_refused(oidc_app, oidc_provider):
    client = oidc_app.test_client()
    location = oidc_provider.sign_in(begin(client), "2023201", TEST_CLIENT_CALLBACK)
    assert back(client, location).status_code == 302
    assert back(client, location).status_code == 400  # the state was used up
    other = oidc_app.test_client()
    begin(other)  # a state of its own, but the code of another browser
    assert back(other, location).status_code == 400
    assert all("bad_ticket" in d for d in failures(oidc_app))
    assert oidc_app.test_client().get("/login/oidc/callback?error=access_denied&state=x"
                                      ).status_code == 400
    assert "denied" in failures(oidc_app)[-1]


def test_provider_clock_an_hour_ahead_is_a_clear_page(make_app, config, tmp_path):
    skewed = start_provider(tmp_path, [TEST_CLIENT_CALLBACK], clock_offset=3600)
    try:
        config.update(AUTH_METHODS=["oidc"], **skewed.settings())
        app = make_app()
        client = app.test_client()
        resp = skewed.portal_sign_in(client, "2023201")
        assert resp.status_code == 400
        assert "clock_skew" in failures(app)[-1]
        assert "时钟" in resp.get_data(as_text=True)
    finally:
        skewed.stop()


def test_provider_down_is_a_clear_page(make_app, config):
    config.update(AUTH_METHODS=["oidc"], OIDC_ISSUER=f"http://127.0.0.1:{free_port()}",
                  OIDC_CLIENT_ID="portal")
    app = make_app()
    resp = app.test_client().get("/login/oidc")
    assert resp.status_code == 503 and "unavailable" in failures(app)[-1]


def test_auto_create_off_is_refused(oidc_app, oidc_provider):
    oidc_app.config["SSO_AUTO_CREATE"] = False
    client = oidc_app.test_client()
    resp = oidc_provider.portal_sign_in(client, "2023201")
    assert resp.status_code == 403 and "unknown_user" in failures(oidc_app)[-1]
