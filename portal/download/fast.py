"""The warm download, answered in front of Flask (a WSGI middleware around the app).

Why: under gunicorn, Flask's request context, its cookie session and Flask-Login's user
loading took about 40 % of a warm signed-in download's time (py-spy on both workers under
wrk, bench/run_download_bench.py), more than the download itself. So this door does only
what must run before Flask -- verify the session cookie with Flask's own serializer and
resolve the principal by the rule every door applies (auth/users.session_user) -- and then
asks the same plan as the views (plan.py), through a reader that holds only this worker's
coherent copies or one round trip to Redis. It answers when the plan is the plain one:

- ``GET /files/<id>/download`` with no query string: a 200 or a single-range 206 sent with
  sendfile from local storage (SendFile), where the request would not change the session
  (no remember-me cookie to honour, the session is not permanent, no "strong" session
  protection, which is Flask-Login's to judge);
- nginx's grant (``PORTAL_SENDFILE=x-accel``, grant.py), for a file or a signed link: the
  same plain plan, where nginx would judge the request exactly as the plan did.

Everything else -- what the copies and Redis do not hold, a refusal, 304 / 412 / 416, HEAD,
multi-range, ``?version=N``, signed links outside a grant, S3, Redis down -- goes to the
Flask view, which answers from the same plan: tests/functional/test_plan_doors.py checks
that the doors answer with the same status, headers and bytes. ``PORTAL_FAST_DOWNLOADS=0``
switches this door off.
"""

from __future__ import annotations

import logging
import re
import time
from functools import lru_cache

from itsdangerous import BadSignature
from werkzeug.http import HTTP_STATUS_CODES, parse_cookie

from .. import cache
from ..access import is_public
from ..analytics import recorder as analytics
from ..auth.tokens import parse_token
from ..auth.users import SnapshotUser, session_user
from ..config import settings
from . import grant, limits, people
from .body import TrackedFile, can_sendfile
from .limit_store import settings_in_force
from .plan import NotAtHand, Principal, RequestFacts, SendFile, plan

log = logging.getLogger(__name__)

_PATH = re.compile(r"/files/([0-9]{1,9})/download")

#: Set in the environ by the lean request cycle (portal/worker.py): a request this door does
#: not answer is then not handed to Flask here but returned as DECLINED, and the worker gives
#: it to gunicorn's own cycle, which calls the whole app again.
LEAN = "portal.lean"
DECLINED: list[bytes] = []

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
        app.extensions["portal_fast_door"] = self

    def enabled(self) -> bool:
        """False when PORTAL_FAST_DOWNLOADS=0: the view answers every download."""
        return bool(settings(self.app).fast_downloads)

    def __call__(self, environ, start_response):
        if environ.get("REQUEST_METHOD") == "GET":
            path = environ.get("PATH_INFO", "")
            answer = None
            try:
                if (match := _PATH.fullmatch(path)) is not None:
                    answer = self.answer(environ, int(match.group(1)))
                elif path.startswith(grant.PREFIX):
                    answer = grant.answer(self, environ, path)
            except Exception:  # never worse than the view: it answers instead
                log.exception("fast download path failed; the view answers")
                answer = grant.refusal(self.app) if path.startswith(grant.PREFIX) else None
            if answer is not None:
                status, headers, body = answer
                start_response(status, headers)
                return body
        if LEAN in environ:
            return DECLINED  # portal/worker.py hands the request to gunicorn's cycle
        return self.wsgi_app(environ, start_response)

    def answer(self, environ: dict, file_id: int):
        """(status, headers, body) for a warm download, or None for the view to answer."""
        if (settings(self.app).sendfile != "direct" or environ.get("QUERY_STRING")
                or not can_sendfile(environ)):
            return None
        planned = self.plan(environ, file_id, zero_copy=True)
        if planned is None or not isinstance(planned.delivery, SendFile):
            return None
        delivery = planned.delivery
        try:
            tracked = TrackedFile(delivery.path, delivery.start,
                                  delivery.stop - delivery.start, None)
        except OSError:
            return None  # the view logs it and answers 503
        planned, lease = limits.admit(self.app, planned, settings_in_force(self.app))
        if planned is None:
            tracked.close()
            status, headers, body = people.refusal(lease)
            return _status_line(status), headers, [body]
        record = analytics.open_event(self.app, analytics.event_row(**planned.event))
        if lease is not None:
            record, tracked.pacer = lease.on_close(record), lease.pacer
        tracked.on_close = record
        self.served += 1
        # What Flask adds to the view's response: Vary, because the session was read.
        headers = [*planned.headers, ("Vary", "Cookie")]
        return _status_line(planned.status), headers, environ["wsgi.file_wrapper"](
            tracked, 1024 * 1024)

    def plan(self, environ: dict, file_id: int, *, method: str | None = None,
             zero_copy: bool = False, direct: bool = False, link=None):
        """The download plan from this worker's copies (or one round trip to Redis), None
        when the view must decide (see the module's docstring). ``link``: a signed link's
        verified claims stand for the principal instead of the session."""
        app = self.app
        config = settings(app)
        copies = app.extensions.get("portal_local_copies")
        if (copies is None or not config.fast_downloads or config.cache_hot_local
                or not config.cache_users or config.remember_cookie_refresh_each_request):
            return None
        co = app.extensions["portal_coherence"]
        if not co.current():
            return None  # the view decides from the database
        token = None
        if link is None:
            session = self.session(environ)
            if session is None:
                return None
            raw = session.get("_user_id")
            token = None if raw is None else parse_token(raw)
            if raw is not None and token is None:
                return None
            user_id = None if token is None else token.user_id
        elif co.revoked(link.nonce):
            return None
        else:
            user_id = link.user_id
        keys = {"meta": cache.meta_key(file_id, co.prefix)}
        if user_id is not None:
            keys["user"] = cache.user_key(user_id, co.prefix)
        if link is not None:
            keys["version"] = cache.version_key_by_id(link.version_id, co.prefix)
        replies = cache.read_keys(copies, app.extensions["portal_redis"], list(keys.values()))
        if replies is None:
            return None
        reader = WarmReader(self, co, dict(zip(keys, zip(keys.values(), replies, strict=True),
                                               strict=True)),
                            app.extensions["portal_storage"])
        facts = RequestFacts.from_environ(environ, method=method, zero_copy=zero_copy or direct)
        try:
            if link is not None:
                principal = Principal(link=link)
            elif token is None:
                principal = Principal()
            else:
                principal = Principal(session_user(
                    token, reader.user, lifetime=config.session_lifetime_seconds,
                    revoked=co.revoked))
                if principal.user is None:
                    return None  # the view decides (and Flask-Login, should it sign out)
            return plan(facts, principal, reader, settings_in_force(app), file_id,
                        sendfile="direct" if direct else None)
        except NotAtHand:
            return None

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
        # applied to downloads; "strong" is Flask-Login's to judge, in the view.
        config = settings(app)
        if config.session_protection == "strong" and data:
            return None
        if not data.get("_user_id"):
            # Flask-Login would try the remember-me cookie (and write the session)
            return None if config.remember_cookie_name in cookies else data
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

    def decoded(self, key: str, raw, decode):
        """``decode(raw)``, remembered while the local copies hand out the same value."""
        held = self._decoded.get(key)
        if held is not None and held[0] is raw:
            return held[1]
        value = decode(raw)
        if len(self._decoded) >= _MEMO_LIMIT:
            self._decoded.clear()
        self._decoded[key] = (raw, value)
        return value


