"""What a directory says about an account, and the portal user it becomes.

Every method (LDAP bind, ``user sync-ldap``, CAS, OIDC) ends here, so the rules are one:
the user id is the portal username (access rules name it as ``user:2023001``), the
directory's groups replace the user's groups (``group:NAME``), the role comes from
SSO_ROLE_MAP, and the password hash is unusable. Users are written by the admin pages' own
service (admin/service.save_user), so a disabled account is refused through the same path.

Who an account is never rests on its name alone: a sign-in is the user bound to its method,
issuer and subject (models.UserIdentity), whatever name it brings. A name alone leads only
to an unbound user of the same method (one made before bindings existed, or reserved by an
admin for that method), which the sign-in then binds; any other account of that name (local,
another method, another issuer or subject) is refused until an admin links the two.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from sqlalchemy import select
from sqlalchemy.orm import Session, selectinload

from ...access import NAME
from ...admin.service import save_user
from ...audit import audit
from ...models import UNUSABLE_PASSWORD, User, UserIdentity
from ...settings import AUTH_METHODS, SSO_ROLES

log = logging.getLogger(__name__)


#: The sign-in methods whose accounts come from a directory.
DIRECTORY_METHODS = tuple(m for m in AUTH_METHODS if m != "local")


@dataclass(frozen=True)
class DirectoryAccount:
    """An account as its directory describes it: ``source`` is the method, ``issuer`` the
    provider that vouches for it and ``subject`` the provider's stable id of the person."""

    source: str  # "ldap", "cas" or "oidc"
    uid: str
    display_name: str = ""
    groups: tuple[str, ...] = ()
    attributes: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    issuer: str = ""
    subject: str = ""

    @property
    def binding(self) -> str:
        """Method, issuer and subject as the audit log and ``user link`` name them."""
        return binding_text(self.source, self.issuer, self.subject)


def binding_text(method: str, issuer: str, subject: str) -> str:
    """A binding as the audit log names it (what ``user link`` takes)."""
    return f"method={method}; issuer={issuer}; subject={subject}"


def bound_to(session: Session, method: str, issuer: str, subject: str) -> UserIdentity | None:
    """The binding of this directory account, if any."""
    return session.scalar(select(UserIdentity).where(
        UserIdentity.method == method, UserIdentity.issuer == issuer,
        UserIdentity.subject == subject))


def issuer_id(url: str) -> str:
    """An issuer URL as bindings keep it: without a trailing slash, which providers and
    configurations add or leave out for the same issuer."""
    return url.strip().rstrip("/")


