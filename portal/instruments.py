"""The metrics the portal's processes record as they work, for /metrics (portal/metrics.py).

Under gunicorn every worker is a process of its own, and a scrape reaches one of them: so
the values live in prometheus-client's multiprocess files (PROMETHEUS_MULTIPROC_DIR, which
gunicorn.conf.py makes for each master and empties at its start), and /metrics adds up the
files of every process of the node. Counters and histograms keep the counts of a worker
that has exited; a gauge of a process that has exited goes with it (gunicorn.conf.py's
``child_exit`` marks the process dead). Without PROMETHEUS_MULTIPROC_DIR (the development
server, the tests' in-process app) they are the process's own, as prometheus-client keeps
them by default.

The request path does not write those files itself: a request's counts go to a
:class:`Tally` of plain numbers in the process (a dict update), and each process moves its
tally into the metrics every ``FLUSH_SECONDS`` and whenever it answers a scrape. A write
to the shared files takes a lock and a struct pack, about 1 µs each, and a download touches
six of them; the tally keeps that off the lean cycle (docs/performance.md). What is rarer
than a request (a confirmation against the database, the Redis breaker tripping, a batch
of nginx's log) is written at once.

Nothing of the app is imported here: the lowest modules (cache/connection.py, coherence.py,
download/body.py) record into it.
"""

from __future__ import annotations

import atexit
import os
import threading
import time
import weakref
from bisect import bisect_left

from prometheus_client import Counter, Gauge, Histogram, values

#: How often each process moves its tally into the shared metrics.
FLUSH_SECONDS = 1.0

#: Where prometheus-client keeps the values of every process (multiprocess mode), if set.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

#: The route classes requests are counted under (``observe.route_class``).
ROUTE_CLASSES = ("download", "page", "api", "grant", "static", "other")
#: How a download's bytes leave: sendfile(2) of a local file, a stream the portal writes
#: (hot-file cache, S3 proxy, zips, multipart ranges), nginx (X-Accel-Redirect and grants),
#: or S3 (a redirect to a presigned URL: the bytes asked for, S3 reports no more).
DELIVERY_MODES = ("sendfile", "stream", "x-accel", "redirect")

#: Upper bounds of the latency buckets, in seconds: a warm download is answered in a few
#: hundred microseconds, a page in milliseconds, an analytics page may take seconds.
LATENCY_BUCKETS = (0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
                   1.0, 2.5, 5.0, 10.0)
_BOUNDS = (*LATENCY_BUCKETS, float("inf"))

REQUESTS = Counter(
    "portal_http_requests", "Requests the app answered, by route class and status class",
    ["route", "status"])
LATENCY = Histogram(
    "portal_http_request_duration_seconds",
    "Seconds from the request reaching the app to its response head (a body is sent after)",
    ["route"], buckets=LATENCY_BUCKETS)
BYTES = Counter(
    "portal_download_bytes",
    "Download bytes by delivery mode: sent (sendfile, stream), logged by nginx (x-accel), "
    "or handed to S3 by a redirect (redirect)", ["mode"])
ACTIVE = Gauge("portal_downloads_active",
               "Download bodies this node's workers are sending now",
               multiprocess_mode="livesum")
QUEUED = Gauge("portal_analytics_queued_events",
               "Finished download events held in workers' memory: neither Redis nor the "
               "database took them yet", multiprocess_mode="livesum")
#: The recorded times /metrics derives each process's coherence age and breaker state from.
CONFIRMED_NAME = "portal_coherence_confirmed_timestamp_seconds"
BREAKER_UNTIL_NAME = "portal_redis_breaker_open_until_timestamp_seconds"
CONFIRMED = Gauge(CONFIRMED_NAME,
                  "When each process last confirmed its cached decisions against the database "
                  "(Unix time)", multiprocess_mode="liveall")
CONFIRM_FAILURES = Counter("portal_coherence_failures",
                           "Confirmations against the database that failed")
BREAKER_UNTIL = Gauge(BREAKER_UNTIL_NAME,
                      "Until when each process's Redis circuit breaker stays open (Unix time)",
                      multiprocess_mode="liveall")
BREAKER_TRIPS = Counter("portal_redis_breaker_trips",
                        "Times a process's Redis circuit breaker opened (Redis failed)")
POOL_SIZE = Gauge("portal_db_pool_size",
                  "Connections the database pools of this node's processes keep",
                  multiprocess_mode="livesum")
POOL_CHECKED_OUT = Gauge("portal_db_pool_checked_out",
                         "Database connections in use now by this node's processes",
                         multiprocess_mode="livesum")


def multiprocess_dir() -> str | None:
    """The folder of every process's values, when prometheus-client is in multiprocess mode
    (it chose so when it was imported: a variable set later changes nothing)."""
    if not getattr(values.ValueClass, "_multiprocess", False):
        return None
    return os.environ.get(MULTIPROC_ENV) or None


