"""Importing nginx's access log (ANALYTICS_NGINX_LOG) into the events.

Two kinds of line (nginxlog.py reads them): the bytes nginx sent for an x-accel response the
portal recorded (``Sent``: joined to the event held back for it in Redis), and a whole
download nginx served on the portal's grant (``Granted``: an event of its own). The
recorder's flush runs this under the flush lock.
"""

from __future__ import annotations

import json
import logging
import socket
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import redis
from sqlalchemy.exc import SQLAlchemyError

from ..download import leases
from ..download.http import RangeOutcome, select_ranges
from ..instruments import TALLY
from . import nginxlog, pacing
from .eventrows import event_row, load_row
from .keys import FLUSH_LOCK_MS, AnalyticsKeys

log = logging.getLogger(__name__)


def granted_row(line: nginxlog.Granted) -> dict:
    """The event of a download nginx sent on the portal's grant, from its log line alone."""
    served = [(0, line.size)]
    if line.status == 206:  # the one range nginx sent (the grant was for a plain range)
        selection = select_ranges(line.range_header, line.size)
        if selection.outcome is RangeOutcome.SATISFIABLE:
            served = list(selection.ranges)
    row = event_row(file_id=line.file_id, version_id=line.version_id, size=line.size,
                    user_id=line.user_id, via_link=line.link_id is not None, method="GET",
                    status=line.status, range_header=line.range_header, served=served,
                    client_ip=line.client_ip, user_agent=line.user_agent,
                    referrer=line.referrer, link_id=line.link_id)
    row.update(event_key=line.request_id, served_from="nginx", bytes_sent=line.bytes_sent,
               started_at=line.ended_at - timedelta(seconds=line.seconds),
               ended_at=line.ended_at)
    return row


def import_new_lines(r: redis.Redis, keys: AnalyticsKeys, config,
                     store: Callable[[list[dict]], int], *, steps: int,
                     paced: bool) -> tuple[int, bool]:
    """Join the x-accel events held back for nginx to the lines its log added since the
    last flush, and store them with the bytes nginx sent; an event whose line has not come
    in ANALYTICS_NGINX_WAIT_SECONDS is stored with its planned bytes (bytes_sent = -1), as
    without the log (but not while the reader is behind: the line may be in what it has not
    read yet). Reads ``steps`` times nginxlog.READ_LIMIT bytes at most.

    Paced, a step is followed by a pause while the CPUs are busy, so that the import works
    at most ANALYTICS_NGINX_IMPORT_SHARE of the time at a peak (pacing.py).

    Returns (new events stored, whether the reader is still behind); errors are logged and
    leave the events waiting (0, False)."""
    pacer = pacing.Pacer(float(config["ANALYTICS_NGINX_IMPORT_SHARE"])
                         if paced else 1.0)
    try:
        path = str(config["ANALYTICS_NGINX_LOG"])
        state_key = keys.nginx_state(socket.gethostname(), path)
        state = {k.decode(): int(v) for k, v in r.hgetall(state_key).items()}
        written = 0
        for _ in range(steps):
            began = time.monotonic()
            lines, state, more = nginxlog.read_new(Path(path), state)
            sent = [line for line in lines if isinstance(line, nginxlog.Sent)]
            # Connections those responses held stop counting now, not at their expiry.
            if tokens := [s.lease for s in sent if s.lease]:
                leases.release_handed(r, tokens)
            if sent:  # kept in Redis before the offset moves past them
                r.hset(keys.nginx_sent, mapping={
                    s.event_key: json.dumps([s.status, s.bytes_sent,
                                             s.ended_at.isoformat()])
                    for s in sent})
            # Downloads nginx sent on a grant are whole events; stored (once: the key is
            # nginx's request id) before the offset moves past them.
            granted = [granted_row(line) for line in lines
                       if isinstance(line, nginxlog.Granted) and line.status in (200, 206)]
            written += store(granted) if granted else 0
            r.hset(state_key, mapping=state)
            # Counted once the offset has moved past them: a failed step reads them again.
            TALLY.add_bytes("x-accel", sum(s.bytes_sent for s in sent)
                            + sum(line.bytes_sent for line in lines
                                  if isinstance(line, nginxlog.Granted)))
            if not more:
                break
            r.pexpire(keys.flush_lock, FLUSH_LOCK_MS)
            # a gevent worker serves its other greenlets meanwhile (at least a yield)
            time.sleep(pacer.pause(time.monotonic() - began))
        waiting = r.hgetall(keys.nginx_waiting)
        known = r.hgetall(keys.nginx_sent)
        wait = float(config["ANALYTICS_NGINX_WAIT_SECONDS"])
        now = datetime.now(UTC)
        rows, done = [], []
        for key, raw in waiting.items():
            row = load_row(raw)
            line = known.get(key)
            if line is not None:
                status, nbytes, ended = json.loads(line)
                row.update(status=status, bytes_sent=nbytes,
                           ended_at=datetime.fromisoformat(ended))
            elif more or (now - row["started_at"]).total_seconds() <= wait:
                continue
            rows.append(row)
            done.append(key)
        # lines of events that are not waiting (stored already): forgotten after the wait
        stale = [key for key, line in known.items() if not more and key not in waiting
                 and (now - datetime.fromisoformat(json.loads(line)[2])).total_seconds()
                 > wait]
        written += store(rows) if rows else 0
        if done or stale:
            pipe = r.pipeline(transaction=False)
            if done:
                pipe.hdel(keys.nginx_waiting, *done)
            if done or stale:
                pipe.hdel(keys.nginx_sent, *done, *stale)
            pipe.execute()
        return written, more
    except (redis.RedisError, SQLAlchemyError, OSError):
        log.exception("nginx log import failed; the events keep waiting")
        return 0, False  # retried after the usual interval