class WarmReader:
    """plan.Reader over what one read of the worker's copies (or Redis) returned, as
    ``{"meta" | "user" | "version": (key, raw)}``: anything else is NotAtHand, and the view
    answers."""

    presigns = False

    def __init__(self, door: FastDownloads, co, replies: dict, storage) -> None:
        self.door, self.co, self.replies, self.storage = door, co, replies, storage

    def _decoded(self, kind: str, decode):
        if kind not in self.replies:
            raise NotAtHand
        key, raw = self.replies[kind]
        return self.door.decoded(key, raw, decode)

    def current(self, file_id: int):
        """The file and its current version, if the entry is still valid (judged on every
        use: the change log may have moved since it was decoded)."""
        entry = self._decoded("meta", cache.decode_meta)
        if (entry is None or entry[2] is cache.MISSING
                or not self.co.valid(f"file:{file_id}", entry[1])):
            raise NotAtHand
        found = entry[2]
        if is_public(found[0]):
            cache.remember_public(self.door.app, file_id, found)
        return found

    def version(self, file_id: int, *, number=None, version_id=None, fresh=False):
        """A signed link's version (versions never change); ``?version=N`` and anything to
        be read fresh (a pending version) are the view's."""
        if version_id is None or fresh:
            raise NotAtHand
        version = self._decoded("version", cache.decode_version)
        if version is None or version.id != version_id:
            raise NotAtHand
        return version

    def user(self, user_id: int):
        """The active user, if the entry is still valid."""
        held = self._decoded("user", _snapshot_user)
        if held is None or not self.co.valid(f"user:{user_id}", held[1]):
            raise NotAtHand
        user = held[0]
        return user if user.id == user_id and user.is_active else None

    def local_path(self, storage_key: str) -> str | None:
        """The object's local file."""
        return self.storage.local_path(storage_key)


def _snapshot_user(raw) -> tuple[SnapshotUser, object] | None:
    """(user, stamp) of a user entry, None when it is absent or unreadable."""
    entry = cache.decode_user(raw)
    if entry is None:
        return None
    try:
        return SnapshotUser(entry[0]), entry[1]
    except KeyError:
        return None


def _status_line(status: int) -> str:
    return f"{status} {HTTP_STATUS_CODES[status].upper()}"


@lru_cache(maxsize=1024)
def _cookies(header: str) -> dict[str, str]:
    """The first value of each cookie, as Flask's request.cookies.get gives it."""
    parsed = parse_cookie(header)
    return {name: parsed.get(name) for name in parsed}
