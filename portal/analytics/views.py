"""Analytics pages (/admin/analytics/...) and their JSON API (/api/analytics/...).

Pages are server-rendered shells; their charts (Chart.js, vendored in static/vendor) read
the JSON endpoints. Every endpoint also answers ``?format=csv``. Admins see every file; staff
see only the files they may read (the catalog's readable_clause, through
``queries.scope_of``): lists and totals leave the others out, and a file's page or numbers
answer 404 for a file they may not read, exactly as for a missing one.
"""

from __future__ import annotations

import csv
import io
import logging
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from flask import Blueprint, Response, abort, current_app, jsonify, render_template, request
from flask_login import current_user
from sqlalchemy.exc import SQLAlchemyError

from ..access import readable_clause
from ..admin import staff_only
from ..download import leases
from ..extensions import db
from ..models import File
from . import queries
from .models import ALL_USERS

log = logging.getLogger(__name__)

pages_bp = Blueprint("analytics", __name__, url_prefix="/admin/analytics")
pages_bp.before_request(staff_only)
api_bp = Blueprint("analytics_api", __name__, url_prefix="/api/analytics")

MAX_DAYS = 731


@api_bp.before_request
def staff_api_only():
    """No session: 401 JSON. Signed in but not staff or admin: 404, as for what they may not
    see."""
    if not current_user.is_authenticated:
        return jsonify(error="sign in required"), 401
    if not current_user.is_staff:
        abort(404)
    return None


def _tz() -> ZoneInfo:
    return ZoneInfo(current_app.config["ANALYTICS_TIMEZONE"])


def _int_arg(name: str, default: int, low: int, high: int) -> int:
    raw = request.args.get(name, "")
    if raw.isascii() and raw.isdigit() and len(raw) < 7:
        return max(low, min(high, int(raw)))
    return default


def _period() -> queries.Period:
    return queries.Period.last_days(_int_arg("days", 30, 1, MAX_DAYS), _tz())


def _filters() -> tuple[str | None, str]:
    category = request.args.get("category") or None
    grp = (request.args.get("group") or ALL_USERS)[:64]
    return (category[:64] if category else None), grp


def answer(data, name: str):
    """JSON, or CSV with ?format=csv (a header row, then one row per point or item)."""
    if request.args.get("format") != "csv":
        return jsonify(data)
    header, rows = queries.rows_to_csv_table(data)
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(header)
    writer.writerows(rows)
    return Response("\ufeff" + out.getvalue(), mimetype="text/csv",  # BOM: Excel reads UTF-8
                    headers={"Content-Disposition": f"attachment; filename={name}.csv"})


def _conn():
    return db.session.connection()


def _readable():
    """What the signed-in reader may see: None for admins (no filter), else the catalog's
    readable_clause."""
    return queries.scope_of(current_user)


def _visible_file_or_404(file_id: int) -> dict:
    """The file's id, title and category if the reader may see it; else 404, the same
    answer as for a file that does not exist."""
    found = queries.visible_file(_conn(), file_id, _readable())
    if found is None:
        abort(404)
    return found


# ---------------------------------------------------------------------------
# JSON API
# ---------------------------------------------------------------------------


@api_bp.route("/overview")
def api_overview():
    """Downloads, unique users, bytes, completion and cache hit rates vs the previous period."""
    return answer(queries.overview(_conn(), _period(), readable=_readable()), "overview")


@api_bp.route("/top-files")
def api_top_files():
    """Most downloaded files (?days, ?category, ?group, ?limit)."""
    category, grp = _filters()
    return answer(queries.top_files(_conn(), _period(), category=category, grp=grp,
                                    limit=_int_arg("limit", 20, 1, 200),
                                    readable=_readable()), "top-files")


