"""Login and logout views."""

from __future__ import annotations

from datetime import UTC, datetime
from urllib.parse import urlsplit

from flask import (
    current_app,
    flash,
    g,
    jsonify,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext as _
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy import select
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.util import identity_key
from werkzeug.exceptions import TooManyRequests

from .. import cache
from ..audit import audit
from ..coherence import coherence
from ..extensions import db, login_manager
from ..models import RevokedToken, Roles, User
from . import bp, throttle
from .forms import LoginForm, PasswordChangeForm
from .tokens import new_token, parse_token

# A real hash to check against when the user does not exist, so that an unknown user and a
# wrong password cost the same time.
_DUMMY_HASH = None


@login_manager.user_loader
def load_user(token: str) -> User | None:
    """The signed-in user for a session token (tokens.py): None when the token is malformed,
    expired, revoked (logout), of an older session generation (password change, "sign out
    everywhere") or the user is disabled. Revocations are decided by the database
    (coherence.py); a warm request reads them from this worker's confirmed copy, no SQL."""
    parsed = parse_token(token)
    if parsed is None or parsed.expired(current_app.config["SESSION_LIFETIME_SECONDS"]):
        return None
    if coherence().revoked(parsed.nonce):
        return None
    user = user_by_id(parsed.user_id, blueprint=request.blueprint)
    if user is None or user.session_gen != parsed.generation:
        return None
    user.session_token = str(parsed)
    return user


def user_by_id(user_id: int, *, blueprint: str | None = None) -> User | SnapshotUser | None:
    """The active user with this id, from the user cache (portal/cache/users.py, judged against the
    database's change log), so a request costs no SQL for it; columns the snapshot leaves
    out (the password hash) and the groups relationship still load from the database when
    something touches them."""
    snap = cache.user_snapshot(user_id, lambda: _user_row(user_id))
    if snap is None or not snap["active"]:
        return None
    return _attach(snap, blueprint)


#: The User columns a snapshot carries: everything except the password hash.
_SNAPSHOT_COLUMNS = ("id", "username", "display_name", "role", "active", "session_gen")


def _user_row(user_id: int) -> dict | None:
    """A user's snapshot from the database (cache.user_snapshot stores it)."""
    user = db.session.get(User, user_id)
    if user is None:
        return None
    return {**{name: getattr(user, name) for name in _SNAPSHOT_COLUMNS},
            "created_at": user.created_at.isoformat(), "groups": sorted(user.group_names)}


def _attach(snap: dict, blueprint: str | None) -> User | SnapshotUser:
    """A persistent User in this request's session built from a snapshot, without SQL.

    make_transient_to_detached marks what the snapshot lacks as expired, so those
    attributes load from the database on first use, as after any commit.

    Downloads (the ``download`` blueprint) read nothing of the user beyond the snapshot
    (can_read, the event's user id), so they get a plain SnapshotUser and never open a
    database session: the session and the ORM object were about a seventh of a warm
    signed-in download's time (py-spy, bench/run_download_bench.py).
    """
    if blueprint == "download":
        return SnapshotUser(snap)
    existing = db.session.identity_map.get(identity_key(User, snap["id"]))
    if existing is not None:
        return existing
    user = User(**{name: snap[name] for name in _SNAPSHOT_COLUMNS},
                created_at=datetime.fromisoformat(snap["created_at"]))
    make_transient_to_detached(user)
    user.cached_group_names = frozenset(snap["groups"])
    db.session.add(user)
    return user


class SnapshotUser(Roles):
    """The signed-in user as its cached snapshot has it: the columns can_read and the
    download views use, and the group names. Not an ORM object: nothing loads lazily."""

    def __init__(self, snap: dict) -> None:
        for name in _SNAPSHOT_COLUMNS:
            setattr(self, name, snap[name])
        self._groups = frozenset(snap["groups"])

    @property
    def group_names(self) -> set[str]:
        return set(self._groups)


def sign_in(user: User, *, remember: bool = False) -> None:
    """Start a new session for the user: a fresh token (a new nonce, the user's current
    session generation) and a new CSRF token, so nothing of the session before sign-in
    carries over."""
    session.pop("csrf_token", None)
    g.pop("csrf_token", None)
    user.session_token = str(new_token(user.id, user.session_gen))
    login_user(user, remember=remember)


def end_session(token: str | None) -> None:
    """Revoke this session's token in the database (every worker refuses it within
    COHERENCE_SECONDS, whatever Redis does); the caller commits."""
    parsed = parse_token(token)
    if parsed is None or db.session.get(RevokedToken, parsed.nonce) is not None:
        return
    lifetime = current_app.config["SESSION_LIFETIME_SECONDS"]
    db.session.add(RevokedToken(
        nonce=parsed.nonce, kind="session", user_id=parsed.user_id,
        expires_at=datetime.fromtimestamp(parsed.issued + lifetime, UTC)))


@login_manager.unauthorized_handler
def unauthorized():
    """Browsers go to the login page; API calls get 401 JSON."""
    if request.path.startswith("/api/"):
        return jsonify(error="authentication required"), 401
    return redirect(url_for("auth.login", next=request.full_path.rstrip("?")))


def safe_next(target: str | None) -> str:
    """Only a local path: no scheme, no host, no protocol-relative '//' or backslash tricks."""
    if not target:
        return url_for("catalog.index")
    target = target.strip()
    parts = urlsplit(target)
    if (parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//")
            or "\\" in target or any(ord(c) < 32 for c in target)):
        return url_for("catalog.index")
    return target


def authenticate(username: str, password: str) -> User | None:
    """The active user with this name and password, or None; same work either way."""
    global _DUMMY_HASH
    user = db.session.scalar(select(User).where(User.username == username))
    if user is None or not user.password_hash:
        if _DUMMY_HASH is None:
            probe = User()
            probe.set_password("not-a-real-password")
            _DUMMY_HASH = probe
        _DUMMY_HASH.check_password(password)
        return None
    if not user.check_password(password) or not user.active:
        return None
    return user


def _attempt() -> throttle.Attempt:
    """This sign-in attempt for the throttle: the name typed (existing or not) and the client."""
    return throttle.Attempt(throttle.normalise_account(request.form.get("username")),
                            request.remote_addr or "-")


@bp.route("/login", methods=["GET", "POST"])
def login():
    """Show the sign-in form; on success redirect to ?next= (local paths only).

    Sign-ins are throttled (portal/auth/throttle.py): failures per account and client
    address and per address refuse that address (429 with Retry-After); past the account's
    ceiling over all addresses the password is checked after a delay, never refused.
    """
    form = LoginForm()
    if request.method == "GET" and current_user.is_authenticated:
        return redirect(safe_next(request.args.get("next")))
    status = 200
    if request.method == "POST":
        verdict = throttle.check(_attempt())
        if verdict.retry_after is not None:
            raise TooManyRequests(retry_after=verdict.retry_after)
        # The wait comes before the password check opens a database connection, so a
        # delayed attempt holds none.
        throttle.pause(verdict)
        if form.validate_on_submit():
            user = authenticate(form.username.data, form.password.data)
            ip = request.remote_addr or ""
            if user is not None:
                throttle.succeeded(verdict)
                sign_in(user, remember=bool(form.remember.data))
                audit(db.session, "login.success", actor=user, target=user.username,
                      client_ip=ip)
                db.session.commit()
                return redirect(safe_next(request.args.get("next")))
            audit(db.session, "login.failure", target=form.username.data, client_ip=ip)
            db.session.commit()
            flash(_("Wrong username or password."), "error")
        else:
            flash(_("Please fill in both fields (at most 64 and 256 characters)."), "error")
            status = 400
    return render_template("auth/login.html", form=form), status


@bp.route("/logout", methods=["POST"])
def logout():
    """End this session on the server too: its token is revoked, so the old cookie (and its
    remember-me cookie) is refused everywhere from then on. ``everywhere=1`` ends every
    session of the user (and their signed links)."""
    if current_user.is_authenticated:
        if request.form.get("everywhere") == "1":
            user = db.session.get(User, current_user.id)
            user.end_sessions()
            audit(db.session, "user.signed_out_everywhere", actor=user, target=user.username,
                  client_ip=request.remote_addr or "")
        else:
            end_session(session.get("_user_id"))
        db.session.commit()
    logout_user()
    return redirect(url_for("catalog.index"))


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def change_password():
    """Users change their own password (the current one is asked again)."""
    form = PasswordChangeForm()
    if form.validate_on_submit():
        if not current_user.check_password(form.current.data):
            form.current.errors.append(_("The current password is wrong."))
        else:
            user = current_user._get_current_object()
            user.set_password(form.new.data)  # a new session generation: the others end
            audit(db.session, "user.password_changed", actor=user,
                  target=user.username, client_ip=request.remote_addr or "")
            db.session.commit()
            sign_in(user)  # this session goes on, under the new generation
            flash(_("Your password has been changed."), "info")
            return redirect(url_for("catalog.index"))
    status = 400 if request.method == "POST" else 200
    return render_template("auth/password.html", form=form), status


@bp.route("/lang/<code>", methods=["POST"])
def set_language(code: str):
    """The language switch: remembered in the session."""
    from flask import current_app, session

    if code in current_app.config["LANGUAGES"]:
        session["lang"] = code
    return redirect(safe_next(request.form.get("next") or (request.referrer and
                              urlsplit(request.referrer).path)))
