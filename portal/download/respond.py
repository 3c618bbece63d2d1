"""A download plan (plan.py) as a Flask response: the one place a plan's delivery becomes
bytes for the views (the fast path has its own, smaller one in fast.py)."""

from __future__ import annotations

import logging

from flask import Response, abort, current_app, request

from .. import cache
from ..analytics import recorder as analytics
from ..config import settings
from ..instruments import TALLY
from ..sendfile import peer_closed
from ..storage import StorageError
from . import http, limits, people
from .body import CountedBody, TrackedFile, can_sendfile
from .limit_store import settings_in_force
from .plan import Bodiless, DownloadPlan, HeadOnly, Redirect, SendFile, Stream, XAccel

log = logging.getLogger(__name__)


def response_for(plan: DownloadPlan, storage) -> Response:
    """The response of a plan that sends something (every delivery but Refused)."""
    delivery = plan.delivery
    if isinstance(delivery, Bodiless):
        return Response(delivery.body, status=plan.status, headers=plan.headers,
                        mimetype=delivery.mimetype)
    if isinstance(delivery, HeadOnly):
        # No body argument: Response(b"") would overwrite Content-Length with 0.
        return Response(status=plan.status, headers=plan.headers)
    app = current_app._get_current_object()
    sock = request.environ.get("gunicorn.socket")
    plan, lease = limits.admit(app, plan, settings_in_force(app),
                               connection=request.headers.get("X-Portal-Connection"),
                               gone=lambda: peer_closed(sock))
    if plan is None:
        return refused(lease)
    # The event is recorded when the body closes (portal/analytics: journaled now, written
    # to SQL in batches), from values captured now: no request or session in the callback.
    record = analytics.open_event(app, analytics.event_row(**plan.event))
    pacer = None
    if lease is not None:
        record, pacer = lease.on_close(record), lease.pacer
    try:
        if isinstance(delivery, XAccel):
            record.served_from = "nginx"
            record(-1)  # nginx logs the bytes it really sent (ANALYTICS_NGINX_LOG)
            return Response(status=200, headers=[
                *plan.headers, ("X-Portal-Event", record.row["event_key"])])
        if isinstance(delivery, Redirect):
            return _redirect(plan, delivery, storage, record)
        if isinstance(delivery, SendFile):
            tracked = TrackedFile(delivery.path, delivery.start,
                                  delivery.stop - delivery.start, record)
            tracked.pacer = pacer
            return _bytes(plan, request.environ["wsgi.file_wrapper"](tracked, 1024 * 1024))
        return _bytes(plan, _stream(plan, delivery, storage, record, pacer))
    except (OSError, StorageError):
        if lease is not None:
            lease.release()
        log.exception("stored content missing for version %s", plan.version.id)
        abort(503)


def _bytes(plan: DownloadPlan, body) -> Response:
    return Response(body, status=plan.status, headers=plan.headers, direct_passthrough=True)


def refused(refusal: people.Refusal) -> Response:
    """A download the limits refuse now (429 or 503, with Retry-After)."""
    status, headers, body = people.refusal(refusal)
    return Response(b"" if request.method == "HEAD" else body, status=status, headers=headers)


def _stream(plan: DownloadPlan, delivery: Stream, storage, record, pacer=None):
    """The body of a Stream: the hot-file cache in Redis (a popular version of a remote
    origin, or of a local one under CACHE_HOT_LOCAL), else zero-copy from the local file
    when the server can, else the backend's bytes."""
    planned = sum(b - a for a, b in delivery.spans)
    read_range = cache.range_reader(storage, plan.version, local=delivery.path is not None,
                                    planned_bytes=planned)
    if read_range.cached:
        record.served_from = "cache"
    if delivery.multipart is not None:
        return CountedBody(http.iter_multipart(delivery.multipart, read_range), record,
                           _socket(), pacer)
    start, stop = delivery.spans[0]
    if delivery.path is not None and not read_range.cached and can_sendfile(request.environ):
        tracked = TrackedFile(delivery.path, start, stop - start, record)
        tracked.pacer = pacer
        return request.environ["wsgi.file_wrapper"](tracked, 1024 * 1024)
    return CountedBody(read_range(start, stop), record, _socket(), pacer)


def _socket():
    """The client's socket under gunicorn (None elsewhere): a streamed body counts what the
    client acknowledged (body.CountedBody)."""
    return request.environ.get("gunicorn.socket")


def _redirect(plan: DownloadPlan, delivery: Redirect, storage, record) -> Response:
    """PORTAL_S3_DELIVERY=redirect: 302 to a short-lived presigned S3 URL carrying the
    portal's Content-Disposition and Content-Type as overrides; the redirect itself must not
    be cached (``private, no-store``: the URL is a bearer credential that expires). A
    version the hot-file cache holds is streamed instead (Redis beats a round trip to S3);
    the request is counted for the cache's admission as in proxy mode."""
    start, stop = delivery.span
    read_range = cache.range_reader(storage, plan.version, local=False,
                                    planned_bytes=stop - start)
    if read_range.cached:
        record.served_from = "cache"
        return _bytes(plan, CountedBody(read_range(start, stop), record, _socket()))
    url = storage.presigned_get(delivery.storage_key, filename_header=delivery.disposition,
                                content_type=delivery.content_type,
                                expires=settings().s3_presign_seconds)
    record.served_from = "s3"
    record(-1)  # S3 sends the bytes; the planned ranges count as delivered (docs/analytics.md)
    TALLY.add_bytes("redirect", stop - start)
    return Response(status=302, headers=[("Location", url),
                                         ("Cache-Control", "private, no-store")])
