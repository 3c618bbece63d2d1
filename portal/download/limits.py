"""Fair downloads: per-person connection and rate limits, and the node's admission budget.

The rule is one function, :func:`admit`, that every door calls on the plan it got from
plan.py (the Flask views through respond.py, the fast path, the zip view; nginx's grant
leaves a limited download to the view, which hands nginx the rate): who the person is and
how they are limited is :func:`person_of` (pure), whether this connection may start is
decided against the connections held in Redis, and the answer is the plan with a lease, or
a refusal that every door sends the same way (:func:`refusal`).

Who a person is and their limit: people.py (pure). The leases, the pacing and the counters
in Redis: leases.py.

Why by hand: Flask-Limiter (already used for sign-in) counts requests per window, not
concurrent connections, and has no leases; nginx's limit_conn counts per nginx, per zone,
with one fixed number per zone, not per role.
"""

from __future__ import annotations

import re
import socket
import time
from collections.abc import Callable
from dataclasses import replace

from ..settings import Settings
from .leases import Lease, slots, stats
from .people import Person, Refusal, needs_admission
from .plan import Archive, SendFile, Stream, XAccel

#: What nginx's X-Portal-Connection may hold (deploy/nginx.conf: host, worker pid, the
#: connection's serial number); anything else is ignored.
_CONNECTION = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

#: How often a refused x-accel download asks again while nginx's log may free a lease.
HANDED_POLL_SECONDS = 0.1
#: How much longer than one flush interval it asks: the flusher reads nginx's line late when
#: the node's CPUs are busy (2 s was too short with both cores loaded: aria2c gave up).
HANDED_GRACE_SECONDS = 6.0


def in_force(app, settings: Settings) -> dict:
    """What the admin page shows: the entries, the admission budget and its settings, the
    counters (None: Redis down) and this node's active download connections now."""
    node = slots(app).node_active()
    return {
        "entries": [{"who": key, "connections": limit.connections, "rate": limit.rate}
                    for key, limit in settings.download_limits],
        "admission": settings.download_admission_connections,
        "admission_min_bytes": settings.download_admission_min_bytes,
        "retry_after": settings.download_retry_after_seconds,
        "lease_seconds": settings.download_lease_seconds,
        "counters": stats(app.extensions["portal_redis"]),
        "node": socket.gethostname(),
        "node_active": node,
    }


# ---------------------------------------------------------------------------
# The rule every door applies
# ---------------------------------------------------------------------------


def admit(app, planned, settings: Settings, connection: str | None = None,
          gone: Callable[[], bool] | None = None):
    """``(plan, lease)`` when this download may start now (lease None: nothing counted),
    else ``(None, Refusal)``. Only plans that send a body count (``plan.person`` set: HEAD,
    304, 412, 416 and refusals pass untouched).

    Under x-accel, nginx sends the bytes and the portal does not see them end. The plan gets
    X-Accel-Limit-Rate (the person's rate divided by their open connections) and
    X-Portal-Lease, which nginx logs when the response is over (the log's reader then ends
    the lease, :func:`release_handed`); the lease expires anyway when the transfer at that
    rate would have ended, or after DOWNLOAD_LEASE_SECONDS. ``connection`` is nginx's
    X-Portal-Connection, the client connection's name: the lease is named after it, so the
    next request on that connection (a download manager's next segment) takes the place of
    the response before it, which is over, instead of counting twice. ``gone`` says whether
    nginx has stopped waiting for this answer (see :func:`_await_handed`)."""
    if not counts(planned, settings):
        return planned, None
    person = planned.person
    large = _planned_bytes(planned) >= settings.download_admission_min_bytes
    xaccel = _is_xaccel(planned)
    lease_id = (f"x:{connection}" if xaccel and connection and _CONNECTION.fullmatch(connection)
                else None)
    got = slots(app).acquire(person, settings, large=large, lease_id=lease_id,
                             tally=not xaccel)
    if xaccel and isinstance(got, Refusal):
        got = _await_handed(app, person, settings, large, lease_id, got, gone)
    if isinstance(got, Refusal):
        return None, got
    if xaccel:
        headers = list(planned.headers)
        seconds = settings.download_lease_seconds
        if got.rate is not None:
            headers.append(("X-Accel-Limit-Rate", str(got.rate)))
            seconds = max(seconds, _planned_bytes(planned) / got.rate + 1)
        headers.append(("X-Portal-Lease", got.hand_over(seconds)))
        return replace(planned, headers=headers), None
    return planned, got


def _await_handed(app, person: Person, settings: Settings, large: bool,
                  lease_id: str | None, refused: Refusal,
                  gone: Callable[[], bool] | None) -> Lease | Refusal:
    """Under x-accel a person's leases may belong to downloads nginx has finished but whose
    log lines the flusher has not read yet (nginx writes them within a second; the flusher
    reads every ANALYTICS_FLUSH_SECONDS). A download manager asks for its next segment the
    moment one ends, often on another of its connections, and aria2c gives up on a 429: so
    the person's limit is asked again for up to that long before the refusal is sent. The
    node's budget is not waited for (503 is retried by every client). A client that leaves
    meanwhile (``gone``: nginx closed the request) takes no lease: nginx would never log
    the answer, and the lease would count until it expired."""
    deadline = time.monotonic() + settings.analytics_flush_seconds + HANDED_GRACE_SECONDS
    place = slots(app)
    while refused.status == 429 and time.monotonic() < deadline:
        time.sleep(HANDED_POLL_SECONDS)  # a cooperative sleep under gevent
        if gone is not None and gone():
            break
        got = place.acquire(person, settings, large=large, lease_id=lease_id, tally=False)
        if isinstance(got, Lease):
            return got
        refused = got
    return place.tally(refused)


def counts(planned, settings: Settings) -> bool:
    """True when this plan's connection is counted (its person is limited, or it is a large
    download while the node has an admission budget): admit must be asked."""
    person = planned.person
    if person is None or not needs_admission(settings):
        return False
    if not person.limit.unlimited:
        return True
    return (settings.download_admission_connections > 0
            and _planned_bytes(planned) >= settings.download_admission_min_bytes)


def _is_xaccel(planned) -> bool:
    return isinstance(planned.delivery, XAccel)


def _planned_bytes(planned) -> int:
    delivery = planned.delivery
    if isinstance(delivery, SendFile):
        return delivery.stop - delivery.start
    if isinstance(delivery, Stream | Archive):
        return sum(b - a for a, b in delivery.spans)
    if planned.event is not None:
        return sum(b - a for a, b in planned.event["served"])
    return 0
