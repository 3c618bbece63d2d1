"""Recording download events without slowing downloads down and without losing any.

The path of one response (see docs/analytics.md, "Recording"):

1. when the view hands the body to the server, ``begin`` stores a *start record* in the
   Redis hash ``cache.ANALYTICS_OPEN`` (and, every few seconds, refreshes this worker's
   heartbeat in the same round trip): the one round trip a download spends on analytics;
2. when the server closes the body, the callback queues the finished event in the worker;
   a shipper thread (a greenlet under gevent) wakes within ``SHIP_DELAY`` and, for all
   the events queued meanwhile in one round trip, appends each to the Redis stream
   ``cache.ANALYTICS_STREAM`` and removes its start record, atomically (MULTI). A worker
   killed in that short window leaves start records only: step 4 records them, with the
   bytes unknown. Without background threads (tests, the CLI) the end is shipped at once;
3. a flusher writes the stream to SQL in batches (``materialise.store``) and then deletes
   the entries it wrote (XDEL). It runs in a background thread (a greenlet under gevent)
   of every worker, every ``ANALYTICS_FLUSH_SECONDS`` or as soon as the stream holds
   ``ANALYTICS_FLUSH_BATCH`` entries, and in ``flask analytics flush``; a Redis lock
   (SET NX PX) lets one process flush at a time. Events are keyed (``event_key``, unique
   in SQL), so an entry written but not yet deleted when a flusher dies is skipped the next
   time: no event is written twice;
4. a start record whose worker's heartbeat has expired (the worker was killed while the
   body was open) or that is older than ``ANALYTICS_ORPHAN_SECONDS`` is an *orphan*: the
   flusher writes it with ``ended_at`` empty and ``bytes_sent = -1`` (unknown), so the
   response still exists in the statistics;
5. when Redis is down, the callback writes the event straight to SQL (the same
   ``materialise.store``), after the body has closed, i.e. off the response's path;
6. at worker exit (gunicorn's ``worker_exit`` hook, and ``atexit``) the worker flushes.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import secrets
import socket
import threading
import time
import uuid
from datetime import UTC, datetime

import redis
from flask import Flask
from sqlalchemy.exc import SQLAlchemyError

from .. import cache
from ..extensions import db
from . import materialise

log = logging.getLogger(__name__)

_DATES = ("started_at", "ended_at")


def _dump(row: dict) -> str:
    return json.dumps({k: (v.isoformat() if isinstance(v, datetime) else v)
                       for k, v in row.items()}, separators=(",", ":"), ensure_ascii=False)


def _load(raw: bytes | str) -> dict:
    row = json.loads(raw)
    for name in _DATES:
        if row.get(name):
            row[name] = datetime.fromisoformat(row[name])
    return row


#: How long the shipper waits after the first queued end, so that the ends of a busy moment
#: cost one round trip; also the window a killed worker loses byte counts in.
SHIP_DELAY = 0.05


def new_event_key() -> str:
    """A unique key for one response (32 hex digits)."""
    return uuid.uuid4().hex


class Recorder:
    """The analytics buffer of one app in one process."""

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._pid = None
        self._token = ""
        self._thread: threading.Thread | None = None
        self._wake = threading.Event()
        self._stopping = False
        self._lock = threading.Lock()
        self.last_flush = 0.0
        self._beat_at = float("-inf")  # when begin last refreshed the heartbeat
        self._ends: list[dict] = []  # finished events waiting for the shipper
        self._ship_wake = threading.Event()
        self._shipper: threading.Thread | None = None

    # -- identity -------------------------------------------------------------------------

    @property
    def token(self) -> str:
        """This process's name for heartbeats (changes after a fork)."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._token = f"{socket.gethostname()}:{self._pid}:{secrets.token_hex(4)}"
            self._thread = self._shipper = None
            self._beat_at = float("-inf")
            self._ends = []
        return self._token

    @property
    def config(self):
        return self.app.config

    def redis(self) -> redis.Redis:
        return self.app.extensions["portal_redis"]

    def heartbeat_ttl(self) -> int:
        return int(self.config["ANALYTICS_HEARTBEAT_SECONDS"])

    # -- the download path ----------------------------------------------------------------

    def begin(self, row: dict) -> bool:
        """Store the start record; False when Redis is down (the end goes straight to SQL)."""
        self.ensure_flusher()
        now = time.monotonic()
        beat = now - self._beat_at > self.heartbeat_ttl() / 3
        try:
            pipe = self.redis().pipeline(transaction=False)
            pipe.hset(cache.ANALYTICS_OPEN, row["event_key"],
                      _dump({**row, "worker": self.token}))
            if beat:
                pipe.set(cache.analytics_worker_key(self.token), 1, ex=self.heartbeat_ttl())
            pipe.execute()
        except redis.RedisError:
            log.warning("redis down: download events are written straight to the database")
            return False
        if beat:
            self._beat_at = now
        return True

    def end(self, row: dict, buffered: bool) -> None:
        """Queue the finished event for the shipper (or ship it now without one; or write
        it to SQL when Redis was down at its start)."""
        if not buffered:
            self.write_direct([row])
        elif self._shipper is not None and not self._stopping:
            with self._lock:
                self._ends.append(row)
            self._ship_wake.set()
        else:
            self.ship([row])

    def ship(self, rows: list[dict]) -> None:
        """Move finished events to the stream in one round trip (SQL when Redis is down)."""
        if not rows:
            return
        try:
            pipe = self.redis().pipeline(transaction=True)
            for row in rows:
                pipe.xadd(cache.ANALYTICS_STREAM, {"e": _dump(row)})
            pipe.hdel(cache.ANALYTICS_OPEN, *[row["event_key"] for row in rows])
            pipe.xlen(cache.ANALYTICS_STREAM)
            length = pipe.execute()[-1]
        except redis.RedisError:
            log.warning("redis down: %d download event(s) written straight to the database",
                        len(rows))
            self.write_direct(rows)
            return
        if length >= int(self.config["ANALYTICS_FLUSH_BATCH"]):
            self._wake.set()

    def ship_pending(self) -> None:
        """Ship every queued end now."""
        with self._lock:
            rows, self._ends = self._ends, []
        self.ship(rows)

    def write_direct(self, rows: list[dict]) -> None:
        """Write events to SQL now (Redis is down); errors are logged, never raised."""
        settings = materialise.Settings.from_config(self.config)
        try:
            with self.app.app_context(), db.engine.begin() as conn:
                materialise.store(conn, rows, settings)
        except SQLAlchemyError:
            log.exception("could not record %d download event(s)", len(rows))

    # -- flushing -------------------------------------------------------------------------

    def flush(self, *, max_batches: int | None = None) -> int:
        """Move buffered events and orphans to SQL; returns the number of new events.

        Returns 0 without doing anything while another process holds the flush lock.
        """
        self.ship_pending()
        try:
            r = self.redis()
            token = f"{self.token}:{threading.get_ident()}"
            if not r.set(cache.ANALYTICS_FLUSH_LOCK, token, nx=True,
                         px=cache.ANALYTICS_FLUSH_LOCK_MS):
                return 0
        except redis.RedisError:
            return 0
        written = 0
        try:
            with self.app.app_context():
                written += self._flush_orphans(r)
                batch = int(self.config["ANALYTICS_FLUSH_BATCH"])
                batches = 0
                while max_batches is None or batches < max_batches:
                    entries = r.xrange(cache.ANALYTICS_STREAM, "-", "+", count=batch)
                    if not entries:
                        break
                    rows = [_load(fields[b"e"]) for _, fields in entries]
                    written += self._store(rows)
                    r.xdel(cache.ANALYTICS_STREAM, *[entry_id for entry_id, _ in entries])
                    r.pexpire(cache.ANALYTICS_FLUSH_LOCK, cache.ANALYTICS_FLUSH_LOCK_MS)
                    batches += 1
                    if len(entries) < batch:
                        break
        except (redis.RedisError, SQLAlchemyError):
            log.exception("analytics flush failed; the events stay buffered")
        finally:
            self.last_flush = time.monotonic()
            try:
                if r.get(cache.ANALYTICS_FLUSH_LOCK) == token.encode():
                    r.delete(cache.ANALYTICS_FLUSH_LOCK)
            except redis.RedisError:
                pass
        return written

    def _store(self, rows: list[dict]) -> int:
        settings = materialise.Settings.from_config(self.config)
        with db.engine.begin() as conn:
            return materialise.store(conn, rows, settings)

    def _flush_orphans(self, r: redis.Redis) -> int:
        """Write the start records of responses whose worker is gone (bytes unknown)."""
        opened = r.hgetall(cache.ANALYTICS_OPEN)
        if not opened:
            return 0
        records = {key: _load(raw) for key, raw in opened.items()}
        workers = sorted({rec.get("worker", "") for rec in records.values()})
        pipe = r.pipeline(transaction=False)
        for worker in workers:
            pipe.exists(cache.analytics_worker_key(worker))
        alive = {w for w, up in zip(workers, pipe.execute(), strict=True) if up}
        limit = float(self.config["ANALYTICS_ORPHAN_SECONDS"])
        now = datetime.now(UTC)
        orphans = {key: rec for key, rec in records.items()
                   if rec.get("worker") not in alive
                   or (now - rec["started_at"]).total_seconds() > limit}
        if not orphans:
            return 0
        rows = []
        for rec in orphans.values():
            rec.pop("worker", None)
            rows.append({**rec, "bytes_sent": -1, "ended_at": None})
        written = self._store(rows)
        r.hdel(cache.ANALYTICS_OPEN, *orphans)
        log.warning("analytics: %d response(s) lost with their worker, recorded with "
                    "unknown bytes", len(orphans))
        return written

    # -- the background flusher -----------------------------------------------------------

    def background_enabled(self) -> bool:
        setting = self.config.get("ANALYTICS_BACKGROUND_FLUSH")
        return (not self.app.testing) if setting is None else bool(setting)

    def ensure_flusher(self) -> None:
        """Start this process's flusher thread once (lazily, on the first download)."""
        _ = self.token  # resets the thread after a fork
        if self._thread is not None or not self.background_enabled():
            return
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="analytics-flusher",
                                                daemon=True)
                self._thread.start()
                self._shipper = threading.Thread(target=self._ship_loop,
                                                 name="analytics-shipper", daemon=True)
                self._shipper.start()
                _RUNNING.add(self)

    def _run(self) -> None:
        interval = float(self.config["ANALYTICS_FLUSH_SECONDS"])
        while not self._stopping:
            self._wake.wait(interval)
            self._wake.clear()
            if self._stopping:
                break
            try:
                self.redis().set(cache.analytics_worker_key(self.token), 1,
                                 ex=self.heartbeat_ttl())
                self._beat_at = time.monotonic()
                self.flush()
            except redis.RedisError:
                pass
            except Exception:  # never let the flusher die
                log.exception("analytics flusher")

    def _ship_loop(self) -> None:
        while not self._stopping:
            self._ship_wake.wait()
            time.sleep(SHIP_DELAY)  # let the ends of a busy moment share one round trip
            self._ship_wake.clear()
            try:
                self.ship_pending()
            except Exception:  # never let the shipper die
                log.exception("analytics shipper")

    def shutdown(self) -> None:
        """Stop the threads, ship and flush what is buffered."""
        self._stopping = True
        self._wake.set()
        self._ship_wake.set()
        try:
            self.ship_pending()
            self.flush()
        except Exception:
            log.exception("analytics flush at exit")


