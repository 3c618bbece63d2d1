"""Change tracking: every committed change reaches the database's change log in its own
transaction (coherence.py), then Redis and the workers' copies forget what it touched.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from itertools import chain

import redis
import redis.client
from flask import current_app, has_app_context
from sqlalchemy import event
from sqlalchemy.orm import Session

from ..coherence import coherence, generation_key, record_changes
from .connection import client
from .keys import invalidation_channel, subject_keys

log = logging.getLogger(__name__)


_COMMITTED = "portal_change_generations"  # session.info: generations this transaction took


def changed_subjects(objects) -> set[str]:
    """The coherence subjects (coherence.py) that these new, changed or deleted ORM objects
    touch."""
    from ..models import DownloadLimitRule, File, FileVersion, Group, RevokedToken, User

    subjects = set()
    for obj in objects:
        if isinstance(obj, File) and obj.id is not None:
            subjects.add(f"file:{obj.id}")
        elif isinstance(obj, FileVersion) and obj.file_id is not None:
            subjects.add(f"file:{obj.file_id}")
        elif isinstance(obj, User) and obj.id is not None:
            subjects.add(f"user:{obj.id}")
        elif isinstance(obj, Group):
            subjects.add("users")
        elif isinstance(obj, RevokedToken):
            subjects.add(f"token:{obj.nonce}")
        elif isinstance(obj, DownloadLimitRule):
            subjects.add("limits")  # download/limit_store.py: one table, one subject
    return subjects


def _after_flush(session, _context) -> None:
    """Log what this flush changed in SQL, in the same transaction (coherence.record_changes):
    the one durable record of every revocation, whatever Redis does."""
    subjects = changed_subjects(chain(session.new, session.dirty, session.deleted))
    if not subjects:
        return
    generation = record_changes(session.connection(), subjects)
    if generation is not None:
        session.info.setdefault(_COMMITTED, []).append((generation, subjects))


def _after_commit(session) -> None:
    """After the commit: this worker applies the change at once, then Redis forgets the
    entries and tells the other workers (an optimisation: they would confirm it anyway)."""
    committed = session.info.pop(_COMMITTED, None)
    if not committed or not has_app_context():
        return
    co = coherence(current_app)
    subjects = set()
    for generation, changed in committed:
        co.note_commit(generation, changed)
        subjects |= changed
    _forget_in_redis(subjects, max(generation for generation, _ in committed))


def _after_rollback(session) -> None:
    session.info.pop(_COMMITTED, None)


def watch_file_changes() -> None:
    """Record every committed ORM change of a File, FileVersion, User or Group and every
    revoked token in the change log, wherever in the code it happens."""
    if not event.contains(Session, "after_flush", _after_flush):
        event.listen(Session, "after_flush", _after_flush)
        event.listen(Session, "after_commit", _after_commit)
        event.listen(Session, "after_soft_rollback", lambda s, _t: _after_rollback(s))


def _forget_in_redis(subjects: set[str], generation: int) -> None:
    """Delete the entries of these subjects, tell the other workers, and record the highest
    generation of this database (coherence.Coherence._behind_redis reads it to notice a
    restored backup), in one round trip."""
    co = coherence(current_app)
    if co.prefix is None:
        co.current()  # learn the identity (a process that has only written so far)
    prefix = co.prefix
    if prefix is None:
        return
    keys = subject_keys(subjects, prefix)
    try:
        pipe = client().pipeline(transaction=False)
        if keys:
            pipe.delete(*keys)
            pipe.publish(invalidation_channel(), " ".join(keys))
        pipe.zadd(generation_key(prefix), {"max": generation}, gt=True)
        pipe.execute()
    except redis.RedisError:
        log.warning("redis down: %d cached entries not dropped (stale by the change log)",
                    len(keys))


def forget_locally(app, subjects: Iterable[str] | None) -> None:
    """Drop this process's copies of what these subjects describe (coherence.py's
    on_change); None: everything."""
    copies = app.extensions.get("portal_local_copies")
    if copies is None:
        return
    if subjects is None:
        copies.clear()
        return
    subjects = list(subjects)
    if "users" in subjects:
        copies.drop_matching(":user:")
    prefix = app.extensions["portal_coherence"].prefix
    if prefix is not None:
        copies.drop(subject_keys(subjects, prefix))
