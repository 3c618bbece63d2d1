"""OpenID Connect with Authlib: the authorization code flow with PKCE (S256), and the
claims of the validated ID token as a DirectoryAccount.

Authlib reads the issuer's discovery document, keeps the state, nonce and code verifier
in the signed session, exchanges the code, and checks the ID token (signature against
the issuer's keys, issuer, audience, expiry, nonce). This module only wires it and names
the failures.
"""

from __future__ import annotations

import requests
from authlib.integrations.base_client import OAuthError
from authlib.integrations.flask_client import OAuth
from flask import Flask
from joserfc.errors import ExpiredTokenError, InvalidTokenError, JoseError

from ...settings import Settings
from .mapping import DirectoryAccount, group_names, issuer_id, values

#: Seconds an HTTP exchange with the issuer may take.
TIMEOUT = 10


class OidcFailed(Exception):
    """The sign-in could not be completed; ``reason`` is a failures.FAILURES code."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def client(app: Flask, cfg: Settings):
    """The app's Authlib client of the issuer (registered on first use)."""
    found = app.extensions.get("portal_oidc")
    if found is None or found[0] != (cfg.oidc_issuer, cfg.oidc_client_id):
        registry = OAuth(app)
        remote = registry.register(
            "campus", client_id=cfg.oidc_client_id, client_secret=cfg.oidc_client_secret,
            server_metadata_url=cfg.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
            client_kwargs={"scope": cfg.oidc_scopes, "code_challenge_method": "S256",
                           "default_timeout": TIMEOUT})
        found = ((cfg.oidc_issuer, cfg.oidc_client_id), remote)
        app.extensions["portal_oidc"] = found
    return found[1]


def issuer(cfg: Settings) -> str:
    """The issuer of this portal's OIDC accounts in their bindings (the ``iss`` of their ID
    tokens, which Authlib holds to the issuer's discovery document)."""
    return issuer_id(cfg.oidc_issuer or "")


def authorize_redirect(remote, redirect_uri: str):
    """The redirect to the issuer's authorization endpoint (state, nonce and PKCE kept in
    the session), or OidcFailed("unavailable")."""
    try:
        return remote.authorize_redirect(redirect_uri)
    except (requests.RequestException, ValueError, KeyError) as exc:
        raise OidcFailed("unavailable", str(exc)) from exc


def account(remote, cfg: Settings, error: str | None) -> DirectoryAccount:
    """The account of this callback's authorization code: the code exchanged, the ID token
    validated, the claims mapped. OidcFailed names why not."""
    if error:
        raise OidcFailed("denied", error)
    try:
        token = remote.authorize_access_token()
    except requests.RequestException as exc:
        raise OidcFailed("unavailable", str(exc)) from exc
    except (ExpiredTokenError, InvalidTokenError) as exc:
        # exp passed or iat/nbf ahead, beyond Authlib's leeway: the two clocks disagree
        raise OidcFailed("clock_skew", str(exc)) from exc
    except (OAuthError, JoseError, ValueError, KeyError) as exc:
        raise OidcFailed("bad_ticket", f"{exc.__class__.__name__}: {exc}") from exc
    claims = token.get("userinfo") or {}
    uid = values(claims.get(cfg.oidc_uid_claim))
    if not uid:
        raise OidcFailed("bad_uid", f"no {cfg.oidc_uid_claim} claim")
    subject, iss = values(claims.get("sub")), values(claims.get("iss"))
    if not subject or not iss:  # both required in an ID token (OIDC Core 2)
        raise OidcFailed("bad_ticket", "no sub or iss claim")
    name = values(claims.get(cfg.oidc_name_claim))
    attributes = {k: values(v) for k, v in claims.items() if isinstance(v, str | list)}
    return DirectoryAccount("oidc", uid[0], name[0] if name else uid[0],
                            group_names(values(claims.get(cfg.oidc_groups_claim))), attributes,
                            issuer=issuer_id(iss[0]), subject=subject[0])