_RUNNING: set[Recorder] = set()


def recorder(app: Flask) -> Recorder:
    """The app's recorder (created in init_app)."""
    return app.extensions["portal_analytics"]


def shutdown_all() -> None:
    """Flush every recorder of this process (gunicorn ``worker_exit``, atexit)."""
    for rec in list(_RUNNING):
        rec.shutdown()
        _RUNNING.discard(rec)


atexit.register(shutdown_all)


class EventCallback:
    """``record(bytes_sent)`` for one response: called once when the body closes.

    Holds only plain values captured before the response started (no request, no
    session). ``served_from`` may be set by the path that sends the bytes ("cache" for a
    Redis-cached body, "s3" for a presigned redirect); a count of -1 means another server
    sent the bytes: nginx (x-accel) unless the path named it.
    """

    def __init__(self, rec: Recorder, row: dict) -> None:
        self.recorder = rec
        self.row = row
        self.served_from = row.get("served_from", "origin")
        self.buffered = rec.begin(row)
        self.done = False

    def __call__(self, sent: int) -> None:
        if self.done:
            return
        self.done = True
        served_from = "nginx" if sent < 0 and self.served_from == "origin" else self.served_from
        row = {**self.row, "bytes_sent": -1 if sent < 0 else int(sent),
               "ended_at": datetime.now(UTC), "served_from": served_from}
        self.recorder.end(row, self.buffered)


