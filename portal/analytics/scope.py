"""What a query reads of the rollups: which files its reader may see, and which days.

Who sees what: every query over several files takes ``readable``, a filter on File (the
catalog's ``readable_clause``, see ``scope_of``), or None for every file (admins: no join,
no filter). Per-file queries expect the caller to have checked ``visible_file`` first.
Sums over every file for a restricted reader are the all-files rollup minus the rows of the
files outside ``readable``, or the readable files' rows when the others had most of the
downloads (``visible_sums``); distinct people are the all-files ones while no hidden file
was downloaded, else counted afresh (docs/analytics.md, "Who sees what").

Periods are whole local days (ANALYTICS_TIMEZONE): ``days=7`` is today and the six days
before it; the previous period is the seven days before that.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import ColumnElement, Connection, func, select

from ..access import readable_clause
from ..models import File, User
from .models import ALL_FILES, ALL_USERS, Rollup
from .sqlbatch import IN_LIST, chunks

#: The rollup counters the queries sum, in the order of their answers.
MEASURES = ("requests", "bytes_served", "cache_hits", "downloads", "completed")

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
                            .scalar_one()) for chunk in chunks(ids, IN_LIST))
        return cls(tuple(ids), downloads, every)

    @property
    def mostly(self) -> bool:
        """Whether the hidden files had most of the downloads."""
        return 2 * self.downloads > self.every


def visible_sums(conn: Connection, columns: list, where: list, keys: list,
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
    for chunk in chunks(hidden.ids, IN_LIST):
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

    def as_json(self) -> dict:
        """The period as the API answers it."""
        return {"start": self.start.isoformat(), "end": self.end.isoformat(),
                "days": self.days}
