"""Read the rollups (never the raw events) and answer with plain dicts for pages and the API.

Periods are whole local days (ANALYTICS_TIMEZONE): ``days=7`` is today and the six days
before it; the previous period is the seven days before that.

Who sees what: every query over several files takes ``readable``, a filter on File (the
catalog's ``readable_clause``, see ``scope_of``), or None for every file (admins: no join,
no filter). Per-file queries expect the caller to have checked ``visible_file`` first.
Sums over every file for a restricted reader are the all-files rollup minus the rows of the
files outside ``readable``, or the readable files' rows when the others had most of the
downloads (``_visible_sums``); distinct people are the all-files ones while no hidden file
was downloaded, else counted afresh (docs/analytics.md, "Who sees what").
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Connection, distinct, func, select

from ..access import readable_clause
from ..models import File, FileVersion, Group, User, user_groups
from .clients import CLASSES
from .models import ALL_FILES, ALL_USERS, FileDetailDay, FileUser, Rollup, UserDay, UserGap

DAY = timedelta(days=1)
MEASURES = ("requests", "bytes_served", "cache_hits", "downloads", "completed")
CHUNK = 500  # ids per IN list: far below SQLite's parameter limit; exact ids plan as index probes

Readable = ColumnElement[bool] | None


def scope_of(user: User) -> Readable:
    """The files ``user`` may see in analytics, as a filter on File: None for admins (every
    file, deleted ones too, with no filter at all), else the catalog's readable_clause."""
    if getattr(user, "is_admin", False):
        return None
    return readable_clause(user)


def visible_file(conn: Connection, file_id: int, readable: Readable) -> dict | None:
    """The file's id, title and category when it exists and ``readable`` lets its reader see
    it; None otherwise: a missing file and a hidden one look the same."""
    stmt = select(File.id, File.title, File.category).where(File.id == file_id)
    if readable is not None:
        stmt = stmt.where(readable)
    row = conn.execute(stmt).one_or_none()
    return None if row is None else {"id": row.id, "title": row.title, "category": row.category}


def hidden_file_ids(conn: Connection, readable: Readable) -> list[int]:
    """The ids of the files outside ``readable`` (none for None), whose rollup rows are
    taken off the all-files totals."""
    if readable is None:
        return []
    # NOT IN over the readable ids, not NOT(readable): the clause may be NULL for a row
    # (owner_id = :id with no owner), and NOT NULL would hide nothing.
    stmt = (select(File.id).where(File.id.not_in(select(File.id).where(readable)))
            .order_by(File.id))
    return list(conn.execute(stmt).scalars())


def _chunks(ids: Sequence[int]) -> list[Sequence[int]]:
    return [ids[i:i + CHUNK] for i in range(0, len(ids), CHUNK)]


@dataclass(frozen=True)
class Hidden:
    """The files a reader may not see, and everyone's counted downloads of them and of all
    files over a time range (from the daily rollups): which side is cheaper to read."""

    ids: Sequence[int] = ()
    downloads: int = 0
    every: int = 0

    @classmethod
    def over(cls, conn: Connection, ids: Sequence[int], start: datetime,
             end: datetime) -> Hidden:
        """The downloads of these hidden files and of all files in [start, end)."""
        if not ids:
            return cls()
        r = Rollup.__table__
        where = (r.c.grain == "d", r.c.grp == ALL_USERS, r.c.bucket >= start, r.c.bucket < end)
        total = func.coalesce(func.sum(r.c.downloads), 0)
        every = int(conn.execute(select(total).where(*where, r.c.file_id == ALL_FILES))
                    .scalar_one())
        downloads = sum(int(conn.execute(select(total).where(*where, r.c.file_id.in_(chunk)))
                            .scalar_one()) for chunk in _chunks(ids))
        return cls(tuple(ids), downloads, every)

    @property
    def mostly(self) -> bool:
        """Whether the hidden files had most of the downloads."""
        return 2 * self.downloads > self.every


