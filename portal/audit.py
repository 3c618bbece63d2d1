"""The audit log: one function to write an entry, in the caller's transaction."""

from __future__ import annotations

from sqlalchemy.orm import Session

from .models import AuditEntry, User


def audit(session: Session, action: str, *, actor: User | None = None, target: str = "",
          detail: str = "", client_ip: str = "") -> None:
    """Add an entry; it is committed with the change it describes (or alone by the caller)."""
    actor_id = actor.id if actor is not None and getattr(actor, "is_authenticated", False) else None
    session.add(AuditEntry(actor_id=actor_id, action=action, target=target[:200],
                           detail=detail[:2000], client_ip=client_ip[:64]))
