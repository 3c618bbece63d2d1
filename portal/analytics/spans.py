"""Each person's first and last active day per file (``analytics_file_users``) and the gaps
between their active days (``analytics_user_gaps``), kept right from the user-days.

Distinct people over a period are counted from these two tables (queries.py,
``_users_per_file``). ``materialise.write_deltas`` keeps them right as it adds user-days;
bulk loads, which COPY the user-days, derive them from what is stored.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from itertools import pairwise

from sqlalchemy import Connection, delete, func, select, text, tuple_

from .models import ALL_FILES, FileUser, LogicalDownload, UserDay, UserGap
from .sqlbatch import IN_LIST, chunks, insert_in_batches, upsert


def widen_span(spans: dict[tuple, list], pair: tuple, user_id: int | None,
               day: datetime) -> None:
    """Add an active day to ``spans``: {(file, person): [user id, first day, last day]}."""
    span = spans.get(pair)
    if span is None:
        spans[pair] = [user_id, day, day]
    else:
        span[0] = user_id if user_id is not None else span[0]
        span[1] = min(span[1], day)
        span[2] = max(span[2], day)


def write_file_users(conn: Connection, spans: dict[tuple, list]) -> None:
    """Widen the stored first/last days per file and person (inserting new people)."""
    if not spans:
        return
    table = FileUser.__table__
    stmt = upsert(conn)(table)
    least, greatest = ((func.least, func.greatest) if conn.dialect.name == "postgresql"
                       else (func.min, func.max))  # SQLite's two-argument min and max
    stmt = stmt.on_conflict_do_update(
        index_elements=["file_id", "user_key"],
        set_={"user_id": func.coalesce(stmt.excluded.user_id, table.c.user_id),
              "first_day": least(table.c.first_day, stmt.excluded.first_day),
              "last_day": greatest(table.c.last_day, stmt.excluded.last_day)})
    rows = [{"file_id": f, "user_key": k, "user_id": u, "first_day": first, "last_day": last}
            for (f, k), (u, first, last) in spans.items()]
    insert_in_batches(conn, stmt, rows)


def file_users_from_user_days(conn: Connection) -> None:
    """Fill an empty ``analytics_file_users`` from the user-days (bulk loads)."""
    u = UserDay.__table__
    conn.execute(FileUser.__table__.insert().from_select(
        ["file_id", "user_key", "user_id", "first_day", "last_day"],
        select(u.c.file_id, u.c.user_key, func.max(u.c.user_id), func.min(u.c.day),
               func.max(u.c.day)).group_by(u.c.file_id, u.c.user_key)))


def derive_from_user_days(conn: Connection) -> None:
    """Replace every first-and-last day and every gap by those the stored user-days imply
    (after a rebuild or a load wrote the user-days alone)."""
    conn.execute(delete(FileUser.__table__))
    file_users_from_user_days(conn)
    gaps_from_user_days(conn)


def spans_of(user_days: dict[tuple, int | None]) -> dict[tuple, list]:
    """{(file, person): [user id, first day, last day]} of some user-days."""
    spans: dict[tuple, list] = {}
    for (day, fid, key), user_id in user_days.items():
        widen_span(spans, (fid, key), user_id, day)
    return spans


def stored_spans(conn: Connection, pairs: list[tuple]) -> dict[tuple, tuple]:
    """{(file, person): (first day, last day)} as stored, for these pairs."""
    t = FileUser.__table__
    found = {}
    for chunk in chunks(pairs, IN_LIST):
        for fid, key, first, last in conn.execute(
                select(t.c.file_id, t.c.user_key, t.c.first_day, t.c.last_day)
                .where(tuple_(t.c.file_id, t.c.user_key).in_(chunk))):
            found[(fid, key)] = (first, last)
    return found


# Consecutive local days are at most 25 hours apart (a DST change), days with one between
# at least 46: a gap row only where a whole inactive day lies between two active days.
GAP_MIN = timedelta(hours=36)
DAY = timedelta(days=1)


def gaps_between(days: list[datetime]) -> list[tuple[datetime, datetime]]:
    """The gaps (active day, next active day) of one person and file's sorted active days."""
    return [(a, b) for a, b in pairwise(days) if b - a > GAP_MIN]


def write_gaps(conn: Connection, user_days: dict[tuple, int | None],
               before: dict[tuple, tuple]) -> None:
    """Keep ``analytics_user_gaps`` right after the user-days were inserted.

    ``before`` is the stored first/last days of the affected pairs before that insert. The
    usual case, days at or after the last stored day, appends gaps without reading anything;
    a day before the last stored one (a late event, or an existing day that the insert
    skipped) re-derives that pair's gaps from its user-days (one index range per pair).
    """
    new: dict[tuple, set] = defaultdict(set)
    users: dict[tuple, int | None] = {}
    for (day, fid, key), user_id in user_days.items():
        new[(fid, key)].add(day)
        if user_id is not None or (fid, key) not in users:
            users[(fid, key)] = user_id
    rows, redo = [], []
    for pair, days in new.items():
        span = before.get(pair)
        if span is None:
            chain = sorted(days)
        elif min(days) >= span[1]:
            chain = [span[1], *sorted(d for d in days if d > span[1])]
        elif days <= {span[0], span[1]}:
            continue  # both already stored: the insert skipped them
        else:
            redo.append(pair)
            continue
        rows += [_gap_row(pair, a, b, users[pair]) for a, b in gaps_between(chain)]
    _insert_gaps(conn, rows)
    if redo:
        rederive(conn, redo, spans=False)


