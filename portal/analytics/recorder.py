"""Recording download events without slowing downloads down and without losing any.

The path of one response (see docs/analytics.md, "Recording"):

1. when the view hands the body to the server, ``begin`` appends a *start record* to this
   worker's journal (journal.py: one write(2) to a local append-only file, no network
   round trip), which outlives the worker however it dies;
2. when the server closes the body, the callback queues the finished event in the worker;
   a shipper thread (a greenlet under gevent) wakes within ``SHIP_DELAY`` and appends all
   the events queued meanwhile to this database's Redis stream (``keys.analytics_keys``) in one
   round trip, then notes their ends in the journal. Without background threads (tests,
   the CLI) an end is shipped at once;
3. a flusher writes the stream to SQL in batches (``materialise.store``) and then deletes
   the entries it wrote (XDEL). It runs in a background thread (a greenlet under gevent)
   of every worker, every ``ANALYTICS_FLUSH_SECONDS`` or as soon as the stream holds
   ``ANALYTICS_FLUSH_BATCH`` entries, and in ``flask analytics flush``; a Redis lock
   (SET NX PX) lets one process flush at a time. Events are keyed (``event_key``, unique
   in SQL), so an entry written but not yet deleted when a flusher dies is skipped the next
   time: no event is written twice;
4. a worker killed while bodies were open (or before it shipped their ends) leaves their
   start records in its journal, whose lock the kernel then releases: the next flush on the
   same machine (any worker, or the CLI) stores each start without an end as an *orphan*,
   with ``ended_at`` empty and ``bytes_sent = -1`` (unknown), after the stream, so an end
   that did reach the stream wins;
5. when Redis is down, the shipper writes the events straight to SQL (the same
   ``materialise.store``), off the response's path;
6. at worker exit (gunicorn's ``worker_exit`` hook, and ``atexit``) the worker ships,
   flushes and removes its journal.

The journal lives in ``ANALYTICS_JOURNAL_DIR`` (default: ``analytics-journal`` in the
instance folder), which must be on the node's local disk.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import secrets
import socket
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import redis
from flask import Flask
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError, SQLAlchemyError

from .. import instruments
from ..cache.connection import Outage
from ..coherence import coherence
from ..extensions import db
from ..models import FileVersion
from . import materialise, nginximport, sending
from .eventrows import (
    dump_row,
    event_row,  # noqa: F401  (portal/download calls it as recorder.event_row)
    load_row,
    new_event_key,
)
from .journal import Journal, dead_journals
from .keys import FLUSH_LOCK_MS, AnalyticsKeys, analytics_keys

log = logging.getLogger(__name__)


def store_events(engine, rows: list[dict], settings: materialise.Settings) -> int:
    """``materialise.store`` in a transaction of its own; how many events were new.

    Events of a version deleted since they were buffered (a discarded pending version that
    staff had downloaded) are dropped: a batch that can never be stored would hold up every
    event behind it. Only a failed batch pays for finding them."""
    try:
        with engine.begin() as conn:
            return materialise.store(conn, rows, settings)
    except IntegrityError:
        with engine.connect() as conn:
            live = set(conn.execute(select(FileVersion.id).where(
                FileVersion.id.in_({row.get("version_id") for row in rows}))).scalars())
        kept = [row for row in rows if row.get("version_id") in live]
        if len(kept) == len(rows):
            raise
        log.warning("analytics: %d event(s) of deleted versions dropped", len(rows) - len(kept))
        if not kept:
            return 0
        with engine.begin() as conn:
            return materialise.store(conn, kept, settings)

#: How long the shipper waits after the first queued end, so that the ends of a busy moment
#: cost one round trip; also the window a killed worker loses byte counts in.
SHIP_DELAY = 0.05
#: The most finished events a process keeps queued while neither Redis nor SQL takes them.
RETRY_LIMIT = 100_000
#: The journals' folder inside the instance folder, unless ANALYTICS_JOURNAL_DIR says otherwise.
JOURNAL_DIR = "analytics-journal"
#: A journal this large is replaced by one holding only the open starts.
JOURNAL_ROTATE_BYTES = 4 * 1024 * 1024


#: Steps of nginxlog.READ_LIMIT bytes one flush reads at most (a reader that has fallen far
#: behind catches up over several flushes).
NGINX_STEPS = 64


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
        #: the last flush left nginx's log unread lines: the flusher goes on without waiting
        self.nginx_behind = False
        self._journal: Journal | None = None
        self._open: dict[str, str] = {}  # event key -> start record, journaled, not shipped
        self._outage = Outage(log, "download events go straight to the database")
        self._generation = 0  # journals this process has started (rotation)
        self._ends: list[dict] = []  # finished events waiting for the shipper
        self._ship_wake = threading.Event()
        self._shipper: threading.Thread | None = None
        self._published = -math.inf  # when this process last published what is being sent
        self._queued_shown = 0  # the held events /metrics was last told of

    # -- identity -------------------------------------------------------------------------

    @property
    def token(self) -> str:
        """This process's name, also its journal's (changes after a fork)."""
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._token = f"{socket.gethostname()}-{self._pid}-{secrets.token_hex(4)}"
            self._thread = self._shipper = self._journal = None
            self._ends, self._open, self._generation = [], {}, 0
        return self._token

    @property
    def config(self):
        return self.app.config

    def redis(self) -> redis.Redis:
        return self.app.extensions["portal_redis"]

    def keys(self) -> AnalyticsKeys:
        """The buffer's keys in this database's namespace; raises RedisError while the
        database's identity is unknown (it is unreachable), like a Redis that is down."""
        co = coherence(self.app)
        if co.prefix is None and not co.current():
            raise redis.ConnectionError("the database's identity is not known yet")
        return analytics_keys(co.prefix)

    def journal_dir(self) -> Path:
        configured = self.config.get("ANALYTICS_JOURNAL_DIR")
        return Path(configured) if configured else Path(self.app.instance_path) / JOURNAL_DIR

    def open_responses(self) -> int:
        """Responses of this process whose end is not yet shipped."""
        return len(self._open)

    # -- the download path ----------------------------------------------------------------

    def begin(self, row: dict) -> bool:
        """Journal the start record; False when the disk refuses (the end then goes straight
        to SQL)."""
        self.ensure_flusher()
        record = dump_row(row)
        try:
            with self._lock:
                if self._journal is None:
                    self._journal = Journal(self.journal_dir(), self.token)
                self._journal.started(record)
                self._open[row["event_key"]] = record
        except OSError:
            log.exception("analytics journal unwritable: download events go straight to SQL")
            return False
        return True

    def end(self, row: dict, journaled: bool) -> None:
        """Queue the finished event for the shipper (or ship it now without one; or write
        it to SQL when its start could not be journaled)."""
        if not journaled:
            self.write_direct([row])
        elif self._shipper is not None and not self._stopping:
            with self._lock:
                self._ends.append(row)
            self._ship_wake.set()
        else:
            self.ship([row])

    def ship(self, rows: list[dict]) -> None:
        """Append finished events to the stream in one round trip (to SQL when Redis is
        down), then note their ends in the journal. Should both fail, the starts stay open
        in the journal and are recorded as orphans once this process is gone."""
        if not rows:
            return
        try:
            keys = self.keys()
            pipe = self.redis().pipeline(transaction=False)
            for row in rows:
                if self._waits_for_nginx(row):
                    pipe.hset(keys.nginx_waiting, row["event_key"], dump_row(row))
                else:
                    pipe.xadd(keys.stream, {"e": dump_row(row)})
            pipe.xlen(keys.stream)
            length = pipe.execute()[-1]
        except redis.RedisError:
            self._outage.failed()
            if not self.write_direct(rows):
                self._keep_for_later(rows)
                return
        else:
            self._outage.recovered()
            if length >= int(self.config["ANALYTICS_FLUSH_BATCH"]):
                self._wake.set()
        self._show_held(0)  # whatever was held went with these
        keys = [row["event_key"] for row in rows]
        with self._lock:
            for key in keys:
                self._open.pop(key, None)
            if self._journal is not None:
                try:
                    self._journal.ended(keys)
                    if self._journal.size() > JOURNAL_ROTATE_BYTES:
                        self._rotate()
                except OSError:
                    log.exception("analytics journal unwritable")

    def _keep_for_later(self, rows: list[dict]) -> None:
        """Neither Redis nor the database took these events: queue them again, so that the
        next flush (every ANALYTICS_FLUSH_SECONDS) tries once more with their real bytes.
        Past RETRY_LIMIT queued events they are left to the journal, whose open starts are
        recorded (bytes unknown) once this process is gone."""
        with self._lock:
            room = RETRY_LIMIT - len(self._ends)
            self._ends.extend(rows[:max(0, room)])
        self._show_held(len(self._ends))

    def _show_held(self, count: int) -> None:
        """Tell /metrics how many finished events this process holds because neither
        Redis nor SQL took them (only when that changes: not a write per download)."""
        if count != self._queued_shown:
            self._queued_shown = count
            instruments.events_queued(count)

    def _rotate(self) -> None:
        """Start a new journal holding only the starts still open, then delete the old one
        (a kill in between leaves both: the orphans found twice are stored once)."""
        self._generation += 1
        fresh = Journal(self.journal_dir(), f"{self.token}-{self._generation}")
        for record in self._open.values():
            fresh.started(record)
        self._journal.close(remove=True)
        self._journal = fresh

    def _waits_for_nginx(self, row: dict) -> bool:
        """An event nginx sends the bytes of, when its log says how many (x-accel)."""
        return bool(self.config.get("ANALYTICS_NGINX_LOG")) and row.get("bytes_sent") == -1 \
            and row.get("served_from") == "nginx"

    def ship_pending(self) -> None:
        """Ship every queued end now."""
        with self._lock:
            rows, self._ends = self._ends, []
        self.ship(rows)

    def write_direct(self, rows: list[dict]) -> bool:
        """Write events to SQL now (Redis is down); errors are logged, never raised."""
        settings = materialise.Settings.from_config(self.config)
        try:
            with self.app.app_context():
                store_events(db.engine, rows, settings)
        except SQLAlchemyError:
            log.exception("could not record %d download event(s)", len(rows))
            return False
        return True

    # -- flushing -------------------------------------------------------------------------

    def flush(self, *, max_batches: int | None = None, nginx: bool | None = None,
              paced: bool = False) -> int:
        """Move buffered events, nginx's new log lines, then the orphans of dead workers, to
        SQL; returns the number of new events.

        The stream and the log are left alone while another process holds the flush lock.
        ``nginx`` says whether to read nginx's log (ANALYTICS_NGINX_LOG); by default only
        when ANALYTICS_NGINX_IMPORT is "workers". ``paced`` (the web workers' background
        flusher) keeps that import to ANALYTICS_NGINX_IMPORT_SHARE of the time while it is
        behind.
        """
        if nginx is None:
            nginx = self.config["ANALYTICS_NGINX_IMPORT"] == "workers"
        self.nginx_behind = False
        self.ship_pending()
        self.publish_sending()
        written = 0
        r = self.redis()
        token = f"{self.token}:{threading.get_ident()}"
        try:
            keys = self.keys()
            locked = r.set(keys.flush_lock, token, nx=True, px=FLUSH_LOCK_MS)
        except redis.RedisError:
            locked = False
        try:
            with self.app.app_context():
                if locked:
                    written += self._flush_stream(r, keys, max_batches)
                    if nginx and self.config.get("ANALYTICS_NGINX_LOG"):
                        written += self._flush_nginx(r, keys, paced)
                written += self._flush_orphans()
        finally:
            self.last_flush = time.monotonic()
            if locked:
                try:
                    if r.get(keys.flush_lock) == token.encode():
                        r.delete(keys.flush_lock)
                except redis.RedisError:
                    pass
        return written

    def publish_sending(self) -> None:
        """Tell the other nodes' overviews what this node sends now (sending.py), at most
        every PUBLISH_SECONDS; with Redis down they show their own node and say so."""
        now = time.monotonic()
        if now - self._published < sending.PUBLISH_SECONDS:
            return
        self._published = now
        with contextlib.suppress(redis.RedisError):
            sending.publish(self.redis(), self.keys(), self.journal_dir())

    def sending_now(self) -> sending.Sending:
        """What every node is sending now (this one read live), for the admin overview."""
        try:
            keys = self.keys()
        except redis.RedisError:
            keys = None
        return sending.gather(self.redis(), keys, self.journal_dir())

    def _flush_stream(self, r: redis.Redis, keys: AnalyticsKeys,
                      max_batches: int | None) -> int:
        written = 0
        try:
            batch = int(self.config["ANALYTICS_FLUSH_BATCH"])
            batches = 0
            while max_batches is None or batches < max_batches:
                entries = r.xrange(keys.stream, "-", "+", count=batch)
                if not entries:
                    break
                rows = [load_row(fields[b"e"]) for _, fields in entries]
                written += self._store(rows)
                r.xdel(keys.stream, *[entry_id for entry_id, _ in entries])
                r.pexpire(keys.flush_lock, FLUSH_LOCK_MS)
                batches += 1
                if len(entries) < batch:
                    break
        except (redis.RedisError, SQLAlchemyError):
            log.exception("analytics flush failed; the events stay buffered")
        return written

    def _flush_nginx(self, r: redis.Redis, keys: AnalyticsKeys, paced: bool) -> int:
        """Import nginx's new log lines (nginximport.py), NGINX_STEPS reads at most."""
        written, self.nginx_behind = nginximport.import_new_lines(
            r, keys, self.config, self._store, steps=NGINX_STEPS, paced=paced)
        return written

    def _store(self, rows: list[dict]) -> int:
        return store_events(db.engine, rows, materialise.Settings.from_config(self.config))

    def _flush_orphans(self) -> int:
        """Store the starts left without an end in the journals of dead workers (bytes
        unknown) and delete those journals."""
        written = 0
        for dead in dead_journals(self.journal_dir()):
            rows = []
            for record in dead.records:
                rec = load_row(record)
                rows.append({**rec, "bytes_sent": -1, "ended_at": None})
            try:
                written += self._store(rows) if rows else 0
            except SQLAlchemyError:
                log.exception("orphans of %s not stored; kept for the next flush", dead.path)
                dead.release()
                continue
            dead.remove()
            if rows:
                log.warning("analytics: %d response(s) lost with their worker, recorded "
                            "with unknown bytes", len(rows))
        return written

    # -- the background flusher -----------------------------------------------------------

    def background_enabled(self) -> bool:
        setting = self.config.get("ANALYTICS_BACKGROUND_FLUSH")
        return (not self.app.testing) if setting is None else bool(setting)

    def ensure_flusher(self) -> None:
        """Start this process's flusher thread once (lazily, on the first download)."""
        _ = self.token  # resets the thread after a fork
        if self._shipper is not None or not self.background_enabled():
            return
        with self._lock:
            if self._shipper is None:
                # ANALYTICS_FLUSHER=process: the flush to SQL runs in a process of its own
                # (gunicorn.conf.py); this worker only ships its ends to Redis.
                if self.config["ANALYTICS_FLUSHER"] == "workers":
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
            if not self.nginx_behind:  # else straight on (paced by the pauses in the flush)
                self._wake.wait(interval)
            self._wake.clear()
            if self._stopping:
                break
            try:
                self.flush(paced=True)
            except Exception:  # never let the flusher die
                log.exception("analytics flusher")

    def close_journal(self) -> None:
        """Close this process's journal: deleted, unless ends could not be stored (its
        starts then become orphans, recorded by the next flush)."""
        with self._lock:
            if self._journal is not None:
                self._journal.close(remove=not self._open)
                self._journal = None

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
            self.close_journal()
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
        self.journaled = rec.begin(row)
        self.done = False

    def __call__(self, sent: int) -> None:
        if self.done:
            return
        self.done = True
        served_from = "nginx" if sent < 0 and self.served_from == "origin" else self.served_from
        row = {**self.row, "bytes_sent": -1 if sent < 0 else int(sent),
               "ended_at": datetime.now(UTC), "served_from": served_from}
        self.recorder.end(row, self.journaled)


def open_event(app: Flask, row: dict) -> EventCallback:
    """Record the start of a response (row: rawevents.EVENT_COLUMNS without bytes_sent
    and ended_at) and return the callback that records its end."""
    row = {"event_key": new_event_key(), **row}
    return EventCallback(recorder(app), row)


def start_flusher(app) -> None:
    """Start the background flusher of a freshly booted worker (gunicorn post_worker_init):
    it also collects the orphans of workers that died before it."""
    extensions = getattr(app, "extensions", {})
    if "portal_analytics" in extensions:
        extensions["portal_analytics"].ensure_flusher()
