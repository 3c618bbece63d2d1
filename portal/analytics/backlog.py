"""How far behind the recording of downloads is, for /metrics: the events waiting in Redis
(for the flush to SQL, or for nginx's log line), the orphans waiting in this node's journals,
and how much of nginx's log (ANALYTICS_NGINX_LOG) is not imported yet.

Read when /metrics is scraped, from Redis (one round trip) and this node's files; nothing is
written. The Redis numbers are the whole database's (every node sees the same), the
journals and nginx's log this node's own.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import redis

from . import journal, nginxlog
from .eventrows import load_row
from .recorder import Recorder


@dataclass(frozen=True)
class Backlog:
    """What waits to be recorded; None where it could not be read (Redis down) or does not
    apply (no nginx log)."""

    stream: int | None  # finished events in Redis, waiting for the flush to SQL
    stream_oldest: float | None  # seconds since the oldest of them was added
    nginx_waiting: int | None  # x-accel events in Redis waiting for nginx's log line
    orphans: int  # starts in the journals of this node's dead workers
    orphans_oldest: float  # seconds since the oldest of them started
    nginx_unread_bytes: int | None  # nginx's log not imported yet
    nginx_lag: float | None  # seconds since the first line not imported was written


def measure(rec: Recorder, now: datetime | None = None) -> Backlog:
    """The backlog as Redis and this node's files show it now."""
    now = now or datetime.now(UTC)
    stream = stream_oldest = waiting = unread = lag = None
    nginx_log = rec.config.get("ANALYTICS_NGINX_LOG")
    try:
        keys = rec.keys()
        pipe = rec.redis().pipeline(transaction=False)
        pipe.xlen(keys.stream)
        pipe.xrange(keys.stream, "-", "+", count=1)
        pipe.hlen(keys.nginx_waiting)
        if nginx_log:
            pipe.hgetall(keys.nginx_state(socket.gethostname(), str(nginx_log)))
        replies = pipe.execute()
    except redis.RedisError:
        replies = None
    if replies is not None:
        stream, first, waiting = replies[0], replies[1], replies[2]
        stream_oldest = 0.0
        if first:  # an entry id is the milliseconds of Redis's clock when it was added
            added = int(first[0][0].split(b"-")[0]) / 1000
            stream_oldest = max(0.0, now.timestamp() - added)
        if nginx_log:
            state = {k.decode(): int(v) for k, v in replies[3].items()}
            unread, first_time = nginxlog.unread(Path(nginx_log), state)
            lag = 0.0 if first_time is None else max(0.0, (now - first_time).total_seconds())
    orphans = journal.dead_open_starts(rec.journal_dir())
    started = [load_row(record)["started_at"] for record in orphans]
    oldest = max(((now - at).total_seconds() for at in started if at), default=0.0)
    return Backlog(stream, stream_oldest, waiting, len(orphans), max(0.0, oldest), unread, lag)
