"""Download views: authorise, evaluate the HTTP semantics (http.py), answer.

The protocol decisions are all in http.py; this module only turns a readable file version
into a Representation, asks http.evaluate what to send, and builds the response body.
"""

from __future__ import annotations

import logging
from datetime import UTC

from flask import (
    Response,
    abort,
    current_app,
    jsonify,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, login_required

from .. import cache
from ..analytics import recorder as analytics
from ..auth.tokens import parse_token
from ..auth.views import user_by_id
from ..cache import FileSnapshot, VersionSnapshot
from ..catalog.service import readable_file, readable_version
from ..catalog.views import refuse
from ..extensions import db
from ..models import File, FileVersion
from ..security import bad_request, json_object
from ..storage import StorageError, get_storage
from . import bp, http, links
from .body import CountedBody, TrackedFile, can_sendfile

log = logging.getLogger(__name__)


def representation(version: VersionSnapshot) -> http.Representation:
    """The HTTP view of a stored version: size, strong ETag from its hash, Last-Modified."""
    return http.Representation(
        size=version.size,
        etag=http.strong_etag(version.sha256),
        last_modified=version.created_at.astimezone(UTC).replace(microsecond=0),
        content_type=version.mime_type,
    )


def version_number(raw: str | None) -> int | None:
    """The N of ?version=N (None when absent); 404 for anything but a plain number."""
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) < 9):
        abort(404)
    return int(raw)


