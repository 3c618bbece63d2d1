"""nginx's grant (``PORTAL_SENDFILE=x-accel``, deploy/nginx.conf): a door in front of Flask.

nginx asks ``/_portal/grant/files/<id>/download`` or ``/_portal/grant/d/<token>[/<name>]``
(an auth_request subrequest, cached for NGINX_GRANT_SECONDS) before every download, and
repeats the client's method, cookies, User-Agent, Range and conditional headers. The portal
answers 200 with what nginx needs to send the file itself -- the object's internal URI, the
headers the view would send, and for its log who downloaded which version (and by which
link) -- or 403 when the portal must answer this request itself (nginx then passes it on).

The plan is the fast path's (fast.py: the session or the link, the worker's copies); this
module only judges whether nginx would carry it out exactly. So a grant is given only where
nginx's answer is exactly the plan's: a GET without the conditional headers nginx would
judge on its own (If-Match, If-None-Match, If-Modified-Since, If-Unmodified-Since), with no
Range or one plain byte range that the plan serves as a 206, an If-Range that is absent or
an entity tag (nginx compares it with the same ETag), and a media type nginx can be told
(GRANT_EXTENSIONS). The rest goes to the view, which sends it with X-Accel-Redirect.
"""

from __future__ import annotations

import re

from ..config import settings
from ..storage.base import shard_path
from . import http, limits, links
from .limit_store import settings_in_force
from .plan import SendFile

PREFIX = "/_portal/grant/"
_FILE = re.compile(r"/_portal/grant/files/([0-9]{1,9})/download")
#: A signed link's grant: /_portal/grant/d/<token>[/<name>] (the name is the client's).
_LINK = re.compile(r"/_portal/grant/d/([A-Za-z0-9_.-]+)(?:/.*)?", re.DOTALL)
#: Preconditions nginx evaluates again with its own rules: requests with them are not granted.
_NGINX_JUDGES = ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE",
                 "HTTP_IF_UNMODIFIED_SINCE")

#: The internal location of deploy/nginx.conf that sends granted objects.
GRANT_OBJECTS = "/_portal/objects"
#: The media types nginx can send for a grant, each by the extension that selects it in the
#: ``types`` block of deploy/nginx.conf's object location (nginx takes Content-Type from the
#: URI's extension only; tests/unit/test_nginx_conf.py checks both lists agree). Other
#: types go through the view.
GRANT_EXTENSIONS = {
    "application/octet-stream": "bin",
    "application/pdf": "pdf",
    "application/zip": "zip",
    "application/x-7z-compressed": "7z",
    "application/x-tar": "tar",
    "application/gzip": "gz",
    "application/x-rar-compressed": "rar",
    "application/msword": "doc",
    "application/vnd.ms-excel": "xls",
    "application/vnd.ms-powerpoint": "ppt",
    "application/vnd.openxmlformats-officedocument.wordprocessingml.document": "docx",
    "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": "xlsx",
    "application/vnd.openxmlformats-officedocument.presentationml.presentation": "pptx",
    "application/vnd.oasis.opendocument.text": "odt",
    "application/vnd.oasis.opendocument.spreadsheet": "ods",
    "application/vnd.oasis.opendocument.presentation": "odp",
    "application/epub+zip": "epub",
    "application/json": "json",
    "text/plain": "txt",
    "text/csv": "csv",
    "text/markdown": "md",
    "text/calendar": "ics",
    "text/html": "html",
    "image/png": "png",
    "image/jpeg": "jpg",
    "image/gif": "gif",
    "image/webp": "webp",
    "image/svg+xml": "svg",
    "audio/mpeg": "mp3",
    "audio/mp4": "m4a",
    "audio/x-wav": "wav",
    "video/mp4": "mp4",
    "video/webm": "webm",
    "video/x-matroska": "mkv",
    "video/quicktime": "mov",
}


