"""An audit entry's detail and target in the page's language, read back from the formats the
callers write (portal/audit.py's ``audit``). The stored formats never change, so old entries
read the same; a detail that does not parse is shown as stored.

Each reader returns Markup: the data in it (file names, group names, hashes) is escaped, and a
SHA-256 shows its first hex digits with the whole value in a title."""

from __future__ import annotations

import json
import re
from collections.abc import Callable

from flask_babel import gettext as _
from flask_babel import lazy_gettext as _l
from markupsafe import Markup, escape

from .models import AuditEntry

#: Sign-in methods as the log names them (``method=...``); "password" is the older name of
#: "local".
METHOD_WORDS = {
    "local": _l("password"),
    "password": _l("password"),
    "ldap": _l("campus directory (LDAP)"),
    "cas": _l("campus sign-in (CAS)"),
    "oidc": _l("campus sign-in (OIDC)"),
}

#: Why a sign-in was refused (portal/auth/sso/failures.py's codes), short, for the log.
REASON_WORDS = {
    "": _l("wrong user name or password"),
    "unavailable": _l("the sign-in service could not be reached"),
    "unknown_user": _l("the account has no access to the portal"),
    "disabled": _l("the account is disabled"),
    "local_account": _l("the name belongs to a local account"),
    "other_source": _l("the name belongs to an account that signs in another way"),
    "bad_uid": _l("the account’s user id cannot be used"),
    "bad_ticket": _l("the sign-in could not be confirmed"),
    "replayed": _l("the sign-in was already used"),
    "clock_skew": _l("the clocks of the portal and the sign-in service disagree"),
    "denied": _l("cancelled or refused by the sign-in service"),
    "no ticket": _l("no ticket was given"),
}

SHA256 = re.compile(r"[0-9a-f]{64}")
BINDING = r"method=(\w+); issuer=(.*?); subject=(.*?)"


def fill(template: str, **values: object) -> Markup:
    """A translated template (``_("...")`` without values) filled with escaped values."""
    return Markup(escape(template)) % values


def listed(items: list) -> Markup:
    """Items joined as the page's language lists them."""
    return Markup(escape(_(", "))).join(items)


def digest(value: str) -> Markup:
    """A hash's first 12 digits, the whole in the title (a SHA-256 would widen the table)."""
    return Markup('<code class="digest" title="{0}">{1}…</code>').format(value, value[:12])


def method_words(method: str) -> str:
    words = METHOD_WORDS.get(method)
    return method if words is None else str(words)


def access_words(rule: str) -> str:
    from .admin.forms import access_words as words

    return words(rule)


def _login(detail: str) -> Markup | None:
    """``method=M`` (a sign-in, a single logout), or a refused one's
    ``method=M[; reason[; more]]`` (a wrong password stores no reason)."""
    method = detail.partition("; ")[0]
    if not method.startswith("method="):
        return None
    said = fill(_("with %(method)s"), method=method_words(method[7:]))
    return said


def _failure(entry: AuditEntry) -> Markup | None:
    said = _login(entry.detail)
    if said is None:
        return None
    reason, _sep, more = entry.detail.partition("; ")[2].partition("; ")
    words = REASON_WORDS.get(reason)
    why = escape(str(words)) if words is not None else escape(reason)
    if more:
        extra = _binding(more)
        if extra is None:
            extra = REASON_WORDS.get(more)
            extra = escape(more) if extra is None else escape(str(extra))
        why = fill(_("%(reason)s (%(more)s)"), reason=why, more=extra)
    return fill(_("%(method)s: %(reason)s"), method=said, reason=why)


def _binding(detail: str) -> Markup | None:
    found = re.fullmatch(BINDING, detail)
    if found is None:
        return None
    method, issuer, subject = found.groups()
    return fill(_("%(method)s account %(subject)s at %(issuer)s"), method=method_words(method),
                subject=subject, issuer=issuer)


def _renamed(detail: str) -> Markup | None:
    found = re.fullmatch(BINDING + r"; (.*) -> (.*); username kept", detail)
    if found is None:
        return None
    return fill(_("%(account)s: renamed %(old)s → %(new)s in the directory; the user name "
                  "stays"), account=_binding("; ".join(
                      f"{k}={v}" for k, v in zip(("method", "issuer", "subject"),
                                                 found.groups()[:3], strict=True))),
                old=found.group(4), new=found.group(5))


def _groups(names: str) -> Markup:
    names_ = [n for n in names.split(",") if n]
    return listed(names_) if names_ else Markup(escape(_("none")))


