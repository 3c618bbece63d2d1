"""Every Redis key of a database's facts, under its namespace ``portal:<identity>:``
(coherence.py), and the pub/sub channel that carries their invalidations.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

from flask import current_app

from ..coherence import coherence
from .connection import client

log = logging.getLogger(__name__)


def namespace() -> str | None:
    """The current app's key prefix, ``portal:<database identity>:``; None while the
    database's identity is unknown (then nothing is cached)."""
    return coherence(current_app).prefix


def meta_key(file_id: int, prefix: str | None = None) -> str:
    """A file's metadata entry (``prefix``: namespace(), given where there is no app)."""
    return f"{prefix or namespace()}file:{int(file_id)}:meta"


def version_key_by_id(version_id: int, prefix: str | None = None) -> str:
    """A version's snapshot, named by id (a signed link's)."""
    return f"{prefix or namespace()}version:{int(version_id)}:snap"


def version_key_by_number(file_id: int, number: int) -> str:
    return f"{namespace()}file:{int(file_id)}:v{int(number)}:snap"


def user_key(user_id: int, prefix: str | None = None) -> str:
    return f"{prefix or namespace()}user:{int(user_id)}:auth"


def user_keys(user_id: int, prefix: str | None = None) -> list[str]:
    """The keys whose values user_from_reply reads (one)."""
    return [user_key(user_id, prefix)]


def subject_keys(subjects: Iterable[str], prefix: str) -> list[str]:
    """The Redis keys that hold facts about these subjects (a group change: every user's,
    which Redis cannot list cheaply; those entries go stale by their stamp instead)."""
    keys = []
    for subject in subjects:
        kind, _, ident = subject.partition(":")
        if kind == "file":
            keys.append(meta_key(int(ident), prefix))
        elif kind == "user":
            keys.append(user_key(int(ident), prefix))
    return keys


#: Published by every invalidation above: the names of the keys that changed, space-separated.
INVALIDATE_CHANNEL = "portal:invalidate"


def invalidation_channel() -> str:
    # Pub/sub ignores SELECT: portals sharing a server on different databases get their own.
    return f"{INVALIDATE_CHANNEL}:{client().get_connection_kwargs().get('db', 0)}"
