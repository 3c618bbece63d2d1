"""/healthz: database, Redis and storage, each 'ok' or the reason."""

from __future__ import annotations

import logging

from flask import Blueprint, jsonify
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

from . import cache
from .extensions import db
from .storage import StorageError, get_storage

bp = Blueprint("health", __name__)
log = logging.getLogger(__name__)
_OUTAGE = cache.Outage(log, "cache off (/healthz)")


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


@bp.route("/healthz")
def healthz():
    """200 when downloads can be served (Redis down is a warning), else 503."""
    report = health_report()
    return jsonify(report), 503 if report["status"] == "failing" else 200
