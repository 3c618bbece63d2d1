"""Download analytics: honest counting (logical downloads), rollups, pages and a JSON API.

recorder.py journals and buffers events and flushes them; logical.py holds the pure counting
rules; materialise.py writes events, logical downloads and rollups; queries.py answers
the pages and the API with plain dicts; views.py is the thin HTTP layer; simulate.py makes
synthetic load. docs/analytics.md explains the rules.
"""

from __future__ import annotations

from flask import Flask

#: ANALYTICS_* settings (PORTAL_ANALYTICS_* in the environment) and their defaults.
DEFAULTS = {
    "ANALYTICS_IDLE_MINUTES": 30,  # a pause longer than this starts a new logical download
    "ANALYTICS_PROBE_MAX_BYTES": 2,  # ranged requests for at most this many bytes are probes
    "ANALYTICS_MIN_BYTES": 1,  # delivered bytes that make a download count
    "ANALYTICS_COMPLETE_RATIO": 0.99,  # coverage that makes a download "completed"
    "ANALYTICS_FLUSH_SECONDS": 2.0,  # the background flusher's period
    "ANALYTICS_FLUSH_BATCH": 1000,  # stream length that wakes it early; rows per SQL batch
    "ANALYTICS_BACKGROUND_FLUSH": None,  # None: on, except under TESTING
    # Where the background flush to SQL runs: "workers" (a greenlet in each web worker) or
    # "process" (one `flask analytics flush --follow` beside them, started by gunicorn.conf.py,
    # which sets it: the SQL writes then never hold a worker's event loop).
    "ANALYTICS_FLUSHER": "workers",
    "ANALYTICS_JOURNAL_DIR": None,  # start records (local disk); None: instance/analytics-journal
    # x-accel: nginx's event log (deploy/nginx.conf, portal_events.log) for the bytes it sent;
    # events wait this long for their line, then count their planned bytes. None: no waiting.
    "ANALYTICS_NGINX_LOG": None,
    "ANALYTICS_NGINX_WAIT_SECONDS": 600,
    # Who reads that log: "workers" (each web node's background flusher) or "external" (a
    # `flask analytics flush --follow` of its own on the node, e.g. at a lower CPU priority).
    "ANALYTICS_NGINX_IMPORT": "workers",
    # The share of the time the workers' import may take while it is behind (a peak): the
    # rest goes to serving, and the import catches up after the peak.
    "ANALYTICS_NGINX_IMPORT_SHARE": 0.1,
    "ANALYTICS_RETENTION_DAYS": 90,  # raw download events
    "ANALYTICS_LOGICAL_RETENTION_DAYS": 730,  # logical downloads
    "ANALYTICS_HOURLY_RETENTION_DAYS": 400,  # hourly rollups (daily ones are kept)
    "ANALYTICS_TIMEZONE": "Asia/Shanghai",  # local days, weekdays and hours of the pages
    "ANALYTICS_FORECAST_WEEKS": 4,  # seasonal average over this many past weeks
}


def init_app(app: Flask) -> None:
    """Settings, the recorder, the page and API blueprints, the ``analytics`` commands."""
    from ..config import ConfigError
    from . import models  # noqa: F401  (the tables belong to db.metadata)
    from .cli import analytics_cli
    from .recorder import Recorder
    from .views import also_downloaded, api_bp, pages_bp

    for key, value in DEFAULTS.items():
        app.config.setdefault(key, value)
    if app.config["ANALYTICS_FLUSHER"] not in ("workers", "process"):
        raise ConfigError("PORTAL_ANALYTICS_FLUSHER must be 'workers' or 'process', "
                          f"not {app.config['ANALYTICS_FLUSHER']!r}")
    if app.config["ANALYTICS_NGINX_IMPORT"] not in ("workers", "external"):
        raise ConfigError("PORTAL_ANALYTICS_NGINX_IMPORT must be 'workers' or 'external', "
                          f"not {app.config['ANALYTICS_NGINX_IMPORT']!r}")
    share = app.config["ANALYTICS_NGINX_IMPORT_SHARE"]
    try:
        valid = 0 < float(share) <= 1
    except (TypeError, ValueError):
        valid = False
    if not valid:
        raise ConfigError("PORTAL_ANALYTICS_NGINX_IMPORT_SHARE must be a number above 0 and "
                          f"at most 1, not {share!r}")
    app.extensions["portal_analytics"] = Recorder(app)
    app.register_blueprint(pages_bp)
    app.register_blueprint(api_bp)
    app.cli.add_command(analytics_cli)
    app.add_template_global(also_downloaded, "also_downloaded")
