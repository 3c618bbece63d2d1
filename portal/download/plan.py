"""One download, decided: what to answer, how the bytes go out, and what is recorded.

Every door a download comes in by is an adapter over :func:`plan`: the Flask views
(views.py: ``/files/<id>/download`` and signed links ``/d/<token>``), the WSGI fast path
(fast.py) and nginx's grant (grant.py); the zip view (zipview.py) has :func:`plan_zip`. Nothing
here imports Flask or reads a request, a session or ``flask.g``: an adapter hands in the
request's facts, who asks (a signed-in user or a signed link's claims), a reader of the
metadata (the worker's copies, Redis, SQL: whatever that door may use) and the app's
Settings, and turns the plan into its own kind of response.

The HTTP semantics themselves (preconditions, ranges, multipart framing, names) are in
the http package; this module decides everything around them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC
from functools import lru_cache
from typing import Any, Protocol

from ..access import can_read, is_public, sees_version
from ..cache.metadata import FileSnapshot, VersionSnapshot
from ..settings import Settings
from ..storage.base import shard_path
from . import http, people, zipplan

#: Preconditions nginx evaluates again with its own rules (against no ETag and the file's
#: mtime), so it could refuse what the portal allowed.
_NGINX_REVALIDATES = ("If-Match", "If-Unmodified-Since")
#: Preconditions S3 would evaluate again against its own ETag and Last-Modified.
_S3_REVALIDATES = ("If-Match", "If-Unmodified-Since", "If-None-Match", "If-Modified-Since")
#: Fields nginx derives from the file and the client's Range: sending the portal's would
#: contradict them. nginx adds Accept-Ranges to a 200 (not to a 206) itself.
_NGINX_OWNS = frozenset({"content-length", "content-range", "content-type"})


# ---------------------------------------------------------------------------
# What goes in
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequestFacts:
    """What a download reads of its request.

    ``headers`` is anything http.evaluate reads fields from (werkzeug's Headers, a mapping,
    or :class:`EnvironFields`); ``version`` is the raw ``?version=`` (None when absent);
    ``zero_copy`` says the server sends a file's exact range with sendfile(2) (gunicorn).
    """

    method: str
    headers: Any
    version: str | None = None
    client_ip: str = ""
    user_agent: str = ""
    referrer: str | None = None
    zero_copy: bool = False

    @classmethod
    def from_environ(cls, environ: dict, *, method: str | None = None,
                     version: str | None = None, zero_copy: bool = False) -> RequestFacts:
        """The facts of a WSGI request (``method`` overrides it: nginx's original method)."""
        return cls(method=method or environ.get("REQUEST_METHOD", "GET"),
                   headers=EnvironFields(environ), version=version,
                   client_ip=environ.get("REMOTE_ADDR") or "",
                   user_agent=environ.get("HTTP_USER_AGENT") or "",
                   referrer=environ.get("HTTP_REFERER"), zero_copy=zero_copy)

    def header(self, name: str) -> str | None:
        """One field's value as the server joined it, None when absent."""
        return http.field(self.headers, name)


class EnvironFields:
    """A WSGI environ's header fields for http.evaluate (read straight from the environ)."""

    __slots__ = ("environ",)

    def __init__(self, environ: dict) -> None:
        self.environ = environ


@dataclass(frozen=True, slots=True)
class Principal:
    """Who asks: a signed-in user (None: anonymous), or a signed link's claims."""

    user: Any = None  # a User or SnapshotUser: what can_read reads
    link: Any = None  # links.LinkClaims

    @property
    def user_id(self) -> int | None:
        """The user the download is recorded for."""
        return None if self.user is None else self.user.id


class Reader(Protocol):
    """Where a door reads the metadata of a download from.

    Each method may raise :class:`NotAtHand` when this door must not answer from what it
    has (the fast path only uses the worker's copies and Redis; the view then answers).
    """

    def current(self, file_id: int) -> tuple[FileSnapshot, VersionSnapshot | None] | None:
        """The file and its current version, File.current (None: no such file)."""

    def version(self, file_id: int, *, number: int | None = None,
                version_id: int | None = None, fresh: bool = False) -> VersionSnapshot | None:
        """Version ``number`` of the file, or the version with this id; ``fresh``: from the
        database itself (a pending version)."""

    def user(self, user_id: int) -> Any:
        """The active user with this id (a signed link's), None when there is none."""

    def local_path(self, storage_key: str) -> str | None:
        """The object's file on local disk, None for a remote origin."""

    @property
    def presigns(self) -> bool:
        """True when the storage hands out presigned URLs (S3)."""


class NotAtHand(Exception):
    """The door's reader lacks something the plan needs: another door answers."""


# ---------------------------------------------------------------------------
# What comes out
# ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Refused:
    """No download: ``why`` is "unreadable" (no such file, or not this principal's),
    "no-version" (no such version of a readable file) or "revoked" (a link's user)."""

    why: str


@dataclass(frozen=True, slots=True)
class Bodiless:
    """304, 412 or 416: the status line and headers, and this short body."""

    body: str
    mimetype: str | None


@dataclass(frozen=True, slots=True)
class HeadOnly:
    """HEAD: the headers GET would send, no body."""


@dataclass(frozen=True, slots=True)
class SendFile:
    """Bytes ``start``-``stop`` of a local file, zero-copy by the server."""

    path: str
    start: int
    stop: int


@dataclass(frozen=True, slots=True)
class Stream:
    """Bytes read by the portal (from the hot-file cache or the origin): one span, or the
    multipart body of several. ``path`` is the local file, if any."""

    spans: tuple[tuple[int, int], ...]
    multipart: http.MultipartPlan | None
    path: str | None


@dataclass(frozen=True, slots=True)
class Archive:
    """The bytes of a zip of several files (zipplan.iter_range over their stored objects):
    one span, or the multipart body of several."""

    zip: zipplan.ZipPlan
    spans: tuple[tuple[int, int], ...]
    multipart: http.MultipartPlan | None
    storage_keys: tuple[str, ...]
    sizes: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class XAccel:
    """nginx sends the file from its internal location (the plan's headers go with it)."""

    uri: str


@dataclass(frozen=True, slots=True)
class Redirect:
    """302 to a presigned S3 URL for the object, unless the hot-file cache holds the bytes
    (then they are streamed with the plan's headers)."""

    storage_key: str
    disposition: str
    content_type: str
    span: tuple[int, int]


@dataclass(frozen=True, slots=True)
class DownloadPlan:
    """The answer: status, headers, how the bytes go out, and the event to record (the
    keyword arguments of analytics' ``event_row``; None when nothing is sent)."""

    status: int
    headers: list[tuple[str, str]]
    delivery: Refused | Bodiless | HeadOnly | SendFile | Stream | Archive | XAccel | Redirect
    version: VersionSnapshot | None = None
    event: dict | None = None
    # Whose connections this download counts against, and their limit (limits.py admits
    # it); None when nothing is sent.
    person: Any = None


# ---------------------------------------------------------------------------
# The plan
# ---------------------------------------------------------------------------


def plan(facts: RequestFacts, principal: Principal, reader: Reader, settings: Settings,
         file_id: int, *, sendfile: str | None = None) -> DownloadPlan:
    """Everything about one GET or HEAD of a file: authorised, evaluated (RFC 9110), headed,
    and the delivery chosen. A signed link's claims pin the version and its user, who must
    still be active and of the same session generation. ``sendfile`` overrides the setting
    of that name (nginx's grant plans what the direct door would send)."""
    claims = principal.link
    if claims is not None:
        user = reader.user(claims.user_id)
        if user is None or user.session_gen != claims.generation:
            return _refused("revoked")
        principal = Principal(user=user, link=claims)
        number = None
    else:
        try:
            number = version_number(facts.version)
        except ValueError:
            return _refused("no-version")
    found = reader.current(file_id)
    if found is None or not can_read(principal.user, found[0]):
        return _refused("unreadable")
    file, version = found
    if claims is not None:
        version = reader.version(file_id, version_id=claims.version_id)
        if version is not None and version.number in file.pending:
            version = None  # links are minted for published versions only
    elif number is not None:
        version = numbered_version(reader, principal.user, file, version, number)
    if version is None or version.file_id != file_id:
        return _refused("no-version")

    rep = representation(version)
    # A pending version is its managers' alone: no shared cache may keep it.
    decision, headers, early = answer_headers(
        facts.method, facts.headers, rep,
        public=is_public(file) and version.number not in file.pending,
        max_ranges=settings.max_ranges)
    if early is not None:
        return DownloadPlan(decision.status, headers, early, version=version)
    headers += representation_headers(version, full=decision.status == 200)
    multipart = _typed(decision, rep, headers)
    if not decision.send_body:
        return DownloadPlan(decision.status, headers, HeadOnly(), version=version)

    event = event_facts(facts, principal, version, decision)
    person = people.person_of(principal.user, facts.client_ip, settings)
    spans = decision.ranges if decision.status == 206 else ((0, version.size),)
    path = reader.local_path(version.storage_key)
    mode = sendfile or settings.sendfile
    if mode == "x-accel" and path is not None and nginx_agrees(decision, facts):
        owned = _NGINX_OWNS if decision.status == 206 else _NGINX_OWNS | {"accept-ranges"}
        kept = [(k, v) for k, v in headers if k.lower() not in owned]
        uri = f"{settings.x_accel_prefix.rstrip('/')}/{shard_path(version.storage_key)}"
        kept += [("Content-Type", version.mime_type), ("X-Accel-Redirect", uri)]
        return DownloadPlan(200, kept, XAccel(uri), version=version, event=event,
                            person=person)
    if (settings.s3_delivery == "redirect" and path is None and reader.presigns
            and not http.is_active_content(version.mime_type) and s3_agrees(decision, facts)):
        delivery = Redirect(version.storage_key,
                            http.content_disposition(version.original_filename),
                            version.mime_type, spans[0])
        return DownloadPlan(decision.status, headers, delivery, version=version, event=event,
                            person=person)
    if (path is not None and facts.zero_copy and multipart is None
            and not settings.cache_hot_local):
        start, stop = spans[0]
        return DownloadPlan(decision.status, headers, SendFile(path, start, stop),
                            version=version, event=event, person=person)
    return DownloadPlan(decision.status, headers, Stream(spans, multipart, path),
                        version=version, event=event, person=person)


def numbered_version(reader: Reader, user, file: FileSnapshot,
                     current: VersionSnapshot | None, number: int) -> VersionSnapshot | None:
    """``?version=N`` as this user may have it, None when they may not (or it does not
    exist). A pending version is read from the database itself: it may be discarded and its
    number given to the next upload, so no cache may keep it. A published version is never
    deleted, so any cache may; past the current one there is none (published)."""
    if not sees_version(user, file, number):
        return None
    if number in file.pending:
        return reader.version(file.id, number=number, fresh=True)
    if current is None or number > current.number:
        return None
    return reader.version(file.id, number=number)


def plan_zip(facts: RequestFacts, files, settings: Settings, *, user=None) -> DownloadPlan:
    """One STORED zip of the current versions of these files (all readable by the caller,
    ``user``, in this order), with the same HTTP semantics as a single download: a strong ETag from
    the members' content, Last-Modified of the newest, Range (a resumed zip reads only the
    members the range covers) and the caching policy of the least public member."""
    versions = [file.current for file in files]
    archive = zipplan.plan_zip([
        zipplan.ZipMember(name=v.original_filename, size=v.size, crc32=v.crc32,
                          mtime=v.created_at, key=v.storage_key) for v in versions])
    last_modified = max(v.created_at for v in versions).astimezone(UTC).replace(microsecond=0)
    rep = http.Representation(size=archive.size, etag=archive.etag, last_modified=last_modified,
                              content_type="application/zip")
    decision, headers, early = answer_headers(
        facts.method, facts.headers, rep, public=all(is_public(f) for f in files),
        max_ranges=settings.max_ranges)
    if early is not None:
        return DownloadPlan(decision.status, headers, early)
    headers.append(("Content-Disposition",
                    http.content_disposition(archive_filename(files, last_modified))))
    multipart = _typed(decision, rep, headers)
    if not decision.send_body:
        return DownloadPlan(decision.status, headers, HeadOnly())
    spans = decision.ranges if decision.status == 206 else ((0, archive.size),)
    delivery = Archive(archive, spans, multipart, tuple(v.storage_key for v in versions),
                       tuple(v.size for v in versions))
    return DownloadPlan(decision.status, headers, delivery,
                        person=people.person_of(user, facts.client_ip, settings))


def _typed(decision: http.Decision, rep: http.Representation,
           headers: list) -> http.MultipartPlan | None:
    """Add Content-Type: the representation's, or for several ranges multipart/byteranges
    with the framing's Content-Length; the framing (None for one part)."""
    if not decision.is_multipart:
        headers.append(("Content-Type", rep.content_type))
        return None
    multipart = http.multipart_plan(decision.ranges, rep, http.new_boundary())
    headers += [("Content-Type", multipart.content_type),
                ("Content-Length", str(multipart.content_length))]
    return multipart


def archive_filename(files, last_modified) -> str:
    """``<category>-YYYYMMDD.zip`` when all files share one category, else
    ``portal-files-YYYYMMDD.zip``; the date is the newest version's (UTC), so the name is the
    same on every request for the same archive."""
    categories = {f.category for f in files}
    prefix = categories.pop() if len(categories) == 1 else ""
    prefix = prefix.replace("/", "-").replace("\\", "-").strip() or "portal-files"
    return f"{prefix}-{last_modified.astimezone(UTC):%Y%m%d}.zip"


def _refused(why: str) -> DownloadPlan:
    return DownloadPlan(404, [], Refused(why))


def answer_headers(method: str, headers, rep: http.Representation, *, public: bool,
                   max_ranges: int):
    """(decision, headers, early delivery) for a representation: http.evaluate's answer,
    the caching and no-sniff policy every download shares, and for 304 / 412 / 416 the
    whole (bodiless) answer, else None (plan and plan_zip)."""
    decision = http.evaluate(method, headers, rep, max_ranges=max_ranges)
    out = list(decision.headers)
    out.append(("Cache-Control", "public, max-age=0, must-revalidate" if public
                else "private, max-age=0, must-revalidate"))
    out.append(("X-Content-Type-Options", "nosniff"))
    early = None
    if decision.status == 304:
        early = Bodiless("", None)
    elif decision.status == 412:
        early = Bodiless("Precondition Failed\n", "text/plain")
    elif decision.status == 416:
        early = Bodiless("Range Not Satisfiable\n", "text/plain")
    return decision, out, early


@lru_cache(maxsize=4096)  # versions never change; this is asked on every download
def representation(version: VersionSnapshot) -> http.Representation:
    """The HTTP view of a stored version: size, strong ETag from its hash, Last-Modified."""
    return http.Representation(
        size=version.size,
        etag=http.strong_etag(version.sha256),
        last_modified=version.created_at.astimezone(UTC).replace(microsecond=0),
        content_type=version.mime_type,
    )


def representation_headers(version: VersionSnapshot, *, full: bool) -> list[tuple[str, str]]:
    """What a 200 or 206 adds before its Content-Type: the file name, the sandbox for
    active content, and on a full response the digest."""
    headers = [("Content-Disposition", http.content_disposition(version.original_filename))]
    if http.is_active_content(version.mime_type):
        headers.append(("Content-Security-Policy", "sandbox; default-src 'none'"))
    if full:
        headers.append(("Repr-Digest", http.repr_digest(version.sha256)))
    return headers


def version_number(raw: str | None) -> int | None:
    """The N of ?version=N, None when absent; ValueError for anything but a plain number."""
    if raw is None:
        return None
    if not (raw.isascii() and raw.isdigit() and len(raw) < 9):
        raise ValueError(f"not a version number: {raw[:20]!r}")
    return int(raw)


def event_facts(facts: RequestFacts, principal: Principal, version: VersionSnapshot,
                decision: http.Decision) -> dict:
    """The keyword arguments of analytics' event_row for this download."""
    nonce = principal.link.nonce if principal.link is not None else None
    return dict(
        file_id=version.file_id, version_id=version.id, size=version.size,
        user_id=principal.user_id, via_link=nonce is not None, method=facts.method,
        status=decision.status, range_header=facts.header("Range") or "",
        served=list(decision.ranges) if decision.status == 206 else [(0, version.size)],
        client_ip=facts.client_ip, user_agent=facts.user_agent, referrer=facts.referrer,
        link_id=nonce[:32] if nonce else None)


def nginx_agrees(decision: http.Decision, facts: RequestFacts) -> bool:
    """True when nginx, given this request, would send what the portal decided (x-accel).

    nginx evaluates If-Match and If-Unmodified-Since again before its add_header runs, i.e.
    against no ETag at all and the file's mtime, and parses Range with its own policy, which
    may answer 206 where the portal chose 200 (an invalid or abusive Range). The portal
    sends those rare requests itself.
    """
    if any(facts.header(name) is not None for name in _NGINX_REVALIDATES):
        return False
    return not (decision.status == 200 and facts.header("Range") is not None)


def s3_agrees(decision: http.Decision, facts: RequestFacts) -> bool:
    """True when S3, given this request after the redirect, would send what the portal
    decided (docs/s3.md).

    The client repeats its Range and conditionals to S3, which judges them against its own
    validators: so a request with any of them, or with an If-Range the portal honoured (the
    portal's ETag or date, which S3 would not match), is answered by the portal. An If-Range
    the portal did not honour goes to S3 only as an entity tag (S3 resumes when it is S3's
    own ETag, else sends everything). Only one plain byte range is redirected: S3 serves one
    range per GET (rclone answers several with 501).
    """
    if any(facts.header(name) is not None for name in _S3_REVALIDATES):
        return False
    spec = facts.header("Range")
    if spec is None:
        return True  # a bare If-Range is ignored by both
    if not http.is_single_byte_range(spec):
        return False
    if_range = facts.header("If-Range")
    if if_range is None:
        return decision.status == 206
    return decision.status == 200 and if_range.strip().startswith('"')
