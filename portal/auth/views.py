"""Login and logout views."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from urllib.parse import urlsplit

from flask import (
    abort,
    current_app,
    flash,
    g,
    jsonify,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_babel import gettext as _
from flask_babel import ngettext
from flask_login import current_user, login_required, login_user, logout_user
from sqlalchemy import select

from ..audit import audit
from ..coherence import coherence, commit_everywhere
from ..config import settings
from ..extensions import db, login_manager
from ..models import RevokedToken, User
from . import bp, throttle
from .forms import LoginForm, PasswordChangeForm
from .sso.failures import FAILURES
from .tokens import new_token, parse_token
from .users import attached_user, session_user

# A real hash to check against when the user does not exist, so that an unknown user and a
# wrong password cost the same time.
_DUMMY_HASH = None


@login_manager.user_loader
def load_user(token: str) -> User | None:
    """The signed-in user of a page (users.session_user). Revocations are decided by the
    database (coherence.py); a warm request reads them from this worker's confirmed copy,
    and the user from the user cache: no SQL."""
    return session_user(token, attached_user,
                        lifetime=current_app.config["SESSION_LIFETIME_SECONDS"],
                        revoked=coherence().revoked)


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
    """The user with this name and password, or None; same work either way. A disabled
    user is returned too: only someone who knows the password learns it is disabled."""
    global _DUMMY_HASH
    user = db.session.scalar(select(User).where(User.username == username))
    if user is None or not user.password_hash:
        if _DUMMY_HASH is None:
            probe = User()
            probe.set_password("not-a-real-password")
            _DUMMY_HASH = probe
        _DUMMY_HASH.check_password(password)
        return None
    if not user.check_password(password):
        return None
    return user


def _attempt() -> throttle.Attempt:
    """This sign-in attempt for the throttle: the name typed (existing or not) and the client."""
    return throttle.Attempt(throttle.normalise_account(request.form.get("username")),
                            request.remote_addr or "-")


def throttled_page(retry_after: int):
    """The 429 answer to a throttled sign-in: it says that sign-in attempts are refused, for
    how many minutes (Retry-After's seconds, rounded up), and leads back to the sign-in
    form, not the catalog the person could not reach anyway."""
    minutes = max(1, math.ceil(retry_after / 60))
    back = url_for("auth.login", next=request.args.get("next") or None)
    page = render_template(
        "errors/error.html", code=429, title=_("Too many sign-in attempts"),
        message=ngettext("Too many sign-in attempts failed from your address. Wait %(num)d "
                         "minute, then sign in again.",
                         "Too many sign-in attempts failed from your address. Wait %(num)d "
                         "minutes, then sign in again.", minutes),
        back=(back, _("Back to sign-in")))
    return make_response(page, 429, {"Retry-After": str(retry_after)})


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
            abort(throttled_page(verdict.retry_after))
        # The wait comes before the password check opens a database connection, so a
        # delayed attempt holds none.
        throttle.pause(verdict)
        if form.validate_on_submit():
            ip = request.remote_addr or ""
            user, method, refused = password_sign_in(form.username.data, form.password.data,
                                                     ip)
            if user is not None:
                throttle.succeeded(verdict)
                sign_in(user, remember=bool(form.remember.data))
                audit(db.session, "login.success", actor=user, target=user.username,
                      detail=f"method={method}", client_ip=ip)
                db.session.commit()
                return redirect(safe_next(request.args.get("next")))
            audit(db.session, "login.failure", target=form.username.data,
                  detail=f"method={method}" + (f"; {refused}" if refused else ""), client_ip=ip)
            db.session.commit()
            if refused in FAILURES:
                message, status = FAILURES[refused]
                flash(str(message), "error")
            else:
                flash(_("Wrong username or password."), "error")
        else:
            flash(_("Please fill in both fields (at most 64 and 256 characters)."), "error")
            status = 400
    return render_template("auth/login.html", form=form, **login_choices()), status


def login_choices() -> dict:
    """What the sign-in page offers: the password form (local accounts or LDAP) and the
    single sign-on buttons, each carrying the page to come back to."""
    methods = settings().auth_methods
    nxt = safe_next(request.args.get("next"))
    return {"password_form": "local" in methods or "ldap" in methods,
            "sso_buttons": [(m, url_for(f"auth.{m}_login", next=nxt)) for m in ("cas", "oidc")
                            if m in methods]}


def password_sign_in(username: str, password: str, ip: str) -> tuple[User | None, str, str]:
    """The user this name and password sign in, by a local account or an LDAP bind: (user or
    None, the method tried, why a directory account was refused or ""). A local account with
    its own password is never looked up in the directory, so a directory entry of the same
    name cannot take it over."""
    from .sso import ldap
    from .sso.mapping import SignInRefused, apply_account

    cfg = settings()
    local = db.session.scalar(select(User).where(User.username == username))
    own_password = local is not None and local.auth_source == "local" and (
        local.has_usable_password() or "ldap" not in cfg.auth_methods)
    if own_password or "ldap" not in cfg.auth_methods:
        # authenticate also spends a hash's time on unknown names
        user = authenticate(username, password) if "local" in cfg.auth_methods else None
        if user is not None and not user.active:
            return None, "local", "disabled"
        return user, "local", ""
    try:
        account = ldap.authenticate(cfg, username, password, cfg.sso_role_map)
        if account is None:
            return None, "ldap", ""
        user, _changed = apply_account(db.session, account, auto_create=cfg.sso_auto_create,
                                       role_map=cfg.sso_role_map,
                                       default_role=cfg.sso_default_role, ip=ip)
    except ldap.DirectoryUnavailable as exc:
        current_app.logger.warning("LDAP sign-in: %s", exc)
        return None, "ldap", "unavailable"
    except SignInRefused as refused:
        return None, "ldap", refused.reason
    db.session.flush()
    return user, "ldap", ""


@bp.route("/logout", methods=["POST"])
def logout():
    """End this session on the server too: its token is revoked, so the old cookie (and its
    remember-me cookie) is refused everywhere from then on. ``everywhere=1`` ends every
    session of the user (and their signed links). The answer comes once every worker
    refuses them (coherence.commit_everywhere), so a cookie replayed right after it is
    refused too."""
    if current_user.is_authenticated:
        if request.form.get("everywhere") == "1":
            user = db.session.get(User, current_user.id)
            user.end_sessions()
            audit(db.session, "user.signed_out_everywhere", actor=user, target=user.username,
                  client_ip=request.remote_addr or "")
        else:
            end_session(session.get("_user_id"))
        commit_everywhere(db.session)
    logout_user()
    return redirect(url_for("catalog.index"))


@bp.route("/account/password", methods=["GET", "POST"])
@login_required
def change_password():
    """Users change their own password (the current one is asked again); the answer comes
    once every worker refuses the user's other sessions and links."""
    form = PasswordChangeForm()
    if form.validate_on_submit():
        if not current_user.check_password(form.current.data):
            form.current.errors.append(_("The current password is wrong."))
        else:
            user = current_user._get_current_object()
            user.set_password(form.new.data)  # a new session generation: the others end
            audit(db.session, "user.password_changed", actor=user,
                  target=user.username, client_ip=request.remote_addr or "")
            commit_everywhere(db.session)
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
