"""/metrics, health and structured logs on a real gunicorn (docs/observability.md).

- every scrape, whichever of the two workers answers it, shows the requests and bytes of
  both (prometheus-client's multiprocess mode), the lean cycle's included; open download
  bodies are a gauge that falls back when they close; a killed worker's gauges leave, its
  counts stay;
- every metric the Grafana dashboard (deploy/grafana/portal.json) queries is exposed;
- /metrics and the reasons of /readyz are for the metrics audience only;
- /livez, /readyz and /healthz with Redis really dead, the storage broken and PostgreSQL
  stopped;
- PORTAL_LOG_FORMAT=json: every line of the log is JSON, and a request's access and
  application lines carry its X-Request-ID, which the answer echoes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import time
from pathlib import Path

import pytest
from servers import (
    Gunicorn,
    Postgres,
    PrivateRedis,
    make_instance,
    request,
    sample_total,
    scrape,
    worker_pids,
    write_random,
)
from wire import LOG_ENV

from portal import instruments
from tests.helpers import wait_for

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "portal.json"
SMALL = 20_000
REQUESTS = "portal_http_requests_total"


@pytest.fixture(scope="module")
def observed(portal_instance, tmp_path_factory):
    """A two-worker gunicorn whose access lines say which cycle answered (wire.LOG_ENV),
    reading an (empty) nginx event log so that its import lag is exposed; public files."""
    root = tmp_path_factory.mktemp("observed")
    write_random(root / "small.bin", SMALL)
    write_random(root / "big.bin", 64 << 20)
    ids = {name: portal_instance.add_file(root / f"{name}.bin", title=name)
           for name in ("small", "big")}
    nginx_log = root / "portal_events.log"
    nginx_log.write_text("")
    with Gunicorn(portal_instance, workers=2,
                  env={**LOG_ENV, "PORTAL_ANALYTICS_NGINX_LOG": str(nginx_log)}) as server:
        yield server, ids


def confirmed_by(samples) -> set[int]:
    """The pids of the processes that have confirmed against the database at least once."""
    return {int(s.labels["pid"]) for s in samples
            if s.name == instruments.CONFIRMED_NAME and s.value > 0}


def test_each_scrape_counts_every_workers_requests(observed):
    server, ids = observed
    url = f"/files/{ids['small']}/download"
    made = 0

    def both_workers_served() -> bool:
        nonlocal made
        for _ in range(4):  # a fresh connection each: either worker may accept it
            status, headers, body = request(server.base_url, "GET", url)
            assert status == 200 and len(body) == SMALL
            assert "X-Request-ID" not in headers  # text logs: the answers are as they were
            made += 1
        return worker_pids(server) <= confirmed_by(scrape(server.base_url))

    wait_for(both_workers_served, what="downloads answered by both workers")
    lean = sum(1 for line in server.log.read_text().splitlines()
               if line == f"ACCESS - 1 200 {SMALL}")
    assert lean >= 1, "the lean cycle answered none of the downloads"

    def counted() -> bool:
        samples = scrape(server.base_url)
        return (sample_total(samples, REQUESTS, route="download", status="2xx") == made
                and sample_total(samples, "portal_download_bytes_total",
                                 mode="sendfile") == made * SMALL)

    wait_for(counted, what=f"{made} downloads in the totals (each worker flushes every second)")
    for _ in range(6):  # whichever worker answers, the same totals
        samples = scrape(server.base_url)
        assert sample_total(samples, REQUESTS, route="download", status="2xx") == made
        assert sample_total(samples, "portal_http_request_duration_seconds_count",
                            route="download") == made
        assert sample_total(samples, "portal_http_request_duration_seconds_bucket",
                            route="download", le="+Inf") == made
        assert sample_total(samples, REQUESTS, route="other", status="2xx") >= 1  # scrapes
        assert sample_total(samples, "portal_analytics_queued_events") == 0  # Redis took all
    ages = {int(s.labels["pid"]): s.value for s in samples
            if s.name == "portal_coherence_age_seconds"}
    # the workers that confirmed, not the master or another process that never did
    assert worker_pids(server) <= set(ages) and max(ages.values()) < 3600, ages


def test_open_download_bodies_are_a_gauge(observed):
    server, ids = observed
    active = "portal_downloads_active"
    wait_for(lambda: sample_total(scrape(server.base_url), active) == 0, what="no open body")
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    try:
        sock.sendall(f"GET /files/{ids['big']}/download HTTP/1.1\r\nHost: t\r\n\r\n".encode())
        assert sock.recv(4096).startswith(b"HTTP/1.1 200")  # then nothing more is read
        wait_for(lambda: sample_total(scrape(server.base_url), active) == 1,
                 what="the held download counted as open")
    finally:
        sock.close()
    wait_for(lambda: sample_total(scrape(server.base_url), active) == 0,
             what="the download's body closed")


def settled_downloads(server: Gunicorn) -> float:
    """The download count once two scrapes a flush period apart agree (every worker has
    handed in what it counted)."""
    seen: list[float] = []

    def steady() -> bool:
        seen.append(sample_total(scrape(server.base_url), REQUESTS, route="download",
                                 status="2xx"))
        time.sleep(instruments.FLUSH_SECONDS * 1.5)
        seen.append(sample_total(scrape(server.base_url), REQUESTS, route="download",
                                 status="2xx"))
        return seen[-1] == seen[-2]

    wait_for(steady, what="steady download totals")
    return seen[-1]


def test_a_killed_workers_gauges_go_and_its_counts_stay(observed):
    server, ids = observed
    before = settled_downloads(server)
    for _ in range(8):
        assert request(server.base_url, "GET", f"/files/{ids['small']}/download")[0] == 200
    wait_for(lambda: sample_total(scrape(server.base_url), REQUESTS, route="download",
                                  status="2xx") == before + 8, what="the 8 downloads counted")
    victim = sorted(confirmed_by(scrape(server.base_url)) & worker_pids(server))[0]
    os.kill(victim, signal.SIGKILL)
    wait_for(lambda: victim not in {int(s.labels["pid"]) for s in scrape(server.base_url)
                                    if s.name == instruments.CONFIRMED_NAME},
             what="the killed worker's gauges gone (child_exit)")
    wait_for(lambda: len(worker_pids(server)) == 2, what="gunicorn's new worker")
    for _ in range(4):  # its counts stay in the node's totals, whoever answers
        assert sample_total(scrape(server.base_url), REQUESTS, route="download",
                            status="2xx") == before + 8


# ---------------------------------------------------------------------------
# The dashboard
# ---------------------------------------------------------------------------

#: PromQL words that are not metric names.
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
             "group_left", "group_right", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana label_values query) reads."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    expr = re.sub(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*,[^)]*\)", r"\1", expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # ranges
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\$\w+", "", expr)  # Grafana variables
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group()
        if expr[match.end():].lstrip().startswith("(") or word.lower() in _KEYWORDS:
            continue  # a function or an aggregation, or a keyword
        names.add(word)
    return names


def dashboard_expressions(dashboard: dict) -> list[str]:
    """Every query of the dashboard: its panels' targets and its variables."""
    found = []

    def walk(panels):
        for panel in panels:
            found.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    for variable in dashboard.get("templating", {}).get("list", []):
        query = variable.get("query")
        if variable.get("type") == "query":
            found.append(query["query"] if isinstance(query, dict) else query)
    return found


