"""User and group management, shared by the admin pages (the CLI has its own refusals)."""

from __future__ import annotations

from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from ..access import escape_like, names_group
from ..audit import audit
from ..models import File, Group, User


def groups_named(session: Session, names: list[str]) -> list[Group]:
    """The named groups, created when missing (names already validated)."""
    found = []
    for name in dict.fromkeys(names):
        group = session.scalar(select(Group).where(Group.name == name))
        if group is None:
            group = Group(name=name)
            session.add(group)
        found.append(group)
    return found


def user_matches(q: str) -> ColumnElement[bool]:
    """SQL filter: users whose username or display name contains ``q``, any case."""
    pattern = f"%{escape_like(q.lower())}%"
    return or_(func.lower(User.username).like(pattern, escape="\\"),
               func.lower(User.display_name).like(pattern, escape="\\"))


def unknown_groups(session: Session, names: list[str]) -> list[str]:
    """The names among ``names`` that no group has (the admin pages create no group
    silently: a typo would put the person in a group nobody else is in)."""
    known = set(session.scalars(select(Group.name).where(Group.name.in_(names))))
    return [n for n in dict.fromkeys(names) if n not in known]


def group_uses(session: Session, group: Group) -> tuple[list[File], list[User]]:
    """The live files whose access names the group, and its members: what deleting it
    would change."""
    files = session.scalars(select(File).where(names_group(group.name),
                                               File.deleted_at.is_(None))
                            .order_by(File.title)).all()
    return list(files), sorted(group.members, key=lambda u: u.username)


def save_user(session: Session, actor: User, user: User | None, *, username: str,
              display_name: str, role: str, groups: list[str], password: str | None,
              active: bool, ip: str) -> User:
    """Create (user is None) or update a user, and audit what changed."""
    created = user is None
    if created:
        user = User(username=username)
        session.add(user)
    before = (user.role, user.active, sorted(user.group_names) if not created else [])
    user.display_name = display_name or username
    user.role = role
    user.active = active
    user.groups = groups_named(session, groups)
    if password:
        user.set_password(password)
    changes = []
    if created:
        changes.append(f"created role={role} groups={','.join(groups)}")
    else:
        if before[0] != role:
            changes.append(f"role {before[0]}->{role}")
        if before[1] != active:
            changes.append("enabled" if active else "disabled")
        if before[2] != sorted(groups):
            changes.append(f"groups {','.join(before[2])}->{','.join(sorted(groups))}")
        if password:
            changes.append("password reset")
    if changes:
        audit(session, "user.created" if created else "user.changed", actor=actor,
              target=user.username, detail="; ".join(changes), client_ip=ip)
    return user
