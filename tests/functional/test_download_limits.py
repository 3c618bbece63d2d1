"""PORTAL_DOWNLOAD_LIMITS and the admission budget with a real gunicorn, real clients
(aria2c, wget, curl), a real nginx (x-accel), a SIGKILLed worker and a stopped Redis.

A student is limited to 4 connections: download managers asking for 8 or 16 get 429 with
Retry-After on the rest, back off and still finish with the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace

import pytest
import redis
from servers import (
    Browser,
    Gunicorn,
    Nginx,
    PrivateRedis,
    make_instance,
    request,
    require_tool,
    sha256_file,
    stop_process,
    write_random,
)

from portal.download import leases
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

MiB = 1 << 20
NAME = "期末复习录像.bin"
LIMITS = {"student": {"connections": 4}, "anonymous": {"connections": 4}}


def tag(label: str) -> str:
    """A unique User-Agent per client run."""
    return f"{label}-{uuid.uuid4().hex[:8]}"


def run(cmd: list, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a client to the end; fail with its output when it does not succeed."""
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, (f"{cmd[0]} exited {result.returncode}: "
                                    f"{result.stdout[-1500:]} {result.stderr[-1500:]}")
    return result


def slow_curls(url: str, count: int, cookie: str | None = None) -> list[subprocess.Popen]:
    """``count`` curl downloads at 64 KiB/s each, holding their connections open."""
    curl = require_tool("curl")
    extra = ["-b", cookie] if cookie else []
    return [subprocess.Popen([curl, "-sS", "-o", os.devnull, "--limit-rate", "64K", *extra,
                              url]) for _ in range(count)]


def held(client: redis.Redis, person: str) -> int:
    """Live leases of a person in Redis."""
    key = leases.conn_key(person)
    client.zremrangebyscore(key, "-inf", time.time())
    return client.zcard(key)


def node_held(client: redis.Redis) -> int:
    """Live leases of this node (the only one here)."""
    key = leases.node_key(socket.gethostname())
    client.zremrangebyscore(key, "-inf", time.time())
    return client.zcard(key)


@pytest.fixture(scope="module")
def site(tmp_path_factory, redis_url):
    """An instance with a 24 MiB recording (public and login-only) and student alice."""
    instance = make_instance(tmp_path_factory.mktemp("limits"), redis_url,
                             PORTAL_DOWNLOAD_LIMITS=json.dumps(LIMITS))
    instance.create_user("alice")
    src = tmp_path_factory.mktemp("src")
    data = write_random(src / NAME, 24 * MiB)
    small = write_random(src / "small.txt", 2000)
    return SimpleNamespace(
        instance=instance, path=src / NAME, size=len(data),
        sha256=hashlib.sha256(data).hexdigest(), small=hashlib.sha256(small).hexdigest(),
        public_id=instance.add_file(src / NAME, title="录像", access="public"),
        login_id=instance.add_file(src / NAME, title="录像(校内)", access="login"),
        small_id=instance.add_file(src / "small.txt", title="small", access="public"))


@pytest.fixture(scope="module")
def server(site):
    """gunicorn, 2 workers, direct sendfile."""
    with Gunicorn(site.instance) as gunicorn:
        yield gunicorn


@pytest.fixture(scope="module")
def alice(server) -> Browser:
    """Alice signed in."""
    return Browser(server.base_url).login("alice")


def alice_id(site) -> int:
    """Alice's user id."""
    import sqlite3

    with sqlite3.connect(site.instance.db_path) as conn:
        return conn.execute("SELECT id FROM users WHERE username = 'alice'").fetchone()[0]


def cookie_file(browser: Browser, path: Path) -> Path:
    """The browser's session cookie in curl's / wget's cookie-file format."""
    lines = ["# Netscape HTTP Cookie File"]
    for c in browser.jar:
        lines.append("\t".join(["127.0.0.1", "FALSE", "/", "FALSE", "0", c.name, c.value]))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_the_fifth_connection_gets_429_with_retry_after(server, site):
    url = f"{server.base_url}/files/{site.public_id}/download"
    r = redis.Redis.from_url(site.instance.env["PORTAL_REDIS_URL"])
    holders = slow_curls(url, 4)
    try:
        wait_for(lambda: held(r, "ip:127.0.0.1") == 4, what="4 leases")
        refused_agent = tag("refused")
        status, headers, body = request(server.base_url, "GET",
                                        f"/files/{site.public_id}/download",
                                        headers={"User-Agent": refused_agent})
        assert status == 429 and int(headers["Retry-After"]) >= 1, (status, body[:200])
        # small files, pages and HEAD still answer (HEAD sends no body: not counted)
        assert request(server.base_url, "HEAD", f"/files/{site.public_id}/download")[0] == 200
        assert request(server.base_url, "GET", "/login")[0] == 200
    finally:
        for proc in holders:
            stop_process(proc)
    wait_for(lambda: held(r, "ip:127.0.0.1") == 0, what="the leases released on close")
    agent = tag("after")
    assert request(server.base_url, "GET", f"/files/{site.small_id}/download",
                   headers={"User-Agent": agent})[0] == 200
    site.instance.wait_events(user_agent=agent)  # recorded; the refusal never is
    assert site.instance.events(user_agent=refused_agent) == []


