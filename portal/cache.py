"""Every Redis key, TTL and invalidation of the portal lives here.

Redis is an optimisation: every function here degrades to "no cache" when Redis is down,
so the portal is slower then, never wrong and never failing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from itertools import chain

import redis
import redis.client
from flask import current_app, g, has_app_context
from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from .coherence import Coherence, coherence, record_changes

log = logging.getLogger(__name__)

# Short timeouts: a dead Redis must cost a request milliseconds, not seconds.
CONNECT_TIMEOUT = 0.25
SOCKET_TIMEOUT = 0.5


#: After Redis failed (refused, timed out), it is not asked again for this long: a frozen
#: Redis would otherwise cost every request its socket timeout, once per call.
BREAKER_SECONDS = 1.0


class _Breaker:
    """Whether this process gave up on Redis a moment ago (shared by a client and its
    pipelines)."""

    def __init__(self) -> None:
        self.open_until = 0.0

    def check(self) -> None:
        if time.monotonic() < self.open_until:
            raise redis.ConnectionError("redis failed a moment ago; not asked again yet")

    def failed(self) -> None:
        self.open_until = time.monotonic() + BREAKER_SECONDS


class GuardedRedis(redis.Redis):
    """redis-py's client with a circuit breaker: after a connection error or a timeout,
    every call fails at once for BREAKER_SECONDS (callers treat it as Redis down), then
    Redis is tried again. Why by hand: redis-py retries, it does not stop asking."""

    breaker: _Breaker

    def execute_command(self, *args, **options):
        self.breaker.check()
        try:
            return super().execute_command(*args, **options)
        except (redis.ConnectionError, redis.TimeoutError):
            self.breaker.failed()
            raise

    def pipeline(self, transaction=True, shard_hint=None) -> redis.client.Pipeline:
        pipe = _GuardedPipeline(self.connection_pool, self.response_callbacks, transaction,
                                shard_hint)
        pipe.breaker = self.breaker
        return pipe


class _GuardedPipeline(redis.client.Pipeline):
    breaker: _Breaker

    def execute(self, raise_on_error: bool = True):
        self.breaker.check()
        try:
            return super().execute(raise_on_error)
        except (redis.ConnectionError, redis.TimeoutError):
            self.breaker.failed()
            raise


def make_client(url: str) -> redis.Redis:
    """A client that connects lazily; nothing is sent until first use."""
    client = GuardedRedis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT,
        health_check_interval=30,
    )
    client.breaker = _Breaker()
    return client


def client() -> redis.Redis:
    """The current app's Redis client."""
    return current_app.extensions["portal_redis"]


def status() -> str:
    """'ok', or why Redis cannot be used (the cache is then off)."""
    try:
        client().ping()
    except redis.RedisError as exc:
        return f"unavailable: {exc}"
    return "ok"


def namespace() -> str | None:
    """The current app's key prefix, ``portal:<database identity>:``; None while the
    database's identity is unknown (then nothing is cached)."""
    return coherence(current_app).prefix


# --- Analytics buffer (portal/analytics/recorder.py) ----------------------------------------
ANALYTICS_FLUSH_LOCK_MS = 60_000


@dataclass(frozen=True)
class AnalyticsKeys:
    """The recorder's keys in one database's namespace."""

    #: Finished responses waiting for the flusher (one JSON entry each, XADD / XRANGE / XDEL).
    stream: str
    #: Held (SET NX PX) by the one process that flushes at a time.
    flush_lock: str
    #: x-accel downloads waiting for nginx's log line (ANALYTICS_NGINX_LOG): event key -> JSON.
    nginx_waiting: str
    #: What nginx's log said about an event, until joined to it: event key -> JSON.
    nginx_sent: str

    def nginx_state(self, host: str, path: str) -> str:
        """How far one nginx host's event log has been read: {"inode", "offset"} (each node
        with its own nginx reads its own file)."""
        return f"{self.stream.rsplit(':', 1)[0]}:nginx:state:{host}:{path}"


def analytics_keys(prefix: str) -> AnalyticsKeys:
    """The recorder's keys under this database's prefix (namespace())."""
    base = f"{prefix}analytics"
    return AnalyticsKeys(stream=f"{base}:events", flush_lock=f"{base}:flush-lock",
                         nginx_waiting=f"{base}:nginx:waiting", nginx_sent=f"{base}:nginx:sent")


# ---------------------------------------------------------------------------
# Statistics: cluster-wide counters in one Redis hash, exposed on /metrics
# ---------------------------------------------------------------------------

#: Shared by every database on this Redis: counters of the cache itself, no fact of a database.
STATS_KEY = "portal:cache:stats"
#: Field -> help text; /metrics exposes each as ``portal_cache_<field>_total``.
STATS_FIELDS = {
    "hits": "Downloads of a remote origin answered from the hot-file cache",
    "misses": "Downloads of a remote origin answered from the origin",
    "hit_bytes": "Bytes planned from the hot-file cache",
    "miss_bytes": "Bytes planned from the origin",
    "fills": "Versions copied into the hot-file cache",
    "evictions": "Versions evicted from the hot-file cache to stay under the byte budget",
    "fallbacks": "Cached reads that found a chunk gone and finished from the origin",
    "memory_hits": "Of those hits, the ones answered from a worker's own memory",
    "meta_hits": "Download metadata answered from Redis",
    "meta_misses": "Download metadata loaded from the database",
    "meta_local_hits": "Download metadata answered from a worker's own coherent copy",
}


