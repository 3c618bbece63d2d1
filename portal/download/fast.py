"""The warm download, answered in front of Flask (a WSGI middleware around the app).

Why by hand: under gunicorn, Flask's request context, its cookie session and Flask-Login's
user loading took about 40 % of a warm signed-in download's time (py-spy on both workers
under wrk, bench/run_download_bench.py), more than the download view itself. No library
offers a cheaper way into that machinery. This path serves ``GET /files/<id>/download``
(no query string) with the view's own parts -- http.evaluate, views.common_headers,
views.representation_headers, views.event_row_of, can_read, the analytics journal -- and
only when every input is already at hand and the answer is the plain one:

- this worker's coherent copies (cache.LocalCopies), or Redis in one round trip, hold the
  file's metadata and the user (what only the database has is left to the view);
- the session cookie verifies with Flask's own serializer (a verified cookie is remembered
  with its timestamp, so the age limit still applies) and the request would not change it:
  no remember-me cookie to honour, the session is not permanent, and (only under "strong"
  session protection) the client is the one that signed in;
- the session's token is not revoked or expired and the user's session generation matches
  (portal/auth/tokens.py), all confirmed against the database's change log (coherence.py);
- the user is active and can_read() allows the file (a public file needs no session);
- the answer is a 200 or a single-range 206 sent with sendfile from local storage.

Everything else -- what Redis does not hold yet, a refusal, 304 / 412 / 416, HEAD, multi-range,
``?version=N``, signed links, S3, x-accel, Redis down -- goes to the Flask view, which stays
the reference: tests/functional/test_fast_downloads.py checks that both answer with the same
status, headers and bytes. ``PORTAL_FAST_DOWNLOADS=0`` switches this path off.
"""

from __future__ import annotations

import logging
import re
import time
from functools import lru_cache
from hashlib import sha512
from typing import NamedTuple

from itsdangerous import BadSignature
from werkzeug.http import HTTP_STATUS_CODES, parse_cookie

from .. import cache
from ..access import can_read
from ..analytics import recorder as analytics
from ..auth.tokens import parse_token
from ..auth.views import SnapshotUser
from ..cache import FileSnapshot, VersionSnapshot
from . import http
from .body import TrackedFile, can_sendfile
from .views import common_headers, event_row_of, representation, representation_headers

log = logging.getLogger(__name__)

_PATH = re.compile(r"/files/([0-9]{1,9})/download")
_GRANT_PATH = re.compile(r"/_portal/grant/files/([0-9]{1,9})/download")
#: Preconditions nginx evaluates again with its own rules: requests with them are not granted.
_NGINX_JUDGES = ("HTTP_IF_MATCH", "HTTP_IF_NONE_MATCH", "HTTP_IF_MODIFIED_SINCE",
                 "HTTP_IF_UNMODIFIED_SINCE")
#: One byte range nginx parses as the view does (no spaces, no overflow, lower-case unit).
_PLAIN_RANGE = re.compile(r"bytes=(?:[0-9]{1,15}-[0-9]{0,15}|-[0-9]{1,15})")

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
#: Verified session cookies and decoded cache entries kept per worker (then started afresh).
_MEMO_LIMIT = 10_000


