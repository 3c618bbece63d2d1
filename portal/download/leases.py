"""Download connections as leases in Redis, else counted by this worker: the mechanism
under limits.py's rule.

Connections are leases in Redis (a sorted set per person and one per node, scored by
expiry on Redis's own clock, so that nodes whose clocks disagree agree on them): the
worker that holds a lease renews it every third of DOWNLOAD_LEASE_SECONDS while the body
is sent, so a worker that dies (SIGKILL, OOM) stops renewing and its connections stop
counting after at most that long. With Redis down the count is this worker's own (looser
across workers, never a 500). A person's rate is paced by a token bucket per worker
(:class:`Bucket`), each worker's share of the person's connections. Leases handed to nginx
(x-accel) end when nginx's log says the response is over (:func:`release_handed`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import socket
import threading
import time
import uuid
import weakref

import redis

from ..cache.connection import Outage
from ..settings import Settings
from .people import Person, Refusal

log = logging.getLogger(__name__)

#: Counters of refused and throttled connections, shared by every worker and node.
STATS_KEY = "portal:download:limits"
STATS_FIELDS = {
    "refused_person": "Download connections refused (429): over the person's connection limit",
    "refused_node": "Download connections refused (503): past the node's admission budget",
    "throttled": "Download connections paced to their person's rate",
}

#: Every expiry in Redis is counted on Redis's clock (TIME inside the scripts), never on
#: a node's: nodes whose clocks disagree would otherwise expire each other's leases early
#: (a node running minutes ahead would remove every other node's live leases). Scripts
#: that write after TIME need effects replication: the default from Redis 5, the only
#: mode from Redis 7.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
"""

_ACQUIRE = _NOW + """
local expiry = now + tonumber(ARGV[1])
local limit, budget, ttl = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
-- The same member again is the next request on one nginx client connection: the response
-- before it is over, so its lease is this one's, not one more.
local again = redis.call('ZSCORE', KEYS[1], ARGV[2]) and 1 or 0
local again_node = redis.call('ZSCORE', KEYS[2], ARGV[2]) and 1 or 0
local held = redis.call('ZCARD', KEYS[1]) - again
local verdict = 0
if limit > 0 and held >= limit then verdict = 1
elseif budget > 0 and redis.call('ZCARD', KEYS[2]) - again_node >= budget then verdict = 2
end
if verdict > 0 then
  redis.call('ZREM', KEYS[1], ARGV[2])
  redis.call('ZREM', KEYS[2], ARGV[2])
  return {verdict, held}
end
redis.call('ZADD', KEYS[1], expiry, ARGV[2])
redis.call('EXPIRE', KEYS[1], ttl)
redis.call('ZADD', KEYS[2], expiry, ARGV[2])
redis.call('EXPIRE', KEYS[2], ttl)
return {0, held + 1}
"""

#: Renewal: the leases ARGV[2..] (each in the person's set KEYS[i - 1] and the node's set,
#: the last key) expire ARGV[1] seconds from Redis's now, if they are still held.
_RENEW = _NOW + """
local expiry = now + tonumber(ARGV[1])
local node = KEYS[#KEYS]
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[i - 1], 'XX', expiry, ARGV[i])
  redis.call('ZADD', node, 'XX', expiry, ARGV[i])
end
return 0
"""

#: Hand-over to nginx: the lease ARGV[1] expires ARGV[2] seconds from Redis's now, written
#: as millisecond text, which is returned: the same number in Redis and in the token,
#: compared exactly by _RELEASE_HANDED.
_HAND_OVER = _NOW + """
local expiry = string.format('%.3f', now + tonumber(ARGV[2]))
redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[1])
redis.call('ZADD', KEYS[2], 'XX', expiry, ARGV[1])
return expiry
"""

#: A node's live leases: the expired ones go first.
_NODE_ACTIVE = _NOW + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""

#: A lease handed to nginx ends when nginx's log says its response is over: removed from
#: each set only while it still has the expiry it was handed over with (the same nginx
#: connection's next response may have taken the member since).
_RELEASE_HANDED = """
for i = 1, #KEYS do
  local score = redis.call('ZSCORE', KEYS[i], ARGV[1])
  if score and tonumber(score) == tonumber(ARGV[2]) then redis.call('ZREM', KEYS[i], ARGV[1]) end
end
return 0
"""