def stats() -> dict[str, int] | None:
    """The cluster-wide cache counters, or None when Redis is down."""
    try:
        raw = client().hgetall(STATS_KEY)
    except redis.RedisError:
        return None
    values = {name: 0 for name in STATS_FIELDS}
    values.update({k.decode(): int(v) for k, v in raw.items() if k.decode() in STATS_FIELDS})
    return values


# ---------------------------------------------------------------------------
# Download metadata: file id -> access rule, deletion, owner, newest version
# ---------------------------------------------------------------------------

#: How long Redis keeps an entry; staleness is bounded by coherence.py, not by this.
META_TTL_DEFAULT = 300


def meta_key(file_id: int, prefix: str | None = None) -> str:
    """A file's metadata entry (``prefix``: namespace(), given where there is no app)."""
    return f"{prefix or namespace()}file:{int(file_id)}:meta"


@dataclass(frozen=True)
class FileSnapshot:
    """What can_read and the download headers need of a File (duck-typed for can_read)."""

    id: int
    access: str
    deleted_at: datetime | None
    owner_id: int | None


@dataclass(frozen=True)
class VersionSnapshot:
    """What serve_version needs of a FileVersion: versions are immutable, so this is exact."""

    id: int
    file_id: int
    number: int
    sha256: str
    size: int
    mime_type: str
    original_filename: str
    storage_key: str
    created_at: datetime


def snapshot(file, version) -> tuple[FileSnapshot, VersionSnapshot | None]:
    """Plain copies of an ORM File and (its newest) FileVersion."""
    fs = FileSnapshot(id=file.id, access=file.access, deleted_at=file.deleted_at,
                      owner_id=file.owner_id)
    return fs, version_snapshot_of(version)


def version_snapshot_of(version) -> VersionSnapshot | None:
    """A plain copy of an ORM FileVersion (None for None)."""
    if version is None:
        return None
    return VersionSnapshot(
        id=version.id, file_id=version.file_id, number=version.number, sha256=version.sha256,
        size=version.size, mime_type=version.mime_type,
        original_filename=version.original_filename, storage_key=version.storage_key,
        created_at=version.created_at)


def _plain(obj) -> dict | None:
    """A snapshot as JSON-ready values (datetimes as ISO text)."""
    if obj is None:
        return None
    return {k: v.isoformat() if isinstance(v, datetime) else v for k, v in asdict(obj).items()}


def _version_from(data: dict | None) -> VersionSnapshot | None:
    if data is None:
        return None
    return VersionSnapshot(**{**data, "created_at": datetime.fromisoformat(data["created_at"])})


#: A metadata entry saying the file does not exist: kept like any other, so that a missing
#: id costs what a forbidden one costs (no timing tells which ids exist). Creating the file
#: changes its subject, which makes the entry stale.
MISSING = "missing"


def _dump(file_id: int, snap: tuple[FileSnapshot, VersionSnapshot | None] | None,
          stamp: int) -> str:
    if snap is None:
        return json.dumps({"file": None, "id": int(file_id), "gen": stamp})
    return json.dumps({"file": _plain(snap[0]), "latest": _plain(snap[1]), "gen": stamp})


def decode_meta(raw: bytes | None):
    """(file id, stamp, the snapshots or MISSING) of a metadata entry; None when it is
    absent or of an older layout. Whether the stamp is still valid is the caller's to ask
    (meta_from_reply; the fast path asks on every use of a decoded entry)."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        stamp = data["gen"]
        if data["file"] is None:
            return int(data["id"]), stamp, MISSING
        file = data["file"]
        if file["deleted_at"]:
            file["deleted_at"] = datetime.fromisoformat(file["deleted_at"])
        return int(file["id"]), stamp, (FileSnapshot(**file), _version_from(data["latest"]))
    except (ValueError, KeyError, TypeError):
        return None


def meta_from_reply(raw: bytes | None, co: Coherence):
    """The snapshots in a metadata entry, or MISSING for a cached absence; None when the
    entry is absent, of an older layout, or stale by the database's change log (co.valid).
    The caller has checked co.current()."""
    entry = decode_meta(raw)
    if entry is None or not co.valid(f"file:{entry[0]}", entry[1]):
        return None
    return entry[2]


def file_meta(file_id: int, load: Callable[[], tuple | None]
              ) -> tuple[FileSnapshot, VersionSnapshot | None] | None:
    """The file's download metadata from this worker's copies or Redis when their stamp is
    still valid (coherence.py), else from ``load()`` (the database), stored for next time.
    None when the file does not exist (cached too, see MISSING).

    While the database cannot confirm the cache, the database itself is asked; when it
    cannot answer either, a cached public file is still served and anything else raises
    the database's error (the error handler answers 503: fail closed)."""
    co = coherence(current_app)
    if not current_app.config.get("CACHE_METADATA", True):
        return load()
    if not co.current():
        return _load_or_public(file_id, load)
    key = meta_key(file_id)
    # One round trip for the common case: read the entry and count it as a hit (a miss
    # takes the hit back below, in the round trip that stores the entry anyway). A download
    # has made that round trip already, together with the user's (prefetch_download).
    def fetch():
        pipe = client().pipeline(transaction=False)
        pipe.get(key)
        pipe.hincrby(STATS_KEY, "meta_hits", 1)
        return pipe.execute()[0]

    raw = _prefetched_or("meta", file_id, fetch)
    if raw is not _DOWN:
        found = meta_from_reply(raw, co)
        if found is MISSING:
            return None
        if found is not None:
            remember_public(current_app, file_id, found)
            return found
    stamp = co.stamp()
    found = _load_or_public(file_id, load)
    if raw is _DOWN:
        return found
    try:
        pipe = client().pipeline(transaction=False)
        ttl = int(current_app.config.get("CACHE_META_TTL_SECONDS", META_TTL_DEFAULT))
        pipe.set(key, _dump(file_id, found, stamp), ex=max(1, ttl))
        pipe.hincrby(STATS_KEY, "meta_misses", 1)
        pipe.hincrby(STATS_KEY, "meta_hits", -1)  # the read above counted one
        pipe.execute()
    except redis.RedisError:
        pass
    return found


