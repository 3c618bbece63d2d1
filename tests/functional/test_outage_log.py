"""A Redis outage is said once in the log per part of the portal, and once when Redis is
back, not on every retry or request (it was 36 lines a minute per worker).

Every wait here is on a condition, with helpers.DEADLINE: the copies' listener retries on its
own clock (every second), so on a busy machine its lines come when they come. The recovery
lines are looked for from before Redis is started again: the listener may reconnect, and
say so, before the test has seen Redis answer.
"""

from __future__ import annotations

import time

import pytest
from servers import Gunicorn, PrivateRedis, make_instance, request, write_random

from tests.helpers import wait_for

pytestmark = pytest.mark.slow

DOWN = ("cache off (/healthz)", "metadata copies off")
#: After both outage lines, how long retries and requests go on without a second line: the
#: copies' listener retries about once a second.
RETRYING = 4


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

            def outage_lines() -> list[str]:
                return [line for line in log_text()[before:].splitlines()
                        if "redis unavailable" in line]

            def degraded_and_said() -> bool:
                assert request(server.base_url, "GET", "/healthz")[0] == 200  # degraded
                request(server.base_url, "GET", "/login")
                lines = outage_lines()
                return all(any(part in line for line in lines) for part in DOWN)

            redis_server.stop()
            wait_for(degraded_and_said, what="both outage lines", interval=0.2)
            until = time.monotonic() + RETRYING
            while time.monotonic() < until:
                degraded_and_said()
                time.sleep(0.2)
            lines = outage_lines()
            for part in DOWN:
                assert sum(part in line for line in lines) == 1, lines

            mark = len(log_text())
            redis_server.start()

            def healthz_back() -> bool:
                request(server.base_url, "GET", "/healthz")
                return "redis is back: cache off (/healthz)" in log_text()[mark:]

            wait_for(healthz_back, what="the recovery line of /healthz")
            wait_for(lambda: "redis is back: worker-local metadata copies" in log_text()[mark:],
                     what="the copies' recovery line")
            back = log_text()[mark:]
            assert back.count("redis is back: cache off (/healthz)") == 1, back[-2000:]
            assert back.count("redis is back: worker-local metadata copies") == 1, back[-2000:]
