"""Behind the real nginx from deploy/nginx.conf (PORTAL_TRUSTED_PROXIES=1), the portal sees the
real client: sign-in throttling keeps clients at different addresses apart and the audit log
records their addresses, not nginx's 127.0.0.1. Without trusted proxies a client's own
X-Forwarded-For is not believed.

Linux routes all of 127.0.0.0/8 to the loopback interface, so binding a client socket to
127.0.0.2 or 127.0.0.3 makes two clients that nginx tells apart by ``$remote_addr``.
"""

from __future__ import annotations

import contextlib
import http.client
import http.cookies
import json
import sqlite3
import urllib.parse
from types import SimpleNamespace

import pytest
from servers import PASSWORD, Gunicorn, Nginx, require_tool

from tests.helpers import csrf_from

pytestmark = pytest.mark.slow

#: Small per-(account, address) limit so that a test reaches it quickly.
LIMITS = {"PORTAL_LOGIN_LIMIT_ACCOUNT": "3 per minute"}


@pytest.fixture(scope="module")
def site(portal_instance, tmp_path_factory):
    """nginx -> gunicorn with one trusted proxy, and gunicorn alone trusting none."""
    require_tool("nginx")
    behind = Gunicorn(portal_instance, workers=2, env={**LIMITS, "PORTAL_TRUSTED_PROXIES": "1"})
    direct = Gunicorn(portal_instance, workers=1, env={**LIMITS, "PORTAL_TRUSTED_PROXIES": "0"})
    with contextlib.ExitStack() as running:
        for server in (behind, direct):
            running.callback(server.stop)
            server.launch()
        behind.wait_ready()
        direct.wait_ready()
        nginx = running.enter_context(Nginx(tmp_path_factory.mktemp("nginx"), behind))
        yield SimpleNamespace(nginx=nginx.base_url, direct=direct.base_url,
                              instance=portal_instance)


@pytest.fixture(scope="module", autouse=True)
def public_file(portal_instance, tmp_path_factory):
    """One public file, so that /api/files lists a download URL."""
    path = tmp_path_factory.mktemp("src") / "timetable.txt"
    path.write_text("周一 数据结构")
    return portal_instance.add_file(path, access="public")


class Client:
    """A browser at one loopback address: its own cookies, every request on a fresh
    connection whose source address is ``source``."""

    def __init__(self, base_url: str, source: str) -> None:
        parts = urllib.parse.urlsplit(base_url)
        self.host, self.port, self.source = parts.hostname, parts.port, source
        self.cookies: dict[str, str] = {}

    def send(self, method: str, path: str, body: bytes | None = None,
             headers: dict | None = None) -> tuple[int, http.client.HTTPMessage, bytes]:
        """One request: (status, headers, body); Set-Cookie lands in the jar."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30,
                                          source_address=(self.source, 0))
        headers = dict(headers or {})
        if self.cookies:
            headers["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
        finally:
            conn.close()
        for header in response.headers.get_all("Set-Cookie") or ():
            for name, morsel in http.cookies.SimpleCookie(header).items():
                self.cookies[name] = morsel.value
        return response.status, response.headers, data

    def sign_in(self, username: str, password: str, headers: dict | None = None):
        """GET /login for the CSRF token, POST the form: (status, headers)."""
        status, _, body = self.send("GET", "/login", headers=headers)
        assert status == 200, body[:300]
        token = csrf_from(body.decode())
        form = urllib.parse.urlencode({"username": username, "password": password,
                                       "csrf_token": token}).encode()
        status, response_headers, _ = self.send(
            "POST", "/login", form,
            {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})
        return status, response_headers


def audit(instance, target: str) -> list[tuple[str, str]]:
    """(action, client_ip) of the sign-in entries for one account name, oldest first."""
    with contextlib.closing(sqlite3.connect(instance.db_path, timeout=10)) as conn:
        return conn.execute("SELECT action, client_ip FROM audit_log WHERE target = ? "
                            "AND action LIKE 'login.%' ORDER BY id", (target,)).fetchall()


def test_two_clients_through_nginx_are_throttled_apart(site):
    attacker = Client(site.nginx, "127.0.0.2")
    owner = Client(site.nginx, "127.0.0.3")
    for i in range(3):
        assert attacker.sign_in("alice", f"guess-{i}")[0] == 200
    status, headers = attacker.sign_in("alice", PASSWORD)
    assert status == 429 and int(headers["Retry-After"]) > 0
    # Before PORTAL_TRUSTED_PROXIES every client was nginx's 127.0.0.1: this was a 429 too.
    status, headers = owner.sign_in("alice", PASSWORD)
    assert status == 302 and headers["Location"] == "/"
    assert attacker.sign_in("alice", "guess-3")[0] == 429  # across both gunicorn workers
    assert audit(site.instance, "alice") == [("login.failure", "127.0.0.2")] * 3 + [
        ("login.success", "127.0.0.3")]


def test_a_forwarded_for_sent_by_the_client_is_not_believed_behind_nginx(site):
    site.instance.create_user("bob")
    client = Client(site.nginx, "127.0.0.4")
    # nginx appends the address it sees; the portal believes that last entry only, so a
    # client cannot pick its address, nor escape its limit by changing the header.
    for i in range(3):
        spoof = {"X-Forwarded-For": f"203.0.113.{i + 1}"}
        assert client.sign_in("bob", f"guess-{i}", headers=spoof)[0] == 200
    assert client.sign_in("bob", "guess-3", headers={"X-Forwarded-For": "203.0.113.9"})[0] == 429
    assert audit(site.instance, "bob") == [("login.failure", "127.0.0.4")] * 3
    # The scheme is nginx's ($scheme), and the Host the client's own: X-Forwarded-Host and a
    # client's X-Forwarded-Proto cannot change the addresses the portal hands out.
    status, _, body = client.send("GET", "/api/files", headers={
        "X-Forwarded-Host": "evil.example", "X-Forwarded-Proto": "https"})
    assert status == 200
    port = urllib.parse.urlsplit(site.nginx).port
    urls = [f["download_url"] for f in json.loads(body)["files"]]
    assert urls and all(u.startswith(f"http://127.0.0.1:{port}/files/") for u in urls), urls


def test_without_trusted_proxies_a_spoofed_forwarded_for_is_not_believed(site):
    site.instance.create_user("carol")
    client = Client(site.direct, "127.0.0.5")  # straight to gunicorn, as if nginx were bypassed
    for i in range(3):
        spoof = {"X-Forwarded-For": f"198.51.100.{i + 1}"}
        assert client.sign_in("carol", f"guess-{i}", headers=spoof)[0] == 200
    assert client.sign_in("carol", PASSWORD, headers={"X-Forwarded-For": "198.51.100.9"})[0] == 429
    assert audit(site.instance, "carol") == [("login.failure", "127.0.0.5")] * 3
    # The owner elsewhere still gets in.
    assert Client(site.direct, "127.0.0.6").sign_in("carol", PASSWORD)[0] == 302