def _load_or_public(file_id: int, load: Callable[[], tuple | None]):
    """The file's metadata from the database, else (it is down) what this worker or Redis
    last knew of it as a public file, else the database's error (fail closed: the error
    handler answers 503)."""
    try:
        found = load()
    except SQLAlchemyError:
        found = _last_public(file_id)
        if found is None:
            raise
        return found
    remember_public(current_app, file_id, found)
    return found


#: Public files this worker served, for when neither the database nor Redis can answer: a
#: public file is meant for everyone, so serving its last known state is never a leak.
_PUBLIC_LIMIT = 4096


def remember_public(app, file_id: int, found) -> None:
    """Note what a download found of a file: kept while the file is public (the fast path
    and the view both call this)."""
    seen = app.extensions.setdefault("portal_public_meta", {})
    if found is not None and found[0].access == "public" and found[0].deleted_at is None:
        if len(seen) >= _PUBLIC_LIMIT:
            seen.clear()
        seen[int(file_id)] = found
    else:
        seen.pop(int(file_id), None)


def _last_public(file_id: int):
    found = current_app.extensions.get("portal_public_meta", {}).get(int(file_id))
    if found is not None:
        return found
    prefix = namespace()
    if prefix is None:
        return None
    try:
        data = json.loads(client().get(meta_key(file_id, prefix)) or "null")
        file = data["file"]
        if file["access"] == "public" and not file["deleted_at"]:
            return FileSnapshot(**file), _version_from(data["latest"])
    except (redis.RedisError, ValueError, KeyError, TypeError):
        pass
    return None


# A version never changes once stored (a new upload is a new version), so its snapshot needs
# no invalidation: whether it may be read is decided by the file's metadata above. Signed
# links name a version by id, ``?version=N`` by its number within the file.
VERSION_TTL = 24 * 3600


def version_key_by_id(version_id: int) -> str:
    return f"{namespace()}version:{int(version_id)}:snap"


def version_key_by_number(file_id: int, number: int) -> str:
    return f"{namespace()}file:{int(file_id)}:v{int(number)}:snap"


def version_snapshot(key: str, load: Callable[[], VersionSnapshot | None]
                     ) -> VersionSnapshot | None:
    """One version's snapshot from Redis (normally prefetched with the file's metadata), else
    from ``load()`` (the database), stored for next time. None when there is no such version
    (not cached)."""
    if not current_app.config.get("CACHE_METADATA", True) or namespace() is None:
        return load()
    raw = _prefetched_or("version", key, lambda: client().get(key))
    if raw is _DOWN:
        return load()
    if raw is not None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return _version_from(json.loads(raw))
    found = load()
    if found is not None:
        with contextlib.suppress(redis.RedisError):
            client().set(key, json.dumps(_plain(found)), ex=VERSION_TTL)
    return found


# ---------------------------------------------------------------------------
# Change tracking: every committed change reaches SQL's change log, then Redis and the copies
# ---------------------------------------------------------------------------

_SUBJECTS = "portal_changed_subjects"  # session.info: subjects of this transaction's flushes
_COMMITTED = "portal_change_generations"  # session.info: generations this transaction took


def changed_subjects(objects) -> set[str]:
    """The coherence subjects (coherence.py) that these new, changed or deleted ORM objects
    touch."""
    from .models import File, FileVersion, Group, RevokedToken, User

    subjects = set()
    for obj in objects:
        if isinstance(obj, File) and obj.id is not None:
            subjects.add(f"file:{obj.id}")
        elif isinstance(obj, FileVersion) and obj.file_id is not None:
            subjects.add(f"file:{obj.file_id}")
        elif isinstance(obj, User) and obj.id is not None:
            subjects.add(f"user:{obj.id}")
        elif isinstance(obj, Group):
            subjects.add("users")
        elif isinstance(obj, RevokedToken):
            subjects.add(f"token:{obj.nonce}")
    return subjects


def _after_flush(session, _context) -> None:
    """Log what this flush changed in SQL, in the same transaction (coherence.record_changes):
    the one durable record of every revocation, whatever Redis does."""
    subjects = changed_subjects(chain(session.new, session.dirty, session.deleted))
    if not subjects:
        return
    generation = record_changes(session.connection(), subjects)
    if generation is not None:
        session.info.setdefault(_COMMITTED, []).append((generation, subjects))


def _after_commit(session) -> None:
    """After the commit: this worker applies the change at once, then Redis forgets the
    entries and tells the other workers (an optimisation: they would confirm it anyway)."""
    committed = session.info.pop(_COMMITTED, None)
    if not committed or not has_app_context():
        return
    co = coherence(current_app)
    subjects = set()
    for generation, changed in committed:
        co.note_commit(generation, changed)
        subjects |= changed
    _forget_in_redis(subjects, max(generation for generation, _ in committed))


def _after_rollback(session) -> None:
    session.info.pop(_COMMITTED, None)


