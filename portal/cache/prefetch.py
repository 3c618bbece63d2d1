"""One round trip (or none) for everything a download reads from the cache, kept for the
rest of the request in ``flask.g``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis
import redis.client
from flask import current_app, g, has_app_context

from ..coherence import coherence
from ..config import settings
from .connection import STATS_KEY, client
from .keys import meta_key, user_keys
from .local import LocalCopies, local_copies

log = logging.getLogger(__name__)


PREFETCH = "portal_prefetched"


NOT_FETCHED = object()


DOWN = object()  # the prefetch found Redis down


def prefetch_download(user_id: int | None, file_id: int, *,
                      version_key: str | None = None) -> None:
    """Read what a download needs from Redis in one round trip, or in none when this worker
    holds coherent copies of those keys (LocalCopies): the file's metadata, the signed-in
    user's snapshot, and for an older version or a signed link the version's snapshot.
    file_meta, user_snapshot and version_snapshot then use the answers (a download otherwise
    costs a round trip for each). Nothing is read while the cache cannot be trusted."""
    if not settings().cache_metadata:
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
        g.setdefault(PREFETCH, {})["down"] = True
        return
    replies = list(replies)
    found = {("meta", int(file_id)): replies.pop(0)}
    if user_id is not None:
        found[("user", int(user_id))] = replies.pop(0)
    if version_key is not None:
        found[("version", version_key)] = replies.pop(0)
    g.setdefault(PREFETCH, {}).update(found)


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


def prefetched(kind: str, key: int | str):
    """A reply prefetch_download stored for this request (each is used once), DOWN when it
    found Redis down, else NOT_FETCHED."""
    if not has_app_context():
        return NOT_FETCHED
    fetched = g.get(PREFETCH, {})
    if fetched.get("down"):
        return DOWN
    return fetched.pop((kind, key if isinstance(key, str) else int(key)), NOT_FETCHED)


def prefetched_or(kind: str, key: int | str, fetch: Callable[[], object]):
    """The reply prefetch_download stored for this request, else ``fetch()`` from Redis
    now; DOWN when Redis cannot answer."""
    raw = prefetched(kind, key)
    if raw is NOT_FETCHED:
        try:
            raw = fetch()
        except redis.RedisError:
            return DOWN
    return raw