def _user_change(part: str) -> Markup | None:
    from .admin.forms import ROLE_LABELS

    def role(code: str) -> str:
        return str(ROLE_LABELS.get(code, code))

    if found := re.fullmatch(r"created role=(\w+) groups=(\S*)", part):
        return fill(_("role %(role)s, groups: %(groups)s"), role=role(found.group(1)),
                    groups=_groups(found.group(2)))
    if found := re.fullmatch(r"role (\w+)->(\w+)", part):
        return fill(_("role %(old)s → %(new)s"), old=role(found.group(1)),
                    new=role(found.group(2)))
    if found := re.fullmatch(r"groups (\S*)->(\S*)", part):
        return fill(_("groups %(old)s → %(new)s"), old=_groups(found.group(1)),
                    new=_groups(found.group(2)))
    words = {"enabled": _l("enabled"), "disabled": _l("disabled"),
             "password reset": _l("password reset")}.get(part)
    return None if words is None else Markup(escape(str(words)))


def _user(entry: AuditEntry) -> Markup | None:
    parts = [_user_change(p) for p in entry.detail.split("; ")]
    return None if None in parts else Markup(escape(_("; "))).join(parts)


def _sync(entry: AuditEntry) -> Markup | None:
    found = re.fullmatch(r"created (\d+), updated (\d+), disabled (\d+), unchanged (\d+), "
                         r"skipped (\d+)", entry.detail)
    if found is None:
        return None
    return fill(_("%(created)s created, %(updated)s updated, %(disabled)s disabled, "
                  "%(unchanged)s unchanged, %(skipped)s skipped"),
                **dict(zip(("created", "updated", "disabled", "unchanged", "skipped"),
                           found.groups(), strict=True)))


def _access_change(entry: AuditEntry) -> Markup | None:
    old, sep, new = entry.detail.partition(" -> ")
    if not sep:
        return None
    return fill(_("%(old)s → %(new)s"), old=access_words(old), new=access_words(new))


def _version(entry: AuditEntry) -> Markup | None:
    from .catalog.service import human_size

    found = re.fullmatch(r"version (\d+)( \(pending\))?: (.*?)"
                         r"(?:, (\d+) bytes)?(?:, sha256 ([0-9a-f]{64}))?(?:, upload (\w+))?",
                         entry.detail, re.S)
    if found is None:
        return None
    number, pending, name, size, sha, upload = found.groups()
    said = fill(_("version %(number)s: %(name)s"), number=number, name=name)
    if pending:
        said = fill(_("%(said)s (pending publication)"), said=said)
    if size:
        said = fill(_("%(said)s, %(size)s"), said=said, size=human_size(int(size)))
    if sha:
        said = fill(_("%(said)s, SHA-256 %(digest)s"), said=said, digest=digest(sha))
    if upload:
        said = fill(_("%(said)s, upload %(id)s"), said=said, id=digest(upload))
    return said


def _limits(entry: AuditEntry) -> Markup | None:
    try:
        data = json.loads(entry.detail)
        before, after = data["before"] or {}, data["after"] or {}
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    changes = []
    for name, label in (("connections", _("connections at once")), ("rate", _("rate"))):
        old, new = before.get(name), after.get(name)
        if old != new:
            changes.append(_("%(what)s %(old)s → %(new)s", what=label,
                             old=_limit_value(name, old), new=_limit_value(name, new)))
    said = changes[0] if changes else _("same values as before")
    if len(changes) == 2:
        said = _("%(first)s; %(second)s", first=changes[0], second=changes[1])
    return fill(_("%(who)s: %(changes)s"), who=limit_key_words(entry.target), changes=said)


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


READERS: dict[str, Callable[[AuditEntry], Markup | None]] = {
    "login.success": lambda e: _login(e.detail),
    "login.failure": _failure,
    "logout.single": lambda e: _login(e.detail),
    "user.created": _user,
    "user.changed": _user,
    "user.sync_ldap": _sync,
    "user.directory_renamed": lambda e: _renamed(e.detail),
    "user.bound": lambda e: _binding(e.detail),
    "user.linked": lambda e: _binding(e.detail),
    "user.unlinked": lambda e: _binding(e.detail),
    "file.access_changed": _access_change,
    "file.published": lambda e: Markup(escape(access_words(e.detail))),
    "file.uploaded": _version,
    "file.version_published": _version,
    "file.version_discarded": _version,
    "limits.changed": _limits,
    "limits.reset": _limits,
}


def detail_words(entry: AuditEntry) -> Markup | str:
    """The entry's detail in the page's language, or as stored when it does not parse (an
    empty detail stays empty)."""
    reader = READERS.get(entry.action)
    if not entry.detail or reader is None:
        return entry.detail
    try:
        said = reader(entry)
    except (ValueError, KeyError):
        said = None
    return entry.detail if said is None else said


def target_words(entry: AuditEntry) -> Markup | str:
    """The entry's target: an upload's ``file:ID`` and a limit's key in words, else as
    stored (a file's "ID title", a user name, a group)."""
    if found := re.fullmatch(r"file:(\d+)", entry.target):
        return fill(_("file %(id)s"), id=found.group(1))
    if entry.action.startswith("limits."):
        return limit_key_words(entry.target)
    return entry.target