def watch_file_changes() -> None:
    """Record every committed ORM change of a File, FileVersion, User or Group and every
    revoked token in the change log, wherever in the code it happens."""
    if not event.contains(Session, "after_flush", _after_flush):
        event.listen(Session, "after_flush", _after_flush)
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_soft_rollback", lambda s, _t: _after_rollback(s))


def subject_keys(subjects: Iterable[str], prefix: str) -> list[str]:
    """The Redis keys that hold facts about these subjects (a group change: every user's,
    which Redis cannot list cheaply; those entries go stale by their stamp instead)."""
    keys = []
    for subject in subjects:
        kind, _, ident = subject.partition(":")
        if kind == "file":
            keys.append(meta_key(int(ident), prefix))
        elif kind == "user":
            keys.append(_user_key(int(ident), prefix))
    return keys


def _forget_in_redis(subjects: set[str], generation: int) -> None:
    """Delete the entries of these subjects, tell the other workers, and record the highest
    generation of this database (coherence.Coherence._behind_redis reads it to notice a
    restored backup), in one round trip."""
    co = coherence(current_app)
    if co.prefix is None:
        co.current()  # learn the identity (a process that has only written so far)
    prefix = co.prefix
    if prefix is None:
        return
    keys = subject_keys(subjects, prefix)
    try:
        pipe = client().pipeline(transaction=False)
        if keys:
            pipe.delete(*keys)
            pipe.publish(_invalidation_channel(), " ".join(keys))
        pipe.zadd(generation_key(prefix), {"max": generation}, gt=True)
        pipe.execute()
    except redis.RedisError:
        log.warning("redis down: %d cached entries not dropped (stale by the change log)",
                    len(keys))


def generation_key(prefix: str) -> str:
    """The highest generation this database's workers have committed or seen (a sorted set
    of one member, so that ZADD GT keeps the maximum)."""
    return f"{prefix}generation"


def forget_locally(app, subjects: Iterable[str] | None) -> None:
    """Drop this process's copies of what these subjects describe (coherence.py's
    on_change); None: everything."""
    copies = app.extensions.get("portal_local_copies")
    if copies is None:
        return
    if subjects is None:
        copies.clear()
        return
    subjects = list(subjects)
    if "users" in subjects:
        copies.drop_matching(":user:")
    prefix = app.extensions["portal_coherence"].prefix
    if prefix is not None:
        copies.drop(subject_keys(subjects, prefix))


# ---------------------------------------------------------------------------
# Signed-in users: what the user loader needs, so that a download costs no SQL
# ---------------------------------------------------------------------------

#: How long Redis keeps an entry; staleness is bounded by coherence.py, not by this.
USER_TTL = 300


def _user_key(user_id: int, prefix: str | None = None) -> str:
    return f"{prefix or namespace()}user:{int(user_id)}:auth"


_PREFETCH = "portal_prefetched"
_NOT_FETCHED = object()
_DOWN = object()  # the prefetch found Redis down


def prefetch_download(user_id: int | None, file_id: int, *,
                      version_key: str | None = None) -> None:
    """Read what a download needs from Redis in one round trip, or in none when this worker
    holds coherent copies of those keys (LocalCopies): the file's metadata, the signed-in
    user's snapshot, and for an older version or a signed link the version's snapshot.
    file_meta, user_snapshot and version_snapshot then use the answers (a download otherwise
    costs a round trip for each). Nothing is read while the cache cannot be trusted."""
    if not current_app.config.get("CACHE_METADATA", True):
        return
    if not coherence(current_app).current():
        return
    keys = [meta_key(file_id)]
    if user_id is not None:
        keys += user_keys(user_id)
    if version_key is not None:
        keys.append(version_key)
    replies = read_keys(local_copies(), client(), keys)
    if replies is None:
        # Down: the lookups of this request go straight to the database instead of each
        # waiting for its own failure.
        g.setdefault(_PREFETCH, {})["down"] = True
        return
    replies = list(replies)
    found = {("meta", int(file_id)): replies.pop(0)}
    if user_id is not None:
        found[("user", int(user_id))] = replies.pop(0)
    if version_key is not None:
        found[("version", version_key)] = replies.pop(0)
    g.setdefault(_PREFETCH, {}).update(found)


def read_keys(copies: LocalCopies | None, r: redis.Redis, keys: list[str]) -> list | None:
    """The values of these keys from this worker's copies, else from Redis in one round trip
    (counted as a metadata hit, and kept as copies unless an invalidation raced the read);
    None when Redis is down. The download view (prefetch_download) and the fast path
    (download/fast.py) read through here."""
    replies = copies.get_many(keys) if copies is not None else None
    if replies is not None:
        return replies
    epoch = copies.epoch if copies is not None else 0
    try:
        pipe = r.pipeline(transaction=False)
        pipe.mget(keys)
        pipe.hincrby(STATS_KEY, "meta_hits", 1)
        replies = pipe.execute()[0]
    except redis.RedisError:
        return None
    if copies is not None:
        copies.put_many(keys, replies, epoch)
    return replies


def _prefetched(kind: str, key: int | str):
    """A reply prefetch_download stored for this request (each is used once), _DOWN when it
    found Redis down, else _NOT_FETCHED."""
    if not has_app_context():
        return _NOT_FETCHED
    fetched = g.get(_PREFETCH, {})
    if fetched.get("down"):
        return _DOWN
    return fetched.pop((kind, key if isinstance(key, str) else int(key)), _NOT_FETCHED)