class Tally:
    """This process's counts since it started, in plain numbers, and what of them has been
    moved into the metrics; ``flush`` moves the difference.

    Only the request path adds to the counts and only ``flush`` reads them, so nothing is
    lost when a flush runs between two additions (each process's greenlets never run at
    once; a worker with real threads could lose an addition made by two threads at once).
    """

    def __init__(self) -> None:
        self._pid = os.getpid()
        self._live = None  # the process whose counts these are, once it has counted
        self._lock = threading.Lock()  # one flush at a time (the timer and a scrape)
        self._reset()

    def _reset(self) -> None:
        self.requests: dict[tuple[str, str], int] = {}
        self.latency: dict[str, list[int]] = {}
        self.latency_sum: dict[str, float] = {}
        self.sent: dict[str, int] = {}
        self.active = 0
        self._moved: dict = {}
        self._pools: weakref.WeakSet = weakref.WeakSet()
        self._pool_values = (None, None)

    # -- the request path -------------------------------------------------------------------

    def request(self, route: str, status: str, seconds: float) -> None:
        """One answered request: its route class, the first digit of its status (counted
        as "2xx" and so on), and the seconds to its response head."""
        if self._live != os.getpid():
            self._begin()
        key = (route, status)
        requests = self.requests
        requests[key] = requests.get(key, 0) + 1
        row = self.latency.get(route)
        if row is None:
            row = self.latency[route] = [0] * len(_BOUNDS)
            self.latency_sum[route] = 0.0
        row[bisect_left(_BOUNDS, seconds)] += 1
        self.latency_sum[route] += seconds

    def opened(self) -> None:
        """A download body started."""
        if self._live != os.getpid():
            self._begin()
        self.active += 1

    def closed(self, mode: str, sent: int) -> None:
        """A download body closed after ``sent`` bytes went out by ``mode``."""
        self.active -= 1
        self.add_bytes(mode, sent)

    def add_bytes(self, mode: str, count: int) -> None:
        """``count`` download bytes left by ``mode`` (DELIVERY_MODES)."""
        if count > 0:
            if self._live != os.getpid():
                self._begin()
            self.sent[mode] = self.sent.get(mode, 0) + count

    def watch_pool(self, pool) -> None:
        """Report this SQLAlchemy pool's size and connections in use at each flush."""
        if self._live != os.getpid():
            self._begin()
        self._pools.add(pool)

    def _begin(self) -> None:
        """This process counts for the first time: after a fork its counts start at nothing
        (the parent's are the parent's), and in multiprocess mode its flush timer starts."""
        pid = os.getpid()
        if self._pid != pid:
            self._pid = pid
            self._lock = threading.Lock()
            self._reset()
        self._live = pid
        if multiprocess_dir() is not None:
            threading.Thread(target=self._flush_every, name="metrics-flush",
                             daemon=True).start()

    def start(self) -> None:
        """Begin counting in this process now (a gunicorn worker's start), not at its first
        request."""
        if self._live != os.getpid():
            self._begin()

    def _flush_every(self) -> None:
        while self._live == os.getpid():
            time.sleep(FLUSH_SECONDS)  # a cooperative sleep in a gevent worker
            self.flush()

    # -- moving the counts into the metrics ---------------------------------------------------

    def flush(self) -> None:
        """Move what was counted since the last flush into the metrics."""
        if self._pid != os.getpid():
            return  # a forked child's inherited counts are its parent's
        with self._lock:
            moved = self._moved
            for key, count in list(self.requests.items()):
                if count != moved.get(key, 0):
                    REQUESTS.labels(key[0], f"{key[1]}xx").inc(count - moved.get(key, 0))
                    moved[key] = count
            for route, row in list(self.latency.items()):
                self._move_latency(route, list(row), self.latency_sum[route])
            for mode, count in list(self.sent.items()):
                if count != moved.get(("bytes", mode), 0):
                    BYTES.labels(mode).inc(count - moved.get(("bytes", mode), 0))
                    moved[("bytes", mode)] = count
            if self.active != moved.get("active", 0):
                moved["active"] = self.active
                ACTIVE.set(self.active)
            self._move_pools()

    def _move_latency(self, route: str, row: list[int], total: float) -> None:
        """Add a route's new observations to its histogram, bucket by bucket.

        prometheus-client has no call that adds many observations at once; its histogram
        child keeps one value per bucket (``_buckets``, not cumulative) and the sum
        (``_sum``), which this adds to as ``observe`` would (tests/unit/test_instruments.py
        holds the two to the same exposition).
        """
        before = self._moved.get(("latency", route))
        if before is not None and before[0] == row:
            return
        child = LATENCY.labels(route)
        old_row, old_total = before if before is not None else ([0] * len(row), 0.0)
        for index, (now, then) in enumerate(zip(row, old_row, strict=True)):
            if now != then:
                child._buckets[index].inc(now - then)
        child._sum.inc(total - old_total)
        self._moved[("latency", route)] = (row, total)

    def _move_pools(self) -> None:
        size = checked_out = 0
        for pool in list(self._pools):
            try:
                size += pool.size()
                checked_out += pool.checkedout()
            except AttributeError:  # a pool without a size (SQLite in memory): nothing kept
                continue
        if (size, checked_out) != self._pool_values:
            self._pool_values = (size, checked_out)
            POOL_SIZE.set(size)
            POOL_CHECKED_OUT.set(checked_out)


#: This process's tally (the request path, the download bodies, the flush).
TALLY = Tally()
atexit.register(TALLY.flush)


def coherence_confirmed() -> None:
    """This process confirmed its cached decisions against the database now."""
    CONFIRMED.set(time.time())


def coherence_failed() -> None:
    """A confirmation against the database failed."""
    CONFIRM_FAILURES.inc()


def breaker_opened(seconds: float) -> None:
    """This process's Redis breaker opened for ``seconds``."""
    BREAKER_UNTIL.set(time.time() + seconds)
    BREAKER_TRIPS.inc()


def events_queued(count: int) -> None:
    """This process now holds ``count`` finished events that neither Redis nor SQL took."""
    QUEUED.set(count)
