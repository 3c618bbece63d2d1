"""Who may read what: the one place that decides (``can_read``) and its SQL twin; and who
may manage a file (``manageable``); which of a readable file's versions a user may have
(``sees_version``: pending versions wait for their publication).

An access rule is one of ``public`` (anyone, no login), ``login`` (any signed-in user),
``group:A[,B...]`` (members of any of those groups) or ``user:NAME`` (a personal document:
that user only). Admins read everything; an owner reads their own files.
"""

from __future__ import annotations

import re

from sqlalchemy import ColumnElement, false, or_, select, true
from sqlalchemy.orm import Session

from .models import File, Group, User

NAME = re.compile(r"^[\w.\-@]{1,64}$")  # \w includes CJK letters; no comma, colon or LIKE wildcard


def parse_access(rule: str) -> tuple[str, tuple[str, ...]]:
    """Split a rule into its kind and names, or raise ValueError saying what is wrong."""
    rule = (rule or "").strip()
    if rule in ("public", "login"):
        return rule, ()
    kind, _, rest = rule.partition(":")
    if kind in ("group", "user"):
        names = tuple(n.strip() for n in rest.split(",") if n.strip())
        if not names or any(not NAME.match(n) for n in names):
            raise ValueError(f"invalid names in access rule {rule!r}")
        if kind == "user" and len(names) != 1:
            raise ValueError("user: takes exactly one user name")
        return kind, tuple(sorted(set(names)))
    raise ValueError(f"unknown access rule {rule!r}: use public, login, group:NAME or user:NAME")


def normalize_access(rule: str) -> str:
    """The canonical spelling of a valid rule (sorted, de-duplicated names)."""
    kind, names = parse_access(rule)
    return f"{kind}:{','.join(names)}" if names else kind


#: What a picker offers: everyone, everyone signed in, members of groups, one person.
KINDS = ("public", "login", "group", "user")
_NAME_SEPARATORS = re.compile(r"[\s,，、;；]+")  # what people type between group names


def compose_access(kind: str, names: str = "") -> str:
    """The canonical rule a picker's choice spells: ``kind`` and, for ``group`` or
    ``user``, the names typed (several groups separated by commas or spaces). Raises
    ValueError saying what is wrong."""
    kind = (kind or "").strip()
    if kind in ("public", "login"):
        return kind
    if kind not in KINDS:
        raise ValueError(f"unknown kind of access {kind!r}: use one of {', '.join(KINDS)}")
    parts = [n for n in _NAME_SEPARATORS.split(names or "") if n]
    if not parts:
        raise ValueError("name a group" if kind == "group" else "name a person")
    return normalize_access(f"{kind}:{','.join(parts)}")


def picker_parts(rule: str) -> tuple[str, str]:
    """(kind, names as typed) of a stored rule, to fill a picker; a rule that no longer
    parses shows as signed-in users' (the form then saves a valid one)."""
    try:
        kind, names = parse_access(rule)
    except ValueError:
        return "login", ""
    return kind, ", ".join(names)


def unknown_names(session: Session, rule: str) -> list[str]:
    """The groups or user a (valid) rule names that do not exist: a typo would make the
    file readable by nobody but its owner and the admins."""
    kind, names = parse_access(rule)
    if kind == "group":
        known = set(session.scalars(select(Group.name).where(Group.name.in_(names))))
    elif kind == "user":
        known = set(session.scalars(select(User.username).where(User.username.in_(names))))
    else:
        return []
    return [n for n in names if n not in known]


def can_read(user: User | None, file: File) -> bool:
    """True when this user (None or anonymous for nobody) may see and download the file.

    A draft (an upload not yet published) is read only by those who manage it, whatever
    audience its rule names: nothing reaches that audience before someone publishes it."""
    if file.deleted_at is not None:
        return False
    kind, names = parse_access(file.access)
    if is_public(file):
        return True
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return False
    if manageable(user, file):  # admins and the owner read what they manage
        return True
    if file.draft:
        return False
    if kind == "login":
        return True
    if kind == "group":
        return bool(user.group_names.intersection(names))
    return user.username == names[0]


def is_public(file: File) -> bool:
    """True when anyone, signed in or not, may read the file, so that shared caches may keep
    it: a live, published file whose rule is ``public``."""
    return file.access == "public" and not file.draft and file.deleted_at is None


def manageable(user: User, file: File) -> bool:
    """Admins manage every file (edit, delete, new versions); staff the files they own."""
    return user.is_admin or (file.owner_id is not None and file.owner_id == user.id)


def sees_version(user: User | None, file: File, number: int) -> bool:
    """True when a user who may read the file may also have its version ``number``: a
    published one, or a pending one (``file.pending``) for those who manage the file. The
    number's existence is the caller's to check."""
    if number not in file.pending:
        return True
    return (user is not None and getattr(user, "is_authenticated", False) and user.is_active
            and manageable(user, file))


def escape_like(text: str) -> str:
    """``text`` for a LIKE pattern with ``escape='\\'``: its wildcards matched literally."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def names_group(name: str) -> ColumnElement[bool]:
    """SQL filter selecting the files whose (canonical) rule names this group."""
    esc = escape_like(name)
    return or_(File.access == f"group:{name}",
               File.access.like(f"group:{esc},%", escape="\\"),
               File.access.like(f"group:%,{esc}", escape="\\"),
               File.access.like(f"group:%,{esc},%", escape="\\"))


def readable_clause(user: User | None) -> ColumnElement[bool]:
    """SQL filter selecting exactly the files can_read allows, for the catalog and search."""
    live = File.deleted_at.is_(None)
    published = File.draft.is_(False)
    if user is None or not getattr(user, "is_authenticated", False) or not user.is_active:
        return live & published & (File.access == "public")
    if user.is_admin:
        return live & true()
    allowed = [File.access.in_(("public", "login", f"user:{user.username}"))]
    allowed += [names_group(name) for name in user.group_names]
    return live & or_(File.owner_id == user.id, published & or_(false(), *allowed))
