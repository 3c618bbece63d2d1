"""Synthetic download load: ``flask --app wsgi analytics simulate --events N --days D``.

By default it invents history only: the existing users downloading the existing files they
may read (what ``flask demo`` seeds). ``--new-users`` / ``--new-files`` add simulated users
and placeholder files for a benchmark; placeholders are readable by SIM_GROUP (the
simulated users) and admins only, and their content is stored, so nobody else ever sees
one and none answers 503.

Realistic enough to exercise the pages and the benchmark: a term calendar (autumn and
spring terms, winter and summer breaks), exam peaks at the end of each term, a weekly
rhythm (quieter weekends), a daily rhythm (mornings, afternoons and a late-evening peak in
the dormitories), Zipf-like file popularity, and three kinds of clients: browsers (one
connection, sometimes resumed), download managers (a 1-byte probe, then up to 16 parallel
ranged connections) and command-line tools (wget, interrupted and resumed with -c).

Events go straight into ``download_events`` in bulk (COPY on PostgreSQL), and the same
pure grouping as the flusher (logical.Sessionizer, materialise.Deltas) fills the logical
downloads and rollups, so the rollups equal a recomputation from the raw events.
"""

from __future__ import annotations

import functools
import io
import itertools
import operator
import queue
import random
import threading
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Index, func, select, text
from sqlalchemy.exc import DBAPIError

from ..access import parse_access
from ..models import DownloadEvent, File, FileVersion, Group, User, user_groups
from . import clients, logical, materialise, rawevents, spans
from .models import FileUser, LogicalDownload, Rollup, UserDay, UserGap

CATEGORIES = ("课程表", "课件", "录播", "考试", "表格", "通知")
GROUPS = ("CS2023", "CS2024", "EE2023", "EE2024", "MATH2024", "LAW2024")
AGENTS = {
    clients.BROWSER: ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126",
                      "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) Safari/605.1.15",
                      "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5) Mobile/15E148 MicroMessenger"),
    clients.MANAGER: ("aria2/1.37.0", "Mozilla/4.0 (compatible; MSIE 8.0) IDM/6.42",
                      "Motrix/1.8", "Thunder/11.4 迅雷"),
    clients.COMMAND_LINE: ("Wget/1.21.4", "curl/8.5.0"),
}
# Relative load per local hour of day: night, morning, afternoon, late evening peak.
HOURS = (3, 2, 1, 1, 1, 2, 4, 8, 12, 14, 15, 12, 9, 10, 13, 14, 13, 11, 10, 14, 17, 19, 16, 9)


def term_weight(day: datetime) -> float:
    """How busy a date is: breaks quiet, term normal, mid-term exams (early November, late
    April) twice and the last weeks of a term (finals) three times as busy, weekends at 60 %."""
    month, dom = day.month, day.day
    if month in (7, 8) or (month == 2 and dom < 20):
        weight = 0.25  # summer and winter breaks
    elif (month == 1 and dom <= 20) or (month == 6 and dom >= 10):
        weight = 3.0  # exam weeks
    elif (month == 12 and dom >= 20) or (month == 11 and 3 <= dom <= 16) or (
            month == 4 and 18 <= dom <= 30):
        weight = 2.0  # revision, mid-term exams
    else:
        weight = 1.0
    return weight * (0.6 if day.weekday() >= 5 else 1.0)


# Placeholder files (``--new-files``) are readable by this group only, whose members are the
# simulated users (and, as for every file, admins): no student or staff member sees them in
# the catalog, the most-downloaded list or the analytics, and their content is really stored
# so that an admin's download of one never answers 503.
SIM_GROUP = "sim-readers"
# Placeholder contents, shared by content hash (so N placeholders cost a few megabytes of
# storage, not N): sizes like a form, a handout, slides, a scanned document and a recording.
PLACEHOLDER_SIZES = (24 << 10, 96 << 10, 384 << 10, 1536 << 10)
RECORDING_SIZE = 16 << 20
EXAM_WORDS = ("考试", "复习", "exam")


