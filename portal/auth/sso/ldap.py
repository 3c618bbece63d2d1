"""LDAP with ldap3: sign-in by bind, and every account of the directory for ``sync-ldap``.

The portal searches with its own bind (LDAP_BIND_DN, or anonymously), finds the entry of
the name typed, then binds as that entry with the password typed: the directory checks the
password, the portal never sees a hash. Groups come from a group search (``member`` holds
the user's DN) or from the user's ``memberOf``; nested groups are followed either way.
"""

from __future__ import annotations

import math
import re
import ssl
from collections.abc import Iterable

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn

from ...settings import Settings
from .mapping import DirectoryAccount, group_names, values

#: Entries per page of a sync's search (RFC 2696 paging: servers cap unpaged results).
PAGE_SIZE = 500
#: Nesting deeper than this is taken as a loop in the directory.
MAX_NESTING = 16


class DirectoryUnavailable(Exception):
    """The directory could not be reached or refused the portal's own bind."""


def _server(cfg: Settings) -> ldap3.Server:
    tls = None
    if cfg.ldap_url.startswith("ldaps:") or cfg.ldap_start_tls:
        tls = ldap3.Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=cfg.ldap_ca_file,
                        version=ssl.PROTOCOL_TLS_CLIENT)
    return ldap3.Server(cfg.ldap_url, use_ssl=cfg.ldap_url.startswith("ldaps:"), tls=tls,
                        connect_timeout=cfg.ldap_timeout_seconds, get_info=ldap3.NONE)


def _connect(cfg: Settings, dn: str | None, password: str | bytes | None) -> ldap3.Connection:
    """A bound connection, or DirectoryUnavailable; a refused bind returns an unbound one."""
    conn = ldap3.Connection(_server(cfg), user=dn, password=password,
                            receive_timeout=math.ceil(cfg.ldap_timeout_seconds),
                            raise_exceptions=False)
    try:
        conn.open()
        if cfg.ldap_start_tls and not conn.start_tls():
            raise DirectoryUnavailable(f"StartTLS refused: {conn.result.get('description')}")
        conn.bind()
    except (LDAPException, DirectoryUnavailable) as exc:
        conn.unbind()
        if conn.socket is not None:  # ldap3 leaves a socket that failed to connect open
            conn.socket.close()
        if isinstance(exc, DirectoryUnavailable):
            raise
        raise DirectoryUnavailable(f"{cfg.ldap_url}: {exc}") from exc
    return conn


def _service(cfg: Settings) -> ldap3.Connection:
    conn = _connect(cfg, cfg.ldap_bind_dn, cfg.ldap_bind_password)
    if not conn.bound:
        conn.unbind()
        refused = conn.result.get("description")
        raise DirectoryUnavailable(f"the portal's bind was refused: {refused}")
    return conn


def issuer(cfg: Settings) -> str:
    """The issuer of this directory's accounts in their bindings: the user base as an LDAP
    URL without host or port (``ldap:///ou=people,dc=campus,dc=edu``), so that moving to
    LDAPS, another port or another replica keeps every binding; the subject (entryUUID)
    tells the entries apart."""
    base = re.sub(r"\s*([,=+])\s*", r"\1", (cfg.ldap_user_base or "").strip()).lower()
    return f"ldap:///{base}"


def _subject(entry: dict, cfg: Settings) -> str:
    """The entry's stable id: LDAP_SUBJECT_ATTRIBUTE's value (text, or hex for a binary one
    such as Active Directory's objectGUID), else its DN."""
    wanted = cfg.ldap_subject_attribute.lower()
    for name, raw in entry.get("raw_attributes", {}).items():
        if name.lower() == wanted and raw:
            try:
                return raw[0].decode("utf-8")
            except UnicodeDecodeError:
                return raw[0].hex()
    return entry["dn"]


def _attributes(cfg: Settings, role_map: tuple) -> list[str]:
    wanted = {cfg.ldap_uid_attribute, cfg.ldap_name_attribute, cfg.ldap_subject_attribute}
    if cfg.ldap_group_source == "memberOf":
        wanted.add("memberOf")
    for _role, rules in role_map:
        wanted.update(r.partition("=")[0].strip() for r in rules if not r.startswith("group:"))
    return sorted(wanted)


def _rdn_value(dn: str) -> str:
    return parse_dn(dn, escape=False)[0][1]


def _search(conn: ldap3.Connection, base: str, query: str, attributes: list[str]) -> list:
    """Every entry found, page by page."""
    try:
        return list(conn.extend.standard.paged_search(base, query, attributes=attributes,
                                                      paged_size=PAGE_SIZE, generator=True))
    except LDAPException as exc:
        raise DirectoryUnavailable(str(exc)) from exc


def _entries(results: Iterable) -> list[dict]:
    return [r for r in results if r.get("type") == "searchResEntry"]


