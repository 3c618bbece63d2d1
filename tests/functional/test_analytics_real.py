"""Real clients through a real gunicorn: honest counts end to end (slow).

aria2c with 16 connections, an interrupted wget resumed with -c, a curl If-Range resume:
each must come out as exactly one logical download with the file's byte count; a worker
killed mid-download must not lose the response it was serving.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sqlite3
import subprocess
import time

import pytest
from servers import Gunicorn, make_instance, request, require_tool, write_random

from tests.helpers import wait_for

pytestmark = pytest.mark.slow

SIZE = 24 * 1024 * 1024


@pytest.fixture(scope="module")
def server(tmp_path_factory, redis_url):
    """A gunicorn whose flusher runs every half second."""
    instance = make_instance(tmp_path_factory.mktemp("analytics"), redis_url,
                             PORTAL_ANALYTICS_FLUSH_SECONDS="0.5")
    with Gunicorn(instance) as gunicorn:
        yield gunicorn


def add_file(server, name: str) -> tuple[int, str]:
    path = server.instance.root / "src" / name
    write_random(path, SIZE)
    file_id = server.instance.add_file(path, title=name, category="录播")
    return file_id, f"{server.base_url}/files/{file_id}/download"


def logical(server, file_id: int) -> list[dict]:
    with contextlib.closing(sqlite3.connect(server.instance.db_path, timeout=10)) as conn:
        conn.row_factory = sqlite3.Row
        rows = conn.execute("SELECT * FROM logical_downloads WHERE file_id = ?",
                            (file_id,)).fetchall()
    return [dict(r) for r in rows]


def settled(server, file_id: int, covered: int) -> list[dict]:
    """Wait until the flusher has written a logical download that covers ``covered`` bytes."""
    wait_for(lambda: any(r["covered"] >= covered for r in logical(server, file_id)),
             what=f"a logical download of file {file_id} covering {covered} bytes")
    time.sleep(1.5)  # late connections (aria2c closes some last) get flushed too
    return logical(server, file_id)


def test_aria2c_sixteen_connections_is_one_download(server, tmp_path):
    aria2c = require_tool("aria2c")
    file_id, url = add_file(server, "aria.bin")
    subprocess.run([aria2c, "-x", "16", "-s", "16", "-k", "1M", "--file-allocation=none",
                    "-d", str(tmp_path), "-o", "out.bin", "-q", url], check=True, timeout=120)
    assert (tmp_path / "out.bin").stat().st_size == SIZE
    [row] = settled(server, file_id, SIZE)
    assert row["counted"] and row["completed"] and row["covered"] == SIZE
    assert row["events"] > 1 and row["ua_class"] == "manager"
    events = server.instance.events(file_id=file_id)
    assert sum(e["bytes_sent"] for e in events) >= SIZE


def test_interrupted_wget_resumed_with_c_is_one_download(server, tmp_path):
    wget = require_tool("wget")
    file_id, url = add_file(server, "wget.bin")
    out = tmp_path / "wget.bin"
    # Ctrl-C must stop wget even when the suite runs in the background (`... &` starts
    # children with SIGINT ignored), so wget gets the default disposition back.
    proc = subprocess.Popen([wget, "-q", "--limit-rate=2m", "-O", str(out), url],
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    wait_for(lambda: out.exists() and out.stat().st_size > 2 * 1024 * 1024, what="2 MB")
    proc.send_signal(signal.SIGINT)
    proc.wait(10)
    partial = out.stat().st_size
    assert 0 < partial < SIZE
    subprocess.run([wget, "-q", "-c", "-O", str(out), url], check=True, timeout=120)
    assert out.stat().st_size == SIZE
    [row] = settled(server, file_id, SIZE)
    assert row["covered"] == SIZE and row["completed"] and row["ua_class"] == "cli"
    assert len(server.instance.events(file_id=file_id)) == 2


def test_if_range_resume_is_one_download(server):
    file_id, _ = add_file(server, "ifrange.bin")
    path = f"/files/{file_id}/download"
    status, headers, body = request(server.base_url, "GET", path,
                                    {"Range": "bytes=0-999999"})
    assert status == 206 and len(body) == 1_000_000
    status, _, rest = request(server.base_url, "GET", path,
                              {"Range": "bytes=1000000-", "If-Range": headers["ETag"]})
    assert status == 206 and len(rest) == SIZE - 1_000_000
    [row] = settled(server, file_id, SIZE)
    assert row["covered"] == SIZE and row["events"] == 2


def test_killed_worker_loses_no_started_download(server):
    curl = require_tool("curl")
    file_id, url = add_file(server, "killed.bin")
    proc = subprocess.Popen([curl, "-s", "-o", os.devnull, "--limit-rate", "500k", url])
    try:
        # the start record is in the worker's journal once the response began; find
        # and kill the workers (the new ones gunicorn starts record it as an orphan)
        time.sleep(1.5)
        pid = server.proc.pid
        with open(f"/proc/{pid}/task/{pid}/children") as fh:
            children = [int(p) for p in fh.read().split()]
        assert children
        for pid in children:
            os.kill(pid, signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    [event] = server.instance.wait_events(1, timeout=30, file_id=file_id)
    assert event["ended_at"] is None and event["bytes_sent"] == -1
    wait_for(lambda: logical(server, file_id), what="its logical download")
    [row] = logical(server, file_id)
    assert row["counted"]  # it had started: counted, bytes unknown (docs/analytics.md)
    wait_for(lambda: request(server.base_url, "GET", "/healthz")[0] == 200, what="new workers")
