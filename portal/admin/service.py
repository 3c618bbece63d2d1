"""User and group management, shared by the admin pages (the CLI has its own refusals)."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from ..audit import audit
from ..models import Group, User


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
