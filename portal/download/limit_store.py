"""Download limits as admins set them on /admin/limits: rows in SQL over the environment's.

PORTAL_DOWNLOAD_LIMITS gives each key's default (a role, ``anonymous`` or ``group:NAME``); a
row of ``download_limits`` takes its place, unless PORTAL_DOWNLOAD_LIMITS_LOCKED locks the
key (or every key, ``*``): then the environment's value holds whatever SQL says, and the
page shows the lock with its reason.

Every node applies a change within COHERENCE_SECONDS, without SQL on a warm download, the
way it learns of a revoked right (coherence.py): a save is logged under the subject
``limits`` (cache/changes.py); each worker keeps the rows it last read, stamped with the
generation it had confirmed before reading them, and reads them again once the subject's
floor is past that stamp. The save answers after that bound (``commit_everywhere``), so
"saved" is then true on every node. While the database cannot be read, the rows last read
stay in force: a limit shares the uplink and guards no right, so it never turns a download
into an error.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from ..audit import audit
from ..coherence import coherence
from ..config import settings
from ..extensions import db
from ..models import DownloadLimitRule, Group, User, utcnow
from ..settings import LIMIT_ROLES, LOCK_ALL, Limit, Settings, is_limit_key

log = logging.getLogger(__name__)

#: The change-log subject of every change of the table.
SUBJECT = "limits"
#: The most an admin may type. Past any campus uplink: a larger number is a slip of the finger.
MAX_CONNECTIONS = 10_000
MAX_RATE = 100 * 1024**3
#: After a failed read, the rows are asked for again this much later at the soonest.
RETRY_SECONDS = 1.0


# ---------------------------------------------------------------------------
# The rule (pure)
# ---------------------------------------------------------------------------


def lock_of(config: Settings, who: str) -> str | None:
    """Why the environment locks ``who``'s limit (None: admins may change it)."""
    locks = dict(config.download_limits_locked)
    return locks.get(who) or locks.get(LOCK_ALL)


def merged(config: Settings, rows: dict[str, Limit]) -> tuple[tuple[str, Limit], ...]:
    """The entries in force: the environment's, each replaced by the admins' row of its key
    unless that key is locked, then the admins' keys the environment does not name."""
    table = dict(config.download_limits)
    for who, limit in sorted(rows.items()):
        if lock_of(config, who) is None:
            table[who] = limit
    return tuple(table.items())


def rate_text(rate: int | None) -> str:
    """A rate as the form shows it, read back to the same number ("4M", "512K", "1000")."""
    if rate is None:
        return ""
    for unit, size in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if rate % size == 0:
            return f"{rate // size}{unit}"
    return str(rate)


# ---------------------------------------------------------------------------
# What a worker applies
# ---------------------------------------------------------------------------


class Table:
    """This process's copy of the admins' rows and the settings they make, stamped with the
    generation it had confirmed when it read them."""

    def __init__(self, app) -> None:
        self.app = app
        self.rows: dict[str, Limit] | None = None  # None: not read yet (environment only)
        self.stamp = -1
        self.pid: int | None = None
        self.failed_at = -RETRY_SECONDS
        self.built: tuple[Settings, dict | None, Settings] | None = None
        self.lock = threading.Lock()

    def fresh(self) -> bool:
        """True when the rows held were read after the last change this worker knows of
        (confirming its view when due)."""
        co = coherence(self.app)
        return (self.rows is not None and self.pid == os.getpid() and co.current()
                and co.valid(SUBJECT, self.stamp))

    def settings(self, base: Settings) -> Settings:
        """``base`` with the download limits in force now."""
        if not self.fresh():
            self.read()
        rows, built = self.rows, self.built
        if built is not None and built[0] is base and built[1] is rows:
            return built[2]
        entries = merged(base, rows or {})
        made = base if entries == base.download_limits else replace(base, download_limits=entries)
        self.built = (base, rows, made)
        return made

    def read(self) -> None:
        """Read the rows again, unless another greenlet just did or the database cannot
        answer (the rows held stay in force)."""
        with self.lock:
            co = coherence(self.app)
            if self.fresh() or time.monotonic() - self.failed_at < RETRY_SECONDS:
                return
            if not co.current():
                return
            stamp = co.stamp()  # before the read: a change committed during it is newer
            try:
                with self.app.app_context(), db.engine.connect() as conn:
                    found = conn.execute(select(DownloadLimitRule.who,
                                                DownloadLimitRule.connections,
                                                DownloadLimitRule.rate)).all()
            except SQLAlchemyError as exc:
                self.failed_at = time.monotonic()
                log.warning("download limits unreadable, the last ones read stay in force "
                            "(%s)", str(exc).splitlines()[0])
                return
            self.rows = {who: Limit(connections, rate) for who, connections, rate in found}
            self.stamp, self.pid = stamp, os.getpid()