def _visible_sums(conn: Connection, columns: list, where: list, keys: list,
                  readable: ColumnElement[bool], hidden: Hidden) -> dict[tuple, list[int]]:
    """Sums of rollup ``columns`` per ``keys`` over the files ``readable`` lets the reader
    see: every file's rows (file 0) less the hidden files' rows, or, when the hidden files
    had most of the downloads, the readable files' rows.

    Both exact, as every counter of the all-files row is the sum of the files' rows.
    Subtracting reads file 0 and the hidden files' rows by the (grain, grp, file_id,
    bucket) index, where summing the readable files' rows would read nearly every file's
    rows of the period (hundreds of thousands of hourly rows for a long heatmap)."""
    r = Rollup.__table__

    def run(file_filter) -> dict[tuple, list[int]]:
        stmt = select(*keys, *columns).where(*where, file_filter)
        if keys:
            stmt = stmt.group_by(*keys)
        return {tuple(row[:len(keys)]): [int(v or 0) for v in row[len(keys):]]
                for row in conn.execute(stmt)}

    if hidden.mostly:
        return run(r.c.file_id.in_(select(File.id).where(readable)))
    found = run(r.c.file_id == ALL_FILES)
    for chunk in _chunks(hidden.ids):
        for key, values in run(r.c.file_id.in_(chunk)).items():
            have = found.get(key, [0] * len(values))
            found[key] = [a - b for a, b in zip(have, values, strict=True)]
    return found


@dataclass(frozen=True)
class Period:
    """[start, end) in UTC, aligned to local midnights."""

    start: datetime
    end: datetime
    days: int

    @classmethod
    def last_days(cls, days: int, tz: ZoneInfo, now: datetime | None = None) -> Period:
        """Today and the days - 1 before it."""
        now = (now or datetime.now(UTC)).astimezone(tz)
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        end = (midnight + timedelta(days=1)).astimezone(UTC)
        start = (midnight - timedelta(days=days - 1)).astimezone(UTC)
        return cls(start, end, days)

    def previous(self) -> Period:
        """The same number of days just before."""
        span = self.end - self.start
        return Period(self.start - span, self.start, self.days)


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
        sums = (_visible_sums(conn, columns, where, [], readable, hidden)
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
    return {"period": _period_json(period),
            "current": {k: now[k] for k in keys},
            "previous": {k: before[k] for k in keys},
            "change": {k: _change(now[k], before[k]) for k in keys}}


def _period_json(period: Period) -> dict:
    return {"start": period.start.isoformat(), "end": period.end.isoformat(),
            "days": period.days}


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
        found = {key[0]: values for key, values in _visible_sums(
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
    found = _visible_sums(conn, [func.sum(r.c[measure])], where, [r.c.bucket], readable,
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
            "hours": list(range(24)), "values": grid, "period": _period_json(period)}


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
        labels.append(moment.astimezone(tz).strftime("%a %m-%d %H:00"))
        values.append(round(sum(past) / weeks, 2))
    return {"method": f"seasonal average of the same hour in the last {weeks} week(s)",
            "weeks": weeks, "start": start.isoformat(), "labels": labels, "values": values}


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
            "clients": clients, "versions": versions, "period": _period_json(period)}


def file_stats(conn: Connection, file_id: int, period: Period) -> dict:
    """The CONTRACT's /api/analytics/files/<id> numbers (the caller checked
    ``visible_file``)."""
    values = totals(conn, period, file_id=file_id)
    return {"file_id": file_id, "days": period.days, "downloads": values["downloads"],
            "unique_users": values["unique_users"], "bytes_served": values["bytes_served"],
            "completion_rate": values["completion_rate"], "requests": values["requests"],
            "completed": values["completed"], "cache_hit_rate": values["cache_hit_rate"],
            "period": _period_json(period)}


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