class FastDownloads:
    """``app.wsgi_app``: answers the warm downloads itself, hands everything else on."""

    def __init__(self, app, wsgi_app) -> None:
        self.app = app
        self.wsgi_app = wsgi_app
        self.served = 0  # downloads this path answered (tests)
        self._sessions: dict[str, tuple[dict, float]] = {}
        self._decoded: dict[str, tuple] = {}

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "GET":
            path = environ.get("PATH_INFO", "")
            answer = None
            try:
                if (match := _PATH.fullmatch(path)) is not None:
                    answer = self.answer(environ, int(match.group(1)))
                elif (match := _GRANT_PATH.fullmatch(path)) is not None:
                    answer = self.grant(environ, int(match.group(1)))
            except Exception:  # never worse than the view: it answers instead
                log.exception("fast download path failed; the view answers")
                answer = self.refer() if _GRANT_PATH.fullmatch(path) else None
            if answer is not None:
                status, headers, body = answer
                start_response(status, headers)
                return body
        return self.wsgi_app(environ, start_response)

    def answer(self, environ: dict, file_id: int):
        """(status, headers, body) for a warm download, or None for the view to answer."""
        app = self.app
        if (app.config["SENDFILE"] != "direct" or environ.get("QUERY_STRING")
                or not can_sendfile(environ)):
            return None
        warm = self.authorise(environ, file_id)
        if warm is None:
            return None
        decision = warm.decision
        if decision.status == 200:
            start, stop = 0, warm.version.size
        elif decision.status == 206 and len(decision.ranges) == 1:
            start, stop = decision.ranges[0]
        else:
            return None
        headers = common_headers(decision, public=warm.file.access == "public")
        headers += representation_headers(warm.version, full=decision.status == 200)
        # What the view's Response adds: the type, and Vary because the session was read.
        headers += [("Content-Type", warm.version.mime_type), ("Vary", "Cookie")]
        try:
            tracked = TrackedFile(warm.path, start, stop - start, None)
        except OSError:
            return None  # the view logs it and answers 503
        row = event_row_of(warm.version, warm.user_id, None, decision, environ)
        tracked.on_close = analytics.open_event(app, row)
        self.served += 1
        status = f"{decision.status} {HTTP_STATUS_CODES[decision.status].upper()}"
        return status, headers, environ["wsgi.file_wrapper"](tracked, 1024 * 1024)

    def grant(self, environ: dict, file_id: int):
        """nginx's cached authorisation (PORTAL_SENDFILE=x-accel, deploy/nginx.conf): 200 with
        what nginx needs to send the file itself -- the object's internal URI, the headers
        the view would send, and for its log who downloaded which version -- or 403 when the
        portal must answer this request itself (nginx then passes it on).

        nginx repeats the client's method, cookies, User-Agent, Range and conditional
        headers here (X-Original-Method), keeps a 200 for NGINX_GRANT_SECONDS per all of
        those (X-Accel-Expires), and answers the client with its own static handler. So a
        grant is given only where nginx's answer is exactly the view's: a GET without the
        conditional headers nginx would judge on its own (If-Match, If-None-Match,
        If-Modified-Since, If-Unmodified-Since), with no Range or one plain byte range that
        the view serves as a 206, an If-Range that is absent or an entity tag (nginx
        compares it with the same ETag), and a media type nginx can be told
        (GRANT_EXTENSIONS). The rest goes to the view, which sends it with X-Accel-Redirect.
        """
        app = self.app
        if app.config["SENDFILE"] != "x-accel":
            return None  # no such route in direct mode: the view's 404
        refuse = self.refer()
        if (not app.config.get("ANALYTICS_NGINX_LOG")  # nginx's downloads would go unrecorded
                or environ.get("QUERY_STRING")  # ?version=N
                or environ.get("HTTP_X_ORIGINAL_METHOD") != "GET"
                or any(name in environ for name in _NGINX_JUDGES)):
            return refuse
        spec = environ.get("HTTP_RANGE")
        if spec is not None and _PLAIN_RANGE.fullmatch(spec) is None:
            return refuse
        if_range = environ.get("HTTP_IF_RANGE")
        if if_range is not None and not if_range.startswith('"'):
            return refuse
        warm = self.authorise(environ, file_id)
        if warm is None:
            return refuse
        decision, version = warm.decision, warm.version
        # nginx sends the whole file for no Range or an If-Range other than its (the
        # portal's) ETag, else the range: the portal must have decided the same.
        whole = spec is None or (if_range is not None and if_range != f'"{warm.rep.etag}"')
        if decision.status != (200 if whole else 206):
            return refuse
        extension = GRANT_EXTENSIONS.get(version.mime_type)
        if extension is None:
            return refuse
        key = version.storage_key
        fields = dict(common_headers(decision, public=warm.file.access == "public"))
        fields.update(representation_headers(version, full=decision.status == 200))
        user = "-" if warm.user_id is None else str(warm.user_id)
        headers = [
            ("X-Portal-Object", f"{GRANT_OBJECTS}/{key[:2]}/{key[2:4]}/{key}.{extension}"),
            ("X-Portal-ETag", fields["ETag"]),
            ("X-Portal-Last-Modified", fields["Last-Modified"]),
            ("X-Portal-Cache-Control", fields["Cache-Control"]),
            ("X-Portal-Disposition", fields["Content-Disposition"]),
            ("X-Portal-CSP", fields.get("Content-Security-Policy", "")),
            ("X-Portal-Digest", fields.get("Repr-Digest", "")),
            # nginx adds Accept-Ranges to a 200 itself, not to a 206 (the view's 206 has it)
            ("X-Portal-Accept-Ranges", "bytes" if decision.status == 206 else ""),
            ("X-Portal-Grant", f"{user} {version.file_id} {version.id} {version.size}"),
            ("X-Accel-Expires", str(int(app.config["NGINX_GRANT_SECONDS"]))),
            ("Content-Length", "0"),
        ]
        return "200 OK", headers, [b""]

    def refer(self):
        """The grant's refusal (403): nginx passes the request on to the portal's view.

        Kept by nginx as long as a grant, like one: when a right is revoked, the refusal
        replaces the grant in nginx's cache at its next refresh. (An uncached refusal would
        leave the expired grant in place, and nginx answers the requests that arrive while
        each refresh is under way from it: proxy_cache_use_stale updating.) So a refusal
        must be rare where a grant is due: what the worker's copies lack comes from Redis
        (authorise), only a cold Redis leaves a request to the view for that second."""
        seconds = str(int(self.app.config["NGINX_GRANT_SECONDS"]))
        return "403 FORBIDDEN", [("X-Accel-Expires", seconds), ("Content-Length", "0")], [b""]

    def authorise(self, environ: dict, file_id: int) -> _Warm | None:
        """The newest version of the file, the user and the evaluated request, when all of it
        comes from this worker's copies and the answer would be the view's 200 / 206 of a
        local file; None when the view must answer (see the module's docstring)."""
        app = self.app
        config = app.config
        copies = app.extensions.get("portal_local_copies")
        if (copies is None or not config["FAST_DOWNLOADS"] or config["CACHE_HOT_LOCAL"]
                or not config["CACHE_USERS"]
                or config.get("REMEMBER_COOKIE_REFRESH_EACH_REQUEST")):
            return None
        co = app.extensions["portal_coherence"]
        session = self.session(environ)
        if session is None or not co.current():
            return None  # the view decides from the database
        token = None
        keys = [cache.meta_key(file_id, co.prefix)]
        if session.get("_user_id") is not None:
            token = parse_token(session["_user_id"])
            if (token is None or token.expired(config["SESSION_LIFETIME_SECONDS"])
                    or co.revoked(token.nonce)):
                return None
            keys += cache.user_keys(token.user_id, co.prefix)
        replies = cache.read_keys(copies, app.extensions["portal_redis"], keys)
        if replies is None:
            return None
        found = self._decode(keys[0], replies[:1], _meta)
        # judged on every use: the change log may have moved since it was decoded
        if found is None or not co.valid(f"file:{file_id}", found[3]):
            return None
        file, version, rep, _ = found
        if file.access == "public":
            cache.remember_public(app, file_id, (file, version))
        user = None
        if token is not None:
            held = self._decode(keys[1], replies[1:], _user)
            if (held is None or not co.valid(f"user:{token.user_id}", held[1])
                    or not held[0].is_active or held[0].session_gen != token.generation):
                return None
            user = held[0]
        if version is None or not can_read(user, file):
            return None
        path = app.extensions["portal_storage"].local_path(version.storage_key)
        if path is None:
            return None
        decision = http.evaluate("GET", _Fields(environ), rep,
                                 max_ranges=config.get("MAX_RANGES", 64))
        if decision.status not in (200, 206):
            return None
        return _Warm(file, version, rep, None if user is None else user.id, decision, path)

    def session(self, environ: dict) -> dict | None:
        """The session Flask would open for this request, if handling it would not change
        the session; {} for none; None when the view must answer."""
        app = self.app
        cookies = _cookies(environ.get("HTTP_COOKIE", ""))
        raw = cookies.get(app.config["SESSION_COOKIE_NAME"])
        data = self._verified(raw) if raw else {}
        if data is None:
            return None
        # Flask-Login's session protection (extensions.PortalLoginManager): "basic" is not
        # applied to downloads; "strong" ends a session that another client presents.
        mode = app.config.get("SESSION_PROTECTION", app.login_manager.session_protection)
        if mode == "strong" and data and data.get("_id") != _identifier(
                environ.get("HTTP_X_FORWARDED_FOR"), environ.get("REMOTE_ADDR"),
                environ.get("HTTP_USER_AGENT")):
            return None
        if not data.get("_user_id"):
            # Flask-Login would try the remember-me cookie (and write the session)
            remember = app.config.get("REMEMBER_COOKIE_NAME", "remember_token")
            return None if remember in cookies else data
        if "_remember" in data or data.get("_permanent"):
            return None  # Flask or Flask-Login would set a cookie
        return data

    def _verified(self, raw: str) -> dict | None:
        """The payload of a session cookie Flask would accept now, else None."""
        app = self.app
        max_age = int(app.permanent_session_lifetime.total_seconds())
        held = self._sessions.get(raw)
        if held is None or time.time() - held[1] > max_age:
            serializer = app.session_interface.get_signing_serializer(app)
            if serializer is None:
                return None
            try:
                data, signed_at = serializer.loads(raw, max_age=max_age, return_timestamp=True)
            except BadSignature:
                return None
            if not isinstance(data, dict):
                return None
            if len(self._sessions) >= _MEMO_LIMIT:
                self._sessions.clear()
            held = self._sessions[raw] = (data, signed_at.timestamp())
        return held[0]

    def _decode(self, key: str, raws: list, decode):
        """``decode(raws)``, remembered while the local copies hand out the same values."""
        held = self._decoded.get(key)
        if held is not None and len(held[0]) == len(raws) and all(
                a is b for a, b in zip(held[0], raws, strict=True)):
            return held[1]
        value = decode(raws)
        if len(self._decoded) >= _MEMO_LIMIT:
            self._decoded.clear()
        self._decoded[key] = (tuple(raws), value)
        return value


