"""/metrics: Prometheus text format, for the metrics audience only (audience.py).

Three kinds of values, all of this node (each node is scraped; Prometheus adds nodes up):

- what every process records as it works (instruments.py): requests, latency, download
  bytes, active downloads, database pools, confirmations, the Redis breaker. Under gunicorn
  they come from every worker's multiprocess file, whichever worker answers the scrape;
  each process's coherence age and breaker state are worked out from them here;
- counters kept in Redis for the whole cluster (the cache's, the download limits'), so any
  worker of any node answers with the same totals, and whether Redis answered;
- the analytics backlog, read now from Redis and this node's files (analytics/backlog.py).

docs/observability.md lists every metric and what an on-call engineer reads from it.
"""

from __future__ import annotations

import time

from flask import Blueprint, Response, abort, current_app
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector, CollectorRegistry

from . import cache, instruments
from .analytics import backlog
from .analytics.recorder import recorder
from .audience import is_operator
from .config import settings
from .download import leases, limits

bp = Blueprint("metrics", __name__)


class CacheCollector(Collector):
    """Counters read from Redis at scrape time, and whether Redis answered."""

    def __init__(self, values: dict[str, int] | None) -> None:
        self.values = values

    def collect(self):
        up = GaugeMetricFamily("portal_redis_up", "1 when Redis answered this scrape")
        up.add_metric([], 0 if self.values is None else 1)
        yield up
        for name, help_text in cache.STATS_FIELDS.items():
            family = CounterMetricFamily(f"portal_cache_{name}", help_text)
            if self.values is not None:
                family.add_metric([], self.values[name])
                yield family


class DownloadLimitsCollector(Collector):
    """Refused and throttled download connections (cluster-wide, from Redis) and this
    node's active download connections (download/leases.py)."""

    def __init__(self, values: dict[str, int] | None, node_active: int | None) -> None:
        self.values = values
        self.node_active = node_active

    def collect(self):
        if self.values is not None:
            refused = CounterMetricFamily(
                "portal_download_refused", "Download connections refused by the limits",
                labels=["reason"])
            refused.add_metric(["person_limit"], self.values["refused_person"])
            refused.add_metric(["node_admission"], self.values["refused_node"])
            yield refused
            throttled = CounterMetricFamily(
                "portal_download_throttled", leases.STATS_FIELDS["throttled"])
            throttled.add_metric([], self.values["throttled"])
            yield throttled
        if self.node_active is not None:
            active = GaugeMetricFamily("portal_download_node_connections",
                                       "Download connections counted on this node now")
            active.add_metric([], self.node_active)
            yield active


class RecordedCollector(Collector):
    """What the node's processes recorded (instruments.py): their multiprocess files under
    gunicorn, else this process's own registry; and each process's coherence age and Redis
    breaker state, worked out from the times they recorded."""

    def collect(self):
        path = instruments.multiprocess_dir()
        source = MultiProcessCollector(None, path) if path else REGISTRY
        families = list(source.collect())
        yield from families
        yield from _derived(families, time.time())


def _derived(families, now: float):
    """Ages and states from recorded times: for each process (the ``pid`` label under
    gunicorn), seconds since its last confirmation (none for a process that never confirmed:
    gunicorn's master, a worker that has not served yet), and 1 while its breaker is open."""
    by_name = {family.name: family for family in families}
    made = (
        ("portal_coherence_age_seconds", instruments.CONFIRMED_NAME,
         "Seconds since each process last confirmed its cached decisions against the "
         "database (it confirms when a request needs it: an idle worker's age grows)",
         lambda at: None if at <= 0 else max(0.0, now - at)),
        ("portal_redis_breaker_open", instruments.BREAKER_UNTIL_NAME,
         "1 while a process's Redis circuit breaker is open (Redis is not asked)",
         lambda until: 1.0 if until > now else 0.0),
    )
    for name, source, help_text, value in made:
        family = GaugeMetricFamily(name, help_text)
        recorded = by_name.get(source)
        for sample in recorded.samples if recorded is not None else ():
            derived = value(sample.value) if sample.name == source else None
            if derived is not None:
                family.add_sample(name, sample.labels, derived)
        yield family


class BacklogCollector(Collector):
    """The analytics backlog (analytics/backlog.py), read at scrape time."""

    def __init__(self, measured: backlog.Backlog) -> None:
        self.measured = measured

    def collect(self):
        b = self.measured
        events = GaugeMetricFamily(
            "portal_analytics_backlog_events",
            "Download events waiting to be recorded: in Redis for the flush to SQL (stream) "
            "or for nginx's log line (nginx), in this node's dead workers' journals (journal)",
            labels=["where"])
        oldest = GaugeMetricFamily(
            "portal_analytics_backlog_oldest_seconds",
            "Age of the oldest event waiting in the stream or in the journals",
            labels=["where"])
        if b.stream is not None:
            events.add_metric(["stream"], b.stream)
            events.add_metric(["nginx"], b.nginx_waiting)
            oldest.add_metric(["stream"], b.stream_oldest)
        events.add_metric(["journal"], b.orphans)
        oldest.add_metric(["journal"], b.orphans_oldest)
        yield events
        yield oldest
        if b.nginx_unread_bytes is not None:
            unread = GaugeMetricFamily("portal_analytics_nginx_unread_bytes",
                                       "Bytes of nginx's event log not imported yet")
            unread.add_metric([], b.nginx_unread_bytes)
            lag = GaugeMetricFamily(
                "portal_analytics_nginx_lag_seconds",
                "Seconds since nginx wrote the first line the import has not read (0: none)")
            lag.add_metric([], b.nginx_lag)
            yield unread
            yield lag


@bp.route("/metrics")
def metrics():
    """Prometheus text format (see the module), for the metrics audience only."""
    if not is_operator():
        abort(403)
    instruments.TALLY.flush()  # this process's latest counts, not a second old
    app = current_app._get_current_object()
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RecordedCollector())
    registry.register(CacheCollector(cache.stats()))
    shown = limits.in_force(app, settings())
    registry.register(DownloadLimitsCollector(shown["counters"], shown["node_active"]))
    registry.register(BacklogCollector(backlog.measure(recorder(app))))
    # content_type, not mimetype: Flask would add a second charset to the exposition type.
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)
