"""Signed, expiring download links for download managers (no cookie needed).

A link names the user, the file and the version current when it was minted, so that a
resume never mixes two versions. It is HMAC-signed with the secret key (itsdangerous),
valid for LINK_TTL_SECONDS, usable by any number of connections until then, and checked
again on every request: the user must still be active, of the session generation the link
was minted in (a password change or "sign out everywhere" ends their links too), still
allowed to read the file, and the link must not have been revoked. Revocations are rows in
SQL (revoked_tokens), which every worker confirms (coherence.py).
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer
from sqlalchemy.orm import Session

from ..coherence import coherence
from ..models import RevokedToken

SALT = "portal.download-link.v1"


@dataclass(frozen=True)
class LinkClaims:
    """What a valid link grants."""

    user_id: int
    file_id: int
    version_id: int
    nonce: str
    generation: int = 0  # the user's session generation when minted (absent in old links)


class LinkError(Exception):
    """A bad, tampered, expired or revoked link."""


@functools.lru_cache(maxsize=4)  # building one serialises a probe value (itsdangerous)
def _serializer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt=SALT)


def mint(secret_key: str, ttl: int, *, user_id: int, file_id: int, version_id: int,
         generation: int = 0, now: datetime | None = None) -> tuple[str, datetime]:
    """A new token and when it expires."""
    now = now or datetime.now(UTC)
    payload = {"u": user_id, "f": file_id, "v": version_id, "n": secrets.token_hex(8),
               "g": int(generation or 0)}
    token = _serializer(secret_key).dumps(payload)
    return token, now.replace(microsecond=0) + timedelta(seconds=ttl)


def verify(secret_key: str, ttl: int, token: str) -> LinkClaims:
    """The claims of a valid, unexpired, unrevoked token, or LinkError."""
    claims = verify_signature(secret_key, ttl, token)
    if coherence().revoked(claims.nonce):
        raise LinkError("revoked")
    return claims


def verify_signature(secret_key: str, ttl: int, token: str) -> LinkClaims:
    """The claims of a valid, unexpired token, or LinkError; the caller checks revocation
    (coherence.revoked)."""
    try:
        payload = _serializer(secret_key).loads(token, max_age=ttl)
        claims = LinkClaims(int(payload["u"]), int(payload["f"]), int(payload["v"]),
                            str(payload["n"]), int(payload.get("g", 0)))
    except SignatureExpired as exc:
        raise LinkError("expired") from exc
    except (BadSignature, KeyError, TypeError, ValueError, AttributeError) as exc:
        raise LinkError("invalid") from exc
    return claims


def revoke(session: Session, claims: LinkClaims, ttl: int, now: datetime | None = None) -> None:
    """Revoke one link until it would have expired anyway: a row in SQL, committed by the
    caller, which every worker honours within COHERENCE_SECONDS whatever Redis does."""
    if session.get(RevokedToken, claims.nonce) is not None:
        return
    now = now or datetime.now(UTC)
    session.add(RevokedToken(nonce=claims.nonce, kind="link", user_id=claims.user_id,
                             revoked_at=now, expires_at=now + timedelta(seconds=ttl)))
