"""Download metadata: file id -> access rule, deletion, owner, current (newest published)
version and the pending versions' numbers; and the immutable version snapshots. Judged
against the database's change log on every use.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import datetime

import redis
import redis.client
from flask import current_app
from sqlalchemy.exc import SQLAlchemyError

from ..access import is_public
from ..coherence import Coherence, coherence
from ..config import settings
from .connection import STATS_KEY, client
from .keys import meta_key, namespace
from .prefetch import DOWN, Prefetched, prefetched_or

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FileSnapshot:
    """What can_read and the download headers need of a File (duck-typed for can_read)."""

    id: int
    access: str
    deleted_at: datetime | None
    owner_id: int | None
    draft: bool
    #: Numbers of versions not yet published (File.pending): only managers get them.
    pending: tuple[int, ...] = ()


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
    """Plain copies of an ORM File and (its current) FileVersion."""
    fs = FileSnapshot(id=file.id, access=file.access, deleted_at=file.deleted_at,
                      owner_id=file.owner_id, draft=bool(file.draft), pending=file.pending)
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
    return json.dumps({"file": _plain(snap[0]), "current": _plain(snap[1]), "gen": stamp})


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
        # Entries of the layout before pending versions lack both: read again from SQL.
        file["pending"] = tuple(file["pending"])
        return int(file["id"]), stamp, (FileSnapshot(**file), _version_from(data["current"]))
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


def file_meta(file_id: int, load: Callable[[], tuple | None],
              prefetched: Prefetched | None = None
              ) -> tuple[FileSnapshot, VersionSnapshot | None] | None:
    """The file's download metadata from this worker's copies or Redis when their stamp is
    still valid (coherence.py), else from ``load()`` (the database), stored for next time.
    None when the file does not exist (cached too, see MISSING).

    While the database cannot confirm the cache, the database itself is asked; when it
    cannot answer either, a cached public file is still served and anything else raises
    the database's error (the error handler answers 503: fail closed)."""
    co = coherence(current_app)
    if not settings().cache_metadata:
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

    raw = prefetched_or(prefetched, "meta", file_id, fetch)
    if raw is not DOWN:
        found = meta_from_reply(raw, co)
        if found is MISSING:
            return None
        if found is not None:
            remember_public(current_app, file_id, found)
            return found
    stamp = co.stamp()
    found = _load_or_public(file_id, load)
    if raw is DOWN:
        return found
    try:
        pipe = client().pipeline(transaction=False)
        # how long Redis keeps it; staleness is bounded by coherence.py, not by this
        pipe.set(key, _dump(file_id, found, stamp), ex=max(1, settings().cache_meta_ttl_seconds))
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
    if found is not None and is_public(found[0]):
        if len(seen) >= _PUBLIC_LIMIT:
            seen.clear()
        seen[int(file_id)] = found
    else:
        seen.pop(int(file_id), None)


def _last_public(file_id: int):
    """What this worker, else Redis, last knew of the file, if it was public then."""
    found = current_app.extensions.get("portal_public_meta", {}).get(int(file_id))
    if found is not None:
        return found
    prefix = namespace()
    if prefix is None:
        return None
    try:
        entry = decode_meta(client().get(meta_key(file_id, prefix)))
    except redis.RedisError:
        return None
    if entry is None or entry[2] is MISSING:
        return None
    file, version = entry[2]
    return (file, version) if is_public(file) else None


# A version never changes once stored (a new upload is a new version), so its snapshot needs
# no invalidation: whether it may be read is decided by the file's metadata above. Signed
# links name a version by id, ``?version=N`` by its number within the file.
VERSION_TTL = 24 * 3600


def decode_version(raw: bytes | None) -> VersionSnapshot | None:
    """The snapshot in a version entry, None when it is absent or unreadable (versions never
    change: an entry needs no stamp)."""
    if raw is None:
        return None
    try:
        return _version_from(json.loads(raw))
    except (ValueError, KeyError, TypeError):
        return None


def version_snapshot(key: str, load: Callable[[], VersionSnapshot | None],
                     prefetched: Prefetched | None = None) -> VersionSnapshot | None:
    """One version's snapshot from Redis (normally prefetched with the file's metadata), else
    from ``load()`` (the database), stored for next time. None when there is no such version
    (not cached)."""
    if not settings().cache_metadata or namespace() is None:
        return load()
    raw = prefetched_or(prefetched, "version", key, lambda: client().get(key))
    if raw is DOWN:
        return load()
    if raw is not None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            return _version_from(json.loads(raw))
    found = load()
    if found is not None:
        with contextlib.suppress(redis.RedisError):
            client().set(key, json.dumps(_plain(found)), ex=VERSION_TTL)
    return found