@pytest.mark.parametrize("connections", [16, 8])
def test_aria2c_finishes_under_a_limit_of_four(server, site, alice, tmp_path, connections):
    aria2c = require_tool("aria2c")
    url = alice.mint_link(site.login_id)["url"]
    agent = tag(f"aria2c-x{connections}")
    r = redis.Redis.from_url(site.instance.env["PORTAL_REDIS_URL"])
    refused = int(r.hget(leases.STATS_KEY, "refused_person") or 0)
    # Nothing to pass: aria2c drops each connection refused with 429 and fetches every
    # segment over the ones it was given (docs/limits.md). Its overall rate is capped so
    # that its connections stay open together: on loopback a fast machine fetches 24 MiB
    # before aria2c has opened its fifth connection, and nothing would be refused.
    run([aria2c, f"-x{connections}", f"-s{connections}", "-k1M", "-d", tmp_path, "-q",
         "--summary-interval=0", "--max-overall-download-limit=12M", "-U", agent,
         "--auto-file-renaming=false", url])
    assert sha256_file(tmp_path / NAME) == site.sha256
    events = site.instance.wait_events(user_agent=agent)
    assert sum(e["bytes_sent"] for e in events) >= site.size
    # it really was held to 4: the others were refused (429) and retried
    assert int(r.hget(leases.STATS_KEY, "refused_person") or 0) > refused
    assert held(r, f"u:{alice_id(site)}") == 0


def test_wget_and_curl_resume_under_the_limit(server, site, alice, tmp_path):
    wget, curl = require_tool("wget"), require_tool("curl")
    url = f"{server.base_url}/files/{site.login_id}/download"
    cookies = cookie_file(alice, tmp_path / "cookies.txt")
    out = tmp_path / "wget.bin"
    out.write_bytes(site.path.read_bytes()[: 5 * MiB])
    run([wget, "-q", "-c", "--load-cookies", cookies, "-O", out, url])
    assert sha256_file(out) == site.sha256
    out = tmp_path / "curl.bin"
    out.write_bytes(site.path.read_bytes()[: 7 * MiB])
    run([curl, "-sS", "--fail", "-C", "-", "-b", cookies, "-o", out, url])
    assert sha256_file(out) == site.sha256


def web_worker(master: int) -> int:
    """The gunicorn worker under this master (not the analytics flusher beside it)."""
    for pid in subprocess.check_output([require_tool("pgrep"), "-P", str(master)]).split():
        cmdline = Path(f"/proc/{int(pid)}/cmdline").read_bytes()
        if b"flask" not in cmdline:
            return int(pid)
    raise AssertionError("no gunicorn worker found")


def test_a_killed_workers_leases_expire(site, tmp_path):
    """SIGKILL the only worker while it holds 4 connections: they stop counting once the
    lease runs out (3 s here), not never."""
    with Gunicorn(site.instance, workers=1, env={"PORTAL_DOWNLOAD_LEASE_SECONDS": "3"}) as g:
        r = redis.Redis.from_url(site.instance.env["PORTAL_REDIS_URL"])
        url = f"{g.base_url}/files/{site.public_id}/download"
        holders = slow_curls(url, 4)
        try:
            wait_for(lambda: held(r, "ip:127.0.0.1") == 4, what="4 leases")
            os.kill(web_worker(g.proc.pid), signal.SIGKILL)
            wait_for(lambda: held(r, "ip:127.0.0.1") == 0, what="the dead worker's leases expire")
        finally:
            for proc in holders:
                stop_process(proc)
        wait_for(lambda: request(g.base_url, "GET", "/healthz")[0] == 200, what="a new worker")
        status, _, body = request(g.base_url, "GET", f"/files/{site.public_id}/download")
        assert status == 200 and hashlib.sha256(body).hexdigest() == site.sha256