def rederive(conn: Connection, pairs: list[tuple], *, spans: bool = True) -> None:
    """Replace the gaps of these (file, person) pairs, and their first and last days unless
    ``spans`` is false, by those their stored user-days imply (one index range per pair):
    after a late day inside a span, or after user-days were deleted."""
    u, g, f = UserDay.__table__, UserGap.__table__, FileUser.__table__
    for chunk in chunks(pairs, IN_LIST):
        conn.execute(delete(g).where(tuple_(g.c.file_id, g.c.user_key).in_(chunk)))
        if spans:
            conn.execute(delete(f).where(tuple_(f.c.file_id, f.c.user_key).in_(chunk)))
        days: dict[tuple, list] = defaultdict(list)
        users: dict[tuple, int | None] = {}
        for fid, key, day, user_id in conn.execute(
                select(u.c.file_id, u.c.user_key, u.c.day, u.c.user_id)
                .where(tuple_(u.c.file_id, u.c.user_key).in_(chunk))
                .order_by(u.c.file_id, u.c.user_key, u.c.day)):
            days[(fid, key)].append(day)
            if user_id is not None or (fid, key) not in users:
                users[(fid, key)] = user_id
        _insert_gaps(conn, [_gap_row(pair, a, b, users[pair])
                            for pair, pair_days in days.items()
                            for a, b in gaps_between(pair_days)])
        if spans:
            write_file_users(conn, {pair: [users[pair], pair_days[0], pair_days[-1]]
                                    for pair, pair_days in days.items()})


def drop_unbacked_days(conn: Connection, days: list[tuple]) -> None:
    """Delete the user-days (day, next day, file, person) that no counted logical download
    backs any more (a late event moved a download's count to the day before:
    ``materialise.Deltas.move``) and re-derive their pairs' first and last days and gaps.
    Reads the logical downloads, so runs after they were written."""
    table, u = LogicalDownload.__table__, UserDay.__table__
    gone = []
    for day, next_day, fid, key in days:
        still = select(table.c.id).where(
            table.c.user_key == key, table.c.counted.is_(True),
            table.c.counted_at >= day, table.c.counted_at < next_day)
        if fid != ALL_FILES:
            still = still.where(table.c.file_id == fid)
        if conn.execute(still.limit(1)).first() is None:
            conn.execute(delete(u).where(u.c.day == day, u.c.file_id == fid,
                                         u.c.user_key == key))
            gone.append((fid, key))
    if gone:
        rederive(conn, sorted(set(gone)))


def _gap_row(pair: tuple, gap_from: datetime, gap_to: datetime, user_id: int | None) -> dict:
    return {"file_id": pair[0], "user_key": pair[1], "gap_from": gap_from, "gap_to": gap_to,
            "span_days": (gap_to - gap_from) // DAY, "user_id": user_id}


def _insert_gaps(conn: Connection, rows: list[dict]) -> None:
    if not rows:
        return
    table = UserGap.__table__
    stmt = upsert(conn)(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=["file_id", "user_key", "gap_from"],
        set_={"gap_to": stmt.excluded.gap_to, "span_days": stmt.excluded.span_days,
              "user_id": stmt.excluded.user_id})
    insert_in_batches(conn, stmt, rows)


# Every gap of every person and file from the user-days, in one statement (bulk loads, the
# 0007 backfill). lag() finds each active day's predecessor.
_GAPS_FROM_USER_DAYS = """
INSERT INTO analytics_user_gaps (file_id, user_key, gap_from, gap_to, span_days, user_id)
SELECT file_id, user_key, prev, day, floor(extract(epoch FROM day - prev) / 86400)::int,
       user_id
FROM (SELECT file_id, user_key, day, user_id,
             lag(day) OVER (PARTITION BY file_id, user_key ORDER BY day) AS prev
      FROM analytics_user_days) AS x
WHERE day - prev > interval '36 hours'
"""


def gaps_from_user_days(conn: Connection) -> None:
    """Replace every stored gap by those derived from the user-days (bulk loads, the 0007
    backfill): in SQL on PostgreSQL, through Python elsewhere."""
    conn.execute(delete(UserGap))
    if conn.dialect.name == "postgresql":
        conn.execute(text(_GAPS_FROM_USER_DAYS))
        return
    _insert_gaps(conn, derived_gap_rows(conn))


def derived_gap_rows(conn: Connection) -> list[dict]:
    """The gap rows the user-days imply (for checks and non-PostgreSQL backfills)."""
    u = UserDay.__table__
    days: dict[tuple, list] = defaultdict(list)
    users: dict[tuple, int | None] = {}
    for fid, key, day, user_id in conn.execute(
            select(u.c.file_id, u.c.user_key, u.c.day, u.c.user_id)
            .order_by(u.c.file_id, u.c.user_key, u.c.day)):
        days[(fid, key)].append(day)
        if user_id is not None or (fid, key) not in users:
            users[(fid, key)] = user_id
    return [_gap_row(pair, a, b, users[pair])
            for pair, pair_days in days.items() for a, b in gaps_between(pair_days)]
