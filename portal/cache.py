"""Every Redis key, TTL and invalidation of the portal lives here.

Redis is an optimisation: every function here degrades to "no cache" when Redis is down,
so the portal is slower then, never wrong and never failing.
"""

from __future__ import annotations

import logging

import redis
from flask import current_app

log = logging.getLogger(__name__)

# Short timeouts: a dead Redis must cost a request milliseconds, not seconds.
CONNECT_TIMEOUT = 0.25
SOCKET_TIMEOUT = 0.5


def make_client(url: str) -> redis.Redis:
    """A client that connects lazily; nothing is sent until first use."""
    return redis.Redis.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT,
        health_check_interval=30,
    )


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


def _revoked_key(nonce: str) -> str:
    return f"portal:link:revoked:{nonce}"


def revoke_link(nonce: str, ttl: int) -> None:
    """Deny a signed link until it would have expired anyway (raises RedisError when down)."""
    client().set(_revoked_key(nonce), 1, ex=max(1, ttl))


def link_revoked(nonce: str) -> bool:
    """True when the link is on the deny-list; False when Redis cannot tell (it is down)."""
    try:
        return bool(client().exists(_revoked_key(nonce)))
    except redis.RedisError:
        log.warning("redis down: signed-link deny-list not checked")
        return False
