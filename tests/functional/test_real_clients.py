"""The download engine with a real gunicorn and the real clients students use.

curl, wget and aria2c are interrupted half-way and resumed; the result must be the same bytes.
The server's side is checked through the DownloadEvent rows it records (bytes really sent)
and through requests written by hand where a client library would hide the wire.
"""

from __future__ import annotations

import hashlib
import signal
import subprocess
import time
import uuid
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import quote, urlsplit

import pytest
from servers import (
    Browser,
    Gunicorn,
    parse_byteranges,
    raw_request,
    request,
    require_tool,
    sha256_file,
    stop_process,
    write_random,
)

from tests.helpers import wait_for

pytestmark = pytest.mark.slow

MiB = 1 << 20
LECTURE = "高等数学讲座录像.mp4"


def tag(label: str) -> str:
    """A unique User-Agent, so a test finds exactly the events its client caused."""
    return f"{label}-{uuid.uuid4().hex[:8]}"


def interrupt_when(proc: subprocess.Popen, path: Path, min_bytes: int,
                   sig: int = signal.SIGKILL) -> int:
    """Stop a download client with ``sig`` once ``path`` holds ``min_bytes``; return the size
    it left on disk."""
    try:
        wait_for(lambda: proc.poll() is not None
                 or (path.exists() and path.stat().st_size >= min_bytes),
                 what=f"{min_bytes} bytes in {path.name}")
        assert proc.poll() is None, f"the client ended ({proc.returncode}) before the interrupt"
    finally:
        stop_process(proc, sig)
    return path.stat().st_size


def run(cmd: list, cwd: Path | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    """Run a client to the end; fail with its output when it does not succeed."""
    result = subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True,
                            timeout=timeout, check=False)
    assert result.returncode == 0, f"{cmd[0]} exited {result.returncode}: {result.stderr[-2000:]}"
    return result


def status_line(header_dump: Path) -> tuple[int, dict[str, str]]:
    """Status and headers (lower-case names) of the last response in a ``curl -D`` file."""
    text = header_dump.read_bytes().decode("latin-1")  # read_text() would drop the CRs
    blocks = [b for b in text.split("\r\n\r\n") if b.strip()]
    lines = blocks[-1].split("\r\n")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(lines[0].split()[1]), headers


def requested_bytes(events: list[dict], size: int) -> int:
    """How many distinct bytes of the file these responses covered: the ranges asked for,
    and for a response without Range the bytes it really sent before the client hung up."""
    spans = []
    for event in events:
        if event["range_header"]:
            for spec in event["range_header"].removeprefix("bytes=").split(","):
                first, _, last = spec.strip().partition("-")
                if not first:  # suffix range: the last N bytes
                    spans.append((size - int(last), size))
                else:
                    spans.append((int(first), int(last) + 1 if last else size))
        elif event["bytes_sent"] > 0:
            spans.append((0, event["bytes_sent"]))
    covered, end = 0, 0
    for start, stop in sorted(spans):
        start = max(start, end)
        if stop > start:
            covered += stop - start
            end = stop
    return covered


#: How far the recorded count of an aborted download may be from what the client wrote to
#: disk: the server counts what the client's TCP acknowledged, which includes what still sat
#: in the client's receive buffer when it was killed (on loopback, a few MiB at most).
ABORT_TOLERANCE = 4 * MiB


@pytest.fixture(scope="module")
def lecture(portal_instance, tmp_path_factory):
    """A 40 MiB recording with a Chinese name, published twice: public, and login-only."""
    path = tmp_path_factory.mktemp("lecture") / LECTURE
    data = write_random(path, 40 * MiB)
    public_id = portal_instance.add_file(path, title="高等数学讲座录像", category="公开课",
                                         access="public")
    login_id = portal_instance.add_file(path, title="高等数学讲座录像(校内)",
                                        category="课程资料", access="login")
    return SimpleNamespace(path=path, size=len(data), sha256=hashlib.sha256(data).hexdigest(),
                           data=data, public_id=public_id, login_id=login_id)


@pytest.fixture(scope="module")
def alice(portal_server) -> Browser:
    """Alice signed in through the login form."""
    return Browser(portal_server.base_url).login("alice")


def test_curl_resumes_a_public_download(portal_server, lecture, tmp_path):
    curl = require_tool("curl")
    instance = portal_server.instance
    url = f"{portal_server.base_url}/files/{lecture.public_id}/download"
    out = tmp_path / LECTURE

    first = subprocess.Popen([curl, "-sS", "-A", tag("curl-cut"), "--limit-rate", "8M",
                              "-o", str(out), url])
    partial = interrupt_when(first, out, 8 * MiB)
    assert 0 < partial < lecture.size

    agent = tag("curl-resume")
    run([curl, "-sS", "--fail", "-C", "-", "-A", agent, "-o", out, url])
    assert out.stat().st_size == lecture.size
    assert sha256_file(out) == lecture.sha256
    [event] = instance.wait_events(user_agent=agent)
    assert (event["status"], event["range_header"], event["bytes_sent"]) == (
        206, f"bytes={partial}-", lecture.size - partial)


