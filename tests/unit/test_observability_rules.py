"""The pure parts of /metrics, health and logs: route classes, the tally's batched histogram,
who the metrics audience is, request ids, and how far nginx's log is unread."""

from __future__ import annotations

import json
import logging
import os

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

from portal import instruments, logs
from portal.analytics import nginxlog
from portal.audience import admitted
from portal.observe import route_class


@pytest.mark.parametrize("path,expected", [
    ("/files/7/download", "download"),
    ("/files/zip", "download"),
    ("/d/abc.def/report.pdf", "download"),
    ("/d/abc", "download"),
    ("/files/7", "page"),
    ("/", "page"),
    ("/admin/users", "page"),
    ("/login", "page"),
    ("/login/cas/callback", "page"),
    ("/me/downloads", "page"),
    ("/api/files", "api"),
    ("/api/uploads/abc", "api"),
    ("/_portal/grant/files/7/download", "grant"),
    ("/static/js/portal.js", "static"),
    ("/favicon.ico", "static"),
    ("/healthz", "other"),
    ("/metrics", "other"),
    ("/readyz", "other"),
    ("/wp-login.php", "other"),
    ("/administrator", "other"),
])
def test_route_classes(path, expected):
    assert route_class(path) == expected
    assert expected in instruments.ROUTE_CLASSES


def _exposition(histogram: Histogram, registry: CollectorRegistry, route: str) -> list[str]:
    """The route's bucket, count and sum lines, without the _created line."""
    return [line for line in generate_latest(registry).decode().splitlines()
            if line.startswith(histogram._name) and f'route="{route}"' in line
            and "_created" not in line]


def test_the_tally_moves_latency_as_observe_would():
    """Counted in the tally and flushed, the histogram reads what observe() would have made
    (the tally adds to prometheus-client's bucket values itself, see instruments.py)."""
    seconds = [0.0001, 0.00025, 0.0003, 0.004, 0.004, 0.3, 7.0, 12.0, 0.0]
    route = "other"
    reference_registry = CollectorRegistry()
    reference = Histogram("reference_seconds", "reference", ["route"],
                          buckets=instruments.LATENCY_BUCKETS, registry=reference_registry)
    tally = instruments.Tally()
    before = instruments.LATENCY.labels(route)
    bucket_before = [value.get() for value in before._buckets]
    sum_before = before._sum.get()
    for index, value in enumerate(seconds):
        tally.request(route, "2", value)
        reference.labels(route).observe(value)
        if index == 4:
            tally.flush()  # twice: only what is new is moved
    tally.flush()
    tally.flush()
    child = instruments.LATENCY.labels(route)
    moved = [value.get() - then for value, then in zip(child._buckets, bucket_before,
                                                        strict=True)]
    assert moved == [value.get() for value in reference.labels(route)._buckets]
    assert child._sum.get() - sum_before == pytest.approx(sum(seconds))
    assert len(_exposition(reference, reference_registry, route)) == len(moved) + 2


def test_the_tally_counts_requests_bytes_and_open_bodies():
    tally = instruments.Tally()
    requests = instruments.REQUESTS.labels("grant", "4xx")
    sent = instruments.BYTES.labels("stream")
    before = requests._value.get(), sent._value.get()
    tally.request("grant", "4", 0.001)
    tally.request("grant", "4", 0.001)
    tally.opened()
    tally.opened()
    tally.closed("stream", 1000)
    tally.flush()
    assert requests._value.get() - before[0] == 2
    assert sent._value.get() - before[1] == 1000
    assert instruments.ACTIVE._value.get() == 1
    tally.closed("stream", 24)
    tally.flush()
    assert sent._value.get() - before[1] == 1024
    assert instruments.ACTIVE._value.get() == 0


LOOPBACK = ("127.0.0.0/8", "::1/128")