def placeholder_body(size: int) -> bytes:
    """Deterministic content of one placeholder size (the same bytes every run)."""
    line = f"campus portal: simulated analytics placeholder, {size} bytes\n".encode()
    return (line * (size // len(line) + 1))[:size]


def _group_ids(conn: Connection, names) -> dict[str, int]:
    ids = {}
    for name in names:
        gid = conn.execute(select(Group.id).where(Group.name == name)).scalar()
        if gid is None:
            gid = conn.execute(Group.__table__.insert().values(
                name=name, description="simulated")).inserted_primary_key[0]
        ids[name] = gid
    return ids


def _add_simulated_users(conn: Connection, users: int, rng: random.Random) -> None:
    """Users ``sim…`` (no password: they cannot sign in), each in one class group and in
    SIM_GROUP, until ``users`` of them exist."""
    have = conn.execute(select(func.count()).select_from(User)
                        .where(User.username.like("sim%"))).scalar_one()
    if have >= users:
        return
    groups = _group_ids(conn, (*GROUPS, SIM_GROUP))
    now = datetime.now(UTC)
    rows = [{"username": f"sim{n:06d}", "display_name": f"sim{n:06d}", "role": "student",
             "active": True, "created_at": now, "password_hash": None}
            for n in range(have, users)]
    conn.execute(User.__table__.insert(), rows)
    ids = conn.execute(select(User.id).where(User.username.in_([r["username"]
                                                                 for r in rows]))).scalars()
    conn.execute(user_groups.insert(), [
        {"user_id": uid, "group_id": gid} for uid in ids
        for gid in (groups[rng.choice(GROUPS)], groups[SIM_GROUP])])


def _add_placeholder_files(conn: Connection, files: int, storage, rng: random.Random) -> None:
    """Placeholder files (category ``sim-…``, readable by SIM_GROUP only, content really
    stored) until ``files`` of them exist."""
    have = conn.execute(select(func.count()).select_from(File)
                        .where(File.category.like("sim-%"))).scalar_one()
    if have >= files:
        return
    if storage is None:
        raise ValueError("placeholder files need the storage to keep their content")
    _group_ids(conn, (SIM_GROUP,))
    stored = {}
    now = datetime.now(UTC)
    for n in range(have, files):
        kind = CATEGORIES[n % len(CATEGORIES)]
        fid = conn.execute(File.__table__.insert().values(
            title=f"模拟文件 {n:04d}", category=f"sim-{kind}", description="simulated",
            access=f"group:{SIM_GROUP}", created_at=now, updated_at=now)).inserted_primary_key[0]
        first = rng.randrange(len(PLACEHOLDER_SIZES))
        for number in range(1, 1 + (2 if n % 7 == 0 else 1)):
            size = (RECORDING_SIZE + number if kind == "录播"
                    else PLACEHOLDER_SIZES[(first + number - 1) % len(PLACEHOLDER_SIZES)])
            if size not in stored:
                stored[size] = storage.put(io.BytesIO(placeholder_body(size)))
            obj = stored[size]
            conn.execute(FileVersion.__table__.insert().values(
                file_id=fid, number=number, sha256=obj.sha256, crc32=obj.crc32, size=obj.size,
                mime_type="application/octet-stream", original_filename=f"sim-{n:04d}.bin",
                storage_key=obj.key, created_at=now))


def ensure_population(conn: Connection, *, users: int = 0, files: int = 0,
                      rng: random.Random, storage=None) -> tuple:
    """Who may have downloaded what: the live files with their versions, and for each file
    the active users its access rule lets read it (students and staff; admins only for a
    file nobody else may read). ``users``/``files``: simulated users and placeholder files
    to create first when fewer exist. Returns (user ids, versions, {file id: user ids}).

    Raises ValueError when there is nobody or nothing to simulate.
    """
    _add_simulated_users(conn, users, rng)
    _add_placeholder_files(conn, files, storage, rng)
    people = conn.execute(select(User.id, User.username, User.role)
                          .where(User.active.is_(True)).order_by(User.id)).all()
    member: dict[str, set[int]] = {}
    for user_id, name in conn.execute(select(user_groups.c.user_id, Group.name)
                                      .join(Group, Group.id == user_groups.c.group_id)):
        member.setdefault(name, set()).add(user_id)
    readers = [p.id for p in people if p.role != "admin"]
    admins = [p.id for p in people if p.role == "admin"]
    by_name = {p.username: p.id for p in people}
    live = conn.execute(select(File.id, File.access).where(  # (drafts reach no reader)
        File.deleted_at.is_(None), File.draft.is_(False))).all()
    eligible: dict[int, list[int]] = {}
    for file_id, rule in live:
        try:
            kind, names = parse_access(rule)
        except ValueError:
            continue  # (a broken rule reads for nobody: nobody downloaded it)
        if kind in ("public", "login"):
            who = readers
        elif kind == "group":
            allowed = set().union(*(member.get(n, set()) for n in names))
            who = [u for u in readers if u in allowed]
        else:
            who = [by_name[names[0]]] if names[0] in by_name else []
        eligible[file_id] = who or admins
    eligible = {f: who for f, who in eligible.items() if who}
    versions = [v for v in conn.execute(
        select(FileVersion.id, FileVersion.file_id, FileVersion.size, File.category, File.title)
        .join(File, File.id == FileVersion.file_id).where(File.deleted_at.is_(None))
        .order_by(FileVersion.file_id, FileVersion.number)).all() if v.file_id in eligible]
    if not versions:
        raise ValueError("nothing to simulate: no file with a version that an active user "
                         "may read (add files, or ask for placeholder files)")
    user_ids = sorted({u for f in {v.file_id for v in versions} for u in eligible[f]})
    return user_ids, versions, eligible


class Generator:
    """Makes the responses of one logical download at a time."""

    def __init__(self, rng: random.Random, user_ids: list[int], versions: list,
                 eligible: dict[int, list[int]]) -> None:
        self.rng = rng
        # Event keys: a random prefix per run and a counter (unique like uuid4, whose
        # urandom call took ~15 % of the generating thread under load).
        self.key_prefix = uuid.uuid4().hex[:20]
        self.serial = itertools.count()
        by_file: dict[int, list] = {}
        for v in versions:
            by_file.setdefault(v.file_id, []).append(v)
        self.files = list(by_file.values())
        self.rng.shuffle(self.files)
        # Some people download far more than others, whatever the file: one activity rank
        # per person, and each file's readers in that order (the busiest first).
        order = list(user_ids)
        self.rng.shuffle(order)
        rank = {u: i for i, u in enumerate(order)}
        self.readers = {f: sorted(who, key=rank.__getitem__) for f, who in eligible.items()}
        self.people: set[int] = set()  # who did download something
        self.exam_files = {f for f, vs in by_file.items()
                           if any(w in f"{vs[0].category} {vs[0].title}".lower()
                                  for w in EXAM_WORDS)}
        # Zipf-like popularity (weight 1/rank) times how many may read the file: a
        # transcript is fetched by its one owner, not as often as the public timetable.
        self.cum = []
        total = 0.0
        for r, file_versions in enumerate(self.files):
            total += len(self.readers[file_versions[0].file_id]) / (r + 1)
            self.cum.append(total)

    def pick_file(self, exam: bool) -> list:
        """The versions of one file, popular ones more often; in exam weeks exam files
        (timetables, revision notes) get at least half of the downloads."""
        for _ in range(3):
            index = min(len(self.files) - 1,
                        _bisect(self.cum, self.rng.random() * self.cum[-1]))
            chosen = self.files[index]
            if not exam or chosen[0].file_id in self.exam_files or self.rng.random() < 0.5:
                return chosen
        return chosen

    def download(self, start: datetime, exam: bool) -> list[tuple[dict, logical.Event]]:
        """The responses of one person fetching one file: (the row to store, the event as
        the grouping sees it), built together so nothing is formatted and parsed again."""
        rng = self.rng
        version = self.pick_file(exam)[-1 if rng.random() < 0.9 else 0]
        readers = self.readers[version.file_id]
        user_id = readers[min(len(readers) - 1, int(rng.paretovariate(1.2)) - 1)
                          if rng.random() < 0.3 else rng.randrange(len(readers))]
        self.people.add(user_id)
        kind = rng.choices((clients.BROWSER, clients.MANAGER, clients.COMMAND_LINE),
                           (60, 28, 12))[0]
        agent = rng.choice(AGENTS[kind])
        size = version.size
        finish = rng.random() < 0.85
        want = size if finish else int(size * rng.random())
        speed = rng.uniform(2e6, 40e6)  # bytes per second
        base = {"file_id": version.file_id, "version_id": version.id, "user_id": user_id,
                "via_link": kind != clients.BROWSER, "method": "GET", "size": size,
                "client_ip": f"10.{rng.randrange(40)}.{rng.randrange(256)}.0/24",
                "user_agent": agent, "ua_class": kind, "referrer": "",
                "served_from": "cache" if size < 5e6 and rng.random() < 0.6 else "origin",
                "link_id": None}
        out = []
        who = clients.who_key(user_id, None, base["client_ip"], agent)

        def response(at, status, ranges, sent, range_header):
            seconds = max(0.05, sent / speed)
            end = at + timedelta(seconds=seconds)
            row = {**base, "event_key": f"{self.key_prefix}{next(self.serial):012x}",
                   "status": status, "range_header": range_header,
                   "served_ranges": logical.format_ranges(ranges), "bytes_sent": sent,
                   "started_at": at, "ended_at": end}
            out.append((row, logical.Event(
                key=who, file_id=version.file_id, version_id=version.id, size=size,
                method="GET", status=status, served=[(a, b) for a, b in ranges if b > a],
                bytes_sent=sent, started_at=at,
                ended_at=end, user_id=user_id, ua_class=kind,
                served_from=base["served_from"])))
            return end

        if kind == clients.MANAGER:
            at = response(start, 206, [(0, 1)], 1, "bytes=0-0")  # the probe
            parts = min(16, max(1, size // (1 << 20)))
            edges = [size * i // parts for i in range(parts + 1)]
            for i in range(parts):
                a, b = edges[i], edges[i + 1]
                if a >= want:
                    break
                sent = min(b, want) - a
                response(at + timedelta(milliseconds=10 * i), 206, [(a, b)], sent,
                         f"bytes={a}-{b - 1}")
        else:
            resumes = rng.choices((0, 1, 2, 4), (80, 12, 5, 3))[0] if finish else 0
            at, offset = start, 0
            for n in range(resumes + 1):
                last = n == resumes
                stop = want if last else offset + (want - offset) // rng.randint(2, 4)
                if offset == 0:
                    at = response(at, 200, [(0, size)], stop, "")
                else:
                    at = response(at, 206, [(offset, size)], stop - offset,
                                  f"bytes={offset}-")
                offset = stop
                at += timedelta(seconds=rng.uniform(5, 900))  # the pause before resuming
        return out


def _bisect(values: list[float], x: float) -> int:
    lo, hi = 0, len(values)
    while lo < hi:
        mid = (lo + hi) // 2
        if values[mid] < x:
            lo = mid + 1
        else:
            hi = mid
    return lo


def copy_rows(conn: Connection, table, columns: list[str], rows: list[dict]) -> None:
    """Bulk insert: COPY on PostgreSQL, executemany elsewhere."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        raw = conn.connection.driver_connection
        cols = ", ".join(columns)
        name = table if isinstance(table, str) else table.name
        from psycopg.copy import QueuedLibpqWriter

        # A writer thread sends while Python builds the next rows (the server parses and
        # indexes them on the other core meanwhile).
        values = operator.itemgetter(*columns)  # (a tuple per row, built in C: this thread
        # holds the GIL while it converts, and the generator waits for it when it lags)
        with raw.cursor() as cur, cur.copy(f"COPY {name} ({cols}) FROM STDIN",
                                           writer=QueuedLibpqWriter(cur)) as copy:
            for row in rows:
                copy.write_row(values(row))
        return
    conn.execute(table.insert(), [{c: row[c] for c in columns} for row in rows])


PARTS = "sim_rollup_parts"  # PostgreSQL bulk load: rollup parts, summed into the rollups


class _Copier:
    """COPYs in a background thread, in order, on the caller's connection, while the caller
    generates the next rows (which must not use the connection until ``close``)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="simulate-copy", daemon=True)
        self.thread.start()

    def __call__(self, table, columns: list[str], rows: list[dict]) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((table, columns, rows))

    def _run(self) -> None:
        while (item := self.queue.get()) is not None:
            if self.error is None:
                try:
                    copy_rows(self.conn, *item)
                except BaseException as exc:  # re-raised in the generating thread
                    self.error = exc

    def close(self) -> None:
        """Wait for the COPYs queued so far; raise what failed."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        if self.error is not None:
            raise self.error


def _write_finished(conn: Connection, deltas: materialise.Deltas, before: datetime | None,
                    mode: str, copy) -> None:
    """Write (and forget) the rollup rows and user-days of buckets before ``before``.

    mode "upsert" adds to existing rollups; "copy" COPYs into empty ones; "bulk" COPYs into
    the parts table that ``_sum_parts`` adds up at the end.
    """
    done = materialise.Deltas(deltas.settings)
    for key in [k for k in deltas.rollups if before is None or k[1] < before]:
        done.rollups[key] = deltas.rollups.pop(key)
    for key in [k for k in deltas.user_days if before is None or k[0] < before]:
        done.user_days[key] = deltas.user_days.pop(key)
    if mode == "upsert":  # (first/last days and gaps follow from the user-days written)
        materialise.write_deltas(conn, done)
        return
    names = ["grain", "bucket", "file_id", "grp", *materialise.COUNTERS]
    copy(PARTS if mode == "bulk" else Rollup.__table__, names,
              [dict(zip(names, (*key, *counters.as_tuple()), strict=True))
               for key, counters in done.rollups.items()])
    copy(UserDay.__table__, ["day", "file_id", "user_key", "user_id"],
              [{"day": d, "file_id": f, "user_key": k, "user_id": u}
               for (d, f, k), u in done.user_days.items()])


# Rollup parts summed in SQL instead of per event in Python: per hour, local day, file (and
# all files) and group (and everyone). {source} is the rows loaded by this run, {at} the
# moment that picks their bucket, {n}/{b}/{c} what they add up, {sums} which counters
# those are.
_PARTS = """
INSERT INTO {parts} (grain, bucket, file_id, grp, requests, bytes_served, cache_hits,
                     downloads, completed)
WITH per AS (
    SELECT date_trunc('hour', x.{at}, 'UTC') AS h, date_trunc('day', x.{at}, :tz) AS d,
           x.file_id, '' AS grp, {n} AS n, {b} AS b, {c} AS c
    FROM {source} x WHERE {where} GROUP BY 1, 2, 3
    UNION ALL
    SELECT date_trunc('hour', x.{at}, 'UTC'), date_trunc('day', x.{at}, :tz), x.file_id,
           g.name, {n}, {b}, {c}
    FROM {source} x JOIN user_groups ug ON ug.user_id = x.user_id
    JOIN groups g ON g.id = ug.group_id
    WHERE {where} GROUP BY 1, 2, 3, 4
)
SELECT 'h', h, file_id, grp, {sums} FROM per GROUP BY h, file_id, grp
UNION ALL SELECT 'h', h, 0, grp, {sums} FROM per GROUP BY h, grp
UNION ALL SELECT 'd', d, file_id, grp, {sums} FROM per
    GROUP BY d, file_id, grp
UNION ALL SELECT 'd', d, 0, grp, {sums} FROM per GROUP BY d, grp
"""
# Responses count in their start's buckets; the simulator's always know their bytes
# (bytes_sent >= 0), so that is what was sent.
_EVENT_PARTS = {"source": "download_events", "at": "started_at", "where": "x.id > :first",
                "sums": "sum(n), sum(b), sum(c), 0, 0",
                "n": "count(*)", "b": "sum(x.bytes_sent)",
                "c": "count(*) FILTER (WHERE x.served_from = 'cache')"}
# Logical downloads count (and complete) in the bucket of the moment they started to count.
_LOGICAL_PARTS = {"source": "logical_downloads", "at": "counted_at",
                  "where": "x.id > :first AND x.counted", "sums": "0, 0, 0, sum(n), sum(b)",
                  "n": "count(*)", "b": "count(*) FILTER (WHERE x.completed)", "c": "0"}
_USER_DAYS = """
INSERT INTO analytics_user_days (day, file_id, user_key, user_id)
SELECT d, file_id, user_key, max(user_id) FROM (
    SELECT date_trunc('day', counted_at, :tz) AS d, file_id, user_key, user_id
    FROM logical_downloads WHERE id > :first AND counted
    UNION ALL
    SELECT date_trunc('day', counted_at, :tz), 0, user_key, user_id
    FROM logical_downloads WHERE id > :first AND counted
) AS x GROUP BY d, file_id, user_key
ON CONFLICT DO NOTHING
"""


def _skip_foreign_key_checks(conn: Connection) -> None:
    """For this transaction, when allowed (superuser): no per-row foreign key triggers on
    the COPYs. The simulator only writes ids it has just read, so nothing is left dangling."""
    try:
        with conn.begin_nested():
            conn.execute(text("SET LOCAL session_replication_role = replica"))
    except DBAPIError:
        pass


def _defer_indexes(conn: Connection) -> list[Index]:
    """Drop the secondary (non-unique) indexes of the tables a bulk load fills from empty;
    ``_build_indexes`` builds them once at the end: one sorted build per index instead of an
    index insert per row. Nothing in the load reads them (the end's SQL selects by id, the
    primary key). DDL is transactional: a failed load leaves the indexes as they were."""
    deferred = []
    for model in (DownloadEvent, LogicalDownload, UserDay, Rollup, FileUser, UserGap):
        table = model.__table__
        if conn.execute(select(table.c[table.primary_key.columns.keys()[0]])
                        .limit(1)).first() is not None:
            continue
        for index in sorted(table.indexes, key=lambda i: i.name):
            if not index.unique:
                conn.execute(text(f'DROP INDEX IF EXISTS "{index.name}"'))
                deferred.append(index)
    return deferred


def _build_indexes(conn: Connection, indexes: list[Index]) -> None:
    """Build the indexes ``_defer_indexes`` dropped."""
    for index in indexes:
        index.create(conn)


def _sum_parts(conn: Connection, settings: materialise.Settings, first_event: int,
               first_logical: int) -> None:
    """Rollups and user-days of the events and logical downloads after the given ids, in
    SQL (what Deltas.event and Deltas.change add up per event in Python)."""
    params = {"tz": settings.tz.key}
    for spec, first in ((_EVENT_PARTS, first_event), (_LOGICAL_PARTS, first_logical)):
        conn.execute(text(_PARTS.format(parts=PARTS, **spec)), {**params, "first": first})
    sums = ", ".join(f"coalesce(sum({c}), 0)" for c in materialise.COUNTERS)
    cols = ", ".join(materialise.COUNTERS)
    conn.execute(text(
        f"INSERT INTO analytics_rollups (grain, bucket, file_id, grp, {cols}) "
        f"SELECT grain, bucket, file_id, grp, {sums} FROM {PARTS} "
        "GROUP BY grain, bucket, file_id, grp"))
    conn.execute(text(f"DROP TABLE {PARTS}"))
    conn.execute(text(_USER_DAYS), {**params, "first": first_logical})


def simulate(conn: Connection, settings: materialise.Settings, *, events: int, days: int,
             users: int = 0, files: int = 0, storage=None, seed: int = 1,
             now: datetime | None = None, progress=None) -> dict:
    """Generate about ``events`` responses over the last ``days`` days (in time order), by
    the existing users over the existing files, each download by someone the file's access
    rule lets read it. ``users`` simulated users and ``files`` placeholder files (readable
    by SIM_GROUP only, content in ``storage``) are created first when asked for.

    Raises ValueError when there is nothing to simulate over.
    """
    rng = random.Random(seed)
    user_ids, versions, eligible = ensure_population(conn, users=users, files=files, rng=rng,
                                                     storage=storage)
    gen = Generator(rng, list(user_ids), versions, eligible)
    groups = materialise.groups_of(conn, user_ids)
    now = (now or datetime.now(UTC)).replace(minute=0, second=0, microsecond=0)
    first = now - timedelta(days=days)
    day_weights = [term_weight((first + timedelta(days=d)).astimezone(settings.tz))
                   for d in range(days)]
    per_download = 3.2  # responses per logical download, on average (measured)
    scale = events / per_download / sum(w * sum(HOURS) for w in day_weights)
    sessionizer = logical.Sessionizer(settings.rules)
    # Into empty rollups, finished buckets go in with COPY; otherwise they are upserted. On
    # PostgreSQL the per-response counters of a load into empty rollups are summed in SQL.
    empty = conn.execute(select(func.count()).select_from(Rollup)).scalar_one() == 0
    bulk = empty and conn.dialect.name == "postgresql"
    mode = "bulk" if bulk else "copy" if empty else "upsert"
    first_event = conn.execute(select(func.coalesce(func.max(DownloadEvent.id), 0))).scalar_one()
    first_logical = conn.execute(
        select(func.coalesce(func.max(LogicalDownload.id), 0))).scalar_one()
    deferred = []
    if bulk:
        _skip_foreign_key_checks(conn)
        deferred = _defer_indexes(conn)
        conn.execute(text(f"DROP TABLE IF EXISTS {PARTS}"))
        conn.execute(text(f"CREATE TEMP TABLE {PARTS} (LIKE analytics_rollups)"))
    # In a bulk load nothing but the COPYs uses the connection until the end: they run in a
    # thread, so the server stores one day while Python generates the next.
    copier = _Copier(conn) if bulk else None
    copy = copier or functools.partial(copy_rows, conn)
    deltas = materialise.Deltas(settings)
    made = logical_rows = 0
    finished: list[logical.Session] = []  # (not in bulk): for the file-detail cells
    event_cols = list(rawevents.EVENT_COLUMNS)
    ld_table = LogicalDownload.__table__
    ld_cols = [c.name for c in ld_table.columns if c.name != "id"]
    try:
        for d in range(days):
            day = first + timedelta(days=d)
            batch: list[tuple[dict, logical.Event]] = []
            exam = day_weights[d] >= 2.0
            for hour in range(24):
                hour_start = day + timedelta(hours=hour)
                local_hour = hour_start.astimezone(settings.tz).hour
                expected = scale * day_weights[d] * HOURS[local_hour]
                count = int(expected) + (rng.random() < expected - int(expected))
                for _ in range(count):
                    start = hour_start + timedelta(seconds=rng.uniform(0, 3600))
                    if start >= now:
                        continue
                    batch += gen.download(start, exam)
            batch.sort(key=lambda pair: (pair[0]["started_at"], pair[0]["ended_at"]))
            for _row, event in batch:
                change = sessionizer.add(event)
                if not bulk:  # (in bulk, _sum_parts counts in SQL at the end)
                    deltas.record(event, change, groups)
            copy(DownloadEvent.__table__, event_cols, [row for row, _event in batch])
            done = sessionizer.forget_before(day + timedelta(days=1))
            copy(ld_table, ld_cols, [materialise.session_values(s) for s in done])
            if not bulk:
                finished += done
            # Later batches start at later days: buckets two days back can no longer change.
            _write_finished(conn, deltas, day - timedelta(days=1), mode, copy)
            made += len(batch)
            logical_rows += len(done)
            if progress:
                progress(d + 1, days, made)
            if made >= events * 1.5:
                break
        _write_finished(conn, deltas, None, mode, copy)
        rest = list(sessionizer.sessions())
        copy(ld_table, ld_cols, [materialise.session_values(s) for s in rest])
        finished += rest
    finally:
        if copier is not None:
            copier.close()
    if bulk:
        _sum_parts(conn, settings, first_event, first_logical)
        materialise.details_from_logical(conn, settings, after_id=first_logical)
    else:
        materialise.write_details(conn, materialise.details_of(finished, settings.tz))
    if empty:
        if conn.execute(select(func.count()).select_from(FileUser)).scalar_one() == 0:
            spans.file_users_from_user_days(conn)
        else:
            spans.write_file_users(conn, deltas.file_users)
        spans.gaps_from_user_days(conn)  # (the user-days went in by COPY)
    _build_indexes(conn, deferred)
    return {"events": made, "logical_downloads": logical_rows + len(rest),
            "users": len(gen.people), "files": len({v.file_id for v in versions})}