def _prefetched_or(kind: str, key: int | str, fetch: Callable[[], object]):
    """The reply prefetch_download stored for this request, else ``fetch()`` from Redis
    now; _DOWN when Redis cannot answer."""
    raw = _prefetched(kind, key)
    if raw is _NOT_FETCHED:
        try:
            raw = fetch()
        except redis.RedisError:
            return _DOWN
    return raw


def user_snapshot(user_id: int, load: Callable[[], dict | None]) -> dict | None:
    """What the user loader needs of a user (plain values, no password hash), from this
    worker's copies or Redis when its stamp is still valid (coherence.py), else from
    ``load()`` (the database), stored for next time; None when there is no such user.

    While the database cannot confirm the cache, ``load()`` answers (and raises when the
    database is down: fail closed)."""
    co = coherence(current_app)
    if not current_app.config.get("CACHE_USERS", True) or not co.current():
        return load()
    raw = _prefetched_or("user", user_id, lambda: client().get(_user_key(user_id)))
    if raw is _DOWN:
        return load()
    data = user_from_reply(raw, co)
    if data is not None:
        return data
    stamp = co.stamp()
    data = load()
    if data is not None:
        with contextlib.suppress(redis.RedisError):
            client().set(_user_key(user_id), json.dumps({**data, "gen": stamp}), ex=USER_TTL)
    return data


def user_keys(user_id: int, prefix: str | None = None) -> list[str]:
    """The keys whose values user_from_reply reads (one)."""
    return [_user_key(user_id, prefix)]


def decode_user(raw: bytes | None) -> tuple[dict, object] | None:
    """(snapshot, stamp) of a user entry; None when it is absent or of an older layout."""
    if raw is None:
        return None
    try:
        data = json.loads(raw)
        return data, data.pop("gen")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None


def user_from_reply(raw: bytes | None, co: Coherence) -> dict | None:
    """The user snapshot in Redis' reply: None when it is absent, of an older layout, or
    stale by the database's change log (co.valid). The caller has checked co.current()."""
    entry = decode_user(raw)
    if entry is None:
        return None
    try:
        valid = co.valid(f"user:{int(entry[0]['id'])}", entry[1])
    except (KeyError, TypeError, ValueError):
        return None
    return entry[0] if valid else None


# ---------------------------------------------------------------------------
# Worker-local copies of the download path's keys, kept coherent by Redis pub/sub
# ---------------------------------------------------------------------------

#: Published by every invalidation above: the names of the keys that changed, space-separated.
INVALIDATE_CHANNEL = "portal:invalidate"
#: Keys whose absence is not worth remembering: a miss there is filled from the database
#: by a plain SET (no invalidation is published), so a remembered "absent" would hide it.
_FILLED_ON_MISS = (":meta", ":auth", ":snap")


def _invalidation_channel() -> str:
    # Pub/sub ignores SELECT: portals sharing a server on different databases get their own.
    return f"{INVALIDATE_CHANNEL}:{client().get_connection_kwargs().get('db', 0)}"

class LocalCopies:
    """This process's copies of the metadata and user keys a download reads.

    Why not redis-py's client-side caching (RESP3 tracking): it caches single commands only,
    not the pipelined MGET this path sends, and a hit still takes a pooled connection and a
    poll(2) and deep-copies the reply; a hit here is a dict lookup, so a warm download costs
    no round trip at all.

    Coherence: every committed change (_forget_in_redis) publishes the changed keys on
    ``INVALIDATE_CHANNEL`` after deleting them in Redis, and drops this process's copies at
    once. A listener thread (a greenlet under gevent) subscribes and drops the copies other
    processes and nodes invalidate. Copies are kept only while that subscription is up: it
    clears everything when it (re)subscribes and when it loses Redis. A read that raced an
    invalidation is not kept: ``epoch`` counts invalidations, and ``put_many`` stores only
    when none arrived since the read began. All of that is speed only: every copy is judged
    by its stamp against the database's change log when it is used (coherence.py), so a lost
    message or a frozen Redis cannot make one outlive a revocation.
    ``CACHE_LOCAL_SECONDS`` bounds the age of a copy all the same.
    """

    def __init__(self, app, seconds: float) -> None:
        self.app = app
        self.seconds = seconds
        self.epoch = 0
        self.ready = False
        self.hits = 0  # not yet added to the cluster-wide meta_local_hits counter
        self._values: dict[str, tuple[float, bytes | None]] = {}
        self._pid: int | None = None
        self._stopping = False
        # epoch check and store as one step against the listener (thread workers)
        self._lock = threading.Lock()

    def get_many(self, keys: list[str]) -> list | None:
        """The copies of all these keys, or None unless every one is held and fresh."""
        self._ensure_listener()
        if not self.ready:
            return None
        now = time.monotonic()
        out = []
        for key in keys:
            held = self._values.get(key)
            if held is None or now - held[0] > self.seconds:
                return None
            out.append(held[1])
        self.hits += 1
        return out

    def put_many(self, keys: list[str], values: list, epoch: int) -> None:
        """Keep what Redis answered, unless an invalidation arrived since the read began."""
        now = time.monotonic()
        with self._lock:
            if not self.ready or epoch != self.epoch:
                return
            for key, value in zip(keys, values, strict=True):
                if value is None and key.endswith(_FILLED_ON_MISS):
                    continue
                self._values[key] = (now, value)

    def drop(self, keys: Iterable[str]) -> None:
        with self._lock:
            self.epoch += 1
            for key in keys:
                self._values.pop(key, None)

    def drop_matching(self, fragment: str) -> None:
        """Drop every copy whose key contains ``fragment``."""
        with self._lock:
            self.epoch += 1
            for key in [k for k in self._values if fragment in k]:
                del self._values[key]

    def clear(self) -> None:
        with self._lock:
            self.epoch += 1
            self._values.clear()

    def stop(self) -> None:
        """Stop the listener (tests; a worker's listener dies with it)."""
        self._stopping = True
        self.ready = False
        self.clear()

    def _ensure_listener(self) -> None:
        if self._pid == os.getpid() or self._stopping:
            return
        # First use in this process (a forked worker inherits neither thread nor connection).
        self._pid, self.ready = os.getpid(), False
        self._values.clear()
        threading.Thread(target=self._listen, name="cache-invalidation", daemon=True).start()

    def _listen(self) -> None:
        r = self.app.extensions["portal_redis"]
        with self.app.app_context():
            channel = _invalidation_channel()
        while not self._stopping:
            pubsub = r.pubsub()
            try:
                pubsub.subscribe(channel)
                while not self._stopping:
                    message = pubsub.get_message(timeout=1.0)
                    if message is None:
                        self._report_hits(r)
                    elif message["type"] == "subscribe":
                        self.clear()
                        self.ready = True
                    elif message["type"] == "message":
                        self.drop(message["data"].decode().split())
            except (redis.RedisError, OSError, ValueError):
                log.warning("redis unavailable: worker-local metadata copies off until it is back")
            finally:
                self.ready = False
                self.clear()
                with contextlib.suppress(redis.RedisError, OSError):
                    pubsub.close()
            time.sleep(1.0)

    def _report_hits(self, r: redis.Redis) -> None:
        hits, self.hits = self.hits, 0
        if hits:
            try:
                r.hincrby(STATS_KEY, "meta_local_hits", hits)
            except redis.RedisError:
                self.hits += hits


