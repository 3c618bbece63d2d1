"""The signed-in user: the session rule every door applies, and users from their snapshots.

A session's ``_user_id`` is a token (tokens.py). Pages, the download view and the fast path
all decide it by :func:`session_user`; they differ only in where the user comes from: pages
get an ORM User attached to the request's database session (:func:`attached_user`),
downloads a :class:`SnapshotUser` that never touches the database (:func:`snapshot_user`).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.util import identity_key

from .. import cache
from ..extensions import db
from ..models import Roles, User
from .tokens import parse_token

#: The User columns a snapshot carries: everything except the password hash.
SNAPSHOT_COLUMNS = ("id", "username", "display_name", "role", "active", "session_gen")


def session_user(token: object, lookup: Callable[[int], Any], *, lifetime: int,
                 revoked: Callable[[str], bool]) -> Any:
    """The user a session token stands for: None when the token is malformed, expired,
    revoked (logout), of an older session generation (password change, "sign out
    everywhere"), or ``lookup`` (an active user by id) finds no one."""
    parsed = parse_token(token)
    if parsed is None or parsed.expired(lifetime) or revoked(parsed.nonce):
        return None
    user = lookup(parsed.user_id)
    if user is None or user.session_gen != parsed.generation:
        return None
    user.session_token = str(parsed)
    return user


class SnapshotUser(Roles):
    """The user as the cached snapshot has it: the columns can_read and the download
    views use, and the group names. Not an ORM object: nothing loads lazily."""

    def __init__(self, snap: dict) -> None:
        for name in SNAPSHOT_COLUMNS:
            setattr(self, name, snap[name])
        self._groups = frozenset(snap["groups"])

    @property
    def group_names(self) -> set[str]:
        return set(self._groups)


def user_row(user_id: int) -> dict | None:
    """A user's snapshot from the database (cache.user_snapshot stores it)."""
    user = db.session.get(User, user_id)
    if user is None:
        return None
    return {**{name: getattr(user, name) for name in SNAPSHOT_COLUMNS},
            "created_at": user.created_at.isoformat(), "groups": sorted(user.group_names)}


def snapshot_user(user_id: int, prefetched=None) -> SnapshotUser | None:
    """The active user with this id as a SnapshotUser, from the user cache (judged against
    the database's change log), else the database. Downloads read nothing else of a user:
    the ORM object and its session were about a seventh of a warm signed-in download's time
    (py-spy, bench/run_download_bench.py)."""
    snap = cache.user_snapshot(user_id, lambda: user_row(user_id), prefetched)
    if snap is None or not snap["active"]:
        return None
    return SnapshotUser(snap)


def attached_user(user_id: int) -> User | None:
    """The active user with this id as a persistent User in this request's database
    session, built from the cached snapshot without SQL; what the snapshot lacks (the
    password hash, the groups relationship) loads from the database on first use, as after
    any commit (make_transient_to_detached marks it expired)."""
    snap = cache.user_snapshot(user_id, lambda: user_row(user_id))
    if snap is None or not snap["active"]:
        return None
    existing = db.session.identity_map.get(identity_key(User, snap["id"]))
    if existing is not None:
        return existing
    user = User(**{name: snap[name] for name in SNAPSHOT_COLUMNS},
                created_at=datetime.fromisoformat(snap["created_at"]))
    make_transient_to_detached(user)
    user.cached_group_names = frozenset(snap["groups"])
    db.session.add(user)
    return user
