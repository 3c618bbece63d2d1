"""Ending a session is final the moment its answer arrives, on every worker: a real gunicorn
with two gevent workers (the fast path and the workers' own copies on). Right after the
answer, the old cookie is replayed 30 times over fresh connections, so that both workers
answer (shown by the worker pid of each replay's access-log line): every replay is refused.

- A logout, answered by gunicorn itself. Only the database's change log carries a revoked
  session to the other worker.
- "Sign out everywhere", a password change and an admin's disable, answered by another node
  that cannot reach Redis (so nothing drops the workers' cached copies of the user, and only
  the change log tells them).

Before the answers waited out the coherence bound (coherence.commit_everywhere), the worker
that had not made the change kept honouring the cookie until its next confirmation: about
two replays in three were served after a logout.
"""

from __future__ import annotations

import re
import sqlite3
import sys
import threading
import urllib.parse
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

import pytest
from servers import (
    PASSWORD,
    Browser,
    Gunicorn,
    dead_redis_url,
    make_instance,
    request,
    wait_for,
)

from tests.helpers import close_app, csrf_from

pytestmark = pytest.mark.slow

#: urllib's User-Agent, the signed-in Browser's, sent with the replays too: the same client.
AGENT = f"Python-urllib/{sys.version_info.major}.{sys.version_info.minor}"
#: Each access line names the worker (its pid) and the replay (a request header).
LOG_FORMAT = "replay %(p)s %({x-replay}i)s %(s)s"
REPLAYS, CONNECTIONS = 30, 6
#: Rounds until one has had both workers answer its replays (the first one usually does).
ROUNDS = 6
#: The coherence bound of gunicorn and the other node: the longest the settings allow, so
#: that without the wait a worker would keep honouring the old cookie for up to 1.5 s, long
#: past the replays.
COHERENCE_SECONDS = 1.5
CASES = ("logout", "everywhere", "password", "disabled")


@pytest.fixture(scope="module")
def served(tmp_path_factory, redis_url):
    """(the instance, its gunicorn, a download every signed-in user may make, another
    node's app that cannot reach Redis)."""
    root = tmp_path_factory.mktemp("final-logout")
    instance = make_instance(root, redis_url, PORTAL_CACHE_LOCAL_SECONDS="5",
                             PORTAL_FAST_DOWNLOADS="true",
                             PORTAL_COHERENCE_SECONDS=str(COHERENCE_SECONDS))
    instance.create_user("root", role="admin")
    for case in CASES:
        instance.create_user(f"amy-{case}")
    document = root / "notes.pdf"
    document.write_bytes(b"lecture notes " * 5000)
    file_id = instance.add_file(document, access="login")
    node = instance.node_app(dead_redis_url(), COHERENCE_SECONDS=COHERENCE_SECONDS)
    env = {"GUNICORN_CMD_ARGS": f"--access-logformat '{LOG_FORMAT}'"}
    try:
        with Gunicorn(instance, workers=2, env=env) as server:
            yield instance, server, f"/files/{file_id}/download", node
    finally:
        close_app(node)


def cookie_of(browser: Browser) -> str:
    return "; ".join(f"{c.name}={c.value}" for c in browser.jar)


