"""``GET /files/zip?id=1&id=2...``: one STORED zip of the selected files, resumable with Range.

The archive's layout comes from zipplan.py (pure), its HTTP semantics from the same
``http.evaluate`` core as single-file downloads, and its bytes from stored content read
slice by slice: nothing is built on disk or in memory, and a resumed download reads only the
members (and parts of members) that the range covers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime

from flask import Response, abort, request
from flask_login import current_user
from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from ..access import can_read
from ..catalog.views import refuse
from ..config import settings
from ..extensions import db
from ..models import File, User
from ..security import parse_id
from ..storage import Storage, StorageError, get_storage
from . import bp, http, zipplan
from .body import CountedBody
from .plan import answer_headers
from .respond import bodiless

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
    if any(f is None or f.latest is None or not can_read(user, f) for f in files):
        return None
    return files


def archive_filename(files: Sequence[File], last_modified: datetime) -> str:
    """``<category>-YYYYMMDD.zip`` when all files share one category, else
    ``portal-files-YYYYMMDD.zip``; the date is the newest version's (UTC), so the name is the
    same on every request for the same archive."""
    categories = {f.category for f in files}
    prefix = categories.pop() if len(categories) == 1 else ""
    prefix = prefix.replace("/", "-").replace("\\", "-").strip() or "portal-files"
    return f"{prefix}-{last_modified.astimezone(UTC):%Y%m%d}.zip"


def storage_reader(storage: Storage):
    """``read(key, offset, length)`` for zipplan.iter_range, through the backend's
    ``read_range`` (a file slice locally, a ranged GET on S3): only what the range needs."""

    def read(key: str, offset: int, length: int) -> Iterator[bytes]:
        return storage.read_range(key, offset, offset + length)

    return read


def _sent_logger(ids: Sequence[int], user_id: int | None, status: int, range_header: str):
    """Called with the bytes sent when the body closes (zip downloads are not DownloadEvents
    yet: an event belongs to one version, a zip spans many)."""

    def done(sent: int) -> None:
        log.info("zip of files %s for user %s: %s %r, %d bytes sent",
                 list(ids), user_id, status, range_header, sent)

    return done


@bp.route("/files/zip", methods=["GET", "HEAD"])
def zip_download():
    """One zip of the selected files (?id=1&id=2...), all of which the caller must be allowed
    to read, with Content-Length, a strong ETag and full Range support."""
    ids = parse_ids(request.args.getlist("id"))
    if ids is None:
        abort(400)
    files = readable_files(db.session, current_user, ids)
    if files is None:
        return refuse()
    versions = [file.latest for file in files]
    plan = zipplan.plan_zip([
        zipplan.ZipMember(name=v.original_filename, size=v.size, crc32=v.crc32,
                          mtime=v.created_at, key=v.storage_key)
        for v in versions])
    last_modified = max(v.created_at for v in versions).astimezone(UTC).replace(microsecond=0)
    rep = http.Representation(size=plan.size, etag=plan.etag, last_modified=last_modified,
                              content_type="application/zip")
    decision, headers, early = answer_headers(
        request.method, request.headers, rep, public=all(f.access == "public" for f in files),
        max_ranges=settings().max_ranges)
    if early is not None:
        return bodiless(decision.status, headers, early)

    headers.append(("Content-Disposition",
                    http.content_disposition(archive_filename(files, last_modified))))
    multipart = decision.is_multipart
    if multipart:
        parts = http.multipart_plan(decision.ranges, rep, http.new_boundary())
        headers += [("Content-Type", parts.content_type),
                    ("Content-Length", str(parts.content_length))]
    else:
        headers.append(("Content-Type", rep.content_type))
    if not decision.send_body:  # HEAD: no body argument, which would reset Content-Length
        return Response(status=decision.status, headers=headers)

    storage = get_storage()
    try:  # a missing or changed object would break the promised length halfway through
        intact = all(storage.size(v.storage_key) == v.size for v in versions)
    except StorageError:
        intact = False
    if not intact:
        log.error("stored content missing or changed for a version among files %s", ids)
        abort(503)

    # Everything the body needs is captured here: it never touches the request or session.
    read = storage_reader(storage)
    if multipart:
        chunks = http.iter_multipart(
            parts, lambda a, b: zipplan.iter_range(plan, a, b, read))
    else:
        start, stop = decision.ranges[0] if decision.status == 206 else (0, plan.size)
        chunks = zipplan.iter_range(plan, start, stop, read)
    user_id = current_user.id if current_user.is_authenticated else None
    body = CountedBody(chunks, _sent_logger(ids, user_id, decision.status,
                                            request.headers.get("Range", "")[:200]))
    return Response(body, status=decision.status, headers=headers, direct_passthrough=True)
