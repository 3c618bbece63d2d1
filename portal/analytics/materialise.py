"""Write download events and keep logical downloads and rollups up to date, in SQL.

``store`` is the one write path: the flusher, the direct write when Redis is down, and
the simulator all go through it (the simulator through ``Deltas``, ``write_deltas`` and
bulk inserts). It is idempotent: an event whose ``event_key`` is already stored is skipped
(``rawevents.insert_new_events``: INSERT ... ON CONFLICT DO NOTHING), so only newly written
events move the logical downloads and the counters, and the same batch can be flushed twice
safely. The first/last days and gaps that follow from the user-days are in spans.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from sqlalchemy import Connection, bindparam, delete, func, select, text, update

from ..models import DownloadEvent, Group, user_groups
from . import clients, logical
from .models import (
    ALL_FILES,
    ALL_USERS,
    FileDetailDay,
    FileUser,
    LogicalDownload,
    Rollup,
    UserDay,
    UserGap,
)
from .rawevents import insert_new_events
from .spans import (
    derive_from_user_days,
    drop_unbacked_days,
    gaps_from_user_days,  # noqa: F401  (bench/run_analytics_bench.py calls it from here)
    spans_of,
    stored_spans,
    widen_span,
    write_file_users,
    write_gaps,
)
from .sqlbatch import IN_LIST, chunks, insert_in_batches, upsert


@dataclass(frozen=True)
class Settings:
    """The counting rules and the local time zone of the day buckets."""

    rules: logical.Rules
    tz: ZoneInfo

    @classmethod
    def from_config(cls, config) -> Settings:
        """From the ANALYTICS_* settings."""
        return cls(
            rules=logical.Rules(
                idle=timedelta(minutes=float(config["ANALYTICS_IDLE_MINUTES"])),
                probe_max_bytes=int(config["ANALYTICS_PROBE_MAX_BYTES"]),
                min_bytes=int(config["ANALYTICS_MIN_BYTES"]),
                complete_ratio=float(config["ANALYTICS_COMPLETE_RATIO"])),
            tz=ZoneInfo(config["ANALYTICS_TIMEZONE"]))


def hour_bucket(moment: datetime) -> datetime:
    """The UTC hour a moment falls in."""
    return moment.astimezone(UTC).replace(minute=0, second=0, microsecond=0)


def day_bucket(moment: datetime, tz: ZoneInfo) -> datetime:
    """Local midnight of the moment's local day, as UTC."""
    local = moment.astimezone(tz).replace(hour=0, minute=0, second=0, microsecond=0)
    return local.astimezone(UTC)


def to_event(row: dict) -> logical.Event:
    """A stored (or buffered) event row as the grouping sees it."""
    return logical.Event(
        key=clients.who_key(row["user_id"], row["link_id"], row["client_ip"], row["user_agent"]),
        file_id=row["file_id"], version_id=row["version_id"], size=row["size"],
        method=row["method"], status=row["status"],
        served=logical.parse_ranges(row["served_ranges"]), bytes_sent=row["bytes_sent"],
        started_at=row["started_at"], ended_at=row["ended_at"], user_id=row["user_id"],
        ua_class=row["ua_class"] or "other", served_from=row["served_from"] or "origin")


def in_time_order(rows: Iterable[dict]) -> list[logical.Event]:
    """Event rows as the grouping sees them, in the order it takes them."""
    return sorted((to_event(row) for row in rows), key=lambda e: (e.started_at, e.last_at))


@dataclass(slots=True)
class Counters:
    """The counters of one rollup row (or the increments to it): per response, and per
    logical download (in the bucket of the response that made it count)."""

    requests: int = 0
    bytes_served: int = 0
    cache_hits: int = 0
    downloads: int = 0
    completed: int = 0

    def as_tuple(self) -> tuple[int, ...]:
        """The values in the order of COUNTERS."""
        return tuple(getattr(self, name) for name in COUNTERS)

    def as_dict(self) -> dict[str, int]:
        """{counter name: value}."""
        return {name: getattr(self, name) for name in COUNTERS}


COUNTERS = tuple(f.name for f in fields(Counters))