class _Warm(NamedTuple):
    """What authorise found: everything a 200 or 206 of a local file needs."""

    file: FileSnapshot
    version: VersionSnapshot
    rep: http.Representation
    user_id: int | None
    decision: http.Decision
    path: str


class _Fields:
    """The request's header fields for http.evaluate, read straight from the environ."""

    __slots__ = ("environ",)

    def __init__(self, environ: dict) -> None:
        self.environ = environ


def _meta(raws: list):
    """(file, newest version, its representation, stamp) of a metadata entry, None when it
    is absent, unreadable or a cached absence (the view answers those)."""
    entry = cache.decode_meta(raws[0])
    if entry is None or entry[2] is cache.MISSING:
        return None
    _, stamp, (file, version) = entry
    return file, version, representation(version) if version is not None else None, stamp


def _user(raws: list) -> tuple[SnapshotUser, object] | None:
    """(user, stamp) of a user entry, None when it is absent or unreadable."""
    entry = cache.decode_user(raws[0])
    if entry is None:
        return None
    try:
        return SnapshotUser(entry[0]), entry[1]
    except KeyError:
        return None


@lru_cache(maxsize=1024)
def _cookies(header: str) -> dict[str, str]:
    """The first value of each cookie, as Flask's request.cookies.get gives it."""
    parsed = parse_cookie(header)
    return {name: parsed.get(name) for name in parsed}


@lru_cache(maxsize=4096)
def _identifier(forwarded: str | None, remote_addr: str | None, user_agent: str | None) -> str:
    """Flask-Login's session identifier (utils._create_identifier) for these request values:
    the SHA-512 of the first X-Forwarded-For address (else the peer) and the User-Agent,
    each formatted as Python bytes. tests/unit/test_fast_identifier.py compares the two."""
    address = forwarded if forwarded is not None else remote_addr
    if address is not None:
        address = address.encode("utf-8").split(b",")[0].strip()
    agent = user_agent.encode("utf-8") if user_agent is not None else None
    return sha512(f"{address}|{agent}".encode()).hexdigest()
