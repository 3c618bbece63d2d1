"""PORTAL_SENDFILE=x-accel behind a real nginx configured from deploy/nginx.conf.

The portal authorises and evaluates the preconditions, nginx sends the bytes and answers
Range itself; clients must not be able to tell the difference from direct mode (except for
the multipart boundary, which nginx chooses), and the storage must stay unreachable from
outside.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
import urllib.parse
import urllib.request
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
from servers import (
    PASSWORD,
    Browser,
    Gunicorn,
    Nginx,
    parse_byteranges,
    request,
    require_tool,
    write_random,
)

pytestmark = pytest.mark.slow

NAME = "课程表 2024秋季.pdf"
SIZE = 3 * (1 << 20) + 12345
#: What must be identical whichever way the bytes travel.
SAME = ("ETag", "Last-Modified", "Content-Disposition", "Content-Type", "Content-Length",
        "Content-Range", "Accept-Ranges", "Cache-Control", "X-Content-Type-Options",
        "Repr-Digest", "Vary")


@pytest.fixture(scope="module")
def site(portal_instance, tmp_path_factory):
    """The same instance served twice: gunicorn direct, and nginx -> gunicorn x-accel."""
    require_tool("nginx")
    src = tmp_path_factory.mktemp("src")
    data = write_random(src / NAME, SIZE)
    public_id = portal_instance.add_file(src / NAME, category="教务", access="public")
    secret = write_random(src / "成绩单.pdf", 200_000)  # alice's transcript
    secret_id = portal_instance.add_file(src / "成绩单.pdf", category="成绩",
                                         access="user:alice")
    direct = Gunicorn(portal_instance, workers=1)
    nginx_dir = tmp_path_factory.mktemp("nginx")
    events_log = nginx_dir / "logs" / "portal_events.log"  # deploy/nginx.conf, rendered
    backend = Gunicorn(portal_instance, workers=1, sendfile="x-accel",
                       env={"PORTAL_ANALYTICS_NGINX_LOG": str(events_log)})
    with contextlib.ExitStack() as running:  # everything started is stopped, also on failure
        for server in (direct, backend):  # side by side: each takes seconds to boot
            running.callback(server.stop)
            server.launch()
        direct.wait_ready()
        backend.wait_ready()
        nginx = running.enter_context(Nginx(nginx_dir, backend))
        yield SimpleNamespace(
            data=data, path=f"/files/{public_id}/download", direct=direct.base_url,
            nginx=nginx.base_url, backend=backend.base_url, secret=secret,
            secret_id=secret_id, etag=f'"{hashlib.sha256(data).hexdigest()}"',
            instance=portal_instance, src=src, events_log=events_log, backend_log=backend.log)


def tag(label: str) -> str:
    """A unique User-Agent, so a test finds exactly the events its client caused."""
    return f"{label}-{uuid.uuid4().hex[:8]}"


def both(site, method: str, headers: dict | None = None):
    """The same request through direct gunicorn and through nginx."""
    return (request(site.direct, method, site.path, headers),
            request(site.nginx, method, site.path, headers))


def assert_same_headers(direct_headers, nginx_headers) -> None:
    for name in SAME:
        assert nginx_headers.get_all(name) == direct_headers.get_all(name), name


def test_nginx_sends_what_the_portal_decided(site):
    # The backend really hands off: an empty body and the internal redirect.
    status, headers, body = request(site.backend, "GET", site.path)
    assert status == 200 and body == b""
    assert headers["X-Accel-Redirect"].startswith("/_protected/")
    assert headers["ETag"] == site.etag

    (d_status, d_headers, d_body), (status, headers, body) = both(site, "GET")
    assert (d_status, status) == (200, 200)
    assert body == d_body == site.data
    assert headers["Server"] == "nginx" and "X-Accel-Redirect" not in headers
    assert_same_headers(d_headers, headers)
    assert headers["ETag"] == site.etag

    (d_status, d_headers, d_body), (status, headers, body) = both(site, "HEAD")
    assert (d_status, status, d_body, body) == (200, 200, b"", b"")
    assert_same_headers(d_headers, headers)


def test_single_range_and_if_range(site):
    (_, d_headers, d_body), (status, headers, body) = both(site, "GET",
                                                          {"Range": "bytes=1000-200999"})
    assert status == 206 and body == d_body == site.data[1000:201000]
    assert_same_headers(d_headers, headers)
    assert headers["Content-Range"] == f"bytes 1000-200999/{SIZE}"

    # nginx checks If-Range against the portal's validators, not its own mtime-size ETag.
    last_modified = headers["Last-Modified"]
    for validator in (site.etag, last_modified):
        status, headers, body = request(site.nginx, "GET", site.path,
                                        {"Range": "bytes=-100", "If-Range": validator})
        assert (status, body) == (206, site.data[-100:]), validator
    status, headers, body = request(site.nginx, "GET", site.path,
                                    {"Range": "bytes=-100", "If-Range": '"an-older-version"'})
    assert (status, body) == (200, site.data)
    # If-Match is judged by the portal, which then sends the bytes itself through nginx.
    status, headers, body = request(site.nginx, "GET", site.path,
                                    {"Range": "bytes=10-19", "If-Match": site.etag})
    assert (status, body) == (206, site.data[10:20])
    status, _, _ = request(site.nginx, "GET", site.path, {"If-Match": '"other"'})
    assert status == 412


def test_multi_range_through_nginx(site):
    wanted = [(0, 10), (4096, 70000), (SIZE - 500, SIZE)]
    spec = ",".join(f"{a}-{b - 1}" for a, b in wanted)
    status, headers, body = request(site.nginx, "GET", site.path, {"Range": f"bytes={spec}"})
    assert status == 206
    assert int(headers["Content-Length"]) == len(body)
    assert headers["ETag"] == site.etag
    parts = parse_byteranges(body, headers["Content-Type"])
    assert [p[0]["content-range"] for p in parts] == [
        f"bytes {a}-{b - 1}/{SIZE}" for a, b in wanted]
    assert all(p[0]["content-type"] == "application/pdf" for p in parts)
    assert [p[1] for p in parts] == [site.data[a:b] for a, b in wanted]


def test_conditional_requests_answered_by_the_portal(site):
    for headers in ({"If-None-Match": site.etag}, {"If-None-Match": f"W/{site.etag}"}):
        (d_status, d_headers, _), (status, n_headers, body) = both(site, "GET", headers)
        assert (d_status, status, body) == (304, 304, b"")
        assert n_headers["ETag"] == d_headers["ETag"] == site.etag
    _, headers, _ = request(site.nginx, "GET", site.path)
    status, _, body = request(site.nginx, "GET", site.path,
                              {"If-Modified-Since": headers["Last-Modified"]})
    assert (status, body) == (304, b"")
    # An older copy is modified: the full body, not nginx's idea of the file's mtime.
    status, _, body = request(site.nginx, "GET", site.path,
                              {"If-Modified-Since": "Mon, 01 Jan 2001 00:00:00 GMT"})
    assert (status, body) == (200, site.data)


def test_storage_is_not_reachable_from_outside(site):
    key = hashlib.sha256(site.secret).hexdigest()
    for path in (f"/_protected/{key[:2]}/{key[2:4]}/{key}", f"/_protected/{key[:2]}/",
                 "/_protected/", f"/_protected/../objects/{key[:2]}/{key[2:4]}/{key}",
                 f"/_portal/objects/{key[:2]}/{key[2:4]}/{key}.pdf", "/_portal/grant",
                 f"/_portal/grant/files/{site.secret_id}/download", "/_portal/"):
        status, _, body = request(site.nginx, "GET", path)
        assert status == 404, path
        assert site.secret not in body
    # Nor through the portal without being alice.
    status, _, body = request(site.nginx, "GET", f"/files/{site.secret_id}/download")
    assert status in (302, 404) and site.secret not in body


def test_events_carry_the_bytes_nginx_sent(site):
    """nginx logs each handed-off download with the portal's event key; the portal's
    flusher reads the log and records what nginx really sent."""
    full, part = tag("nginx-full"), tag("nginx-range")
    status, headers, body = request(site.nginx, "GET", site.path, {"User-Agent": full})
    assert status == 200 and body == site.data and "X-Portal-Event" not in headers
    status, _, body = request(site.nginx, "GET", site.path,
                              {"User-Agent": part, "Range": "bytes=100-1099"})
    assert (status, body) == (206, site.data[100:1100])
    [event] = site.instance.wait_events(user_agent=full)
    assert (event["served_from"], event["status"], event["bytes_sent"]) == ("nginx", 200, SIZE)
    [event] = site.instance.wait_events(user_agent=part)
    assert (event["served_from"], event["status"], event["bytes_sent"]) == ("nginx", 206, 1000)
    assert event["ended_at"] is not None
    logged = [json.loads(line) for line in site.events_log.read_text().splitlines()]
    # handed off by the portal (its event key), or sent on a grant (nginx's request id)
    assert event["event_key"] in {e.get("event") or e.get("id") for e in logged}


def test_aborted_download_counts_what_nginx_sent(site):
    curl = require_tool("curl")
    big = write_random(site.src / "讲座录像.mp4", 40 * (1 << 20))
    file_id = site.instance.add_file(site.src / "讲座录像.mp4", category="录播",
                                     access="public")
    agent = tag("nginx-cut")
    proc = subprocess.Popen([curl, "-s", "-o", os.devnull, "-A", agent, "--limit-rate", "1M",
                             f"{site.nginx}/files/{file_id}/download"])
    try:
        time.sleep(1.5)
    finally:
        proc.kill()
        proc.wait()
    [event] = site.instance.wait_events(user_agent=agent)
    assert event["served_from"] == "nginx" and event["status"] == 200
    # what nginx handed to the kernel: more than the client read, far less than the file
    assert 0 < event["bytes_sent"] < len(big) // 2


# ---------------------------------------------------------------------------
# Grants: nginx keeps the portal's decision for a second and sends the file itself
# ---------------------------------------------------------------------------


def portal_requests(site, since: int) -> tuple[int, int]:
    """(grant requests, download requests) in the backend's access log after ``since``."""
    text = site.backend_log.read_text(errors="replace")[since:]
    return text.count('"GET /_portal/grant/'), text.count('"GET /files/') + text.count('"GET /d/')


