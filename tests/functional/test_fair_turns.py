"""One busy keep-alive connection cannot hold a gevent worker while others wait (issue 19).

A gevent socket yields only when it would block. A client whose next request is always
there when the previous answer has gone out (a download manager on a fast link; here the
extreme case, requests pipelined on one connection) was served request after request without
the worker's other connections getting a turn. gunicorn.conf.py's post_request hook gives
every ready connection its turn between two requests of one connection.
"""

from __future__ import annotations

import socket
import threading
import time

import pytest
from servers import Gunicorn, request, write_random

from tests.helpers import wait_for

pytestmark = pytest.mark.slow

PIPELINED = 3000


def test_a_pipelining_client_does_not_hold_the_worker(portal_instance, tmp_path):
    path = tmp_path / "tiny.bin"
    write_random(path, 16)
    file_id = portal_instance.add_file(path, title="fair turns", access="public")
    target = f"/files/{file_id}/download"
    # One worker, so the busy connection and the probe share one event loop.
    with Gunicorn(portal_instance, workers=1, env={"PORTAL_GUNICORN_ACCESSLOG": ""}) as server:
        for _ in range(3):  # warm: the worker's copies hold the file, no Redis round trip
            assert request(server.base_url, "GET", target)[0] == 200
        busy = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        answered = {"count": 0}

        def drain() -> None:
            marker, tail = b"HTTP/1.1 200 ", b""
            while answered["count"] < PIPELINED:
                chunk = busy.recv(1 << 16)
                if not chunk:
                    return
                data = tail + chunk
                answered["count"] += data.count(marker)
                tail = data[-(len(marker) - 1):]

        reader = threading.Thread(target=drain, daemon=True)
        reader.start()
        one = f"GET {target} HTTP/1.1\r\nHost: portal.test\r\n\r\n".encode()
        try:
            busy.sendall(one * PIPELINED)
            wait_for(lambda: answered["count"] > 0, what="the first pipelined answer")
            started = time.monotonic()
            status, _, _ = request(server.base_url, "GET", target, timeout=30)
            waited, behind = time.monotonic() - started, answered["count"]
            reader.join(60)
        finally:
            busy.close()
        assert status == 200
        assert answered["count"] == PIPELINED, "the pipelined requests were not all answered"
        # Without the turn, the probe was answered after every pipelined request.
        assert behind < PIPELINED // 2, (
            f"the probe waited {waited:.2f} s, until {behind} of {PIPELINED} pipelined "
            "requests were answered")