@pytest.mark.parametrize("peer,forwarded,authorization,allow,token,expected", [
    ("127.0.0.1", False, None, LOOPBACK, None, True),
    ("127.8.9.1", False, None, LOOPBACK, None, True),
    ("::1", False, None, LOOPBACK, None, True),
    ("::ffff:127.0.0.1", False, None, LOOPBACK, None, True),
    ("203.0.113.7", False, None, LOOPBACK, None, False),
    ("127.0.0.1", True, None, LOOPBACK, None, False),  # an untrusted proxy speaking for someone
    ("10.1.2.3", False, None, ("10.0.0.0/8",), None, True),
    ("127.0.0.1", False, None, (), None, False),  # an empty list: the token alone
    ("203.0.113.7", False, "Bearer s3cret", LOOPBACK, "s3cret", True),
    ("203.0.113.7", True, "bearer s3cret", LOOPBACK, "s3cret", True),
    ("203.0.113.7", False, "Bearer wrong", LOOPBACK, "s3cret", False),
    ("203.0.113.7", False, "Basic s3cret", LOOPBACK, "s3cret", False),
    ("203.0.113.7", False, "Bearer ", LOOPBACK, "", False),
    ("203.0.113.7", False, "Bearer s3cret", LOOPBACK, None, False),
    ("not an address", False, None, LOOPBACK, None, False),
    (None, False, None, LOOPBACK, None, False),
])
def test_the_metrics_audience(peer, forwarded, authorization, allow, token, expected):
    assert admitted(peer, forwarded, authorization, allow, token) is expected


@pytest.mark.parametrize("supplied,kept", [
    ("0123456789abcdef0123456789abcdef", "0123456789abcdef0123456789abcdef"),
    ("req-1.A_b", "req-1.A_b"),
    ("abc\r\nX-Evil: 1", "abcX-Evil1"),
    ('"}{"level":"CRITICAL', "levelCRITICAL"),
    ("é<script>", "script"),
    ("x" * 500, "x" * logs.MAX_LENGTH),
    ("%%%", ""),
    ("", ""),
    (None, ""),
])
def test_supplied_request_ids_are_sanitized(supplied, kept):
    assert logs.sanitized(supplied) == kept


def test_a_request_without_a_usable_id_gets_a_new_one():
    environ = {"HTTP_X_REQUEST_ID": "<<>>"}
    made = logs.begin_request(environ)
    assert len(made) == 32 and int(made, 16) >= 0
    assert environ[logs.ENVIRON_KEY] == made == logs.REQUEST_ID.get()
    assert logs.begin_request({}) != made


def test_json_lines_carry_the_request_id(capsys):
    logger = logging.getLogger("portal.tests.json")
    handler = logging.StreamHandler()
    logs.to_json([handler])
    logger.addHandler(handler)
    logger.propagate = False
    try:
        logs.begin_request({"HTTP_X_REQUEST_ID": "abc-123"})
        logger.warning("stored content missing for version %s", 7)
        try:
            raise OSError("gone")
        except OSError:
            logger.exception("with a traceback")
        logger.warning("its own id", extra={"request_id": "other"})
    finally:
        logger.removeHandler(handler)
    lines = capsys.readouterr().err.splitlines()
    records = [json.loads(line) for line in lines]
    assert len(records) == 3
    first, second, third = records
    assert first["message"] == "stored content missing for version 7"
    assert first["level"] == "WARNING" and first["logger"] == "portal.tests.json"
    assert first["request_id"] == "abc-123" and first["pid"] == os.getpid()
    assert "T" in first["time"]
    assert second["request_id"] == "abc-123" and "OSError: gone" in second["exc_info"]
    assert third["request_id"] == "other"


def _event(minute: int) -> str:
    return json.dumps({"event": "a" * 32, "status": 200, "bytes": 10,
                       "time": f"2026-11-29T23:{minute:02d}:00+00:00"}) + "\n"


def test_how_much_of_nginx_log_is_unread(tmp_path):
    log = tmp_path / "portal_events.log"
    assert nginxlog.unread(log, {}) == (0, None)  # no log yet
    log.write_text(_event(1) + _event(2))
    behind, first = nginxlog.unread(log, {})
    assert behind == log.stat().st_size and first.minute == 1
    _, state, _ = nginxlog.read_new(log, {})
    assert nginxlog.unread(log, state) == (0, None)
    with open(log, "a") as fh:
        fh.write(_event(3))
    behind, first = nginxlog.unread(log, state)
    assert behind == len(_event(3)) and first.minute == 3
    # rotated: the rest of the old file, then the new one from its start
    os.rename(log, f"{log}.1")
    log.write_text(_event(4))
    behind, first = nginxlog.unread(log, state)
    assert behind == len(_event(3)) + len(_event(4)) and first.minute == 3