def test_a_stopped_server_ends_the_leases_of_what_it_was_sending(site):
    """gunicorn stopped while sending three downloads: its worker ends their leases on the
    way out, so a restarted node does not find its budget taken until they expire."""
    r = redis.Redis.from_url(site.instance.env["PORTAL_REDIS_URL"])
    forget_other_servers_leases(r)
    with Gunicorn(site.instance, workers=1) as g:
        holders = slow_curls(f"{g.base_url}/files/{site.public_id}/download", 3)
        try:
            wait_for(lambda: held(r, "ip:127.0.0.1") == 3, what="3 leases")
        except BaseException:
            for proc in holders:
                stop_process(proc)
            raise
    try:
        assert held(r, "ip:127.0.0.1") == 0 and node_held(r) == 0
    finally:
        for proc in holders:
            stop_process(proc)


def test_redis_down_counts_per_worker_and_never_fails(tmp_path):
    with PrivateRedis(tmp_path / "redis") as private:
        instance = make_instance(tmp_path / "portal", private.url,
                                 PORTAL_DOWNLOAD_LIMITS=json.dumps(LIMITS))
        data = write_random(tmp_path / "f.bin", 32 * MiB)  # more than the socket buffers hold
        file_id = instance.add_file(tmp_path / "f.bin", title="f", access="public")
        with Gunicorn(instance, workers=1) as g:
            url = f"{g.base_url}/files/{file_id}/download"
            assert request(g.base_url, "GET", f"/files/{file_id}/download")[0] == 200
            private.stop()
            status, _, body = request(g.base_url, "GET", f"/files/{file_id}/download")
            assert status == 200 and body == data
            holders = slow_curls(url, 4)
            try:
                time.sleep(1.5)  # all four started on the one worker
                status, headers, _ = request(g.base_url, "GET", f"/files/{file_id}/download")
                assert status == 429 and headers["Retry-After"]
            finally:
                for proc in holders:
                    stop_process(proc)
            wait_for(lambda: request(g.base_url, "GET", f"/files/{file_id}/download")[0]
                     == 200, what="the worker's own count released")




def timed_download(url: str, out: Path, *extra: str) -> float:
    """Seconds curl took to fetch ``url`` into ``out``."""
    curl = require_tool("curl")
    start = time.monotonic()
    run([curl, "-sS", "--fail", "-o", out, *extra, url])
    return time.monotonic() - start


RATE = 4 * MiB


def test_direct_mode_paces_a_person_to_their_rate(site, tmp_path):
    """Loose functional check (the bench measures it closely): one connection, then two at
    once, each time the person's bytes per second near the limit."""
    rules = json.dumps({"anonymous": {"rate": "4MB"}})
    with Gunicorn(site.instance, env={"PORTAL_DOWNLOAD_LIMITS": rules}) as g:
        url = f"{g.base_url}/files/{site.public_id}/download"
        seconds = timed_download(url, tmp_path / "one.bin")
        assert sha256_file(tmp_path / "one.bin") == site.sha256
        assert 0.8 <= site.size / seconds / RATE <= 1.15, site.size / seconds
        curl = require_tool("curl")
        half = site.size // 2
        start = time.monotonic()
        both = [subprocess.Popen([curl, "-sS", "--fail", "-r", span, "-o", tmp_path / name, url])
                for span, name in ((f"0-{half - 1}", "a"), (f"{half}-", "b"))]
        assert [proc.wait(120) for proc in both] == [0, 0]
        seconds = time.monotonic() - start
        joined = (tmp_path / "a").read_bytes() + (tmp_path / "b").read_bytes()
        assert hashlib.sha256(joined).hexdigest() == site.sha256
        # two connections share the one rate: together still about 4 MB/s, not 8
        assert 0.8 <= site.size / seconds / RATE <= 1.2, site.size / seconds


def test_past_the_admission_budget_new_large_downloads_get_503(site):
    env = {"PORTAL_DOWNLOAD_LIMITS": "{}", "PORTAL_DOWNLOAD_ADMISSION_CONNECTIONS": "2"}
    with Gunicorn(site.instance, env=env) as g:
        url = f"{g.base_url}/files/{site.public_id}/download"
        r = redis.Redis.from_url(site.instance.env["PORTAL_REDIS_URL"])
        holders = slow_curls(url, 2)
        try:
            wait_for(lambda: node_held(r) == 2, what="2 connections on the node")
            status, headers, _ = request(g.base_url, "GET", f"/files/{site.public_id}/download")
            assert status == 503 and int(headers["Retry-After"]) >= 1
            # small files, pages and sign-in still answer; those downloading keep going
            status, _, body = request(g.base_url, "GET", f"/files/{site.small_id}/download")
            assert status == 200 and hashlib.sha256(body).hexdigest() == site.small
            assert request(g.base_url, "GET", "/login")[0] == 200
            assert request(g.base_url, "GET", "/")[0] in (200, 302)
            assert all(proc.poll() is None for proc in holders)
        finally:
            for proc in holders:
                stop_process(proc)
        wait_for(lambda: node_held(r) == 0, what="the node's connections released")
        status, _, body = request(g.base_url, "GET", f"/files/{site.public_id}/download")
        assert status == 200 and hashlib.sha256(body).hexdigest() == site.sha256