def local_copies() -> LocalCopies | None:
    """The current app's LocalCopies, None when switched off (CACHE_LOCAL_SECONDS = 0)."""
    return current_app.extensions.get("portal_local_copies")


def _drop_local_copies(keys: list[str]) -> None:
    copies = local_copies()
    if copies is not None:
        copies.drop(keys)


# ---------------------------------------------------------------------------
# Hot-file cache: popular versions of a remote origin, in fixed-size chunks
# ---------------------------------------------------------------------------

#: Chunk size: a Range request reads only the chunks it overlaps.
HOT_CHUNK = 256 * 1024
#: Chunks fetched per round trip when streaming from the cache.
HOT_BATCH = 4
#: Safety net only; the byte budget evicts long before.
HOT_TTL = 7 * 24 * 3600
#: A fill that takes longer than this lets another request try again.
FILL_LOCK_MS = 60_000
#: Popularity: hits counted in hourly buckets; "recent" is this hour and the last one.
POP_BUCKET_SECONDS = 3600
HOT_LRU_KEY = "portal:hot:lru"  # sorted set: sha256 -> last use (unix time)
HOT_SIZES_KEY = "portal:hot:sizes"  # hash: sha256 -> bytes, the budget's ledger


def _pop_key(bucket: int) -> str:
    return f"portal:hot:pop:{bucket}"


def _ready_key(sha: str) -> str:
    return f"portal:hot:{sha}:ready"


def _chunk_key(sha: str, index: int) -> str:
    return f"portal:hot:{sha}:c:{index}"


def _lock_key(sha: str) -> str:
    return f"portal:hot:{sha}:fill"