class Groups:
    """The directory's groups as a graph: which group DNs each DN is a direct member of."""

    def __init__(self, parents: dict[str, set[str]], names: dict[str, str]) -> None:
        self.parents = parents
        self.names = names

    @classmethod
    def load(cls, conn: ldap3.Connection, cfg: Settings) -> Groups:
        """Every group under LDAP_GROUP_BASE with its members (one paged search)."""
        member = cfg.ldap_group_member_attribute
        found = _entries(_search(conn, cfg.ldap_group_base or cfg.ldap_user_base,
                                 cfg.ldap_group_filter, [member, cfg.ldap_group_name_attribute]))
        parents: dict[str, set[str]] = {}
        names = {}
        for entry in found:
            dn = entry["dn"].lower()
            names[dn] = (values(entry["attributes"].get(cfg.ldap_group_name_attribute))
                         or (_rdn_value(entry["dn"]),))[0]
            for child in values(entry["attributes"].get(member)):
                parents.setdefault(child.lower(), set()).add(dn)
        return cls(parents, names)

    def of(self, dn: str, direct: Iterable[str] = ()) -> tuple[str, ...]:
        """The names of every group ``dn`` is in, directly (``direct`` adds memberOf's) or
        through nested groups."""
        seen = {d.lower() for d in direct}
        frontier = {dn.lower()} | seen
        for _ in range(MAX_NESTING):
            frontier = {p for d in frontier for p in self.parents.get(d, ())} - seen
            if not frontier:
                break
            seen |= frontier
        return group_names(self.names.get(d) or _rdn_value(d) for d in seen)


def _account(entry: dict, cfg: Settings, groups: Groups) -> DirectoryAccount | None:
    attrs = {k: values(v) for k, v in entry["attributes"].items()}
    uid = attrs.get(cfg.ldap_uid_attribute, ())
    if not uid:
        return None
    direct = attrs.get("memberOf", ()) if cfg.ldap_group_source == "memberOf" else ()
    name = attrs.get(cfg.ldap_name_attribute, ())
    return DirectoryAccount("ldap", uid[0], name[0] if name else uid[0],
                            groups.of(entry["dn"], direct), attrs, issuer=issuer(cfg),
                            subject=_subject(entry, cfg))


def _user_query(cfg: Settings, username: str | None) -> str:
    if username is None:
        return cfg.ldap_user_filter
    return (f"(&{cfg.ldap_user_filter}"
            f"({cfg.ldap_uid_attribute}={escape_filter_chars(username)}))")


def _groups_for(conn: ldap3.Connection, cfg: Settings) -> Groups:
    if cfg.ldap_group_source == "search":
        return Groups.load(conn, cfg)
    return _member_of_graph(conn, cfg)


def _member_of_graph(conn: ldap3.Connection, cfg: Settings) -> Groups:
    """memberOf: the groups' own memberOf give the nesting (one search of the groups)."""
    found = _entries(_search(conn, cfg.ldap_group_base or cfg.ldap_user_base,
                             cfg.ldap_group_filter, ["memberOf", cfg.ldap_group_name_attribute]))
    parents, names = {}, {}
    for entry in found:
        dn = entry["dn"].lower()
        names[dn] = (values(entry["attributes"].get(cfg.ldap_group_name_attribute))
                     or (_rdn_value(entry["dn"]),))[0]
        parents[dn] = {p.lower() for p in values(entry["attributes"].get("memberOf"))}
    return Groups(parents, names)


def authenticate(cfg: Settings, username: str, password: str,
                 role_map: tuple = ()) -> DirectoryAccount | None:
    """The directory account whose password this is, or None (no such entry, a wrong
    password, an empty password: an LDAP bind without one is an anonymous bind and proves
    nothing). DirectoryUnavailable when the directory cannot answer."""
    if not password:
        return None
    conn = _service(cfg)
    try:
        found = _entries(_search(conn, cfg.ldap_user_base, _user_query(cfg, username),
                                 _attributes(cfg, role_map)))
        if len(found) != 1:
            return None
        user_conn = _connect(cfg, found[0]["dn"], password)
        bound = user_conn.bound
        user_conn.unbind()
        if not bound:
            return None
        return _account(found[0], cfg, _groups_for(conn, cfg))
    finally:
        conn.unbind()


def all_accounts(cfg: Settings, role_map: tuple = ()) -> list[DirectoryAccount]:
    """Every account under LDAP_USER_BASE that LDAP_USER_FILTER selects (sync-ldap)."""
    conn = _service(cfg)
    try:
        groups = _groups_for(conn, cfg)
        found = _entries(_search(conn, cfg.ldap_user_base, _user_query(cfg, None),
                                 _attributes(cfg, role_map)))
        return [a for a in (_account(e, cfg, groups) for e in found) if a is not None]
    finally:
        conn.unbind()


def subject_of(cfg: Settings, username: str) -> str | None:
    """The subject of the directory's one entry named ``username`` (``user link`` binds
    it), or None when the directory has no such entry or several."""
    conn = _service(cfg)
    try:
        found = _entries(_search(conn, cfg.ldap_user_base, _user_query(cfg, username),
                                 [cfg.ldap_uid_attribute, cfg.ldap_subject_attribute]))
    finally:
        conn.unbind()
    return _subject(found[0], cfg) if len(found) == 1 else None
