"""The portal's gevent worker (portal/worker.py) answers on the wire exactly as gunicorn's own.

Two real gunicorns on one instance: ``lean`` with the portal's worker (the default) and
``plain`` with gunicorn's GeventWorker. The same raw bytes go to both over a socket, some
pipelined on one connection; every response's status line, fields (Date aside, Set-Cookie by
name) and body must be equal, and so must whether the server closed the connection; only a
head gunicorn refuses is answered with the portal's error page instead of gunicorn's own. The access
log names which requests the lean cycle answered (``%({portal.lean}e)s``): the warm plain GETs,
and nothing it should have handed to gunicorn's cycle.
"""

from __future__ import annotations

import time

import pytest
from servers import Gunicorn
from wire import LOG_ENV, assert_answered_alike, exchange, lean_and_plain, lean_lines, req

from portal.analytics import clients
from tests.helpers import wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def servers(portal_instance, tmp_path_factory):
    with lean_and_plain(portal_instance, tmp_path_factory.mktemp("lean")) as pair:
        yield pair


def cases(ids: dict, cookie: str) -> list[tuple[str, bytes, int, list[str]]]:
    """(case, raw bytes, responses expected, lean-served flags of its requests)."""
    private, public = f"/files/{ids['private']}/download", f"/files/{ids['public']}/download"
    signed = f"Cookie: {cookie}"
    return [
        ("full", req("full", private, signed), 1, ["1"]),
        ("range", req("range", private, signed, "Range: bytes=10-99"), 1, ["1"]),
        ("suffix", req("suffix", private, signed, "Range: bytes=-7"), 1, ["1"]),
        ("multi", req("multi", private, signed, "Range: bytes=0-1,5-6"), 1, ["-"]),
        ("unsatisfiable", req("unsatisfiable", private, signed, "Range: bytes=999999-"), 1,
         ["-"]),
        ("head", req("head", private, signed, method="HEAD"), 1, ["-"]),
        ("anonymous", req("anonymous", private), 1, ["-"]),
        ("public", req("public", public), 1, ["1"]),
        ("query", req("query", public + "?version=1"), 1, ["-"]),
        ("percent", req("percent", public.replace("/download", "/%64ownload")), 1, ["-"]),
        ("http10", req("http10", public, version="HTTP/1.0") + req("http10", public), 1,
         ["1"]),
        ("http10-keepalive", req("http10-keepalive", public, "Connection: keep-alive",
                                 version="HTTP/1.0") * 2, 2, ["1", "1"]),
        ("close", req("close", public, "Connection: close") + req("close", public), 1, ["1"]),
        ("pipelined", req("pipelined", private, signed) + req("pipelined", public)
         + req("pipelined", private, signed, "Range: bytes=0-0"), 3, ["1", "1", "1"]),
        # gunicorn's cycle in between: a POST with a body, then the lean one again
        ("mixed", req("mixed", public) + req("mixed", "/login", "Content-Length: 9",
                                             "Content-Type: application/x-www-form-urlencoded",
                                             method="POST", body=b"username=")
         + req("mixed", public, "X_Weird: 1") + req("mixed", public), 4,
         ["1", "-", "-", "1"]),
        ("repeated", req("repeated", public, "Accept: a", "Accept: b"), 1, ["-"]),
        # nginx's fields (gunicorn trusts 127.0.0.1 for the scheme by default)
        ("forwarded", req("forwarded", private, signed, "X-Forwarded-For: 203.0.113.7",
                          "X-Forwarded-Proto: https"), 1, ["1"]),
        ("scheme-conflict", req("scheme-conflict", public, "X-Forwarded-Proto: https",
                                "X-Forwarded-Ssl: off"), 1, None),
        ("page", req("page", "/healthz"), 1, ["-"]),
        ("expect", req("expect", public, "Expect: 100-continue"), 2, ["-"]),
        ("big-head", req("big-head", public, "X-Filler: " + "a" * 9000), 1, None),
        # gunicorn's parser judges these (flags None: whatever it logs)
        ("bad-line", b"GET /x\r\nUser-Agent: case-bad-line\r\n\r\n", 1, None),
        ("lowercase", req("lowercase", public, method="get"), 1, None),
        ("bare-lf", req("bare-lf", public).replace(b"\r\nUser", b"\nUser"), 1, None),
    ]


def test_the_lean_cycle_answers_as_gunicorn_does(servers):
    lean, plain, ids, cookie = servers
    for server in (lean, plain):  # warm: the workers' copies hold the files and the user
        for case, raw, expect, _ in cases(ids, cookie):
            if case in ("full", "public"):
                exchange(server, raw, expect)
                exchange(server, raw, expect)
    before = {server.port: len(server.log.read_text("utf-8")) for server in (lean, plain)}
    for case, raw, expect, _ in cases(ids, cookie):
        got = exchange(lean, raw, expect)
        want = exchange(plain, raw, expect)
        assert_answered_alike(got, want, case)
        assert len(got[0]) == expect, (case, got[0])
        assert got[0][0][0].split()[1] not in ("500", "502"), (case, got[0][0][0])

    wait_for(lambda: lean_lines(lean).get("mixed"), what="the access lines")
    time.sleep(0.3)
    seen = lean_lines(lean, before[lean.port])
    for case, _, _, flags in cases(ids, cookie):
        if flags is not None:
            assert seen.get(case, []) == flags, case
        else:
            assert "1" not in seen.get(case, []), case
    # The plain worker answered nothing in the lean cycle.
    plain_seen = lean_lines(plain, before[plain.port])
    assert plain_seen
    assert {flag for flags in plain_seen.values() for flag in flags} == {"-"}


def test_lean_downloads_are_recorded_with_the_bytes_sent(servers, portal_instance):
    lean, _, ids, cookie = servers
    private = f"/files/{ids['private']}/download"
    before = len(portal_instance.events(file_id=ids["private"]))
    raw = req("rec", private, f"Cookie: {cookie}") + req(
        "rec", private, f"Cookie: {cookie}", "Range: bytes=100-199")
    responses, _ = exchange(lean, raw, 2)
    assert [r[0] for r in responses] == ["HTTP/1.1 200 OK", "HTTP/1.1 206 PARTIAL CONTENT"]
    events = portal_instance.wait_events(before + 2, file_id=ids["private"])
    assert len(events) == before + 2
    assert sorted(e["bytes_sent"] for e in events[before:]) == [100, 70_000]
    assert {e["user_id"] for e in events[before:]} != {None}


def test_behind_a_trusted_proxy_the_lean_cycle_takes_the_forwarded_client(
        portal_instance, servers):
    _, _, ids, _ = servers
    public = f"/files/{ids['public']}/download"
    with Gunicorn(portal_instance, workers=1, env={"PORTAL_TRUSTED_PROXIES": "1",
                                                    **LOG_ENV}) as proxied:
        raw = req("proxied", public, "X-Forwarded-For: 198.51.100.23",
                  "X-Forwarded-Proto: https")
        for _ in range(3):  # the first may go to the view (cold copies); the rest are lean
            responses, _ = exchange(proxied, raw, 1)
            assert responses[0][0] == "HTTP/1.1 200 OK"
        wait_for(lambda: len(lean_lines(proxied).get("proxied", [])) == 3, what="access lines")
        assert lean_lines(proxied)["proxied"][1:] == ["1", "1"]
        events = portal_instance.wait_events(3, file_id=ids["public"],
                                             user_agent="case-proxied")
        # ProxyFix ran in the lean cycle too: the client is the proxy's entry, not 127.0.0.1
        assert {e["client_ip"] for e in events} == {
            clients.truncate_ip("198.51.100.23")}
