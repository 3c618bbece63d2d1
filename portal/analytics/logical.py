"""Logical downloads: from HTTP responses to "someone downloaded this file", as pure functions.

A download manager opens 16 ranged connections, a browser resumes five times, a mobile app
probes ``bytes=0-1`` before it starts: each is one response (a DownloadEvent), and none is
one download. The rules (docs/analytics.md explains them next to the IAB podcast
measurement guidelines that inspired them):

* events are grouped by who (the user; else the signed link; else an anonymous client
  key) and which file version; an event joins a group when it starts no later than
  ``idle`` after the group's last activity (default 30 minutes), otherwise it opens a
  new logical download;
* the bytes of a logical download are the union of the byte intervals really delivered
  (a 200 delivered ``[0, bytes_sent)``, a 206 its served ranges, in order, cut off after
  ``bytes_sent`` bytes), so overlapping connections and resumes never count twice;
* completion is covered bytes / size;
* a logical download *counts* once a non-probe response (GET, 200 or 206, more than a
  probe's few bytes asked for) has delivered at least ``min_bytes``; HEAD, 304, 412, 416
  and probes never count, but their bytes still add to the coverage.

Nothing here imports Flask or SQLAlchemy: the flusher, the simulator and the
recomputation in the tests share these functions.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import lru_cache

Interval = tuple[int, int]  # half-open [start, stop)

#: bytes_sent when the sender does not know: nginx sent it (x-accel) or the worker died.
UNKNOWN = -1


@dataclass(frozen=True)
class Rules:
    """The counting rules (ANALYTICS_* settings)."""

    idle: timedelta = timedelta(minutes=30)
    probe_max_bytes: int = 2  # a request for at most this many bytes is a probe (0-0, 0-1)
    min_bytes: int = 1  # delivered bytes that make a non-probe request count
    complete_ratio: float = 0.99  # covered/size at or above this is a completed download


# ---------------------------------------------------------------------------
# Byte ranges
# ---------------------------------------------------------------------------


def format_ranges(ranges: Iterable[Interval]) -> str:
    """Half-open intervals as inclusive text: [(0, 100), (200, 300)] -> "0-99,200-299"."""
    return ",".join(f"{a}-{b - 1}" for a, b in ranges if b > a)


def parse_ranges(text: str) -> list[Interval]:
    """The inverse of format_ranges; malformed parts are skipped."""
    return list(_parse_ranges(text or ""))


@lru_cache(maxsize=1024)  # a batch repeats the same few texts ("0-65535") thousands of times
def _parse_ranges(text: str) -> tuple[Interval, ...]:
    out = []
    for part in text.split(","):
        first, sep, last = part.strip().partition("-")
        if sep and first.isdigit() and last.isdigit() and int(last) >= int(first):
            out.append((int(first), int(last) + 1))
    return tuple(out)


def union(intervals: Iterable[Interval]) -> list[Interval]:
    """The sorted union of half-open intervals (adjacent ones merge)."""
    merged: list[list[int]] = []
    for a, b in sorted(i for i in intervals if i[1] > i[0]):
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def within(intervals: Iterable[Interval], merged: list[Interval]) -> bool:
    """Whether every interval lies inside one interval of ``merged`` (a union): then adding
    them changes nothing (the usual case of a download repeated in full)."""
    return all(any(a <= start and stop <= b for a, b in merged)
               for start, stop in intervals if stop > start)


def covered(intervals: Iterable[Interval]) -> int:
    """Bytes in the union."""
    return sum(b - a for a, b in union(intervals))


def delivered(status: int, served: list[Interval], bytes_sent: int, size: int) -> list[Interval]:
    """The byte intervals of the representation that one response really delivered.

    A 200 delivered ``[0, bytes_sent)``; a 206 its served ranges in order, cut off after
    ``bytes_sent`` bytes of payload (multipart framing bytes are not payload: for a
    multipart 206 the cut is an approximation that can only under-count). Unknown bytes
    (nginx) count as the whole plan; an orphan is recorded with bytes 0.
    """
    if status == 200:
        plan = [(0, size)]
    elif status == 206:
        plan = served
    else:
        return []
    if bytes_sent == UNKNOWN:
        return [(a, b) for a, b in plan if b > a]
    left = max(0, bytes_sent)
    out = []
    for a, b in plan:
        if left <= 0:
            break
        take = min(b - a, left)
        out.append((a, a + take))
        left -= take
    return out


def is_probe(method: str, status: int, served: list[Interval], size: int, rules: Rules) -> bool:
    """True for responses that never make a download: HEAD, 304/412/416 and tiny probes."""
    if method != "GET" or status not in (200, 206):
        return True
    if status == 206:
        asked = sum(b - a for a, b in served)
        return asked <= rules.probe_max_bytes and asked < size
    return False


# ---------------------------------------------------------------------------
# Events and sessions
# ---------------------------------------------------------------------------


@dataclass
class Event:
    """What the grouping needs of one DownloadEvent."""

    key: str  # who: "u:<user id>", "l:<link nonce>" or "a:<anonymous client>"
    file_id: int
    version_id: int
    size: int
    method: str
    status: int
    served: list[Interval]
    bytes_sent: int
    started_at: datetime
    ended_at: datetime | None
    user_id: int | None = None
    ua_class: str = "other"
    served_from: str = "origin"

    @property
    def last_at(self) -> datetime:
        """When the response last did something (its start when it never closed)."""
        return self.ended_at or self.started_at

    @property
    def sent(self) -> int:
        """Bytes for the bandwidth counters: the real count, the plan when nginx sent it."""
        if self.bytes_sent != UNKNOWN:
            return self.bytes_sent
        if self.ended_at is None:  # orphan: the worker died with the count
            return 0
        return self.size if self.status == 200 else sum(b - a for a, b in self.served)


@dataclass
class Session:
    """One logical download (materialised as a LogicalDownload row)."""

    key: str
    file_id: int
    version_id: int
    size: int
    started_at: datetime
    last_at: datetime
    user_id: int | None = None
    ranges: list[Interval] = field(default_factory=list)
    events: int = 0
    counted: bool = False
    completed: bool = False
    ua_class: str = "other"
    counted_at: datetime | None = None  # start of the event that made it count: its bucket
    id: int | None = None  # the row id once stored
    dirty: bool = True

    @property
    def covered(self) -> int:
        """Bytes of the file delivered at least once."""
        return sum(b - a for a, b in self.ranges)

    @property
    def completion(self) -> float:
        """covered / size (1.0 for an empty file that was fetched)."""
        if self.size <= 0:
            return 1.0 if self.counted else 0.0
        return min(1.0, self.covered / self.size)


def event_delivered(event: Event) -> list[Interval]:
    """The intervals one event delivered, orphans (bytes unknown, worker gone) as none."""
    if event.ended_at is None:
        return []
    return delivered(event.status, event.served, event.bytes_sent, event.size)


def joins(session: Session, event: Event, rules: Rules) -> bool:
    """True when the event belongs to this logical download (same who and version, and
    it starts within the idle window of the session's activity)."""
    return (session.key == event.key and session.version_id == event.version_id
            and event.started_at <= session.last_at + rules.idle
            and event.last_at >= session.started_at - rules.idle)


@dataclass(frozen=True)
class Change:
    """What adding one event did: the session, whether it newly counts / completes, and
    where it counted before when a late event moved that earlier (``moved_from``)."""

    session: Session
    new_session: bool
    counted_now: bool
    completed_now: bool
    moved_from: datetime | None = None


def apply(session: Session | None, event: Event, rules: Rules) -> Change:
    """Add an event to its session (or open one when ``session`` is None)."""
    new = session is None
    if session is None:
        session = Session(key=event.key, file_id=event.file_id, version_id=event.version_id,
                          size=event.size, started_at=event.started_at, last_at=event.last_at,
                          user_id=event.user_id, ua_class=event.ua_class)
    got = event_delivered(event)
    if not within(got, session.ranges):
        session.ranges = union([*session.ranges, *got])
    session.events += 1
    session.started_at = min(session.started_at, event.started_at)
    session.last_at = max(session.last_at, event.last_at)
    if session.user_id is None:
        session.user_id = event.user_id
    session.dirty = True
    counted_now = completed_now = False
    moved_from = None
    # An orphan had started sending: it counts with its bytes unknown (docs/analytics.md).
    counts = (not is_probe(event.method, event.status, event.served, event.size, rules)
              and (event.ended_at is None or sum(b - a for a, b in got) >= rules.min_bytes))
    if counts and not session.counted:
        session.counted = counted_now = True
        session.counted_at = event.started_at
        session.ua_class = event.ua_class
    elif counts and event.started_at < session.counted_at:
        # A late event from before the moment it counted: grouped from scratch, in time
        # order, the download would have counted with this one, so it moves there.
        moved_from = session.counted_at
        session.counted_at = event.started_at
        session.ua_class = event.ua_class
    if session.counted and not session.completed and session.size > 0 \
            and session.covered >= rules.complete_ratio * session.size:
        session.completed = completed_now = True
    if session.counted and not session.completed and session.size == 0:
        session.completed = completed_now = True
    return Change(session, new, counted_now, completed_now, moved_from)


class Sessionizer:
    """Incremental grouping: feed events in order of arrival, get Changes back.

    ``open`` holds the sessions that later events may still join; ``forget_before``
    drops those idle for longer than the window (the flusher loads them from SQL instead).
    """

    def __init__(self, rules: Rules, sessions: Iterable[Session] = ()) -> None:
        self.rules = rules
        self.open: dict[tuple[str, int], list[Session]] = {}
        for session in sessions:
            session.dirty = False
            self.open.setdefault((session.key, session.version_id), []).append(session)

    def add(self, event: Event) -> Change:
        """Group one event."""
        candidates = self.open.setdefault((event.key, event.version_id), [])
        match = None
        for session in candidates:
            if joins(session, event, self.rules) and (
                    match is None or session.last_at > match.last_at):
                match = session
        change = apply(match, event, self.rules)
        if match is None:
            candidates.append(change.session)
        return change

    def forget_before(self, moment: datetime) -> list[Session]:
        """Drop and return the sessions idle since before ``moment - idle``."""
        limit = moment - self.rules.idle
        gone = []
        for key in list(self.open):
            keep = [s for s in self.open[key] if s.last_at >= limit]
            gone += [s for s in self.open[key] if s.last_at < limit]
            if keep:
                self.open[key] = keep
            else:
                del self.open[key]
        return gone

    def sessions(self) -> Iterator[Session]:
        """Every session still held."""
        for group in self.open.values():
            yield from group


def group(events: Iterable[Event], rules: Rules = Rules()) -> list[Session]:
    """Every logical download of a set of events (a full recomputation, sorted by start)."""
    sessionizer = Sessionizer(rules)
    for event in sorted(events, key=lambda e: (e.started_at, e.last_at)):
        sessionizer.add(event)
    return sorted(sessionizer.sessions(), key=lambda s: (s.started_at, s.key))