def granted(site, path: str, headers: dict, expect: int, timeout: float = 10):
    """Repeat the request until nginx answers it on a grant (the portal's first answers warm
    its copies), then return the offset of the backend's log from there on."""
    deadline = time.monotonic() + timeout
    while True:
        status, _, _ = request(site.nginx, "GET", path, headers)
        assert status == expect
        mark = len(site.backend_log.read_text(errors="replace"))
        request(site.nginx, "GET", path, headers)
        time.sleep(0.2)  # gunicorn logs a request a moment after nginx has the answer
        if portal_requests(site, mark) == (0, 0):
            return mark
        assert time.monotonic() < deadline, "nginx never sent the download on a grant"
        time.sleep(0.05)


def test_warm_downloads_never_reach_the_portal(site):
    agent = tag("granted")
    d_status, d_headers, _ = request(site.direct, "GET", site.path, {"User-Agent": agent})
    mark = granted(site, site.path, {"User-Agent": agent}, 200)
    for _ in range(20):
        status, headers, body = request(site.nginx, "GET", site.path, {"User-Agent": agent})
        assert (status, body) == (d_status, site.data)
        assert_same_headers(d_headers, headers)
    grants, downloads = portal_requests(site, mark)
    assert downloads == 0 and grants <= 1  # at most one refresh of the grant (1 s)

    # A range, with and without a matching If-Range: also nginx's alone, same answer.
    for extra in ({"Range": "bytes=1000-200999"},
                  {"Range": "bytes=-100", "If-Range": site.etag},
                  {"Range": "bytes=-100", "If-Range": '"an-older-version"'}):
        wanted = {"User-Agent": agent, **extra}
        d_status, d_headers, d_body = request(site.direct, "GET", site.path, wanted)
        mark = granted(site, site.path, wanted, d_status)
        status, headers, body = request(site.nginx, "GET", site.path, wanted)
        assert (status, body) == (d_status, d_body)
        assert_same_headers(d_headers, headers)
        assert portal_requests(site, mark)[1] == 0

    # Every one of them is recorded from nginx's log: who, what, how many bytes.
    events = site.instance.wait_events(count=27, user_agent=agent)
    from_nginx = [e for e in events if e["served_from"] == "nginx"]
    assert len({e["event_key"] for e in events}) == len(events)
    assert sum(1 for e in from_nginx if e["status"] == 200 and e["bytes_sent"] == SIZE) >= 21
    ranged = [e for e in from_nginx if e["range_header"] == "bytes=1000-200999"]
    assert ranged and all((e["status"], e["bytes_sent"], e["served_ranges"]) ==
                          (206, 200_000, "1000-200999") for e in ranged)


