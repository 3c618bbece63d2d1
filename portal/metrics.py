"""/metrics: Prometheus text format.

The cache counters are cluster-wide (one Redis hash shared by every worker and node), so any
worker answers a scrape with the same totals; the process metrics are the answering worker's.
"""

from __future__ import annotations

from flask import Blueprint, Response, current_app
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from . import cache
from .config import settings
from .download import limits

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
    node's active download connections (download/limits.py)."""

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
                "portal_download_throttled", limits.STATS_FIELDS["throttled"])
            throttled.add_metric([], self.values["throttled"])
            yield throttled
        if self.node_active is not None:
            active = GaugeMetricFamily("portal_download_node_connections",
                                       "Download connections counted on this node now")
            active.add_metric([], self.node_active)
            yield active


@bp.route("/metrics")
def metrics():
    """Prometheus text format: cache counters and the answering process's metrics."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(CacheCollector(cache.stats()))
    shown = limits.in_force(current_app, settings())
    registry.register(DownloadLimitsCollector(shown["counters"], shown["node_active"]))
    body = generate_latest(registry) + generate_latest(REGISTRY)
    return Response(body, mimetype=CONTENT_TYPE_LATEST)