def json_version(value: object) -> str:
    """A JSON body's "version" (a whole number >= 1, or a string of its digits) in the form
    of ?version=N; 400 JSON for anything else (true, 1.5, "abc", 0, null)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return str(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and value.strip("0"):
        return value
    bad_request("version must be a whole number from 1")


def pick_version(file: File, raw: str | None) -> FileVersion:
    """?version=N or the newest; 404 for a number that does not exist."""
    number = version_number(raw)
    version = file.latest if number is None else file.version(number)
    if version is None:
        abort(404)
    return version


def _event_recorder(version: VersionSnapshot, user_id: int | None, link_nonce: str | None,
                    decision: http.Decision):
    """A callback that records one download event when the body closes (portal/analytics:
    journaled now, written to SQL in batches), using only values captured now (no request,
    no session inside the callback)."""
    row = event_row_of(version, user_id, link_nonce, decision, request.environ)
    return analytics.open_event(current_app._get_current_object(), row)


def event_row_of(version: VersionSnapshot, user_id: int | None, link_nonce: str | None,
                 decision: http.Decision, environ: dict) -> dict:
    """The start record of one download, from the WSGI environ (the Flask view and the
    fast path, fast.py, record the same row)."""
    status = decision.status
    return analytics.event_row(
        file_id=version.file_id, version_id=version.id, size=version.size, user_id=user_id,
        via_link=link_nonce is not None, method=environ["REQUEST_METHOD"], status=status,
        range_header=environ.get("HTTP_RANGE") or "",
        served=list(decision.ranges) if status == 206 else [(0, version.size)],
        client_ip=environ.get("REMOTE_ADDR") or "", user_agent=environ.get("HTTP_USER_AGENT") or "",
        referrer=environ.get("HTTP_REFERER"), link_id=link_nonce[:32] if link_nonce else None)


def common_headers(decision: http.Decision, *, public: bool) -> list[tuple[str, str]]:
    """The evaluated headers plus the caching and no-sniff policy every download shares."""
    headers = list(decision.headers)
    headers.append(("Cache-Control", "public, max-age=0, must-revalidate" if public
                    else "private, max-age=0, must-revalidate"))
    headers.append(("X-Content-Type-Options", "nosniff"))
    return headers


def representation_headers(version: VersionSnapshot, *, full: bool) -> list[tuple[str, str]]:
    """What a 200 or 206 adds to common_headers, before its Content-Type: the file name, the
    sandbox for active content, and on a full response the digest."""
    headers = [("Content-Disposition", http.content_disposition(version.original_filename))]
    if http.is_active_content(version.mime_type):
        headers.append(("Content-Security-Policy", "sandbox; default-src 'none'"))
    if full:
        headers.append(("Repr-Digest", http.repr_digest(version.sha256)))
    return headers


def bodiless_response(decision: http.Decision, headers: list) -> Response | None:
    """The whole answer for 304, 412 and 416; None when the representation is to be sent."""
    if decision.status in (304, 412):
        body = "" if decision.status == 304 else "Precondition Failed\n"
        return Response(body, status=decision.status, headers=headers,
                        mimetype=None if decision.status == 304 else "text/plain")
    if decision.status == 416:
        return Response("Range Not Satisfiable\n", status=416, headers=headers,
                        mimetype="text/plain")
    return None


def serve_version(file: FileSnapshot, version: VersionSnapshot, *, user_id: int | None,
                  link_nonce: str | None = None) -> Response:
    """Answer GET or HEAD for one version with full RFC 9110 semantics."""
    rep = representation(version)
    decision = http.evaluate(request.method, request.headers, rep,
                             max_ranges=current_app.config.get("MAX_RANGES", 64))
    headers = common_headers(decision, public=file.access == "public")
    early = bodiless_response(decision, headers)
    if early is not None:
        return early
    headers += representation_headers(version, full=decision.status == 200)

    storage = get_storage()
    path = storage.local_path(version.storage_key)
    multipart = decision.status == 206 and len(decision.ranges) > 1
    if multipart:
        plan = http.multipart_plan(decision.ranges, rep, http.new_boundary())
        headers += [("Content-Type", plan.content_type),
                    ("Content-Length", str(plan.content_length))]
    else:
        headers.append(("Content-Type", version.mime_type))

    if not decision.send_body:  # HEAD: the headers GET would send, no body
        # No body argument: Response(b"") would overwrite Content-Length with 0.
        return Response(status=decision.status, headers=headers)

    record = _event_recorder(version, user_id, link_nonce, decision)
    if (current_app.config["SENDFILE"] == "x-accel" and path is not None
            and _nginx_agrees(decision, request.headers)):
        return _x_accel(version, decision, headers, record)
    if current_app.config["S3_DELIVERY"] == "redirect" and path is None:
        redirected = _presigned_redirect(storage, version, decision, headers, record)
        if redirected is not None:
            return redirected

    # Local files go zero-copy through the server's file_wrapper when it sends exactly
    # Content-Length bytes (gunicorn); otherwise the backend (or the hot-file cache in
    # Redis, for a popular version of a remote origin) streams the ranges.
    planned = (sum(b - a for a, b in decision.ranges) if decision.status == 206 else rep.size)
    try:
        read_range = cache.range_reader(storage, version, local=path is not None,
                                        planned_bytes=planned)
        if read_range.cached:
            record.served_from = "cache"
        if multipart:
            body = CountedBody(http.iter_multipart(plan, read_range), record)
        else:
            start, stop = decision.ranges[0] if decision.status == 206 else (0, rep.size)
            if path is not None and can_sendfile(request.environ) and not read_range.cached:
                tracked = TrackedFile(path, start, stop - start, record)
                body = request.environ["wsgi.file_wrapper"](tracked, 1024 * 1024)
            else:
                body = CountedBody(read_range(start, stop), record)
    except (OSError, StorageError):
        log.exception("stored content missing for version %s", version.id)
        abort(503)
    response = Response(body, status=decision.status, headers=headers, direct_passthrough=True)
    return response


def _x_accel(version: VersionSnapshot, decision: http.Decision, headers: list,
             record) -> Response:
    """Hand the bytes to nginx: the portal has authorised the user and evaluated every
    precondition (http.evaluate); nginx then sends the file from its internal location and
    answers the Range itself (deploy/nginx.conf).

    nginx's static handler computes Content-Length, Content-Range and the multipart framing
    from the file and the client's Range, so those are left out here. It keeps Content-Type,
    Content-Disposition, Cache-Control and Accept-Ranges from this response and drops the
    rest; the internal location adds ETag, Last-Modified and the security headers back from
    ``$upstream_http_*``. Its own validators (an mtime-size ETag, the file's mtime) are
    switched off there, so clients only ever see the portal's strong content-hash ETag, and
    nginx's If-Range check compares against that same ETag (or the portal's Last-Modified).
    Requests nginx would judge differently never get here (see ``_nginx_agrees``).
    """
    prefix = current_app.config["X_ACCEL_PREFIX"].rstrip("/")
    key = version.storage_key
    owned = _NGINX_OWNS if decision.status == 206 else _NGINX_OWNS | {"accept-ranges"}
    kept = [(k, v) for k, v in headers if k.lower() not in owned]
    kept += [("Content-Type", version.mime_type),
             ("X-Accel-Redirect", f"{prefix}/{key[:2]}/{key[2:4]}/{key}"),
             # nginx logs it with the bytes it really sent (ANALYTICS_NGINX_LOG)
             ("X-Portal-Event", record.row["event_key"])]
    record.served_from = "nginx"
    record(-1)
    return Response(status=200, headers=kept)


#: Fields nginx derives from the file and the client's Range: sending the portal's would
#: contradict them. Accept-Ranges is added by nginx's range filter to a 200 (not to a 206),
#: so the portal's copy is kept for a 206 only.
_NGINX_OWNS = frozenset({"content-length", "content-range", "content-type"})


def _nginx_agrees(decision: http.Decision, headers) -> bool:
    """True when nginx, given this request, would send what the portal decided.

    nginx evaluates If-Match and If-Unmodified-Since again before its add_header runs, i.e.
    against no ETag at all and the file's mtime, so it could refuse what the portal allowed;
    and it parses Range with its own policy, which may answer 206 where the portal chose 200
    (an invalid or abusive Range). Those rare requests are answered by the portal itself
    (gunicorn sends the bytes, nginx only proxies them).
    """
    if "If-Match" in headers or "If-Unmodified-Since" in headers:
        return False
    return not (decision.status == 200 and "Range" in headers)


def _presigned_redirect(storage, version: VersionSnapshot, decision: http.Decision,
                        headers: list,
                        record) -> Response | None:
    """PORTAL_S3_DELIVERY=redirect: answer 302 to a short-lived presigned S3 URL, or None
    when the portal sends the bytes itself.

    The portal has authorised the user and answered 304, 412 and 416 already; the URL
    carries the portal's Content-Disposition (RFC 8187 for non-ASCII names) and
    Content-Type as S3 ``response-content-*`` overrides, and the redirect itself must not be
    cached (``private, no-store``: the URL is a bearer credential that expires). The client
    then sees S3's ETag and Last-Modified, not the portal's (docs/s3.md). The portal keeps
    what S3 would judge differently (``_s3_agrees``), active content (sent with the sandbox
    CSP), and a version the hot-file cache holds (Redis beats a round trip to S3); the
    request is counted for the cache's admission as in proxy mode.
    """
    presign = getattr(storage, "presigned_get", None)
    if (presign is None or http.is_active_content(version.mime_type)
            or not _s3_agrees(decision, request.headers)):
        return None
    start, stop = decision.ranges[0] if decision.status == 206 else (0, version.size)
    try:
        read_range = cache.range_reader(storage, version, local=False,
                                        planned_bytes=stop - start)
        if read_range.cached:
            record.served_from = "cache"
            return Response(CountedBody(read_range(start, stop), record), status=decision.status,
                            headers=headers, direct_passthrough=True)
        url = presign(version.storage_key,
                      filename_header=http.content_disposition(version.original_filename),
                      content_type=version.mime_type,
                      expires=current_app.config["S3_PRESIGN_SECONDS"])
    except (OSError, StorageError):
        log.exception("cannot serve version %s from S3", version.id)
        abort(503)
    record.served_from = "s3"
    record(-1)  # S3 sends the bytes; the planned ranges count as delivered (docs/analytics.md)
    return Response(status=302, headers=[("Location", url),
                                         ("Cache-Control", "private, no-store")])


#: Preconditions S3 would evaluate again against its own ETag and Last-Modified.
_S3_REVALIDATES = ("If-Match", "If-Unmodified-Since", "If-None-Match", "If-Modified-Since")


def _s3_agrees(decision: http.Decision, headers) -> bool:
    """True when S3, given this request after the redirect, would send what the portal decided.

    The client repeats its Range and conditional headers to S3, which judges them against its
    own validators: so a request with If-Match, If-Unmodified-Since, If-None-Match or
    If-Modified-Since, or with an If-Range the portal honoured (the portal's ETag or date, which
    S3 would not match), is answered by the portal. An If-Range the portal did not honour goes
    to S3 only as an entity tag (S3 resumes when it is S3's own ETag, else sends everything);
    a date could match S3's older object time. Only one well-formed byte range is redirected:
    S3 serves one range per GET (rclone answers several with 501), so the portal builds
    multipart/byteranges itself.
    """
    if any(name in headers for name in _S3_REVALIDATES):
        return False
    spec = headers.get("Range")
    if spec is None:
        return True  # a bare If-Range is ignored by both
    if not _single_byte_range(spec):
        return False
    if_range = headers.get("If-Range")
    if if_range is None:
        return decision.status == 206
    return decision.status == 200 and if_range.strip().startswith('"')


def _single_byte_range(value: str) -> bool:
    """True for ``bytes=A-``, ``bytes=A-B`` or ``bytes=-N`` (ASCII digits, one range)."""
    unit, _, spec = value.strip().partition("=")
    first, dash, last = spec.strip().partition("-")
    if unit.strip().lower() != "bytes" or not dash:
        return False

    def digits(text: str) -> bool:
        return text.isascii() and text.isdigit()

    return (digits(first) and (last == "" or digits(last))) or (first == "" and digits(last))


@bp.route("/files/<id:file_id>/download", methods=["GET", "HEAD"])
def download(file_id: int):
    """The bytes of the newest (or ?version=N) version, for a user allowed to read them.

    Everything it needs (the file's metadata, the signed-in user, an older version) comes
    from the metadata cache in one round trip to Redis, or none when warm; no SQL.
    """
    number = version_number(request.args.get("version"))
    token = parse_token(session.get("_user_id"))
    cache.prefetch_download(  # before the user loader runs: it reads the prefetched snapshot
        None if token is None else token.user_id, file_id,
        version_key=None if number is None else cache.version_key_by_number(file_id, number))
    found = readable_version(db.session, current_user, file_id, number=number)
    if found is None:
        return refuse()
    file, version = found
    if version is None:
        abort(404)
    user_id = current_user.id if current_user.is_authenticated else None
    return serve_version(file, version, user_id=user_id)


@bp.route("/api/files/<id:file_id>/links", methods=["POST"])
@login_required
def mint_link(file_id: int):
    """A signed, expiring URL for wget, curl, aria2c and download managers."""
    payload = json_object()
    file = readable_file(db.session, current_user, file_id)
    if file is None:
        abort(404)
    version = pick_version(file, json_version(payload["version"]) if "version" in payload else
                           request.args.get("version"))
    token, expires = links.mint(current_app.config["SECRET_KEY"],
                                current_app.config["LINK_TTL_SECONDS"],
                                user_id=current_user.id, file_id=file.id, version_id=version.id,
                                generation=current_user.session_gen)
    url = url_for("download.by_link", token=token, name=version.original_filename,
                  _external=True)
    return jsonify(url=url, expires_at=expires.isoformat().replace("+00:00", "Z"),
                   version=version.number, filename=version.original_filename,
                   size=version.size, sha256=version.sha256), 201


@bp.route("/api/links/revoke", methods=["POST"])
@login_required
def revoke_link():
    """Withdraw a signed link (JSON {"url": ...}) before it expires: its owner or an admin."""
    url = str(json_object().get("url", ""))
    token = url.split("/d/", 1)[1].split("/", 1)[0] if "/d/" in url else ""
    config = current_app.config
    try:
        claims = links.verify(config["SECRET_KEY"], config["LINK_TTL_SECONDS"], token)
    except links.LinkError as exc:
        return jsonify(error=f"link {exc}"), 400 if str(exc) == "invalid" else 200
    if claims.user_id != current_user.id and not current_user.is_admin:
        abort(404)
    links.revoke(db.session, claims, config["LINK_TTL_SECONDS"])
    db.session.commit()
    return jsonify(revoked=True)


@bp.route("/d/<token>", methods=["GET", "HEAD"])
@bp.route("/d/<token>/<path:name>", methods=["GET", "HEAD"])
def by_link(token: str, name: str | None = None):
    """The bytes behind a signed link: same semantics as /files/<id>/download, no cookie.

    Checked on every request (a download manager's 16 connections each make one): the
    link's revocation, the user (still active, same session generation), the access rule
    and the version, all from the worker's confirmed view of the database and the metadata
    cache in one round trip to Redis, or none when warm.
    """
    config = current_app.config
    try:
        claims = links.verify(config["SECRET_KEY"], config["LINK_TTL_SECONDS"], token)
    except links.LinkError as exc:
        return bad_link(str(exc))
    cache.prefetch_download(claims.user_id, claims.file_id,
                            version_key=cache.version_key_by_id(claims.version_id))
    # None once disabled, and a password change or "sign out everywhere" ends their links
    user = user_by_id(claims.user_id, blueprint="download")
    if user is None or user.session_gen != claims.generation:
        return bad_link("revoked")
    found = readable_version(db.session, user, claims.file_id, version_id=claims.version_id)
    if found is None or found[1] is None:
        return bad_link("revoked")
    return serve_version(found[0], found[1], user_id=user.id, link_nonce=claims.nonce)


def bad_link(reason: str):
    """403 with a short page saying how to get a new link."""
    if request.method == "HEAD":
        return Response(status=403)
    return render_template("download/bad_link.html", reason=reason), 403

