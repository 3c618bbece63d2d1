"""Sign-in throttling: slow password guessing down without letting a stranger lock the owner out.

Three kinds of counters of failed sign-ins, each a moving window per limit of its setting
(Flask-Limiter syntax, e.g. ``5 per minute;20 per hour``: at most 5 in any 60 s, 20 in any
hour):

- per account name and client address (``LOGIN_LIMIT_ACCOUNT``): past it, that address is
  refused (429 with Retry-After) for that account until its oldest failure leaves the window;
- per client address over all accounts (``LOGIN_LIMIT_IP``): past it, that address is refused
  for every account;
- per account over all addresses (``LOGIN_LIMIT_ACCOUNT_CEILING``): past it, an attempt from
  an address that is not refused is *delayed*, never refused: the password is checked after
  ``ceiling_delay`` seconds (1 s at the ceiling, growing to 5 s at twice the ceiling). So
  guessing one password from many addresses gets slower, while the owner, signing in from
  an address that has not failed too often, still gets in.

An attempt counts as a failure from the moment it is let through (one atomic step that
refuses or counts), so parallel guesses cannot all slip past the check before the first one
fails; a successful sign-in takes its own entry back and clears its (account, address)
counter. A refused attempt counts nowhere: it checked no password.

The counters live in Redis (the app's client, with its short timeouts), so every worker and
node shares them: a sorted set of attempt times per counter, kept no longer than its window.
While Redis cannot be reached each process counts in its own memory instead (an attacker
then gets that many times the limits, one per worker), and a sign-in never fails because of
Redis. The keys are made by ``counter_key`` only.
"""

from __future__ import annotations

import logging
import math
import threading
import time
import uuid
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote

import redis
from flask import current_app
from limits import parse_many

from ..cache.connection import Outage

log = logging.getLogger(__name__)

#: Past the ceiling an attempt waits this long before its password is checked ...
CEILING_DELAY_SECONDS = 1.0
#: ... growing linearly to this at twice the ceiling, and no longer: the owner waits at most
#: this. The portal runs on gevent workers, where a waiting sign-in costs a greenlet only.
CEILING_MAX_DELAY_SECONDS = 5.0
#: After Redis failed, this process counts in memory for this long before trying Redis again,
#: so that a frozen Redis costs one socket timeout per period, not one per sign-in.
REDIS_RETRY_SECONDS = 2.0
#: The memory fallback keeps at most this many counters (the oldest go first), so names
#: made up by an attacker cannot fill a worker's memory.
MEMORY_MAX_COUNTERS = 100_000

#: What each kind of counter is keyed by, and whether past it an attempt is refused.
PAIR, ADDRESS, ACCOUNT = "pair", "ip", "account"


@dataclass(frozen=True)
class Attempt:
    """One sign-in attempt: the account name typed (normalised) and the client's address."""

    account: str
    address: str


@dataclass(frozen=True)
class Counter:
    """One counter of one attempt: its key and the limit (``amount`` in ``seconds``) it counts
    towards."""

    kind: str
    key: str
    amount: int
    seconds: int

    @property
    def refuses(self) -> bool:
        """Past this limit the attempt is refused; past the account ceiling it is delayed."""
        return self.kind != ACCOUNT

    @property
    def keeps(self) -> int:
        """Entries worth keeping: a refusing counter never passes its amount, and the ceiling's
        delay stops growing at twice its amount, so a flood cannot grow a counter further."""
        return self.amount if self.refuses else 2 * self.amount


@dataclass(frozen=True)
class Verdict:
    """What to do with an attempt: refuse it for ``retry_after`` seconds, or check the
    password after waiting ``delay`` seconds (0: at once). ``entry`` names the attempt in its
    counters, so that a success can take it back."""

    retry_after: int | None
    delay: float
    counters: tuple[Counter, ...]
    entry: str
    in_redis: bool


def normalise_account(name: str | None) -> str:
    """The account name as the counters key it: any name, existing or not, so that a
    throttled account looks like every other one."""
    return (name or "").strip().lower()[:64]