def test_grants_follow_the_access_rule_within_a_second(site):
    site.instance.flask("user", "create", "bob", "--password", PASSWORD, "--group", "CS")
    notes = write_random(site.src / "CS 讲义.pdf", 50_000)
    file_id = site.instance.add_file(site.src / "CS 讲义.pdf", category="课件",
                                     access="group:CS")
    path = f"/files/{file_id}/download"
    browser = Browser(site.nginx).login("bob")
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.jar)
    # the browser's own User-Agent: another one would make the session non-fresh (a new
    # cookie, so no grant), as Flask-Login's session protection does for a changed client
    headers = {"Cookie": cookie, "User-Agent": f"Python-urllib/{urllib.request.__version__}"}
    mark = granted(site, path, headers, 200)
    status, got, body = request(site.nginx, "GET", path, headers)
    assert (status, body) == (200, notes) and got["Cache-Control"].startswith("private")
    assert portal_requests(site, mark) == (0, 0)

    # bob leaves CS (another process: the CLI) while a download manager keeps 6 connections
    # busy; nginx stops within the grant's second (and its refresh), for every connection.
    answers: list[tuple[float, int]] = []
    stop = threading.Event()

    def hammer() -> None:
        while not stop.is_set():
            answers.append((time.monotonic(), request(site.nginx, "GET", path, headers)[0]))

    threads = [threading.Thread(target=hammer) for _ in range(6)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.5)
        csv = site.src / "bob.csv"
        csv.write_text("username,groups\nbob,\n")
        site.instance.flask("user", "import", str(csv))
        left = time.monotonic()
        time.sleep(3.5)
    finally:
        stop.set()
        for thread in threads:
            thread.join()
    assert any(status == 200 for at, status in answers if at < left)
    late = [(round(at - left, 2), status) for at, status in answers if at > left + 2.0]
    assert late and all(status == 404 for _, status in late), late[:20]
    status, _, body = request(site.nginx, "GET", path, headers)
    assert status == 404 and notes not in body
    [event] = [e for e in site.instance.wait_events(file_id=file_id)
               if e["served_from"] == "nginx" and e["status"] == 200][:1]
    assert event["user_id"] is not None and event["bytes_sent"] == len(notes)


