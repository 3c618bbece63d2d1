"""Sign-in throttling: slow password guessing down without letting a stranger lock the owner out.

Three kinds of counters of failed sign-ins, each a fixed window per limit of its setting
(Flask-Limiter syntax, e.g. ``5 per minute;20 per hour``):

- per account name and client address (``LOGIN_LIMIT_ACCOUNT``): past it, that address is
  refused (429 with Retry-After) for that account until the window ends;
- per client address over all accounts (``LOGIN_LIMIT_IP``): past it, that address is refused
  for every account;
- per account over all addresses (``LOGIN_LIMIT_ACCOUNT_CEILING``): past it, an attempt from
  an address that is not refused is *delayed*, never refused: the password is checked after
  ``ceiling_delay`` seconds (1 s at the ceiling, growing to 5 s at twice the ceiling). So
  guessing one password from many addresses gets slower, while the owner, signing in from
  an address that has not failed too often, still gets in.

An attempt counts as a failure from the moment it is let through (one atomic step that
refuses or counts), so parallel guesses cannot all slip past the check before the first one
fails; a successful sign-in gives its count back and clears its (account, address) counter.
A refused attempt counts nowhere: it checked no password.

The counters live in Redis (the app's client, with its short timeouts), so every worker and
node shares them. While Redis cannot be reached each process counts in its own memory
instead (an attacker then gets that many times the limits, one per worker), and a sign-in
never fails because of Redis. The keys are made by ``counter_key`` only.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from urllib.parse import quote

import redis
from flask import current_app
from limits import parse_many

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
    """One counter of one attempt: its key, the limit it counts towards, when its window ends."""

    kind: str
    key: str
    amount: int
    ends_at: float

    @property
    def refuses(self) -> bool:
        """Past this limit the attempt is refused; past the account ceiling it is delayed."""
        return self.kind != ACCOUNT


@dataclass(frozen=True)
class Verdict:
    """What to do with an attempt: refuse it for ``retry_after`` seconds, or check the
    password after waiting ``delay`` seconds (0: at once)."""

    retry_after: int | None
    delay: float
    counters: tuple[Counter, ...]
    in_redis: bool


def normalise_account(name: str | None) -> str:
    """The account name as the counters key it: any name, existing or not, so that a
    throttled account looks like every other one."""
    return (name or "").strip().lower()[:64]


def counter_key(kind: str, subject: tuple[str, ...], amount: int, seconds: int,
                window: int) -> str:
    """The Redis key of one counter in one window. Every part is percent-quoted, so no
    name or address (IPv6 has colons) can make two subjects share a key."""
    parts = ":".join(quote(part, safe="") for part in subject)
    return f"portal:login:{kind}:{parts}:{amount}/{seconds}:{window}"


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


def _counters(attempt: Attempt, config, now: float) -> tuple[Counter, ...]:
    subjects = ((PAIR, (attempt.account, attempt.address), config["LOGIN_LIMIT_ACCOUNT"]),
                (ADDRESS, (attempt.address,), config["LOGIN_LIMIT_IP"]),
                (ACCOUNT, (attempt.account,), config["LOGIN_LIMIT_ACCOUNT_CEILING"]))
    counters = []
    for kind, subject, spec in subjects:
        for amount, seconds in windows(spec):
            window = int(now // seconds)
            counters.append(Counter(kind, counter_key(kind, subject, amount, seconds, window),
                                    amount, (window + 1) * seconds))
    return tuple(counters)


def check(attempt: Attempt, *, now: float | None = None) -> Verdict:
    """Refuse the attempt, or let it through counted as a failure (see the module's doc)."""
    now = time.time() if now is None else now
    counters = _counters(attempt, current_app.config, now)
    counts, in_redis = _store().count(counters, now)
    over = [c for c, n in zip(counters, counts, strict=True) if c.refuses and n >= c.amount]
    if over:
        return Verdict(max(1, math.ceil(max(c.ends_at for c in over) - now)), 0.0, counters,
                       in_redis)
    ratios = [(n - c.amount) / c.amount
              for c, n in zip(counters, counts, strict=True) if not c.refuses and n >= c.amount]
    return Verdict(None, ceiling_delay(max(ratios)) if ratios else 0.0, counters, in_redis)


def ceiling_delay(excess: float) -> float:
    """The wait past the account ceiling, for failures ``excess`` ceilings beyond it."""
    grown = CEILING_DELAY_SECONDS + excess * (CEILING_MAX_DELAY_SECONDS - CEILING_DELAY_SECONDS)
    return min(CEILING_MAX_DELAY_SECONDS, grown)


def pause(verdict: Verdict) -> None:
    """Wait the verdict's delay (cooperatively: gunicorn's gevent workers patch time.sleep)."""
    if verdict.delay > 0:
        time.sleep(verdict.delay)


def succeeded(verdict: Verdict) -> None:
    """The attempt signed in: give its counts back and clear its (account, address) counter."""
    _store().release(verdict.counters, in_redis=verdict.in_redis)


# --- Where the counts live ------------------------------------------------------------------

# Atomic: refuse (count nothing) if a refusing counter is at its limit, else count in all.
# KEYS: the counters; ARGV: per key, its amount (0: never refuses) and its TTL in seconds.
_COUNT = """
local counts, refused = {}, false
for i, key in ipairs(KEYS) do
  counts[i] = tonumber(redis.call('GET', key) or '0')
  local amount = tonumber(ARGV[2 * i - 1])
  if amount > 0 and counts[i] >= amount then refused = true end
end
if not refused then
  for i, key in ipairs(KEYS) do
    if redis.call('INCR', key) == 1 then redis.call('EXPIRE', key, ARGV[2 * i]) end
  end
end
return counts
"""

# KEYS: the counters an attempt counted in; ARGV: per key '1' to delete it, '0' to give one back.
_RELEASE = """
for i, key in ipairs(KEYS) do
  if ARGV[i] == '1' then
    redis.call('DEL', key)
  elseif tonumber(redis.call('GET', key) or '0') > 0 then
    redis.call('DECR', key)
  end
end
return 0
"""


class CounterStore:
    """The counters in Redis, or in this process's memory while Redis cannot be reached."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._count = client.register_script(_COUNT)
        self._release = client.register_script(_RELEASE)
        self._retry_redis_at = 0.0
        self._lock = threading.Lock()
        self._memory: OrderedDict[str, list[float]] = OrderedDict()  # key -> [count, expires]

    def count(self, counters: tuple[Counter, ...], now: float) -> tuple[list[int], bool]:
        """Each counter's count before this attempt, and whether Redis holds them; counts
        the attempt in all of them unless a refusing one is at its limit."""
        if time.monotonic() >= self._retry_redis_at:
            args = []
            for c in counters:
                args += [c.amount if c.refuses else 0, max(1, math.ceil(c.ends_at - now))]
            try:
                counts = self._count(keys=[c.key for c in counters], args=args)
                return [int(n) for n in counts], True
            except redis.RedisError as exc:
                self._redis_failed(exc)
        return self._count_in_memory(counters, now), False

    def release(self, counters: tuple[Counter, ...], *, in_redis: bool) -> None:
        """Give a successful attempt's counts back where they were taken."""
        if in_redis:
            try:
                self._release(keys=[c.key for c in counters],
                              args=["1" if c.kind == PAIR else "0" for c in counters])
                return
            except redis.RedisError as exc:
                self._redis_failed(exc)
        with self._lock:
            for c in counters:
                entry = self._memory.get(c.key)
                if c.kind == PAIR:
                    self._memory.pop(c.key, None)
                elif entry is not None and entry[0] > 0:
                    entry[0] -= 1

    def _redis_failed(self, exc: redis.RedisError) -> None:
        log.warning("redis unavailable (%s): sign-in limits counted in this process only", exc)
        self._retry_redis_at = time.monotonic() + REDIS_RETRY_SECONDS

    def _count_in_memory(self, counters: tuple[Counter, ...], now: float) -> list[int]:
        with self._lock:
            counts = []
            for c in counters:
                entry = self._memory.get(c.key)
                counts.append(int(entry[0]) if entry is not None and entry[1] > now else 0)
            refused = any(c.refuses and n >= c.amount
                          for c, n in zip(counters, counts, strict=True))
            if not refused:
                for c, n in zip(counters, counts, strict=True):
                    self._memory[c.key] = [n + 1, c.ends_at]
                    self._memory.move_to_end(c.key)
                self._forget(now)
            return counts

    def _forget(self, now: float) -> None:
        """Drop expired counters, then the oldest beyond MEMORY_MAX_COUNTERS."""
        if len(self._memory) <= MEMORY_MAX_COUNTERS:
            return
        for key in [k for k, (_, expires) in self._memory.items() if expires <= now]:
            del self._memory[key]
        while len(self._memory) > MEMORY_MAX_COUNTERS:
            self._memory.popitem(last=False)


def _store() -> CounterStore:
    """This app's counter store, made on first use (it holds the memory fallback)."""
    store = current_app.extensions.get("portal_login_throttle")
    if store is None:
        store = current_app.extensions.setdefault(
            "portal_login_throttle", CounterStore(current_app.extensions["portal_redis"]))
    return store