def test_nginx_carries_the_rate_and_the_portal_counts(site, tmp_path_factory):
    """x-accel: the grant leaves a limited person's download to the view, which counts the
    connection and hands nginx X-Accel-Limit-Rate; nginx sends at that rate."""
    require_tool("nginx")
    nginx_dir = tmp_path_factory.mktemp("nginx")
    rules = json.dumps({"anonymous": {"connections": 2, "rate": "4MB"}})
    backend = Gunicorn(site.instance, workers=1, sendfile="x-accel", env={
        "PORTAL_DOWNLOAD_LIMITS": rules,
        "PORTAL_ANALYTICS_NGINX_LOG": str(nginx_dir / "logs" / "portal_events.log")})
    with backend, Nginx(nginx_dir, backend) as nginx:
        url = f"{nginx.base_url}/files/{site.public_id}/download"
        out = tmp_path_factory.mktemp("out") / "x.bin"
        seconds = timed_download(url, out, "-D", str(out) + ".head")
        assert sha256_file(out) == site.sha256
        assert 0.8 <= site.size / seconds / RATE <= 1.15, site.size / seconds
        head = Path(str(out) + ".head").read_text().lower()
        assert head.startswith("http/1.1 200") and "x-accel" not in head  # nginx's own
        r = redis.Redis.from_url(site.instance.env["PORTAL_REDIS_URL"])
        r.delete(leases.conn_key("ip:127.0.0.1"))  # the finished one's lease runs on
        holders = slow_curls(url, 2)
        try:
            wait_for(lambda: held(r, "ip:127.0.0.1") == 2, what="2 leases")
            status, headers, _ = request(nginx.base_url, "GET",
                                         f"/files/{site.public_id}/download")
            assert status == 429 and int(headers["Retry-After"]) >= 1
        finally:
            for proc in holders:
                stop_process(proc)


def test_curl_and_wget_wait_for_a_free_connection_when_told_to(server, site, tmp_path):
    """All four connections taken: curl --retry honours Retry-After, wget retries with
    --retry-on-http-error=429; both finish byte-identical once a connection frees up."""
    curl, wget = require_tool("curl"), require_tool("wget")
    url = f"{server.base_url}/files/{site.public_id}/download"
    r = redis.Redis.from_url(site.instance.env["PORTAL_REDIS_URL"])
    for name, cmd in (("curl.bin", [curl, "-sS", "--fail", "--retry", "10", "-o"]),
                      ("wget.bin", [wget, "-q", "--retry-on-http-error=429", "--waitretry=1",
                                    "-t", "20", "-O"])):
        holders = slow_curls(url, 4)
        try:
            wait_for(lambda: held(r, "ip:127.0.0.1") == 4, what="4 leases")
            client = subprocess.Popen([*cmd, str(tmp_path / name), url])
            time.sleep(3)
            assert client.poll() is None, "the client gave up instead of waiting"
        finally:
            for proc in holders:
                stop_process(proc)
        assert client.wait(60) == 0
        assert sha256_file(tmp_path / name) == site.sha256



def forget_other_servers_leases(client: redis.Redis) -> None:
    """The leases earlier tests' servers left behind (handed to an nginx whose log nobody
    reads now, they would count until they expire)."""
    client.delete(leases.conn_key("ip:127.0.0.1"), leases.conn_key("ip:127.0.0.2"),
                  leases.node_key(socket.gethostname()))


@pytest.fixture(scope="module")
def behind_nginx(site, tmp_path_factory):
    """The deploy nginx in x-accel mode before 2 gunicorn workers (its event log read by
    the flusher, the client's address taken from X-Forwarded-For), with an admission
    budget of 6 large downloads."""
    require_tool("nginx")
    nginx_dir = tmp_path_factory.mktemp("nginx-limits")
    backend = Gunicorn(site.instance, sendfile="x-accel", env={
        "PORTAL_DOWNLOAD_ADMISSION_CONNECTIONS": "6", "PORTAL_TRUSTED_PROXIES": "1",
        "PORTAL_ANALYTICS_NGINX_LOG": str(nginx_dir / "logs" / "portal_events.log")})
    with backend, Nginx(nginx_dir, backend) as nginx:
        yield nginx