def counter_key(kind: str, subject: tuple[str, ...], amount: int, seconds: int) -> str:
    """The Redis key of one counter. Every part is percent-quoted, so no name or address
    (IPv6 has colons) can make two subjects share a key."""
    parts = ":".join(quote(part, safe="") for part in subject)
    return f"portal:login:{kind}:{parts}:{amount}/{seconds}"


@lru_cache(maxsize=32)
def windows(spec: str) -> tuple[tuple[int, int], ...]:
    """``(amount, seconds)`` of each limit in a Flask-Limiter string (ValueError if bad)."""
    items = parse_many(spec)
    if any(item.amount < 1 for item in items):
        raise ValueError(f"a limit must allow at least 1 attempt: {spec!r}")
    return tuple((item.amount, item.get_expiry()) for item in items)


def check_setting(spec: object) -> str | None:
    """Why a limit setting is unusable (for config.finalize), or None when it is fine."""
    if not isinstance(spec, str):
        return f"must be a string such as '5 per minute;20 per hour', not {spec!r}"
    try:
        windows(spec)
    except ValueError as exc:
        return str(exc)
    return None


def _counters(attempt: Attempt, config) -> tuple[Counter, ...]:
    subjects = ((PAIR, (attempt.account, attempt.address), config["LOGIN_LIMIT_ACCOUNT"]),
                (ADDRESS, (attempt.address,), config["LOGIN_LIMIT_IP"]),
                (ACCOUNT, (attempt.account,), config["LOGIN_LIMIT_ACCOUNT_CEILING"]))
    return tuple(Counter(kind, counter_key(kind, subject, amount, seconds), amount, seconds)
                 for kind, subject, spec in subjects for amount, seconds in windows(spec))


def check(attempt: Attempt, *, now: float | None = None) -> Verdict:
    """Refuse the attempt, or let it through counted as a failure (see the module's doc)."""
    now = time.time() if now is None else now
    counters = _counters(attempt, current_app.config)
    entry = f"{now:.6f}:{uuid.uuid4().hex[:12]}"
    seen, in_redis = _store().count(counters, now, entry)
    over = [(c, oldest) for c, (n, oldest) in zip(counters, seen, strict=True)
            if c.refuses and n >= c.amount]
    if over:  # until the oldest failure of each full window has left it
        wait = max(oldest + c.seconds - now for c, oldest in over)
        return Verdict(max(1, math.ceil(wait)), 0.0, counters, entry, in_redis)
    ratios = [(n - c.amount) / c.amount for c, (n, _) in zip(counters, seen, strict=True)
              if not c.refuses and n >= c.amount]
    return Verdict(None, ceiling_delay(max(ratios)) if ratios else 0.0, counters, entry,
                   in_redis)


def ceiling_delay(excess: float) -> float:
    """The wait past the account ceiling, for failures ``excess`` ceilings beyond it."""
    grown = CEILING_DELAY_SECONDS + excess * (CEILING_MAX_DELAY_SECONDS - CEILING_DELAY_SECONDS)
    return min(CEILING_MAX_DELAY_SECONDS, grown)


def pause(verdict: Verdict) -> None:
    """Wait the verdict's delay (cooperatively: gunicorn's gevent workers patch time.sleep)."""
    if verdict.delay > 0:
        time.sleep(verdict.delay)


def succeeded(verdict: Verdict) -> None:
    """The attempt signed in: take its entry back and clear its (account, address) counter."""
    _store().release(verdict.counters, verdict.entry, in_redis=verdict.in_redis)


# --- Where the counts live ------------------------------------------------------------------

# Atomic: drop what has left each window; refuse (count nothing) if a refusing counter is at
# its amount, else add the attempt to every counter not yet holding all it keeps.
# KEYS: the counters. ARGV: now, the attempt's entry, then per key: amount, seconds, refuses
# (1/0), keeps. Returns per key its count before this attempt and its oldest entry's time
# (a string: Lua numbers become integers in a reply).
_COUNT = """
local now, entry = tonumber(ARGV[1]), ARGV[2]
local counts, oldest, refused = {}, {}, false
for i, key in ipairs(KEYS) do
  local amount, seconds = tonumber(ARGV[4 * i - 1]), tonumber(ARGV[4 * i])
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - seconds)
  counts[i] = redis.call('ZCARD', key)
  local first = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
  oldest[i] = first[2] or ARGV[1]
  if ARGV[4 * i + 1] == '1' and counts[i] >= amount then refused = true end
end
if not refused then
  for i, key in ipairs(KEYS) do
    if counts[i] < tonumber(ARGV[4 * i + 2]) then redis.call('ZADD', key, now, entry) end
    redis.call('EXPIRE', key, math.ceil(tonumber(ARGV[4 * i])))
  end
end
return {counts, oldest}
"""

