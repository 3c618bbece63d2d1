"""Read the rollups (never the raw events) and answer with plain dicts for pages and the API.

This module is the views' one door to the reads: totals, distinct people, the overview, top
files and a file's detail are here; which files and days a query covers is scope.py (who
sees what, periods); the series over time are timeseries.py. Both are re-exported here.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, distinct, func, select

from ..models import File, FileVersion, Group, user_groups
from .clients import CLASSES
from .models import ALL_FILES, ALL_USERS, FileDetailDay, FileUser, Rollup, UserDay, UserGap
from .scope import (
    MEASURES,
    Hidden,
    Period,
    Readable,
    hidden_file_ids,
    scope_of,
    visible_file,
    visible_sums,
)
from .timeseries import forecast, heatmap, series

#: The reads the views (and tests) call as queries.X; scope_of, visible_file, Period and
#: the series come from scope.py and timeseries.py.
__all__ = [
    "MEASURES", "Hidden", "Period", "Readable", "co_downloaded", "file_detail", "file_stats",
    "forecast", "groups_and_categories", "heatmap", "hidden_file_ids", "overview",
    "rows_to_csv_table", "scope_of", "series", "top_files", "totals", "unique_users",
    "visible_file",
]

DAY = timedelta(days=1)


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def _change(now: float | None, before: float | None) -> float | None:
    if now is None or not before:
        return None
    return round((now - before) / before, 4)


def totals(conn: Connection, period: Period, *, file_id: int = ALL_FILES,
           grp: str = ALL_USERS, category: str | None = None,
           readable: Readable = None) -> dict:
    """Sums of the daily rollups and distinct users over a period: of one file, of a
    category, or of every file ``readable`` lets the reader see (None: every file)."""
    return _totals(conn, period, file_id=file_id, grp=grp, category=category,
                   readable=readable,
                   hidden=_hidden_in(conn, period, file_id, category, readable))


def _hidden_in(conn: Connection, period: Period, file_id: int, category: str | None,
               readable: Readable) -> Hidden:
    """What the reader may not see of a period's downloads over every file (nothing for one
    file or a category, whose rows are filtered directly)."""
    if file_id == ALL_FILES and category is None:
        return Hidden.over(conn, hidden_file_ids(conn, readable), period.start, period.end)
    return Hidden()


def _totals(conn: Connection, period: Period, *, file_id: int, grp: str,
            category: str | None, readable: Readable, hidden: Hidden) -> dict:
    r = Rollup.__table__
    where = [r.c.grain == "d", r.c.grp == grp, r.c.bucket >= period.start,
             r.c.bucket < period.end]
    columns = [func.coalesce(func.sum(r.c[m]), 0) for m in MEASURES]
    if category is not None:
        stmt = (select(*columns).join(File, File.id == r.c.file_id)
                .where(*where, File.category == category))
        if readable is not None:
            stmt = stmt.where(readable)
        sums = [int(v) for v in conn.execute(stmt).one()]
    elif file_id == ALL_FILES and readable is not None:
        sums = (visible_sums(conn, columns, where, [], readable, hidden)
                .get((), [0] * len(MEASURES)))
    else:
        sums = [int(v) for v in conn.execute(select(*columns).where(
            *where, r.c.file_id == file_id)).one()]
    values = dict(zip(MEASURES, sums, strict=True))
    values["unique_users"] = _unique_users(conn, period, file_id=file_id, grp=grp,
                                           category=category, readable=readable,
                                           hidden=hidden)
    values["completion_rate"] = _ratio(values["completed"], values["downloads"])
    values["cache_hit_rate"] = _ratio(values["cache_hits"], values["requests"])
    return values


def unique_users(conn: Connection, period: Period, *, file_id: int = ALL_FILES,
                 grp: str = ALL_USERS, category: str | None = None,
                 readable: Readable = None) -> int:
    """Distinct people (or links, or anonymous clients) with a counted download (exact), of
    one file, of a category, or of any file ``readable`` lets the reader see."""
    return _unique_users(conn, period, file_id=file_id, grp=grp, category=category,
                         readable=readable,
                         hidden=_hidden_in(conn, period, file_id, category, readable))


def _unique_users(conn: Connection, period: Period, *, file_id: int, grp: str,
                  category: str | None, readable: Readable, hidden: Hidden) -> int:
    if category is None and (file_id != ALL_FILES or not hidden.downloads):
        # One file, or every file with none of the hidden ones downloaded in the period
        # (then the readable files' people are all the people): the exact fast path.
        return _users_per_file(conn, period, [file_id], grp).get(file_id, 0)
    # Distinct people do not add up per file: counted afresh over the user-days of the
    # files (of the category) the reader may see, in proportion to their activity in the
    # period (docs/performance.md, "Analytics as staff").
    u = UserDay.__table__
    files = select(File.id)
    if category is not None:
        files = files.where(File.category == category)
    if readable is not None:
        files = files.where(readable)
    keys = select(u.c.user_key).where(u.c.day >= period.start, u.c.day < period.end,
                                      u.c.file_id.in_(files))
    if grp != ALL_USERS:
        keys = (keys.join(user_groups, user_groups.c.user_id == u.c.user_id)
                .join(Group, Group.id == user_groups.c.group_id).where(Group.name == grp))
    # count(*) over DISTINCT, not count(DISTINCT): PostgreSQL hashes (in parallel) the one
    # and sorts for the other (145 against 530 ms over 90 days of 2.2 M events).
    return int(conn.execute(select(func.count()).select_from(
        keys.distinct().subquery())).scalar_one())


def overview(conn: Connection, period: Period, *, readable: Readable = None) -> dict:
    """Downloads, unique users, bytes, completion and cache hit rate of the files
    ``readable`` lets the reader see, with the change against the previous period."""
    ids = hidden_file_ids(conn, readable)
    now, before = (_totals(conn, p, file_id=ALL_FILES, grp=ALL_USERS, category=None,
                           readable=readable, hidden=Hidden.over(conn, ids, p.start, p.end))
                   for p in (period, period.previous()))
    keys = ("downloads", "unique_users", "bytes_served", "completion_rate", "cache_hit_rate",
            "requests")
    return {"period": period.as_json(),
            "current": {k: now[k] for k in keys},
            "previous": {k: before[k] for k in keys},
            "change": {k: _change(now[k], before[k]) for k in keys}}


def top_files(conn: Connection, period: Period, *, category: str | None = None,
              grp: str = ALL_USERS, limit: int = 20, readable: Readable = None) -> list[dict]:
    """The most downloaded of the files ``readable`` lets the reader see: downloads, unique
    users, bytes, completion.

    Sums per file id first (an index-only scan of the covering rollup index and a hash
    aggregate into a few hundred groups), then joins the titles of the top ``limit``:
    grouping by title and category as well sorted every daily row (on disk at 10 M events).
    ``readable`` filters that join, before the limit, so the list is the reader's top."""
    r = Rollup.__table__
    where = [r.c.grain == "d", r.c.grp == grp, r.c.file_id != ALL_FILES,
             r.c.bucket >= period.start, r.c.bucket < period.end]
    if category:
        where.append(r.c.file_id.in_(select(File.id).where(File.category == category)))
    sums = (select(r.c.file_id, func.sum(r.c.downloads).label("downloads"),
                   func.sum(r.c.completed).label("completed"),
                   func.sum(r.c.bytes_served).label("bytes_served"))
            .where(*where).group_by(r.c.file_id).subquery())
    stmt = (select(sums.c.file_id, File.title, File.category, sums.c.downloads,
                   sums.c.completed, sums.c.bytes_served)
            .join(File, File.id == sums.c.file_id)
            .order_by(sums.c.downloads.desc(), sums.c.file_id).limit(limit))
    if readable is not None:
        stmt = stmt.where(readable)
    rows = conn.execute(stmt).all()
    users = _users_per_file(conn, period, [row.file_id for row in rows], grp)
    return [{"file_id": row.file_id, "title": row.title, "category": row.category,
             "downloads": int(row.downloads), "unique_users": users.get(row.file_id, 0),
             "bytes_served": int(row.bytes_served),
             "completion_rate": _ratio(int(row.completed), int(row.downloads))}
            for row in rows]


