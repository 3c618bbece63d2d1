"""One round trip (or none) for everything a download reads from the cache, handed to the
lookups that use it (file_meta, user_snapshot, version_snapshot) by the download's reader.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import redis
import redis.client
from flask import current_app

from ..coherence import coherence
from ..config import settings
from .connection import STATS_KEY, client
from .keys import meta_key, user_keys
from .local import LocalCopies, local_copies

log = logging.getLogger(__name__)


NOT_FETCHED = object()


DOWN = object()  # the prefetch found Redis down


class Prefetched:
    """The replies of one prefetch, each handed out once (then the lookup asks Redis), or
    DOWN for every key when Redis could not answer it."""

    __slots__ = ("down", "replies")

    def __init__(self, replies: dict | None = None, down: bool = False) -> None:
        self.replies = replies or {}
        self.down = down

    def take(self, kind: str, key: int | str):
        """The reply for this key, DOWN, or NOT_FETCHED."""
        if self.down:
            return DOWN
        return self.replies.pop((kind, key if isinstance(key, str) else int(key)), NOT_FETCHED)


def prefetch_download(user_id: int | None, file_id: int, *,
                      version_key: str | None = None) -> Prefetched:
    """Read what a download needs from Redis in one round trip, or in none when this worker
    holds coherent copies of those keys (LocalCopies): the file's metadata, the user's
    snapshot, and for an older version or a signed link the version's snapshot. The lookups
    given the result use those answers (a download otherwise costs a round trip for each).
    Nothing is read while the cache cannot be trusted."""
    if not settings().cache_metadata or not coherence(current_app).current():
        return Prefetched()
    keys = [meta_key(file_id)]
    if user_id is not None:
        keys += user_keys(user_id)
    if version_key is not None:
        keys.append(version_key)
    replies = read_keys(local_copies(), client(), keys)
    if replies is None:
        # Down: the lookups of this request go straight to the database instead of each
        # waiting for its own failure.
        return Prefetched(down=True)
    replies = list(replies)
    found = {("meta", int(file_id)): replies.pop(0)}
    if user_id is not None:
        found[("user", int(user_id))] = replies.pop(0)
    if version_key is not None:
        found[("version", version_key)] = replies.pop(0)
    return Prefetched(found)


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


def prefetched_or(prefetched: Prefetched | None, kind: str, key: int | str,
                  fetch: Callable[[], object]):
    """The prefetched reply for this key, else ``fetch()`` from Redis now; DOWN when Redis
    cannot answer."""
    raw = NOT_FETCHED if prefetched is None else prefetched.take(kind, key)
    if raw is NOT_FETCHED:
        try:
            raw = fetch()
        except redis.RedisError:
            return DOWN
    return raw