def test_the_metric_name_parser():
    assert promql_metric_names(
        'histogram_quantile(0.99, sum by (le, route) (rate(a_b_bucket{x=~"y|z",'
        'instance=~"$instance"}[$__rate_interval])))') == {"a_b_bucket"}
    assert promql_metric_names("sum(rate(x_total[5m])) by (mode) / on(i) group_left y") \
        == {"x_total", "y"}
    assert promql_metric_names("label_values(portal_up, instance)") == {"portal_up"}
    assert promql_metric_names('max(z{where="stream"}) > 0.5 and bool w') == {"z", "w"}


def test_every_dashboard_query_names_an_exposed_metric(observed):
    server, ids = observed
    for _ in range(3):
        assert request(server.base_url, "GET", f"/files/{ids['small']}/download")[0] == 200
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = dashboard_expressions(dashboard)
    assert len(expressions) >= 20
    wanted = set().union(*(promql_metric_names(expr) for expr in expressions))
    assert len(wanted) >= 20, wanted
    wait_for(lambda: sample_total(scrape(server.base_url), REQUESTS, route="download") > 0,
             what="the downloads counted")
    exposed = {sample.name for sample in scrape(server.base_url)}
    missing = sorted(wanted - exposed)
    assert not missing, f"the dashboard queries metrics /metrics does not expose: {missing}"


