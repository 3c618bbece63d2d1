"""Signing in through CAS in the real browser: chromium goes from a personal page of the
portal (a real gunicorn) to django-cas-server's login form and back, and CAS's own single
logout (its server-to-server POST) then ends the portal session."""

from __future__ import annotations

import sqlite3

import pytest
from casserver import USERS, cas_server
from servers import Gunicorn, make_instance

from tests.helpers import screenshot, wait_for

__all__ = ["cas_server"]


@pytest.fixture(scope="module")
def cas_portal(tmp_path_factory, redis_url, cas_server):
    """A real gunicorn with local and CAS sign-in, and a file for the dept-cs group."""
    instance = make_instance(tmp_path_factory.mktemp("cas-e2e"), redis_url,
                             PORTAL_AUTH_METHODS='["local", "cas"]',
                             PORTAL_CAS_SERVER_URL=cas_server.url)
    notes = instance.root / "notes.txt"
    notes.write_text("系里的讲义\n", encoding="utf-8")
    file_id = instance.add_file(notes, title="系里的讲义", access="group:dept-cs")
    with Gunicorn(instance, workers=1) as server:
        yield server, file_id


def test_sign_in_through_cas_and_single_logout(browser, cas_portal, cas_server):
    server, file_id = cas_portal
    context = browser.new_context(locale="zh-CN", base_url=server.base_url)
    page = context.new_page()
    page.set_default_timeout(15000)
    try:
        page.goto(f"/files/{file_id}")
        page.wait_for_url(lambda url: "/login?next=" in url)
        screenshot(page, "login-sso")
        page.click("#sign-in-cas")
        page.wait_for_url(lambda url: url.startswith(cas_server.url + "login"))
        page.fill("input[name=username]", "2023101")
        page.fill("input[name=password]", USERS["2023101"][0])
        page.click("button[type=submit]")
        page.wait_for_url(f"{server.base_url}/files/{file_id}")
        assert "系里的讲义" in page.locator("h1").inner_text()
        assert "张伟" in page.locator("header").inner_text()
        with sqlite3.connect(server.instance.db_path) as conn:
            assert conn.execute("SELECT count(*) FROM sso_sessions").fetchone()[0] == 1

        # CAS's logout posts a SAML LogoutRequest to the portal, which revokes the session
        page.goto(cas_server.url + "logout")

        def signed_out() -> bool:
            page.goto(f"/files/{file_id}")
            return "/login" in page.url

        wait_for(signed_out, what="single logout to end the session", interval=0.3)
        with sqlite3.connect(server.instance.db_path) as conn:
            assert conn.execute("SELECT count(*) FROM revoked_tokens WHERE kind='session'"
                                ).fetchone()[0] == 1
    finally:
        context.close()