@contextmanager
def traffic(server, cookie: str, paths: list[str]) -> Iterator[None]:
    """Requests with ``cookie`` on fresh connections, two at a time, until the block ends:
    both workers go on confirming their views up to the change, as under real use."""
    stop = threading.Event()

    def run() -> None:
        n = 0
        while not stop.is_set():
            request(server.base_url, "GET", paths[n % len(paths)],
                    headers={"Cookie": cookie, "User-Agent": AGENT})
            n += 1

    threads = [threading.Thread(target=run, daemon=True) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        yield
    finally:
        stop.set()
        for thread in threads:
            thread.join()


def replay(server, cookie: str, paths: list[str], marker: str) -> list[int]:
    """``REPLAYS`` requests carrying ``cookie``, over ``CONNECTIONS`` at once, each on a
    fresh connection and marked ``marker-<n>`` for the access log; their statuses."""
    def one(n: int) -> int:
        status, _, _ = request(server.base_url, "GET", paths[n % len(paths)], headers={
            "Cookie": cookie, "User-Agent": AGENT, "X-Replay": f"{marker}-{n}"})
        return status

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        return list(pool.map(one, range(REPLAYS)))


def workers_of(server, marker: str) -> set[str]:
    """The pids of the workers that answered the replays marked ``marker``, once every one
    of them has its access line."""
    pattern = re.compile(rf"^replay <(\d+)> {re.escape(marker)}-\d+ ", re.M)

    def pids() -> list[str]:
        return pattern.findall(server.log.read_text(errors="replace"))

    wait_for(lambda: len(pids()) >= REPLAYS, 90, f"the access lines of {marker}")
    return set(pids())


def logout(server, browser: Browser) -> None:
    """POST /logout on gunicorn with the browser's cookie; returns with its answer."""
    body = urllib.parse.urlencode({"csrf_token": browser.csrf}).encode()
    status, _, _ = request(server.base_url, "POST", "/logout", body=body, headers={
        "Cookie": cookie_of(browser), "User-Agent": AGENT,
        "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 302


def on_node(node, name: str, password: str, path: str, form: dict) -> None:
    """Sign ``name`` in on the other node and post ``form`` to ``path`` there."""
    client = node.test_client()
    resp = client.post("/login", data={"username": name, "password": password,
                                       "csrf_token": csrf_from(client.get("/login").text)})
    assert resp.status_code == 302, resp.text[:300]
    resp = client.post(path, data={**form, "csrf_token": csrf_from(client.get("/").text)})
    assert resp.status_code == 302, resp.text[:300]


def password_of(name: str, round_: int) -> str:
    """amy-password's password at the start of a round (it changes every round)."""
    return f"{PASSWORD}-{round_}" if name == "amy-password" and round_ else PASSWORD


def set_active(instance, node, name: str, active: bool) -> None:
    """An admin disables or enables ``name`` on the other node's admin page."""
    with sqlite3.connect(instance.db_path, timeout=10) as conn:
        user_id = conn.execute("SELECT id FROM users WHERE username = ?", (name,)).fetchone()[0]
    on_node(node, "root", PASSWORD, f"/admin/users/{user_id}", {
        "username": name, "display_name": name, "role": "student", "groups": "",
        **({"active": "y"} if active else {"confirm_disable": "y"})})


def end(case: str, served, name: str, round_: int, paths: list[str]) -> str:
    """Sign ``name`` in on gunicorn, have its workers serve that session, end it the
    ``case`` way; the old cookie, to replay."""
    instance, server, _download, node = served
    browser = Browser(server.base_url).login(name, password_of(name, round_))
    cookie = cookie_of(browser)
    warm = replay(server, cookie, paths, f"warm-{case}-{round_}")
    assert set(warm) == {200}, warm
    with traffic(server, cookie, paths):
        if case == "logout":
            logout(server, browser)
        elif case == "everywhere":
            on_node(node, name, PASSWORD, "/logout", {"everywhere": "1"})
        elif case == "password":
            new = password_of(name, round_ + 1)
            on_node(node, name, password_of(name, round_), "/account/password", {
                "current": password_of(name, round_), "new": new, "confirm": new})
        else:
            set_active(instance, node, name, False)
    return cookie


@pytest.mark.parametrize("case", CASES)
def test_the_old_cookie_is_refused_by_every_worker_right_after_the_answer(served, case):
    instance, server, download, node = served
    paths = ["/account/password", download]  # a page, and a download (the fast path)
    name = f"amy-{case}"
    for round_ in range(ROUNDS):
        if case == "disabled" and round_:
            set_active(instance, node, name, True)
        cookie = end(case, served, name, round_, paths)
        marker = f"{case}-{round_}"
        statuses = replay(server, cookie, paths, marker)
        assert set(statuses) == {302}, f"round {round_}: {statuses}"  # to the login page
        if len(workers_of(server, marker)) == 2:
            return
    pytest.fail(f"in {ROUNDS} rounds the replays never reached both workers")