# ---------------------------------------------------------------------------
# Who may read it
# ---------------------------------------------------------------------------

def test_metrics_and_reasons_are_not_public(observed):
    server, _ = observed
    assert request(server.base_url, "GET", "/metrics")[0] == 200  # loopback
    forwarded = {"X-Forwarded-For": "203.0.113.9"}  # a proxy the portal does not trust
    status, _, body = request(server.base_url, "GET", "/metrics", headers=forwarded)
    assert status == 403 and b"portal_" not in body


def test_a_token_or_an_allowed_network_opens_metrics(make_app):
    app = make_app(METRICS_ALLOW=[], METRICS_TOKEN="s3cret-token")
    client = app.test_client()
    assert client.get("/metrics").status_code == 403  # loopback no longer enough
    assert client.get("/metrics", headers={"Authorization": "Bearer wrong"}).status_code == 403
    answer = client.get("/metrics", headers={"Authorization": "Bearer s3cret-token"})
    assert answer.status_code == 200 and b"portal_http_requests_total" in answer.data
    app = make_app(METRICS_ALLOW="10.0.0.0/8, 192.0.2.1")
    client = app.test_client()
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "10.9.8.7"}).status_code == 200
    assert client.get("/metrics", environ_base={"REMOTE_ADDR": "192.0.2.2"}).status_code == 403
    assert client.get("/metrics").status_code == 403
    healthz = client.get("/healthz", environ_base={"REMOTE_ADDR": "192.0.2.2"})
    assert healthz.status_code == 200 and "reasons" not in healthz.json


# ---------------------------------------------------------------------------
# Health
# ---------------------------------------------------------------------------

def _health(server: Gunicorn, path: str, public: bool) -> tuple[int, dict, bytes]:
    headers = {"X-Forwarded-For": "203.0.113.9"} if public else {}
    status, _, body = request(server.base_url, "GET", path, headers=headers, timeout=10)
    return status, json.loads(body), body


def test_health_with_redis_dead_storage_broken_and_postgres_stopped(tmp_path_factory):
    root = tmp_path_factory.mktemp("health")
    with PrivateRedis(root / "redis") as redis_server, Postgres() as postgres:
        instance = make_instance(root / "portal", redis_server.url,
                                 PORTAL_DATABASE_URL=postgres.url)
        with Gunicorn(instance, workers=1) as server:
            for path in ("/readyz", "/healthz"):
                status, body, _ = _health(server, path, public=True)
                assert (status, body) == (200, {"database": "ok", "redis": "ok",
                                                "storage": "ok", "status": "ok"})
            secrets = [str(redis_server.port), str(postgres.port), "Error", "refused",
                       str(instance.storage)]

            redis_server.stop()
            wait_for(lambda: _health(server, "/readyz", True)[1]["redis"] == "degraded",
                     what="/readyz to see Redis dead")
            status, body, raw = _health(server, "/readyz", public=True)
            assert status == 200 and body["status"] == "degraded" and "reasons" not in body
            assert not [s for s in secrets if s.encode() in raw], raw
            status, body, _ = _health(server, "/readyz", public=False)
            assert status == 200 and body["reasons"]["redis"].startswith("unavailable")
            assert _health(server, "/livez", True)[:2] == (200, {"status": "ok"})

            storage = instance.storage
            storage.rename(root / "storage-away")
            storage.write_text("not a folder")
            try:
                status, body, raw = _health(server, "/readyz", public=True)
                assert status == 503 and body["storage"] == "failing"
                assert body["status"] == "failing" and "reasons" not in body
                assert not [s for s in secrets if s.encode() in raw], raw
                status, body, _ = _health(server, "/healthz", public=False)
                assert status == 503 and "storage" in body["reasons"]
            finally:
                storage.unlink()
                (root / "storage-away").rename(storage)

            postgres.stop("fast")
            try:
                wait_for(lambda: _health(server, "/readyz", True)[0] == 503,
                         what="/readyz to see PostgreSQL stopped")
                status, body, raw = _health(server, "/readyz", public=True)
                assert body["database"] == "failing" and body["status"] == "failing"
                assert not [s for s in secrets if s.encode() in raw], raw
                assert str(postgres.port) in _health(server, "/readyz", False)[1][
                    "reasons"]["database"]
                # liveness asks nothing: the process answers with all three away
                assert _health(server, "/livez", True)[:2] == (200, {"status": "ok"})
            finally:
                postgres.start()
            wait_for(lambda: _health(server, "/readyz", True)[0] == 200,
                     what="ready again once PostgreSQL is back (Redis still down: degraded)")
            assert _health(server, "/readyz", True)[1]["status"] == "degraded"