def conn_key(person_key: str) -> str:
    """The sorted set of one person's leases (all nodes)."""
    return f"portal:download:conn:{person_key}"


def node_key(node: str) -> str:
    """The sorted set of one node's leases."""
    return f"portal:download:node:{node}"


class Lease:
    """One admitted download connection: released once when its body closes."""

    __slots__ = ("id", "local", "pacer", "person", "rate", "released", "slots")

    def __init__(self, slots: Slots, person: Person, lease_id: str, *,
                 local: bool = False) -> None:
        self.slots, self.person, self.id = slots, person, lease_id
        self.local = local  # counted by this worker alone (Redis was down)
        self.rate: int | None = None  # this connection's share, for nginx
        self.pacer: Bucket | None = None
        self.released = False

    def release(self) -> None:
        """This connection ended: it stops counting."""
        if not self.released:
            self.released = True
            self.slots._release(self)

    def hand_over(self, seconds: float) -> str:
        """nginx sends this connection's bytes: the lease stops being renewed here and
        expires in ``seconds`` at the latest. Returns the token for X-Portal-Lease: nginx
        logs it when the response is over, and the log's reader ends the lease then
        (:func:`release_handed`)."""
        return self.slots._hand_over(self, seconds)

    def on_close(self, callback):
        """``callback`` preceded by this lease's release (a body's on_close)."""
        def closed(sent: int) -> None:
            self.release()
            if callback is not None:
                callback(sent)
        return closed


class Bucket:
    """A token bucket shared by one person's connections in this worker: ``take(n)`` waits
    (time.sleep, a cooperative yield under gevent, never a busy loop) until n bytes may go.

    Its rate is the person's rate times this worker's share of their open connections (the
    count Redis gave at the last acquire or renewal), so several workers' buckets add up to
    the person's rate."""

    def __init__(self, rate: float) -> None:
        self.rate = float(rate)
        self.tokens = self.burst  # full: a small file goes at once
        self.stamp = time.monotonic()
        self.lock = threading.Lock()

    @property
    def burst(self) -> float:
        """Bytes that may go at once: a tenth of a second's worth (at least 16 KiB)."""
        return max(16384.0, self.rate / 10)

    def chunk(self) -> int:
        """How many bytes a sender should ask for at a time."""
        return int(self.burst)

    def take(self, n: int) -> None:
        """Wait until n bytes are allowed (tokens may go negative: later takes wait)."""
        with self.lock:
            now = time.monotonic()
            self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
            self.stamp = now
            self.tokens -= n
            wait = -self.tokens / self.rate if self.tokens < 0 else 0.0
        if wait > 0:
            time.sleep(wait)


