"""The single sign-on doors: CAS (and its single logout) and OIDC. Each one validates what the
sign-in service sends, maps the account (sso/mapping.py) and starts the session as the
password form does (views.sign_in): throttled, audited, the next page kept same-site."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from flask import abort, current_app, redirect, render_template, request, session, url_for
from sqlalchemy import select

from ..audit import audit
from ..config import settings
from ..extensions import db
from ..models import RevokedToken, SsoSession
from ..urls import absolute_url
from . import bp, throttle
from .sso import cas, oidc
from .sso.failures import FAILURES
from .sso.mapping import DirectoryAccount, SignInRefused, apply_account
from .tokens import parse_token
from .views import safe_next, sign_in, throttled_page

#: The endpoints a sign-in service POSTs to without the portal's CSRF token (CAS single
#: logout is a server-to-server POST; the ticket it names is its proof).
CSRF_EXEMPT = {"auth.cas_callback"}


def _enabled(method: str) -> None:
    if method not in settings().auth_methods:
        abort(404)


def failed(method: str, reason: str, *, target: str = "", detail: str = ""):
    """The page of a failed single sign-on, audited (never a 500)."""
    audit(db.session, "login.failure", target=target,
          detail=f"method={method}; {reason}" + (f"; {detail}" if detail else ""),
          client_ip=request.remote_addr or "")
    db.session.commit()
    message, status = FAILURES[reason]
    return render_template("auth/sso_failed.html", message=message, method=method,
                           retry=url_for("auth.login", next=safe_next(request.args.get("next")))
                           ), status


def finish(method: str, account: DirectoryAccount, verdict: throttle.Verdict, nxt: str,
           *, ticket: str | None = None):
    """Map the account to its user and start the session, or the failure page."""
    cfg = settings()
    ip = request.remote_addr or ""
    try:
        user, _changed = apply_account(db.session, account, auto_create=cfg.sso_auto_create,
                                       role_map=cfg.sso_role_map,
                                       default_role=cfg.sso_default_role, ip=ip)
        db.session.flush()
    except SignInRefused as refused:
        db.session.rollback()
        return failed(method, refused.reason, target=account.uid, detail=refused.detail)
    throttle.succeeded(verdict)
    sign_in(user)
    if ticket is not None:
        parsed = parse_token(user.session_token)
        db.session.add(SsoSession(ticket=ticket[:256], nonce=parsed.nonce, user_id=user.id,
                                  expires_at=datetime.now(UTC) + timedelta(
                                      seconds=cfg.session_lifetime_seconds)))
    audit(db.session, "login.success", actor=user, target=user.username,
          detail=f"method={method}", client_ip=ip)
    db.session.commit()
    return redirect(nxt)


def _throttled(method: str) -> throttle.Verdict:
    """The sign-in throttle for a callback: the account is not known before validation, so
    the attempt counts for the method and the client address (429 past the limits); a
    success gives it back, as on the form."""
    verdict = throttle.check(throttle.Attempt(f"{method}:", request.remote_addr or "-"))
    if verdict.retry_after is not None:
        abort(throttled_page(verdict.retry_after))
    throttle.pause(verdict)
    return verdict


def _service_url(nxt: str) -> str:
    """The service URL CAS sends the ticket to, and the portal validates it for: under
    PORTAL_PUBLIC_URL, never the request's Host (urls.py)."""
    return absolute_url("auth.cas_callback", next=nxt)


@bp.route("/login/cas")
def cas_login():
    """Send the browser to CAS; it comes back to cas_callback with a service ticket."""
    _enabled("cas")
    return redirect(cas.login_url(settings(), _service_url(safe_next(request.args.get("next")))))


@bp.route("/login/cas/callback", methods=["GET", "POST"])
def cas_callback():
    """GET: validate the service ticket and sign in. POST: CAS single logout (a SAML
    LogoutRequest naming the ticket): the session it started is revoked in the database."""
    _enabled("cas")
    if request.method == "POST":
        return _cas_single_logout()
    nxt = safe_next(request.args.get("next"))
    ticket = request.args.get("ticket", "")
    verdict = _throttled("cas")
    if not ticket.startswith("ST-") or len(ticket) > 256:
        return failed("cas", "bad_ticket", detail="no ticket")
    if db.session.get(SsoSession, ticket) is not None:
        return failed("cas", "replayed")
    try:
        account = cas.validate(settings(), _service_url(nxt), ticket)
    except cas.CasUnavailable as exc:
        current_app.logger.warning("CAS validation: %s", exc)
        return failed("cas", "unavailable", detail=str(exc)[:200])
    if account is None:
        return failed("cas", "bad_ticket")
    return finish("cas", account, verdict, nxt, ticket=ticket)


def _cas_single_logout():
    tickets = cas.logout_tickets(request.form.get("logoutRequest", ""))
    ended = 0
    for found in db.session.scalars(select(SsoSession).where(SsoSession.ticket.in_(tickets))):
        if db.session.get(RevokedToken, found.nonce) is None:
            db.session.add(RevokedToken(nonce=found.nonce, kind="session",
                                        user_id=found.user_id, expires_at=found.expires_at))
        audit(db.session, "logout.single", target=str(found.user_id), detail="method=cas",
              client_ip=request.remote_addr or "")
        db.session.delete(found)
        ended += 1
    db.session.commit()
    return ("", 204) if ended else ("", 200)


@bp.route("/login/oidc")
def oidc_login():
    """Send the browser to the OIDC issuer (code flow with PKCE); the page to return to is
    kept in the session until the callback."""
    _enabled("oidc")
    session["oidc_next"] = safe_next(request.args.get("next"))
    remote = oidc.client(current_app._get_current_object(), settings())
    try:
        return oidc.authorize_redirect(remote, absolute_url("auth.oidc_callback"))
    except oidc.OidcFailed as failure:
        current_app.logger.warning("OIDC: %s", failure)
        return failed("oidc", failure.reason, detail=failure.detail[:200])


@bp.route("/login/oidc/callback")
def oidc_callback():
    """Exchange the authorization code, validate the ID token, sign in."""
    _enabled("oidc")
    nxt = safe_next(session.pop("oidc_next", None))
    verdict = _throttled("oidc")
    cfg = settings()
    try:
        account = oidc.account(oidc.client(current_app._get_current_object(), cfg), cfg,
                               request.args.get("error"))
    except oidc.OidcFailed as failure:
        current_app.logger.warning("OIDC: %s", failure)
        return failed("oidc", failure.reason, detail=failure.detail[:200])
    return finish("oidc", account, verdict, nxt)
