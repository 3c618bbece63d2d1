"""Session tokens: what Flask-Login keeps as the user's id in the session and in the
remember-me cookie (its "alternative token" mechanism: ``get_id`` returns it).

``<user id>.<session generation>.<nonce>.<issued at>``. The nonce is new at every sign-in,
so each session (and its remember-me cookie) can be revoked on its own (logout); the
generation ends every session of a user at once (password change, disable, "sign out
everywhere"); the issue time makes a token expire after SESSION_LIFETIME_SECONDS however
often the cookie is renewed. The cookie is signed by Flask and Flask-Login; this module only
builds and reads the text inside.
"""

from __future__ import annotations

import re
import secrets
import time
from dataclasses import dataclass

_TOKEN = re.compile(r"([0-9]{1,10})\.([0-9]{1,10})\.([0-9a-f]{16})\.([0-9]{1,12})")


@dataclass(frozen=True)
class SessionToken:
    """The parts of a session token."""

    user_id: int
    generation: int
    nonce: str
    issued: int  # unix seconds

    def expired(self, lifetime: float, now: float | None = None) -> bool:
        """True once ``lifetime`` seconds have passed since sign-in."""
        return (now if now is not None else time.time()) - self.issued > lifetime

    def __str__(self) -> str:
        return f"{self.user_id}.{self.generation}.{self.nonce}.{self.issued}"


def new_token(user_id: int, generation: int) -> SessionToken:
    """A fresh token for a sign-in now."""
    return SessionToken(int(user_id), int(generation or 0), secrets.token_hex(8),
                        int(time.time()))


def parse_token(text: object) -> SessionToken | None:
    """The token in a session's ``_user_id``, or None for anything else (older sessions
    that hold a bare id included: they sign in again). A token already parsed is itself."""
    if isinstance(text, SessionToken):
        return text
    if not isinstance(text, str):
        return None
    match = _TOKEN.fullmatch(text)
    if match is None:
        return None
    uid, gen, nonce, issued = match.groups()
    return SessionToken(int(uid), int(gen), nonce, int(issued))
