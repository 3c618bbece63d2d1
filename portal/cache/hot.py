"""The hot-file cache: popular versions of a remote origin, in fixed-size chunks in Redis,
and each worker's own copies of the hottest small ones.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import redis
import redis.client
from flask import current_app

from ..config import settings
from .connection import STATS_KEY, client

log = logging.getLogger(__name__)


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

    s = settings()
    if not s.cache_hot_enabled or (local and not s.cache_hot_local):
        return RangeReader(origin, cached=False)
    sha, size = version.sha256, version.size
    memory = hot_memory()
    if memory is not None:
        content = memory.get(sha)
        if content is not None:  # popularity, recency and counters reach Redis in batches
            memory.note_hit(sha, planned_bytes)
            return RangeReader(lambda start, stop: pieces(content, start, stop), cached=True)
    state = hot_lookup(sha, planned_bytes)
    if state is None or size == 0:
        return RangeReader(origin, cached=False)
    if (not state.cached and size <= s.cache_hot_max_file_bytes
            and state.hits >= s.cache_hot_min_hits):
        state.cached = hot_fill(sha, size, origin, s.cache_hot_budget_bytes)
    if not state.cached:
        return RangeReader(origin, cached=False)
    r = client()
    if memory is not None and size <= memory.max_file:
        content = hot_whole(r, sha, size)
        if content is not None:
            memory.put(sha, content)
            return RangeReader(lambda start, stop: pieces(content, start, stop), cached=True)
    return RangeReader(lambda start, stop: hot_read(r, sha, start, stop, origin), cached=True)


def pieces(content: bytes, start: int, stop: int) -> Iterator[bytes]:
    """The bytes [start, stop) of a content held in memory, HOT_CHUNK at a time: a body is
    counted chunk by chunk as the server writes it (download/body.CountedBody), so one
    whole-file chunk would make an aborted download count as nothing or everything."""
    for lo in range(start, stop, HOT_CHUNK):
        yield content[lo:min(stop, lo + HOT_CHUNK)]


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
