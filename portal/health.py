"""Health for orchestrators and people: /livez, /readyz and /healthz.

- ``/livez``: 200 while the process answers at all; touches nothing (no database, Redis or
  storage), so a liveness probe never restarts a worker for an outage elsewhere.
- ``/readyz``: whether this node can serve downloads: the database and the storage answer
  (200), Redis down too ("degraded", 200: the cache is off, downloads go on), the database
  or the storage down (503).
- ``/healthz``: the same answer as /readyz, kept for what already probes it.

The public sees one word per part (``ok``, ``degraded`` or ``failing``) and the overall
status; the reasons (exception text, an internal address) only reach the metrics audience
(audience.py: loopback, PORTAL_METRICS_ALLOW, or the PORTAL_METRICS_TOKEN), and the admin
overview, which reads ``health_report`` itself.
"""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from . import cache
from .audience import is_operator
from .extensions import db
from .storage import StorageError, get_storage

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)
_OUTAGE = cache.Outage(log, "cache off (/healthz)")

#: What each part's failure means: the portal cannot serve without it, or serves slower.
_NEEDED = {"database": "failing", "redis": "degraded", "storage": "failing"}


def health_report() -> dict:
    """Database, Redis and storage, each 'ok' or the reason; ``status`` is 'ok', 'degraded'
    (Redis down: downloads still served, cache off) or 'failing'. Also the admin overview's."""
    report = {}
    try:
        db.session.execute(text("SELECT 1"))
        report["database"] = "ok"
    except SQLAlchemyError as exc:
        db.session.rollback()
        report["database"] = f"unavailable: {exc.__class__.__name__}: {exc.orig or exc}"[:300]
    report["redis"] = cache.status()
    try:
        get_storage().check()
        report["storage"] = "ok"
    except StorageError as exc:
        report["storage"] = f"unavailable: {exc}"
    serving = report["database"] == "ok" and report["storage"] == "ok"
    if report["redis"] != "ok":
        _OUTAGE.failed(report["redis"])
        report["warnings"] = ["redis unavailable: cache and shared rate limits are off"]
    else:
        _OUTAGE.recovered()
    report["status"] = ("ok" if report["redis"] == "ok" else "degraded") if serving else "failing"
    return report


def public_report(report: dict, *, reasons: bool) -> dict:
    """A health report as /readyz shows it: one word per part (ok, degraded, failing), the
    overall status and the warnings; with ``reasons`` (the metrics audience) also why each
    part that is not ok is not."""
    shown = {part: "ok" if report[part] == "ok" else word for part, word in _NEEDED.items()}
    shown["status"] = report["status"]
    if "warnings" in report:
        shown["warnings"] = report["warnings"]
    if reasons:
        why = {part: report[part] for part in _NEEDED if report[part] != "ok"}
        if why:
            shown["reasons"] = why
    return shown


@bp.route("/livez")
def livez():
    """200 while this process answers; nothing else is asked."""
    return jsonify(status="ok")


@bp.route("/readyz")
def readyz():
    """200 when downloads can be served (Redis down is 'degraded'), else 503; the reasons
    only for the metrics audience."""
    report = health_report()
    shown = public_report(report, reasons=is_operator())
    return jsonify(shown), 503 if report["status"] == "failing" else 200


@bp.route("/healthz")
def healthz():
    """The same answer as /readyz (what existing probes ask)."""
    return readyz()
