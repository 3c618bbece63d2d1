"""Who a download counts against and how they are limited, and how a refusal is answered:
pure functions of the user, the client address and the settings (plan.py asks
:func:`person_of` for every download; limits.py decides whether it may start).

Who is a person (docs/limits.md): a signed-in user, or the user who made a signed link (a
link's downloads count as its maker's); an anonymous download of a public file is its
client address. A person matching several entries (their role and several groups) gets
the most generous of them, each dimension on its own; a person matching none is not
limited.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..settings import UNLIMITED, Limit, Settings


@dataclass(frozen=True, slots=True)
class Person:
    """Whose connections a download counts against, and their limit."""

    key: str
    limit: Limit


def limit_for(user, limits) -> Limit:
    """The limit of a user (None: anonymous) under DOWNLOAD_LIMITS: the most generous of
    the entries their role and groups match, UNLIMITED when none does."""
    if not limits:  # the default: nothing to look up on the hot path
        return UNLIMITED
    table = dict(limits)
    if user is None:
        names = ["anonymous"]
    else:
        names = [user.role, *(f"group:{g}" for g in sorted(user.group_names))]
    found = [table[name] for name in names if name in table]
    if not found:
        return UNLIMITED
    joined = found[0]
    for other in found[1:]:
        joined = joined.joined(other)
    return joined


def person_of(user, client_ip: str, settings: Settings) -> Person:
    """The person of a download: the user (a signed link's maker), else the client address."""
    key = f"ip:{client_ip or '-'}" if user is None else f"u:{user.id}"
    return Person(key, limit_for(user, settings.download_limits))


@dataclass(frozen=True, slots=True)
class Refusal:
    """No connection now: 429 (the person's limit) or 503 (the node's budget)."""

    status: int
    retry_after: int

    @property
    def reason(self) -> str:
        """The counter it goes to."""
        return "refused_person" if self.status == 429 else "refused_node"


def refusal(refused: Refusal) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer every door sends for a refusal: status, headers, body."""
    text = (b"Too many download connections; retry later.\n" if refused.status == 429
            else b"The server is busy; retry later.\n")
    return refused.status, [("Retry-After", str(refused.retry_after)),
                            ("Content-Type", "text/plain; charset=utf-8"),
                            ("Content-Length", str(len(text))),
                            ("Cache-Control", "no-store")], text


def needs_admission(settings: Settings) -> bool:
    """True when any download could be limited or refused (else admit is never asked)."""
    return bool(settings.download_limits) or settings.download_admission_connections > 0