def test_aria2c_wget_and_curl_through_nginx_finish_under_the_limit(site, behind_nginx,
                                                                  tmp_path):
    """nginx sends the bytes, so the portal never sees a segment end. A segment's next
    request on the same connection takes its lease over (X-Portal-Connection), and nginx's
    log line ends the lease when the download is over: without either, the leases of
    finished segments held the four connections and aria2c failed (exit 22)."""
    aria2c = require_tool("aria2c")
    url = f"{behind_nginx.base_url}/files/{site.public_id}/download"
    r = redis.Redis.from_url(site.instance.env["PORTAL_REDIS_URL"])
    forget_other_servers_leases(r)
    refused = int(r.hget(leases.STATS_KEY, "refused_person") or 0)
    for run_no, connections in enumerate((16, 8)):
        out = tmp_path / str(run_no)
        cmd = [aria2c, f"-x{connections}", f"-s{connections}", "-k1M", "-d", out, "-q",
               "--max-tries=20", "--summary-interval=0", "--max-overall-download-limit=12M",
               "--auto-file-renaming=false", "-U", tag("aria2c-nginx"), url]
        first = subprocess.run([str(c) for c in cmd], capture_output=True, timeout=120,
                               check=False)
        if first.returncode == 22:
            # aria2c gives up on 429s. With both cores busy (stress-ng) the flusher read a
            # finished segment's log line later than the portal's wait, once in 4 runs:
            # the person does what docs/limits.md says, runs it again with -c. Leases
            # that nginx's log did not end would refuse this run too.
            run([cmd[0], "-c", *cmd[1:]])
        else:
            assert first.returncode == 0, first.stderr
        assert sha256_file(out / NAME) == site.sha256
        # the log's lines end the leases within seconds, not after the 30 s lease
        wait_for(lambda: held(r, "ip:127.0.0.1") == 0, what="the leases ended by nginx's log")
    assert int(r.hget(leases.STATS_KEY, "refused_person") or 0) > refused
    # and the single-connection clients resume through nginx under the same limit
    for name, cmd in (("wget.bin", [require_tool("wget"), "-q", "-c", "-O"]),
                      ("curl.bin", [require_tool("curl"), "-sS", "--fail", "-C", "-", "-o"])):
        partial = tmp_path / name
        partial.write_bytes(site.path.read_bytes()[: 5 * MiB])
        run([*cmd, partial, url])
        assert sha256_file(partial) == site.sha256


def test_past_the_admission_budget_nginx_answers_503_and_pages_go_on(site, behind_nginx):
    """Six large downloads held (two people with three connections each): one more of
    either, within their limit of four, gets 503 with Retry-After through nginx, while
    pages, sign-in and a small file answer and the six keep going; once they end (nginx's
    log ends their leases) it is admitted again."""
    base = behind_nginx.base_url
    url = f"{base}/files/{site.public_id}/download"
    r = redis.Redis.from_url(site.instance.env["PORTAL_REDIS_URL"])
    forget_other_servers_leases(r)
    # two people (addresses) of the portal's own: 127.0.0.1 and 127.0.0.2
    holders = slow_curls(url, 3) + [
        subprocess.Popen([require_tool("curl"), "-sS", "-o", os.devnull, "--limit-rate", "64K",
                          "--interface", "127.0.0.2", url])
        for _ in range(3)]
    try:
        wait_for(lambda: node_held(r) == 6, what="6 connections on the node")
        status, headers, _ = request(base, "GET", f"/files/{site.public_id}/download")
        assert status == 503 and int(headers["Retry-After"]) >= 1
        status, _, body = request(base, "GET", f"/files/{site.small_id}/download")
        assert status == 200 and hashlib.sha256(body).hexdigest() == site.small
        assert request(base, "GET", "/login")[0] == 200
        assert all(proc.poll() is None for proc in holders)
    finally:
        for proc in holders:
            stop_process(proc)
    wait_for(lambda: node_held(r) == 0, what="the node's connections ended by nginx's log")
    status, _, body = request(base, "GET", f"/files/{site.public_id}/download")
    assert status == 200 and hashlib.sha256(body).hexdigest() == site.sha256