def open_event(app: Flask, row: dict) -> EventCallback:
    """Record the start of a response (row: materialise.EVENT_COLUMNS without bytes_sent
    and ended_at) and return the callback that records its end."""
    row = {"event_key": new_event_key(), **row}
    return EventCallback(recorder(app), row)


def link_nonce(secret_key: str, token: str | None) -> str | None:
    """The nonce of a signed link the view has verified already (None when absent)."""
    if not token:
        return None
    from itsdangerous import BadData, URLSafeTimedSerializer

    from ..download.links import SALT

    try:
        return str(URLSafeTimedSerializer(secret_key, salt=SALT).loads(token)["n"])[:32]
    except (BadData, KeyError, TypeError):
        return None


def referrer_without_query(referrer: str | None) -> str:
    """Where the download was started from, without query or fragment (they can carry
    personal data)."""
    if not referrer:
        return ""
    from urllib.parse import urlsplit

    parts = urlsplit(referrer)
    return f"{parts.scheme}://{parts.netloc}{parts.path}"[:256] if parts.netloc else ""


def event_row(*, file_id: int, version_id: int, size: int, user_id: int | None,
              via_link: bool, method: str, status: int, range_header: str,
              served: list[tuple[int, int]], client_ip: str, user_agent: str, referrer: str,
              link_id: str | None) -> dict:
    """The start record of one response, from values the view captured."""
    from . import clients, logical

    user_agent = (user_agent or "")[:256]
    return {
        "file_id": file_id, "version_id": version_id, "user_id": user_id,
        "via_link": via_link, "method": method, "status": status,
        "range_header": (range_header or "")[:200],
        "served_ranges": logical.format_ranges(served), "size": size,
        "client_ip": clients.truncate_ip(client_ip), "user_agent": user_agent,
        "ua_class": clients.classify(user_agent),
        "referrer": referrer_without_query(referrer), "served_from": "origin",
        "link_id": link_id, "started_at": datetime.now(UTC),
    }


def start_flusher(app) -> None:
    """Start the background flusher of a freshly booted worker (gunicorn post_worker_init):
    it also collects the orphans of workers that died before it."""
    extensions = getattr(app, "extensions", {})
    if "portal_analytics" in extensions:
        extensions["portal_analytics"].ensure_flusher()