def test_wget_resumes_a_signed_link_without_cookies(portal_server, lecture, alice, tmp_path):
    wget = require_tool("wget")
    instance = portal_server.instance
    # Without a session the file itself is closed: the link is what lets wget in.
    status, headers, _ = request(portal_server.base_url, "GET",
                                 f"/files/{lecture.login_id}/download")
    assert status == 302 and "/login" in headers["Location"]
    link = alice.mint_link(lecture.login_id)
    assert urlsplit(link["url"]).path.endswith("/" + quote(LECTURE))

    out = tmp_path / LECTURE  # wget names the file after the link's last segment
    first = subprocess.Popen([wget, "-q", "-U", tag("wget-cut"), "--limit-rate=8m", link["url"]],
                             cwd=tmp_path)
    partial = interrupt_when(first, out, 8 * MiB)
    assert 0 < partial < lecture.size

    agent = tag("wget-resume")
    run([wget, "-q", "-c", "-U", agent, link["url"]], cwd=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [LECTURE]
    assert sha256_file(out) == lecture.sha256
    [event] = instance.wait_events(user_agent=agent)
    assert event["via_link"] and event["file_id"] == lecture.login_id
    assert (event["status"], event["range_header"], event["bytes_sent"]) == (
        206, f"bytes={partial}-", lecture.size - partial)


def test_aria2c_resumes_eight_connections(portal_server, lecture, alice, tmp_path):
    aria2c = require_tool("aria2c")
    instance = portal_server.instance
    url = alice.mint_link(lecture.login_id)["url"]
    control = tmp_path / f"{LECTURE}.aria2"
    common = [aria2c, "-x8", "-s8", "-k1M", "-d", tmp_path, "--summary-interval=0", "-q",
              "--auto-file-renaming=false", "--allow-overwrite=false"]

    cut = tag("aria2c-cut")
    first = subprocess.Popen([str(c) for c in
                              [*common, "-U", cut, "--max-overall-download-limit=8M", url]])
    try:
        wait_for(lambda: control.exists() or first.poll() is not None, what="aria2c to start")
        time.sleep(1.5)
        assert first.poll() is None, "aria2c finished before it could be interrupted"
    finally:
        stop_process(first, signal.SIGINT)  # aria2c saves its control file and exits
    assert control.exists(), "no control file: the download was not left unfinished"
    instance.wait_events(2, user_agent=cut)  # it did split the file

    agent = tag("aria2c-resume")
    run([*common, "-c", "-U", agent, url])
    assert not control.exists()
    assert sha256_file(tmp_path / LECTURE) == lecture.sha256
    events = instance.wait_events(user_agent=agent)
    assert all(e["via_link"] for e in events)
    assert any(e["status"] == 206 and e["range_header"] for e in events)
    # A resume, not a restart: the second run never asked for every byte again.
    assert 0 < requested_bytes(events, lecture.size) < lecture.size


def test_a_new_version_never_splices_into_a_resume(portal_server, alice, tmp_path):
    curl, wget = require_tool("curl"), require_tool("wget")
    instance, base = portal_server.instance, portal_server.base_url
    # Far larger than the socket buffers, so that curl cannot have it all before the cut.
    v1 = write_random(tmp_path / "v1" / "期末考试安排.pdf", 24 * MiB)
    v2 = write_random(tmp_path / "v2" / "期末考试安排.pdf", 20 * MiB)
    file_id = instance.add_file(tmp_path / "v1" / "期末考试安排.pdf", title="期末考试安排",
                                category="教务通知", access="public")
    url = f"{base}/files/{file_id}/download"
    _, head, _ = request(base, "HEAD", f"/files/{file_id}/download")
    etag1 = head["ETag"]
    assert etag1 == f'"{hashlib.sha256(v1).hexdigest()}"'
    link1 = alice.mint_link(file_id)["url"]

    part = tmp_path / "part.pdf"
    first = subprocess.Popen([curl, "-sS", "--limit-rate", "2M", "-o", str(part), url])
    offset = interrupt_when(first, part, 1 * MiB)
    assert part.read_bytes() == v1[:offset]

    assert instance.add_file(tmp_path / "v2" / "期末考试安排.pdf", title="期末考试安排",
                             category="教务通知", access="public") == file_id

    # The resume a browser makes: Range guarded by If-Range with the ETag it was given.
    rest, dump = tmp_path / "rest.pdf", tmp_path / "headers.txt"
    run([curl, "-sS", "-D", dump, "-H", f"If-Range: {etag1}", "-r", f"{offset}-", "-o", rest,
         url])
    status, headers = status_line(dump)
    assert status == 200, "a stale If-Range must get the whole new version"
    assert headers["etag"] == f'"{hashlib.sha256(v2).hexdigest()}"'
    assert rest.read_bytes() == v2

    # A link minted for version 1 keeps serving version 1, whole and in ranges.
    old = tmp_path / "old.pdf"
    run([wget, "-q", "-O", old, link1])
    assert old.read_bytes() == v1
    link_path = urlsplit(link1).path
    status, headers, body = request(base, "GET", link_path,
                                    {"Range": f"bytes={offset}-", "If-Range": etag1})
    assert status == 206 and body == v1[offset:]
    assert headers["Content-Range"] == f"bytes {offset}-{len(v1) - 1}/{len(v1)}"


def test_recorded_bytes_are_the_bytes_that_went_out(portal_server, lecture, tmp_path):
    curl = require_tool("curl")
    instance, base = portal_server.instance, portal_server.base_url
    path = f"/files/{lecture.public_id}/download"

    # Aborted: more than nothing, less than everything, and close to what the client got
    # (not what the server's kernel buffered and then threw away).
    agent, out = tag("curl-abort"), tmp_path / "aborted.mp4"
    proc = subprocess.Popen([curl, "-sS", "-A", agent, "--limit-rate", "4M", "-o", str(out),
                             base + path])
    received = interrupt_when(proc, out, 6 * MiB)
    [event] = instance.wait_events(user_agent=agent)
    assert event["status"] == 200
    assert 0 < event["bytes_sent"] < lecture.size
    assert abs(event["bytes_sent"] - received) <= ABORT_TOLERANCE, (event, received)

    # Complete: exactly the size; a complete range: exactly its length.
    agent, out = tag("curl-full"), tmp_path / "full.mp4"
    run([curl, "-sS", "--fail", "-A", agent, "-o", out, base + path])
    assert out.stat().st_size == lecture.size
    [event] = instance.wait_events(user_agent=agent)
    assert (event["status"], event["bytes_sent"]) == (200, lecture.size)
    agent, out = tag("curl-range"), tmp_path / "range.bin"
    run([curl, "-sS", "--fail", "-A", agent, "-r", "1000-1999999", "-o", out, base + path])
    assert out.read_bytes() == lecture.data[1000:2000000]
    [event] = instance.wait_events(user_agent=agent)
    assert (event["status"], event["bytes_sent"]) == (206, 1999000)

    # HEAD: the headers a GET would send, then nothing at all on the wire.
    wire = raw_request(base, f"HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1")
    head, _, after = wire.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 ")
    assert after == b""
    assert f"\r\nContent-Length: {lecture.size}\r\n".encode() in head + b"\r\n"


def test_multi_range_is_valid_multipart(portal_server, lecture):
    instance, base = portal_server.instance, portal_server.base_url
    agent = tag("multi")
    wanted = [(0, 100), (5 * MiB, 6 * MiB), (lecture.size - 4096, lecture.size)]
    spec = ",".join(f"{a}-{b - 1}" for a, b in wanted)
    status, headers, body = request(base, "GET", f"/files/{lecture.public_id}/download",
                                    {"Range": f"bytes={spec}", "User-Agent": agent})
    assert status == 206
    assert int(headers["Content-Length"]) == len(body)
    parts = parse_byteranges(body, headers["Content-Type"])
    assert [p[0]["content-range"] for p in parts] == [
        f"bytes {a}-{b - 1}/{lecture.size}" for a, b in wanted]
    assert all(p[0]["content-type"] == "video/mp4" for p in parts)
    assert [p[1] for p in parts] == [lecture.data[a:b] for a, b in wanted]
    [event] = instance.wait_events(user_agent=agent)
    assert (event["status"], event["bytes_sent"]) == (206, len(body))


def test_pages_answer_while_many_slow_clients_download(portal_instance, lecture):
    curl = require_tool("curl")
    agent, clients = tag("slow"), []
    # A server of its own: the module's server keeps serving the other tests untouched.
    with Gunicorn(portal_instance) as server:
        url = f"{server.base_url}/files/{lecture.public_id}/download"
        try:
            for _ in range(200):
                clients.append(subprocess.Popen(
                    [curl, "-s", "-A", agent, "--limit-rate", "20k", "-o", "/dev/null", url],
                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            time.sleep(2)  # every client connected and is being fed at 20 kB/s
            assert all(c.poll() is None for c in clients), "slow clients ended early"
            for path in ("/healthz", "/login", "/healthz"):
                started = time.monotonic()
                status, _, _ = request(server.base_url, "GET", path, timeout=10)
                elapsed = time.monotonic() - started
                assert status == 200 and elapsed < 2, (path, status, elapsed)
        finally:
            for client in clients:
                stop_process(client, signal.SIGKILL)
        # Each of the 200 was a real download in progress: the server recorded each one.
        events = portal_instance.wait_events(200, timeout=30, user_agent=agent)
        assert len(events) == 200 and all(0 < e["bytes_sent"] < lecture.size for e in events)