# One round trip per download: count the hit in this hour's bucket, read last hour's,
# see whether the version is cached, touch its LRU time, and count hit or miss.
_LOOKUP = """
local hits = tonumber(redis.call('ZINCRBY', KEYS[1], 1, ARGV[1]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
local prev = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[1]) or '0')
local ready = redis.call('EXISTS', KEYS[3])
if ready == 1 then
  redis.call('ZADD', KEYS[4], 'XX', ARGV[2], ARGV[1])
  redis.call('HINCRBY', KEYS[5], 'hits', 1)
  redis.call('HINCRBY', KEYS[5], 'hit_bytes', ARGV[4])
else
  redis.call('HINCRBY', KEYS[5], 'misses', 1)
  redis.call('HINCRBY', KEYS[5], 'miss_bytes', ARGV[4])
end
return {ready, hits + prev}
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class HotState:
    """What one lookup found: cached now, and the recent hits including this one."""

    cached: bool
    hits: int


def hot_lookup(sha: str, planned_bytes: int) -> HotState | None:
    """Count a request for this content and say whether it is cached; None if Redis is down."""
    now = time.time()
    bucket = int(now // POP_BUCKET_SECONDS)
    try:
        ready, hits = client().eval(
            _LOOKUP, 5, _pop_key(bucket), _pop_key(bucket - 1), _ready_key(sha),
            HOT_LRU_KEY, STATS_KEY, sha, now, 2 * POP_BUCKET_SECONDS, planned_bytes)
    except redis.RedisError:
        return None
    return HotState(cached=bool(ready), hits=int(hits))


def hot_fill(sha: str, size: int, origin: Callable[[int, int], Iterable[bytes]],
             budget: int) -> bool:
    """Copy the content into the cache unless another request is already doing so.

    Single flight: the request that wins ``SET NX PX`` reads the origin once, verifies the
    SHA-256, writes the chunks, then marks the version ready; requests arriving meanwhile
    find the lock taken and serve from the origin. True when the content is now cached.
    """
    r = client()
    token = uuid.uuid4().hex
    try:
        if not r.set(_lock_key(sha), token, nx=True, px=FILL_LOCK_MS):
            return False
    except redis.RedisError:
        return False
    written = 0
    try:
        digest = hashlib.sha256()
        pending = bytearray()
        pipe = r.pipeline(transaction=False)
        for chunk in origin(0, size):
            digest.update(chunk)
            pending += chunk
            while len(pending) >= HOT_CHUNK:
                pipe.set(_chunk_key(sha, written), bytes(pending[:HOT_CHUNK]), ex=HOT_TTL)
                del pending[:HOT_CHUNK]
                written += 1
                if len(pipe) >= HOT_BATCH:
                    pipe.execute()
        if pending:
            pipe.set(_chunk_key(sha, written), bytes(pending), ex=HOT_TTL)
            written += 1
        pipe.execute()
        if digest.hexdigest() != sha:
            log.error("origin returned wrong content for %s: not cached", sha)
            _drop_chunks(r, sha, written)
            return False
        pipe = r.pipeline(transaction=False)
        pipe.hset(HOT_SIZES_KEY, sha, size)
        pipe.zadd(HOT_LRU_KEY, {sha: time.time()})
        pipe.set(_ready_key(sha), size, ex=HOT_TTL)
        pipe.hincrby(STATS_KEY, "fills", 1)
        pipe.execute()
        _evict(r, budget)
        return True
    except redis.RedisError as exc:
        log.warning("redis: could not cache %s: %s", sha, exc)
        return False
    except Exception as exc:  # the origin failed (StorageError): the caller will see it too
        log.warning("origin read failed while caching %s: %s", sha, exc)
        return False
    finally:
        with contextlib.suppress(redis.RedisError):  # else the lock expires by itself
            r.eval(_UNLOCK, 1, _lock_key(sha), token)


def _drop_chunks(r: redis.Redis, sha: str, count: int) -> None:
    keys = [_ready_key(sha)] + [_chunk_key(sha, i) for i in range(count)]
    for start in range(0, len(keys), 512):
        r.delete(*keys[start:start + 512])


def _evict(r: redis.Redis, budget: int) -> int:
    """Drop least recently used versions until the cached bytes fit the budget."""
    sizes = {k.decode(): int(v) for k, v in r.hgetall(HOT_SIZES_KEY).items()}
    total = sum(sizes.values())
    evicted = 0
    while total > budget:
        popped = r.zpopmin(HOT_LRU_KEY, 1)
        if not popped:
            break
        victim = popped[0][0].decode()
        size = sizes.pop(victim, 0)
        r.delete(_ready_key(victim))  # first, so no new reader picks it
        _drop_chunks(r, victim, -(-size // HOT_CHUNK))
        r.hdel(HOT_SIZES_KEY, victim)
        total -= size
        evicted += 1
    if evicted:
        r.hincrby(STATS_KEY, "evictions", evicted)
    return evicted


def forget_content(sha: str) -> None:
    """Drop a version's cached bytes (its content was deleted from storage)."""
    try:
        r = client()
        size = r.hget(HOT_SIZES_KEY, sha)
        r.delete(_ready_key(sha))
        _drop_chunks(r, sha, -(-int(size or 0) // HOT_CHUNK))
        r.hdel(HOT_SIZES_KEY, sha)
        r.zrem(HOT_LRU_KEY, sha)
    except redis.RedisError:
        log.warning("redis down: cached bytes of %s not dropped (they expire)", sha)


def hot_read(r: redis.Redis, sha: str, start: int, stop: int,
             origin: Callable[[int, int], Iterable[bytes]]) -> Iterator[bytes]:
    """The bytes [start, stop) from the cached chunks, fetched a few per round trip; if a
    chunk has gone (evicted, FLUSHALL, Redis down) the rest comes from the origin.

    A generator that runs after the view returned: it gets the client, not the app.
    """
    index, last = start // HOT_CHUNK, (stop - 1) // HOT_CHUNK
    while index <= last:
        batch = list(range(index, min(last, index + HOT_BATCH - 1) + 1))
        try:
            blobs = r.mget([_chunk_key(sha, i) for i in batch])
        except redis.RedisError:
            blobs = [None]
        for i, blob in zip(batch, blobs, strict=False):
            lo = max(start, i * HOT_CHUNK)
            hi = min(stop, (i + 1) * HOT_CHUNK)
            if blob is None or len(blob) < hi - i * HOT_CHUNK:
                with contextlib.suppress(redis.RedisError):
                    r.hincrby(STATS_KEY, "fallbacks", 1)
                yield from origin(lo, stop)
                return
            yield blob[lo - i * HOT_CHUNK:hi - i * HOT_CHUNK]
        index = batch[-1] + 1


class RangeReader:
    """``reader(start, stop)`` -> chunks of a version; ``cached`` says where they come from."""

    def __init__(self, read: Callable[[int, int], Iterable[bytes]], cached: bool) -> None:
        self.read = read
        self.cached = cached

    def __call__(self, start: int, stop: int) -> Iterable[bytes]:
        return self.read(start, stop)


def range_reader(storage, version, *, local: bool, planned_bytes: int) -> RangeReader:
    """Where the bytes of a version come from for this request.

    A remote origin (no local path): counted per request; a version that is cached is read
    from this worker's memory (HotMemory) or from Redis; one that qualifies (size <=
    CACHE_HOT_MAX_FILE_BYTES and at least CACHE_HOT_MIN_HITS requests this hour and the
    last) is filled first by the one request that wins the lock. A local origin keeps
    zero-copy sendfile, which the cache cannot beat, unless CACHE_HOT_LOCAL is set. With
    Redis down everything comes from the origin (or from memory).
    """
    key = version.storage_key

    def origin(start: int, stop: int) -> Iterable[bytes]:
        return storage.read_range(key, start, stop)

    config = current_app.config
    if not config.get("CACHE_HOT_ENABLED", True) or (local and not config.get("CACHE_HOT_LOCAL")):
        return RangeReader(origin, cached=False)
    sha, size = version.sha256, version.size
    memory = hot_memory()
    if memory is not None:
        content = memory.get(sha)
        if content is not None:  # popularity, recency and counters reach Redis in batches
            memory.note_hit(sha, planned_bytes)
            return RangeReader(lambda start, stop: (content[start:stop],), cached=True)
    state = hot_lookup(sha, planned_bytes)
    if state is None or size == 0:
        return RangeReader(origin, cached=False)
    if (not state.cached and size <= config.get("CACHE_HOT_MAX_FILE_BYTES", 32 << 20)
            and state.hits >= config.get("CACHE_HOT_MIN_HITS", 2)):
        state.cached = hot_fill(sha, size, origin, config.get("CACHE_HOT_BUDGET_BYTES", 512 << 20))
    if not state.cached:
        return RangeReader(origin, cached=False)
    r = client()
    if memory is not None and size <= memory.max_file:
        content = hot_whole(r, sha, size)
        if content is not None:
            memory.put(sha, content)
            return RangeReader(lambda start, stop: (content[start:stop],), cached=True)
    return RangeReader(lambda start, stop: hot_read(r, sha, start, stop, origin), cached=True)


def hot_whole(r: redis.Redis, sha: str, size: int) -> bytes | None:
    """All the cached chunks of a content in one round trip, checked against its SHA-256;
    None when one is missing or Redis is down."""
    try:
        blobs = r.mget([_chunk_key(sha, i) for i in range(-(-size // HOT_CHUNK))])
    except redis.RedisError:
        return None
    if any(blob is None for blob in blobs):
        return None
    content = b"".join(blobs)
    if len(content) != size or hashlib.sha256(content).hexdigest() != sha:
        return None
    return content


class HotMemory:
    """This worker's copies of the hottest small contents: a tier in front of Redis.

    Served from Redis, a hot 64 KiB file still costs two round trips (the popularity
    lookup, the chunk read) and the bytes cross the network twice. A content is immutable
    (keyed by its SHA-256), so a copy in the worker's memory can never be stale and needs no
    invalidation; access is decided before the bytes are looked up. Filled from the Redis
    chunks (verified by hash) once Redis holds the content, bounded by a byte budget with
    LRU eviction. A hit sends nothing to Redis on the request's path: its popularity,
    recency and counters are added up here and sent in one pipeline at most every
    ``REPORT_SECONDS``, so admission, eviction and /metrics still see every request.
    """

    REPORT_SECONDS = 1.0

    def __init__(self, app, budget: int, max_file: int) -> None:
        self.app = app
        self.budget = budget
        self.max_file = max_file
        self._items: OrderedDict[str, bytes] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()
        self._hits: dict[str, int] = {}
        self._hit_bytes = 0
        self._reported = time.monotonic()

    def get(self, sha: str) -> bytes | None:
        with self._lock:
            content = self._items.get(sha)
            if content is not None:
                self._items.move_to_end(sha)
            return content

    def put(self, sha: str, content: bytes) -> None:
        if len(content) > min(self.max_file, self.budget):
            return
        with self._lock:
            if sha in self._items:
                return
            self._items[sha] = content
            self._bytes += len(content)
            while self._bytes > self.budget:
                _, dropped = self._items.popitem(last=False)
                self._bytes -= len(dropped)

    def held_bytes(self) -> int:
        return self._bytes

    def note_hit(self, sha: str, planned_bytes: int) -> None:
        """Count a request answered from memory; report the counts when it is time."""
        with self._lock:
            self._hits[sha] = self._hits.get(sha, 0) + 1
            self._hit_bytes += planned_bytes
            due = time.monotonic() - self._reported >= self.REPORT_SECONDS
        if due:
            self.report()

    def report(self) -> None:
        """Send the counted hits to Redis: popularity, LRU time, hit counters."""
        with self._lock:
            hits, self._hits = self._hits, {}
            hit_bytes, self._hit_bytes = self._hit_bytes, 0
            self._reported = time.monotonic()
        if not hits:
            return
        now = time.time()
        bucket = _pop_key(int(now // POP_BUCKET_SECONDS))
        try:
            pipe = self.app.extensions["portal_redis"].pipeline(transaction=False)
            for sha, count in hits.items():
                pipe.zincrby(bucket, count, sha)
            pipe.expire(bucket, 2 * POP_BUCKET_SECONDS)
            pipe.zadd(HOT_LRU_KEY, dict.fromkeys(hits, now), xx=True)
            total = sum(hits.values())
            pipe.hincrby(STATS_KEY, "hits", total)
            pipe.hincrby(STATS_KEY, "memory_hits", total)
            pipe.hincrby(STATS_KEY, "hit_bytes", hit_bytes)
            pipe.execute()
        except redis.RedisError:
            pass  # statistics only: a lost batch makes a file look a little less popular


def hot_memory() -> HotMemory | None:
    """The current app's HotMemory; None when switched off (CACHE_HOT_MEMORY_BYTES = 0)."""
    return current_app.extensions.get("portal_hot_memory")