@api_bp.route("/series")
def api_series():
    """Counts per hour, day or week (?step=hour|day|week, ?days, ?category, ?group, ?file);
    a ?file the reader may not see is 404, as a missing one."""
    step = request.args.get("step", "day")
    if step not in ("hour", "day", "week"):
        step = "day"
    days = _int_arg("days", 30, 1, 31 if step == "hour" else MAX_DAYS)
    category, grp = _filters()
    file_id = _int_arg("file", 0, 0, 2**31 - 1)
    if file_id:
        _visible_file_or_404(file_id)
    return answer(queries.series(_conn(), queries.Period.last_days(days, _tz()), _tz(),
                                 step=step, file_id=file_id, grp=grp, category=category,
                                 readable=_readable()),
                  "series")


@api_bp.route("/heatmap")
def api_heatmap():
    """Downloads by local weekday and hour over ?days (default 28)."""
    days = _int_arg("days", 28, 1, 400)
    return answer(queries.heatmap(_conn(), queries.Period.last_days(days, _tz()), _tz(),
                                  readable=_readable()),
                  "heatmap")


@api_bp.route("/forecast")
def api_forecast():
    """Next week's hourly downloads, averaged over the same hours of ?weeks past weeks."""
    weeks = _int_arg("weeks", current_app.config["ANALYTICS_FORECAST_WEEKS"], 1, 26)
    return answer(queries.forecast(_conn(), _tz(), weeks=weeks, readable=_readable()),
                  "forecast")


@api_bp.route("/files/<id:file_id>")
def api_file(file_id: int):
    """CONTRACT: downloads (logical), unique_users, bytes_served, completion_rate over ?days."""
    _visible_file_or_404(file_id)
    return answer(queries.file_stats(_conn(), file_id, _period()), f"file-{file_id}")


@api_bp.route("/files/<id:file_id>/detail")
def api_file_detail(file_id: int):
    """Completion distribution, client classes and versions of one file."""
    _visible_file_or_404(file_id)
    data = queries.file_detail(_conn(), file_id, _period(), _tz())
    if request.args.get("format") == "csv":
        part = request.args.get("part", "versions")
        chosen = {"versions": data["versions"], "completion": data["completion_histogram"],
                  "clients": [{"class": k, "downloads": v} for k, v in data["clients"].items()]}
        return answer(chosen.get(part, data["versions"]), f"file-{file_id}-{part}")
    return jsonify(data)


# ---------------------------------------------------------------------------
# Pages
# ---------------------------------------------------------------------------


@pages_bp.route("/")
def index():
    """Overview and top files."""
    return render_template("admin/analytics/index.html",
                           choices=queries.groups_and_categories(_conn(),
                                                                 readable=_readable()),
                           limit_counters=leases.stats(current_app.extensions["portal_redis"]))


@pages_bp.route("/time")
def time_page():
    """Time series, weekday x hour heatmap, next week's forecast."""
    return render_template("admin/analytics/time.html",
                           choices=queries.groups_and_categories(_conn(),
                                                                 readable=_readable()),
                           weeks=current_app.config["ANALYTICS_FORECAST_WEEKS"])


@pages_bp.route("/files/<id:file_id>")
def file_page(file_id: int):
    """One file: time series, completion distribution, clients, versions."""
    return render_template("admin/analytics/file.html", file=_visible_file_or_404(file_id))


# ---------------------------------------------------------------------------
# "Also downloaded" on the catalog's file pages
# ---------------------------------------------------------------------------


def also_downloaded(file: File, user, limit: int = 5) -> list[File]:
    """Files that people who downloaded this one also downloaded, that ``user`` may read
    (the catalog's readable_clause, for admins too: no deleted file is recommended)."""
    since = datetime.now(UTC) - timedelta(days=180)
    try:
        pairs = queries.co_downloaded(db.session.connection(), file.id, since=since,
                                      readable=readable_clause(user), limit=limit)
    except SQLAlchemyError:
        log.exception("recommendations unavailable")
        return []
    files = {f.id: f for f in db.session.query(File).filter(
        File.id.in_([f for f, _ in pairs]))}
    return [files[file_id] for file_id, _people in pairs if file_id in files]