def _users_per_file(conn: Connection, period: Period, file_ids: list[int],
                    grp: str) -> dict[int, int]:
    """Distinct people per file over the period, exact, in two index range counts (never a
    count(DISTINCT) over every user-day of the period, never a probe per person).

    A person was active in [a, b) when their first-to-last-day span meets it and none of
    their gaps covers it whole (at most one can): people whose span meets the period, minus
    gaps with gap_from < a and gap_to >= b. For periods that end today no gap ends that late,
    so the second count is empty."""
    if not file_ids:
        return {}
    f, g = FileUser.__table__, UserGap.__table__
    start, end = period.start, period.end
    spans = (select(f.c.file_id, func.count())
             .where(f.c.file_id.in_(file_ids), f.c.last_day >= start, f.c.first_day < end)
             .group_by(f.c.file_id))
    # A covering gap is longer than the period: span_days only narrows the index range.
    covering = (select(g.c.file_id, func.count())
                .where(g.c.file_id.in_(file_ids), g.c.span_days >= (end - start) // DAY,
                       g.c.gap_to >= end, g.c.gap_from < start)
                .group_by(g.c.file_id))
    found: dict[int, int] = defaultdict(int)
    for stmt, sign, table in ((spans, 1, f), (covering, -1, g)):
        if grp != ALL_USERS:
            stmt = (stmt.join(user_groups, user_groups.c.user_id == table.c.user_id)
                    .join(Group, Group.id == user_groups.c.group_id).where(Group.name == grp))
        for file_id, n in conn.execute(stmt):
            found[file_id] += sign * int(n)
    return dict(found)


