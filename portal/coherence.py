"""What SQL says about revoked rights, as this worker last confirmed it.

SQL is the source of truth for every decision that takes a right away: a file's access rule,
a user's role, groups, activity and session generation, a revoked link or session. Redis
and the workers' own copies carry those facts faster, never instead, so that whatever Redis
does (down, frozen, flushed, restarted empty, its pub/sub lost) a revoked right stops being
honoured within ``COHERENCE_SECONDS`` of the commit on every worker and node.

How, without SQL on a warm download:

- Every transaction that changes a file, a version, a user, a group or revokes a token adds
  one to ``portal_state.generation`` and writes the subjects it changed (``file:7``,
  ``user:3``, ``users``, ``token:<nonce>``) to ``change_log`` under that generation, in the
  same transaction (``record_changes``, called from cache/changes.py's flush hook).
- Each worker confirms at most once per ``COHERENCE_SECONDS``: one small query for the
  identity and generation, and when the generation moved, the change-log rows past the one
  it saw. Each subject's newest generation becomes its *floor*.
- Every cached fact is stamped with the generation the loading worker had confirmed when it
  read the database (cache/metadata.py, cache/users.py). A stamp below its subject's floor
  was read before the last change of that subject: it is stale and reloaded. A stamp above
  the confirmed generation is from another timeline (a restored backup): refused as well.
- Revoked links and sessions are a set in each worker, loaded from ``revoked_tokens`` and
  kept up to date from the change log.
- While the database cannot confirm, nothing cached is trusted: decisions go to SQL, and
  when SQL cannot answer either, they fail closed (the callers answer 503; public files keep
  serving from what is cached).

A worker that just committed applies its own changes at once (``note_commit``), and Redis
pub/sub still drops the other workers' copies within milliseconds: the confirmation is the
bound, not the usual speed. Where an answer promises that a right is gone for good (logout,
ended sessions, a disabled user), ``commit_everywhere`` waits out that bound before it
returns.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

import redis
from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from . import instruments
from .config import settings
from .extensions import db
from .models import ChangeLog, PortalState, RevokedToken

log = logging.getLogger(__name__)

#: Change-log rows older than this are no longer needed to judge a cached fact: every entry
#: stored before them has expired from Redis long since (the longest TTL is minutes).
LOG_WINDOW = timedelta(hours=24)
#: After a failed confirmation, the next try waits this long (a dead database is not asked
#: by every request).
RETRY_SECONDS = 0.2
#: How often (in confirmations with a change) a worker deletes change-log rows past LOG_WINDOW.
PRUNE_EVERY = 500


def record_changes(connection, subjects: Iterable[str]) -> int | None:
    """Add one to the generation and log these subjects under it, in the caller's
    transaction; the new generation, or None when the schema has no state table yet."""
    subjects = sorted(set(subjects))
    state = PortalState.__table__
    new = connection.execute(
        update(state).where(state.c.id == 1).values(generation=state.c.generation + 1)
        .returning(state.c.generation)).scalar_one_or_none()
    if new is None:
        return None
    now = datetime.now(UTC)
    connection.execute(ChangeLog.__table__.insert(),
                       [{"generation": new, "subject": s[:64], "at": now} for s in subjects])
    return new


def namespace_of(identity: str) -> str:
    """The start of every Redis key of the database with this identity (portal/cache/keys.py)."""
    return f"portal:{identity}:"


def generation_key(prefix: str) -> str:
    """The highest generation a database's workers have committed or seen, under its prefix
    (a sorted set of one member, so that ZADD GT keeps the maximum)."""
    return f"{prefix}generation"


class Coherence:
    """This process's confirmed view of the database's generation, floors and revocations."""

    def __init__(self, app, interval: float, on_change: Callable[[Iterable[str]], None]
                 ) -> None:
        self.app = app
        self.interval = interval
        self.on_change = on_change  # drops this process's copies of the changed subjects
        self.identity: str | None = None
        self.generation = -1
        self.confirmed = -math.inf  # monotonic time at which the last good read began
        self.confirmations = 0
        self._floors: dict[str, int] = {}
        self._revoked: set[str] = set()
        self._failed_at = -math.inf
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._changes_seen = 0

    # -- the state of this worker ---------------------------------------------------------

    @property
    def prefix(self) -> str | None:
        """The start of every Redis key of this database, None until it is known."""
        return None if self.identity is None else namespace_of(self.identity)

    def current(self) -> bool:
        """True when this worker's view was confirmed against SQL less than ``interval``
        ago (confirming it now when due); False while the database cannot be read."""
        if self._pid == os.getpid() and time.monotonic() - self.confirmed < self.interval:
            return True
        return self.confirm()

    def valid(self, subject: str, stamp: object) -> bool:
        """True when a cached fact about ``subject`` stamped with ``stamp`` (the generation
        its loader had confirmed) is not older than the subject's last change, and comes
        from this database's timeline; only meaningful while ``current()``."""
        if not isinstance(stamp, int) or stamp > self.generation:
            return False
        floor = self._floors.get(subject, -1)
        if subject.startswith("user:"):
            floor = max(floor, self._floors.get("users", -1))
        return stamp >= floor

    def stamp(self) -> int:
        """The stamp for a fact read from the database now."""
        return self.generation

    def revoked(self, nonce: str) -> bool:
        """True when this link or session was revoked. From the worker's set while current,
        else from SQL; raises SQLAlchemyError when neither can tell (fail closed)."""
        if self.current():
            return nonce in self._revoked
        with self.app.app_context(), db.engine.connect() as conn:
            return conn.execute(select(RevokedToken.nonce).where(
                RevokedToken.nonce == nonce)).first() is not None

    def note_commit(self, generation: int, subjects: Iterable[str]) -> None:
        """Apply a change this process just committed at once (a worker must never serve its
        own revocation), then confirm: the generation only moves past what was read from the
        change log, or another node's earlier change would be skipped."""
        with self._lock:
            self._apply(None, [(s, generation) for s in subjects])
        self.confirm(force=True)

    def wait_until_seen_everywhere(self, committed_at: float, grants: float = 0) -> None:
        """Return once every worker, of this node and any other, decides by a view confirmed
        after a commit that had ended at ``committed_at`` (``time.monotonic()``): a view
        confirmed before it is trusted for at most ``interval``, so wait until that much has
        passed since; and once every decision nginx keeps ``grants`` seconds (x-accel) was
        made after that. A cooperative sleep under gunicorn's gevent workers."""
        remaining = committed_at + self.interval + grants - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    # -- confirming ----------------------------------------------------------------------

    def confirm(self, *, force: bool = False) -> bool:
        """Read the identity and generation (and the changes since the last read) from
        SQL now; False when the database cannot be read. Unless ``force``, a confirmation
        made meanwhile by another greenlet or thread is taken instead."""
        with self._lock:
            began = time.monotonic()
            if (not force and self._pid == os.getpid()
                    and began - self.confirmed < self.interval):
                return True  # another greenlet or thread confirmed while this one waited
            if began - self._failed_at < RETRY_SECONDS:
                return False
            try:
                self._read()
            except SQLAlchemyError as exc:
                self._failed_at = time.monotonic()
                instruments.coherence_failed()
                log.warning("database unreadable: cached decisions not trusted (%s)",
                            str(exc).splitlines()[0])
                return False
            self.confirmed = began
            self.confirmations += 1
            instruments.coherence_confirmed()
            return True

    def _read(self) -> None:
        with self.app.app_context(), db.engine.connect() as conn:
            identity, generation = conn.execute(
                select(PortalState.identity, PortalState.generation)
                .where(PortalState.id == 1)).one()
            fork = self._pid != os.getpid()
            if fork or identity != self.identity or generation < self.generation:
                if not fork and identity == self.identity:
                    identity = self._new_timeline(conn, identity)
                self._load_all(conn, identity, generation)
            elif generation > self.generation:
                rows = conn.execute(select(ChangeLog.subject, ChangeLog.generation)
                                    .where(ChangeLog.generation > self.generation)).all()
                self._apply(generation, rows)
                self._prune(conn)

    def _load_all(self, conn, identity: str, generation: int) -> None:
        """Start afresh: a new process, a new database, or a restored one."""
        now = datetime.now(UTC)
        floors = dict(conn.execute(
            select(ChangeLog.subject, func.max(ChangeLog.generation))
            .where(ChangeLog.at > now - LOG_WINDOW).group_by(ChangeLog.subject)).all())
        revoked = set(conn.execute(select(RevokedToken.nonce)
                                   .where(RevokedToken.expires_at > now)).scalars())
        if self._behind_redis(identity, generation):
            identity = self._new_timeline(conn, identity)
        self._pid = os.getpid()
        self.identity, self.generation = identity, generation
        self._floors, self._revoked = floors, revoked
        self.on_change(None)  # None: everything this process holds

    def _apply(self, generation: int | None, rows: Iterable[tuple[str, int]]) -> None:
        """Raise the floors of these (subject, generation) rows, note revoked tokens, drop
        this process's copies of the subjects; ``generation``: all the change log up to it
        has now been read (None: these rows only)."""
        subjects = []
        for subject, gen in rows:
            if gen > self._floors.get(subject, -1):
                self._floors[subject] = gen
            if subject.startswith("token:"):
                self._revoked.add(subject[6:])
            subjects.append(subject)
        if generation is not None:
            self.generation = max(self.generation, generation)
        self._changes_seen += 1
        if subjects:
            self.on_change(subjects)

    def _prune(self, conn) -> None:
        """Now and then, drop the change-log rows and expired revocations nobody needs."""
        if self._changes_seen % PRUNE_EVERY:
            return
        now = datetime.now(UTC)
        conn.execute(ChangeLog.__table__.delete().where(ChangeLog.at < now - LOG_WINDOW))
        conn.execute(RevokedToken.__table__.delete()
                     .where(RevokedToken.expires_at < now - LOG_WINDOW))
        conn.commit()

    def _behind_redis(self, identity: str, generation: int) -> bool:
        """Record the highest generation seen of this identity in Redis; True when Redis
        saw a higher one: the database is a restored backup, whose ids and generations
        repeat what the entries in Redis describe."""
        key = generation_key(namespace_of(identity))
        try:
            pipe = self.app.extensions["portal_redis"].pipeline(transaction=False)
            pipe.zadd(key, {"max": generation}, gt=True)
            pipe.zscore(key, "max")
            highest = pipe.execute()[1]
        except redis.RedisError:
            return False  # a Redis that cannot answer holds nothing to confuse us with
        return highest is not None and highest > generation

    def _new_timeline(self, conn, identity: str) -> str:
        """The generation went backwards under the same identity (a restored backup): give
        the database a new identity, so that nothing cached before is read again."""
        fresh = uuid.uuid4().hex
        conn.execute(update(PortalState.__table__)
                     .where(PortalState.id == 1, PortalState.identity == identity)
                     .values(identity=fresh))
        conn.commit()  # the first worker to notice wins; the others read its identity
        current = conn.execute(select(PortalState.identity)
                               .where(PortalState.id == 1)).scalar_one()
        log.warning("database generation went backwards: new identity %s (was %s)",
                    current, identity)
        return current


def commit_everywhere(session) -> None:
    """Commit ``session`` and return only once no worker anywhere, and no grant nginx keeps
    (x-accel), still honours what the commit took away (a logout, ended sessions, a disabled
    user): the answer that says it is done is then true everywhere, not only here."""
    session.commit()
    committed = time.monotonic()
    cfg = settings()
    # nginx keeps a grant until the end of the whole second after its X-Accel-Expires: one
    # second more than the setting.
    grants = cfg.nginx_grant_seconds + 1 if cfg.sendfile == "x-accel" and \
        cfg.nginx_grant_seconds else 0
    coherence().wait_until_seen_everywhere(committed, grants)


def coherence(app=None) -> Coherence:
    """The app's Coherence (the current app's by default)."""
    from flask import current_app

    return (app or current_app).extensions["portal_coherence"]
