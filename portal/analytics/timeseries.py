"""Rollups over time: per hour, day or week (``series``), by weekday and hour (``heatmap``),
and next week's hours (``forecast``), of one file, a category, or every file a reader may see.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, func, select

from ..models import File
from .models import ALL_FILES, ALL_USERS, Rollup
from .scope import MEASURES, Hidden, Period, Readable, hidden_file_ids, visible_sums


def series(conn: Connection, period: Period, tz: ZoneInfo, *, step: str = "day",
           file_id: int = ALL_FILES, grp: str = ALL_USERS,
           category: str | None = None, readable: Readable = None) -> dict:
    """Downloads, completed, requests and bytes per hour, day or (local, Monday) week,
    with the empty buckets filled in: of one file, of a category, or of every file
    ``readable`` lets the reader see."""
    r = Rollup.__table__
    grain = "h" if step == "hour" else "d"
    where = [r.c.grain == grain, r.c.grp == grp, r.c.bucket >= period.start,
             r.c.bucket < period.end]
    columns = [func.sum(r.c[m]) for m in MEASURES]
    if category:
        stmt = (select(r.c.bucket, *columns).join(File, File.id == r.c.file_id)
                .where(*where, File.category == category).group_by(r.c.bucket))
        if readable is not None:
            stmt = stmt.where(readable)
        found = {row[0]: [int(v or 0) for v in row[1:]] for row in conn.execute(stmt)}
    elif file_id == ALL_FILES and readable is not None:
        hidden = Hidden.over(conn, hidden_file_ids(conn, readable), period.start,
                             period.end)
        found = {key[0]: values for key, values in visible_sums(
            conn, columns, where, [r.c.bucket], readable, hidden).items()}
    else:
        stmt = (select(r.c.bucket, *columns).where(*where, r.c.file_id == file_id)
                .group_by(r.c.bucket))
        found = {row[0]: [int(v or 0) for v in row[1:]] for row in conn.execute(stmt)}
    buckets = _buckets(period, tz, step)
    values: dict[datetime, list[int]] = {b: [0] * len(MEASURES) for b in buckets}
    for bucket, counts in found.items():
        key = _week_of(bucket, tz) if step == "week" else bucket
        if key in values:
            values[key] = [a + b for a, b in zip(values[key], counts, strict=True)]
    return {"step": step, "labels": [_label(b, tz, step) for b in buckets],
            **{m: [values[b][i] for b in buckets] for i, m in enumerate(MEASURES)}}


def _week_of(moment: datetime, tz: ZoneInfo) -> datetime:
    local = moment.astimezone(tz)
    monday = (local - timedelta(days=local.weekday())).replace(hour=0, minute=0, second=0,
                                                                microsecond=0)
    return monday.astimezone(UTC)


def _buckets(period: Period, tz: ZoneInfo, step: str) -> list[datetime]:
    out = []
    if step == "hour":
        moment = period.start
        while moment < period.end:
            out.append(moment)
            moment += timedelta(hours=1)
        return out
    local = period.start.astimezone(tz)
    end = period.end.astimezone(tz)
    if step == "week":
        local = _week_of(period.start, tz).astimezone(tz)
    while local < end:
        out.append(local.astimezone(UTC))
        local = (local + timedelta(days=7 if step == "week" else 1, hours=3)).replace(
            hour=0)  # the +3h survives DST changes; then back to midnight
    return out


def _label(bucket: datetime, tz: ZoneInfo, step: str) -> str:
    local = bucket.astimezone(tz)
    return local.strftime("%Y-%m-%d %H:00" if step == "hour" else "%Y-%m-%d")


def hourly_totals(conn: Connection, start: datetime, end: datetime,
                  measure: str = "downloads", *, readable: Readable = None
                  ) -> dict[datetime, int]:
    """All-users hourly counts of one measure over every file ``readable`` lets the reader
    see (None: every file)."""
    r = Rollup.__table__
    where = [r.c.grain == "h", r.c.grp == ALL_USERS, r.c.bucket >= start, r.c.bucket < end]
    if readable is None:
        stmt = select(r.c.bucket, r.c[measure]).where(*where, r.c.file_id == ALL_FILES)
        return {bucket: int(value) for bucket, value in conn.execute(stmt)}
    hidden = Hidden.over(conn, hidden_file_ids(conn, readable), start, end)
    found = visible_sums(conn, [func.sum(r.c[measure])], where, [r.c.bucket], readable,
                          hidden)
    return {key[0]: values[0] for key, values in found.items()}


def heatmap(conn: Connection, period: Period, tz: ZoneInfo, *,
            readable: Readable = None) -> dict:
    """Downloads by local weekday (0 = Monday) and hour: where the peaks are (of the files
    ``readable`` lets the reader see)."""
    grid = [[0] * 24 for _ in range(7)]
    for bucket, value in hourly_totals(conn, period.start, period.end,
                                       readable=readable).items():
        local = bucket.astimezone(tz)
        grid[local.weekday()][local.hour] += value
    return {"weekdays": ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"],
            "hours": list(range(24)), "values": grid, "period": period.as_json()}


def forecast(conn: Connection, tz: ZoneInfo, *, weeks: int = 4,
             now: datetime | None = None, readable: Readable = None) -> dict:
    """Next week's hourly downloads: for each hour of the week, the average of the same
    hour in the last ``weeks`` weeks (a seasonal average; seasonal naive when weeks=1), of
    the files ``readable`` lets the reader see."""
    now = (now or datetime.now(UTC)).astimezone(UTC)
    start = now.replace(minute=0, second=0, microsecond=0) + timedelta(hours=1)
    history = hourly_totals(conn, start - timedelta(weeks=weeks), start, readable=readable)
    labels, values = [], []
    for hour in range(7 * 24):
        moment = start + timedelta(hours=hour)
        past = [history.get(moment - timedelta(weeks=k), 0) for k in range(1, weeks + 1)]
        # Local wall time, no weekday name: the page names it in its own language.
        labels.append(moment.astimezone(tz).strftime("%Y-%m-%d %H:00"))
        values.append(round(sum(past) / weeks, 2))
    return {"method": f"seasonal average of the same hour in the last {weeks} week(s)",
            "weeks": weeks, "start": start.isoformat(), "labels": labels, "values": values}
