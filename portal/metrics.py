"""/metrics: Prometheus text format.

The cache counters are cluster-wide (one Redis hash shared by every worker and node), so any
worker answers a scrape with the same totals; the process metrics are the answering worker's.
"""

from __future__ import annotations

from flask import Blueprint, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from . import cache

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


@bp.route("/metrics")
def metrics():
    """Prometheus text format: cache counters and the answering process's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CacheCollector(cache.stats()))
    body = generate_latest(registry) + generate_latest(REGISTRY)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)
