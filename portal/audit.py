"""The audit log: one function to write an entry, in the caller's transaction, and the words
the audit page shows for the actions it knows."""

from __future__ import annotations

import json

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Session

from .models import AuditEntry, User


def audit(session: Session, action: str, *, actor: User | None = None, target: str = "",
          detail: str = "", client_ip: str = "") -> None:
    """Add an entry; it is committed with the change it describes (or alone by the caller)."""
    actor_id = actor.id if actor is not None and getattr(actor, "is_authenticated", False) else None
    session.add(AuditEntry(actor_id=actor_id, action=action, target=target[:200],
                           detail=detail[:2000], client_ip=client_ip[:64]))


#: Actions the audit page names in words (the others show their code).
ACTION_WORDS = {
    "limits.changed": _l("Download limit changed"),
    "limits.reset": _l("Download limit given back to the server’s settings"),
    "file.version_published": _l("Pending version published"),
    "file.version_discarded": _l("Pending version discarded"),
}


def action_words(action: str) -> str | None:
    """The action in the page's language, None when it has no words yet."""
    words = ACTION_WORDS.get(action)
    return None if words is None else str(words)


def detail_words(entry: AuditEntry) -> str:
    """The entry's detail in the page's language where its action stores it as data (the
    download limits: who, and each field before and after), else the detail as written."""
    if not entry.action.startswith("limits."):
        return entry.detail
    try:
        data = json.loads(entry.detail)
        before, after = data["before"] or {}, data["after"] or {}
    except (ValueError, KeyError, TypeError, AttributeError):
        return entry.detail
    changes = []
    for name, label in (("connections", _("connections at once")), ("rate", _("rate"))):
        old, new = before.get(name), after.get(name)
        if old != new:
            changes.append(_("%(what)s %(old)s → %(new)s", what=label,
                             old=_limit_value(name, old), new=_limit_value(name, new)))
    said = changes[0] if changes else _("same values as before")
    if len(changes) == 2:
        said = _("%(first)s; %(second)s", first=changes[0], second=changes[1])
    return _("%(who)s: %(changes)s", who=limit_key_words(entry.target), changes=said)


def limit_key_words(who: str) -> str:
    """A download limit's key in words: a role, anonymous, or a group."""
    from .admin.forms import ROLE_LABELS

    if who.startswith("group:"):
        return _("Group %(name)s", name=who[6:])
    if who == "anonymous":
        return _("Anonymous (per client address)")
    return str(ROLE_LABELS.get(who, who))


def _limit_value(name: str, value: int | None) -> str:
    from .catalog.service import human_size

    if value is None:
        return _("unlimited")
    return f"{human_size(value)}/s" if name == "rate" else str(value)

