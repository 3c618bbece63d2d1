"""What a directory says about an account, and the portal user it becomes.

Every method (LDAP bind, ``user sync-ldap``, CAS, OIDC) ends here, so the rules are one:
the user id is the portal username (access rules name it as ``user:2023001``), the
directory's groups replace the user's groups (``group:NAME``), the role comes from
SSO_ROLE_MAP, and the password hash is unusable. Users are written by the admin pages' own
service (admin/service.save_user), so a disabled account is refused through the same path.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session

from ...access import NAME
from ...admin.service import save_user
from ...models import UNUSABLE_PASSWORD, User
from ...settings import SSO_ROLES

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DirectoryAccount:
    """An account as its directory describes it."""

    source: str  # "ldap", "cas" or "oidc"
    uid: str
    display_name: str = ""
    groups: tuple[str, ...] = ()
    attributes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)


class SignInRefused(Exception):
    """A directory account the portal does not let in; ``reason`` is a short code
    (unknown_user, disabled, bad_uid, local_account) for the audit log and the page."""

    def __init__(self, reason: str, uid: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.uid = uid


def values(raw: object) -> tuple[str, ...]:
    """An attribute's values as text: a directory gives one value, a list, or nothing."""
    if raw is None:
        return ()
    if isinstance(raw, str | bytes):
        raw = [raw]
    if not isinstance(raw, Iterable):
        raw = [raw]
    return tuple(v.decode("utf-8", "replace") if isinstance(v, bytes) else str(v)
                 for v in raw if v is not None and v != "")


def group_names(raw: Iterable[str]) -> tuple[str, ...]:
    """The names usable in access rules (``group:NAME``), sorted; others are logged and left
    out rather than refusing the sign-in."""
    kept = set()
    for name in raw:
        if NAME.match(name):
            kept.add(name)
        else:
            log.warning("directory group %r is not a usable group name; left out", name)
    return tuple(sorted(kept))


def role_for(account: DirectoryAccount, role_map: tuple, default: str | None) -> str | None:
    """The strongest role whose rules the account matches (``group:NAME`` or ``attr=value``,
    attribute names compared case-insensitively), else ``default``."""
    attributes = {k.lower(): set(v) for k, v in account.attributes.items()}
    rules = dict(role_map)
    for role in SSO_ROLES:
        for rule in rules.get(role, ()):
            if rule.startswith("group:"):
                if rule[6:] in account.groups:
                    return role
            else:
                name, _, wanted = rule.partition("=")
                if wanted in attributes.get(name.strip().lower(), ()):
                    return role
    return default


def apply_account(session: Session, account: DirectoryAccount, *, auto_create: bool,
                  role_map: tuple, default_role: str, ip: str = "", sync: bool = False,
                  user: User | None = None) -> tuple[User, bool]:
    """Create or update the portal user of ``account`` (the caller commits); returns the
    user and whether anything changed. Raises SignInRefused for an account the portal must
    not take: a bad uid, a local account with its own password, an unknown one when
    ``auto_create`` is off, and (at sign-in, not ``sync``) a disabled user. Nothing here
    enables a disabled user again: an admin's disable stands until an admin lifts it.

    With SSO_ROLE_MAP set the directory decides the role every time; without it a new user
    gets ``default_role`` and an existing one keeps the role an admin gave."""
    if not NAME.match(account.uid):
        raise SignInRefused("bad_uid", account.uid)
    if user is None:
        user = session.scalar(select(User).where(User.username == account.uid))
    if user is None and not auto_create:
        raise SignInRefused("unknown_user", account.uid)
    if user is not None and user.auth_source == "local" and user.has_usable_password():
        raise SignInRefused("local_account", account.uid)
    if user is not None and not sync and not user.active:
        raise SignInRefused("disabled", account.uid)
    role = role_for(account, role_map, None)
    if role is None:
        role = default_role if user is None or role_map else user.role
    before = None if user is None else (user.display_name, user.role, user.active,
                                        sorted(user.group_names), user.auth_source)
    user = save_user(session, None, user, username=account.uid,
                     display_name=account.display_name or account.uid, role=role,
                     groups=list(account.groups), password=None,
                     active=True if user is None else user.active, ip=ip)
    if user.auth_source in (None, "local"):  # the first directory keeps it (sync-ldap's own)
        user.auth_source = account.source
    if user.password_hash != UNUSABLE_PASSWORD:
        user.set_unusable_password()
    after = (user.display_name, user.role, user.active, sorted(account.groups), user.auth_source)
    return user, before != after


@dataclass
class SyncReport:
    """What one sync changed."""

    created: int = 0
    updated: int = 0
    disabled: int = 0
    unchanged: int = 0
    skipped: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (f"created {self.created}, updated {self.updated}, disabled {self.disabled}, "
                f"unchanged {self.unchanged}, skipped {len(self.skipped)}")


def sync_accounts(session: Session, accounts: Iterable[DirectoryAccount], *, source: str,
                  role_map: tuple, default_role: str) -> SyncReport:
    """Make the portal's ``source`` users what the directory lists (the caller commits):
    create the new, update the changed, disable those it no longer lists (LDAP_USER_FILTER
    no longer matching included). Disabling goes through save_user, as on the admin pages,
    so the change log ends their sessions and links within COHERENCE_SECONDS. A disabled
    user stays disabled (an admin enables it again). Local accounts that share a directory
    name are left alone and reported as skipped."""
    report = SyncReport()
    users = {u.username: u for u in session.scalars(select(User))}
    listed = set()
    for account in accounts:
        listed.add(account.uid)
        existing = users.get(account.uid)
        try:
            _user, changed = apply_account(session, account, auto_create=True,
                                          role_map=role_map, default_role=default_role,
                                          sync=True, user=existing)
        except SignInRefused as refused:
            report.skipped.append(f"{account.uid}: {refused.reason}")
            continue
        if existing is None:
            report.created += 1
        elif changed:
            report.updated += 1
        else:
            report.unchanged += 1
    for name, user in users.items():
        if user.auth_source == source and name not in listed and user.active:
            save_user(session, None, user, username=name, display_name=user.display_name,
                      role=user.role, groups=sorted(user.group_names), password=None,
                      active=False, ip="")
            report.disabled += 1
    return report