def test_signed_links_are_granted_too(site):
    """A download manager's signed link (/d/<token>/<name>) is sent by nginx on a grant as
    well, recorded as a link download, and stops within the grant's second once revoked."""
    browser = Browser(site.nginx).login("alice")
    link = browser.mint_link(site.secret_id)
    path = urllib.parse.urlsplit(link["url"]).path
    agent = tag("link-grant")
    mark = granted(site, path, {"User-Agent": agent}, 200)
    for extra, want in (({}, (200, site.secret)),
                        ({"Range": "bytes=100-199"}, (206, site.secret[100:200])),
                        ({"Range": "bytes=-10", "If-Range": '"x"'}, (200, site.secret))):
        wanted = {"User-Agent": agent, **extra}
        d_status, d_headers, d_body = request(site.direct, "GET", path, wanted)
        status, headers, body = request(site.nginx, "GET", path, wanted)
        assert (status, body) == (d_status, d_body) == want
        assert_same_headers(d_headers, headers)
    assert portal_requests(site, mark)[1] == 0  # nginx alone sent them

    events = [e for e in site.instance.wait_events(count=4, user_agent=agent)
              if e["served_from"] == "nginx"]
    assert events and all(e["via_link"] and e["link_id"] and e["user_id"] is not None
                          for e in events)

    browser.revoke_link(link["url"])
    revoked = time.monotonic()
    deadline = revoked + 5
    while request(site.nginx, "GET", path, {"User-Agent": agent})[0] != 403:
        assert time.monotonic() < deadline, "nginx kept sending a revoked link"
        time.sleep(0.05)
    assert time.monotonic() - revoked < 2.5  # the grant's second, its refresh, coherence
    status, _, body = request(site.nginx, "GET", path, {"User-Agent": agent})
    assert status == 403 and site.secret not in body


def test_logout_is_final_through_nginx_too(site):
    """A logout answers once the grants nginx made before it have expired: the old cookie,
    replayed right after the answer, gets no download from a grant nginx kept."""
    site.instance.flask("user", "create", "carol", "--password", PASSWORD)
    notes = write_random(site.src / "signed-in only.pdf", 40_000)
    file_id = site.instance.add_file(site.src / "signed-in only.pdf", access="login")
    path = f"/files/{file_id}/download"
    browser = Browser(site.nginx).login("carol")
    cookie = "; ".join(f"{c.name}={c.value}" for c in browser.jar)
    headers = {"Cookie": cookie, "User-Agent": f"Python-urllib/{urllib.request.__version__}"}
    granted(site, path, headers, 200)
    # Log out just after nginx took a fresh grant, so that it would still hold it for most
    # of its second after an answer that did not wait for it.
    deadline = time.monotonic() + 60
    while True:
        mark = len(site.backend_log.read_text(errors="replace"))
        assert request(site.nginx, "GET", path, headers)[:3:2] == (200, notes)
        time.sleep(0.02)
        if portal_requests(site, mark)[0]:
            break
        assert time.monotonic() < deadline, "nginx never refreshed its grant"
    body = urllib.parse.urlencode({"csrf_token": browser.csrf}).encode()
    status, _, _ = request(site.nginx, "POST", "/logout", body=body, headers={
        **headers, "Content-Type": "application/x-www-form-urlencoded"})
    assert status == 302
    replays = [request(site.nginx, "GET", path, headers)[0] for _ in range(10)]
    assert 200 not in replays, replays