def settings_in_force(app=None) -> Settings:
    """The app's settings (current_app's by default) with the download limits in force now,
    the environment's and the admins': what every download door decides by."""
    if app is None:
        from flask import current_app

        app = current_app._get_current_object()
    table = app.extensions.get("portal_limit_table")
    if table is None:
        table = app.extensions["portal_limit_table"] = Table(app)
    return table.settings(settings(app))


# ---------------------------------------------------------------------------
# What admins see and change
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """One key on the admin page: what is in force for it and where that comes from."""

    who: str
    limit: Limit | None  # in force; None: no entry (the key limits nobody)
    default: Limit | None  # the environment's
    row: DownloadLimitRule | None  # the admins'
    locked: str | None  # the environment's reason; None: admins may change it

    @property
    def source(self) -> str:
        """``locked``, ``admin``, ``environment`` or ``none``."""
        if self.locked is not None:
            return "locked"
        if self.row is not None:
            return "admin"
        return "environment" if self.default is not None else "none"

    @property
    def changed_at(self) -> datetime | None:
        """When an admin last set it (None: the environment's value)."""
        return None if self.row is None or self.locked else self.row.changed_at

    @property
    def changed_by(self) -> User | None:
        """Who last set it."""
        return None if self.row is None or self.locked else self.row.changed_by


def _order(who: str) -> tuple:
    return (0, LIMIT_ROLES.index(who), "") if who in LIMIT_ROLES else (1, 0, who)


def entry(session: Session, config: Settings, who: str) -> Entry:
    """What is in force for ``who`` now (read from SQL, not from this worker's copy)."""
    row = session.get(DownloadLimitRule, who)
    return _entry(config, who, row)


def _entry(config: Settings, who: str, row: DownloadLimitRule | None) -> Entry:
    default = dict(config.download_limits).get(who)
    locked = lock_of(config, who)
    limit = default if locked is not None or row is None else Limit(row.connections, row.rate)
    return Entry(who, limit, default, row, locked)


def entries(session: Session, config: Settings) -> list[Entry]:
    """Every key the environment (its limits and its locks) or an admin names, roles
    first, then groups by name."""
    rows = {row.who: row for row in session.scalars(select(DownloadLimitRule))}
    locked = {who for who, _ in config.download_limits_locked if who != LOCK_ALL}
    keys = sorted({*dict(config.download_limits), *rows, *locked}, key=_order)
    return [_entry(config, who, rows.get(who)) for who in keys]


def addable(session: Session, config: Settings, named: list[Entry]) -> list[str]:
    """The keys an admin may add: the roles, ``anonymous`` and the existing groups that no
    entry names yet and that are not locked."""
    taken = {e.who for e in named}
    groups = [f"group:{name}" for name in session.scalars(select(Group.name).order_by(Group.name))]
    return [who for who in (*LIMIT_ROLES, *groups)
            if who not in taken and lock_of(config, who) is None]


def may_name(session: Session, config: Settings, who: str) -> bool:
    """True when ``who`` is a key the page may show: a role, ``anonymous``, or a group that
    exists or that the environment or an entry names already."""
    if not is_limit_key(who):
        return False
    if (who in LIMIT_ROLES or who in dict(config.download_limits)
            or who in dict(config.download_limits_locked)):
        return True
    return (session.get(DownloadLimitRule, who) is not None
            or session.scalar(select(Group.id).where(Group.name == who[6:])) is not None)


def _shown(limit: Limit | None) -> dict | None:
    return None if limit is None else {"connections": limit.connections, "rate": limit.rate}


def save(session: Session, actor: User, config: Settings, who: str, limit: Limit | None, *,
         ip: str) -> bool:
    """Set ``who``'s limit (None: back to the environment's value), audited in the same
    transaction, not committed. False when nothing changed (nothing is written). The caller
    checks the lock first; a locked key is refused here too (ValueError)."""
    if lock_of(config, who) is not None:
        raise ValueError(f"the environment locks the download limit of {who}")
    before = entry(session, config, who)
    row = before.row
    if limit is None:
        if row is None:
            return False
        session.delete(row)
        after = before.default
    else:
        if row is not None and Limit(row.connections, row.rate) == limit:
            return False
        if row is None:
            row = DownloadLimitRule(who=who)
            session.add(row)
        row.connections, row.rate = limit.connections, limit.rate
        row.changed_by_id = actor.id
        row.changed_at = utcnow()
        after = limit
    audit(session, "limits.reset" if limit is None else "limits.changed", actor=actor,
          target=who, client_ip=ip,
          detail=json.dumps({"before": _shown(before.limit), "after": _shown(after)}))
    return True
