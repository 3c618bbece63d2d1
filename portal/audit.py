"""The audit log: one function to write an entry, in the caller's transaction, and the words
the audit page shows for every action and, read back from the formats the callers store, for
their details (portal/audit_details.py)."""

from __future__ import annotations

from flask_babel import lazy_gettext as _l
from sqlalchemy.orm import Session

from .models import AuditEntry, User


def audit(session: Session, action: str, *, actor: User | None = None, target: str = "",
          detail: str = "", client_ip: str = "") -> None:
    """Add an entry; it is committed with the change it describes (or alone by the caller)."""
    actor_id = actor.id if actor is not None and getattr(actor, "is_authenticated", False) else None
    session.add(AuditEntry(actor_id=actor_id, action=action, target=target[:200],
                           detail=detail[:2000], client_ip=client_ip[:64]))


#: Every action written (``audit(`` in portal), in words; a test finds the codes in the
#: source and fails on one missing here.
ACTION_WORDS = {
    "login.success": _l("Signed in"),
    "login.failure": _l("Sign-in refused"),
    "logout.single": _l("Signed out by the campus sign-in service"),
    "user.created": _l("User created"),
    "user.changed": _l("User changed"),
    "user.password_changed": _l("Changed their own password"),
    "user.signed_out_everywhere": _l("Signed out on every device"),
    "user.sync_ldap": _l("Users brought up to date from the directory (LDAP)"),
    "user.directory_renamed": _l("Directory account renamed"),
    "user.bound": _l("Directory account bound to the user"),
    "user.linked": _l("Directory account linked"),
    "user.unlinked": _l("Directory account unlinked"),
    "group.created": _l("User group created"),
    "group.deleted": _l("User group deleted"),
    "file.uploaded": _l("File uploaded"),
    "file.published": _l("Draft published"),
    "file.access_changed": _l("Who may read it changed"),
    "file.deleted": _l("File deleted"),
    "file.restored": _l("File restored"),
    "file.version_published": _l("Pending version published"),
    "file.version_discarded": _l("Pending version discarded"),
    "limits.changed": _l("Download limit changed"),
    "limits.reset": _l("Download limit given back to the server’s settings"),
}

#: The audit page's filter: families of actions (the prefix ``?action=`` takes), in words.
ACTION_FAMILIES = {
    "login.": _l("Sign-ins"),
    "logout.": _l("Sign-outs"),
    "user.": _l("Users"),
    "group.": _l("User groups"),
    "file.": _l("Files"),
    "limits.": _l("Download limits"),
}


def action_words(action: str) -> str | None:
    """The action in the page's language, None for a code it has no words for (an entry
    written by a newer or older version)."""
    words = ACTION_WORDS.get(action)
    return None if words is None else str(words)
