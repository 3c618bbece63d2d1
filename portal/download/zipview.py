"""``GET /files/zip?id=1&id=2...``: one STORED zip of the selected files, resumable with Range.

The archive's layout comes from zipplan.py (pure), its HTTP semantics from the download
plan (``plan.plan_zip``: the same evaluate and caching policy as single-file downloads), and
its bytes from stored content read slice by slice: nothing is built on disk or in memory,
and a resumed download reads only the members (and parts of members) that the range covers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from urllib.parse import urlsplit

from flask import Response, abort, current_app, flash, redirect, request
from flask_babel import gettext as _
from flask_login import current_user
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from ..access import can_read
from ..analytics import logical
from ..analytics import recorder as analytics
from ..auth.views import safe_next
from ..catalog.views import refuse
from ..errors import render_error, wants_json
from ..extensions import db
from ..models import File, User
from ..security import parse_id
from ..storage import Storage, StorageError, get_storage
from . import bp, http, limits, zipplan
from .body import CountedBody
from .limit_store import settings_in_force
from .plan import Archive, plan_zip
from .respond import refused, response_for
from .views import request_facts

log = logging.getLogger(__name__)

#: More ids than this in one request is refused with 400: a zip of 200 documents is already
#: more than anyone selects by hand, and the bound keeps the query and the plan small.
MAX_ZIP_FILES = 200


def parse_ids(values: Sequence[str]) -> list[int] | None:
    """The distinct file ids in request order, or None when the list is empty, too long or
    holds anything but decimal numbers.

    A number no file can have (0, past the id range, in non-ASCII digits such as ``١٢``) is
    kept as 0, which names no file: the zip is refused as for a missing file (404), and the
    number never reaches SQL (SQLite cannot even bind one past 64 bits).
    """
    if not values or len(values) > MAX_ZIP_FILES:
        return None
    ids: dict[int, None] = {}
    for raw in values:
        if not raw.isdigit():  # no sign, point, space or letter
            return None
        ids.setdefault(parse_id(raw) or 0, None)
    return list(ids)


def readable_files(session: Session, user: User | None, ids: Sequence[int]) -> list[File] | None:
    """The files in the order asked for, if every one exists, has a version and may be read
    by the user; None otherwise (never a silently shorter list)."""
    rows = session.scalars(
        select(File).where(File.id.in_(ids)).options(selectinload(File.versions)))
    by_id = {file.id: file for file in rows}
    files = [by_id.get(file_id) for file_id in ids]
    if any(f is None or f.current is None or not can_read(user, f) for f in files):
        return None
    return files


def storage_reader(storage: Storage):
    """``read(key, offset, length)`` for zipplan.iter_range, through the backend's
    ``read_range`` (a file slice locally, a ranged GET on S3): only what the range needs."""

    def read(key: str, offset: int, length: int) -> Iterator[bytes]:
        return storage.read_range(key, offset, offset + length)

    return read


class MemberEvents:
    """The download events of a zip: one per member file the response carries, so a zip
    counts as a download of each file in it (docs/analytics.md, "Zips").

    Each member's event is journaled when the body starts, with the member's content ranges
    the plan sends; when the body closes, the archive bytes the client received (the body's
    count) are mapped back to each member, so a cut zip counts what arrived of each file and
    a resumed one (Range) only the members' ranges it carries: coverage is a union per
    version, so nothing is counted twice. Built from values captured before the response.
    """

    def __init__(self, app, archive: Archive, status: int, rows: list[dict | None]) -> None:
        self.archive, self.status = archive, status
        self.records = [None if row is None else analytics.open_event(app, row)
                        for row in rows]
        for record in self.records:
            if record is not None:
                record.served_from = "zip"

    def __call__(self, sent: int) -> None:
        archive = self.archive
        delivered = logical.delivered(self.status, list(archive.spans), sent, archive.zip.size)
        got = zipplan.member_ranges(archive.zip, delivered)
        for record, ranges in zip(self.records, got, strict=True):
            if record is not None:
                record(sum(b - a for a, b in ranges))


def member_rows(archive: Archive, files: Sequence[File], status: int, facts,
                user_id: int | None) -> list[dict | None]:
    """The event row of each member with content (None where the response carries none of
    it): status 200 for a whole member of a whole zip, else 206 with its ranges."""
    planned = zipplan.member_ranges(archive.zip, archive.spans)
    versions = [f.current for f in files if f.current.size]
    rows: list[dict | None] = []
    for version, ranges in zip(versions, planned, strict=True):
        if not ranges:
            rows.append(None)
            continue
        whole = status == 200 and ranges == [(0, version.size)]
        rows.append(analytics.event_row(
            file_id=version.file_id, version_id=version.id, size=version.size,
            user_id=user_id, via_link=False, method=facts.method,
            status=200 if whole else 206, range_header=facts.header("Range") or "",
            served=ranges, client_ip=facts.client_ip, user_agent=facts.user_agent,
            referrer=facts.referrer, link_id=None))
    return rows


@bp.route("/files/zip", methods=["GET", "HEAD"])
def zip_download():
    """One zip of the selected files (?id=1&id=2...), all of which the caller must be allowed
    to read, with Content-Length, a strong ETag and full Range support."""
    raw = request.args.getlist("id")
    if not raw and not wants_json():
        # The catalog's button with nothing ticked (its script keeps it disabled; without
        # scripts the form still submits): back to that listing, saying what to do.
        flash(_("Tick the files you want first, then press “Download selected as one zip”."),
              "error")
        return redirect(_listing_page(), 303)
    ids = parse_ids(raw)
    if ids is None:
        return render_error(400, _("A zip takes 1 to %(n)d files, given by their numbers "
                                   "(?id=1&id=2).", n=MAX_ZIP_FILES))
    files = readable_files(db.session, current_user, ids)
    if files is None:
        return refuse()
    user = current_user._get_current_object() if current_user.is_authenticated else None
    facts = request_facts()
    in_force = settings_in_force()
    answer = plan_zip(facts, files, in_force, user=user)
    if not isinstance(answer.delivery, Archive):
        return response_for(answer, None)  # 304 / 412 / 416 / HEAD
    storage = get_storage()
    check_intact(answer.delivery, storage, ids)
    answer, lease = limits.admit(current_app._get_current_object(), answer, in_force)
    if answer is None:
        return refused(lease)
    user_id = None if user is None else user.id
    events = MemberEvents(current_app._get_current_object(), answer.delivery, answer.status,
                          member_rows(answer.delivery, files, answer.status, facts, user_id))
    on_close = events if lease is None else lease.on_close(events)
    try:
        return archive_response(answer, storage, on_close,
                                None if lease is None else lease.pacer)
    except Exception:
        if lease is not None:
            lease.release()
        raise


def _listing_page() -> str:
    """The catalog page the request came from (its Referer, when on this site), else the
    catalog."""
    referer = urlsplit(request.referrer or "")
    if referer.netloc != request.host:
        return safe_next(None)
    return safe_next(referer.path + (f"?{referer.query}" if referer.query else ""))


def check_intact(archive: Archive, storage: Storage, ids: Sequence[int]) -> None:
    """503 when a member's stored object is missing or changed (it would break the
    promised length halfway through)."""
    try:
        intact = all(storage.size(key) == size
                     for key, size in zip(archive.storage_keys, archive.sizes, strict=True))
    except StorageError:
        intact = False
    if not intact:
        log.error("stored content missing or changed for a version among files %s", ids)
        abort(503)


def archive_response(answer, storage: Storage, on_close, pacer=None) -> Response:
    """The zip's bytes, read slice by slice from the stored objects (paced by ``pacer``, the
    person's rate, when limited)."""
    archive = answer.delivery
    read = storage_reader(storage)
    if archive.multipart is not None:
        chunks = http.iter_multipart(
            archive.multipart, lambda a, b: zipplan.iter_range(archive.zip, a, b, read))
    else:
        start, stop = archive.spans[0]
        chunks = zipplan.iter_range(archive.zip, start, stop, read)
    body = CountedBody(chunks, on_close, request.environ.get("gunicorn.socket"), pacer)
    return Response(body, status=answer.status, headers=answer.headers,
                    direct_passthrough=True)
