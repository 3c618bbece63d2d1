"""Download views: thin adapters over the download plan (plan.py).

Each reads its request into plan facts and a principal, gives the plan a reader of the
metadata (readers.py), and answers with the plan's response (respond.py) or its refusal.
"""

from __future__ import annotations

from flask import (
    Response,
    abort,
    current_app,
    jsonify,
    render_template,
    request,
    session,
)
from flask_login import current_user, login_required

from .. import cache
from ..auth.tokens import parse_token
from ..auth.users import session_user
from ..catalog.service import readable_file
from ..catalog.views import refuse
from ..coherence import coherence
from ..config import settings
from ..extensions import db
from ..models import File, FileVersion
from ..security import bad_request, json_object
from ..storage import get_storage
from ..urls import absolute_url
from . import bp, links
from .body import can_sendfile
from .limit_store import settings_in_force
from .plan import Principal, Refused, RequestFacts, plan, version_number
from .readers import StoreReader
from .respond import response_for


def json_version(value: object) -> str:
    """A JSON body's "version" (a whole number >= 1, or a string of its digits) in the form
    of ?version=N; 400 JSON for anything else (true, 1.5, "abc", 0, null)."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return str(value)
    if isinstance(value, str) and value.isascii() and value.isdigit() and value.strip("0"):
        return value
    bad_request("version must be a whole number from 1")


def pick_version(file: File, raw: str | None) -> FileVersion:
    """?version=N or the current one; 404 for a number that does not exist or is pending
    (links are for published versions: a pending one may be discarded, its number reused)."""
    try:
        number = version_number(raw)
    except ValueError:
        abort(404)
    version = file.current if number is None else file.version(number)
    if version is None or not version.published:
        abort(404)
    return version


def request_facts(version: str | None = None) -> RequestFacts:
    """The plan's facts of this request."""
    return RequestFacts(method=request.method, headers=request.headers, version=version,
                        client_ip=request.remote_addr or "",
                        user_agent=request.headers.get("User-Agent") or "",
                        referrer=request.headers.get("Referer"),
                        zero_copy=can_sendfile(request.environ))


def session_principal(reader: StoreReader, token) -> Principal:
    """Who this session is: its token's user, by the rule every door applies
    (users.session_user), read through the download's reader. Where Flask-Login's own rules
    decide -- a remember-me cookie without a session user, "strong" session protection --
    Flask-Login is asked (current_user). ``token``: the session's, parsed already."""
    config = settings()
    raw = session.get("_user_id")
    remember = raw is None and config.remember_cookie_name in request.cookies
    if config.session_protection == "strong" or remember:
        return Principal(current_user._get_current_object()
                         if current_user.is_authenticated else None)
    if raw is None:
        return Principal()
    return Principal(session_user(token, reader.user, lifetime=config.session_lifetime_seconds,
                                  revoked=coherence().revoked))


@bp.route("/files/<id:file_id>/download", methods=["GET", "HEAD"])
def download(file_id: int):
    """The bytes of the current (or ?version=N) version, for a user allowed to read them.
    Warm, everything comes from the metadata cache in one round trip to Redis, or none."""
    raw = request.args.get("version")
    try:
        number = version_number(raw)
    except ValueError:
        abort(404)
    token = parse_token(session.get("_user_id"))
    reader = StoreReader.prefetching(
        db.session, get_storage(), file_id, user_id=None if token is None else token.user_id,
        version_key=None if number is None else cache.version_key_by_number(file_id, number))
    answer = plan(request_facts(raw), session_principal(reader, token), reader,
                  settings_in_force(), file_id)
    if isinstance(answer.delivery, Refused):
        return refuse() if answer.delivery.why == "unreadable" else abort(404)
    return response_for(answer, reader.storage)


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
    url = absolute_url("download.by_link", token=token, name=version.original_filename)
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
    link's revocation, its user (active, same session generation), the access rule and the
    version, from the worker's confirmed view of the database and the metadata cache."""
    config = current_app.config
    try:
        claims = links.verify(config["SECRET_KEY"], config["LINK_TTL_SECONDS"], token)
    except links.LinkError as exc:
        return bad_link(str(exc))
    reader = StoreReader.prefetching(db.session, get_storage(), claims.file_id,
                                     user_id=claims.user_id,
                                     version_key=cache.version_key_by_id(claims.version_id))
    answer = plan(request_facts(), Principal(link=claims), reader, settings_in_force(),
                  claims.file_id)
    if isinstance(answer.delivery, Refused):
        return bad_link("revoked")
    return response_for(answer, reader.storage)


def bad_link(reason: str):
    """403 with a short page saying how to get a new link."""
    if request.method == "HEAD":
        return Response(status=403)
    return render_template("download/bad_link.html", reason=reason), 403