def test_importer_follows_the_log_until_stopped(site, tmp_path):
    """``flask analytics flush --follow`` (PORTAL_ANALYTICS_NGINX_IMPORT=external): records
    the downloads nginx logs as they come, and stops cleanly on SIGTERM."""
    log = tmp_path / "portal_events.log"
    log.write_text("")
    env = {**site.instance.env, "PORTAL_ANALYTICS_NGINX_LOG": str(log),
           "PORTAL_ANALYTICS_NGINX_IMPORT": "external"}
    cmd = [str(Path(sys.executable).with_name("flask")), "--app", "wsgi", "analytics", "flush",
           "--follow", "--interval", "0.2"]
    proc = subprocess.Popen(cmd, cwd=Path(__file__).resolve().parents[2], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        request_id = uuid.uuid4().hex
        size = len(site.data)
        with open(log, "a") as fh:
            # the module's first file and version: the public one
            fh.write(json.dumps({"grant": f"- 1 1 {size}", "id": request_id, "status": 200,
                                 "bytes": size, "time": "2026-11-30T02:00:00+00:00",
                                 "seconds": "0.5", "range": "", "ip": "10.0.0.1",
                                 "ua": "follow-test", "referer": ""}) + "\n")
        [event] = site.instance.wait_events(event_key=request_id)
        assert (event["served_from"], event["bytes_sent"]) == ("nginx", size)
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=15)
    assert proc.returncode == 0, out


# ---------------------------------------------------------------------------
# Security headers (portal/security.py): nginx adds only what an answer lacks
# ---------------------------------------------------------------------------

PAGE_HEADERS = ("Content-Security-Policy", "X-Content-Type-Options", "X-Frame-Options",
                "Referrer-Policy")


def test_security_headers_once_through_nginx(site):
    from portal.security import PAGE_CSP

    # A page: the portal's headers, each exactly once (no second copy from nginx).
    _, d_headers, _ = request(site.direct, "GET", "/login")
    status, headers, _ = request(site.nginx, "GET", "/login")
    assert status == 200
    for name in PAGE_HEADERS:
        assert headers.get_all(name) == d_headers.get_all(name) and len(
            d_headers.get_all(name)) == 1, name
    # nginx's own answer (a 404 under /_portal/) gets the page headers from nginx.
    status, headers, _ = request(site.nginx, "GET", "/_portal/")
    assert status == 404
    assert headers.get_all("Content-Security-Policy") == [PAGE_CSP]
    assert headers.get_all("X-Frame-Options") == ["DENY"]
    assert headers.get_all("Referrer-Policy") == ["strict-origin-when-cross-origin"]
    assert "Strict-Transport-Security" not in headers  # plain HTTP: no HSTS
    # A PDF, handed off with X-Accel-Redirect or sent on a grant: its nosniff once, no page
    # CSP (the PDF viewer), and nginx's framing and referrer defaults.
    agent = tag("headers")
    granted(site, site.path, {"User-Agent": agent}, 200)
    for extra in ({"User-Agent": agent}, {"User-Agent": agent, "If-Match": site.etag}):
        status, headers, _ = request(site.nginx, "GET", site.path, extra)
        assert status == 200
        assert headers.get_all("X-Content-Type-Options") == ["nosniff"]
        assert "Content-Security-Policy" not in headers
        assert headers.get_all("X-Frame-Options") == ["DENY"]
        assert headers.get_all("Referrer-Policy") == ["strict-origin-when-cross-origin"]
    # A signed link (through X-Accel-Redirect, which drops the portal's headers but those
    # the internal location re-adds): no-referrer, once; and its bad-link page too.
    link = Browser(site.nginx).login("alice").mint_link(site.secret_id)
    path = urllib.parse.urlsplit(link["url"]).path
    status, headers, body = request(site.nginx, "GET", path)
    assert (status, body) == (200, site.secret)
    assert headers.get_all("Referrer-Policy") == ["no-referrer"]
    assert headers.get_all("X-Content-Type-Options") == ["nosniff"]
    status, headers, _ = request(site.nginx, "GET", path.replace("/d/", "/d/x"))
    assert status == 403
    assert headers.get_all("Referrer-Policy") == ["no-referrer"]
    assert headers.get_all("Content-Security-Policy") == [PAGE_CSP]