# ---------------------------------------------------------------------------
# Structured logs
# ---------------------------------------------------------------------------

def test_json_logs_tie_each_requests_lines_together(portal_instance, tmp_path_factory):
    root = tmp_path_factory.mktemp("jsonlogs")
    good = write_random(root / "good.bin", 30_000)
    gone = write_random(root / "gone.bin", 40_000)
    ids = {name: portal_instance.add_file(root / f"{name}.bin", title=name)
           for name in ("good", "gone")}
    digest = hashlib.sha256(gone).hexdigest()
    for stored in portal_instance.storage.rglob(f"{digest}*"):
        stored.unlink()  # the view then logs "stored content missing" and answers 503
    server = Gunicorn(portal_instance, workers=2, env={"PORTAL_LOG_FORMAT": "json"}).start()
    try:
        status, headers, _ = request(server.base_url, "GET", f"/files/{ids['gone']}/download",
                                     headers={"X-Request-ID": "probe-1 <script>;"})
        assert status == 503 and headers["X-Request-ID"] == "probe-1script"
        status, headers, body = request(server.base_url, "GET",
                                        f"/files/{ids['good']}/download")
        assert status == 200 and body == good
        made = headers["X-Request-ID"]
        assert re.fullmatch(r"[0-9a-f]{32}", made)
        for _ in range(3):  # warm: the lean cycle answers these
            status, headers, _ = request(server.base_url, "GET",
                                         f"/files/{ids['good']}/download",
                                         headers={"X-Request-ID": "nginx-4f2a.9_Z"})
            assert status == 200 and headers["X-Request-ID"] == "nginx-4f2a.9_Z"
        assert request(server.base_url, "GET", "/no/such/page",
                       headers={"X-Request-ID": "x" * 200})[1]["X-Request-ID"] == "x" * 64
    finally:
        server.stop()
    lines = [line for line in server.log.read_text().splitlines() if line.strip()]
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line that is not JSON: {line!r}")
    by_id = {}
    for record in records:
        by_id.setdefault(record.get("request_id"), []).append(record)
    probe = by_id.get("probe-1script", [])
    access = [r for r in probe if r["logger"] == "gunicorn.access"]
    app_lines = [r for r in probe if r["logger"].startswith("portal.")]
    assert len(access) == 1 and access[0]["status"] == 503, probe
    assert access[0]["path"] == f"/files/{ids['gone']}/download"
    assert any("stored content missing" in r["message"] and "exc_info" in r
               for r in app_lines), probe
    assert [r["status"] for r in by_id.get(made, []) if r["logger"] == "gunicorn.access"] \
        == [200]
    lean = [r for r in by_id.get("nginx-4f2a.9_Z", []) if r["logger"] == "gunicorn.access"]
    assert len(lean) == 3 and {r["bytes"] for r in lean} == {30_000}
    assert any(r["logger"] == "gunicorn.error" and "Booting worker" in r["message"]
               for r in records)
    assert all(r.get("level") and r.get("time") for r in records)