# KEYS: the counters an attempt counted in. ARGV: its entry, then per key '1' to delete the
# counter, '0' to take the entry out of it.
_RELEASE = """
for i, key in ipairs(KEYS) do
  if ARGV[i + 1] == '1' then redis.call('DEL', key) else redis.call('ZREM', key, ARGV[1]) end
end
return 0
"""


class CounterStore:
    """The counters in Redis, or in this process's memory while Redis cannot be reached."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._count_script = client.register_script(_COUNT)
        self._release_script = client.register_script(_RELEASE)
        self._retry_redis_at = 0.0
        self._outage = Outage(log, "sign-in limits counted in this process only")
        self._lock = threading.Lock()
        # key -> [(time, entry)], oldest first; the least recently counted keys first
        self._memory: OrderedDict[str, list[tuple[float, str]]] = OrderedDict()

    def count(self, counters: tuple[Counter, ...], now: float,
              entry: str) -> tuple[list[tuple[int, float]], bool]:
        """Per counter (its count before this attempt, its oldest entry's time), and whether
        Redis holds them; counts the attempt unless a refusing counter is at its amount."""
        if time.monotonic() >= self._retry_redis_at:
            args: list = [repr(now), entry]
            for c in counters:
                args += [c.amount, c.seconds, int(c.refuses), c.keeps]
            try:
                counts, oldest = self._count_script(keys=[c.key for c in counters], args=args)
                self._outage.recovered()
                return [(int(n), float(t)) for n, t in zip(counts, oldest, strict=True)], True
            except redis.RedisError as exc:
                self._redis_failed(exc)
        return self._count_in_memory(counters, now, entry), False

    def release(self, counters: tuple[Counter, ...], entry: str, *, in_redis: bool) -> None:
        """Take a successful attempt back from where it was counted."""
        if in_redis:
            try:
                self._release_script(keys=[c.key for c in counters],
                                     args=[entry] + ["1" if c.kind == PAIR else "0"
                                                     for c in counters])
                return
            except redis.RedisError as exc:
                self._redis_failed(exc)
        with self._lock:
            for c in counters:
                if c.kind == PAIR:
                    self._memory.pop(c.key, None)
                elif c.key in self._memory:
                    self._memory[c.key] = [e for e in self._memory[c.key] if e[1] != entry]

    def _redis_failed(self, exc: redis.RedisError) -> None:
        self._outage.failed(exc)
        self._retry_redis_at = time.monotonic() + REDIS_RETRY_SECONDS

    def _count_in_memory(self, counters: tuple[Counter, ...], now: float,
                         entry: str) -> list[tuple[int, float]]:
        with self._lock:
            found = []
            for c in counters:
                kept = [e for e in self._memory.get(c.key, ()) if e[0] > now - c.seconds]
                self._memory[c.key] = kept
                found.append((len(kept), kept[0][0] if kept else now))
            if not any(c.refuses and n >= c.amount
                       for c, (n, _) in zip(counters, found, strict=True)):
                for c, (n, _) in zip(counters, found, strict=True):
                    if n < c.keeps:
                        self._memory[c.key].append((now, entry))
                    self._memory.move_to_end(c.key)
            while len(self._memory) > MEMORY_MAX_COUNTERS:
                self._memory.popitem(last=False)
            return found


def _store() -> CounterStore:
    """This app's counter store, made on first use (it holds the memory fallback)."""
    store = current_app.extensions.get("portal_login_throttle")
    if store is None:
        store = current_app.extensions.setdefault(
            "portal_login_throttle", CounterStore(current_app.extensions["portal_redis"]))
    return store
