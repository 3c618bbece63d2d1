"""The tus endpoints: read the headers, call the service, answer with tus headers.

Refusals as the README says: anonymous callers get 401 JSON, students 404 (as for anything
they may not see), someone else's upload is 404. Errors are JSON ``{"error", "message"}``.
``X-HTTP-Method-Override`` (PATCH or DELETE on a POST) is honoured, as the tus core requires.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

from flask import Response, abort, current_app, jsonify, request, url_for
from flask_babel import gettext
from flask_login import current_user

from ..config import settings
from ..extensions import db, login_manager
from ..models import Upload
from ..storage import get_storage
from . import bp, service, tus
from .errors import N_, ErrorKind, UploadError, WordedError

# The status of each kind of service error; refusal() adds its data as tus headers.
STATUS = {
    ErrorKind.BAD_REQUEST: 400, ErrorKind.NOT_FOUND: 404, ErrorKind.OFFSET_MISMATCH: 409,
    ErrorKind.GONE: 410, ErrorKind.TOO_LARGE: 413, ErrorKind.BUSY: 423,
    ErrorKind.CHECKSUM_MISMATCH: tus.CHECKSUM_MISMATCH, ErrorKind.WRITE_FAILED: 500,
    ErrorKind.STORAGE_FULL: 507, ErrorKind.DUPLICATE: 409,
}
# The "error" member of a JSON refusal, by status.
TITLES = {
    400: "bad request", 404: "not found", 409: "offset mismatch", 410: "gone",
    412: "unsupported tus version", 413: "too large", 415: "unsupported media type",
    423: "locked", 460: "checksum mismatch", 500: "server error", 507: "insufficient storage",
}
REASONS = {460: "Checksum Mismatch"}  # Werkzeug does not know the tus-specific status


@bp.before_request
def staff_only():
    """Staff and admins only; then the tus version (412 for any other).

    OPTIONS stays open: it only describes the protocol, and a CORS preflight never carries
    the session cookie.
    """
    if request.method == "OPTIONS":
        return None
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    if not current_user.is_staff:
        abort(404)
    if not tus.supports_version(request.headers.get("Tus-Resumable")):
        return tus_error(412, gettext("send Tus-Resumable: %(version)s", version=tus.VERSION),
                         {"Tus-Version": ",".join(tus.SUPPORTED_VERSIONS)})
    return None


@bp.after_request
def tus_headers(response: Response) -> Response:
    """Every answer names the protocol version and is never cached (offsets move)."""
    response.headers["Tus-Resumable"] = tus.VERSION
    response.headers["Cache-Control"] = "no-store"
    return response


def tus_error(status: int, message: str, headers: dict[str, str] | None = None,
              **extra: object) -> Response:
    """A JSON refusal with the given status, extra headers and extra JSON members (an
    ``error`` among them replaces the status's title)."""
    response = jsonify(**{"error": TITLES.get(status, "error"), "message": message, **extra})
    response.status = f"{status} {REASONS[status]}" if status in REASONS else status
    response.headers.update(headers or {})
    return response


def refusal(exc: UploadError, *, with_offset: bool = True) -> Response:
    """The tus answer to a service error: its STATUS, the offset to resume from and the size
    limit as headers; ``with_offset=False`` when no upload is left to resume."""
    headers = {}
    if exc.offset is not None and with_offset:
        headers["Upload-Offset"] = str(exc.offset)
    if exc.max_size is not None:
        headers["Tus-Max-Size"] = str(exc.max_size)
    if exc.kind is ErrorKind.DUPLICATE:  # which document it repeats, for the page to offer
        file_id = exc.values["file_id"]
        return tus_error(409, words(exc), headers, error="duplicate", duplicate={
            "file_id": file_id, "version": exc.values["number"], "title": exc.values["title"],
            "url": url_for("catalog.file_page", file_id=file_id)})
    return tus_error(STATUS[exc.kind], words(exc), headers)


def words(exc: WordedError) -> str:
    """The error's message in the request's language (see ``errors.N_``)."""
    return gettext(exc.template, **exc.values)


def _area() -> Path:
    return service.upload_area(get_storage(), settings().upload_dir,
                               current_app.instance_path)


def _user():
    return current_user._get_current_object()


def _own(upload_id: str) -> Upload:
    return service.find_upload(db.session, _user(), upload_id) or abort(404)


def _has_body() -> bool:
    chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
    return bool(request.content_length) or chunked


def _done_headers(upload: Upload) -> dict[str, str]:
    """Where a completed upload went, for the browser to link to."""
    version = upload.version if upload.completed_at is not None else None
    if version is None:
        return {}
    return {"Upload-File-Id": str(version.file_id), "Upload-Version": str(version.number),
            "Upload-File-Url": url_for("catalog.file_page", file_id=version.file_id),
            "Upload-File-Draft": "1" if version.file.draft else "0",
            "Upload-Version-Pending": "0" if version.published else "1"}


def _progress_headers(upload: Upload) -> dict[str, str]:
    offset = upload.size if upload.completed_at is not None else upload.received
    return {"Upload-Offset": str(offset), **_done_headers(upload)}


@bp.route("/", methods=["OPTIONS"])
def capabilities():
    """The tus versions, extensions, size limit and checksum algorithms this server offers."""
    return Response(status=204,
                    headers=tus.options_headers(current_app.config["MAX_UPLOAD_BYTES"]))


@bp.route("/", methods=["POST"])
def create():
    """Create an upload (tus creation), optionally with its first bytes (creation-with-upload).

    Creation is all or nothing: when the body cannot be taken (checksum, disk full, cut short)
    the upload is removed again and the client simply creates it anew.
    """
    asked = _creation()
    if isinstance(asked, Response):
        return asked
    size, pairs, checksum, with_body = asked
    user, area = _user(), _area()
    try:
        metadata = service.validate_metadata(db.session, user, pairs)
        upload = service.create_upload(
            db.session, area, user, size=size, max_size=current_app.config["MAX_UPLOAD_BYTES"],
            metadata=metadata, raw_metadata=request.headers.get("Upload-Metadata", "").strip())
    except UploadError as exc:
        return refusal(exc)
    headers = {"Location": url_for("uploads.status", upload_id=upload.id), "Upload-Offset": "0"}
    if with_body or size == 0:
        taken = _first_bytes(upload, area, user, with_body, checksum)
        if isinstance(taken, Response):
            return taken
        headers.update(taken)
    return Response(status=201, headers=headers)


def _creation():
    """(size, metadata pairs, checksum, with a body) of a creation request, or the refusal:
    the headers in tus's order, then the size limit, then the body's media type."""
    if request.headers.get("Upload-Length") is None:
        if request.headers.get("Upload-Defer-Length"):
            return tus_error(400, gettext("Upload-Defer-Length is not supported; send "
                                          "Upload-Length"))
        return tus_error(400, gettext("Upload-Length is required"))
    with_body = _has_body()
    try:
        size = tus.parse_size(request.headers.get("Upload-Length"), "Upload-Length")
        pairs = tus.parse_metadata(request.headers.get("Upload-Metadata"))
        checksum = tus.parse_checksum(request.headers.get("Upload-Checksum")) if with_body else None
    except tus.TusHeaderError as exc:
        return tus_error(400, words(exc))
    try:
        service.check_size(size, current_app.config["MAX_UPLOAD_BYTES"])
    except UploadError as exc:
        return refusal(exc)
    if with_body and not tus.is_offset_stream(request.content_type):
        return tus_error(415, gettext("a body must be sent as %(type)s",
                                      type=tus.OFFSET_CONTENT_TYPE))
    return size, pairs, checksum, with_body


def _first_bytes(upload, area, user, with_body: bool, checksum):
    """The progress headers after taking a creation's body (or completing an empty upload),
    or the refusal, with the upload removed again."""
    upload_id = upload.id
    try:
        result = service.append(
            db.session, get_storage(), area, upload, user,
            request.stream if with_body else io.BytesIO(), offset=0,
            content_length=request.content_length if with_body else 0, checksum=checksum,
            client_ip=request.remote_addr or "")
        if result.interrupted:
            raise UploadError(ErrorKind.BAD_REQUEST,
                              N_("the body ended early; create the upload again"))
    except UploadError as exc:
        _forget(upload_id, area)
        return refusal(exc, with_offset=False)  # the upload is removed again
    return _progress_headers(result.upload)


def _forget(upload_id: str, area: Path) -> None:
    """Remove an upload whose creation failed half-way (it may be gone already)."""
    db.session.rollback()
    upload = db.session.get(Upload, upload_id)
    if upload is None:
        service.data_path(area, upload_id).unlink(missing_ok=True)
        return
    with contextlib.suppress(UploadError):
        service.terminate(db.session, area, upload)


@bp.route("/<upload_id>", methods=["GET"])
def status(upload_id: str):
    """HEAD (tus core): the offset to resume from; GET adds the same as JSON for pages."""
    upload = _own(upload_id)
    offset = service.current_offset(_area(), upload)
    headers = {"Upload-Offset": str(offset), "Upload-Length": str(upload.size),
               **_done_headers(upload)}
    if upload.raw_metadata:
        headers["Upload-Metadata"] = upload.raw_metadata
    response = jsonify(
        id=upload.id, offset=offset, length=upload.size, filename=upload.filename,
        complete=upload.completed_at is not None,
        file_id=int(headers["Upload-File-Id"]) if "Upload-File-Id" in headers else None,
        version=int(headers["Upload-Version"]) if "Upload-Version" in headers else None,
        file_url=headers.get("Upload-File-Url"))
    response.headers.update(headers)
    return response


@bp.route("/<upload_id>", methods=["PATCH"])
def append(upload_id: str):
    """Append the body at Upload-Offset (tus core, checksum); complete the upload at its end."""
    upload = _own(upload_id)
    if not tus.is_offset_stream(request.content_type):
        return tus_error(415, gettext("PATCH bodies must be %(type)s",
                                      type=tus.OFFSET_CONTENT_TYPE))
    try:
        offset = tus.parse_size(request.headers.get("Upload-Offset"), "Upload-Offset")
        checksum = tus.parse_checksum(request.headers.get("Upload-Checksum"))
    except tus.TusHeaderError as exc:
        return tus_error(400, words(exc))
    try:
        result = service.append(
            db.session, get_storage(), _area(), upload, _user(), request.stream, offset=offset,
            content_length=request.content_length, checksum=checksum,
            client_ip=request.remote_addr or "")
    except UploadError as exc:
        return refusal(exc)
    headers = _progress_headers(result.upload)
    if result.interrupted:
        return tus_error(400, gettext("the body ended early; the bytes that arrived are "
                                      "kept, send HEAD for the offset to resume from"), headers)
    return Response(status=204, headers=headers)


@bp.route("/<upload_id>", methods=["DELETE"])
def terminate(upload_id: str):
    """Abandon an upload and free its bytes (tus termination)."""
    upload = _own(upload_id)
    try:
        service.terminate(db.session, _area(), upload)
    except UploadError as exc:
        return refusal(exc)
    return Response(status=204)


@bp.route("/<upload_id>", methods=["POST"])
def method_override(upload_id: str):
    """POST with X-HTTP-Method-Override: PATCH or DELETE, for clients that cannot send them."""
    method = request.headers.get("X-HTTP-Method-Override", "").strip().upper()
    if method == "PATCH":
        return append(upload_id)
    if method == "DELETE":
        return terminate(upload_id)
    abort(405)
