"""Worker-local copies of the download path's keys, kept coherent by Redis pub/sub.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections.abc import Iterable

import redis
import redis.client
from flask import current_app

from .connection import STATS_KEY, Outage
from .keys import invalidation_channel

log = logging.getLogger(__name__)


#: Keys whose absence is not worth remembering: a miss there is filled from the database
#: by a plain SET (no invalidation is published), so a remembered "absent" would hide it.
_FILLED_ON_MISS = (":meta", ":auth", ":snap")


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
            channel = invalidation_channel()
        outage = Outage(log, "worker-local metadata copies off until it is back")
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
                        outage.recovered()
                    elif message["type"] == "message":
                        self.drop(message["data"].decode().split())
            except (redis.RedisError, OSError, ValueError) as exc:
                outage.failed(exc.__class__.__name__)
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