class Deltas:
    """Counter increments per rollup row, user-days to add, and the first and last day per
    file and person they imply."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.rollups: dict[tuple, Counters] = defaultdict(Counters)
        self.user_days: dict[tuple, int | None] = {}
        self.file_users: dict[tuple, list] = {}
        self.details: dict[tuple, int] = defaultdict(int)
        self.left_days: set[tuple] = set()  # (day, file, person) to check: see ``move``
        self._memo: dict[tuple, list[tuple]] = {}

    def detail(self, old: tuple | None, new: tuple | None) -> None:
        """A logical download moved from one file-detail cell to another (None: none)."""
        if old != new:
            if old is not None:
                self.details[old] -= 1
            if new is not None:
                self.details[new] += 1

    def user_day(self, day: datetime, file_id: int, key: str, user_id: int | None) -> None:
        """A person with a counted download of a file (and so of ALL_FILES) on a day."""
        for fid in (file_id, ALL_FILES):
            self.user_days[(day, fid, key)] = user_id
            widen_span(self.file_users, (fid, key), user_id, day)

    def _keys(self, moment: datetime, file_id: int, groups: tuple[str, ...]) -> list[tuple]:
        """The rollup rows a moment, file and groups add to (remembered per whole second:
        a busy batch holds thousands of events of the same second, and the buckets of a
        moment depend only on its whole second, time-zone offsets being whole seconds)."""
        memo_key = (int(moment.timestamp()), file_id, groups)
        keys = self._memo.get(memo_key)
        if keys is None:
            keys = [(grain, bucket, fid, grp)
                    for grain, bucket in (("h", hour_bucket(moment)),
                                          ("d", day_bucket(moment, self.settings.tz)))
                    for grp in (ALL_USERS, *groups)
                    for fid in (file_id, ALL_FILES)]
            self._memo[memo_key] = keys
        return keys

    def record(self, event: logical.Event, change: logical.Change,
               groups: dict[int, list[str]]) -> None:
        """One response and what it changed of its logical download (``groups``: each
        user's group names)."""
        self.event(event, groups.get(event.user_id, ()))
        self.change(change, groups.get(change.session.user_id, ()))

    def event(self, event: logical.Event, groups: Iterable[str]) -> None:
        """A response: requests, bytes served, cache hits in its start's buckets."""
        sent, hit = event.sent, int(event.served_from == "cache")
        for key in self._keys(event.started_at, event.file_id, tuple(groups)):
            counters = self.rollups[key]
            counters.requests += 1
            counters.bytes_served += sent
            counters.cache_hits += hit

    def change(self, change: logical.Change, groups: Iterable[str]) -> None:
        """A logical download that now counts, now completed, or counts earlier."""
        session = change.session
        if change.moved_from is not None:
            self.move(change, tuple(groups))
        if not (change.counted_now or change.completed_now):
            return
        keys = self._keys(session.counted_at, session.file_id, tuple(groups))
        if change.counted_now:
            for key in keys:
                self.rollups[key].downloads += 1
            self.user_day(day_bucket(session.counted_at, self.settings.tz), session.file_id,
                          session.key, session.user_id)
        if change.completed_now:
            for key in keys:
                self.rollups[key].completed += 1

    def move(self, change: logical.Change, groups: tuple[str, ...]) -> None:
        """A counted download whose counting moment a late event moved earlier: its download
        (and completion, when it had completed before) leaves the old buckets for the new,
        and the old day's user-day may have lost its only download (``left_days``)."""
        session, tz = change.session, self.settings.tz
        was_completed = session.completed and not change.completed_now
        for key in self._keys(change.moved_from, session.file_id, groups):
            self.rollups[key].downloads -= 1
            self.rollups[key].completed -= was_completed
        for key in self._keys(session.counted_at, session.file_id, groups):
            self.rollups[key].downloads += 1
            self.rollups[key].completed += was_completed
        day, old_day = day_bucket(session.counted_at, tz), day_bucket(change.moved_from, tz)
        self.user_day(day, session.file_id, session.key, session.user_id)
        if old_day != day:
            self.left_days.update((old_day, fid, session.key)
                                  for fid in (session.file_id, ALL_FILES))


def detail_key(session: logical.Session, tz: ZoneInfo) -> tuple | None:
    """The FileDetailDay cell of a logical download (None while it does not count)."""
    if not session.counted:
        return None
    completion = session.completion
    return (session.file_id, day_bucket(session.counted_at, tz), session.version_id,
            session.ua_class, 9 if completion >= 1.0 else int(completion * 10),
            bool(session.completed))


def groups_of(conn: Connection, user_ids: Iterable[int | None]) -> dict[int, list[str]]:
    """The group names of each user (for the per-group rollups)."""
    wanted = sorted({u for u in user_ids if u is not None})
    found: dict[int, list[str]] = defaultdict(list)
    for chunk in chunks(wanted, IN_LIST):
        rows = conn.execute(
            select(user_groups.c.user_id, Group.name)
            .join(Group, Group.id == user_groups.c.group_id)
            .where(user_groups.c.user_id.in_(chunk)))
        for user_id, name in rows:
            found[user_id].append(name)
    return found


def session_from_row(row) -> logical.Session:
    """A LogicalDownload row as a Session."""
    return logical.Session(
        key=row.user_key, file_id=row.file_id, version_id=row.version_id, size=row.size,
        started_at=row.started_at, last_at=row.last_at, user_id=row.user_id,
        ranges=logical.parse_ranges(row.ranges), events=row.events, counted=row.counted,
        completed=row.completed, ua_class=row.ua_class, counted_at=row.counted_at, id=row.id)


def session_values(session: logical.Session) -> dict:
    """A Session as LogicalDownload column values."""
    return {"user_key": session.key, "user_id": session.user_id, "file_id": session.file_id,
            "version_id": session.version_id, "size": session.size,
            "started_at": session.started_at, "last_at": session.last_at,
            "counted_at": session.counted_at, "ranges": logical.format_ranges(session.ranges),
            "covered": session.covered, "completion": session.completion,
            "events": session.events, "counted": session.counted,
            "completed": session.completed, "ua_class": session.ua_class}


def write_sessions(conn: Connection, sessions: Iterable[logical.Session]) -> None:
    """Insert new and update changed LogicalDownload rows."""
    new, changed = [], []
    for session in sessions:
        if session.dirty:
            (new if session.id is None else changed).append(session)
    if new:
        conn.execute(LogicalDownload.__table__.insert(), [session_values(s) for s in new])
    if changed:
        table = LogicalDownload.__table__
        values = {name: bindparam(f"v_{name}") for name in session_values(changed[0])}
        conn.execute(update(table).where(table.c.id == bindparam("v_id")).values(values),
                     [{"v_id": s.id, **{f"v_{k}": v for k, v in session_values(s).items()}}
                      for s in changed])


def write_deltas(conn: Connection, deltas: Deltas) -> None:
    """Add the counters and user-days (``write_counts``) and the first/last days and gaps
    they imply.

    The first/last days are derived from the user-days written here (not from
    ``deltas.file_users``), so a stored first or last day is always a stored user-day: the
    gaps rely on that."""
    if not deltas.user_days:
        write_counts(conn, deltas)
        return
    pairs = spans_of(deltas.user_days)
    before = stored_spans(conn, list(pairs))
    write_counts(conn, deltas)
    write_gaps(conn, deltas.user_days, before)
    write_file_users(conn, pairs)
    if deltas.left_days:  # (day, file, person): their day and the next, in UTC
        tz = deltas.settings.tz
        drop_unbacked_days(conn, [(day, day_bucket(day + timedelta(hours=26), tz), fid, key)
                                  for day, fid, key in sorted(deltas.left_days)])


def write_counts(conn: Connection, deltas: Deltas) -> None:
    """Add the counter increments (INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n),
    the user-days and the file-detail cells; not the spans (``write_deltas``), which a bulk
    writer derives from every user-day at the end instead."""
    insert = upsert(conn)
    if deltas.rollups:
        rows = [{"grain": g, "bucket": b, "file_id": f, "grp": grp, **counters.as_dict()}
                for (g, b, f, grp), counters in deltas.rollups.items()]
        stmt = insert(Rollup.__table__)
        table = Rollup.__table__
        stmt = stmt.on_conflict_do_update(
            index_elements=["grain", "bucket", "file_id", "grp"],
            set_={name: table.c[name] + stmt.excluded[name] for name in COUNTERS})
        insert_in_batches(conn, stmt, rows)
    if deltas.user_days:
        rows = [{"day": d, "file_id": f, "user_key": k, "user_id": u}
                for (d, f, k), u in deltas.user_days.items()]
        stmt = insert(UserDay.__table__).on_conflict_do_nothing(
            index_elements=["day", "file_id", "user_key"])
        insert_in_batches(conn, stmt, rows)
    write_details(conn, deltas.details)


DETAIL_KEYS = ("file_id", "day", "version_id", "ua_class", "decile", "completed")


def write_details(conn: Connection, details: dict[tuple, int]) -> None:
    """Add to the file-detail cells (INSERT ... ON CONFLICT DO UPDATE SET n = n + excluded.n)."""
    rows = [{**dict(zip(DETAIL_KEYS, key, strict=True)), "downloads": n}
            for key, n in details.items() if n]
    if not rows:
        return
    table = FileDetailDay.__table__
    stmt = upsert(conn)(table)
    stmt = stmt.on_conflict_do_update(
        index_elements=list(DETAIL_KEYS),
        set_={"downloads": table.c.downloads + stmt.excluded.downloads})
    insert_in_batches(conn, stmt, rows)


def details_of(sessions: Iterable[logical.Session], tz: ZoneInfo) -> dict[tuple, int]:
    """The file-detail cells of final sessions (recomputation, rebuild, simulation)."""
    cells: dict[tuple, int] = defaultdict(int)
    for session in sessions:
        key = detail_key(session, tz)
        if key is not None:
            cells[key] += 1
    return dict(cells)


def details_from_logical(conn: Connection, settings: Settings, *, after_id: int = 0) -> None:
    """Add the file-detail cells of the logical downloads with an id above ``after_id``, in
    one INSERT ... SELECT on PostgreSQL (bulk loads, backfills), else through Python."""
    ld = LogicalDownload.__table__
    if conn.dialect.name != "postgresql":
        rows = conn.execute(select(ld).where(ld.c.id > after_id, ld.c.counted.is_(True)))
        write_details(conn, details_of((session_from_row(r) for r in rows), settings.tz))
        return
    conn.execute(text(
        "INSERT INTO analytics_file_details AS t (file_id, day, version_id, ua_class, decile,"
        " completed, downloads) SELECT file_id, date_trunc('day', counted_at, :tz), version_id,"
        " ua_class, CASE WHEN completion >= 1.0 THEN 9 ELSE floor(completion * 10)::int END,"
        " completed, count(*) FROM logical_downloads WHERE id > :after AND counted"
        " GROUP BY 1, 2, 3, 4, 5, 6 ON CONFLICT (file_id, day, version_id, ua_class, decile,"
        " completed) DO UPDATE SET downloads = t.downloads + excluded.downloads"),
        {"tz": settings.tz.key, "after": after_id})


# pg_advisory_xact_lock key of the analytics writers ("anal" in ASCII).
WRITER_LOCK = 0x616E616C


def serialise_writers(conn: Connection) -> None:
    """One analytics writer at a time, until the transaction ends (PostgreSQL).

    Why: the gaps (``write_gaps``) are decided from the first/last days stored before the
    write; two writers for the same person (the flusher, or workers writing directly while
    Redis is down) must not both decide from the same state. The lock is taken before
    anything is written, so it cannot deadlock with the row locks. SQLite already allows one
    writer at a time."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": WRITER_LOCK})


def store(conn: Connection, rows: list[dict], settings: Settings) -> int:
    """Write event rows (dicts of rawevents.EVENT_COLUMNS, datetimes aware) and materialise them.

    Returns how many were new. Runs inside the caller's transaction.
    """
    serialise_writers(conn)
    fresh = insert_new_events(conn, rows)
    if not fresh:
        return 0
    events = in_time_order(fresh)
    keys = sorted({e.key for e in events})
    since = min(e.started_at for e in events) - settings.rules.idle
    table = LogicalDownload.__table__
    loaded = []
    for chunk in chunks(keys, IN_LIST):
        loaded += [session_from_row(r) for r in conn.execute(
            select(table).where(table.c.user_key.in_(chunk), table.c.last_at >= since))]
    before = {s.id: detail_key(s, settings.tz) for s in loaded}
    sessionizer = logical.Sessionizer(settings.rules, loaded)
    deltas = replay(conn, events, sessionizer, settings)
    for session in sessionizer.sessions():
        if session.dirty:
            deltas.detail(before.get(session.id), detail_key(session, settings.tz))
    write_sessions(conn, sessionizer.sessions())
    write_deltas(conn, deltas)
    return len(fresh)


def replay(conn: Connection, events: list[logical.Event], sessionizer: logical.Sessionizer,
           settings: Settings) -> Deltas:
    """Feed events (in time order) to the grouping; the counter increments and user-days
    they make."""
    groups = groups_of(conn, [e.user_id for e in events])
    deltas = Deltas(settings)
    for event in events:
        deltas.record(event, sessionizer.add(event), groups)
    return deltas


def recompute(conn: Connection, settings: Settings) -> tuple[dict, set, list]:
    """Rollups and user-days computed afresh from every raw event (for checks and
    ``flask analytics rebuild``): ({(grain, bucket, file, grp): counters}, {user-day keys},
    [logical downloads])."""
    events = in_time_order(dict(r._mapping)
                           for r in conn.execute(select(DownloadEvent.__table__)))
    sessionizer = logical.Sessionizer(settings.rules)
    deltas = replay(conn, events, sessionizer, settings)
    rollups = {k: v.as_dict() for k, v in deltas.rollups.items() if any(v.as_tuple())}
    return rollups, set(deltas.user_days), list(sessionizer.sessions())


#: Events per step of ``rebuild`` (read, grouped and written together).
REBUILD_BATCH = 20_000


def rebuild(conn: Connection, settings: Settings, *, batch: int = REBUILD_BATCH) -> int:
    """Replace logical downloads, rollups and user-days by a recomputation from raw events.

    The events are read in time order, ``batch`` at a time, through the grouping the
    flusher uses; a logical download is written once no later event can join it (idle past
    the window), and each step's counters are added to the tables as the flusher adds them;
    the first-and-last days and gaps are derived from all the user-days at the end. So
    memory holds one step and the downloads still open, not the history (holding every
    event and download took 2.5 GiB per million events). Only right while no raw event has
    been purged; returns the number of logical downloads.
    """
    serialise_writers(conn)
    for table in (LogicalDownload, Rollup, UserDay, FileUser, UserGap, FileDetailDay):
        conn.execute(delete(table))
    events = DownloadEvent.__table__
    ordered = (select(events)
               .order_by(events.c.started_at,
                         func.coalesce(events.c.ended_at, events.c.started_at), events.c.id))
    sessionizer = logical.Sessionizer(settings.rules)
    written = 0
    # Streamed (a server-side cursor on PostgreSQL) for this statement only: the writes in
    # between go on the same connection.
    result = conn.execute(ordered.execution_options(stream_results=True, yield_per=batch))
    for part in result.partitions():
        step = [to_event(dict(row._mapping)) for row in part]
        deltas = replay(conn, step, sessionizer, settings)
        written += _write_final(conn, sessionizer.forget_before(step[-1].started_at), deltas,
                                settings)
    written += _write_final(conn, list(sessionizer.sessions()), Deltas(settings), settings)
    derive_from_user_days(conn)
    return written


def _write_final(conn: Connection, sessions: list[logical.Session], deltas: Deltas,
                 settings: Settings) -> int:
    """Write a rebuild step: its counters, and the logical downloads no event can change
    any more (with their file-detail cells)."""
    for key, n in details_of(sessions, settings.tz).items():
        deltas.details[key] += n
    write_sessions(conn, sessions)
    write_counts(conn, deltas)
    return len(sessions)


def purge(conn: Connection, *, events_before: datetime, logical_before: datetime,
          hourly_before: datetime) -> dict:
    """Delete raw events, logical downloads and hourly rollups older than the limits."""
    counts = {}
    for name, stmt in (
        ("events", delete(DownloadEvent).where(DownloadEvent.started_at < events_before)),
        ("logical", delete(LogicalDownload).where(LogicalDownload.last_at < logical_before)),
        ("hourly", delete(Rollup).where(Rollup.grain == "h", Rollup.bucket < hourly_before)),
    ):
        counts[name] = conn.execute(stmt).rowcount
    return counts