class Slots:
    """This worker's view of download connections: leases in Redis (renewed by a
    background thread, a greenlet under gevent) or, with Redis down, counted here."""

    def __init__(self, app, client: redis.Redis, node: str | None = None) -> None:
        self.app = app
        self.redis = client
        self.node = node or socket.gethostname()
        self.worker = f"{self.node}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.leases: dict[str, Lease] = {}
        self.local: dict[str, int] = {}  # person key -> this worker's connections
        self.local_node = 0
        # handed to nginx while Redis was down: lease id -> (person key, expiry)
        self.handed: dict[str, tuple[str, float]] = {}
        self.counts: dict[str, int] = {}  # person key -> all their connections (last seen)
        self.buckets: dict[str, Bucket] = {}
        self.lock = threading.Lock()
        self.outage = Outage(log, "download connection limits (counted per worker)")
        self._script = client.register_script(_ACQUIRE)
        self._renew_script = client.register_script(_RENEW)
        self._hand_over_script = client.register_script(_HAND_OVER)
        self._node_active_script = client.register_script(_NODE_ACTIVE)
        self._renewer: threading.Thread | None = None
        self._pid = os.getpid()

    def _key(self, person_key: str) -> str:
        return conn_key(person_key)

    def _node_key(self) -> str:
        return node_key(self.node)

    def acquire(self, person: Person, settings: Settings, *, large: bool,
                lease_id: str | None = None, tally: bool = True) -> Lease | Refusal:
        """A lease for one more connection of this person, or why not (counted in the
        refusal counters unless ``tally`` is False). ``lease_id``: the nginx client
        connection's (:func:`admit`); a lease of the same id is replaced."""
        limit = person.limit.connections or 0
        budget = settings.download_admission_connections if large else 0
        lease_id = lease_id or f"{self.worker}:{uuid.uuid4().hex[:12]}"
        seconds = settings.download_lease_seconds
        retry = settings.download_retry_after_seconds
        try:
            verdict, held = self._script(
                keys=[self._key(person.key), self._node_key()],
                args=[seconds, lease_id, limit, budget, seconds * 2])
            self.outage.recovered()
        except redis.RedisError as exc:
            self.outage.failed(exc)
            verdict, held = self._acquire_locally(person, limit, budget, lease_id)
        if verdict in (1, 2):
            refused = Refusal(429 if verdict == 1 else 503, retry)
            return self.tally(refused) if tally else refused
        lease = Lease(self, person, lease_id, local=verdict == 3)
        with self.lock:
            self.leases[lease_id] = lease
            self.local[person.key] = self.local.get(person.key, 0) + 1
            self.counts[person.key] = max(int(held), self.local[person.key])
            if verdict == 3:  # counted here only (Redis down)
                self.local_node += 1
        self._ensure_renewer()
        if person.limit.rate is not None:
            lease.rate = max(1, person.limit.rate // max(1, int(held)))
            lease.pacer = self._bucket(person)
            self.count("throttled")
        return lease

    def _acquire_locally(self, person: Person, limit: int, budget: int,
                         lease_id: str) -> tuple[int, int]:
        with self.lock:
            now = time.time()
            self.handed.pop(lease_id, None)  # that nginx connection's last response is over
            for gone in [k for k, (_, expiry) in self.handed.items() if expiry <= now]:
                del self.handed[gone]
            handed = [who for who, _ in self.handed.values()]
            held = self.local.get(person.key, 0) + handed.count(person.key)
            if limit and held >= limit:
                return 1, held
            if budget and self.local_node + len(handed) >= budget:
                return 2, held
            return 3, held + 1

    def tally(self, refused: Refusal) -> Refusal:
        """Count a refusal (in the counters the admin page shows) and return it."""
        self.count(refused.reason)
        return refused

    def _bucket(self, person: Person) -> Bucket:
        with self.lock:
            bucket = self.buckets.get(person.key)
            if bucket is None:
                bucket = self.buckets[person.key] = Bucket(person.limit.rate)
            self._share(person)
            return bucket

    def _share(self, person: Person) -> None:
        """Set the person's bucket to this worker's share of their rate (lock held)."""
        bucket = self.buckets.get(person.key)
        if bucket is not None and person.limit.rate is not None:
            total = max(self.counts.get(person.key, 1), self.local.get(person.key, 1), 1)
            bucket.rate = person.limit.rate * self.local.get(person.key, 1) / total

    def _hand_over(self, lease: Lease, seconds: float) -> str:
        self._forget(lease)
        lease.released = True
        if lease.local:
            # Counted here alone, on this worker's clock (Redis is down).
            expiry = f"{time.time() + seconds:.3f}"
            with self.lock:
                self.local_node = max(0, self.local_node - 1)
                self.handed[lease.id] = (lease.person.key, float(expiry))
        else:
            try:
                expiry = self._hand_over_script(
                    keys=[self._key(lease.person.key), self._node_key()],
                    args=[lease.id, seconds]).decode()
            except redis.RedisError:
                # The lease keeps its last expiry in Redis; a token that matches none
                # ends nothing, and the lease expires by itself.
                expiry = "0.000"
        return f"{expiry} {self.node} {lease.person.key} {lease.id}"

    def _forget(self, lease: Lease) -> None:
        key = lease.person.key
        with self.lock:
            self.leases.pop(lease.id, None)
            left = self.local.get(key, 1) - 1
            if left <= 0:
                self.local.pop(key, None)
                self.counts.pop(key, None)
                self.buckets.pop(key, None)
            else:
                self.local[key] = left
                self.counts[key] = max(left, self.counts.get(key, 1) - 1)
                self._share(lease.person)

    def _release(self, lease: Lease) -> None:
        key = lease.person.key
        self._forget(lease)
        if lease.local:
            with self.lock:
                self.local_node = max(0, self.local_node - 1)
        with contextlib.suppress(redis.RedisError):
            pipe = self.redis.pipeline(transaction=False)
            pipe.zrem(self._key(key), lease.id)
            pipe.zrem(self._node_key(), lease.id)
            pipe.execute()

    def count(self, field: str) -> None:
        """One more refused or throttled connection (lost while Redis is down)."""
        with contextlib.suppress(redis.RedisError):
            self.redis.hincrby(STATS_KEY, field, 1)

    # -- renewal ---------------------------------------------------------------------------

    def _ensure_renewer(self) -> None:
        if self._renewer is None or self._pid != os.getpid():
            self._pid = os.getpid()
            self._renewer = threading.Thread(target=self._renew_loop, name="download-leases",
                                             daemon=True)
            self._renewer.start()

    def _renew_loop(self) -> None:
        from ..config import settings

        renewed = time.monotonic()
        while True:
            seconds = settings(self.app).download_lease_seconds
            # Each second: the paced people's counts (their buckets' shares follow their
            # connections on other workers); every third of a lease: the leases too.
            time.sleep(min(1.0, seconds / 3))
            due = time.monotonic() - renewed >= seconds / 3
            try:
                self.renew(seconds if due else None)
            except Exception:  # never let the renewer die: leases would expire under it
                log.exception("renewing download leases failed")
            if due:
                renewed = time.monotonic()

    def renew(self, seconds: float | None) -> None:
        """Push the expiry of this worker's leases ``seconds`` on (None: only learn the
        counts), and learn each paced person's count of connections."""
        with self.lock:
            leases = list(self.leases.values())
        if not leases:
            return
        people = {lease.person.key: lease.person for lease in leases
                  if seconds is not None or lease.person.limit.rate is not None}
        if not people:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            if seconds is not None:
                self._renew_script(
                    keys=[*(self._key(lease.person.key) for lease in leases),
                          self._node_key()],
                    args=[seconds, *(lease.id for lease in leases)], client=pipe)
            for key in people:
                pipe.zcard(self._key(key))
            replies = pipe.execute()
        except redis.RedisError as exc:
            self.outage.failed(exc)
            return
        self.outage.recovered()
        with self.lock:
            for key, held in zip(people, replies[-len(people):], strict=True):
                self.counts[key] = max(int(held), self.local.get(key, 0))
                self._share(people[key])

    def node_active(self) -> int | None:
        """The node's download connections now (None: Redis down)."""
        try:
            return int(self._node_active_script(keys=[self._node_key()]))
        except redis.RedisError:
            return None

    def release_all(self) -> None:
        """This worker is exiting: the connections it still sends stop counting now, not
        when their leases expire (a restarted node would find its budget taken for that
        long). Leases handed to nginx stay: nginx goes on sending them."""
        with self.lock:
            leases = list(self.leases.values())
        for lease in leases:
            lease.release()


_LIVE: weakref.WeakSet[Slots] = weakref.WeakSet()  # this process's Slots (gone with the app)


def slots(app) -> Slots:
    """The app's Slots (made on first use in each worker process)."""
    held = app.extensions.get("portal_download_slots")
    if held is None or held._pid != os.getpid():
        held = app.extensions["portal_download_slots"] = Slots(
            app, app.extensions["portal_redis"])
        _LIVE.add(held)
    return held


def release_all() -> None:
    """End the leases of every connection this process still sends (gunicorn
    ``worker_exit``, atexit)."""
    for held in list(_LIVE):
        if held._pid == os.getpid():
            held.release_all()


atexit.register(release_all)


def stats(client: redis.Redis) -> dict[str, int] | None:
    """The refused and throttled counters (None: Redis down)."""
    try:
        raw = client.hgetall(STATS_KEY)
    except redis.RedisError:
        return None
    values = {name: 0 for name in STATS_FIELDS}
    values.update({k.decode(): int(v) for k, v in raw.items() if k.decode() in STATS_FIELDS})
    return values


def release_handed(client: redis.Redis, tokens: list[str]) -> int:
    """End the leases nginx's log says are over (tokens of X-Portal-Lease, from lines the
    nginx import reads): each only if the lease still has the expiry it was handed over
    with. Returns how many tokens were well-formed; raises RedisError."""
    script = client.register_script(_RELEASE_HANDED)
    pipe = client.pipeline(transaction=False)
    done = 0
    for token in tokens:
        parts = token.split(" ")
        if len(parts) != 4:
            continue
        expiry, node, person_key, lease_id = parts
        try:
            float(expiry)
        except ValueError:
            continue
        script(keys=[conn_key(person_key), node_key(node)], args=[lease_id, expiry], client=pipe)
        done += 1
    if done:
        pipe.execute()
    return done
