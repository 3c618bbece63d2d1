"""``GET /files/zip?id=1&id=2...``: one STORED zip of the selected files, resumable with Range.

The archive's layout comes from zipplan.py (pure), its HTTP semantics from the download
plan (``plan.plan_zip``: the same evaluate and caching policy as single-file downloads), and
its bytes from stored content read slice by slice: nothing is built on disk or in memory,
and a resumed download reads only the members (and parts of members) that the range covers.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

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
from .plan import Archive, plan_zip
from .respond import response_for
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
    if any(f is None or f.latest is None or not can_read(user, f) for f in files):
        return None
    return files


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
    answer = plan_zip(request_facts(), files, settings())
    if not isinstance(answer.delivery, Archive):
        return response_for(answer, None)  # 304 / 412 / 416 / HEAD
    user_id = current_user.id if current_user.is_authenticated else None
    logged = _sent_logger(ids, user_id, answer.status, request.headers.get("Range", "")[:200])
    return archive_response(answer, get_storage(), logged, ids)


def archive_response(answer, storage: Storage, on_close, ids: Sequence[int]) -> Response:
    """The zip's bytes, read slice by slice from the stored objects; 503 when one of them is
    missing or changed (it would break the promised length halfway through)."""
    archive = answer.delivery
    try:
        intact = all(storage.size(key) == size
                     for key, size in zip(archive.storage_keys, archive.sizes, strict=True))
    except StorageError:
        intact = False
    if not intact:
        log.error("stored content missing or changed for a version among files %s", ids)
        abort(503)
    read = storage_reader(storage)
    if archive.multipart is not None:
        chunks = http.iter_multipart(
            archive.multipart, lambda a, b: zipplan.iter_range(archive.zip, a, b, read))
    else:
        start, stop = archive.spans[0]
        chunks = zipplan.iter_range(archive.zip, start, stop, read)
    body = CountedBody(chunks, on_close, request.environ.get("gunicorn.socket"))
    return Response(body, status=answer.status, headers=answer.headers,
                    direct_passthrough=True)