def answer(door, environ: dict, path: str):
    """(status, headers, body) of the grant for this subrequest; None where there is no
    such route (direct mode, or another path under the prefix: the view's 404)."""
    config = settings(door.app)
    if config.sendfile != "x-accel":
        return None
    if (match := _FILE.fullmatch(path)) is not None:
        return _grant(door, environ, int(match.group(1)), None)
    if (match := _LINK.fullmatch(path)) is not None:
        return _grant(door, environ, None, match.group(1))
    return None


def _grant(door, environ: dict, file_id: int | None, link_token: str | None):
    config = settings(door.app)
    refuse = refusal(door.app)
    if (not config.analytics_nginx_log  # nginx's downloads would go unrecorded
            or environ.get("QUERY_STRING")  # ?version=N
            or environ.get("HTTP_X_ORIGINAL_METHOD") != "GET"
            or any(name in environ for name in _NGINX_JUDGES)):
        return refuse
    spec = environ.get("HTTP_RANGE")
    if spec is not None and not http.is_plain_byte_range(spec):
        return refuse
    if_range = environ.get("HTTP_IF_RANGE")
    if if_range is not None and not if_range.startswith('"'):
        return refuse
    link = None
    if link_token is not None:
        try:
            link = links.verify_signature(door.app.config["SECRET_KEY"],
                                          config.link_ttl_seconds, link_token)
        except links.LinkError:
            return refuse
        file_id = link.file_id
    # Planned as the direct door would send it: nginx's own rules are judged here.
    planned = door.plan(environ, file_id, method="GET", direct=True, link=link)
    if planned is None or not isinstance(planned.delivery, SendFile):
        return refuse
    if limits.counts(planned, settings_in_force(door.app)):
        # nginx would send it unseen: the view counts the connection and hands nginx the
        # person's rate (X-Accel-Limit-Rate), or refuses it (limits.py). Not cached by
        # nginx: the proxy_cache_key holds no user, and a grant is reused for a second.
        return refuse
    version, fields = planned.version, dict(planned.headers)
    # nginx sends the whole file for no Range or an If-Range other than its (the
    # portal's) ETag, else the range: the plan must have decided the same.
    whole = spec is None or (if_range is not None and if_range != fields["ETag"])
    extension = GRANT_EXTENSIONS.get(version.mime_type)
    if planned.status != (200 if whole else 206) or extension is None:
        return refuse
    user = "-" if planned.event["user_id"] is None else str(planned.event["user_id"])
    who = f"{user} {version.file_id} {version.id} {version.size}"
    headers = [
        ("X-Portal-Object", f"{GRANT_OBJECTS}/{shard_path(version.storage_key)}.{extension}"),
        ("X-Portal-ETag", fields["ETag"]),
        ("X-Portal-Last-Modified", fields["Last-Modified"]),
        ("X-Portal-Cache-Control", fields["Cache-Control"]),
        ("X-Portal-Disposition", fields["Content-Disposition"]),
        ("X-Portal-CSP", fields.get("Content-Security-Policy", "")),
        ("X-Portal-Digest", fields.get("Repr-Digest", "")),
        # nginx adds Accept-Ranges to a 200 itself, not to a 206 (the view's 206 has it)
        ("X-Portal-Accept-Ranges", "bytes" if planned.status == 206 else ""),
        ("X-Portal-Grant", who if link is None else f"{who} {planned.event['link_id']}"),
        ("X-Accel-Expires", str(config.nginx_grant_seconds)),
        ("Content-Length", "0"),
    ]
    return "200 OK", headers, [b""]


def refusal(app):
    """The grant's refusal (403): nginx passes the request on to the portal's view.

    Kept by nginx as long as a grant, like one: when a right is revoked, the refusal
    replaces the grant in nginx's cache at its next refresh. (An uncached refusal would
    leave the expired grant in place, and nginx answers the requests that arrive while
    each refresh is under way from it: proxy_cache_use_stale updating.) So a refusal
    must be rare where a grant is due: what the worker's copies lack comes from Redis
    (fast.WarmReader), only a cold Redis leaves a request to the view for that second."""
    seconds = str(settings(app).nginx_grant_seconds)
    return "403 FORBIDDEN", [("X-Accel-Expires", seconds), ("Content-Length", "0")], [b""]
