"""Signed-in users: what the user loader needs, so that a download costs no SQL.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable

import redis
import redis.client
from flask import current_app

from ..coherence import Coherence, coherence
from ..config import settings
from .connection import client
from .keys import user_key
from .prefetch import DOWN, Prefetched, prefetched_or

log = logging.getLogger(__name__)


#: How long Redis keeps an entry; staleness is bounded by coherence.py, not by this.
USER_TTL = 300


def user_snapshot(user_id: int, load: Callable[[], dict | None],
                  prefetched: Prefetched | None = None) -> dict | None:
    """What the user loader needs of a user (plain values, no password hash), from this
    worker's copies or Redis when its stamp is still valid (coherence.py), else from
    ``load()`` (the database), stored for next time; None when there is no such user.

    While the database cannot confirm the cache, ``load()`` answers (and raises when the
    database is down: fail closed)."""
    co = coherence(current_app)
    if not settings().cache_users or not co.current():
        return load()
    raw = prefetched_or(prefetched, "user", user_id,
                      lambda: client().get(user_key(user_id)))
    if raw is DOWN:
        return load()
    data = user_from_reply(raw, co)
    if data is not None:
        return data
    stamp = co.stamp()
    data = load()
    if data is not None:
        with contextlib.suppress(redis.RedisError):
            client().set(user_key(user_id), json.dumps({**data, "gen": stamp}), ex=USER_TTL)
    return data


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
