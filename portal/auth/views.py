"""Login and logout views."""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit

from flask import current_app, flash, jsonify, redirect, render_template, request, url_for
from flask_babel import gettext as _
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy import select
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.util import identity_key

from .. import cache
from ..audit import audit
from ..extensions import db, limiter, login_manager
from ..models import Roles, User
from . import bp
from .forms import LoginForm, PasswordChangeForm

# A real hash to check against when the user does not exist, so that an unknown user and a
# wrong password cost the same time.
_DUMMY_HASH = None


@login_manager.user_loader
def load_user(user_id: str) -> User | None:
    """The signed-in user; a disabled user gets no session (Flask-Login checks is_active).

    Read from the user cache (portal/cache.py, invalidated on every committed change), so a
    request costs no SQL for it; columns the snapshot leaves out (the password hash) and
    the groups relationship still load from the database when something touches them.
    """
    if not user_id.isdigit():
        return None
    uid = int(user_id)
    snap = cache.user_snapshot(uid, lambda: _user_row(uid))
    if snap is None or not snap["active"]:
        return None
    return _attach(snap)


#: The User columns a snapshot carries: everything except the password hash.
_SNAPSHOT_COLUMNS = ("id", "username", "display_name", "role", "active")


def _user_row(user_id: int) -> dict | None:
    """A user's snapshot from the database (cache.user_snapshot stores it)."""
    user = db.session.get(User, user_id)
    if user is None:
        return None
    return {**{name: getattr(user, name) for name in _SNAPSHOT_COLUMNS},
            "created_at": user.created_at.isoformat(), "groups": sorted(user.group_names)}


def _attach(snap: dict) -> User | SnapshotUser:
    """A persistent User in this request's session built from a snapshot, without SQL.

    make_transient_to_detached marks what the snapshot lacks as expired, so those
    attributes load from the database on first use, as after any commit.

    Downloads (the ``download`` blueprint) read nothing of the user beyond the snapshot
    (can_read, the event's user id), so they get a plain SnapshotUser and never open a
    database session: the session and the ORM object were about a seventh of a warm
    signed-in download's time (py-spy, bench/run_download_bench.py).
    """
    if request.blueprint == "download":
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


def _ip_key() -> str:
    return f"login-ip:{request.remote_addr or '-'}"


def _account_key() -> str:
    # Keyed by the name typed, existing or not, so a locked account looks like any other.
    name = (request.form.get("username") or "").strip().lower()[:64]
    return f"login-account:{name}"


def _failed(response) -> bool:
    return response.status_code != 302


@bp.route("/login", methods=["GET", "POST"])
@limiter.limit(lambda: current_app.config["LOGIN_LIMIT_IP"], key_func=_ip_key,
               methods=["POST"], deduct_when=_failed, scope="login-ip")
@limiter.limit(lambda: current_app.config["LOGIN_LIMIT_ACCOUNT"], key_func=_account_key,
               methods=["POST"], deduct_when=_failed, scope="login-account")
def login():
    """Show the sign-in form; on success redirect to ?next= (local paths only).

    Failed attempts are limited per account name and per IP (Flask-Limiter on Redis, in
    memory when Redis is down); past the limit the answer is 429 with Retry-After.
    """
    form = LoginForm()
    if current_user.is_authenticated and request.method == "GET":
        return redirect(safe_next(request.args.get("next")))
    status = 200
    if request.method == "POST":
        if form.validate_on_submit():
            user = authenticate(form.username.data, form.password.data)
            ip = request.remote_addr or ""
            if user is not None:
                login_user(user, remember=bool(form.remember.data))
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
    """End the session."""
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
            current_user.set_password(form.new.data)
            audit(db.session, "user.password_changed", actor=current_user,
                  target=current_user.username, client_ip=request.remote_addr or "")
            db.session.commit()
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