class SignInRefused(Exception):
    """A directory account the portal does not let in; ``reason`` is a short code
    (unknown_user, disabled, bad_uid, local_account, other_source) for the audit log and the
    page, ``detail`` what the audit log adds (the binding a link would need)."""

    def __init__(self, reason: str, uid: str = "", detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.uid = uid
        self.detail = detail


@dataclass
class Known:
    """Every user (by name) and every binding of one method (by issuer and subject), read
    once for a sync instead of two queries per account."""

    users: dict[str, User]
    bindings: dict[tuple[str, str], UserIdentity]

    @classmethod
    def load(cls, session: Session, method: str) -> Known:
        """The users with their bindings, and the bindings of ``method``."""
        users = session.scalars(select(User).options(selectinload(User.identities))).all()
        return cls({u.username: u for u in users},
                   {(i.issuer, i.subject): i for u in users for i in u.identities
                    if i.method == method})


def resolve(session: Session, account: DirectoryAccount,
            known: Known | None = None) -> tuple[User | None, UserIdentity | None]:
    """The portal user ``account`` is and its binding: (user, binding) when bound, (user,
    None) for an unbound user of the account's method that this sign-in binds, (None,
    None) when no account has the name. SignInRefused when the name belongs to another
    account: ``local_account`` (a portal password), else ``other_source``."""
    if known is not None:
        binding = known.bindings.get((account.issuer, account.subject))
    else:
        binding = bound_to(session, account.source, account.issuer, account.subject)
    if binding is not None:
        return binding.user, binding
    if not NAME.match(account.uid):
        raise SignInRefused("bad_uid", account.uid)
    user = (known.users.get(account.uid) if known is not None else
            session.scalar(select(User).where(User.username == account.uid)))
    if user is None:
        return None, None
    if user.auth_source == "local" and user.has_usable_password():
        raise SignInRefused("local_account", account.uid, account.binding)
    if (user.auth_source != account.source
            or any(i.method == account.source for i in user.identities)):
        raise SignInRefused("other_source", account.uid, account.binding)
    return user, None


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


def _decides(user: User, binding: UserIdentity | None) -> bool:
    """Whether a sign-in through ``binding`` decides the user's name, groups and role: the
    user's first binding of its own method does (None: the one this sign-in makes, which
    resolve allows only for an unbound user of that method); a link added after it, or to
    an account of another method, only signs in."""
    if binding is None:
        return True
    own = [i for i in user.identities if i.method == user.auth_source]
    return bool(own) and own[0] is binding


def apply_account(session: Session, account: DirectoryAccount, *, auto_create: bool,
                  role_map: tuple, default_role: str, ip: str = "", sync: bool = False,
                  known: Known | None = None) -> tuple[User, bool]:
    """Create or update the portal user of ``account`` (the caller commits); returns the
    user and whether anything changed. Raises SignInRefused for an account the portal must
    not take: a bad uid, a name that belongs to another account (resolve), an unknown one
    when ``auto_create`` is off, and (at sign-in, not ``sync``) a disabled user. Nothing
    here enables a disabled user again: an admin's disable stands until an admin lifts it.

    The user keeps its username when the directory's name for it changes (access rules
    name it); the binding notes the new name and the audit log says so. Through a link an
    admin added (to a local account, an LDAP user signing in by OIDC, a second issuer) the
    user is only signed in: its own source keeps deciding its name, groups, role and
    password (_decides).

    With SSO_ROLE_MAP set the directory decides the role every time; without it a new user
    gets ``default_role`` and an existing one keeps the role an admin gave."""
    user, binding = resolve(session, account, known)
    if user is None and not auto_create:
        raise SignInRefused("unknown_user", account.uid)
    if user is not None and not sync and not user.active:
        raise SignInRefused("disabled", account.uid)
    if binding is not None and binding.name != account.uid:
        if binding.name:  # a link has no name until its first sign-in
            audit(session, "user.directory_renamed", target=user.username,
                  detail=f"{account.binding}; {binding.name} -> {account.uid}; username kept",
                  client_ip=ip)
        binding.name = account.uid
    if user is not None and not _decides(user, binding):
        return user, False
    role = role_for(account, role_map, None)
    if role is None:
        role = default_role if user is None or role_map else user.role
    before = None if user is None else (user.display_name, user.role, user.active,
                                        sorted(user.group_names))
    created = user is None
    user = save_user(session, None, user, username=account.uid if created else user.username,
                     display_name=account.display_name or account.uid, role=role,
                     groups=list(account.groups), password=None,
                     active=True if created else user.active, ip=ip)
    user.auth_source = account.source
    if user.password_hash != UNUSABLE_PASSWORD:
        user.set_unusable_password()
    if binding is None:
        user.identities.append(UserIdentity(method=account.source, issuer=account.issuer,
                                            subject=account.subject, name=account.uid))
        if not created:
            audit(session, "user.bound", target=user.username, detail=account.binding,
                  client_ip=ip)
    after = (user.display_name, user.role, user.active, sorted(account.groups))
    return user, binding is None or before != after


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
                  issuer: str, role_map: tuple, default_role: str) -> SyncReport:
    """Make the portal's ``source`` users of the directory ``issuer`` what it lists (the
    caller commits): create the new, bind and update the listed, disable those it no longer
    lists (LDAP_USER_FILTER no longer matching included). An account is matched as at
    sign-in (resolve): by its binding, else by name to an unbound user of ``source``; a name
    that belongs to another account is left alone and reported as skipped. Users bound only
    to another issuer of ``source`` are not this directory's to disable. Disabling goes
    through save_user, as on the admin pages, so the change log ends their sessions and
    links within COHERENCE_SECONDS. A disabled user stays disabled (an admin enables it
    again)."""
    report = SyncReport()
    known = Known.load(session, source)
    listed = set()
    for account in accounts:
        try:
            user, changed = apply_account(session, account, auto_create=True,
                                          role_map=role_map, default_role=default_role,
                                          sync=True, known=known)
        except SignInRefused as refused:
            report.skipped.append(f"{account.uid}: {refused.reason}")
            continue
        listed.add(user)
        if user.username not in known.users:
            known.users[user.username] = user
            report.created += 1
        elif changed:
            report.updated += 1
        else:
            report.unchanged += 1
        known.bindings.update({(i.issuer, i.subject): i for i in user.identities
                               if i.method == source})
    for name, user in list(known.users.items()):
        issuers = {i.issuer for i in user.identities if i.method == source}
        if (user.auth_source == source and user not in listed and user.active
                and (not issuers or issuer in issuers)):
            save_user(session, None, user, username=name, display_name=user.display_name,
                      role=user.role, groups=sorted(user.group_names), password=None,
                      active=False, ip="")
            report.disabled += 1
    return report


class LinkRefused(Exception):
    """An admin's link that cannot be made; the message says why."""


def link(session: Session, user: User, *, method: str, issuer: str, subject: str,
         ip: str = "") -> bool:
    """Bind the directory account (method, issuer, subject) to ``user``, audited as
    ``user.linked`` (the caller commits): from then on that account signs in as this user,
    whatever name it brings. False when it was bound to this user already; LinkRefused when
    it is bound to another user (unlink it there first) or the method is not a directory's."""
    if method not in DIRECTORY_METHODS:
        raise LinkRefused(f"method must be one of {', '.join(DIRECTORY_METHODS)}")
    if not issuer or not subject:
        raise LinkRefused("an issuer and a subject are needed")
    bound = bound_to(session, method, issuer, subject)
    if bound is not None and bound.user_id != user.id:
        raise LinkRefused(f"this {method} account is linked to {bound.user.username!r}: "
                          "unlink it there first")
    if bound is not None:
        return False
    user.identities.append(UserIdentity(method=method, issuer=issuer, subject=subject))
    audit(session, "user.linked", target=user.username,
          detail=binding_text(method, issuer, subject), client_ip=ip)
    return True


def unlink(session: Session, user: User, *, method: str, issuer: str,
           subject: str | None = None, ip: str = "") -> int:
    """Remove ``user``'s bindings of ``method`` at ``issuer`` (only ``subject``'s when
    given), audited as ``user.unlinked``, and end the user's sessions: whoever signed in
    through them is out within COHERENCE_SECONDS (the caller commits). Returns how many
    were removed."""
    gone = [i for i in user.identities if i.method == method and i.issuer == issuer
            and (subject is None or i.subject == subject)]
    for identity in gone:
        user.identities.remove(identity)
        audit(session, "user.unlinked", target=user.username,
              detail=binding_text(method, issuer, identity.subject), client_ip=ip)
    if gone:
        user.end_sessions()
    return len(gone)