def file_detail(conn: Connection, file_id: int, period: Period, tz: ZoneInfo) -> dict:
    """One file (that the caller found with ``visible_file``): totals, completion histogram,
    client classes, versions, from the file's daily detail cells (never every logical
    download of the period)."""
    t = FileDetailDay.__table__
    rows = conn.execute(
        select(t.c.version_id, t.c.ua_class, t.c.decile, t.c.completed, func.sum(t.c.downloads))
        .where(t.c.file_id == file_id, t.c.day >= period.start, t.c.day < period.end)
        .group_by(t.c.version_id, t.c.ua_class, t.c.decile, t.c.completed)).all()
    histogram = [0] * 10
    clients = dict.fromkeys(CLASSES, 0)
    per_version: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for version_id, ua_class, bin_, completed, n in rows:
        n = int(n)
        histogram[int(bin_)] += n
        clients[ua_class if ua_class in clients else "other"] += n
        per_version[version_id][0] += n
        per_version[version_id][1] += n if completed else 0
    numbers = dict(conn.execute(select(FileVersion.id, FileVersion.number)
                                .where(FileVersion.id.in_(list(per_version))))
                   .all()) if per_version else {}
    by_number: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for version_id, (count, done) in per_version.items():
        if version_id in numbers:
            by_number[numbers[version_id]][0] += count
            by_number[numbers[version_id]][1] += done
    versions = [{"version": number, "downloads": count, "completion_rate": _ratio(done, count)}
                for number, (count, done) in sorted(by_number.items())]
    return {"file_id": file_id, "totals": totals(conn, period, file_id=file_id),
            "completion_histogram": {"labels": [f"{i * 10}-{i * 10 + 9}%" if i < 9
                                                else "90-100%" for i in range(10)],
                                     "values": histogram},
            "clients": clients, "versions": versions, "period": period.as_json()}


def file_stats(conn: Connection, file_id: int, period: Period) -> dict:
    """The CONTRACT's /api/analytics/files/<id> numbers (the caller checked
    ``visible_file``)."""
    values = totals(conn, period, file_id=file_id)
    return {"file_id": file_id, "days": period.days, "downloads": values["downloads"],
            "unique_users": values["unique_users"], "bytes_served": values["bytes_served"],
            "completion_rate": values["completion_rate"], "requests": values["requests"],
            "completed": values["completed"], "cache_hit_rate": values["cache_hit_rate"],
            "period": period.as_json()}


def co_downloaded(conn: Connection, file_id: int, *, since: datetime,
                  readable: Readable = None, limit: int = 20,
                  max_people: int = 2000) -> list[tuple[int, int]]:
    """Files downloaded by the people who downloaded this one, among those ``readable``
    lets the viewer see: [(file id, people)], most shared first (item-to-item
    co-occurrence over counted logical downloads). The filter comes before the limit, so
    popular files the viewer may not read take no places."""
    u = UserDay.__table__
    people = (select(u.c.user_key.label("k"))
              .where(u.c.file_id == file_id, u.c.day >= since)
              .distinct().limit(max_people).subquery())
    shared = func.count(distinct(u.c.user_key)).label("shared")
    stmt = (select(u.c.file_id, shared)
            .where(u.c.user_key.in_(select(people.c.k)), u.c.day >= since,
                   u.c.file_id != file_id, u.c.file_id != ALL_FILES)
            .group_by(u.c.file_id).order_by(shared.desc(), u.c.file_id).limit(limit))
    if readable is not None:
        stmt = stmt.where(u.c.file_id.in_(select(File.id).where(readable)))
    return [(int(f), int(n)) for f, n in conn.execute(stmt)]


def groups_and_categories(conn: Connection, *, readable: Readable = None) -> dict:
    """The filter choices of the pages: the categories of the files ``readable`` lets the
    reader see (a category holding only hidden files is not named), and every group."""
    stmt = select(File.category).distinct().order_by(File.category)
    if readable is not None:
        stmt = stmt.where(readable)
    cats = [c for (c,) in conn.execute(stmt)]
    groups = [g for (g,) in conn.execute(select(Group.name).order_by(Group.name))]
    return {"categories": cats, "groups": groups}


def rows_to_csv_table(data: dict | list) -> tuple[list[str], list[list]]:
    """Any chart JSON as a header and rows (the CSV export of every table and chart)."""
    if isinstance(data, list):
        header = list(data[0]) if data else []
        return header, [[row.get(h) for h in header] for row in data]
    if "labels" in data:
        series_keys = [k for k, v in data.items()
                       if isinstance(v, list) and len(v) == len(data["labels"]) and k != "labels"]
        return (["label", *series_keys],
                [[label, *[data[k][i] for k in series_keys]]
                 for i, label in enumerate(data["labels"])])
    if "weekdays" in data:
        return (["weekday", *[f"{h:02d}" for h in data["hours"]]],
                [[day, *data["values"][i]] for i, day in enumerate(data["weekdays"])])
    flat = defaultdict(dict)
    for key, value in data.items():
        if isinstance(value, dict):
            for inner, v in value.items():
                flat[inner][key] = v
        else:
            flat[key]["value"] = value
    columns = sorted({c for row in flat.values() for c in row})
    return ["name", *columns], [[name, *[row.get(c) for c in columns]]
                                for name, row in flat.items()]
