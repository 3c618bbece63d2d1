"""A Redis outage is said once in the log per part of the portal, and once when Redis is
back, not on every retry or request (it was 36 lines a minute per worker)."""

from __future__ import annotations

import time

import pytest
from servers import Gunicorn, PrivateRedis, make_instance, request, wait_for, write_random

pytestmark = pytest.mark.slow


def test_an_outage_is_logged_once_and_its_end_once(tmp_path):
    with PrivateRedis(tmp_path / "redis") as redis_server:
        instance = make_instance(tmp_path / "portal", redis_server.url,
                                 PORTAL_CACHE_LOCAL_SECONDS="5")
        write_random(tmp_path / "notes.pdf", 1000)
        file_id = instance.add_file(tmp_path / "notes.pdf", access="public")
        with Gunicorn(instance, workers=1) as server:
            assert request(server.base_url, "GET", "/healthz")[0] == 200
            # a download starts the worker's copies, whose listener then watches Redis
            assert request(server.base_url, "GET", f"/files/{file_id}/download")[0] == 200
            log_text = lambda: server.log.read_text(errors="replace")  # noqa: E731
            before = len(log_text())
            redis_server.stop()
            until = time.monotonic() + 6  # the copies' listener retries every second
            while time.monotonic() < until:
                assert request(server.base_url, "GET", "/healthz")[0] == 200  # degraded
                request(server.base_url, "GET", "/login")
                time.sleep(0.2)
            down = log_text()[before:]
            lines = [line for line in down.splitlines() if "redis unavailable" in line]
            assert any("cache off (/healthz)" in line for line in lines), down[-2000:]
            assert any("metadata copies off" in line for line in lines), down[-2000:]
            for part in ("cache off (/healthz)", "metadata copies off"):
                assert sum(part in line for line in lines) == 1, lines
            redis_server.start()
            mark = len(log_text())
            def healthz_back() -> bool:
                request(server.base_url, "GET", "/healthz")
                return "redis is back: cache off (/healthz)" in log_text()[mark:]

            wait_for(healthz_back, 15, "the recovery line of /healthz")
            wait_for(lambda: "redis is back: worker-local metadata copies" in log_text()[mark:],
                     15, "the copies' recovery line")
