"""Signed, expiring download links for download managers (no cookie needed).

A link names the user, the file and the version current when it was minted, so that a
resume never mixes two versions. It is HMAC-signed with the secret key (itsdangerous),
valid for LINK_TTL_SECONDS, usable by any number of connections until then, and checked
again on every request: the user must still be active and still allowed to read the file,
and the link must not be on the Redis deny-list.
"""

from __future__ import annotations

import functools
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import redis
from itsdangerous import BadSignature, SignatureExpired, URLSafeTimedSerializer

from .. import cache

SALT = "portal.download-link.v1"


@dataclass(frozen=True)
class LinkClaims:
    """What a valid link grants."""

    user_id: int
    file_id: int
    version_id: int
    nonce: str


class LinkError(Exception):
    """A bad, tampered, expired or revoked link."""


@functools.lru_cache(maxsize=4)  # building one serialises a probe value (itsdangerous)
def _serializer(secret_key: str) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(secret_key, salt=SALT)


def mint(secret_key: str, ttl: int, *, user_id: int, file_id: int, version_id: int,
         now: datetime | None = None) -> tuple[str, datetime]:
    """A new token and when it expires."""
    now = now or datetime.now(UTC)
    payload = {"u": user_id, "f": file_id, "v": version_id, "n": secrets.token_hex(8)}
    token = _serializer(secret_key).dumps(payload)
    return token, now.replace(microsecond=0) + timedelta(seconds=ttl)


def verify(secret_key: str, ttl: int, token: str) -> LinkClaims:
    """The claims of a valid, unexpired, unrevoked token, or LinkError."""
    claims = verify_signature(secret_key, ttl, token)
    if cache.link_revoked(claims.nonce):
        raise LinkError("revoked")
    return claims


def verify_signature(secret_key: str, ttl: int, token: str) -> LinkClaims:
    """The claims of a valid, unexpired token, or LinkError; the caller checks the deny-list
    (cache.link_revoked)."""
    try:
        payload = _serializer(secret_key).loads(token, max_age=ttl)
        claims = LinkClaims(int(payload["u"]), int(payload["f"]), int(payload["v"]),
                            str(payload["n"]))
    except SignatureExpired as exc:
        raise LinkError("expired") from exc
    except (BadSignature, KeyError, TypeError, ValueError) as exc:
        raise LinkError("invalid") from exc
    return claims


def revoke(token_nonce: str, ttl: int) -> bool:
    """Put one link on the deny-list; False when Redis is down (then it cannot be revoked)."""
    try:
        cache.revoke_link(token_nonce, ttl)
    except redis.RedisError:
        return False
    return True
