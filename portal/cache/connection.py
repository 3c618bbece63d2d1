"""The Redis client of the portal: short timeouts, a circuit breaker, and the cache's
own counters (exposed on /metrics).
"""

from __future__ import annotations

import logging
import time

import redis
import redis.client
from flask import current_app

from .. import instruments

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
        instruments.breaker_opened(BREAKER_SECONDS)


class Outage:
    """Says in the log that Redis is down once per outage, and once when it is back, for one
    part of the portal (each retries every second or so: a line per retry was 36 a minute)."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self.logger = logger
        self.what = what
        self.down = False

    def failed(self, detail: object = "") -> None:
        """Redis failed this part: logged if it was up."""
        if not self.down:
            self.down = True
            self.logger.warning("redis unavailable: %s%s", self.what,
                                f" ({detail})" if detail else "")

    def recovered(self) -> None:
        """Redis answered this part again: logged if it was down."""
        if self.down:
            self.down = False
            self.logger.warning("redis is back: %s", self.what)


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


#: Connections one worker may open. Past them a command waits (up to SOCKET_TIMEOUT) for one
#: to come free: redis-py's default pool raised MaxConnectionsError at once (100), which the
#: breaker took for Redis down, and a burst of downloads at a peak (hundreds of greenlets
#: each in one command) switched the cache and the download limits off for a second.
MAX_CONNECTIONS = 256


def make_client(url: str) -> redis.Redis:
    """A client that connects lazily; nothing is sent until first use."""
    pool = redis.BlockingConnectionPool.from_url(
        url, socket_connect_timeout=CONNECT_TIMEOUT, socket_timeout=SOCKET_TIMEOUT,
        health_check_interval=30, max_connections=MAX_CONNECTIONS, timeout=SOCKET_TIMEOUT,
    )
    client = GuardedRedis(connection_pool=pool)
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
